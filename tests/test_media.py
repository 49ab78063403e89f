"""Media I/O: audio in from any container, images in any mode and size, atomic MP4 out, the shipped examples.

Tolerances (measured with PyAV 18.1 / FFmpeg 8.1, Pillow 13):
    lossless audio (wav, flac) vs the exact mono sine at 16 kHz: max abs 1e-3 (measured 1.6e-5: the 16-bit step
        plus the resampler), length exact within 2 samples.
    lossy audio (mp3, aac, opus) vs the same: correlation >= 0.99 (measured >= 0.9988), RMS within 10% (measured
        0.95 for mp3), length within one codec frame.
    AAC track of our MP4 vs its source: 0 <= extra < 1024 samples, because the last AAC frame is decoded whole
        (measured +63 at 16 kHz, +410 at 44.1 kHz); the encoder's 1024-sample priming is trimmed by the edit list.
    H.264 round trip of a flat colour: +-3 per channel (measured +-1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import wave
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from hallo_rt.runtime.media import (
    MediaError,
    MediaWarning,
    Mp4Writer,
    audio_duration,
    check_not_silent,
    check_writable,
    probe,
    read_audio,
    read_image,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SR, SECONDS = 44100, 1.5


def _channels(rate: int) -> np.ndarray:
    """The test signal: 440 Hz, different amplitude and phase left and right, (2, N)."""
    t = np.arange(round(rate * SECONDS)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 440 * t + 1.0)])


def _write_audio(path: Path, codec: str, rate: int, channels: np.ndarray, source_rate: int = SR) -> Path:
    layout = "stereo" if len(channels) == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.codec_context.layout = layout
        frame = av.AudioFrame.from_ndarray(channels.astype(np.float32), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = source_rate, 0, Fraction(1, source_rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


# ----------------------------------------------------------------------------------------------- audio in

# suffix, encoder, encoder rate, samples per codec frame (at the encoder rate), lossless
FORMATS = [
    ("wav", "pcm_s16le", SR, 1, True),
    ("flac", "flac", SR, 4608, True),
    ("mp3", "libmp3lame", SR, 1152, False),
    ("m4a", "aac", SR, 1024, False),
    ("ogg", "libopus", 48000, 960, False),
]


@pytest.mark.parametrize("suffix,codec,rate,frame,lossless", FORMATS, ids=[f[0] for f in FORMATS])
def test_read_audio_any_container_to_16k_mono_average(tmp_path, suffix, codec, rate, frame, lossless):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    path = _write_audio(tmp_path / f"sine.{suffix}", codec, rate, _channels(SR))
    x = read_audio(path)
    expected = _channels(16000).mean(axis=0)  # the downmix is the average of the channels
    assert x.dtype == np.float32 and x.ndim == 1 and np.abs(x).max() <= 1.0
    assert abs(len(x) / 16000 - SECONDS) <= frame / rate, len(x)
    n = min(len(x), len(expected))
    if lossless:
        assert abs(len(x) - round(SECONDS * 16000)) <= 2, len(x)  # the resampler was flushed: nothing lost
        # The signal starts and stops with a step (the right channel at phase 1): the resampler's filter rings
        # for a few samples there. Measured: error > 1e-3 only in the first 2 and last 3 samples.
        assert np.abs(x[16 : n - 16] - expected[16 : n - 16]).max() < 1e-3
    else:
        inner = slice(800, n - 800)  # lossy codecs smear the start and the end
        assert np.corrcoef(x[inner], expected[inner])[0, 1] >= 0.99
        assert np.sqrt(np.mean(x[inner] ** 2)) / np.sqrt(np.mean(expected[inner] ** 2)) == pytest.approx(1, abs=0.1)
    assert audio_duration(path) == pytest.approx(len(x) / 16000, abs=frame / rate)


def test_read_audio_mono_source_keeps_its_level_and_other_rates(tmp_path):
    mono = _channels(SR)[:1]
    path = _write_audio(tmp_path / "mono.wav", "pcm_s16le", SR, mono)
    x = read_audio(path, sample_rate=8000)
    t = np.arange(len(x)) / 8000
    assert len(x) == round(SECONDS * 8000)
    assert np.abs(x - 0.5 * np.sin(2 * np.pi * 440 * t))[16:-16].max() < 1e-3  # same level: no downmix gain


def test_read_audio_rejects_bad_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        read_audio(EXAMPLES / "speech.wav", sample_rate=0)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    return path


def _video_without_audio(path: Path) -> Path:
    with Mp4Writer(path, 16, 16) as writer:
        writer.write(np.zeros((2, 16, 16, 3), np.uint8))
    return path


BAD_AUDIO = {
    "missing": (lambda d: d / "nope.wav", r"'.*nope\.wav' does not exist"),
    "directory": (lambda d: d, r"is a directory, not a file"),
    "zero_bytes": (lambda d: _file(d / "zero.wav", b""), r"is empty \(0 bytes\)"),
    "text": (lambda d: _file(d / "note.txt", b"not audio\n"),
             r"cannot read audio file '.*note\.txt': FFmpeg cannot decode it .*expected WAV, FLAC"),
    "png": (lambda d: _png(d / "face.png"), r"'.*face\.png' has no audio stream \(only video\); expected WAV"),
    "video_without_audio": (lambda d: _video_without_audio(d / "mute.mp4"), r"'.*mute\.mp4' has no audio stream"),
    "truncated_header": (lambda d: _file(d / "cut.wav", (EXAMPLES / "speech.wav").read_bytes()[:30]),
                         r"cannot read audio file '.*cut\.wav'"),
    "no_samples": (lambda d: _write_wav(d / "empty.wav", np.zeros(0)),
                   r"'.*empty\.wav' is empty: its audio stream has no samples"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_read_audio_errors_name_the_file_and_the_problem(tmp_path, case):
    make, message = BAD_AUDIO[case]
    path = make(tmp_path)
    with pytest.raises(MediaError, match=message) as info:
        read_audio(path)
    assert "\n" not in str(info.value)


def test_silence_is_refused_and_quiet_speech_is_not(tmp_path):
    silent = read_audio(_write_wav(tmp_path / "silent.wav", np.zeros(16000)))
    with pytest.raises(MediaError, match=r"'.*silent\.wav' is silent \(digital silence, below -80 dBFS\)"):
        check_not_silent(silent, tmp_path / "silent.wav")
    dither = np.random.default_rng(0).integers(-1, 2, 16000)  # +-1 LSB: a "silent" 16-bit recording
    with pytest.raises(MediaError, match="is silent"):
        check_not_silent(read_audio(_write_wav(tmp_path / "dither.wav", dither)), "dither.wav")
    quiet = (np.sin(np.arange(16000) / 10) * 33).round()  # -60 dBFS: very quiet, but a signal
    check_not_silent(read_audio(_write_wav(tmp_path / "quiet.wav", quiet)), "quiet.wav")
    check_not_silent(read_audio(EXAMPLES / "speech.wav"), "speech.wav")


# ----------------------------------------------------------------------------------------------- image in


def _read_quietly(path, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary image must read without any warning
        return read_image(path, **kwargs)


def test_read_image_modes_to_rgb(tmp_path):
    Image.new("L", (6, 4), 77).save(tmp_path / "l.png")
    assert (_read_quietly(tmp_path / "l.png") == 77).all()

    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 250] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert (_read_quietly(tmp_path / "p.png") == [10, 20, 250]).all()

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :2] = (200, 100, 50, 255)  # opaque
    rgba[:, 2:4] = (200, 100, 50, 128)  # half transparent: half the colour, over black
    rgba[:, 4:] = (255, 255, 255, 0)  # fully transparent: black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _read_quietly(tmp_path / "rgba.png").astype(int)
    assert (out[:, :2] == [200, 100, 50]).all()
    assert np.abs(out[:, 2:4] - [100, 50, 25]).max() <= 1
    assert (out[:, 4:] == 0).all()

    pal.info["transparency"] = 1  # palette index 1 is transparent
    pal.save(tmp_path / "p_transparent.png", transparency=1)
    assert (_read_quietly(tmp_path / "p_transparent.png") == 0).all()

    Image.new("LA", (6, 4), (90, 255)).save(tmp_path / "la.png")
    assert (_read_quietly(tmp_path / "la.png") == 90).all()

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    red = _read_quietly(tmp_path / "cmyk.jpg").astype(int)
    assert (red[..., 0] > 240).all() and (red[..., 1:] < 20).all()


def test_read_image_16_bit_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 6 * 4).round().astype(np.uint16).reshape(4, 6)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = _read_quietly(tmp_path / "g16.png")
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert (out[..., 0] == np.rint(ramp * (255 / 65535))).all()


def _half_red_half_blue(width: int, height: int) -> Image.Image:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (255, 0, 0)
    img[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(img)


def _save_with_orientation(img: Image.Image, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif.tobytes())
    return path


def test_read_image_applies_exif_orientation(tmp_path):
    # Orientation 6: the camera was turned; the stored image must be rotated 90 degrees clockwise to display,
    # which puts its left (red) half on top.
    path = _save_with_orientation(_half_red_half_blue(40, 20), tmp_path / "turned.jpg", 6)
    out = _read_quietly(path).astype(int)
    assert out.shape == (40, 20, 3)
    assert out[:16, :, 0].min() > 200 and out[24:, :, 2].min() > 200


def test_read_image_orientation_survives_downscaling(tmp_path):
    path = _save_with_orientation(_half_red_half_blue(1600, 800), tmp_path / "big_turned.jpg", 6)
    with pytest.warns(MediaWarning, match=r"1600x800 .* downscaled to 400x200"):
        out = read_image(path, max_pixels=100_000).astype(int)
    assert out.shape == (400, 200, 3)  # JPEG decoder scale 1/4 (the next power of two over sqrt(12.8))
    assert out[:190, :, 0].min() > 200 and out[210:, :, 2].min() > 200


def test_read_image_downscales_other_formats_by_an_integer_factor(tmp_path):
    Image.new("RGB", (2000, 1500), (40, 80, 120)).save(tmp_path / "big.png")
    with pytest.warns(MediaWarning, match=r"2000x1500 .* downscaled to 500x375"):
        out = read_image(tmp_path / "big.png", max_pixels=300_000)
    assert out.shape == (375, 500, 3) and (out == [40, 80, 120]).all()
    # Modes reduce() cannot average are converted first: palette, 1-bit, 16-bit.
    pal = Image.new("P", (400, 300), 1)
    pal.putpalette([0, 0, 0, 10, 20, 250] + [0] * 762)
    sources = {"p.png": (pal, [10, 20, 250]), "bits.png": (Image.new("1", (400, 300), 1), [255] * 3),
               "g16.png": (Image.fromarray(np.full((300, 400), 257 * 90, np.uint16)), [90] * 3)}
    for name, (img, colour) in sources.items():
        img.save(tmp_path / name)
        with pytest.warns(MediaWarning, match="downscaled to 100x75"):
            out = read_image(tmp_path / name, max_pixels=10_000)
        assert out.shape == (75, 100, 3) and (out == colour).all(), name


_HUGE_READ = """
import json, resource, sys, warnings
import numpy, PIL.Image
from hallo_rt.runtime.media import read_image
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = read_image(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
print(json.dumps({"shape": out.shape, "peak_growth": after - before, "warnings": [str(w.message) for w in caught]}))
"""


def test_huge_jpeg_is_reduced_by_the_decoder_in_bounded_memory(tmp_path):
    # Made and read in child processes, so the 480 MB picture never inflates this process and the peak RSS
    # of the reader is its own.
    path = tmp_path / "huge.jpg"
    make = f"from PIL import Image; Image.new('RGB', (12000, 10000), (40, 80, 120)).save({str(path)!r}, quality=75)"
    subprocess.run([sys.executable, "-c", make], check=True, timeout=120)
    result = subprocess.run([sys.executable, "-c", _HUGE_READ, str(path)], check=True, timeout=120,
                            capture_output=True, text=True)
    report = json.loads(result.stdout)
    height, width, _ = report["shape"]
    assert width * height <= 16_000_000 and (width, height) == (3000, 2500)  # decoder scale 1/4
    assert any("12000x10000" in w and "downscaled" in w for w in report["warnings"])
    # Decoding at full size needs 480 MB (Pillow keeps RGB as 4 bytes a pixel); measured growth ~75 MB.
    assert report["peak_growth"] < 160 * 2**20, report["peak_growth"] / 2**20


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (the pixel data stays 8x8)."""
    data = bytearray((_png(path)).read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    with pytest.raises(MediaError, match=r"'.*pillow_bomb\.png' is refused as a decompression bomb"):
        read_image(_png_claiming(tmp_path / "pillow_bomb.png", 20000, 20000))  # Pillow's own limit (179 MP)
    with pytest.raises(MediaError, match=r"13000x12000 \(156 MP\), over the 150 MP limit"):
        read_image(_png_claiming(tmp_path / "bomb.png", 13000, 12000))  # ours
    with pytest.raises(MediaError, match=r"over the 1 MP limit"):
        read_image(_png_claiming(tmp_path / "small_bomb.png", 2000, 1000), max_source_pixels=1_000_000)


def _truncated(source: Path, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _noise(path: Path) -> Path:
    """A noisy picture, so that half of its file holds only half of the pixels (format from the suffix)."""
    Image.effect_noise((300, 200), 60).convert("RGB").save(path)
    return path


BAD_IMAGES = {
    "missing": (lambda d: d / "nope.jpg", r"image file '.*nope\.jpg' does not exist"),
    "directory": (lambda d: d, r"image path .* is a directory"),
    "zero_bytes": (lambda d: _file(d / "zero.png", b""), r"is empty \(0 bytes\)"),
    "wav": (lambda d: EXAMPLES / "speech.wav", r"'.*speech\.wav' is not an image file Pillow can read; expected a"),
    "text": (lambda d: _file(d / "a.txt", b"hello\n"), r"'.*a\.txt' is not an image file"),
    "truncated_jpeg": (lambda d: _truncated(_noise(d / "n.jpg"), d / "cut.jpg"), r"'.*cut\.jpg' is truncated or"),
    "truncated_png": (lambda d: _truncated(_noise(d / "n.png"), d / "cut.png"), r"'.*cut\.png' is truncated or"),
    "truncated_header": (lambda d: _file(d / "h.png", _png(d / "x.png").read_bytes()[:20]),
                         r"'.*h\.png' starts like a PNG but is truncated or corrupt"),
    "zero_width": (lambda d: _png_claiming(d / "flat.png", 0, 8), r"'.*flat\.png' starts like a PNG but is truncated"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_read_image_errors_name_the_file_and_the_problem(tmp_path, case):
    make, message = BAD_IMAGES[case]
    with pytest.raises(MediaError, match=message) as info:
        read_image(make(tmp_path))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- MP4 out


def _frames(count: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([x * 4 + i, y * 5, np.full_like(x, 60 + i)], -1) for i in range(count)]).astype(np.uint8)


def test_mp4_with_speech_has_exact_frames_rate_and_audio(tmp_path):
    out = tmp_path / "talk.mp4"
    frames = _frames(30, 48, 64)
    with Mp4Writer(out, 64, 48, audio_path=EXAMPLES / "speech.wav") as writer:
        writer.write(frames[:10])  # (T, H, W, 3)
        writer.write(frames[10])  # (H, W, 3)
        writer.write(frames[11:])
        assert not out.exists()  # only the temporary file exists until close()
    info = probe(out)
    assert (info.video_codec, info.frames, info.fps, info.width, info.height) == ("h264", 30, 25.0, 64, 48)
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", 16000, 1)
    source = audio_duration(EXAMPLES / "speech.wav")
    assert 0 <= info.audio_duration - source < 1024 / 16000  # padding of the last AAC frame only
    with av.open(str(out)) as container:  # pts = frame index at 1/25 s: exactly 25 fps, no drift
        times = [frame.time for frame in container.decode(video=0)]
    assert times == pytest.approx([i / 25 for i in range(30)], abs=1e-6)
    # Reading a video's audio track works, and AAC's priming was trimmed (no offset against the source).
    original, muxed = read_audio(EXAMPLES / "speech.wav"), read_audio(out)
    assert np.corrcoef(original, muxed[: len(original)])[0, 1] > 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


def test_mp4_audio_keeps_rate_and_stereo_or_falls_back_to_48k(tmp_path):
    stereo = _write_audio(tmp_path / "stereo.flac", "flac", SR, _channels(SR))
    odd_rate = _write_audio(tmp_path / "odd.wav", "pcm_s16le", 37000, _channels(37000)[:1], source_rate=37000)
    for source, rate, channels in [(stereo, SR, 2), (odd_rate, 48000, 1)]:
        out = tmp_path / f"{source.stem}.mp4"
        with Mp4Writer(out, 32, 32, audio_path=source) as writer:
            writer.write(np.zeros((3, 32, 32, 3), np.uint8))
        info = probe(out)
        assert (info.audio_sample_rate, info.audio_channels) == (rate, channels)
        assert 0 <= info.audio_duration - SECONDS < 1024 / rate + 1 / rate


def test_mp4_colours_survive_the_round_trip(tmp_path):
    flat = np.empty((3, 32, 48, 3), np.uint8)
    flat[...] = (200, 40, 90)
    with Mp4Writer(tmp_path / "flat.mp4", 48, 32) as writer:
        writer.write(flat)
    with av.open(str(tmp_path / "flat.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)
    assert np.abs(decoded - flat).max() <= 3


def test_mp4_odd_size_is_padded_to_even_by_repeating_the_edge(tmp_path):
    frames = _frames(4, 47, 63)
    with Mp4Writer(tmp_path / "odd.mp4", 63, 47) as writer:
        assert (writer.encoded_width, writer.encoded_height) == (64, 48)
        writer.write(frames)
    info = probe(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.frames, info.audio_codec) == (64, 48, 4, None)
    with av.open(str(tmp_path / "odd.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first[:47, :63] - frames[0]).mean() < 6
    assert np.abs(first[:, 63] - first[:, 62]).mean() < 6 and np.abs(first[47] - first[46]).mean() < 6


def test_mp4_write_checks_shape_and_dtype(tmp_path):
    with Mp4Writer(tmp_path / "x.mp4", 32, 16) as writer:
        with pytest.raises(ValueError, match=r"uint8 frames of shape \(T, 16, 32, 3\) .* got uint8 \(1, 32, 16, 3\)"):
            writer.write(np.zeros((1, 32, 16, 3), np.uint8))
        with pytest.raises(ValueError, match="got float32"):
            writer.write(np.zeros((16, 32, 3), np.float32))
        writer.write(np.zeros((16, 32, 3), np.uint8))
    assert probe(tmp_path / "x.mp4").frames == 1


def test_exception_inside_with_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="generation failed"):
        with Mp4Writer(out, 32, 32, audio_path=EXAMPLES / "speech.wav") as writer:
            writer.write(np.zeros((5, 32, 32, 3), np.uint8))
            partial = [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")]
            assert len(partial) == 1 and partial[0].startswith(".out.mp4.")
            raise RuntimeError("generation failed")
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_abort_and_empty_close_leave_nothing(tmp_path):
    writer = Mp4Writer(tmp_path / "a.mp4", 32, 32)
    writer.write(np.zeros((2, 32, 32, 3), np.uint8))
    writer.abort()
    writer.close()  # no-op after abort
    with pytest.raises(ValueError, match="already aborted"):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(MediaError, match=r"no video frames were written for '.*b\.mp4'"):
        with Mp4Writer(tmp_path / "b.mp4", 32, 32):
            pass
    assert list(tmp_path.iterdir()) == []


def test_bad_audio_fails_before_any_file_is_created(tmp_path):
    (tmp_path / "note.txt").write_text("not audio\n")
    with pytest.raises(MediaError, match=r"cannot read audio file '.*note\.txt'"):
        Mp4Writer(tmp_path / "out.mp4", 32, 32, audio_path=tmp_path / "note.txt")
    with pytest.raises(MediaError, match=r"audio file '.*gone\.wav' does not exist"):
        Mp4Writer(tmp_path / "out.mp4", 32, 32, audio_path=tmp_path / "gone.wav")
    assert [p.name for p in tmp_path.iterdir()] == ["note.txt"]


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "ok.mp4") == tmp_path / "ok.mp4"
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "missing" / "out.mp4": r"output directory '.*missing' does not exist",
        tmp_path: r"output path '.*' is a directory; expected a file name such as '.*out\.mp4'",
        tmp_path / "file" / "out.mp4": r"output directory '.*file' is not a directory",
        tmp_path / "out.avi": r"'.*out\.avi' must end in \.mp4",
    }
    for path, message in cases.items():
        with pytest.raises(MediaError, match=message):
            check_writable(path)
        with pytest.raises(MediaError, match=message):  # the writer checks the same before any work
            Mp4Writer(path, 32, 32, audio_path=EXAMPLES / "speech.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, which no one can create files in")
def test_unwritable_directory_is_refused_even_for_root():
    with pytest.raises(MediaError, match=r"cannot write '/proc/out\.mp4': output directory '/proc' is not writable"):
        Mp4Writer("/proc/out.mp4", 32, 32)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(MediaError, match=r"output directory '.*locked' is not writable"):
            check_writable(locked / "out.mp4")
    finally:
        locked.chmod(0o700)


def test_probe_errors():
    with pytest.raises(MediaError, match=r"media file '.*nope\.mp4' does not exist"):
        probe(EXAMPLES / "nope.mp4")
    with pytest.raises(MediaError, match=r"cannot read media file '.*README\.md'"):
        probe(EXAMPLES / "README.md")


# ----------------------------------------------------------------------------------------------- examples


def _documented_sha256(name: str) -> str:
    readme = (EXAMPLES / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}`")]
    assert len(rows) == 1, f"examples/README.md has no table row for {name}"
    return re.search(r"\b[0-9a-f]{64}\b", rows[0]).group(0)


def test_example_portrait():
    path = EXAMPLES / "portrait.jpg"
    assert path.stat().st_size < 100_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _documented_sha256("portrait.jpg")
    assert Image.open(path).format == "JPEG"
    image = _read_quietly(path)
    assert image.shape == (512, 512, 3) and 60 < image.mean() < 200
    assert image.flags.writeable and image.flags.c_contiguous


def test_example_speech():
    path = EXAMPLES / "speech.wav"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _documented_sha256("speech.wav")
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 51137)
    x = read_audio(path)
    assert len(x) == 51137 and audio_duration(path) == pytest.approx(3.196, abs=1e-3)
    check_not_silent(x, path)
    assert 0.3 < np.abs(x).max() < 1.0  # speech at a sane level, not clipped
