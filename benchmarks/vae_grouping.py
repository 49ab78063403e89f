"""How far each decode grouping is from the reference's, and what it costs: first-frame latency and
decode time per clip, per-frame PSNR and max abs error against the reference grouping (3, then pairs).

    .venv/bin/python benchmarks/vae_grouping.py [--vae tiny|PATH] [--image examples/portrait.jpg]
                                                [--device cpu] [--dtype fp32] [--out FILE]

The clip is a 49-frame pan-and-zoom over the image, encoded (posterior mean) to 13 latent frames, then
decoded with each grouping through `StreamingVaeDecoder`, one latent frame pushed at a time (as the
streaming runtime will). With the `tiny` preset the weights are random, so the deviation numbers describe
an untrained network; run it with the released `3d-vae.pt` for the figures that matter.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from hallo_rt.benchmarks.environment import emit, machine, versions

from hallo_rt import __version__
from hallo_rt.engine import Grouping, load_vae
from hallo_rt.runtime.devices import resolve_device
from hallo_rt.runtime.media import read_image


def pan_zoom_clip(image: np.ndarray, frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 3, frames, height, width) in [-1, 1]: a slow zoom-in and pan, so consecutive frames differ."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    out = []
    for i in range(frames):
        s = 1.0 - 0.25 * i / max(frames - 1, 1)  # zoom from the whole image to 75 %
        theta = torch.tensor([[[s, 0.0, 0.1 * i / frames], [0.0, s, 0.05 * i / frames]]])
        grid = F.affine_grid(theta, (1, 3, height, width), align_corners=False)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.stack(out, dim=2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of frames in [-1, 1] (peak-to-peak 2); inf when identical."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def _db(value: float | None) -> float | None:
    """JSON has no infinity: identical frames are reported as null."""
    return None if value is None or not math.isfinite(value) else round(value, 2)


def stream_decode(vae, latents: torch.Tensor, grouping: Grouping) -> tuple[torch.Tensor, float, float]:
    """(frames, seconds until the first frames came out, total seconds), one latent frame at a time."""
    stream = vae.stream_decoder(grouping)
    outputs, first = [], None
    start = time.perf_counter()
    for i in range(latents.shape[2]):
        out = stream.decode(latents[:, :, i:i + 1])
        if out.shape[2] and first is None:
            first = time.perf_counter() - start
        outputs.append(out)
    outputs.append(stream.flush())
    total = time.perf_counter() - start
    return torch.cat(outputs, dim=2), first if first is not None else total, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default="tiny")
    parser.add_argument("--image", default="examples/portrait.jpg")
    parser.add_argument("--size", default="128x128", help="clip HxW in pixels (multiples of 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()

    device = resolve_device(args.device)
    height, width = (int(v) for v in args.size.split("x"))
    vae = load_vae(args.vae, dtype=args.dtype, device=device)
    if device.type == "cpu":  # as the engine runs it (load_pipeline does the same)
        from hallo_rt.engine.cpu_convolutions import small_cpu_convolutions

        vae = small_cpu_convolutions(vae)
    clip = pan_zoom_clip(read_image(args.image), 49, height, width).to(device)
    latents = vae.encode(clip, sample=False)  # (1, 16, 13, h, w)
    reference, ref_first, ref_total = stream_decode(vae, latents, Grouping(3, 2))
    results = {}
    for name, grouping in (("reference (3, 2)", Grouping(3, 2)), ("single (1, 1)", Grouping(1, 1)),
                           ("pairs (1, 2)", Grouping(1, 2)), ("fours (1, 4)", Grouping(1, 4))):
        frames, first, total = stream_decode(vae, latents, grouping)
        per_frame = [psnr(frames[:, :, t], reference[:, :, t]) for t in range(frames.shape[2])]
        finite = [p for p in per_frame if math.isfinite(p)]
        results[name] = {
            "first_frames_s": round(first, 4), "decode_s": round(total, 4),
            "psnr_vs_reference_db_min": _db(min(finite)) if finite else None,
            "psnr_vs_reference_db_mean": _db(sum(finite) / len(finite)) if finite else None,
            "identical_frames": len(per_frame) - len(finite),
            "max_abs_vs_reference": float((frames.float() - reference.float()).abs().max()),
            "psnr_vs_input_db": _db(psnr(frames, clip)),
        }
    report = {
        "benchmark": "vae_grouping", "hallo_rt": __version__, "vae": args.vae, "vae_config_hash": vae.config.compute_hash()[:16],
        "weights": "seeded random (untrained)" if args.vae in ("tiny", "hallo3") else "checkpoint",
        "clip": f"49 frames {height}x{width}, 13 latent frames, pushed one latent frame at a time",
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "machine": machine(),
        "versions": versions(),
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
