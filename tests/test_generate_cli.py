"""`hallo-rt generate` end to end on the tiny model: frame counts from the audio, the MP4 it writes, seeded
determinism, the face/text inputs reaching the model, and every bad input failing with one line on stderr and
no file left behind.

A tiny-model clip (49 frames) costs seconds on 2 cores, mostly the VAE decode, whatever the audio length, so
the generating runs are shared through a module-scoped cache and use one clip and one step; only the shipped
example runs whole (2 clips, 2 steps). Those tests are marked `slow`: `-m "not slow"` keeps the error paths, which
exit before or just after loading the models.

Measured differences (mean abs over decoded frames, 0..255) from the default run, seed 0, 1 step: seed 1 ~65,
face embedding ~61, text embeddings ~7, face box / mask ~7. The thresholds below sit well under them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from hallo_rt.engine.config import TINY
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.runtime.cli import main
from hallo_rt.runtime.media import probe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PORTRAIT = EXAMPLES / "portrait.jpg"  # 512x512
AVATAR = EXAMPLES / "avatar.png"  # the demo avatar's held-out person, 128x128
SPEECH = EXAMPLES / "speech.wav"  # 3.196 s, 16 kHz mono
FPS = 25
FLAC_RATE, FLAC_SAMPLES = 44100, 80262  # 1.82 s: 45.5 video frames -> 46, far from a rounding edge
FACE_BOX = "128,96,384,416"  # in the portrait's pixels
WARNING, ERROR = "hallo-rt: warning:", "hallo-rt: error:"


# ----------------------------------------------------------------------------------------------- helpers


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict:
        return json.loads(self.stdout)

    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(WARNING)]


def _cli(*args: str | Path, default_model: bool = False) -> Run:
    """`hallo-rt generate ARGS` in this process. stdout/stderr are redirected here rather than read with
    capsys so module-scoped fixtures can share runs; the CLI looks up sys.stderr at print time. Without a
    --model the run is on the `tiny` preset (Hallo3's clip loop, which these tests exercise), unless
    `default_model` asks for the embedded default."""
    argv = [*map(str, args)]
    if "--model" not in argv and not default_model:
        argv += ["--model", "tiny"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["generate", *argv])
    return Run(rc, out.getvalue(), err.getvalue())


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.asarray(samples).astype("<i2").tobytes())
    return path


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return 0.3 * 32767 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))


def _write_stereo_flac(path: Path) -> Path:
    t = np.arange(FLAC_SAMPLES) / FLAC_RATE
    channels = np.stack([0.4 * np.sin(2 * np.pi * 220 * t), 0.25 * np.sin(2 * np.pi * 330 * t + 1.0)])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=FLAC_RATE)
        stream.codec_context.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(channels.astype(np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = FLAC_RATE, 0, Fraction(1, FLAC_RATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _decoded_samples(path: Path) -> tuple[int, int]:
    """(samples, rate) of the first audio stream, counted by decoding."""
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames), frames[0].sample_rate


def _video(path: Path) -> np.ndarray:
    """Every decoded frame of `path` as uint8 RGB (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@dataclass
class Inputs:
    dir: Path
    flac: Path  # 1.82 s stereo 44.1 kHz: 46 frames, one clip
    tone: Path  # 1.0 s mono 16 kHz: exactly 25 frames
    short: Path  # 0.4 s: for runs that fail before or during generation
    huge: Path  # 4800x4000 JPEG (19.2 MP > the 16 MP reading limit)
    face: Path  # (1, 512) .npy
    text: Path  # (1, 16, 64) .safetensors
    mask: Path  # 256x256 PNG, the FACE_BOX region at half scale


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    huge = d / "huge.jpg"
    with Image.open(PORTRAIT) as portrait:
        portrait.convert("RGB").resize((4800, 4000), Image.Resampling.BILINEAR).save(huge, quality=80)
    face = d / "face.npy"
    np.save(face, (rng.standard_normal((1, TINY.face_embed_dim)) * 1.1).astype(np.float32))
    text = d / "text.safetensors"
    save_file({"prompt_embeds": rng.standard_normal((1, TINY.text_len, TINY.text_dim)).astype(np.float32)}, str(text))
    mask = np.zeros((256, 256), np.uint8)
    mask[48:208, 64:192] = 255  # FACE_BOX / 2
    Image.fromarray(mask).save(d / "mask.png")
    return Inputs(d, _write_stereo_flac(d / "speech.flac"), _write_wav(d / "tone.wav", _tone(1.0)),
                  _write_wav(d / "short.wav", _tone(0.4)), huge, face, text, d / "mask.png")


@dataclass
class Generated:
    run: Run
    out: Path

    @property
    def frames(self) -> np.ndarray:
        return _video(self.out)


@pytest.fixture(scope="module")
def generate(inputs, tmp_path_factory):
    """generate(*args, image=, audio=, quiet=) -> Generated, run once per distinct argument list, with
    `--steps 1 --json`; each run writes `out.mp4` into a directory of its own."""
    cache: dict[tuple, Generated] = {}

    def run(*args: str | Path, image: Path = PORTRAIT, audio: Path | None = None, quiet: bool = True) -> Generated:
        audio = audio or inputs.flac
        key = (image, audio, quiet, *map(str, args))
        if key not in cache:
            out = tmp_path_factory.mktemp("run") / "out.mp4"
            flags = ["--quiet"] if quiet else []
            result = _cli("--image", image, "--audio", audio, "--out", out, "--steps", "1", "--json", *flags, *args)
            assert result.rc == 0, result.stderr
            assert _listing(out.parent) == ["out.mp4"]  # the temp file was renamed, nothing else left
            cache[key] = Generated(result, out)
        return cache[key]

    return run


# ----------------------------------------------------------------------------------------------- success


@pytest.mark.slow
def test_shipped_example_end_to_end(tmp_path):
    """The README's main command: the example avatar and speech on the embedded default (the demo avatar)."""
    out = tmp_path / "out.mp4"
    run = _cli("--image", AVATAR, "--audio", SPEECH, "--out", out, "--json", "--quiet", default_model=True)
    assert run.rc == 0, run.stderr
    assert run.stderr == ""
    assert _listing(tmp_path) == ["out.mp4"]

    with wave.open(str(SPEECH)) as source:
        samples, rate = source.getnframes(), source.getframerate()
    seconds = Fraction(samples, rate)
    frames = math.ceil(seconds * FPS)
    assert frames == 80

    info = probe(out)
    assert info.frames == frames and info.fps == FPS
    assert info.video_codec == "h264" and (info.width, info.height) == (128, 128)
    assert info.audio_codec == "aac" and info.audio_sample_rate == rate and info.audio_channels == 1
    assert 0 <= info.audio_duration - float(seconds) < 1024 / rate  # the last AAC frame is decoded whole

    summary = run.summary
    # the demo streams 2-latent chunks: 8 frames each
    assert summary["out"] == str(out) and summary["frames"] == frames and summary["clips"] == 1 + (frames - 8) // 8
    assert summary["video_seconds"] == pytest.approx(frames / FPS)
    assert summary["size"] == "128x128" and summary["model"] == "demo"
    assert (summary["sampler"], summary["steps"], summary["cfg_scale"]) == ("ddim", 2, 1.0)
    # wall_s is rounded to 1 ms and the factor to 1e-4: the factor lies between those the rounded wall allows
    low, high = (summary["video_seconds"] / (summary["wall_s"] + d) for d in (5e-4, -5e-4))
    assert low - 5e-5 <= summary["realtime_factor"] <= high + 5e-5
    parts = summary["load_s"] + summary["audio_features_s"] + summary["generate_s"]
    assert 0 < parts <= summary["wall_s"] + 0.003
    assert (summary["face_region"], summary["text"]) == ("whole image", "zeros")
    assert summary["face_embedding"].startswith("none")  # trained without: nothing is missing


@pytest.mark.slow
def test_one_second_tone_gives_25_frames_and_a_huge_image_is_downscaled_with_warnings(generate, inputs):
    # Not --quiet: the downscale and the three fallbacks are announced, one `hallo-rt: warning:` line each.
    result = generate(image=inputs.huge, audio=inputs.tone, quiet=False)
    assert result.run.summary["frames"] == 25 and probe(result.out).frames == 25
    lines = result.run.warnings()
    expected = [("downscaled", "4800x4000"), ("no face region", "--face-mask"),
                ("no face embedding", "--face-embedding"), ("no text embeddings",)]
    for words in expected:
        matching = [line for line in lines if all(w in line for w in words)]
        assert len(matching) == 1, (words, result.run.stderr)
    assert len(lines) == len(expected), lines
    # Each warning is one whole line: nothing of it spills onto the next line.
    assert not any(line.startswith(" ") for line in result.run.stderr.splitlines())
    assert ERROR not in result.run.stderr


@pytest.mark.slow
def test_stereo_44k_flac_frame_count_and_audio_track(generate, inputs):
    samples, rate = _decoded_samples(inputs.flac)
    assert (samples, rate) == (FLAC_SAMPLES, FLAC_RATE)
    frames = math.ceil(Fraction(samples, rate) * FPS)
    assert frames == 46

    result = generate()
    info = probe(result.out)
    assert info.frames == frames == result.run.summary["frames"] and info.fps == FPS
    assert info.audio_codec == "aac" and info.audio_sample_rate == FLAC_RATE and info.audio_channels == 2
    assert 0 <= info.audio_duration - samples / rate < 1024 / rate
    assert result.run.stderr == ""  # --quiet: no warnings, no progress bar


@pytest.mark.slow
def test_same_seed_same_video_other_seed_other_video(generate):
    first, again, other = generate().frames, generate("--seed", "0").frames, generate("--seed", "1").frames
    assert first.shape == (46, 128, 128, 3)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


FACE_INPUTS = {
    # name: (extra arguments, the summary field, its expected value), each from the `inputs` fixture
    "face_embedding": (lambda given: ["--face-embedding", given.face], "face_embedding",
                       lambda given: f"file {given.face}"),
    "text_embeddings": (lambda given: ["--text-embeddings", given.text], "text", lambda given: f"file {given.text}"),
    "face_box": (lambda given: ["--face-box", FACE_BOX], "face_region",
                 lambda given: "box (128.0, 96.0, 384.0, 416.0)"),
    "face_mask": (lambda given: ["--face-mask", given.mask], "face_region", lambda given: f"mask {given.mask}"),
}
DEFAULTS = {"face_embedding": "zeros", "text": "zeros", "face_region": "whole image"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FACE_INPUTS))
def test_face_and_text_inputs_are_reported_and_reach_the_model(generate, inputs, name):
    args, field, value = FACE_INPUTS[name]
    result = generate(*args(inputs))
    summary = result.run.summary
    assert summary[field] == value(inputs)
    assert {k: summary[k] for k in DEFAULTS if k != field} == {k: v for k, v in DEFAULTS.items() if k != field}
    assert result.run.stderr == ""
    baseline = generate().frames
    assert np.abs(result.frames.astype(int) - baseline.astype(int)).mean() > 0.5


@pytest.mark.slow
def test_mask_drawn_as_the_box_gives_the_box_video(generate, inputs):
    # mask.png is FACE_BOX at half size: resized (nearest) to the image it is the same region as the box.
    box = generate("--face-box", FACE_BOX).frames
    assert np.array_equal(generate("--face-mask", inputs.mask).frames, box)


# ----------------------------------------------------------------------------------------------- failures


def _truncated_jpeg(path: Path) -> Path:
    data = PORTRAIT.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _text_file(path: Path) -> Path:
    path.write_text("this is a portrait, honest\n")
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).bytes(20000))
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _wrong_text(path: Path) -> Path:
    save_file({"prompt_embeds": np.zeros((1, TINY.text_len, TINY.text_dim - 1), np.float32)}, str(path))
    return path


# name: (case(src: the inputs folder, dst: the output folder) -> the options it changes, words the error line must
# contain)
BAD_INPUTS = {
    "missing_image": (lambda src, dst: {"--image": src / "nope.jpg"}, ["image file", "nope.jpg", "does not exist"]),
    "image_is_a_directory": (lambda src, dst: {"--image": src}, ["image path", "is a directory"]),
    "text_file_as_image": (lambda src, dst: {"--image": _text_file(src / "portrait.jpg")},
                           ["portrait.jpg", "not an image file"]),
    "wav_as_image": (lambda src, dst: {"--image": src / "short.wav"}, ["short.wav", "not an image file"]),
    "truncated_jpeg": (lambda src, dst: {"--image": _truncated_jpeg(src / "cut.jpg")},
                       ["cut.jpg", "truncated or corrupt"]),
    "missing_audio": (lambda src, dst: {"--audio": src / "nope.wav"}, ["audio file", "nope.wav", "does not exist"]),
    "empty_wav": (lambda src, dst: {"--audio": _write_wav(src / "empty.wav", np.zeros(0))},
                  ["empty.wav", "is empty", "no samples"]),
    "silent_wav": (lambda src, dst: {"--audio": _write_wav(src / "silent.wav", np.zeros(16000))},
                   ["silent.wav", "is silent"]),
    "corrupt_audio": (lambda src, dst: {"--audio": _random_bytes(src / "noise.wav")},
                      ["noise.wav", "cannot read audio", "cannot decode"]),
    "image_as_audio": (lambda src, dst: {"--audio": PORTRAIT}, ["portrait.jpg", "no audio stream"]),
    "output_directory_missing": (lambda src, dst: {"--out": dst / "missing" / "out.mp4"},
                                 ["output directory", "missing", "does not exist"]),
    "output_is_a_directory": (lambda src, dst: {"--out": _directory(dst / "video.mp4")},
                              ["video.mp4", "is a directory"]),
    "output_not_mp4": (lambda src, dst: {"--out": dst / "out.avi"}, ["out.avi", "must end in .mp4"]),
    "steps_0": (lambda src, dst: {"--steps": 0}, ["steps must be", "got 0"]),
    "cfg_negative": (lambda src, dst: {"--cfg": -1}, ["cfg_scale", ">= 0", "-1"]),
    "cuda_on_a_cpu_machine": (lambda src, dst: {"--device": "cuda"}, ["'cuda' is not available", "available: cpu"]),
    "face_embedding_wrong_shape": (lambda src, dst: {"--face-embedding": _npy(src / "face511.npy", np.ones(511))},
                                   ["face511.npy", "face embedding", "(512,)", "(511,)"]),
    "text_embeddings_wrong_shape": (lambda src, dst: {"--text-embeddings": _wrong_text(src / "text63.safetensors")},
                                    ["text63.safetensors", "text embeddings", "(16, 64)", "(16, 63)"]),
    # torch.set_num_threads raises RuntimeError, which the CLI does not turn into an error line
    "threads_negative": (lambda src, dst: {"--threads": -2}, ["threads", "-2"]),
    "face_box_three_numbers": (lambda src, dst: {"--face-box": "1,2,3"}, ["face box", "four numbers", "'1,2,3'"]),
    "face_mask_and_face_box": (lambda src, dst: {"--face-mask": src / "mask.png", "--face-box": FACE_BOX},
                               ["--face-mask", "--face-box", "not both"]),
    "face_box_outside_image": (lambda src, dst: {"--face-box": "600,0,700,100"}, ["face box", "outside"]),
    # safetensors raises its own SafetensorError (not a ValueError) for a corrupt header
    "corrupt_safetensors_embedding": (lambda src, dst: {"--face-embedding": _random_bytes(src / "face.safetensors")},
                                      ["face.safetensors", "face embedding"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_one_line_and_leaves_nothing(inputs, tmp_path, case):
    if case == "cuda_on_a_cpu_machine" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make, words = BAD_INPUTS[case]
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for name in ("short.wav", "mask.png"):
        (in_dir / name).write_bytes(getattr(inputs, name.split(".")[0]).read_bytes())
    options = {"--image": PORTRAIT, "--audio": in_dir / "short.wav", "--out": out_dir / "out.mp4", "--steps": 1}
    options.update(make(in_dir, out_dir))
    before = _listing(out_dir)
    run = _cli(*[str(v) for item in options.items() for v in item], "--quiet")
    assert run.rc == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), run.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _listing(out_dir) == before  # no output, no .partial.mp4, no .probe


def test_warnings_do_not_break_the_one_error_line(inputs, tmp_path):
    # Without --quiet, warnings raised before the failure may precede it; the error is still one line.
    run = _cli("--image", PORTRAIT, "--audio", inputs.short, "--out", tmp_path / "out.mp4", "--steps", "1",
               "--face-embedding", _npy(tmp_path / "face.npy", np.ones((2, 512), np.float32)))
    assert run.rc == 2
    lines = [line for line in run.stderr.splitlines() if not line.startswith(WARNING)]
    assert len(lines) == 1 and lines[0].startswith(ERROR) and "(2, 512)" in lines[0], run.stderr
    assert _listing(tmp_path) == ["face.npy"]


def test_console_script_bad_input_exits_2_with_one_line(inputs, tmp_path):
    script = Path(sys.executable).parent / "hallo-rt"
    if not script.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    result = subprocess.run([str(script), "generate", "--image", str(tmp_path / "nope.jpg"), "--audio",
                             str(inputs.short), "--out", str(tmp_path / "out.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{ERROR} image file {str(tmp_path / 'nope.jpg')!r} does not exist"]
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_during_generation_leaves_nothing_and_keeps_the_old_output(inputs, tmp_path, monkeypatch, error):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the video from yesterday")
    during: list[list[str]] = []

    def failing_generate(self, reference, audio_features, *args, **kwargs):
        # One real-looking clip (the reference image, uint8 (T, H, W, 3)), then the failure.
        image = ((reference.image[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        yield image[None].repeat(5, 1, 1, 1)
        during.append(_listing(tmp_path))
        raise error("simulated failure in the second clip")

    monkeypatch.setattr(Hallo3Pipeline, "generate", failing_generate)
    args = ("--image", PORTRAIT, "--audio", inputs.short, "--out", out, "--steps", "1", "--quiet")
    if error is KeyboardInterrupt:
        run = _cli(*args)
        assert run.rc == 130 and run.stderr == "hallo-rt: interrupted\n"
    else:
        with pytest.raises(RuntimeError, match="simulated failure"):
            _cli(*args)
    (names,) = during
    assert any(n.startswith(".out.mp4.") and n.endswith(".partial.mp4") for n in names), names  # it was writing
    assert _listing(tmp_path) == ["out.mp4"]
    assert out.read_bytes() == b"the video from yesterday"


def test_unreadable_face_and_text_files_fail_before_any_model_loads(tmp_path, monkeypatch, capsys):
    """A typo in --face-embedding/--text-embeddings must not cost the (minutes-long) model loading first."""
    import hallo_rt.engine.pipeline as pipeline_module

    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded before the input files were checked")

    monkeypatch.setattr(pipeline_module, "load_pipeline", no_loading)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full(512, np.nan, dtype=np.float32))
    for flag, value, words in (("--face-embedding", str(tmp_path / "missing.npy"), "does not exist"),
                               ("--text-embeddings", str(nan), "NaN")):
        code = main(["generate", "--image", "examples/portrait.jpg", "--audio", "examples/speech.wav",
                     "--out", str(tmp_path / "out.mp4"), "--quiet", flag, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("hallo-rt: error:") and words in err[0], err
    assert not (tmp_path / "out.mp4").exists()
