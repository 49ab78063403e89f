"""Lip sync, identity and chunk seams of the demo avatar, measured on the held-out split.

    python -m hallo_rt.benchmarks.lipsync [--clips 8] [--seconds 4] [--model demo]
        [--compare teacher=runs/ship/teacher --compare student-4=runs/ship/student4 ...]
        [--backends torch,onnxruntime] [--chunks 1,2,3,4] [--out-dir benchmarks/results/lipsync]

Every held-out clip (people and sentences never trained on) is generated from its person's neutral portrait
and its speech, and the frames are read back:
  * lip sync: the mouth opening measured from the generated pixels (`train.faces.measure_opening`: the
    generator knows where the mouth is) against the ground-truth opening derived from the audio's loudness
    (`train.speech.mouth_track`), as a Pearson correlation over all frames of all clips (and per clip);
    the same with the audio of another clip (shuffled) is the control that must fail; and the same over the
    speech frames alone (truth > 0), where the silence-speech-silence shape every clip shares (which lifts the
    control) cannot help: it asks whether the mouth follows the syllables;
  * identity: PSNR and SSIM of the generated frames against the ground-truth frames outside the mouth region
    (the ground truth sways its head and blinks on its own schedule, so these are lower bounds);
  * seams: the mean absolute frame-to-frame difference at chunk boundaries over the one inside chunks (1 = no
    seam), with the ground truth's ratio at the same positions for comparison;
  * drift, second by second: the identity PSNR, and the detail ratio (the generated frames' mean absolute
    Laplacian over the ground truth's: a stream that drifts into blocks climbs, a blurred one sits below 1).
Variants: the shipped model streaming (a `Session`, as `hallo-rt stream` runs it) and offline (whole-file
features, as `hallo-rt generate` runs it), each backend, each chunk length, and other models (`--compare`:
the teacher, other students). Output: lipsync.json and lipsync.png (mouth opening vs audio loudness over
time for one clip, measured on the shipped model's stream).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_OUT = "benchmarks/results/lipsync"
MOUTH_MARGIN = 4
"""Pixels added around the mouth box when the identity metrics leave the mouth out."""


@dataclass(frozen=True)
class Variant:
    label: str
    model: str = "demo"
    mode: str = "stream"  # "stream" (a Session) or "offline" (whole-file features, the generate loop)
    backend: str = "torch"
    settings: dict = field(default_factory=dict)
    """Session overrides (steps, sampler, chunk_latents, ...); the rest are the model's own."""


# --- generation --------------------------------------------------------------------------------------------

def _engine(variant: Variant, cache: dict):
    from hallo_rt.runtime.api import Engine

    key = (variant.model, variant.backend, json.dumps(variant.settings, sort_keys=True))
    if key not in cache:
        options = {"quantize": "int8"} if variant.backend == "onnxruntime-int8" else None
        backend = "onnxruntime" if variant.backend == "onnxruntime-int8" else variant.backend
        cache.clear()  # one engine at a time: graph backends hold their sessions' memory
        cache[key] = Engine(variant.model, backend=backend, backend_options=options, **variant.settings)
    return cache[key]


def stream_frames(engine, portrait: np.ndarray, audio: np.ndarray, frames: int, seed: int = 0) -> np.ndarray:
    """Push the whole clip's audio into a session and collect its first `frames` frames (T, H, W, 3)."""
    session = engine.session(portrait, seed=seed)
    try:
        session.push_audio(audio, 16000)
        session.end_audio()
        images = [f.image for f in session]
    finally:
        session.close()
    if len(images) < frames:
        raise RuntimeError(f"the session gave {len(images)} frames for {frames} frames of audio")
    return np.stack(images[:frames])


def offline_frames(engine, portrait: np.ndarray, audio: np.ndarray, frames: int, seed: int = 0) -> np.ndarray:
    """The generate command's loop: whole-file features, the engine's chunk and sampler settings."""
    from hallo_rt.engine.reference_image import prepare_reference

    chunk, sampler, _ = engine.settings_for()
    pipeline, extractor = engine.pipeline, engine.extractor
    cfg = pipeline.dit.config
    features = extractor(audio)
    reference = prepare_reference(portrait, *pipeline.clip_size)
    out = list(pipeline.generate(reference, features, torch.zeros(cfg.face_embed_dim),
                                 torch.zeros(cfg.text_len, cfg.text_dim), sampler,
                                 generator=torch.Generator().manual_seed(seed), num_frames=frames, chunk=chunk))
    return torch.cat(out).numpy()


# --- measurement -------------------------------------------------------------------------------------------

def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def speech_frames_r(measured: np.ndarray, truth: np.ndarray) -> float | None:
    """Pearson r over the frames whose true opening is above zero (speech): speech vs silence cannot help."""
    speech = np.asarray(truth) > 0
    return pearson(np.asarray(measured)[speech], np.asarray(truth)[speech])


def measured_openings(frames: np.ndarray, identity) -> np.ndarray:
    from hallo_rt.train.faces import Pose, measure_opening

    return np.array([measure_opening(f, identity, Pose(), margin=2) for f in frames], np.float32)


def outside_mouth_mask(identity, poses, size: int) -> np.ndarray:
    """(T, size, size) bool: True outside every mouth box this frame could hold (its pose and the neutral one)."""
    from hallo_rt.train.faces import Pose, mouth_box

    mask = np.ones((len(poses), size, size), bool)
    neutral = mouth_box(identity, Pose(), size)
    for t, pose in enumerate(poses):
        for x0, y0, x1, y1 in (mouth_box(identity, pose, size), neutral):
            m = MOUTH_MARGIN
            mask[t, max(y0 - m, 0):y1 + m, max(x0 - m, 0):x1 + m] = False
    return mask


def _luma(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (T, H, W, 3) uint8 videos on luma (Gaussian window 11, sigma 1.5; Wang et al. 2004)."""
    x, y = _luma(a)[:, None], _luma(b)[:, None]
    coords = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t):
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), kernel)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[:, 0].numpy()


def identity_metrics(generated: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    diff = (generated.astype(np.float64) - truth.astype(np.float64)) ** 2
    mse = float(diff[mask].mean())
    return {"psnr_db": 10 * np.log10(255.0 ** 2 / max(mse, 1e-12)),
            "ssim": float(ssim_map(generated, truth)[mask].mean())}


def laplacian_energy(frames: np.ndarray) -> np.ndarray:
    """(T,) mean absolute 4-neighbour Laplacian of each frame's luma: the fine detail, blocks' edges included."""
    x = _luma(frames).numpy()
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.abs(lap).mean(axis=(1, 2))


def by_second(generated: np.ndarray, truth: np.ndarray, mask: np.ndarray, fps: int = 25) -> dict:
    """Per whole second of video: identity PSNR outside the mouth, and the detail ratio (generated / truth)."""
    psnr, detail = [], []
    for s in range(0, generated.shape[0] // fps * fps, fps):
        part = slice(s, s + fps)
        psnr.append(identity_metrics(generated[part], truth[part], mask[part])["psnr_db"])
        detail.append(float(laplacian_energy(generated[part]).mean() / max(laplacian_energy(truth[part]).mean(),
                                                                              1e-6)))
    return {"psnr_db": psnr, "detail_ratio": detail}


def chunk_starts(frames: int, chunk_latents: int) -> list[int]:
    """Indices of the first frame of every chunk after the first (LatentMotion's frame counts)."""
    from hallo_rt.engine.chunks import latent_chunk_frames

    first, then = (latent_chunk_frames(chunk_latents, start) for start in (True, False))
    return list(range(first, frames, then))


def seam_ratio(frames: np.ndarray, starts: list[int]) -> float | None:
    """Mean |frame[i] - frame[i-1]| over chunk starts i, over the same mean at every other i."""
    d = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # d[i-1]: frame i vs i-1
    at = np.zeros(d.size, bool)
    at[[s - 1 for s in starts if 0 < s <= d.size]] = True
    if not at.any() or at.all() or d[~at].mean() == 0:
        return None
    return float(d[at].mean() / d[~at].mean())


# --- the benchmark -----------------------------------------------------------------------------------------

def heldout_clips(count: int, seconds: float):
    from hallo_rt.train.clip_cache import dataset, reference_portrait

    data = dataset("heldout", clip_seconds=seconds)
    clips = [data[i] for i in range(count)]
    return clips, [reference_portrait(c.identity) for c in clips]


def evaluate(variant: Variant, clips, portraits, cache: dict, keep_series: bool = False) -> dict:
    engine = _engine(variant, cache)
    chunk, sampler, _ = engine.settings_for()
    generate = stream_frames if variant.mode == "stream" else offline_frames
    measured, truth, shuffled, per_clip, idents, seams, gt_seams, drift = [], [], [], [], [], [], [], []
    started = time.perf_counter()
    series = None
    for k, (clip, portrait) in enumerate(zip(clips, portraits)):
        T = clip.opening.size
        frames = generate(engine, portrait, clip.audio, T)
        opening = measured_openings(frames, clip.identity)
        measured.append(opening)
        truth.append(clip.opening)
        shuffled.append(np.resize(clips[(k + 1) % len(clips)].opening, T))  # cut or repeated to T frames
        per_clip.append(pearson(opening, clip.opening))
        mask = outside_mouth_mask(clip.identity, clip.poses, frames.shape[1])
        idents.append(identity_metrics(frames, clip.frames, mask))
        drift.append(by_second(frames, clip.frames, mask))
        starts = chunk_starts(T, chunk.chunk_latents)
        seams.append(seam_ratio(frames, starts))
        gt_seams.append(seam_ratio(clip.frames, starts))
        if keep_series and k == 0:
            from hallo_rt.train.speech import frame_loudness_db

            series = {"measured": opening.tolist(), "truth": clip.opening.tolist(),
                      "loudness_db": frame_loudness_db(clip.audio).tolist(), "sentence": clip.spec.sentence}
    seconds = time.perf_counter() - started
    pooled_m, pooled_t = np.concatenate(measured), np.concatenate(truth)
    valid = [c for c in per_clip if c is not None]
    result = {
        "label": variant.label, "model": variant.model, "mode": variant.mode,
        "backend_used": engine.backend_used, "chunk_latents": chunk.chunk_latents, "motion": chunk.motion,
        "sampler": sampler.kind, "steps": sampler.steps, "cfg": sampler.cfg_scale,
        "lipsync_r": pearson(pooled_m, pooled_t),
        "lipsync_r_per_clip_mean": float(np.mean(valid)) if valid else None,
        "lipsync_r_shuffled_audio": pearson(pooled_m, np.concatenate(shuffled)),
        "lipsync_r_speech_frames": speech_frames_r(pooled_m, pooled_t),
        "opening_mae": float(np.abs(pooled_m - pooled_t).mean()),
        "psnr_outside_mouth_db": float(np.mean([i["psnr_db"] for i in idents])),
        "ssim_outside_mouth": float(np.mean([i["ssim"] for i in idents])),
        "seam_ratio": _mean(seams), "seam_ratio_ground_truth": _mean(gt_seams),
        # drift: the clips' mean per second (clips share one length)
        "psnr_outside_mouth_by_second_db": np.mean([d["psnr_db"] for d in drift], axis=0).round(2).tolist(),
        "detail_ratio_by_second": np.mean([d["detail_ratio"] for d in drift], axis=0).round(3).tolist(),
        "wall_s": round(seconds, 2), "video_s": round(pooled_t.size / 25, 2),
    }
    if series is not None:
        result["series"] = series
    return result


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def plot(series: dict, label: str, r: float, path: Path) -> Path:
    from .plots import _save, require_matplotlib

    plt = require_matplotlib()
    t = np.arange(len(series["truth"])) / 25
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, series["truth"], label="ground-truth opening (from the audio)", color="tab:blue")
    ax.plot(t, series["measured"], label="opening measured in the generated frames", color="tab:red")
    ax.set_ylabel("mouth opening (0 closed, 1 open)")
    ax.set_xlabel("seconds")
    ax.set_ylim(-0.05, 1.05)
    twin = ax.twinx()
    twin.plot(t, series["loudness_db"], color="0.6", lw=0.8, label="audio loudness")
    twin.set_ylabel("loudness (dBFS)", color="0.4")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="upper right", fontsize=8)
    ax.set_title(f"{label}: held-out clip \"{series['sentence']}\" (r over all clips = {r:.2f})", fontsize=9)
    return _save(plt, fig, path)


def variants_from_args(args) -> list[Variant]:
    out = [Variant("shipped, stream", args.model)]
    out.append(Variant("shipped, offline", args.model, mode="offline"))
    for backend in args.backends:
        if backend != "torch":
            out.append(Variant(f"shipped, stream, {backend}", args.model, backend=backend))
    for chunk in args.chunks:
        if chunk != 2:
            out.append(Variant(f"shipped, stream, chunk {chunk}", args.model, settings={"chunk_latents": chunk}))
    for sigma in args.motion_noise:
        out.append(Variant(f"shipped, stream, motion noise {sigma:g}", args.model, settings={"motion_noise": sigma}))
    for spec in args.compare:
        label, _, rest = spec.partition("=")
        model, _, steps = rest.partition("@")
        settings = {"steps": int(steps)} if steps else {}
        out.append(Variant(label, model, settings=settings))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.benchmarks.lipsync",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="the shipped model (default: demo)")
    parser.add_argument("--clips", type=int, default=8, help="held-out clips (default 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip (default 4)")
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["torch"],
                        help="comma-separated: torch, torch-compile, onnxruntime, onnxruntime-int8 (default torch)")
    parser.add_argument("--chunks", type=lambda s: [int(v) for v in s.split(",")], default=[2],
                        help="chunk lengths in latent frames (default 2, the model's own)")
    parser.add_argument("--motion-noise", type=lambda s: [float(v) for v in s.split(",")], default=[],
                        help="comma-separated motion_noise values to stream with besides the model's own")
    parser.add_argument("--compare", action="append", default=[],
                        help="LABEL=MODEL[@STEPS]: another model to measure streaming (repeatable)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .environment import machine, versions

    clips, portraits = heldout_clips(args.clips, args.seconds)
    cache: dict = {}
    results, failed = [], []
    for i, variant in enumerate(variants_from_args(args)):
        print(f"[{i + 1}] {variant.label} ...", file=sys.stderr, flush=True)
        try:
            results.append(evaluate(variant, clips, portraits, cache, keep_series=i == 0))
        except Exception as exc:  # one variant failing (a backend, a model) must not lose the others' results
            if i == 0:
                raise  # the shipped model's own stream: nothing to report without it
            failed.append({"label": variant.label, "model": variant.model, "backend": variant.backend,
                           "error": f"{type(exc).__name__}: {exc}"})
            print(f"    FAILED: {failed[-1]['error']}", file=sys.stderr, flush=True)
            continue
        r = results[-1]
        print(f"    lip-sync r {r['lipsync_r']:.3f} (shuffled audio {r['lipsync_r_shuffled_audio']:.3f}, speech frames "
              f"{r.get('lipsync_r_speech_frames') or float('nan'):.3f}), PSNR "
              f"{r['psnr_outside_mouth_db']:.1f} dB, SSIM {r['ssim_outside_mouth']:.3f}, seams "
              f"{r['seam_ratio']:.2f} (ground truth {r['seam_ratio_ground_truth']:.2f}), {r['wall_s']} s; by "
              f"second PSNR {r['psnr_outside_mouth_by_second_db']}, detail {r['detail_ratio_by_second']}",
              file=sys.stderr, flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    series = results[0].pop("series")
    given = argv if argv is not None else sys.argv[1:]
    report = {"command": "python -m hallo_rt.benchmarks.lipsync " + shlex.join(given),
              "machine": machine(), "versions": versions(), "clips": args.clips, "seconds_per_clip": args.seconds,
              "target": {"lipsync_r_streaming_distilled": 0.7}, "results": results, "failed": failed,
              "plotted": series}
    (args.out_dir / "lipsync.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(series, results[0]["label"], results[0]["lipsync_r"], args.out_dir / "lipsync.png")
    print(f"wrote {args.out_dir / 'lipsync.json'} and lipsync.png", file=sys.stderr)
    if failed:
        print(f"{len(failed)} variant(s) failed: " + ", ".join(f["label"] for f in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
