"""`hallo-rt stream`: a live session from a file or the microphone to an MP4 or a player window.

    hallo-rt stream --image IMG (--audio FILE [--realtime] [--offline-features] | --mic) (--out OUT.mp4 | --play)
                    [--model ...] [--backend ...] [--steps N] [--cfg S] [--chunk-latents N] [--motion pixel|latent]

A feeder thread pushes the source's audio into the session (paced at real time with --realtime or --mic,
as fast as it decodes otherwise); the main thread writes the frames to the sink and prints live
statistics on stderr, then a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time


def add_stream_command(sub) -> None:
    from .cli import _add_model_args

    p = sub.add_parser("stream", help="stream a talking head live from a file or the microphone")
    p.add_argument("--image", required=True, help="reference portrait (any image Pillow reads)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="speech file (any container/codec PyAV reads)")
    src.add_argument("--mic", action="store_true", help="capture from the microphone (needs hallo-rt[mic])")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="output .mp4 (H.264 25 fps + AAC of the streamed audio)")
    out.add_argument("--play", action="store_true", help="play live in an ffplay window")
    p.add_argument("--realtime", action="store_true", help="push the file at real time, not as fast as possible")
    p.add_argument("--offline-features", action="store_true",
                   help="audio features from the whole file (waits for it; Hallo3's offline features)")
    p.add_argument("--mic-device", default=None, help="capture device index or name (default: the system's)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop the microphone after this long")
    _add_model_args(p)
    p.add_argument("--backend", default="torch", choices=["torch", "torch-compile", "onnxruntime", "tensorrt"],
                   help="torch-compile: the denoiser compiled by TorchInductor (compiles on first use)")
    p.add_argument("--artifacts", default=None, help="exported graphs or TensorRT plans for --backend")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps per chunk (default: the model folder's own, else 4)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: 1 = off)")
    p.add_argument("--sampler", default=None, choices=["dpmpp2m_sde", "ddim"],
                   help="default: the model folder's own, else dpmpp2m_sde")
    p.add_argument("--chunk-latents", type=int, default=None,
                   help="latent frames per chunk, 1 = 4 video frames (default: the model folder's own, else 3)")
    p.add_argument("--motion", default=None, choices=["pixel", "latent"],
                   help="pixel: Hallo3's re-encoded motion frames; latent: the previous chunk's latents "
                        "(default: the model folder's own, else pixel)")
    p.add_argument("--backpressure", default="wait", choices=["wait", "drop"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--face-embedding", default=None, help="precomputed 512-d face embedding (.npy/.safetensors)")
    p.add_argument("--text-embeddings", default=None, help="T5 embeddings of the prompt (.safetensors/.npy)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no live statistics")
    p.set_defaults(func=run_stream)


def _check_args(args: argparse.Namespace) -> None:
    from .media import check_writable

    if args.mic and (args.realtime or args.offline_features):
        raise ValueError("--realtime and --offline-features apply to --audio files, not --mic")
    if args.max_seconds is not None and (not args.mic or args.max_seconds <= 0):
        raise ValueError("--max-seconds takes a positive number, with --mic")
    if args.out is not None:
        check_writable(args.out)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The settings given on the command line (the rest come from the model, then the engine's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _source(args: argparse.Namespace):
    from .sources import FileSource, MicSource

    if args.mic:
        device = int(args.mic_device) if args.mic_device and args.mic_device.isdigit() else args.mic_device
        return MicSource(device=device)
    return FileSource(args.audio, realtime=args.realtime)


def _sink(args: argparse.Namespace):
    from .sinks import Mp4Sink, PlaySink

    return PlaySink() if args.play else Mp4Sink(args.out)


def _feed(source, session, stop: threading.Event, max_seconds: float | None, errors: list) -> None:
    """Push the source's audio into the session, then end it (on the source's end, `stop` or the limit)."""
    start = time.monotonic()
    try:
        for pcm, rate in source:
            if stop.is_set() or (max_seconds is not None and time.monotonic() - start >= max_seconds):
                break
            session.push_audio(pcm, rate)
        session.end_audio()
    except Exception as err:  # noqa: BLE001 - handed to the main thread
        errors.append(err)
    finally:
        if hasattr(source, "close"):
            source.close()


def _live_line(stats: dict, frames: int, elapsed: float) -> str:
    q = stats["queues"]
    lat = stats["latency_p50_s"]
    return (f"\r{frames} frames ({frames / 25:.1f} s) in {elapsed:.1f} s | {stats['fps']:.1f} fps | latency p50 "
            f"{lat * 1e3 if lat is not None else float('nan'):.0f} ms | queues audio {q['audio_s']:.1f}s "
            f"feat {q['features']} dec {q['decode']} conv {q['convert']} out {q['out']} | dropped "
            f"{stats['frames_dropped']} idle {stats['frames_idle']}   ")


def run_stream(args: argparse.Namespace) -> int:
    import torch

    from .api import Engine
    from .generate import _warnings_to_stderr
    from .inputs import load_face_embedding, resolve_text_embeddings
    from .media import read_image

    with _warnings_to_stderr(args.quiet):
        _check_args(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        image = read_image(args.image)
        source = _source(args)  # a bad file or a missing microphone fails before the model loads
        t0 = time.perf_counter()
        live = args.mic or args.realtime
        engine = Engine(args.model, backend=args.backend, device=args.device, dtype=args.dtype, kernels=args.kernels,
                        artifacts=args.artifacts, **_given(args, "steps", "cfg", "sampler", "chunk_latents", "motion"),
                        backpressure=args.backpressure,
                        offline_features=args.offline_features, idle=live)
        cfg = engine.pipeline.dit.config
        face = load_face_embedding(args.face_embedding, cfg.face_embed_dim) if args.face_embedding else None
        text, _ = resolve_text_embeddings(args.text_embeddings, cfg.text_len, cfg.text_dim)
        session = engine.session(image, face_embedding=face, text_embeds=text, seed=args.seed)
        load_s = time.perf_counter() - t0
        return _stream(args, engine, session, source, load_s)


def _stream(args, engine, session, source, load_s: float) -> int:
    from .session import SessionError

    stop, errors = threading.Event(), []
    feeder = threading.Thread(target=_feed, args=(source, session, stop, args.max_seconds, errors), daemon=True)
    sink = _sink(args)
    start = time.perf_counter()
    frames, last_print = 0, 0.0
    try:
        feeder.start()
        for frame in session:
            try:
                sink.write(frame)
            except RuntimeError:
                if not args.play:
                    raise
                print("\nhallo-rt: the player window was closed; stopping", file=sys.stderr)
                break
            frames += 1
            now = time.perf_counter()
            if not args.quiet and now - last_print >= 0.5:
                print(_live_line(session.stats(), frames, now - start), end="", file=sys.stderr, flush=True)
                last_print = now
        sink.close()
    except KeyboardInterrupt:
        stop.set()
        sink.close()  # keep what was streamed so far
        print("\nhallo-rt: interrupted; kept what was streamed", file=sys.stderr)
    except SessionError as err:
        sink.abort()
        print(f"\nhallo-rt: error: {err}", file=sys.stderr)
        return 1
    except BaseException:
        sink.abort()
        raise
    finally:
        stop.set()
        stats = session.stats()
        session.close()
    if errors:
        raise errors[0]
    wall = time.perf_counter() - start
    summary = {
        "out": args.out or "play", "frames": frames, "video_seconds": frames / 25, "wall_s": round(wall, 3),
        "load_s": round(load_s, 3), "realtime_factor": round(frames / 25 / wall, 4) if wall else None,
        "ttff_s": stats["ttff_s"], "fps": round(stats["fps"], 3), "latency_p50_s": stats["latency_p50_s"],
        "latency_p90_s": stats["latency_p90_s"], "frames_dropped": stats["frames_dropped"],
        "frames_idle": stats["frames_idle"], "chunks": stats["chunks"],
        "stage_s": {k: round(v, 3) for k, v in stats["stage_s"].items()}, **engine.describe(),
        "seed": args.seed,
    }
    for name in ("dropped_samples", "overflows"):  # the microphone's own losses, if any
        if hasattr(source, name):
            summary[f"mic_{name}"] = getattr(source, name)
    if not args.quiet:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"streamed {frames} frames ({frames / 25:.2f} s) to {summary['out']} in {wall:.1f} s "
              f"(real-time factor {summary['realtime_factor']}, first frame after "
              f"{summary['ttff_s'] if summary['ttff_s'] is None else round(summary['ttff_s'], 3)} s, "
              f"{stats['frames_dropped']} dropped)")
    return 0
