"""A streaming session: audio pushed in, lip-synced frames out at video rate.

Follow one frame: `push_audio` converts the PCM to 16 kHz mono (`audio_input.PcmConverter`) and queues it;
the **features** stage appends it to the stream's timeline and computes audio features over a bounded
window (`streaming_features`), frame by frame, into a bounded store; the **denoise** stage takes a chunk's
worth of frames and runs the few-step sampler (`engine.chunks.ChunkedGenerator`); the **decode** stage runs
the causal VAE; the **convert** stage turns the pixels into uint8 frames with their audio and puts them in
the output queue that `frames()` (async) or iterating the session (sync) reads.

Stages are threads joined by bounded queues. On CUDA, denoise, decode and the device-to-host copy run on
their own CUDA streams, handing tensors over with events. In pixel motion mode the next chunk waits for the
previous chunk's decode (its last frames condition it); in latent mode decoding overlaps denoising.

Policies (documented in the README):
- backpressure: the output queue holds `max_buffered_frames`. `wait` (default) blocks the pipeline when
  the consumer is slow; pushed audio then accumulates, up to `max_buffered_audio_s`, beyond which
  `push_audio` raises `AudioBufferOverflow` and keeps nothing of that push. `drop` discards the oldest
  queued frame (and its audio) instead and counts it in `stats()["frames_dropped"]`; frame indices keep
  their place on the timeline, so the consumer sees the gap.
- barge-in: `clear()` drops the audio not yet turned into frames and every frame not yet handed out; a
  chunk already being denoised is finished (the motion state needs it) but its frames are dropped. The
  next frame continues the timeline right after the last frame handed out.
- idle: while the consumer reads frames and no audio arrives for `idle_timeout_s`, silence is fed in (the
  pending partial chunk first), paced to stay at most `idle_lead_s` ahead of real time: the avatar keeps
  moving at video rate, never a frozen stream. Those frames have `idle=True` and zero audio.
- faults: an exception in any stage stops the session, releases its buffers and model state, and is
  raised as `SessionError` from `frames()`, iteration, `push_audio` and `end_audio`; other sessions of the
  engine keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .frame import Frame
from .streaming_features import DEFAULT_CONTEXT_FRAMES, DEFAULT_LOOKAHEAD_FRAMES
from .stages import _END, Lanes, StageWorkers, _Stopped

if TYPE_CHECKING:
    from .api import Engine


class SessionError(RuntimeError):
    """The session cannot go on: it failed in a stage, or was closed or ended."""


class AudioBufferOverflow(SessionError):
    """More audio was pushed than the session may buffer; nothing of that push was kept."""


@dataclass(frozen=True)
class StreamSettings:
    """Runtime policies of a session (the model-side settings are `ChunkSettings` and `SamplerConfig`)."""

    offline_features: bool = False
    """Wait for `end_audio()` and compute features on the whole file (Hallo3's offline features)."""

    lookahead_frames: int = DEFAULT_LOOKAHEAD_FRAMES
    """Encoder lookahead after a frame's +-2 feature window, in frames (4 = 160 ms, 240 ms in all)."""

    context_frames: int = DEFAULT_CONTEXT_FRAMES
    """Past audio the encoder sees before a block's window, in frames (50 = 2 s)."""

    backpressure: Literal["wait", "drop"] = "wait"
    """What a full output queue does: block the pipeline, or drop the oldest frame (counted)."""

    max_buffered_frames: int = 100
    """Output frames held for the consumer (4 s at 25 fps)."""

    max_buffered_audio_s: float = 120.0
    """Pushed audio held before it becomes frames; beyond it `push_audio` raises AudioBufferOverflow."""

    idle: bool = True
    """Feed silence when no audio arrives while the consumer reads frames."""

    idle_timeout_s: float = 0.5
    """How long without audio before silence is fed in."""

    idle_lead_s: float = 1.0
    """How far ahead of real time idle frames may run."""

    stage_events: int = 4096
    """Stage events kept for `Session.stage_events()` (about 8 per chunk; 0 keeps none). `hallo-rt bench`
    raises it to keep a whole run."""

    def __post_init__(self) -> None:
        if self.backpressure not in ("wait", "drop"):
            raise ValueError(f"backpressure must be 'wait' or 'drop', got {self.backpressure!r}")
        if self.max_buffered_frames < 1:
            raise ValueError(f"max_buffered_frames must be >= 1, got {self.max_buffered_frames}")
        if self.lookahead_frames < 0 or self.context_frames < 0:
            raise ValueError("lookahead_frames and context_frames must be >= 0")
        if self.max_buffered_audio_s <= 0 or self.idle_timeout_s <= 0 or self.idle_lead_s <= 0:
            raise ValueError("max_buffered_audio_s, idle_timeout_s and idle_lead_s must be positive")
        if self.stage_events < 0:
            raise ValueError(f"stage_events must be >= 0, got {self.stage_events}")


class Session(StageWorkers):
    """One stream: made by `Engine.session(...)`; see the module docstring for the stages and policies."""

    def __init__(self, engine: "Engine", generator, extractor, crop, settings: StreamSettings) -> None:
        from .audio_input import PcmConverter

        self.engine, self.settings = engine, settings
        self._gen, self._extractor, self._crop = generator, extractor, crop
        # feature frames held for the denoiser: two chunks ahead, and a few for the block granularity
        self._store_capacity = 2 * max(generator.new_frames(0), generator.new_frames(1)) + 8
        self._converter = PcmConverter()
        self._lanes = Lanes(engine.device)
        self._cond = threading.Condition()
        self._pending: deque[tuple[np.ndarray, float]] = deque()  # converted audio not yet in the timeline
        self._pending_samples = 0
        self._store: deque = deque()  # _FrameInput or _END, for the denoiser
        self._out: deque = deque()  # Frame, _END or an exception, for the consumer
        self._decode_q: queue.Queue = queue.Queue(maxsize=2)
        self._convert_q: queue.Queue = queue.Queue(maxsize=2)
        self._motion_ready = threading.Semaphore(0)
        self._stop = threading.Event()
        self._ended = self._closed = False
        self._error: BaseException | None = None
        self._epoch = 0
        self._reset_features = True  # the features stage (re)starts its feature stream
        self._next_index = 0  # next timeline frame the features stage creates
        self._last_out_index = -1  # last frame handed to the consumer
        self._consumer_t0: float | None = None
        self._last_push = time.monotonic()
        self._need_frames = 0  # frames the denoiser waits for
        self._stats = {"frames_emitted": 0, "frames_dropped": 0, "frames_idle": 0, "chunks": 0,
                       "first_push_t": None, "first_frame_t": None, "stage_s": {}, "latencies": deque(maxlen=500),
                       "events": deque(maxlen=settings.stage_events)}
        self._threads = [threading.Thread(target=self._run, args=(name, fn), name=f"hallo-rt-{name}", daemon=True)
                         for name, fn in (("features", self._features_stage), ("denoise", self._denoise_stage),
                                          ("decode", self._decode_stage), ("convert", self._convert_stage))]
        for thread in self._threads:
            thread.start()

    # --- public API ---------------------------------------------------------------------------------

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue PCM: int16 or float32, shape (n,) mono or (n, channels), any rate (resampled to 16 kHz).
        A zero-length push does nothing. Raises AudioInputError on bad input (nothing of it kept),
        AudioBufferOverflow when too much is buffered, SessionError after end_audio/close or a failure."""
        self._check_open("push_audio")
        with self._cond:
            samples = self._converter.push(pcm, sample_rate)
            limit = int(self.settings.max_buffered_audio_s * self.engine.audio_rate)
            if self._pending_samples + samples.size > limit:
                raise AudioBufferOverflow(
                    f"{(self._pending_samples + samples.size) / self.engine.audio_rate:.1f} s of audio would be "
                    f"buffered, more than max_buffered_audio_s={self.settings.max_buffered_audio_s}: the stream "
                    f"is behind (is the consumer reading frames?); this push was not kept")
            self._enqueue(samples)

    def end_audio(self) -> None:
        """No more audio: every pushed sample gets its frames, then the frame iterators finish."""
        self._check_open("end_audio")
        with self._cond:
            self._enqueue(self._converter.flush())
            self._ended = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Barge-in: drop queued audio and every frame not handed out yet (see the module docstring)."""
        with self._cond:
            self._epoch += 1
            self._pending.clear()
            self._pending_samples = 0
            self._store.clear()
            if self._ended:
                self._store.append(_END)  # nothing more is coming: the stream ends after the cleared part
            self._converter.flush()  # its tail belongs to the interrupted speech
            self._reset_features = True
            self._next_index = self._last_out_index + 1
            self._out = deque(x for x in self._out if not isinstance(x, Frame))
            self._cond.notify_all()

    async def frames(self):
        """Frames as they are ready, until the audio ended and every frame is out (async iterator)."""
        while True:
            item = await asyncio.to_thread(self._next_item, None)
            if item is _END:
                return
            yield item

    def __iter__(self):
        """Frames synchronously, as `frames()` (blocks between frames)."""
        while True:
            item = self._next_item(None)
            if item is _END:
                return
            yield item

    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None when the stream has finished; TimeoutError after `timeout` seconds."""
        item = self._next_item(timeout)
        return None if item is _END else item

    def stats(self) -> dict:
        """Live statistics: frames emitted/dropped/idle, fps, latency percentiles, queue depths, stage time."""
        s = self._stats
        now = time.monotonic()
        lat = sorted(s["latencies"])
        first = s["first_frame_t"]
        return {
            "frames_emitted": s["frames_emitted"], "frames_dropped": s["frames_dropped"],
            "frames_idle": s["frames_idle"], "chunks": s["chunks"],
            "fps": s["frames_emitted"] / (now - first) if first and now > first else 0.0,
            "ttff_s": first - s["first_push_t"] if first and s["first_push_t"] else None,
            "latency_p50_s": lat[len(lat) // 2] if lat else None,
            "latency_p90_s": lat[int(len(lat) * 0.9)] if lat else None,
            "queues": {"audio_s": self._pending_samples / self.engine.audio_rate, "features": len(self._store),
                       "decode": self._decode_q.qsize(), "convert": self._convert_q.qsize(), "out": len(self._out)},
            "stage_s": dict(s["stage_s"]),
            "state": "failed" if self._error else "closed" if self._closed else "ended" if self._ended else "open",
        }

    def stage_events(self) -> list[dict]:
        """What each stage did and when: {"stage", "chunk", "start", "end"} in `time.perf_counter()` seconds
        (the last `StreamSettings.stage_events`). Stages: audio_features (per call, with "frames"; chunk
        None), and per chunk: denoise (all of it), denoise_setup (lock wait, conditioning and noise, before
        the first step), denoise_step (with "step"), decode, convert (with "frames"). On CUDA the times are
        host-side (kernels are queued on the stage's stream): when each stage was busy issuing work, not GPU
        occupancy."""
        return list(self._stats["events"])

    def close(self) -> None:
        """Stop every stage and release the session's buffers and model state."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        self._release()
        self.engine._forget(self)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._error is not None:
            raise SessionError(f"{what}: the session failed: {self._error}") from self._error
        if self._closed:
            raise SessionError(f"{what}: the session is closed")
        if self._ended:
            raise SessionError(f"{what}: end_audio() was called; start a new session for more audio")

    def _enqueue(self, samples: np.ndarray) -> None:
        now = time.monotonic()
        if self._stats["first_push_t"] is None and samples.size:
            self._stats["first_push_t"] = now
        if samples.size:
            self._pending.append((samples, now))
            self._pending_samples += samples.size
            self._last_push = now
        self._cond.notify_all()

    def _next_item(self, timeout: float | None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._consumer_t0 is None:
                self._consumer_t0 = time.monotonic()
                self._cond.notify_all()
            while not self._out:
                if self._closed and self._error is None:
                    return _END
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame within {timeout} s")
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
            item = self._out[0]
            if isinstance(item, BaseException):
                raise SessionError(f"the stream failed: {item}") from item
            if item is _END:
                return _END
            self._out.popleft()
            self._last_out_index = item.index
            self._cond.notify_all()
            return item

    def _run(self, name: str, stage) -> None:
        try:
            if self._lanes.cuda:
                torch.cuda.set_device(self._lanes.device)
            with torch.inference_mode():
                stage()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer, the session stops
            self._fail(name, exc)

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._cond:
            if self._error is not None or self._closed:
                return
            exc.add_note(f"(in the session's {stage} stage)")
            self._error = exc
            self._stop.set()
            self._out = deque([exc])
            self._cond.notify_all()
        self._release()

    def _release(self) -> None:
        """Drop every buffer and the per-stream model state (reference K/V, decoder caches)."""
        with self._cond:
            self._pending.clear()
            self._store.clear()
            self._gen = None
            self._features = None
        for q in (self._decode_q, self._convert_q):
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()

    def _timed(self, stage: str, start: float, chunk: int | None = None, **detail) -> None:
        end = time.perf_counter()
        stage_s = self._stats["stage_s"]
        stage_s[stage] = stage_s.get(stage, 0.0) + end - start
        self._stats["events"].append({"stage": stage, "chunk": chunk, "start": start, "end": end, **detail})

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue):
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue

