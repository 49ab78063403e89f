"""Frame sinks for a streaming session: each consumes `Frame`s (image (H, W, 3) uint8, audio (640,) int16 at
16 kHz, index) as they are emitted and encodes them on the spot.

    Mp4Sink(path, width, height)          an MP4 file: H.264 + AAC, atomic (appears only when close() succeeds)
    FragmentedMp4Sink(write_bytes)        fragmented MP4 bytes (ftyp + moov, then moof + mdat pairs) for transport
    AnnexBSink(write_bytes)               raw H.264 Annex-B access units, video only
    PlaySink()                            live playback with sound, through ffplay

Timing: video frame i gets pts = i - (first index) at exactly 1/25 s, and its audio starts at sample
(i - first index) * 640 of the AAC track, so audio and video are aligned by construction. Indices must increase;
a jump (frames dropped upstream) leaves the video on its last picture and fills the audio with silence, so
sync survives the gap (counted in `gap_frames`).

Video is H.264 (libx264) yuv420p, BT.709 limited range, converted and tagged exactly as `media.Mp4Writer` does;
an odd width or height is padded by repeating the last column/row. Every sink: `write(frame)`, `close()`,
`abort()`, and `with` (an exception inside it aborts). A sink is used from one thread.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Callable

import numpy as np

from .frame import AUDIO_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from .media import MediaError, bt709_yuv420p_frame, check_writable, tag_bt709

FRAME_TIME_BASE = Fraction(1, VIDEO_FPS)
PLAY_INSTALL_HINT = "--play needs ffplay (Debian package ffmpeg: apt-get install ffmpeg) on PATH"

# One fragment per latent frame (4 video frames, 160 ms): a network client sees each chunk the model makes
# within ~3 frames (the AAC encoder's delay), at ~100 bytes of moof overhead per fragment.
DEFAULT_FRAGMENT_FRAMES = 4


def h264_options(crf: int, preset: str, keyframe_interval: int | None, low_latency: bool) -> dict[str, str]:
    """libx264 options. `low_latency`: no B-frames, no lookahead, one packet out per frame in (tune
    zerolatency). `keyframe_interval`: an IDR exactly every that many frames (scene-cut detection, which would
    add more, is off)."""
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise ValueError(f"crf must be an int in [0, 51] (x264's quality scale), got {crf!r}")
    options = {"crf": str(crf), "preset": preset}
    if low_latency:
        options.update({"tune": "zerolatency", "bf": "0"})
    if keyframe_interval is not None:
        if not (isinstance(keyframe_interval, int) and keyframe_interval > 0):
            raise ValueError(f"keyframe_interval must be a positive number of frames, got {keyframe_interval!r}")
        options.update({"g": str(keyframe_interval), "sc_threshold": "0"})
    return options


def _size(width: int | None, height: int | None) -> tuple[int | None, int | None]:
    if width is None and height is None:
        return None, None
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValueError(f"width and height must both be positive ints (or both None), got {width!r} x {height!r}")
    return width, height


class _ClosesOnExit:
    """`with sink:` closes on success and aborts (discarding the partial output) on an exception."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class _FrameSink(_ClosesOnExit, ABC):
    """What every sink shares: frame checks, index bookkeeping and the open -> closed | aborted lifecycle.
    Subclasses implement `_start()` (once the frame size is known), `_encode()`, `_finish()` and `_discard()`."""

    encodes_audio = True

    def __init__(self, width: int | None, height: int | None):
        self.width, self.height = _size(width, height)
        self.frames_written = 0
        self.gap_frames = 0  # indices skipped between written frames (see the module docstring)
        self._first_index: int | None = None
        self._next_index = 0
        self._state = "open"

    def _check(self, frame) -> tuple[np.ndarray, np.ndarray | None]:
        name = type(self).__name__
        index, image, audio = (getattr(frame, k, None) for k in ("index", "image", "audio"))
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{name}.write expects a Frame with a non-negative int index, got {index!r}")
        if self.width is not None:
            want = f"({self.height}, {self.width}, 3) uint8"
        else:
            want = "(H, W, 3) uint8"
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0
                and (self.width is None or image.shape[:2] == (self.height, self.width))):
            got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{name}.write expects frame.image as an RGB array {want}; got {got}")
        if not self.encodes_audio:
            return image, None
        if not (isinstance(audio, np.ndarray) and audio.dtype == np.int16 and audio.shape == (SAMPLES_PER_FRAME,)):
            got = f"{audio.dtype} {tuple(audio.shape)}" if isinstance(audio, np.ndarray) else type(audio).__name__
            raise ValueError(
                f"{name}.write expects frame.audio as int16 ({SAMPLES_PER_FRAME},) at {AUDIO_RATE} Hz; got {got}"
            )
        return image, audio

    def write(self, frame) -> None:
        """Encode one `Frame`; its index must be larger than the previous one's."""
        if self._state != "open":
            raise ValueError(f"{type(self).__name__} is already {self._state}; cannot write frame to it")
        image, audio = self._check(frame)
        index = int(frame.index)
        if self._first_index is not None and index < self._next_index:
            previous = self._next_index - 1
            raise ValueError(f"{type(self).__name__}.write expects increasing frame indices; got {index} after "
                             f"{previous}")
        try:
            if self._first_index is None:
                self.height, self.width = image.shape[:2]
                self._first_index = self._next_index = index
                self._start()
            gap = index - self._next_index
            self._encode(_even(image), index - self._first_index, audio, gap)
        except BaseException:
            self.abort()
            raise
        self.gap_frames += gap
        self.frames_written += 1
        self._next_index = index + 1

    def close(self) -> None:
        """Flush the encoders and finish the output. Closing twice is a no-op; a failure aborts."""
        if self._state != "open":
            return
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._state = "closed"

    def abort(self) -> None:
        """Stop, and discard what can be discarded (a partial file is removed)."""
        if self._state == "closed":
            return
        self._state = "aborted"
        self._discard()

    @property
    def closed(self) -> bool:
        return self._state != "open"

    @abstractmethod
    def _start(self) -> None:
        """Open the encoder and output once the frame size is known."""

    @abstractmethod
    def _encode(self, image: np.ndarray, position: int, audio: np.ndarray | None, gap: int) -> None:
        """Encode one frame at `position` (after `gap` skipped frames) with its audio."""

    @abstractmethod
    def _finish(self) -> None:
        """Flush the encoders and complete the output."""

    @abstractmethod
    def _discard(self) -> None:
        """Throw away what was written."""


def _even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column, as Mp4Writer does."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return image


def _video_frame(image: np.ndarray, position: int):
    frame = bt709_yuv420p_frame(image)
    frame.pts, frame.time_base = position, FRAME_TIME_BASE  # pts = frame number: exactly 25 fps, no drift
    return frame


# ----------------------------------------------------------------------------------------------- MP4 muxing


class _AacTrack:
    """The frames' own audio as an AAC track: int16 at AUDIO_RATE in, packets whose pts count samples out."""

    def __init__(self, container):
        import av

        # 16 kHz is an AAC rate; the fallback keeps this correct if AUDIO_RATE ever is not.
        self.rate = AUDIO_RATE if AUDIO_RATE in av.codec.Codec("aac", "w").audio_rates else 48000
        self.stream = container.add_stream("aac", rate=self.rate)
        ctx = self.stream.codec_context
        ctx.layout, ctx.format, ctx.time_base = "mono", "fltp", Fraction(1, self.rate)
        ctx.bit_rate = 64000  # transparent for speech, as in Mp4Writer
        # AAC eats 1024-sample frames; the resampler's FIFO regroups our 640-sample pieces.
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.rate, frame_size=1024)
        self._samples_in = 0
        self._samples_out = 0

    def encode(self, pcm: np.ndarray | None) -> list:
        """Packets for int16 (n,) `pcm`; None flushes the resampler and the encoder."""
        import av

        if pcm is None:
            resampled = self._resampler.resample(None)
        else:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm)[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self._samples_in, Fraction(1, AUDIO_RATE)
            self._samples_in += len(pcm)
            resampled = self._resampler.resample(frame)
        packets = []
        for out in resampled:
            out.pts, out.time_base = self._samples_out, Fraction(1, self.rate)
            self._samples_out += out.samples
            packets.extend(self.stream.encode(out))
        if pcm is None:
            packets.extend(self.stream.encode(None))
        return packets


class _MuxedSink(_FrameSink):
    """H.264 + AAC in an MP4 container that a subclass opens (`_open_container`)."""

    def __init__(self, width, height, crf: int, preset: str, keyframe_interval: int | None, low_latency: bool):
        super().__init__(width, height)
        self._options = h264_options(crf, preset, keyframe_interval, low_latency)
        self._container = None

    @abstractmethod
    def _open_container(self):
        """The output container (an av container opened for writing)."""

    def _start(self) -> None:
        self._container = self._open_container()
        video = self._container.add_stream("libx264", rate=VIDEO_FPS)
        video.width, video.height, video.pix_fmt = self.width + self.width % 2, self.height + self.height % 2, "yuv420p"
        video.codec_context.time_base = FRAME_TIME_BASE
        video.options = dict(self._options)
        tag_bt709(video.codec_context)
        self._video = video
        self._audio = _AacTrack(self._container)
        self._container.start_encoding()

    def _encode(self, image, position, audio, gap) -> None:
        if gap:
            self._container.mux(self._audio.encode(np.zeros(gap * SAMPLES_PER_FRAME, np.int16)))
        # mux() interleaves by timestamp across the two streams, so packets can go in as they come out.
        self._container.mux(self._video.encode(_video_frame(image, position)))
        self._container.mux(self._audio.encode(audio))

    def _flush(self) -> None:
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))
        self._container.close()

    def _close_container(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort on the way out: the output is discarded anyway
                pass


class Mp4Sink(_MuxedSink):
    """Frames to an MP4 file: H.264 at exactly 25 fps plus the frames' audio as AAC (16 kHz mono).

    Written to `.<name>.<random>.partial.mp4` beside `path` and renamed onto it by `close()` (with the index
    moved to the front, so it starts playing before it has downloaded); `abort()`, an exception inside `with`,
    or a failing `close()` removes it, leaving `path` untouched. `width`/`height`: the frames' size, or None to
    take it from the first frame.
    """

    def __init__(self, path: str | os.PathLike, width: int | None = None, height: int | None = None,
                 crf: int = 18, preset: str = "veryfast"):
        # crf 18, veryfast: as Mp4Writer (visually lossless, encoding far below the model's cost per frame).
        super().__init__(width, height, crf, preset, keyframe_interval=None, low_latency=False)
        self.path = check_writable(path)
        self._tmp_path = self.path.parent / f".{self.path.name}.{secrets.token_hex(4)}.partial.mp4"

    def _open_container(self):
        import av

        return av.open(str(self._tmp_path), mode="w", format="mp4", container_options={"movflags": "+faststart"})

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise MediaError(f"no frames were written for {str(self.path)!r}; nothing to save")
        self._flush()
        try:
            os.replace(self._tmp_path, self.path)
        except OSError as e:
            raise MediaError(f"cannot move the finished video onto {str(self.path)!r} ({e.strerror})") from e

    def _discard(self) -> None:
        self._close_container()
        self._tmp_path.unlink(missing_ok=True)

    def __del__(self):
        if getattr(self, "_state", None) == "open" and hasattr(self, "_tmp_path"):
            self.abort()

    def __repr__(self) -> str:
        return f"Mp4Sink({str(self.path)!r}, {self.frames_written} frames, {self._state})"


class _CallbackFile:
    """A write-only, non-seekable file object for PyAV: every byte FFmpeg writes goes to `write_bytes`."""

    def __init__(self, write_bytes: Callable[[bytes], None]):
        self._write_bytes = write_bytes
        self.bytes_written = 0
        self.discarding = False  # set by abort(): closing the muxer writes a last fragment nobody asked for

    def write(self, data) -> int:
        if not self.discarding:
            data = bytes(data)
            self._write_bytes(data)
            self.bytes_written += len(data)
        return len(data)


class FragmentedMp4Sink(_MuxedSink):
    """Frames to fragmented MP4 bytes, handed to `write_bytes` as they are produced: first `ftyp` + `moov`
    (written with the first fragment, once the AAC encoder's start delay is known, so the edit list trims it and
    audio stays aligned), then one `moof` + `mdat` per fragment. What MSE, DASH/HLS-fMP4 or `ffplay -` consume.

    A fragment is cut every `fragment_frames` frames (None: only at keyframes) and at every keyframe; a keyframe
    comes every `keyframe_interval` frames. x264 runs with tune zerolatency (no B-frames, no lookahead).
    `width`/`height`: the frames' size, or None to take it from the first frame.
    """

    def __init__(self, write_bytes: Callable[[bytes], None], width: int | None = None, height: int | None = None,
                 keyframe_interval: int = VIDEO_FPS, fragment_frames: int | None = DEFAULT_FRAGMENT_FRAMES,
                 crf: int = 23, preset: str = "veryfast"):
        if not callable(write_bytes):
            raise TypeError(f"write_bytes must be a callable taking bytes, got {type(write_bytes).__name__}")
        if fragment_frames is not None and not (isinstance(fragment_frames, int) and fragment_frames > 0):
            raise ValueError(f"fragment_frames must be a positive number of frames or None, got {fragment_frames!r}")
        super().__init__(width, height, crf, preset, keyframe_interval, low_latency=True)
        self.keyframe_interval, self.fragment_frames = keyframe_interval, fragment_frames
        self._file = _CallbackFile(write_bytes)

    @property
    def bytes_written(self) -> int:
        return self._file.bytes_written

    def _open_container(self):
        import av

        # empty_moov: the header holds no samples, so it can go out before the stream is over;
        # default_base_moof: offsets relative to each moof, so each fragment stands alone (what MSE requires);
        # delay_moov: the header waits for the first fragment, when the AAC priming delay is known, so the
        # edit list trims it (without it, audio lags video by 1024 samples and video pts shift).
        # The muxer flushes its output after every fragment, so each one reaches write_bytes as it is cut.
        options = {"movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov"}
        if self.fragment_frames is not None:
            options["frag_duration"] = str(self.fragment_frames * 1_000_000 // VIDEO_FPS)  # microseconds
        return av.open(self._file, mode="w", format="mp4", container_options=options)

    def _finish(self) -> None:
        if self._container is not None:
            self._flush()

    def _discard(self) -> None:
        self._file.discarding = True
        self._close_container()

    def __repr__(self) -> str:
        return f"FragmentedMp4Sink({self.frames_written} frames, {self.bytes_written} bytes, {self._state})"


# ----------------------------------------------------------------------------------------------- Annex-B


class AnnexBSink(_FrameSink):
    """Frames to raw H.264 Annex-B: one access unit (start-code-delimited NAL units) per `write_bytes` call,
    one per frame as soon as it is encoded (tune zerolatency: no B-frames, no lookahead, no frame delay).
    Each keyframe (every `keyframe_interval` frames) is an IDR preceded by SPS and PPS, so a receiver can join
    at any keyframe.

    Video only: the frames' audio is not encoded here. Send `frame.audio` (int16, 16 kHz, aligned with the frame
    at `frame.pts`) on its own channel, e.g. as Opus over WebRTC or raw PCM next to the access units.
    """

    encodes_audio = False

    def __init__(self, write_bytes: Callable[[bytes], None], width: int | None = None, height: int | None = None,
                 keyframe_interval: int = VIDEO_FPS, crf: int = 23, preset: str = "veryfast"):
        if not callable(write_bytes):
            raise TypeError(f"write_bytes must be a callable taking bytes, got {type(write_bytes).__name__}")
        super().__init__(width, height)
        self.keyframe_interval = keyframe_interval
        self._options = h264_options(crf, preset, keyframe_interval, low_latency=True)
        self._write_bytes = write_bytes
        self._codec = None
        self.bytes_written = 0

    def _start(self) -> None:
        import av

        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = self.width + self.width % 2, self.height + self.height % 2, "yuv420p"
        codec.time_base, codec.framerate = FRAME_TIME_BASE, Fraction(VIDEO_FPS)
        codec.options = dict(self._options)
        tag_bt709(codec)  # carried in the SPS's VUI, so decoders invert the right matrix
        # No global header: libx264 then writes SPS/PPS in-band before every IDR, Annex-B style.
        self._codec = codec

    def _emit(self, packets) -> None:
        for packet in packets:
            data = bytes(packet)
            self._write_bytes(data)
            self.bytes_written += len(data)

    def _encode(self, image, position, audio, gap) -> None:
        self._emit(self._codec.encode(_video_frame(image, position)))

    def _finish(self) -> None:
        if self._codec is not None:
            self._emit(self._codec.encode(None))

    def _discard(self) -> None:
        self._codec = None

    def __repr__(self) -> str:
        return f"AnnexBSink({self.frames_written} frames, {self.bytes_written} bytes, {self._state})"


# ----------------------------------------------------------------------------------------------- playback


class PlaySink(_ClosesOnExit):
    """Live playback with sound: frames go out as fragmented MP4 (one fragment per frame) into `ffplay`'s
    standard input; ffplay shows the video in sync with the audio clock.

    The pipe is the backpressure: when ffplay is behind, `write()` waits, so memory stays bounded. `close()`
    ends the stream and waits for ffplay to finish playing what it has (`wait=False` stops it instead).
    Closing the player window makes the next `write()` raise a RuntimeError.
    """

    def __init__(self, width: int | None = None, height: int | None = None, title: str = "hallo-rt",
                 ffplay: str = "ffplay"):
        executable = shutil.which(ffplay)
        if executable is None:
            raise FileNotFoundError(f"{PLAY_INSTALL_HINT}; {ffplay!r} was not found")
        self.command = [
            executable, "-hide_banner", "-loglevel", "error", "-autoexit", "-window_title", title,
            # Play what arrives now: no input buffering or probing beyond the moov, drop late video frames.
            "-fflags", "nobuffer", "-flags", "low_delay", "-framedrop", "-f", "mp4", "-i", "pipe:0",
        ]
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, bufsize=0)
        self._sink = FragmentedMp4Sink(self._send, width, height, fragment_frames=1)

    def _send(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
        except (BrokenPipeError, ValueError) as e:  # ValueError: stdin already closed
            raise RuntimeError(self._gone()) from e

    def _gone(self) -> str:
        try:  # a broken pipe can be seen a moment before the process is reaped
            code = self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        state = f"exited with code {code}" if code is not None else "stopped reading"
        return f"ffplay {state} (player window closed, or it could not play the stream); playback stopped"

    @property
    def frames_written(self) -> int:
        return self._sink.frames_written

    def write(self, frame) -> None:
        """Send one `Frame` to the player."""
        if self._process.poll() is not None and not self._sink.closed:
            self._sink.abort()
            raise RuntimeError(self._gone())
        self._sink.write(frame)

    def close(self, wait: bool = True) -> None:
        """End the stream; with `wait`, return once ffplay has played it to the end and exited."""
        if self._sink.closed and self._process.stdin.closed:
            return
        try:
            self._sink.close()
        finally:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass
            if wait:
                self._process.wait()
            else:
                self._stop()

    def abort(self) -> None:
        """Stop playback now."""
        self._sink.abort()
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        self._stop()

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    @property
    def closed(self) -> bool:
        return self._sink.closed
