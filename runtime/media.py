"""Media I/O for the offline pipeline: audio in (any container or codec FFmpeg decodes), a portrait image in,
an MP4 (H.264 + AAC) out, and `probe` to check what was written.

    read_audio(path) -> float32 (N,)        mono in [-1, 1] at 16 kHz, every sample of the file
    read_image(path) -> uint8 (H, W, 3)     RGB, EXIF orientation applied, huge images downscaled while decoding
    Mp4Writer(out, W, H, fps, audio_path)   atomic: the final file appears only when `close()` succeeds

Every failure a user can cause (wrong path, wrong kind of file, corrupt data, an unwritable output directory)
raises `MediaError` with one line that names the file, says what is wrong and what was expected. PyAV and
Pillow are core dependencies but are imported inside the functions, so `import hallo_rt` stays light.
"""

from __future__ import annotations

import math
import os
import secrets
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

AUDIO_EXPECTED = "expected WAV, FLAC, MP3, M4A/AAC, OGG/Opus or a video file with an audio track"
IMAGE_EXPECTED = "expected a JPEG, PNG, WebP, BMP or TIFF portrait"

# -80 dBFS, about 3 LSB of 16-bit audio: the dither or hiss of a "silent" recording stays below it, while even
# whispered speech peaks 40 dB above it. A clip under it would drive the model with no audio at all.
SILENCE_PEAK = 1e-4

# 16 MP is 4x a 4K frame and ~50x the 480x720 the model runs at: plenty for face cropping, 48 MB as RGB.
MAX_IMAGE_PIXELS = 16_000_000
# The largest single-frame camera sensors are ~150 MP; bigger is a panorama, a scan or a decompression bomb.
# JPEGs are reduced by the decoder (draft), other formats decode at full size first: <= 4 B/px, so 600 MB peak.
MAX_SOURCE_PIXELS = 150_000_000


class MediaError(ValueError):
    """A media file that cannot be used: the message names the file, the problem and what was expected."""


class MediaWarning(UserWarning):
    """A media file was usable only after a change (e.g. downscaled, or corrupt packets skipped)."""


def _input_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{what} file {str(p)!r} does not exist")
    if p.is_dir():
        raise MediaError(f"{what} path {str(p)!r} is a directory, not a file; {what} file expected")
    if not os.access(p, os.R_OK):
        raise MediaError(f"{what} file {str(p)!r} is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise MediaError(f"{what} file {str(p)!r} is empty (0 bytes)")
    return p


# ----------------------------------------------------------------------------------------------- audio in


def _open_audio(p: Path):
    """Open `p` with PyAV; return (container, its best audio stream)."""
    import av

    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise MediaError(
            f"cannot read audio file {str(p)!r}: FFmpeg cannot decode it ({reason}); {AUDIO_EXPECTED}"
        ) from e
    stream = container.streams.best("audio")
    if stream is None:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        held = f"only {' and '.join(kinds)}" if kinds else "no streams at all"
        raise MediaError(f"{str(p)!r} has no audio stream ({held}); {AUDIO_EXPECTED}")
    if stream.codec_context is None:  # PyAV leaves it unset when this FFmpeg build has no decoder for the codec
        container.close()
        raise MediaError(f"audio file {str(p)!r} uses a codec this FFmpeg build cannot decode; {AUDIO_EXPECTED}")
    return container, stream


def _decoded_audio_frames(container, stream, p: Path):
    """Yield every decoded frame. A packet the decoder rejects is skipped (as the ffmpeg CLI does) with a
    warning; a file where every packet fails is corrupt."""
    import av

    decoded = skipped = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                skipped += 1
                continue
            for frame in frames:
                decoded += 1
                yield frame
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"audio file {str(p)!r} is corrupt: reading failed after {decoded} frames ({e})") from e
    if skipped and not decoded:
        raise MediaError(f"audio file {str(p)!r} is corrupt: none of its {skipped} packets could be decoded")
    if skipped:
        warnings.warn(f"audio file {str(p)!r}: skipped {skipped} corrupt packets", MediaWarning, stacklevel=3)


def _resampled(frames, resampler, p: Path):
    """Run decoded frames through `resampler` and flush it at the end, so no trailing samples are lost."""
    try:
        for frame in frames:
            yield from resampler.resample(frame)
        yield from resampler.resample(None)
    except ValueError as e:  # PyAV: "Frame does not match AudioResampler setup."
        raise MediaError(f"audio file {str(p)!r} changes sample rate or channel layout mid-stream ({e})") from e


def _working_layout(stream) -> str:
    # FFmpeg's own downmix to mono is 0.707 * (L + R) for float output (no normalisation), which is louder than
    # either channel and clips; we keep stereo and average in numpy. Surround sources go through FFmpeg's
    # standard surround-to-stereo matrix first.
    return "mono" if stream.codec_context.channels == 1 else "stereo"


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the audio of `path` (any container/codec FFmpeg reads, or a video's audio track) to mono float32
    in [-1, 1] at `sample_rate`. Stereo is averaged; every sample is kept (the resampler is flushed)."""
    import av

    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    p = _input_file(path, "audio")
    container, stream = _open_audio(p)
    with container:
        resampler = av.AudioResampler(format="fltp", layout=_working_layout(stream), rate=sample_rate)
        chunks = [f.to_ndarray() for f in _resampled(_decoded_audio_frames(container, stream, p), resampler, p)]
    chunks = [c for c in chunks if c.shape[-1]]
    if not chunks:
        raise MediaError(f"audio file {str(p)!r} is empty: its audio stream has no samples; {AUDIO_EXPECTED}")
    channels = np.concatenate(chunks, axis=1)  # (C, N) planar float32
    # Lossy decoders and the surround matrix can overshoot full scale slightly.
    return np.clip(channels.mean(axis=0), -1.0, 1.0).astype(np.float32, copy=False)


def audio_duration(path: str | os.PathLike) -> float:
    """Seconds of audio in `path`, counted from the decoded samples (headers can be wrong or missing)."""
    p = _input_file(path, "audio")
    container, stream = _open_audio(p)
    with container:
        seconds = sum(f.samples / f.sample_rate for f in _decoded_audio_frames(container, stream, p))
    if seconds == 0:
        raise MediaError(f"audio file {str(p)!r} is empty: its audio stream has no samples; {AUDIO_EXPECTED}")
    return seconds


def check_not_silent(waveform: np.ndarray, path: str | os.PathLike, threshold: float = SILENCE_PEAK) -> None:
    """Raise MediaError if `waveform` (decoded from `path`) never rises above `threshold` (-80 dBFS)."""
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak < threshold:
        level = "digital silence" if peak == 0 else f"peak {20 * math.log10(peak):.0f} dBFS"
        raise MediaError(
            f"audio file {str(path)!r} is silent ({level}, below {20 * math.log10(threshold):.0f} dBFS); "
            "expected speech to drive the talking head"
        )


# ----------------------------------------------------------------------------------------------- image in


_IMAGE_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
                     b"MM\x00*": "TIFF"}


def _image_signature(p: Path) -> str | None:
    """The format a file's first bytes announce, to tell a broken image from something that is not one."""
    with p.open("rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def _open_image(p: Path, max_source_pixels: int):
    """Image.open reads only the header: size checks happen before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow warns from 89 MP (its global MAX_IMAGE_PIXELS) and raises from 179 MP; our own limit below
        # governs instead, without touching that process-wide setting.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError as e:
        raise MediaError(f"image file {str(p)!r} is refused as a decompression bomb ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        kind = _image_signature(p)
        if kind:
            raise MediaError(
                f"image file {str(p)!r} starts like a {kind} but is truncated or corrupt; {IMAGE_EXPECTED}"
            ) from e
        raise MediaError(f"{str(p)!r} is not an image file Pillow can read; {IMAGE_EXPECTED}") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise MediaError(f"image file {str(p)!r} has zero size ({w}x{h}); {IMAGE_EXPECTED}")
    if w * h > max_source_pixels:
        img.close()
        raise MediaError(
            f"image file {str(p)!r} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_source_pixels / 1e6:.0f} MP "
            "limit: refused as a likely decompression bomb; expected a photograph"
        )
    return img


def _to_rgb(img) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3). Transparent pixels are composited on black."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # Pillow clips these to 0..255 when converting; scale instead. "I" is how older Pillows open 16-bit
        # PNGs, so it is read as 16-bit; "F" (float TIFF) as 0..1.
        values = np.asarray(img).astype(np.float64)
        full_scale = 1.0 if img.mode == "F" else 65535.0
        gray = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        img = Image.fromarray(gray)
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        # Black, i.e. premultiplied alpha: what a cut-out portrait over a matte looks like, and what dropping
        # alpha gives for the usual PNG export that stores transparent pixels as (0, 0, 0, 0).
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    # np.array, not asarray: asarray would wrap Pillow's read-only bytes.
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))


def _shrink(img, max_pixels: int):
    """Reduce `img` by the smallest integer factor that fits `max_pixels`. A JPEG is reduced by its decoder
    (1/2, 1/4 or 1/8, in the DCT domain), so the full-size image is never in memory; other formats are decoded
    at full size, then box-averaged (`reduce`, which is its own anti-aliasing filter)."""
    w, h = img.size
    factor = math.ceil(math.sqrt(w * h / max_pixels))
    if img.format in ("JPEG", "MPO"):  # MPO: the multi-picture JPEG many phones write
        scale = min(8, 1 << (factor - 1).bit_length())  # next power of two >= factor
        img.draft("RGB", (w // scale, h // scale))  # picks the largest scale whose output still covers the box
        img.load()
        w, h = img.size
    factor = max(1, math.ceil(math.sqrt(w * h / max_pixels)))
    while math.ceil(w / factor) * math.ceil(h / factor) > max_pixels:
        factor += 1
    if factor == 1:
        return img
    # reduce() averages values, so it refuses (or would garble) palette indices, bits and 16-bit modes.
    if img.mode in ("1", "P", "PA") or img.mode.startswith("I;16"):
        img = img.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(img.mode, "I"))
    return img.reduce(factor)


def read_image(
    path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, max_source_pixels: int = MAX_SOURCE_PIXELS
) -> np.ndarray:
    """Read `path` as a new, writable uint8 RGB array (H, W, 3) with its EXIF orientation applied.

    An image over `max_pixels` is shrunk by the smallest integer factor that fits (a JPEG by its decoder, so
    it never exists at full size), with a `MediaWarning`; one over `max_source_pixels` is refused as a
    decompression bomb.
    """
    from PIL import Image, ImageOps

    p = _input_file(path, "image")
    source = _open_image(p, max_source_pixels)
    w, h = source.size
    try:
        img = _shrink(source, max_pixels) if w * h > max_pixels else source
        if img is not source:
            source.close()  # frees the decoded full-size pixels (non-JPEG) before the conversions below
        if img.size != (w, h):
            warnings.warn(
                f"image file {str(p)!r} is {w}x{h} ({w * h / 1e6:.0f} MP): downscaled to "
                f"{img.size[0]}x{img.size[1]} while decoding (limit {max_pixels / 1e6:g} MP)",
                MediaWarning,
                stacklevel=2,
            )
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when there is nothing to rotate
        rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"image file {str(p)!r} is truncated or corrupt ({e}); {IMAGE_EXPECTED}") from e
    finally:
        source.close()
    return rgb


# ----------------------------------------------------------------------------------------------- MP4 out


def check_writable(out_path: str | os.PathLike) -> Path:
    """Raise MediaError unless an MP4 can be created at `out_path` (not a directory, its directory exists and
    accepts new files). Cheap: call it before minutes of generation. Returns the path."""
    p = Path(out_path)
    if p.is_dir():
        raise MediaError(f"output path {str(p)!r} is a directory; expected a file name such as {str(p / 'out.mp4')!r}")
    if p.suffix.lower() not in (".mp4", ".m4v"):
        raise MediaError(f"output file {str(p)!r} must end in .mp4 (an MP4 with H.264 video is written)")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise MediaError(f"cannot write {str(p)!r}: output directory {str(parent)!r} {what}")
    # Creating a file is the only reliable test (os.access is always True for root, blind to read-only mounts).
    try:
        fd, probe_file = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise MediaError(
            f"cannot write {str(p)!r}: output directory {str(parent)!r} is not writable ({e.strerror})"
        ) from e
    os.close(fd)
    os.unlink(probe_file)
    return p


def tag_bt709(codec_context) -> None:
    """Tag an H.264 encoder's output as BT.709 limited range: the matrix `bt709_yuv420p_frame` converts with,
    so players and probe() invert the same one."""
    from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

    codec_context.colorspace, codec_context.color_range = Colorspace.ITU709, ColorRange.MPEG
    codec_context.color_primaries, codec_context.color_trc = ColorPrimaries.BT709, ColorTrc.BT709


def bt709_yuv420p_frame(image: np.ndarray):
    """(H, W, 3) uint8 RGB, H and W even -> an av.VideoFrame in yuv420p, BT.709 limited range."""
    import av
    from av.video.reformatter import ColorRange, Colorspace

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return rgb.reformat(format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)


class Mp4Writer:
    """Write RGB frames to an MP4: H.264 (libx264, yuv420p, BT.709 limited range) at exactly `fps`, plus, if
    `audio_path` is given, that file's whole audio re-encoded to AAC (its rate if AAC has it, else 48 kHz; mono
    stays mono, anything wider becomes stereo).

    The file is written to `.<name>.<random>.partial.mp4` beside `out_path` and renamed onto it by `close()`;
    an exception inside `with`, `abort()`, or a failing `close()` removes it, so `out_path` is either complete
    or untouched. yuv420p needs even sizes: an odd width/height is padded by repeating the last column/row
    (`encoded_width`, `encoded_height` give the stored size); frames are still given at `width` x `height`.
    """

    def __init__(
        self,
        out_path: str | os.PathLike,
        width: int,
        height: int,
        fps: int | float | Fraction = 25,
        audio_path: str | os.PathLike | None = None,
        crf: int = 18,
        preset: str = "veryfast",
    ):
        import av

        self.out_path = check_writable(out_path)
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise ValueError(f"width and height must be positive ints, got {width!r} x {height!r}")
        self.fps = Fraction(fps).limit_denominator(1001)  # a float 29.97 becomes 2997/100, not a 2**52 denominator
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.width, self.height = width, height
        self.encoded_width, self.encoded_height = width + width % 2, height + height % 2
        self.frames_written = 0
        self._audio_packets: deque = deque()
        self._state = "open"
        # Validate the audio before creating any file: a bad --audio fails here, not after generation.
        audio = _AudioSource(audio_path) if audio_path is not None else None
        self._tmp_path = self.out_path.parent / f".{self.out_path.name}.{secrets.token_hex(4)}.partial.mp4"
        try:
            self._container = av.open(str(self._tmp_path), mode="w", format="mp4",
                                      container_options={"movflags": "+faststart"})
            self._video = self._add_video_stream(crf, preset)
            audio_stream = audio.add_stream(self._container) if audio else None
            self._container.start_encoding()
            if audio:
                self._audio_packets.extend(audio.encode(audio_stream))
        except BaseException:
            if audio:
                audio.close()
            self.abort()
            raise
        if audio:
            audio.close()

    def _add_video_stream(self, crf: int, preset: str):
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.encoded_width, self.encoded_height, "yuv420p"
        stream.codec_context.time_base = 1 / self.fps  # pts = frame index: exactly `fps`, no drift
        # crf 18 is visually lossless for x264; veryfast keeps encoding far below the model's cost per frame.
        stream.options = {"crf": str(crf), "preset": preset}
        tag_bt709(stream.codec_context)
        return stream

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def write(self, frames: np.ndarray) -> None:
        """Encode uint8 RGB frames, (T, H, W, 3) or one (H, W, 3), H and W as given to the constructor."""
        if self._state != "open":
            raise ValueError(f"Mp4Writer for {str(self.out_path)!r} is already {self._state}")
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1:] != (self.height, self.width, 3) or arr.dtype != np.uint8:
            raise ValueError(
                f"Mp4Writer.write expects uint8 frames of shape (T, {self.height}, {self.width}, 3) or "
                f"({self.height}, {self.width}, 3); got {arr.dtype} {tuple(arr.shape)}"
            )
        pad = ((0, 0), (0, self.encoded_height - self.height), (0, self.encoded_width - self.width), (0, 0))
        if any(after for _, after in pad):
            arr = np.pad(arr, pad, mode="edge")
        for image in arr:
            frame = bt709_yuv420p_frame(image)
            frame.pts, frame.time_base = self.frames_written, 1 / self.fps
            self._container.mux(self._video.encode(frame))
            self.frames_written += 1
            self._mux_audio_until(self.frames_written / self.fps)

    def _mux_audio_until(self, seconds: Fraction | None) -> None:
        # Interleave audio with video as it is written, so the file plays (and streams) without seeking.
        while self._audio_packets and (
            seconds is None or self._audio_packets[0].pts * self._audio_packets[0].time_base <= seconds
        ):
            self._container.mux(self._audio_packets.popleft())

    def close(self) -> None:
        """Flush the encoders, mux the rest of the audio and move the finished file onto `out_path`."""
        if self._state != "open":
            return
        try:
            if self.frames_written == 0:
                raise MediaError(f"no video frames were written for {str(self.out_path)!r}; nothing to save")
            self._container.mux(self._video.encode(None))
            self._mux_audio_until(None)
            self._container.close()
            try:
                os.replace(self._tmp_path, self.out_path)
            except OSError as e:
                raise MediaError(f"cannot move the finished video onto {str(self.out_path)!r} ({e.strerror})") from e
        except BaseException:
            self.abort()
            raise
        self._state = "closed"

    def abort(self) -> None:
        """Stop writing and remove everything written so far; `out_path` is left untouched."""
        if self._state == "closed":
            return
        self._state = "aborted"
        self._audio_packets.clear()
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - best effort: the file is deleted next anyway
                pass
        self._tmp_path.unlink(missing_ok=True)

    def __del__(self):
        if getattr(self, "_state", None) == "open" and hasattr(self, "_tmp_path"):
            self.abort()


class _AudioSource:
    """The original audio file for an Mp4Writer: opened and checked up front, encoded to AAC packets once the
    output exists."""

    def __init__(self, path: str | os.PathLike):
        import av

        self.path = _input_file(path, "audio")
        self._container, stream = _open_audio(self.path)
        self._frames = _decoded_audio_frames(self._container, stream, self.path)
        try:
            self._first = next(f for f in self._frames if f.samples)
        except StopIteration:
            self.close()
            raise MediaError(f"audio file {str(self.path)!r} is empty: its audio stream has no samples") from None
        except BaseException:
            self.close()
            raise
        rates = av.codec.Codec("aac", "w").audio_rates
        self.rate = self._first.sample_rate if self._first.sample_rate in rates else 48000
        self.layout = "mono" if self._first.layout.nb_channels == 1 else "stereo"

    def add_stream(self, container):
        stream = container.add_stream("aac", rate=self.rate)
        stream.codec_context.layout = self.layout
        stream.codec_context.format = "fltp"
        stream.codec_context.bit_rate = 64000 * (1 if self.layout == "mono" else 2)  # transparent for speech
        stream.codec_context.time_base = Fraction(1, self.rate)
        return stream

    def encode(self, stream) -> list:
        """Every packet of the source re-encoded; pts count samples, so nothing is dropped or stretched."""
        import av

        resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate, frame_size=1024)
        packets, samples = [], 0

        def source():
            yield self._first
            yield from self._frames

        for frame in _resampled(source(), resampler, self.path):
            frame.pts, frame.time_base = samples, Fraction(1, self.rate)
            samples += frame.samples
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode(None))
        return packets

    def close(self) -> None:
        self._container.close()


# ----------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, counted by decoding it (headers are not trusted). None: no such stream."""

    frames: int | None  # decoded video frames
    fps: float | None  # the video stream's average frame rate
    width: int | None
    height: int | None
    video_codec: str | None  # e.g. "h264"
    audio_codec: str | None  # e.g. "aac"
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_duration: float | None  # decoded samples / sample rate, seconds


def probe(path: str | os.PathLike) -> MediaInfo:
    """Decode every packet of `path`'s first video and best audio stream and report what they hold."""
    import av

    p = _input_file(path, "media")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"cannot read media file {str(p)!r}: FFmpeg cannot open it ({e})") from e
    with container:
        video, audio = container.streams.best("video"), container.streams.best("audio")
        frames, samples = 0, 0
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                for frame in packet.decode():
                    if packet.stream is video:
                        frames += 1
                    else:
                        samples += frame.samples
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f"media file {str(p)!r} is corrupt: decoding failed ({e})") from e
        rate = (video.average_rate or video.guessed_rate) if video is not None else None
        return MediaInfo(
            frames=frames if video is not None else None,
            fps=float(rate) if rate else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            video_codec=video.codec_context.name if video is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_duration=samples / (audio.codec_context.sample_rate or 1) if audio is not None else None,
        )
