"""`hallo-rt export`: every graph of a model to ONNX, plus the manifest the builder and backends read."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hallo_rt.engine.models import DEFAULT_MODEL


def model_sources(pipeline, extractor, model: str) -> dict:
    """What the exported files were cut from: config hashes and weights digests (artifact cache keys)."""
    from hallo_rt.engine.weights import weights_digest

    return {
        "model": str(model),
        "config_hash": pipeline.dit.config.compute_hash(),
        "vae_config_hash": pipeline.vae.config.compute_hash(),
        "weights_digest": {
            "dit": weights_digest(pipeline.dit.state_dict()),
            "reference": weights_digest(pipeline.reference_net.state_dict()),
            "vae": weights_digest(pipeline.vae.state_dict()),
            "audio_encoder": weights_digest(extractor.encoder.state_dict()),
        },
    }


def export_pipeline(pipeline, extractor, out_dir: str | Path, *, precision: str, kernels: str = "none",
                    model: str = "", quiet: bool = False, chunk=None) -> dict:
    """Export the loaded pipeline's graphs to `out_dir`; returns the manifest. `chunk` (a `ChunkSettings`):
    the graphs a streaming session with that chunk length and motion mode runs; None: the offline clip's."""
    from hallo_rt.export.graphs import model_graphs
    from hallo_rt.export.onnx_export import export_all

    cut = {} if chunk is None else {"chunk_latents": chunk.chunk_latents, "motion": chunk.motion,
                                    "motion_frames": chunk.motion_frames}
    graphs = model_graphs(pipeline.dit, pipeline.reference_net, pipeline.vae, extractor.encoder,
                          precision=precision, kernels=kernels, **cut)

    def progress(name: str, seconds: float) -> None:
        if not quiet:
            print(f"exported {name}.onnx in {seconds:.1f} s", file=sys.stderr, flush=True)

    return export_all(graphs, out_dir, sources=model_sources(pipeline, extractor, model), kernels=kernels,
                      progress=progress)


def run_export(args: argparse.Namespace) -> int:
    from hallo_rt.engine.pipeline import load_pipeline

    from .devices import resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    chunk = None
    if args.chunk_latents is not None:
        from hallo_rt.engine.chunks import ChunkSettings

        chunk = ChunkSettings(chunk_latents=args.chunk_latents, motion=args.motion)  # checked before loading
    elif args.motion != "pixel":
        raise ValueError("--motion applies with --chunk-latents (the offline clip export is pixel motion)")
    t0 = time.perf_counter()
    pipeline, extractor = load_pipeline(args.model, vae=args.vae, audio_encoder=args.audio_encoder,
                                        dtype=args.dtype, device=resolve_device(args.device))
    manifest = export_pipeline(pipeline, extractor, out, precision=args.dtype, kernels=args.kernels,
                               model=args.model, quiet=args.quiet, chunk=chunk)
    summary = {"out": str(out), "graphs": sorted(manifest["graphs"]), "precision": args.dtype,
               "kernels": args.kernels, "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary, indent=2) if args.json else
          f"wrote {len(summary['graphs'])} graphs + manifest.json to {out} in {summary['seconds']} s")
    return 0


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="export every graph to ONNX with a manifest (for onnxruntime/tensorrt)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"demo, a preset name, a checkpoint path or a model folder (default: {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="output directory (<graph>.onnx files + manifest.json)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="precision fixed inside the graphs (ONNX Runtime CPU cannot run bf16)")
    p.add_argument("--kernels", default="none", choices=["none", "plugin"],
                   help="plugin: fused ops as hallo_rt TensorRT plugin nodes (denoiser, reference)")
    p.add_argument("--vae", default=None, help="VAE checkpoint (default: found beside --model, or its preset)")
    p.add_argument("--audio-encoder", default=None, help="wav2vec2 folder (default: found beside --model)")
    p.add_argument("--device", default="cpu", help="device the models are traced on (default: cpu)")
    p.add_argument("--chunk-latents", type=int, default=None,
                   help="export the graphs a streaming session with this chunk length runs (default: the "
                        "offline clip's graphs); sessions on --artifacts need the chunk they were exported for")
    p.add_argument("--motion", default="pixel", choices=["pixel", "latent"],
                   help="with --chunk-latents: the sessions' motion mode (default: pixel)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-graph progress on stderr")
    p.set_defaults(func=run_export)
