"""Audio sources: files decoded in pieces (exactly, at their own rate and layout, paced or not) and the
microphone through PyAudio, tested against a virtual ALSA capture device that plays a known signal.

Tolerances (measured with PyAV 18.1 / FFmpeg 8.1, PortAudio 19.6 / alsa-lib 1.2.8):
    WAV: the pieces concatenate to the file's int16 samples / 32768 exactly.
    FLAC (lossless, 16-bit): within one 16-bit step (measured 0).
    the ALSA `file` plugin capture: bit-exact, no offset (measured); the test allows no slack there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from hallo_rt.runtime.frame import Frame
from hallo_rt.runtime.media import MediaError
from hallo_rt.runtime.sinks import Mp4Sink
from hallo_rt.runtime.sources import MIC_INSTALL_HINT, FileSource, MicSource


def _signal(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """int16 (n, channels): a chirp plus noise, so any shift or reordering of samples shows."""
    t = np.arange(round(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    out = [0.4 * np.sin(2 * np.pi * (200 + 800 * t) * t + c) + 0.05 * rng.standard_normal(len(t))
           for c in range(channels)]
    return np.rint(np.stack(out, axis=1) * 32767).astype(np.int16)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def _write_flac(path: Path, samples: np.ndarray, rate: int) -> Path:
    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.codec_context.layout, stream.codec_context.format = layout, "s16"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.reshape(1, -1)), format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# ----------------------------------------------------------------------------------------------- FileSource


def test_file_source_wav_pieces_are_exact(tmp_path):
    samples = _signal(16000, 1.01)
    source = FileSource(_write_wav(tmp_path / "a.wav", samples, 16000))
    assert (source.sample_rate, source.channels, source.layout) == (16000, 1, "mono")
    assert source.duration_s == pytest.approx(1.01)
    pieces = list(source)
    assert all(rate == 16000 for _, rate in pieces)
    assert [len(p) for p, _ in pieces] == [320] * 50 + [160]  # 20 ms pieces, the remainder last
    assert all(p.dtype == np.float32 and p.ndim == 1 for p, _ in pieces)
    np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), samples[:, 0] / np.float32(32768))
    # Iterating again reopens the file and gives the same pieces.
    np.testing.assert_array_equal(np.concatenate([p for p, _ in source]), samples[:, 0] / np.float32(32768))


def test_file_source_keeps_stereo_and_native_rate(tmp_path):
    samples = _signal(44100, 0.5, channels=2)
    source = FileSource(_write_flac(tmp_path / "s.flac", samples, 44100), piece_ms=10)
    pieces = list(source)
    assert source.sample_rate == 44100 and {rate for _, rate in pieces} == {44100}
    assert {p.shape for p, _ in pieces[:-1]} == {(441, 2)}  # interleaved (n, channels)
    got = np.concatenate([p for p, _ in pieces])
    assert got.shape == samples.shape
    assert np.abs(got - samples / 32768.0).max() <= 1 / 32768


def test_file_source_fractional_piece_sizes_stay_on_the_timeline(tmp_path):
    samples = _signal(11025, 0.3)
    pieces = [p for p, _ in FileSource(_write_wav(tmp_path / "low.wav", samples, 11025))]
    sizes = [len(p) for p in pieces]
    # 20 ms at 11025 Hz is 220.5 samples: boundaries at round(k * 220.5), never drifting.
    ends = np.cumsum(sizes)
    assert list(ends[:-1]) == [round(k * Fraction(441, 2)) for k in range(1, len(sizes))]
    assert set(sizes[:-1]) == {220, 221} and ends[-1] == len(samples)


def test_file_source_reads_a_video_track_and_lossy_audio(tmp_path):
    # The AAC track of an MP4 that Mp4Sink wrote: 16 kHz mono, a 440 Hz tone.
    tone = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(12 * 640) / 16000)).astype(np.int16)
    with Mp4Sink(tmp_path / "v.mp4", 32, 32) as sink:
        for i in range(12):
            sink.write(Frame(i, np.zeros((32, 32, 3), np.uint8), tone[i * 640 : (i + 1) * 640]))
    source = FileSource(tmp_path / "v.mp4")
    got = np.concatenate([p for p, _ in source])
    assert source.sample_rate == 16000 and source.channels == 1
    assert 0 <= len(got) - len(tone) < 1024
    inner = slice(1000, len(tone) - 1000)  # AAC smears the edges
    assert np.corrcoef(got[inner], tone[inner] / 32768.0)[0, 1] > 0.99


def test_file_source_errors(tmp_path):
    with pytest.raises(MediaError, match=r"'.*nope\.wav' does not exist"):
        FileSource(tmp_path / "nope.wav")
    (tmp_path / "note.txt").write_text("not audio\n")
    with pytest.raises(MediaError, match=r"cannot read audio file '.*note\.txt'"):
        FileSource(tmp_path / "note.txt")
    wav = _write_wav(tmp_path / "a.wav", _signal(16000, 0.1), 16000)
    for bad in (0, -5, "20", 20_000):
        with pytest.raises(ValueError, match=r"piece_ms must be a number of milliseconds in \(0, 10000\]"):
            FileSource(wav, piece_ms=bad)


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock, and nothing else does."""

    def __init__(self, start: float = 100.0):
        self.now, self.sleeps = start, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_file_source_realtime_schedule_does_not_drift(tmp_path):
    source = FileSource(_write_wav(tmp_path / "a.wav", _signal(16000, 1.0), 16000), realtime=True, piece_ms=40)
    clock = FakeClock()
    source._clock, source._sleep = clock.monotonic, clock.sleep
    released = []
    for k, _ in enumerate(source):
        released.append(clock.now - 100.0)
        if k == 5:
            clock.now += 0.130  # the consumer stalls for 3.25 pieces
    expected = [k * 0.04 for k in range(25)]
    # Piece k is never early; after the stall the overdue pieces come at once, then the schedule resumes
    # exactly (an absolute schedule: the stall is not added to every later piece).
    assert all(r >= e - 1e-9 for r, e in zip(released, expected))
    assert released[:6] == pytest.approx(expected[:6], abs=1e-9)
    assert released[6:9] == pytest.approx([0.33] * 3, abs=1e-9)  # 0.2 + 0.13: pieces 6..8 were overdue
    assert released[9:] == pytest.approx(expected[9:], abs=1e-9)


def test_file_source_realtime_on_the_real_clock(tmp_path):
    import time

    source = FileSource(_write_wav(tmp_path / "a.wav", _signal(16000, 0.3), 16000), realtime=True, piece_ms=50)
    t0 = time.monotonic()
    released = [time.monotonic() - t0 for _ in source]
    assert len(released) == 6
    assert all(r >= k * 0.05 - 0.002 for k, r in enumerate(released))  # never early
    assert released[-1] < 0.25 + 0.2  # and not slowed down by more than scheduling noise


def test_file_source_as_fast_as_possible(tmp_path):
    source = FileSource(_write_wav(tmp_path / "a.wav", _signal(16000, 5.0), 16000))
    clock = FakeClock()
    source._clock, source._sleep = clock.monotonic, clock.sleep
    assert sum(len(p) for p, _ in source) == 80000 and clock.sleeps == []


# ----------------------------------------------------------------------------------------------- MicSource


def test_mic_source_without_pyaudio_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` raise ImportError
    with pytest.raises(ImportError) as info:
        MicSource()
    assert "pip install 'hallo-rt[mic]'" in str(info.value) and "apt-get install portaudio19-dev" in str(info.value)
    assert str(info.value) == MIC_INSTALL_HINT


def test_mic_source_checks_arguments_before_opening_anything():
    with pytest.raises(ValueError, match=r"sample_rate must be an int number of Hz"):
        MicSource(sample_rate=16000.0)
    with pytest.raises(ValueError, match=r"channels must be 1 \(mono\) or 2 \(stereo\)"):
        MicSource(channels=6)
    with pytest.raises(ValueError, match=r"piece_ms must be"):
        MicSource(piece_ms=0)


# The capture script runs in its own process: PortAudio reads the ALSA configuration (our ~/.asoundrc, with
# HOME pointed at a temporary directory) once, when it initialises.
ASOUNDRC = """
pcm.hallo_test_mono {{ type file  slave.pcm "null"  file "/dev/null"  infile "{mono}"  format "raw" }}
pcm.hallo_test_stereo {{ type file  slave.pcm "null"  file "/dev/null"  infile "{stereo}"  format "raw" }}
"""

CAPTURE_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np
    from hallo_rt.runtime.sources import MicSource

    out = sys.argv[1]
    results = {}

    def take(source, n):
        pieces = []
        for pcm, rate in source:
            assert rate == source.sample_rate and pcm.dtype == np.float32
            pieces.append(pcm)
            if len(pieces) == n:
                return np.concatenate(pieces)

    with MicSource(device="hallo_test_mono", sample_rate=16000, piece_ms=20) as mic:
        results["mono_name"] = mic.device_name
        np.save(out + "/mono.npy", take(mic, 50))
    results["mono_closed"] = mic.closed

    with MicSource(device="hallo_test_stereo", sample_rate=16000, piece_ms=10, channels=2) as mic:
        np.save(out + "/stereo.npy", take(mic, 40))

    # The ALSA null device is not paced: the callback outruns any consumer, so the buffer bound is exercised.
    mic = MicSource(device="hallo_test_mono", piece_ms=20, max_buffer_s=0.2)
    time.sleep(0.3)
    results["buffered"] = mic._queue.qsize()
    results["max_pieces"] = mic.max_pieces
    results["dropped"] = mic.dropped_samples
    consumed = []
    reader = threading.Thread(target=lambda: consumed.extend(p for p, _ in mic))
    reader.start()
    time.sleep(0.1)
    mic.close()  # from another thread than the one iterating
    reader.join(timeout=5)
    results["reader_stopped"] = not reader.is_alive()
    np.save(out + "/after_drop.npy", np.concatenate(consumed[:10]))

    for device in ("no such microphone", 99):
        try:
            MicSource(device=device)
        except ValueError as e:
            results[f"error_{device}"] = str(e)
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def alsa_capture(tmp_path_factory):
    """Run CAPTURE_SCRIPT against two virtual capture devices; return (results, output dir, mono, stereo)."""
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        pytest.skip("pyaudio is not installed: `bash scripts/setup.sh dev` installs it (needs portaudio19-dev)")
    home = tmp_path_factory.mktemp("alsa_home")
    mono, stereo = _signal(16000, 3.0, seed=1), _signal(16000, 3.0, channels=2, seed=2)
    mono.astype("<i2").tofile(home / "mono.raw")
    stereo.astype("<i2").tofile(home / "stereo.raw")  # (n, 2) row-major: interleaved, as ALSA expects
    (home / ".asoundrc").write_text(ASOUNDRC.format(mono=home / "mono.raw", stereo=home / "stereo.raw"))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, str(home)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), home, mono, stereo


def test_mic_source_captures_the_known_signal(alsa_capture):
    results, home, mono, _ = alsa_capture
    captured = np.load(home / "mono.npy")
    assert results["mono_name"] == "hallo_test_mono" and results["mono_closed"]
    assert captured.shape == (50 * 320,)
    np.testing.assert_array_equal(captured, mono[: len(captured), 0] / np.float32(32768))


def test_mic_source_stereo_is_interleaved(alsa_capture):
    _, home, _, stereo = alsa_capture
    captured = np.load(home / "stereo.npy")
    assert captured.shape == (40 * 160, 2)
    np.testing.assert_array_equal(captured, stereo[: len(captured)] / np.float32(32768))


def test_mic_source_bounds_its_buffer_and_stops_from_another_thread(alsa_capture):
    results, home, mono, _ = alsa_capture
    assert results["max_pieces"] == 10  # 0.2 s of 20 ms pieces
    assert results["buffered"] <= results["max_pieces"] and results["dropped"] > 0
    assert results["reader_stopped"]
    # New pieces are dropped when the buffer is full, so what was buffered is the start of the signal.
    after = np.load(home / "after_drop.npy")
    np.testing.assert_array_equal(after, mono[: len(after), 0] / np.float32(32768))


def test_mic_source_unknown_device_lists_the_devices(alsa_capture):
    results, *_ = alsa_capture
    for key, device in (("error_no such microphone", "'no such microphone' matches no"),
                        ("error_99", "capture device 99 does not exist")):
        message = results[key]
        assert device in message and "capture devices:" in message
        assert "'hallo_test_mono'" in message and "'hallo_test_stereo'" in message


def test_mic_source_close_wakes_a_waiting_reader(monkeypatch):
    """close() from another thread ends an iteration that waits for audio (no device needed: a fake PyAudio
    whose stream never calls back)."""

    class FakeStream:
        def stop_stream(self):
            pass

        def close(self):
            pass

    class FakePyAudio:
        def __init__(self):
            self.terminated = False

        def get_device_count(self):
            return 1

        def get_device_info_by_index(self, i):
            return {"index": 0, "name": "fake", "maxInputChannels": 1, "defaultSampleRate": 16000.0}

        def get_default_input_device_info(self):
            return self.get_device_info_by_index(0)

        def open(self, **kwargs):
            assert kwargs["frames_per_buffer"] == 320 and kwargs["input"] and kwargs["rate"] == 16000
            return FakeStream()

        def terminate(self):
            self.terminated = True

    fake = type(sys)("pyaudio")
    fake.PyAudio, fake.paInt16, fake.paInputOverflow, fake.paContinue = FakePyAudio, 8, 2, 0
    monkeypatch.setitem(sys.modules, "pyaudio", fake)
    mic = MicSource()
    got = []
    reader = threading.Thread(target=lambda: got.extend(mic))
    reader.start()
    mic._on_audio(np.arange(320, dtype="<i2").tobytes(), 320, None, 2)  # one piece, flagged as an overrun
    mic.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and mic._pa.terminated
    assert len(got) == 1 and got[0][0][1] == np.float32(1 / 32768) and mic.overflows == 1
