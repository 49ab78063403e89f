"""Audio sources for a streaming session: iterators of `(pcm, sample_rate)` pieces that the caller pushes into
`session.push_audio(pcm, sample_rate)`.

    FileSource(path, realtime=False, piece_ms=20)                     any file FFmpeg decodes, at its own rate
    MicSource(device=None, sample_rate=16000, piece_ms=20, channels=1)  a capture device through PortAudio

Every piece is float32 in [-1, 1], shape (n,) for mono or (n, channels) interleaved, at the source's own rate:
resampling and downmixing are the session's job, so a source never changes the signal beyond decoding it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from fractions import Fraction
from typing import Iterator

import numpy as np

from .media import (
    MediaError,
    _decoded_audio_frames,
    _input_file,
    _open_audio,
    _resampled,
    _working_layout,
    audio_duration,
)

MIC_INSTALL_HINT = (
    "the microphone source needs PyAudio: pip install 'hallo-rt[mic]' (building it needs PortAudio's headers: "
    "apt-get install portaudio19-dev)"
)


def _piece_ms(piece_ms: float) -> Fraction:
    if isinstance(piece_ms, bool) or not isinstance(piece_ms, (int, float)) or not 0 < piece_ms <= 10_000:
        raise ValueError(f"piece_ms must be a number of milliseconds in (0, 10000], got {piece_ms!r}")
    return Fraction(piece_ms)


# ----------------------------------------------------------------------------------------------- file


class FileSource:
    """The audio of a file (any container or codec FFmpeg decodes, or a video's audio track) in pieces of
    `piece_ms`, at the file's own sample rate; mono stays (n,), anything wider becomes stereo (n, 2).

    With `realtime=True`, piece k is released at t0 + (its first sample) / rate, t0 being when the first piece
    was asked for: a schedule on the monotonic clock, so a late consumer gets the overdue pieces at once and the
    stream never drifts from wall-clock time. Otherwise pieces come as fast as they decode. Each iteration
    reopens the file, so a source can be iterated more than once; nothing stays open between iterations.
    """

    def __init__(self, path: str | os.PathLike, realtime: bool = False, piece_ms: float = 20):
        self.path = _input_file(path, "audio")
        self.realtime = bool(realtime)
        self.piece_ms = _piece_ms(piece_ms)
        # Open once now so a bad file fails here (MediaError naming it), not in the middle of a stream.
        container, stream = _open_audio(self.path)
        with container:
            self.layout = _working_layout(stream)
            first = next((f for f in _decoded_audio_frames(container, stream, self.path) if f.samples), None)
        if first is None:
            raise MediaError(f"audio file {str(self.path)!r} is empty: its audio stream has no samples")
        self.sample_rate: int = first.sample_rate
        self.channels = 1 if self.layout == "mono" else 2
        self._duration_s: float | None = None
        self._clock, self._sleep = time.monotonic, time.sleep  # replaceable, so tests can run on a fake clock

    @property
    def duration_s(self) -> float:
        """Seconds of audio, counted from the decoded samples (headers can be wrong); decoded on first use."""
        if self._duration_s is None:
            self._duration_s = audio_duration(self.path)
        return self._duration_s

    def _decoded_blocks(self) -> Iterator[np.ndarray]:
        """Every decoded sample as float32 (n, channels) blocks of whatever size the decoder produces."""
        import av

        container, stream = _open_audio(self.path)
        with container:
            # Packed float ("flt") is interleaved already; the rate is the file's own, so nothing is resampled.
            resampler = av.AudioResampler(format="flt", layout=self.layout, rate=self.sample_rate)
            for frame in _resampled(_decoded_audio_frames(container, stream, self.path), resampler, self.path):
                if frame.samples:
                    yield frame.to_ndarray().reshape(frame.samples, self.channels)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        rate = self.sample_rate
        samples_per_ms = Fraction(rate, 1000) * self.piece_ms
        pending: list[np.ndarray] = []
        held = 0  # samples in `pending`
        index, start = 0, 0  # next piece and its first sample
        t0 = None

        def boundary(k: int) -> int:
            # Boundaries come from the piece number, not from adding rounded sizes: 22.05 kHz x 20 ms = 441,
            # 11.025 kHz x 20 ms = 220.5 alternates 220/221 and stays on the exact timeline.
            return round(k * samples_per_ms)

        def cut(n: int) -> np.ndarray:
            nonlocal pending, held
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            pending, held = ([block[n:]] if n < len(block) else []), held - n
            return block[:n]

        def release(piece: np.ndarray) -> tuple[np.ndarray, int]:
            nonlocal t0
            if self.realtime:
                now = self._clock()
                t0 = now if t0 is None else t0
                wait = t0 + start / rate - now
                if wait > 0:
                    self._sleep(wait)
            # Lossy decoders overshoot full scale slightly; a source hands out valid PCM.
            piece = np.clip(piece, -1.0, 1.0)
            return (np.ascontiguousarray(piece[:, 0]) if self.channels == 1 else piece), rate

        for block in self._decoded_blocks():
            pending.append(block)
            held += len(block)
            while held >= boundary(index + 1) - start:
                end = boundary(index + 1)
                yield release(cut(end - start))
                index, start = index + 1, end
        if held:
            yield release(cut(held))

    def __repr__(self) -> str:
        return (f"FileSource({str(self.path)!r}, realtime={self.realtime}, piece_ms={float(self.piece_ms):g}, "
                f"{self.sample_rate} Hz, {self.layout})")


# ----------------------------------------------------------------------------------------------- microphone


def _import_pyaudio():
    try:
        import pyaudio
    except ImportError as e:
        raise ImportError(MIC_INSTALL_HINT) from e
    return pyaudio


def input_devices(pa) -> list[tuple[int, str, int, float]]:
    """(index, name, max input channels, default rate) of every capture device PortAudio sees."""
    found = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if info.get("maxInputChannels", 0) > 0:
            found.append((i, str(info["name"]), int(info["maxInputChannels"]), float(info["defaultSampleRate"])))
    return found


def _describe(devices: list[tuple[int, str, int, float]]) -> str:
    if not devices:
        return "PortAudio sees no capture device at all"
    return "capture devices: " + "; ".join(f"{i}: {name!r} ({ch} ch, {rate:g} Hz)" for i, name, ch, rate in devices)


def _resolve_device(pa, device: int | str | None) -> int:
    """A device index from None (the default input), an index, or a name (exact, else a unique substring)."""
    devices = input_devices(pa)
    if device is None:
        try:
            return int(pa.get_default_input_device_info()["index"])
        except (OSError, IOError) as e:
            raise ValueError(f"there is no default capture device ({e}); {_describe(devices)}") from e
    if isinstance(device, int) and not isinstance(device, bool):
        if any(i == device for i, *_ in devices):
            return device
        raise ValueError(f"capture device {device} does not exist or cannot record; {_describe(devices)}")
    if isinstance(device, str):
        exact = [i for i, name, *_ in devices if name == device]
        near = [i for i, name, *_ in devices if device.lower() in name.lower()]
        if exact or len(near) == 1:
            return (exact or near)[0]
        problem = "matches several" if near else "matches no"
        raise ValueError(f"capture device {device!r} {problem} device names; {_describe(devices)}")
    raise TypeError(f"device must be None, a device index (int) or a name (str), got {type(device).__name__}")


_END = object()


class MicSource:
    """Live audio from a capture device through PyAudio (PortAudio), in pieces of `piece_ms`.

    `device` is None (the system default), a PortAudio device index, or a name (exact, or a substring that
    matches one device); an unknown one raises ValueError listing the devices there are. Samples are captured
    as 16-bit PCM (what every device supports) and handed out as float32 in [-1, 1].

    PortAudio's callback thread fills a buffer of at most `max_buffer_s` seconds. If the consumer falls that far
    behind, new pieces are dropped and counted in `dropped_samples` rather than letting memory grow; input
    overruns reported by the device are counted in `overflows`. `close()` (or leaving `with`) stops capture
    and ends iteration, also when called from another thread while a consumer waits for the next piece.
    """

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = 16000,
        piece_ms: float = 20,
        channels: int = 1,
        max_buffer_s: float = 2.0,
    ):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 384000:
            raise ValueError(f"sample_rate must be an int number of Hz in [1000, 384000], got {sample_rate!r}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels!r}")
        if not (isinstance(max_buffer_s, (int, float)) and max_buffer_s > 0):
            raise ValueError(f"max_buffer_s must be a positive number of seconds, got {max_buffer_s!r}")
        self.sample_rate, self.channels = sample_rate, channels
        self.piece_ms = _piece_ms(piece_ms)
        self.piece_samples = max(1, round(Fraction(sample_rate, 1000) * self.piece_ms))
        self.max_pieces = max(1, int(max_buffer_s * sample_rate / self.piece_samples))
        self.dropped_samples = 0
        self.overflows = 0
        self._queue: queue.Queue = queue.Queue()  # bounded by the callback's own count check (see _on_audio)
        self._lock = threading.Lock()
        self._closed = True  # until the stream is open: close() and __del__ have nothing to release before
        self._stream = None
        pyaudio = _import_pyaudio()
        self._pyaudio = pyaudio
        self._pa = pyaudio.PyAudio()
        try:
            self.device_index = _resolve_device(self._pa, device)
            self.device_name = str(self._pa.get_device_info_by_index(self.device_index)["name"])
            self._stream = self._open_stream()
        except BaseException:
            self._pa.terminate()
            raise
        self._closed = False

    def _open_stream(self):
        pyaudio = self._pyaudio
        try:
            return self._pa.open(format=pyaudio.paInt16, channels=self.channels, rate=self.sample_rate,
                                 input=True, input_device_index=self.device_index,
                                 frames_per_buffer=self.piece_samples, stream_callback=self._on_audio)
        except (OSError, ValueError) as e:  # PortAudio: invalid sample rate / channel count / device busy
            raise OSError(
                f"cannot record from capture device {self.device_index} {self.device_name!r} at "
                f"{self.sample_rate} Hz, {self.channels} channel(s) ({e}); "
                f"{_describe(input_devices(self._pa))}"
            ) from e

    def _on_audio(self, data: bytes, frame_count: int, time_info, status: int):
        # Runs on PortAudio's thread: no allocation beyond the bytes object, never blocks.
        if status & self._pyaudio.paInputOverflow:
            self.overflows += 1
        if self._queue.qsize() >= self.max_pieces:
            self.dropped_samples += frame_count
        else:
            self._queue.put(data)
        return None, self._pyaudio.paContinue

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        while True:
            data = self._queue.get()
            if data is _END:
                self._queue.put(_END)  # a second iterator, or the same one resumed, ends too
                return
            pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0  # int16 full scale -> [-1, 1)
            yield (pcm if self.channels == 1 else pcm.reshape(-1, self.channels)), self.sample_rate

    def close(self) -> None:
        """Stop capturing and release the device; an iteration in progress ends after the buffered pieces."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._stream is not None:
                self._stream.stop_stream()
                self._stream.close()
        finally:
            self._pa.terminate()
            self._queue.put(_END)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> MicSource:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def __del__(self):
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        return (f"MicSource(device={getattr(self, 'device_name', None)!r}, sample_rate={self.sample_rate}, "
                f"piece_ms={float(self.piece_ms):g}, channels={self.channels})")
