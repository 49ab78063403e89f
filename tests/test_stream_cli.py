"""`hallo-rt stream` end to end on the tiny model, its summary, and its bad-input errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from hallo_rt.runtime.cli import main
from hallo_rt.runtime.media import probe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(argv: list[str], default_model: bool = False) -> tuple[int, str, str]:
    """`hallo-rt ARGV` here; a stream without --model runs the `tiny` preset unless `default_model`."""
    if argv[:1] == ["stream"] and "--model" not in argv and not default_model:
        argv = [*argv, "--model", "tiny"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _wav(path: Path, seconds: float, rate: int = 22050, channels: int = 2) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    data = (np.repeat(tone[:, None], channels, axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def test_stream_file_to_mp4(tmp_path):
    audio = _wav(tmp_path / "speech.wav", 0.7)
    out = tmp_path / "live.mp4"
    code, stdout, stderr = _run(["stream", "--image", str(EXAMPLES / "portrait.jpg"), "--audio", str(audio),
                                 "--out", str(out), "--motion", "latent", "--chunk-latents", "2", "--steps", "1",
                                 "--json"])
    assert code == 0, stderr
    summary = json.loads(stdout)
    frames = math.ceil(0.7 * 25)
    assert summary["frames"] == frames and summary["backend_used"]["backend"] == "torch"
    assert summary["device"] == "cpu" and summary["frames_dropped"] == 0 and summary["ttff_s"] > 0
    info = probe(out)
    assert info.frames == frames and info.fps == 25 and (info.width, info.height) == (128, 128)
    assert info.audio_codec == "aac" and abs(info.audio_duration - frames / 25) < 0.07
    assert not list(tmp_path.glob(".*partial*"))


def test_stream_runs_the_embedded_default_with_its_own_settings(tmp_path):
    """No --model: the demo avatar, streamed with what it was distilled for (2 DDIM steps, 2-latent chunks)."""
    audio = _wav(tmp_path / "speech.wav", 0.7)
    out = tmp_path / "live.mp4"
    code, stdout, stderr = _run(["stream", "--image", str(EXAMPLES / "avatar.png"), "--audio", str(audio),
                                 "--out", str(out), "--json"], default_model=True)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["frames"] == math.ceil(0.7 * 25) == probe(out).frames
    assert summary["model"] == "demo"
    defaults = summary["defaults"]
    assert (defaults["sampler"], defaults["steps"], defaults["chunk_latents"], defaults["motion"]) == \
        ("ddim", 2, 2, "latent")
    assert defaults["motion_anchor"] == 0.4  # as it was trained


@pytest.mark.parametrize("argv, message", [
    (["--audio", "A", "--mic"], "not allowed with argument"),
    (["--mic", "--realtime"], "--realtime and --offline-features apply to --audio files"),
    (["--audio", "missing.wav"], "does not exist"),
    (["--audio", "A", "--chunk-latents", "2"], "pixel motion needs an odd chunk_latents"),
    (["--audio", "A", "--backend", "tensorrt"], "tensorrt"),
    (["--audio", "A", "--device", "cuda"], "not available on this machine"),
])
def test_stream_bad_arguments(tmp_path, argv, message):
    audio = _wav(tmp_path / "a.wav", 0.2)
    argv = [str(audio) if a == "A" else a for a in argv]
    out = tmp_path / "x.mp4"
    with contextlib.suppress(SystemExit):
        code, _, stderr = _run(["stream", "--image", str(EXAMPLES / "portrait.jpg"), "--out", str(out), *argv])
        assert code == 2
        assert message in stderr and stderr.startswith("hallo-rt: error:") and stderr.count("\n") == 1
    assert not out.exists()


def test_stream_refuses_a_non_image(tmp_path):
    bad = tmp_path / "face.png"
    bad.write_text("not an image")
    code, _, stderr = _run(["stream", "--image", str(bad), "--audio", str(_wav(tmp_path / "a.wav", 0.2)),
                            "--out", str(tmp_path / "x.mp4")])
    assert code == 2 and "image" in stderr
