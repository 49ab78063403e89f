"""`hallo-rt` command line.

    hallo-rt generate --image IMG --audio AUDIO --out OUT.mp4 [...]  a talking-head video, offline
    hallo-rt stream --image IMG (--audio F | --mic) (--out O | --play)  the same, live, as a stream
    hallo-rt bench [--backend all] [--seconds 20] [--compare]          latency benchmark of a stream (JSON + PNG)
    hallo-rt denoise [--model tiny] [--steps 50] [--cfg 3.5] ...     one clip of denoising, with timings
    hallo-rt convert SRC --out DST [--dtype ...]                       SAT / diffusers -> hallo-rt format
    hallo-rt info MODEL                                                config, hash and parameter counts
    hallo-rt export --model tiny --out DIR [--dtype ...] [--kernels plugin]   every graph to ONNX + manifest
    hallo-rt build --onnx DIR --out DIR [--fp8] [--timing-cache PATH]  TensorRT plans (needs TensorRT + GPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from hallo_rt.engine.models import DEFAULT_MODEL


def _device(name: str) -> torch.device:
    from .devices import resolve_device

    return resolve_device(name)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="demo (the trained avatar), a preset name (tiny, hallo3: random weights), a "
                             f"checkpoint path or a model folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--kernels", default="none", choices=["none", "triton", "reference"],
                        help="fused ops for the denoiser: triton (CUDA, or CPU under TRITON_INTERPRET=1), "
                             "reference (their torch references), none (the plain model; default)")


def apply_kernels_arg(model, impl: str):
    """`--kernels`: the model with fused ops, or unchanged for "none"; unavailable Triton is a usage error."""
    if impl == "none":
        return model
    from hallo_rt.kernels import KernelUnavailable
    from hallo_rt.kernels.apply import apply_kernels

    try:
        return apply_kernels(model, impl)
    except KernelUnavailable as err:
        raise ValueError(f"--kernels {impl}: {err}") from None


def _cmd_denoise(args: argparse.Namespace) -> int:
    from hallo_rt.engine import load_dit, load_reference_net
    from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample

    device = _device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    sampler = SamplerConfig(kind=args.sampler, steps=args.steps, cfg_scale=args.cfg)
    t0 = time.perf_counter()
    dit = load_dit(args.model, dtype=args.dtype, device=device)
    reference = load_reference_net(args.model, dtype=args.dtype, device=device)
    dit, reference = apply_kernels_arg(dit, args.kernels), apply_kernels_arg(reference, args.kernels)
    load_s = time.perf_counter() - t0
    cfg = dit.config
    F, H, W = args.latent_frames or cfg.latent_frames, cfg.latent_height, cfg.latent_width
    dtype = dit.dtype
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    # Synthetic conditioning with the real shapes: a reference latent, text, audio and face features.
    ref_latent = randn(1, 1, cfg.in_channels // 2, H, W)
    concat = torch.cat([ref_latent, ref_latent.new_zeros(1, F - 1, cfg.in_channels // 2, H, W)], dim=1)
    t1 = time.perf_counter()
    bank = reference(ref_latent)
    bank_s = time.perf_counter() - t1
    cond = Conditioning(
        concat_latent=concat,
        text_embeds=randn(1, cfg.text_len, cfg.text_dim),
        audio=randn(1, 4 * F - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
        if cfg.audio_cross_attention else None,
        face=randn(1, cfg.face_embed_dim) if cfg.face_cross_attention else None,
        ref_bank=bank,
    )
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, steps: int) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        if not args.quiet:
            print(f"\rstep {step}/{steps}  {step_times[-1] * 1e3:8.1f} ms", end="", file=sys.stderr, flush=True)

    t2 = time.perf_counter()
    last[0] = t2
    latents = sample(dit, cond, sampler, generator=gen, progress=on_step)
    sample_s = time.perf_counter() - t2
    if not args.quiet:
        print(file=sys.stderr)
    video_s = (4 * F - 3) / 25.0
    summary = {
        "model": cfg.name, "config_hash": cfg.compute_hash()[:16], "device": str(device), "dtype": args.dtype,
        "kernels": args.kernels, "threads": torch.get_num_threads(), "sampler": sampler.kind, "steps": sampler.steps,
        "cfg_scale": sampler.cfg_scale, "latent_shape": list(latents.shape), "load_s": round(load_s, 4),
        "reference_bank_s": round(bank_s, 4), "sampling_s": round(sample_s, 4),
        "step_ms_median": round(sorted(step_times)[len(step_times) // 2] * 1e3, 3),
        "step_ms_first": round(step_times[0] * 1e3, 3),
        "video_seconds_per_clip": video_s, "denoise_rtf": round(video_s / sample_s, 4),
        "finite": bool(torch.isfinite(latents).all()),
    }
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in summary.items()))
    return 0 if summary["finite"] else 1


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import run_generate

    return run_generate(args)


def _cmd_convert(args: argparse.Namespace) -> int:
    from hallo_rt.engine import convert

    t0 = time.perf_counter()
    out = convert(args.src, args.out, dtype=args.dtype)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from hallo_rt.engine import PRESETS, HalloDiT, load_dit

    if args.model in PRESETS:  # shapes only: a 9B-parameter preset is never materialised for this
        with torch.device("meta"):
            dit = HalloDiT(PRESETS[args.model])
    else:
        dit = load_dit(args.model)
    params = sum(p.numel() for p in dit.parameters())
    print(json.dumps({"config": dit.config.to_dict(), "config_hash": dit.config.compute_hash(),
                      "parameters": params}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hallo-rt", description="Real-time talking-head video diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="make a talking-head MP4 from a portrait and speech")
    p.add_argument("--image", required=True, help="reference portrait (any image Pillow reads)")
    p.add_argument("--audio", required=True, help="speech (any container/codec PyAV reads)")
    p.add_argument("--out", required=True, help="output .mp4 (H.264 25 fps + AAC of the original audio)")
    _add_model_args(p)
    p.add_argument("--vae", default=None, help="VAE checkpoint (default: found beside --model, or its preset)")
    p.add_argument("--audio-encoder", default=None, help="wav2vec2 folder (default: found beside --model)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"],
                   help="what runs the graphs (default: torch). onnxruntime exports the model on first use "
                        "into the artifact cache unless --artifacts is given; tensorrt needs --artifacts")
    p.add_argument("--artifacts", default=None,
                   help="exported graphs (hallo-rt export --out DIR) or TensorRT plans (hallo-rt build --out DIR)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model folder's own, else 50, the reference)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the model folder's own, else 3.5)")
    p.add_argument("--sampler", default=None, choices=["dpmpp2m_sde", "ddim"],
                   help="default: the model folder's own, else dpmpp2m_sde")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--face-embedding", default=None, help="precomputed 512-d face embedding (.npy/.safetensors)")
    p.add_argument("--face-models", default="pretrained_models/face_analysis",
                   help="InsightFace model root, used when installed and no --face-embedding is given")
    p.add_argument("--face-mask", default=None, help="face-region mask image (white = face), image-sized")
    p.add_argument("--face-box", default=None, help="face region x0,y0,x1,y1 in image pixels")
    p.add_argument("--text-embeddings", default=None, help="T5 embeddings of the prompt (.safetensors/.npy)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("denoise", help="denoise one clip on synthetic conditioning and print timings")
    _add_model_args(p)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--sampler", default="dpmpp2m_sde", choices=["dpmpp2m_sde", "ddim"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-frames", type=int, default=None, help="latent frames (default: the model's clip)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-step progress on stderr")
    p.set_defaults(func=_cmd_denoise)

    p = sub.add_parser("convert", help="convert a SAT or diffusers checkpoint to hallo-rt's format")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: as stored")
    p.set_defaults(func=_cmd_convert)

    from .stream_cmd import add_stream_command

    add_stream_command(sub)

    from hallo_rt.benchmarks.bench_cmd import add_bench_command  # the harness lives with the benchmarks

    add_bench_command(sub)

    from .export_cmd import add_export_command

    add_export_command(sub)

    from hallo_rt.export.tensorrt_build import add_build_command

    add_build_command(sub)

    p = sub.add_parser("info", help="print a model's config, hash and parameter count")
    p.add_argument("model")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what was asked, for the records commands write (hallo-rt bench)
    from hallo_rt.engine import InputError, WeightsError

    try:
        return args.func(args)
    except (WeightsError, InputError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"hallo-rt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hallo-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
