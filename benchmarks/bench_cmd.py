"""`hallo-rt bench`: measure a streaming session end to end (stream_bench), optionally every backend and the
side-by-side comparisons, and write JSON + PNGs.

    hallo-rt bench [--model tiny] [--backend torch|torch-compile|onnxruntime|onnxruntime-int8|tensorrt|all]
                   [--seconds 20] [--audio F] [--image F] [--steps 4] [--cfg 1] [--chunk-latents 2]
                   [--motion latent|pixel] [--compare] [--out-dir DIR] [--json] [--no-plots] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hallo_rt.engine.models import DEFAULT_MODEL

DEFAULT_OUT = "bench-results"


def add_bench_command(sub) -> None:
    from .stream_bench import BENCH_BACKENDS

    p = sub.add_parser("bench", help="latency benchmark: a streaming session measured end to end")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"demo, a preset name, a checkpoint path or a model folder (default: {DEFAULT_MODEL})")
    p.add_argument("--backend", default="torch", choices=[*BENCH_BACKENDS, "all"],
                   help="all: every backend available here, one after the other (default: torch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps per chunk (default: the model folder's own, else 4)")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance scale (default: the model folder's own, else 1 = off)")
    p.add_argument("--sampler", default=None, choices=["dpmpp2m_sde", "ddim"],
                   help="default: the model folder's own, else dpmpp2m_sde")
    p.add_argument("--chunk-latents", type=int, default=None,
                   help="latent frames per chunk (default: the model folder's own, else 2)")
    p.add_argument("--motion", default=None, choices=["latent", "pixel"],
                   help="default: the model folder's own, else latent")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per measured phase (default: 20)")
    p.add_argument("--audio", default=None, help="speech file (default: synthetic speech-like audio)")
    p.add_argument("--image", default=None, help="portrait (default: a synthetic one)")
    p.add_argument("--viewer-buffer", type=float, default=0.25,
                   help="seconds the simulated viewer buffers before playing (default: 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--artifacts", default=None, help="exported graphs or TensorRT plans for graph backends")
    p.add_argument("--compare", action="store_true",
                   help="also the side-by-side runs: reference offline loop and speed-up ladder, diffusers DiT "
                        "and VAE, GEMM peak of a mid-size step, cost-model cross-check")
    p.add_argument("--out-dir", default=DEFAULT_OUT, help=f"where bench.json and the PNGs go (default: {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print the report (without raw samples) as JSON")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (they need matplotlib: hallo-rt[bench])")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_bench_command)


def _settings(args: argparse.Namespace, backend: str):
    from .stream_bench import BenchSettings

    from hallo_rt.engine.models import model_defaults

    trained = model_defaults(args.model)  # the model's own settings, under what the command line gives

    def pick(name: str, fallback):
        given = getattr(args, name)
        return given if given is not None else trained.get(name, fallback)

    return BenchSettings(model=args.model, backend=backend, device=args.device, dtype=args.dtype,
                         steps=pick("steps", 4), cfg=pick("cfg", 1.0), sampler=pick("sampler", "dpmpp2m_sde"),
                         chunk_latents=pick("chunk_latents", 2), motion=pick("motion", "latent"), seconds=args.seconds,
                         audio=args.audio, image=args.image, viewer_buffer_s=args.viewer_buffer, seed=args.seed,
                         threads=args.threads, artifacts=args.artifacts)


def available_backends(device: str) -> dict[str, str | None]:
    """Each bench backend -> None when it can run here, else why not."""
    import importlib.util

    out: dict[str, str | None] = {"torch": None, "torch-compile": None}
    ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
    out["onnxruntime"] = out["onnxruntime-int8"] = None if ort else "needs onnxruntime + onnxscript (hallo-rt[onnx])"
    if importlib.util.find_spec("tensorrt") is None:
        out["tensorrt"] = "TensorRT's Python package is not installed"
    elif not device.startswith("cuda"):
        out["tensorrt"] = "TensorRT needs --device cuda"
    else:
        out["tensorrt"] = None
    return out


def _check(args: argparse.Namespace) -> list[str]:
    """Validate before anything loads; the backends to run."""
    from hallo_rt.runtime.devices import resolve_device

    from .plots import require_matplotlib

    resolve_device(args.device)
    for backend in ("torch",) if args.backend == "all" else (args.backend,):
        _settings(args, backend)  # value checks
    for path, what in ((args.audio, "--audio"), (args.image, "--image")):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{what} {path}: no such file")
    if not args.no_plots:
        require_matplotlib()
    if args.compare and not args.device.startswith("cpu"):
        raise ValueError("--compare runs on the CPU (its diffusers, GEMM and reference-loop runs are CPU runs "
                         "here); drop --compare or use --device cpu")
    available = available_backends(args.device)
    if args.backend == "all":
        return [name for name, why in available.items() if why is None]
    if available[args.backend] is not None:
        ready = ", ".join(name for name, why in available.items() if why is None)
        raise ValueError(f"backend {args.backend!r} is not available here: {available[args.backend]} "
                         f"(available: {ready})")
    return [args.backend]


def run_bench_command(args: argparse.Namespace) -> int:
    from .stream_bench import run_bench

    backends = _check(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs, failed = {}, {}
    for backend in backends:
        if not args.quiet:
            print(f"hallo-rt bench: {backend} on {args.device}, {args.seconds:g} s of audio per phase",
                  file=sys.stderr)
        try:
            runs[backend] = run_bench(_settings(args, backend), progress=not args.quiet)
        except Exception as err:  # noqa: BLE001 - with --backend all, one failure must not lose the others
            if args.backend != "all":
                raise
            failed[backend] = f"{type(err).__name__}: {err}"
            print(f"hallo-rt bench: {backend} failed: {failed[backend]}", file=sys.stderr)
    if not runs:
        raise RuntimeError(f"every backend failed: {failed}")
    report = dict(next(iter(runs.values())))
    if args.backend == "all":
        report["backends"] = {name: _backend_row(run) for name, run in runs.items()}
        report["backends_failed"] = failed
        report["backends_unavailable"] = {k: v for k, v in available_backends(args.device).items() if v}
    if args.compare:
        from .side_by_side import run_side_by_side

        report["side_by_side"] = run_side_by_side(report, _settings(args, backends[0]), progress=not args.quiet)
    report["command"] = "hallo-rt " + " ".join(getattr(args, "argv", None) or sys.argv[1:])
    report["bench_wall_s"] = time.perf_counter() - started
    raw = report.pop("raw")
    if not args.no_plots:
        report["plots"] = _plots(raw, report, out_dir)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(summary_text(report))
        print(f"wrote {out_dir / 'bench.json'}")
    return 1 if failed else 0


def _backend_row(run: dict) -> dict:
    keys = ("rtf", "fps", "ttff_cold_s", "ttff_warm_s", "deadline_attainment_after_1s", "interarrival_p99_s",
            "latency_p50_s", "underruns", "engine_construct_s", "backend_used", "config_hash")
    row = {k: run[k] for k in keys}
    row["stage_ms"] = {name: s["mean_ms"] for name, s in run["stages"].items()}
    return row


def _plots(raw: dict, report: dict, out_dir: Path) -> dict:
    from .plots import latency_cdf, stage_timeline

    config = report["config"]
    label = (f"{report['model']}, {report['backend_used']['backend']} on {report['device']}, {config['steps']} steps, "
             f"cfg {config['cfg']:g}, {config['chunk_latents']}-latent chunks ({config['motion']} motion)")
    timeline = stage_timeline(raw["throughput"]["events"], raw["throughput"]["t0"], out_dir / "timeline.png",
                              f"stage timeline, input as fast as possible: {label}")
    cdf = latency_cdf({"live (real-time input)": raw["live"]["latencies"]}, out_dir / "latency_cdf.png",
                      f"per-frame latency: {label}")
    return {"timeline": str(timeline), "latency_cdf": str(cdf)}


def _fmt(value, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def summary_text(report: dict) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = [
        f"model {report['model']} | backend {report['backend_used']['backend']} | device {report['device']} | "
        f"config {report['config_hash'][:12]}",
        f"real-time factor {_fmt(report['rtf'])}x | steady {_fmt(report['fps'], ' fps', digits=1)} | "
        f"first frame: cold {_fmt(report['ttff_cold_s'], ' s')}, warm {_fmt(report['ttff_warm_s'], ' s')}",
        f"live input: deadlines met {_fmt(report['deadline_attainment'], '%', 100, 1)} "
        f"(after 1 s: {_fmt(report['deadline_attainment_after_1s'], '%', 100, 1)}), underruns {report['underruns']} "
        f"with a {report['viewer_buffer_s']:g} s buffer, chunk inter-arrival p99 "
        f"{_fmt(report['interarrival_p99_s'], ' ms', 1e3, 0)}, "
        f"latency p50 {_fmt(report['latency_p50_s'], ' ms', 1e3, 0)}",
        "stages (mean per call): " + ", ".join(f"{k} {v['mean_ms']:.1f} ms x{v['calls']}"
                                               for k, v in report["stages"].items()),
        f"peak memory: CPU {report['peak_cpu_rss_mb']:.0f} MB"
        + (f", GPU {report['peak_gpu_allocated_mb']:.0f} MB" if report["peak_gpu_allocated_mb"] is not None else ""),
    ]
    for name, row in report.get("backends", {}).items():
        lines.append(f"  {name:17s} rtf {_fmt(row['rtf'])}x, warm ttff {_fmt(row['ttff_warm_s'], ' s')}, "
                     f"deadlines after 1 s {_fmt(row['deadline_attainment_after_1s'], '%', 100, 1)}")
    for name, why in report.get("backends_failed", {}).items():
        lines.append(f"  {name:17s} FAILED: {why}")
    for name, why in report.get("backends_unavailable", {}).items():
        lines.append(f"  {name:17s} not run: {why}")
    return "\n".join(lines)
