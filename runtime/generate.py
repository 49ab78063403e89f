"""`hallo-rt generate`: portrait + speech -> MP4, through the offline Hallo3 pipeline.

Order matters for the user: every input is checked (and the output path proven writable) before any model
is loaded, so a typo costs a second, not a generation. The MP4 is written clip by clip to a temporary
file and renamed only when complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

FPS = 25  # Hallo3 renders at 25 fps (`configs/inference.yaml` sampling_fps)


@contextmanager
def _warnings_to_stderr(quiet: bool):
    """Show each warning once as one `hallo-rt: warning:` line (or not at all with --quiet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet else "always")
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"hallo-rt: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


def _original_size(path: str) -> tuple[int, int]:
    """(width, height) of the image file as displayed (EXIF rotation applied), from its header."""
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _read_inputs(args: argparse.Namespace):
    from hallo_rt.engine.audio_features import video_frame_count

    from .media import check_not_silent, check_writable, read_audio, read_image

    check_writable(args.out)
    image = read_image(args.image)
    waveform = read_audio(args.audio, sample_rate=16000)
    check_not_silent(waveform, args.audio)
    return image, waveform, video_frame_count(waveform.shape[0])


def run_generate(args: argparse.Namespace) -> int:
    with _warnings_to_stderr(args.quiet):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from hallo_rt.engine.pipeline import MotionConfig, clip_count, load_pipeline
    from hallo_rt.engine.reference_image import prepare_reference
    from hallo_rt.engine.sampling import SamplerConfig

    from .cli import apply_kernels_arg
    from .devices import resolve_device
    from .inputs import (check_embedding_file, parse_box, resolve_face_embedding, resolve_face_mask,
                         resolve_text_embeddings)
    from .media import Mp4Writer

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    from hallo_rt.engine.chunks import ChunkSettings, latent_chunk_frames
    from hallo_rt.engine.models import model_defaults, uses_face_embedding

    # a model folder may carry the settings it was trained for (the demo: 2 DDIM steps, latent-motion chunks);
    # otherwise Hallo3's reference: 50 dpmpp2m-SDE steps with CFG 3.5 over 13-latent clips
    trained = model_defaults(args.model)
    sampler = SamplerConfig(kind=args.sampler or trained.get("sampler", "dpmpp2m_sde"),  # bad values fail here
                            steps=args.steps if args.steps is not None else trained.get("steps", 50),
                            cfg_scale=args.cfg if args.cfg is not None else trained.get("cfg", 3.5))
    chunk = None
    if trained.get("motion") == "latent":
        chunk = ChunkSettings(chunk_latents=trained.get("chunk_latents", 2), motion="latent",
                              motion_noise=trained.get("motion_noise", 0.0),
                              motion_anchor=trained.get("motion_anchor", 0.0))
    if device.type == "cpu" and args.dtype == "fp16":
        # measured here: one VAE-sized conv3d takes 18.8 s in fp16 against 0.22 s in fp32 and 0.11 s in bf16
        warnings.warn("fp16 on CPU is very slow in PyTorch (most CPUs have no fp16 convolution kernels; "
                      "about 100x slower than fp32 here): use --dtype fp32 or bf16 on CPU, fp16 on CUDA")
    box = parse_box(args.face_box) if args.face_box else None
    image, waveform, num_frames = _read_inputs(args)
    face_mask, mask_source = resolve_face_mask(image, _original_size(args.image), args.face_mask, box)
    for path, what in ((args.face_embedding, "face embedding"), (args.text_embeddings, "text embeddings")):
        if path is not None:
            check_embedding_file(path, what)  # shapes need the model's config: checked after loading

    # 1. models
    t0 = time.perf_counter()
    pipeline, extractor = load_pipeline(args.model, vae=args.vae, audio_encoder=args.audio_encoder,
                                        dtype=args.dtype, device=device)
    pipeline.dit = apply_kernels_arg(pipeline.dit, args.kernels)
    pipeline.reference_net = apply_kernels_arg(pipeline.reference_net, args.kernels)
    backend_used = {"backend": "torch", "device": str(device), "kernels": args.kernels}
    if args.backend != "torch":
        from .graph_pipeline import graph_pipeline

        if args.kernels != "none":
            raise ValueError("--kernels applies to the torch backend; exported graphs carry their own ops")
        pipeline, extractor, backend_used = graph_pipeline(pipeline, extractor, args.backend, args.artifacts,
                                                           quiet=args.quiet)
    cfg = pipeline.dit.config
    if args.face_embedding is None and not uses_face_embedding(args.model):
        face, face_source = torch.zeros(cfg.face_embed_dim), "none (the model was trained without)"
    else:
        face, face_source = resolve_face_embedding(image, args.face_embedding, args.face_models,
                                                   cfg.face_embed_dim)
    text, text_source = resolve_text_embeddings(args.text_embeddings, cfg.text_len, cfg.text_dim)
    load_s = time.perf_counter() - t0

    # 2. audio features, padded to whole clips as Hallo3 does; the video is trimmed to the audio
    t0 = time.perf_counter()
    features = extractor(waveform, clip_length=pipeline.clip_frames if chunk is None else None)
    audio_s = time.perf_counter() - t0
    reference = prepare_reference(image, *pipeline.clip_size, face_mask=face_mask)
    height, width = pipeline.clip_size
    if reference.crop is not None:
        width = reference.crop[1]

    # 3. generate and write clip by clip
    if chunk is None:
        clips = clip_count(num_frames, pipeline.clip_frames, MotionConfig().motion_frames)
    else:
        first, then = (latent_chunk_frames(chunk.chunk_latents, start) for start in (True, False))
        clips = 1 + max(0, -(-(num_frames - first) // then))
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=clips * sampler.steps, unit="step", desc=f"clip 1/{clips}", file=sys.stderr)

    def on_step(clip: int, clips: int, step: int, steps: int) -> None:
        if bar is not None:
            bar.set_description(f"clip {clip + 1}/{clips}", refresh=False)
            bar.update(1)

    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    with Mp4Writer(args.out, width, height, fps=FPS, audio_path=args.audio) as writer:
        for frames in pipeline.generate(reference, features, face, text, sampler, generator=generator,
                                        progress=on_step, num_frames=num_frames, chunk=chunk):
            writer.write(frames.numpy())
    generate_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    wall_s = time.perf_counter() - t_start
    seconds = writer.frames_written / FPS
    summary = {
        "backend_used": backend_used,
        "out": str(Path(args.out)), "frames": writer.frames_written, "video_seconds": seconds,
        "size": f"{width}x{height}", "clips": clips, "model": cfg.name, "device": str(device),
        "dtype": args.dtype, "kernels": args.kernels, "sampler": sampler.kind, "steps": sampler.steps,
        "cfg_scale": sampler.cfg_scale,
        "seed": args.seed, "face_embedding": face_source, "face_region": mask_source, "text": text_source,
        "load_s": round(load_s, 3), "audio_features_s": round(audio_s, 3), "generate_s": round(generate_s, 3),
        "wall_s": round(wall_s, 3), "realtime_factor": round(seconds / wall_s, 4),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['out']}: {summary['frames']} frames ({seconds:.2f} s of video at {FPS} fps, "
              f"{summary['size']}) in {wall_s:.1f} s wall ({generate_s:.1f} s generating); "
              f"real-time factor {summary['realtime_factor']:.3f}")
    return 0
