"""`hallo-rt bench`: a streaming session measured end to end, in three phases on one engine.

1. **cold**: from constructing the engine (loading weights, exporting / compiling / building what the
   backend needs) to the first frame of a first session fed as fast as possible: `ttff_cold_s`.
2. **throughput**: a session fed N seconds of audio as fast as it takes it; the frames are encoded to H.264
   as they come (stage `encode`). Real-time factor (seconds of video per second of wall time, first push
   to last frame), steady-state fps (after the first chunk), per-stage time and overlap, the stage timeline.
3. **live**: the same audio pushed at real time in 20 ms pieces, as a microphone would: `ttff_warm_s`
   (first push to first frame, the engine warm), per-frame latency (arrival minus the moment the frame's
   last audio sample was pushed), chunk inter-arrival percentiles, deadline attainment and the underruns
   of a simulated viewer (`stream_metrics`).
Memory: peak resident set size of the process per phase (sampled every 20 ms) and, on CUDA, peak allocated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import stream_metrics as sm

BENCH_BACKENDS = ("torch", "torch-compile", "onnxruntime", "onnxruntime-int8", "tensorrt")
"""What `--backend` accepts; `onnxruntime-int8` is onnxruntime with dynamically quantised MatMul/Gemm."""

PIECE_S = 0.02
"""Audio is pushed in 20 ms pieces (a typical capture/WebRTC packet)."""

KEEP_EVENTS = 10_000_000
"""Stage events a benchmarked session keeps: all of them (about 8 per chunk)."""


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark configuration; its hash (`config_hash`) keys the results."""

    model: str = "tiny"
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "fp32"
    steps: int = 4
    cfg: float = 1.0
    sampler: str = "dpmpp2m_sde"
    chunk_latents: int = 2
    """2 latent frames per chunk, 8 frames each with latent motion (an even chunk decodes 4F frames from the
    start): the first frame comes sooner than with 3 (first chunk 9 frames) at a small cost in throughput on
    2 CPU cores; see benchmarks/README.md."""
    motion: str = "latent"
    seconds: float = 20.0
    """Audio per measured phase (the given file is trimmed or looped to this length)."""
    audio: str | None = None
    """A speech file; None: deterministic synthetic speech-like audio (`synthetic_speech`)."""
    image: str | None = None
    """A portrait; None: a deterministic synthetic one."""
    viewer_buffer_s: float = 0.25
    """How long the simulated viewer buffers after the first frame before it starts playing."""
    seed: int = 0
    threads: int | None = None
    artifacts: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BENCH_BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BENCH_BACKENDS)}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        if self.viewer_buffer_s < 0:
            raise ValueError(f"viewer_buffer_s must be >= 0, got {self.viewer_buffer_s}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads}")

    def compute_hash(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


# --- inputs ---------------------------------------------------------------------------------------------

def synthetic_speech(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Speech-like float32 audio: a voiced source (gliding pitch, 12 harmonics) in syllables of 120-300 ms
    with short pauses, and a little noise. Deterministic from `seed`; enough structure for the audio encoder,
    no claim to be speech."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    envelope = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        length = int(rate * rng.uniform(0.12, 0.30))
        gap = int(rate * rng.uniform(0.02, 0.25)) if rng.random() < 0.7 else int(rate * rng.uniform(0.3, 0.6))
        stop = min(n, pos + length)
        envelope[pos:stop] = np.sin(np.linspace(0, np.pi, stop - pos)) ** 2 * rng.uniform(0.4, 1.0)
        pos = stop + gap
    t = np.arange(n) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 3.1 * t + 1.0)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 13))
    audio = 0.25 * envelope * voiced + 0.003 * rng.standard_normal(n)
    return audio.astype(np.float32)


def synthetic_portrait(size: int = 256) -> np.ndarray:
    """A deterministic (size, size, 3) uint8 portrait-like picture: background gradient, face, eyes, mouth."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.2 + 0.3 * y, 0.3 + 0.2 * x, 0.5 - 0.2 * y], axis=-1)
    face = ((x - 0.5) / 0.28) ** 2 + ((y - 0.52) / 0.36) ** 2 < 1
    image[face] = (0.85, 0.68, 0.55)
    for cx in (0.4, 0.6):
        image[((x - cx) / 0.05) ** 2 + ((y - 0.45) / 0.03) ** 2 < 1] = (0.1, 0.1, 0.15)
    image[((x - 0.5) / 0.1) ** 2 + ((y - 0.7) / 0.025) ** 2 < 1] = (0.6, 0.2, 0.25)
    return (image * 255).clip(0, 255).astype(np.uint8)


def load_inputs(settings: BenchSettings) -> tuple[np.ndarray, np.ndarray]:
    """(16 kHz mono float32 audio of `settings.seconds`, (H, W, 3) uint8 image), checked."""
    from hallo_rt.runtime.media import read_audio, read_image

    if settings.audio is None:
        audio = synthetic_speech(settings.seconds, settings.seed)
    else:
        audio = read_audio(settings.audio)
        if audio.size == 0:
            raise ValueError(f"{settings.audio}: no audio samples")
        want = int(round(settings.seconds * 16000))
        audio = np.tile(audio, -(-want // audio.size))[:want]  # loop a short file, trim a long one
    image = synthetic_portrait() if settings.image is None else np.asarray(read_image(settings.image))
    return audio, image


# --- the engine -------------------------------------------------------------------------------------------

def build_engine(settings: BenchSettings):
    """The engine for `settings.backend`; raises with what is available when the backend is not."""
    from hallo_rt.runtime.api import Engine

    stream = {"steps": settings.steps, "cfg": settings.cfg, "chunk_latents": settings.chunk_latents,
              "motion": settings.motion, "sampler": settings.sampler}
    common = {"device": settings.device, "dtype": settings.dtype, "artifacts": settings.artifacts, **stream}
    if settings.backend == "onnxruntime-int8":
        return Engine(settings.model, backend="onnxruntime", backend_options={"quantize": "int8"}, **common)
    return Engine(settings.model, backend=settings.backend, **common)


# --- one session ------------------------------------------------------------------------------------------

class _MemorySampler:
    """Peak resident set size while running (every 20 ms), from /proc/self/statm."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(self.peak_bytes, rss)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> "_MemorySampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _feed(session, audio: np.ndarray, realtime: bool, pushes: list, errors: list) -> None:
    """Push `audio` in 20 ms pieces (on a monotonic real-time schedule when `realtime`), then end it."""
    piece = int(PIECE_S * 16000)
    try:
        start = time.perf_counter()
        for k, offset in enumerate(range(0, audio.size, piece)):
            if realtime:
                delay = start + (k + 1) * PIECE_S - time.perf_counter()  # a piece exists once it was spoken
                if delay > 0:
                    time.sleep(delay)
            session.push_audio(audio[offset:offset + piece], 16000)
            pushes.append((offset + min(piece, audio.size - offset), time.perf_counter()))
        session.end_audio()
    except Exception as err:  # noqa: BLE001 - handed to the consumer
        errors.append(err)


def _frame_audio_times(pushes: list[tuple[int, float]], frames: int) -> list[float]:
    """When each frame's last audio sample had been pushed (frame i covers samples [640 i, 640 (i + 1)))."""
    out, k = [], 0
    for i in range(frames):
        last = 640 * (i + 1)
        while k < len(pushes) - 1 and pushes[k][0] < last:
            k += 1
        out.append(pushes[k][1])
    return out


def run_stream(engine, audio: np.ndarray, image=None, *, seed: int = 0, realtime: bool = False,
               encode_to: str | os.PathLike | None = None, progress=None, max_frames: int | None = None,
               viewer_buffer_s: float = 0.25, **overrides) -> dict:
    """Run one session over `audio` (16 kHz mono float32) and measure it (see the module docstring).

    encode_to: an .mp4 path to encode the frames into (timed as stage `encode`); progress: a callable
    (frames_so_far, stats) called about every 0.25 s; max_frames: stop after this many frames (cold start).
    Returns the summary and the raw record ("events", "arrivals", "audio_times", "t0")."""
    from hallo_rt.runtime.sinks import Mp4Sink

    image = synthetic_portrait() if image is None else image
    with _MemorySampler() as memory:
        session = engine.session(image, face_embedding=torch.zeros(engine.pipeline.dit.config.face_embed_dim),
                                 seed=seed, **{"stage_events": KEEP_EVENTS, **overrides})
        sink = None
        pushes: list = []
        errors: list = []
        arrivals: list[float] = []
        encode_events: list[dict] = []
        feeder = threading.Thread(target=_feed, args=(session, audio, realtime, pushes, errors), daemon=True)
        t0 = time.perf_counter()
        last_report = t0
        try:
            sink = Mp4Sink(encode_to) if encode_to is not None else None
            feeder.start()
            for frame in session:
                arrivals.append(time.perf_counter())
                if sink is not None:
                    start = time.perf_counter()
                    sink.write(frame)
                    encode_events.append({"stage": "encode", "chunk": None, "start": start,
                                          "end": time.perf_counter()})
                if progress is not None and arrivals[-1] - last_report >= 0.25:
                    progress(len(arrivals), session.stats())
                    last_report = arrivals[-1]
                if max_frames is not None and len(arrivals) >= max_frames:
                    break
            if sink is not None:
                start = time.perf_counter()
                sink.close()
                encode_events.append({"stage": "encode", "chunk": None, "start": start, "end": time.perf_counter()})
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        finally:
            session.close()  # stops the stages first: their events are final
            stats = session.stats()
            events = session.stage_events() + encode_events
            feeder.join(timeout=5)
        if errors and max_frames is None:
            raise errors[0]
    if progress is not None:
        progress(len(arrivals), stats)
    return summarize(arrivals, pushes, events, stats, t0, viewer_buffer_s, memory.peak_bytes)


def summarize(arrivals: list[float], pushes: list, events: list[dict], stats: dict, t0: float,
              viewer_buffer_s: float, peak_rss_bytes: int) -> dict:
    """Metrics of one session from its recorded times (all `time.perf_counter()` seconds)."""
    frames = len(arrivals)
    chunk_sizes = [e.get("frames", 0) for e in sorted((e for e in events if e["stage"] == "convert"),
                                                      key=lambda e: e["chunk"])]
    chunk_times = sm.chunk_arrivals(arrivals, chunk_sizes)
    gaps = sm.interarrivals(chunk_times)
    audio_times = _frame_audio_times(pushes, frames) if pushes else []
    latencies = [a - b for a, b in zip(arrivals, audio_times)]
    first_push = pushes[0][1] if pushes else t0
    wall = arrivals[-1] - first_push if arrivals else 0.0
    first_chunk = chunk_sizes[0] if chunk_sizes else 0
    steady = arrivals[first_chunk:] if frames > first_chunk else []
    steady_fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 and steady[-1] > steady[0] else None
    video_s = frames / 25
    return {
        "frames": frames, "video_s": video_s, "wall_s": wall,
        "rtf": video_s / wall if wall > 0 else None,
        "fps": frames / wall if wall > 0 else None, "steady_fps": steady_fps,
        "ttff_s": arrivals[0] - first_push if arrivals else None,
        "chunks": len(chunk_times), "chunk_frames": chunk_sizes[:3],
        "interarrival_p50_s": sm.percentile(gaps, 50), "interarrival_p90_s": sm.percentile(gaps, 90),
        "interarrival_p99_s": sm.percentile(gaps, 99),
        "latency_p50_s": sm.percentile(latencies, 50), "latency_p90_s": sm.percentile(latencies, 90),
        "latency_p99_s": sm.percentile(latencies, 99),
        "deadline_attainment": sm.deadline_attainment(arrivals, viewer_buffer_s),
        "deadline_attainment_after_1s": sm.deadline_attainment(arrivals, viewer_buffer_s, after_s=1.0),
        "viewer": sm.simulate_viewer(arrivals, viewer_buffer_s),
        "frames_dropped": stats["frames_dropped"], "frames_idle": stats["frames_idle"],
        **sm.stage_summary(events, wall),
        "peak_rss_mb": peak_rss_bytes / 2**20,
        "raw": {"t0": first_push, "arrivals": arrivals, "latencies": latencies, "events": events},
    }


# --- the three phases -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _progress_bar(desc: str, total_s: float, enabled: bool):
    """A tqdm bar over seconds of video, with live fps and latency (closed however the phase ends); yields
    the update callback, a no-op when disabled."""
    if not enabled:
        yield lambda frames, stats: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=round(total_s, 2), desc=desc, unit="s video", leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s video [{elapsed}{postfix}]")

    def update(frames: int, stats: dict) -> None:
        bar.n = round(frames / 25, 2)
        lat = stats.get("latency_p50_s")
        bar.set_postfix_str(f"{stats['fps']:.1f} fps, latency p50 {lat * 1e3:.0f} ms" if lat else
                            f"{stats['fps']:.1f} fps")

    try:
        yield update
    finally:
        bar.close()


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "raw"}


def run_bench(settings: BenchSettings, progress: bool = True, encode_to: str | None = None) -> dict:
    """The three phases on one engine (module docstring); returns the report (the required keys at the top)."""
    from hallo_rt.runtime.devices import resolve_device

    resolve_device(settings.device)  # an unavailable device fails before anything loads
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    audio, image = load_inputs(settings)
    # 1. cold: construct the engine, then the first frame of a first session fed as fast as possible
    t_cold = time.perf_counter()
    engine = build_engine(settings)
    engine_s = time.perf_counter() - t_cold
    try:
        return _phases(engine, settings, audio, image, t_cold, engine_s, progress, encode_to)
    finally:
        engine.close()


def _phases(engine, settings: BenchSettings, audio: np.ndarray, image: np.ndarray, t_cold: float, engine_s: float,
            progress: bool, encode_to: str | None) -> dict:
    """The cold session's first frame, then the throughput and live phases (see the module docstring)."""
    from hallo_rt import __version__

    from .environment import machine, versions

    phases = {}
    cold = run_stream(engine, audio[:16000 * 3], image, seed=settings.seed, max_frames=1)
    ttff_cold = cold["raw"]["arrivals"][0] - t_cold if cold["frames"] else None
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    # 2. throughput: as fast as possible, encoding the frames
    with tempfile.TemporaryDirectory() as tmp:
        with _progress_bar("throughput", audio.size / 16000, progress) as update:
            phases["throughput"] = run_stream(engine, audio, image, seed=settings.seed, progress=update,
                                              encode_to=encode_to or os.path.join(tmp, "bench.mp4"),
                                              viewer_buffer_s=settings.viewer_buffer_s)
    # 3. live: pushed at real time
    with _progress_bar("live (real-time input)", audio.size / 16000, progress) as update:
        phases["live"] = run_stream(engine, audio, image, seed=settings.seed, realtime=True, progress=update,
                                    viewer_buffer_s=settings.viewer_buffer_s)
    gpu_peak = torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None
    described = engine.describe()
    throughput, live = phases["throughput"], phases["live"]
    return {
        "rtf": throughput["rtf"], "fps": throughput["steady_fps"],
        "ttff_cold_s": ttff_cold, "ttff_warm_s": live["ttff_s"],
        "deadline_attainment": live["deadline_attainment"],
        "deadline_attainment_after_1s": live["deadline_attainment_after_1s"],
        "interarrival_p50_s": live["interarrival_p50_s"], "interarrival_p90_s": live["interarrival_p90_s"],
        "interarrival_p99_s": live["interarrival_p99_s"],
        "latency_p50_s": live["latency_p50_s"], "latency_p99_s": live["latency_p99_s"],
        "underruns": live["viewer"]["underruns"], "viewer_buffer_s": settings.viewer_buffer_s,
        "stages": {name: throughput["stages"][name] for name in throughput["stages"]},
        "denoise_step_ms": throughput["denoise_step_ms"], "overlap_fraction": throughput["overlap_fraction"],
        "peak_cpu_rss_mb": max(p["peak_rss_mb"] for p in phases.values()),
        "peak_gpu_allocated_mb": gpu_peak,
        "backend_used": {**described["backend_used"], "requested": settings.backend},
        "device": described["device"], "model": described["model"], "frame_size": described["frame_size"],
        "engine_construct_s": engine_s,
        "machine": machine(), "versions": versions(hallo_rt=__version__, **_library_versions(settings.backend)),
        "config": dataclasses.asdict(settings), "config_hash": settings.compute_hash(),
        "phases": {name: _public(p) for name, p in phases.items()},
        "raw": {name: p["raw"] for name, p in phases.items()},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _library_versions(backend: str) -> dict:
    import av
    import numpy

    out = {"numpy": numpy.__version__, "av": av.__version__}
    if backend.startswith("onnxruntime"):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out
