"""The four stages of a streaming session (features -> denoise -> decode -> convert), each a thread.

`Session` (session.py) owns the queues, the locks and the public API; this mixin holds the loops, in the
order a frame goes through them. Every stage raises `_Stopped` when the session stops; any other exception
fails the session (`Session._fail`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from hallo_rt.engine.audio_features import video_frame_count
from hallo_rt.engine.chunks import pad_frames

from .frame import SAMPLES_PER_FRAME, VIDEO_FPS, Frame
from .frame_convert import to_rgb8

_END = object()
"""End of stream marker, passed down the stages after the last chunk."""


class _Stopped(Exception):
    """Raised inside a stage when the session stops."""


@dataclass
class _FrameInput:
    """One timeline frame waiting for the denoiser."""

    index: int
    features: torch.Tensor  # (window, layers, dim)
    audio: np.ndarray  # (640,) int16
    idle: bool
    real: bool  # False: clip padding of offline features, conditioning only, never emitted
    epoch: int
    t_audio: float  # when the audio that completed this frame's window arrived (monotonic)


@dataclass
class _Chunk:
    frames: list[_FrameInput]
    latents: torch.Tensor | None = None
    pixels: torch.Tensor | None = None  # (3, T, H, W) in [-1, 1]
    event: object = None  # CUDA event recorded after the producing stage, or None
    number: int = 0  # chunk counter of the session (stage events refer to it)


class Lanes:
    """CUDA streams for denoise, decode and device-to-host copies (handing tensors over with events), or
    nothing at all on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.streams = {n: torch.cuda.Stream(device) for n in ("denoise", "decode", "copy")} if self.cuda else {}

    def on(self, lane: str):
        return torch.cuda.stream(self.streams[lane]) if self.cuda else contextlib.nullcontext()

    def record(self, lane: str):
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(self.streams[lane])
        return event

    def wait(self, lane: str, event, tensor: torch.Tensor | None) -> None:
        """Make `lane` wait for `event`, and keep `tensor`'s memory alive for the work queued on it."""
        if self.cuda and event is not None:
            self.streams[lane].wait_event(event)
            if tensor is not None:
                tensor.record_stream(self.streams[lane])


class _Timeline:
    """The features stage's view of one epoch of audio (a `clear()` starts a new one): 16 kHz samples in,
    per-frame features and the frames' own samples out, with the ranges where silence was inserted."""

    def __init__(self, session, origin: int, epoch: int) -> None:
        from .streaming_features import StreamingAudioFeatures

        s = session.settings
        self.origin, self.epoch = origin, epoch
        self.offline = s.offline_features
        self.features = None if self.offline else StreamingAudioFeatures(
            session._extractor, lookahead_frames=s.lookahead_frames, context_frames=s.context_frames)
        self.lookahead = s.lookahead_frames + session._extractor.window // 2
        self.raw: list[np.ndarray] = []  # samples not handed to a frame yet
        self.raw_start = 0  # timeline sample index of raw[0][0]
        self.appended = 0
        self.taken = 0
        self.silence: list[tuple[int, int]] = []
        self.t_last = time.monotonic()
        self.ended = False

    def append(self, samples: np.ndarray, t: float, silence: bool = False) -> None:
        if silence:
            self.silence.append((self.appended, self.appended + samples.size))
        self.raw.append(samples)
        self.appended += samples.size
        self.t_last = t
        if self.features is not None:
            self.features.append(samples)

    def ready(self) -> int:
        """Frames whose features can be computed now."""
        return self.features.available_frames - self.features.frames_taken

    def finished(self) -> bool:
        total = self.features.total_frames
        return self.ended and total is not None and self.taken >= total

    def silence_for(self, frames: int) -> int:
        """Samples of silence that make `frames` more frames ready (whole feature blocks, with their
        windows' lookahead)."""
        block = self.features.block_frames
        wanted = self.taken + self.ready() + frames
        wanted = -(-wanted // block) * block
        target = (wanted + self.lookahead) * SAMPLES_PER_FRAME
        return max(0, target - self.appended)

    def _take_raw(self, count: int) -> np.ndarray:
        data = np.concatenate(self.raw) if self.raw else np.zeros(0, np.float32)
        out, rest = data[:count], data[count:]
        self.raw, self.raw_start = ([rest] if rest.size else []), self.raw_start + out.size
        return np.pad(out, (0, count - out.size))  # after the end of audio: zeros

    def frames(self, features: torch.Tensor, real: int, t: float) -> list[_FrameInput]:
        """The next features.shape[0] timeline frames, the first `real` of them emitted."""
        from .audio_input import to_int16

        count = features.shape[0]
        audio = to_int16(self._take_raw(count * SAMPLES_PER_FRAME)).reshape(count, SAMPLES_PER_FRAME)
        out = []
        for i in range(count):
            start = (self.taken + i) * SAMPLES_PER_FRAME
            idle = any(a <= start and start + SAMPLES_PER_FRAME <= b for a, b in self.silence)
            out.append(_FrameInput(self.origin + self.taken + i, features[i], audio[i], idle, i < real,
                                   self.epoch, t))
        self.taken += count
        return out


class StageWorkers:
    """The stage loops of `Session` (which provides the attributes they use)."""

    # --- 1. audio features ----------------------------------------------------------------------------

    def _features_stage(self) -> None:
        timeline = None
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set():
                        raise _Stopped
                    if self._reset_features:
                        timeline = _Timeline(self, self._next_index, self._epoch)
                        self._reset_features = False
                    pieces = list(self._pending)
                    self._pending.clear()
                    self._pending_samples = 0
                    ended = self._ended
                    room = self._store_capacity - len(self._store)
                    if pieces or (ended and not timeline.ended) or self._idle_due(timeline):
                        break
                    if not timeline.offline and room > 0 and timeline.ready() > 0:
                        break
                    self._cond.wait(0.05)
            for samples, t in pieces:
                timeline.append(samples, t)
            if ended and not timeline.ended:
                timeline.ended = True
                if timeline.features is not None:
                    timeline.features.end()
            if timeline.offline:
                if timeline.ended:
                    self._offline_features(timeline)
                    return
                continue
            self._stream_features(timeline, room)
            if timeline.finished():
                self._to_store([_END], timeline.epoch)
                return

    def _idle_due(self, timeline) -> bool:
        """Whether to feed silence now (see the module docstring of session.py)."""
        s, now = self.settings, time.monotonic()
        if not s.idle or s.offline_features or self._ended or self._consumer_t0 is None:
            return False
        if now - self._last_push < s.idle_timeout_s or len(self._store) >= self._need_frames:
            return False
        ahead = (timeline.origin + timeline.taken) / VIDEO_FPS - (now - self._consumer_t0)
        return ahead < s.idle_lead_s

    def _stream_features(self, timeline: _Timeline, room: int) -> None:
        with self._cond:
            if self._idle_due(timeline):
                short = self._need_frames - len(self._store) - timeline.ready()
                silence = timeline.silence_for(max(short, 1))
                if silence:
                    timeline.append(np.zeros(silence, np.float32), time.monotonic(), silence=True)
        count = min(timeline.ready(), room)
        if count <= 0:
            return
        start = time.perf_counter()
        features = timeline.features.take(count)
        self._timed("audio_features", start, frames=count)
        self._to_store(timeline.frames(features, count, timeline.t_last), timeline.epoch)

    def _offline_features(self, timeline: _Timeline) -> None:
        """Whole-file features, padded to whole clips in pixel mode as `hallo-rt generate` pads them."""
        samples = np.concatenate(timeline.raw) if timeline.raw else np.zeros(0, np.float32)
        total = video_frame_count(samples.size)
        if total == 0:
            self._to_store([_END], timeline.epoch)
            return
        chunk = self._gen.settings
        start = time.perf_counter()
        features = self._extractor(samples, clip_length=chunk.clip_frames if chunk.motion == "pixel" else None)
        self._timed("audio_features", start, frames=total)
        self._to_store(timeline.frames(features, total, timeline.t_last) + [_END], timeline.epoch)

    def _to_store(self, items: list, epoch: int) -> None:
        with self._cond:
            if epoch == self._epoch:
                self._store.extend(items)
                if items and isinstance(items[-1], _FrameInput):
                    self._next_index = items[-1].index + 1
                self._cond.notify_all()

    # --- 2. denoise ------------------------------------------------------------------------------------

    def _denoise_stage(self) -> None:
        gen = self._gen
        while True:
            count = gen.new_frames()
            with self._cond:
                self._need_frames = count
                self._cond.notify_all()
                while True:
                    if self._stop.is_set():
                        raise _Stopped
                    head = [self._store[i] for i in range(min(count, len(self._store)))]
                    if len(head) == count or _END in head:
                        break
                    self._cond.wait(0.05)
                frames = []
                while self._store and self._store[0] is not _END and len(frames) < count:
                    frames.append(self._store.popleft())
                self._cond.notify_all()
            if not frames:  # the end of the stream
                self._put(self._decode_q, _END)
                return
            if not any(f.real for f in frames):
                continue  # clip padding only: `generate` does not make these clips either
            if gen.motion.needs_decoded_frames and gen.chunks_denoised > 0:
                self._wait_motion()
            features = pad_frames(torch.stack([f.features for f in frames]), count)
            number = self._stats["chunks"]
            start = step_start = time.perf_counter()

            def steps_begin() -> None:  # after the chunk's setup (conditioning, noise, schedule)
                nonlocal step_start
                self._timed("denoise_setup", start, number)
                step_start = time.perf_counter()

            def step_done(step: int, steps: int) -> None:
                nonlocal step_start
                self._timed("denoise_step", step_start, number, step=step - 1)
                step_start = time.perf_counter()

            with self._lanes.on("denoise"), self.engine._denoise_lock:
                latents = gen.denoise(features, progress=step_done, on_start=steps_begin)
            event = self._lanes.record("denoise")
            self._timed("denoise", start, number)
            self._stats["chunks"] += 1
            self._put(self._decode_q, _Chunk(frames, latents=latents, event=event, number=number))

    def _wait_motion(self) -> None:
        while not self._motion_ready.acquire(timeout=0.05):
            if self._stop.is_set():
                raise _Stopped

    # --- 3. decode -------------------------------------------------------------------------------------

    def _decode_stage(self) -> None:
        gen = self._gen
        while True:
            chunk = self._get(self._decode_q)
            if chunk is _END:
                self._put(self._convert_q, _END)
                return
            self._lanes.wait("decode", chunk.event, chunk.latents)
            start = time.perf_counter()
            with self._lanes.on("decode"), self.engine._decode_lock:
                pixels = gen.decode(chunk.latents)  # (3, T, H, W)
            if gen.motion.needs_decoded_frames:
                self._motion_ready.release()
            chunk.pixels, chunk.latents = pixels[:, :len(chunk.frames)], None
            chunk.event = self._lanes.record("decode")
            self._timed("decode", start, chunk.number)
            self._put(self._convert_q, chunk)

    # --- 4. convert and emit ---------------------------------------------------------------------------

    def _convert_stage(self) -> None:
        while True:
            chunk = self._get(self._convert_q)
            if chunk is _END:
                with self._cond:
                    self._out.append(_END)
                    self._cond.notify_all()
                return
            frames = [f for f in chunk.frames if f.real and f.epoch == self._epoch]
            if not frames:
                continue
            start = time.perf_counter()
            images = self._to_host(chunk.pixels[:, :len(frames)], chunk.event).numpy()  # (T, H, W, 3)
            self._timed("convert", start, chunk.number, frames=len(frames))
            for frame, image in zip(frames, images):
                self._emit(Frame(frame.index, image, frame.audio, frame.idle), frame)

    def _to_host(self, pixels: torch.Tensor, event) -> torch.Tensor:
        """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W', 3) on the CPU, converted where the pixels are."""
        if not self._lanes.cuda:
            return to_rgb8(pixels, self._crop)
        self._lanes.wait("copy", event, pixels)
        with self._lanes.on("copy"):
            device_rgb = self._device_rgb(pixels)
            host = torch.empty(device_rgb.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(device_rgb, non_blocking=True)
            done = self._lanes.record("copy")
        done.synchronize()
        return host

    def _device_rgb(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 frames on the GPU: the native kernel when it is built, else the same arithmetic in torch."""
        native = self.engine._native_frames()
        return (native.to_rgb8 if native is not None else to_rgb8)(pixels, self._crop)

    def _emit(self, frame: Frame, source: _FrameInput) -> None:
        s = self.settings
        with self._cond:
            while s.backpressure == "wait" and self._frames_queued() >= s.max_buffered_frames:
                if self._stop.is_set():
                    raise _Stopped
                if source.epoch != self._epoch:
                    return
                self._cond.wait(0.05)
            if source.epoch != self._epoch:
                return  # cleared (barge-in) while this frame was on its way
            if s.backpressure == "drop":
                while self._frames_queued() >= s.max_buffered_frames:
                    self._out.popleft()
                    self._stats["frames_dropped"] += 1
            self._out.append(frame)
            now = time.monotonic()
            stats = self._stats
            if stats["first_frame_t"] is None:
                stats["first_frame_t"] = now
            stats["frames_emitted"] += 1
            stats["frames_idle"] += frame.idle
            stats["latencies"].append(now - source.t_audio)
            self._cond.notify_all()

    def _frames_queued(self) -> int:
        return sum(isinstance(x, Frame) for x in self._out)
