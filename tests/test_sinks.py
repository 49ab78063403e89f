"""Frame sinks: every output is decoded again with PyAV and compared with what went in.

Tolerances (measured with PyAV 18.1 / FFmpeg 8.1, libx264, 128x96 frames):
    pixels: PSNR > 35 dB per frame on a smooth moving gradient (measured >= 41.0 dB at crf 18 and at crf 23;
        the yuv420p conversion alone gives 43.3 dB: chroma is subsampled).
    audio length: decoded AAC samples - frames * 640 in [0, 1024): the last AAC frame is decoded whole
        (measured 0 for 40 frames = 25 AAC frames, +768 for 50); the encoder's 1024-sample priming is trimmed
        by the edit list.
    A/V alignment: a click written with frame k peaks at sample k * 640 within one AAC frame (1024 samples;
        measured +0 in Mp4Sink, +6 in FragmentedMp4Sink).
"""

from __future__ import annotations

import io
import os
import struct
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from hallo_rt.runtime.frame import SAMPLES_PER_FRAME, Frame
from hallo_rt.runtime.media import MediaError
from hallo_rt.runtime.sinks import PLAY_INSTALL_HINT, AnnexBSink, FragmentedMp4Sink, Mp4Sink, PlaySink

H, W = 96, 128
AAC_FRAME = 1024


def _image(i: int, height: int = H, width: int = W) -> np.ndarray:
    """A smooth gradient that drifts with the frame number: easy for H.264, still different every frame."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin((x + 2 * i) / width * np.pi)
    g = 128 + 100 * np.cos((y - i) / height * np.pi)
    b = (x + y + 3 * i) / (width + height + 150) * 255
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def _frame(i: int, click: bool = False, height: int = H, width: int = W) -> Frame:
    audio = np.zeros(SAMPLES_PER_FRAME, np.int16)
    if click:
        audio[:8] = 20000
    return Frame(i, _image(i, height, width), audio)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _decode(source) -> tuple[list, np.ndarray]:
    """(video frames, mono float audio) of an MP4 file or bytes."""
    src = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(src) as container:
        video = list(container.decode(video=0))
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        chunks = [f.to_ndarray()[0] for f in container.decode(audio=0)]
    return video, np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _check_round_trip(video: list, audio: np.ndarray, indices: list[int], click_index: int) -> None:
    assert len(video) == len(indices)
    for frame, index in zip(video, indices):
        assert frame.pts * frame.time_base == Fraction(index, 25)  # exactly 25 fps, pts = frame.index
        assert _psnr(frame.to_ndarray(format="rgb24"), _image(index)) > 35
    assert 0 <= len(audio) - (indices[-1] + 1) * SAMPLES_PER_FRAME < AAC_FRAME
    assert abs(int(np.argmax(np.abs(audio))) - click_index * SAMPLES_PER_FRAME) < AAC_FRAME


def _boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level MP4 boxes as (type, start, end), as far as complete boxes go."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size < 8 or at + size > len(data):
            break
        boxes.append((kind.decode("latin-1"), at, at + size))
        at += size
    return boxes


# ----------------------------------------------------------------------------------------------- Mp4Sink


def test_mp4_sink_round_trip(tmp_path):
    out = tmp_path / "talk.mp4"
    with Mp4Sink(out, W, H) as sink:
        for i in range(40):
            sink.write(_frame(i, click=i == 17))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]  # the partial file was renamed
    video, audio = _decode(out)
    _check_round_trip(video, audio, list(range(40)), click_index=17)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 25
        assert container.streams.audio[0].codec_context.sample_rate == 16000
    assert video[0].colorspace == 1 and video[0].color_range == 1  # BT.709, limited ("MPEG") range


def test_mp4_sink_gap_in_indices_keeps_sync_and_odd_size(tmp_path):
    out = tmp_path / "gap.mp4"
    indices = list(range(3, 10)) + list(range(15, 22))  # starts at 3, frames 10..14 dropped upstream
    with Mp4Sink(out, W - 1, H - 1) as sink:  # odd size: padded to even by repeating the edge
        for i in indices:
            f = _frame(i, click=i == 18)
            sink.write(Frame(i, f.image[: H - 1, : W - 1], f.audio))
    assert sink.gap_frames == 5 and sink.frames_written == len(indices)
    video, audio = _decode(out)
    assert (video[0].width, video[0].height) == (W, H)
    # pts count from the first index: frame i at (i - 3) / 25; the audio has silence for the gap.
    assert [f.pts * f.time_base for f in video] == [Fraction(i - 3, 25) for i in indices]
    assert 0 <= len(audio) - (21 + 1 - 3) * SAMPLES_PER_FRAME < AAC_FRAME
    assert abs(int(np.argmax(np.abs(audio))) - (18 - 3) * SAMPLES_PER_FRAME) < AAC_FRAME
    decoded = video[0].to_ndarray(format="rgb24")[: H - 1, : W - 1]
    assert _psnr(decoded, _image(3)[: H - 1, : W - 1]) > 35


def test_mp4_sink_abort_leaves_nothing(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous")
    with pytest.raises(KeyError):
        with Mp4Sink(out, W, H) as sink:
            sink.write(_frame(0))
            assert len(list(tmp_path.glob(".keep.mp4.*.partial.mp4"))) == 1
            raise KeyError("generation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"] and out.read_bytes() == b"previous"
    with pytest.raises(MediaError, match="no frames were written"):
        Mp4Sink(tmp_path / "empty.mp4", W, H).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_mp4_sink_checks_the_output_directory_up_front(tmp_path):
    with pytest.raises(MediaError, match=r"output directory '.*nowhere' does not exist"):
        Mp4Sink(tmp_path / "nowhere" / "x.mp4", W, H)


# ----------------------------------------------------------------------------------------------- errors

SINKS = {
    "mp4": lambda tmp: Mp4Sink(tmp / "e.mp4", W, H),
    "fragmented": lambda tmp: FragmentedMp4Sink(lambda b: None, W, H),
    "annexb": lambda tmp: AnnexBSink(lambda b: None, W, H),
}
SILENCE = np.zeros(SAMPLES_PER_FRAME, np.int16)
BAD_FRAMES = {
    "hw_swapped": (Frame(0, np.zeros((W, H, 3), np.uint8), SILENCE), r"\(96, 128, 3\) uint8; got uint8 \(128, 96, 3\)"),
    "float_image": (Frame(0, np.zeros((H, W, 3), np.float32), SILENCE), r"got float32 \(96, 128, 3\)"),
    "rgba": (Frame(0, np.zeros((H, W, 4), np.uint8), SILENCE), r"got uint8 \(96, 128, 4\)"),
    "not_array": (Frame(0, [[0]], SILENCE), r"frame.image as an RGB array .* got list"),
    "negative_index": (Frame(-1, np.zeros((H, W, 3), np.uint8), SILENCE), r"non-negative int index"),
}
BAD_AUDIO = {
    "float_audio": (np.zeros(640, np.float32), r"frame.audio as int16 \(640,\) at 16000 Hz; got float32 \(640,\)"),
    "short_audio": (np.zeros(320, np.int16), r"got int16 \(320,\)"),
}


@pytest.mark.parametrize("kind", SINKS)
@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_sinks_reject_bad_frames_and_stay_usable(tmp_path, kind, bad):
    sink = SINKS[kind](tmp_path)
    frame, message = BAD_FRAMES[bad]
    with pytest.raises(ValueError, match=message):
        sink.write(frame)
    sink.write(_frame(0))  # a rejected frame does not break the sink
    sink.close()


@pytest.mark.parametrize("bad", BAD_AUDIO)
def test_muxing_sinks_reject_bad_audio_annexb_ignores_audio(tmp_path, bad):
    audio, message = BAD_AUDIO[bad]
    for kind in ("mp4", "fragmented"):
        with pytest.raises(ValueError, match=message):
            SINKS[kind](tmp_path).write(Frame(0, _image(0), audio))
    units = []
    with AnnexBSink(units.append) as sink:  # video only: whatever the audio is, it is not looked at
        sink.write(Frame(0, _image(0), audio))
    assert units


@pytest.mark.parametrize("kind", SINKS)
def test_sinks_reject_write_after_close_and_decreasing_index(tmp_path, kind):
    sink = SINKS[kind](tmp_path)
    sink.write(_frame(5))
    with pytest.raises(ValueError, match="expects increasing frame indices; got 5 after 5"):
        sink.write(_frame(5))
    sink.close()
    sink.close()  # closing twice is a no-op
    with pytest.raises(ValueError, match=f"{type(sink).__name__} is already closed; cannot write"):
        sink.write(_frame(6))


def test_sink_arguments_are_checked():
    with pytest.raises(ValueError, match="width and height must both be positive ints"):
        AnnexBSink(lambda b: None, W, None)
    with pytest.raises(TypeError, match="write_bytes must be a callable"):
        FragmentedMp4Sink(b"")
    with pytest.raises(ValueError, match="keyframe_interval must be a positive number of frames"):
        AnnexBSink(lambda b: None, keyframe_interval=0)
    with pytest.raises(ValueError, match="fragment_frames must be a positive number of frames or None"):
        FragmentedMp4Sink(lambda b: None, fragment_frames=0)
    with pytest.raises(ValueError, match="crf must be an int in"):
        AnnexBSink(lambda b: None, crf=60)


# ----------------------------------------------------------------------------------------------- fragmented MP4


def test_fragmented_mp4_streams_incrementally_and_decodes():
    chunks: list[bytes] = []
    received_after: list[int] = []  # bytes received after each write
    sink = FragmentedMp4Sink(chunks.append, keyframe_interval=10, fragment_frames=4)
    for i in range(40):
        sink.write(_frame(i, click=i == 13))
        received_after.append(sum(map(len, chunks)))
    streamed = b"".join(chunks)
    sink.close()
    data = b"".join(chunks)
    assert sink.bytes_written == len(data)

    # The header (ftyp, then moov) comes before any fragment, and fragments arrive while frames are written.
    kinds = [kind for kind, _, _ in _boxes(data)]
    assert kinds[:2] == ["ftyp", "moov"] and kinds[2] == "moof"
    assert kinds[-1] == "mfra" and set(kinds[2:-1]) == {"moof", "mdat"}
    streamed_boxes = _boxes(streamed)
    assert [k for k, _, _ in streamed_boxes][:2] == ["ftyp", "moov"]
    # ~3 frames of delay (the AAC encoder's), then one fragment per 4 frames: by the last write, most are out.
    assert sum(k == "moof" for k, _, _ in streamed_boxes) >= 40 // 4 - 2
    first_byte_frame = next(i for i, n in enumerate(received_after) if n)
    assert first_byte_frame <= 8, received_after

    # A client that has only the header and the first fragment can already play it.
    first_fragment_end = next(end for kind, _, end in _boxes(data) if kind == "mdat")
    prefix_video, _ = _decode(data[:first_fragment_end])
    assert 1 <= len(prefix_video) <= 4 and prefix_video[0].pts == 0

    video, audio = _decode(data)
    _check_round_trip(video, audio, list(range(40)), click_index=13)
    assert [i for i, f in enumerate(video) if f.key_frame] == [0, 10, 20, 30]


def test_fragmented_mp4_fragments_at_keyframes_only():
    chunks: list[bytes] = []
    with FragmentedMp4Sink(chunks.append, W, H, keyframe_interval=10, fragment_frames=None) as sink:
        for i in range(30):
            sink.write(_frame(i))
    kinds = [kind for kind, _, _ in _boxes(b"".join(chunks))]
    assert kinds.count("moof") == 3  # one fragment per 10-frame GOP


def test_fragmented_mp4_abort_writes_nothing_more():
    chunks: list[bytes] = []
    sink = FragmentedMp4Sink(chunks.append)
    for i in range(12):
        sink.write(_frame(i))
    before = len(chunks)
    sink.abort()
    assert len(chunks) == before and sink.closed


# ----------------------------------------------------------------------------------------------- Annex-B


def _nal_types(unit: bytes) -> list[int]:
    """NAL unit types of an Annex-B access unit (split at 3- and 4-byte start codes)."""
    parts = unit.split(b"\x00\x00\x01")
    return [p[0] & 0x1F for p in parts[1:] if p]


def test_annexb_one_access_unit_per_frame_and_decodes():
    units: list[bytes] = []
    with AnnexBSink(units.append, keyframe_interval=8) as sink:
        for i in range(24):
            sink.write(_frame(i))
            assert len(units) == i + 1  # zerolatency: each frame's access unit comes out at once
    assert all(u.startswith(b"\x00\x00\x00\x01") for u in units)
    idr = [i for i, u in enumerate(units) if 5 in _nal_types(u)]
    assert idr == [0, 8, 16]
    assert all(_nal_types(units[i])[:2] == [7, 8] for i in idr)  # SPS, PPS before every IDR: joinable there
    assert not any(7 in _nal_types(u) for i, u in enumerate(units) if i not in idr)

    decoder = av.CodecContext.create("h264", "r")
    decoded = []
    for packet in decoder.parse(b"".join(units)) + decoder.parse(None):
        decoded.extend(decoder.decode(packet))
    decoded.extend(decoder.decode(None))
    assert len(decoded) == 24
    assert all(_psnr(f.to_ndarray(format="rgb24"), _image(i)) > 35 for i, f in enumerate(decoded))


# ----------------------------------------------------------------------------------------------- PlaySink

FAKE_FFPLAY = """#!{python}
import os, sys
with open(os.environ["FAKE_FFPLAY_ARGS"], "w") as f:
    f.write("\\n".join(sys.argv[1:]))
code = int(os.environ.get("FAKE_FFPLAY_EXIT", "-1"))
if code >= 0:
    sys.exit(code)
with open(os.environ["FAKE_FFPLAY_OUT"], "wb") as f:
    f.write(sys.stdin.buffer.read())
"""


@pytest.fixture
def fake_ffplay(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ffplay"
    script.write_text(FAKE_FFPLAY.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_FFPLAY_ARGS", str(tmp_path / "args.txt"))
    monkeypatch.setenv("FAKE_FFPLAY_OUT", str(tmp_path / "stream.mp4"))
    return tmp_path


def test_play_sink_needs_ffplay(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"--play needs ffplay \(Debian package ffmpeg"):
        PlaySink()
    assert "--play needs ffplay (Debian package ffmpeg" in PLAY_INSTALL_HINT


def test_play_sink_pipes_fragmented_mp4_to_ffplay(fake_ffplay):
    with PlaySink(title="avatar") as sink:
        for i in range(20):
            sink.write(_frame(i, click=i == 7))
    args = (fake_ffplay / "args.txt").read_text().split("\n")
    assert args[-4:] == ["-f", "mp4", "-i", "pipe:0"] and "-autoexit" in args and "avatar" in args
    video, audio = _decode((fake_ffplay / "stream.mp4").read_bytes())
    _check_round_trip(video, audio, list(range(20)), click_index=7)


def test_play_sink_reports_a_closed_player(fake_ffplay, monkeypatch):
    monkeypatch.setenv("FAKE_FFPLAY_EXIT", "3")
    sink = PlaySink()
    sink._process.wait(timeout=30)  # the "player" has gone before the first frame
    with pytest.raises(RuntimeError, match="ffplay exited with code 3"):
        for i in range(5):
            sink.write(_frame(i))
    sink.abort()
    assert sink.closed


@pytest.mark.skipif(not any((Path(d) / "ffplay").exists() for d in os.environ.get("PATH", "").split(os.pathsep)),
                    reason="ffplay not installed (Debian package ffmpeg)")
def test_play_sink_with_real_ffplay(monkeypatch):
    # No display or sound card in CI: SDL's dummy drivers still run ffplay's demux/decode/sync loop.
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    sink = PlaySink()
    for i in range(10):
        sink.write(_frame(i))
    sink.close()
    assert sink._process.returncode == 0
