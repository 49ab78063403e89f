"""Time one denoiser step of a preset (default `tiny`) on CPU next to diffusers eager, same config and weights.

diffusers has no Hallo3 modules, so the side-by-side uses the preset's backbone (face/audio off, no bank);
the full Hallo3 step (face + audio cross-attention + reference bank) is timed as well, for the engine only.

    .venv/bin/python benchmarks/denoiser_step.py [--preset tiny] [--batch 2] [--repeats 30] [--out FILE]

Writes JSON: machine, versions, both timings (median / p10 / p90), the ratio, and the max abs difference
between the two outputs (they must agree, or the timing compares different computations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hallo_rt.benchmarks.compare import to_diffusers
from hallo_rt.benchmarks.environment import machine

from hallo_rt import __version__
from hallo_rt.engine import HalloDiT, get_preset, load_dit, load_reference_net
from hallo_rt.engine.weights.common import seeded_init_


def time_calls(fn, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {"median_ms": statistics.median(samples) * 1e3, "p10_ms": samples[len(samples) // 10] * 1e3,
            "p90_ms": samples[(len(samples) * 9) // 10] * 1e3, "repeats": repeats, "warmup": warmup}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2, help="2 = one CFG step (uncond + cond)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "denoiser_step_cpu.json"))
    args = parser.parse_args(argv)
    import diffusers

    torch.manual_seed(0)
    preset = get_preset(args.preset)
    # diffusers' output norm uses norm_eps; match it so both sides compute the same function.
    backbone_cfg = dataclasses.replace(preset, face_cross_attention=False, audio_cross_attention=False,
                                       out_norm_eps=preset.norm_eps)
    backbone = seeded_init_(HalloDiT(backbone_cfg), 0).eval().requires_grad_(False)
    reference = to_diffusers(backbone)
    c, B = backbone_cfg, args.batch
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(B, c.latent_frames, c.in_channels, c.latent_height, c.latent_width, generator=g)
    text = torch.randn(B, c.text_len, c.text_dim, generator=g)
    t = torch.full((B,), 500)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    h, w = c.latent_height // c.patch_size, c.latent_width // c.patch_size
    rotary = get_3d_rotary_pos_embed(c.head_dim, ((0, 0), (h, w)), (h, w), c.latent_frames)

    with torch.inference_mode():
        ours_out = backbone(latents, t, text)
        ref_out = reference(latents, text, t, image_rotary_emb=rotary, return_dict=False)[0]
        max_diff = float((ours_out - ref_out).abs().max())
        engine = time_calls(lambda: backbone(latents, t, text), args.repeats, args.warmup)
        diffusers_t = time_calls(lambda: reference(latents, text, t, image_rotary_emb=rotary, return_dict=False),
                                 args.repeats, args.warmup)
        full = load_dit(args.preset)
        bank = load_reference_net(args.preset)(torch.randn(1, 1, c.out_channels, c.latent_height, c.latent_width))
        audio = torch.randn(B, c.video_frames, preset.audio_window, preset.audio_layers, preset.audio_dim)
        face = torch.randn(B, preset.face_embed_dim)
        hallo3_step = time_calls(lambda: full(latents, t, text, audio=audio, face=face, ref_bank=bank),
                                 args.repeats, args.warmup)
    result = {
        "benchmark": "denoiser_step", "preset": args.preset, "batch": B,
        "tokens_per_step": c.text_len + c.latent_frames * c.tokens_per_frame,
        "config_hash": preset.compute_hash(), "backbone_config_hash": backbone_cfg.compute_hash(),
        "backend_used": "torch eager (CPU)", "device": "cpu", "machine": machine(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "hallo_rt": __version__},
        "engine_backbone_step": engine, "diffusers_backbone_step": diffusers_t,
        "speedup_vs_diffusers": diffusers_t["median_ms"] / engine["median_ms"],
        "max_abs_diff_vs_diffusers": max_diff,
        "engine_hallo3_step_with_face_audio_bank": hallo3_step,
        "command": "python benchmarks/denoiser_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("engine_backbone_step", "diffusers_backbone_step", "speedup_vs_diffusers",
                                             "max_abs_diff_vs_diffusers", "engine_hallo3_step_with_face_audio_bank")},
                     indent=2))
    print(f"wrote {out}")
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
