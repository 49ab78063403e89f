"""The synthetic talking-face data (issue 9): deterministic clips, disjoint splits, a mouth measurable from
pixels, and speech whose loudness drives the mouth."""

from __future__ import annotations

import json
import math
import shutil
import wave

import numpy as np
import pytest

from hallo_rt.runtime.media import probe
from hallo_rt.train import speech
from hallo_rt.train.dataset import HELDOUT_IDENTITIES, SyntheticTalkingFaces, is_heldout_sentence, main
from hallo_rt.train.faces import FaceIdentity, MouthState, Pose, measure_opening, mouth_box, random_poses, render

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="needs espeak-ng (Debian package espeak-ng)")


def _identities(n: int, first: int = 0) -> list[FaceIdentity]:
    return [FaceIdentity.sample(np.random.default_rng(first + k)) for k in range(n)]


# ------------------------------------------------------------------------------------------------ faces


def test_measure_opening_follows_the_true_opening_across_identities_poses_noise_and_blur():
    rng = np.random.default_rng(0)
    truth, clean, degraded = [], [], []
    for identity in _identities(6, first=100):
        pose = Pose(*rng.uniform(-3.0, 3.0, 2), rng.uniform(-2.5, 2.5), blink=float(rng.uniform()))
        width = float(rng.uniform())
        per_identity = []
        for opening in np.linspace(0.0, 1.0, 11):
            frame = render(identity, MouthState(float(opening), width), pose)
            x0, y0, x1, y1 = mouth_box(identity, pose, 128)
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            per_identity.append(measure_opening(frame, identity, pose))
            # A 3x3 box blur and noise of 3 grey levels: what an encoder or a model might do to the frame.
            soft = frame.astype(np.float32)
            soft[1:-1, 1:-1] = sum(soft[1 + dy:127 + dy, 1 + dx:127 + dx] for dy in (-1, 0, 1)
                                   for dx in (-1, 0, 1)) / 9.0
            soft = np.clip(soft + rng.normal(0.0, 3.0, soft.shape), 0, 255).astype(np.uint8)
            degraded.append(measure_opening(soft, identity, pose))
            truth.append(opening)
        assert np.all(np.diff(per_identity) > 0.0), per_identity  # strictly monotone for each person
        clean += per_identity
    assert np.corrcoef(truth, clean)[0, 1] > 0.95
    assert np.corrcoef(truth, degraded)[0, 1] > 0.95
    assert np.abs(np.array(clean) - np.array(truth)).mean() < 0.08


def test_identities_render_differently_and_mouth_changes_only_inside_the_mouth_box():
    frames = [render(identity, MouthState(0.3), Pose()) for identity in _identities(8)]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert np.abs(frames[i].astype(int) - frames[j].astype(int)).mean() > 10.0, (i, j)
    identity, pose = _identities(1, first=5)[0], Pose(dx=1.3, dy=-0.7, rotation=1.5)
    closed, wide = (render(identity, MouthState(o, w), pose) for o, w in ((0.0, 0.0), (1.0, 1.0)))
    x0, y0, x1, y1 = mouth_box(identity, pose, 128)
    changed = np.argwhere(np.abs(closed.astype(int) - wide.astype(int)).max(axis=2) > 2)
    assert changed.size and changed[:, 0].min() >= y0  # eyes, nose and hair stay; the jaw outline may drop
    luma = wide.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    interior = np.argwhere((luma < 50) & (np.abs(closed.astype(int) - wide.astype(int)).max(axis=2) > 20))
    assert interior.size and interior[:, 0].min() >= y0 and interior[:, 0].max() < y1
    assert interior[:, 1].min() >= x0 and interior[:, 1].max() < x1


def test_render_is_deterministic_and_antialiased():
    identity = _identities(1, first=3)[0]
    a = render(identity, MouthState(0.5, 0.4), Pose(0.25, 0.5, 1.0, 0.2), size=96)
    b = render(identity, MouthState(0.5, 0.4), Pose(0.25, 0.5, 1.0, 0.2), size=96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    shifted = render(identity, MouthState(0.5, 0.4), Pose(0.5, 0.5, 1.0, 0.2), size=96)
    assert 0 < np.abs(shifted.astype(int) - a.astype(int)).max() < 255  # sub-pixel motion moves pixels smoothly


def test_random_poses_blink_naturally_and_sway_smoothly():
    poses = random_poses(np.random.default_rng(1), 25 * 60)
    blink = np.array([p.blink for p in poses])
    closed = blink > 0.5
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert 10 <= starts.size <= 25  # a blink every 2.5-5.5 s over a minute
    assert np.diff(starts).min() >= 2.5 * 25 - 5
    runs = np.flatnonzero(blink > 0)
    lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[-2], runs])) > 1).tolist() + [runs.size])
    assert lengths.max() <= 6  # at most 200 ms with the lid moving
    for field, bound in (("dx", 2.5), ("dy", 1.5), ("rotation", 2.0)):
        track = np.array([getattr(p, field) for p in poses])
        assert np.abs(track).max() <= bound + 1e-9 and track.std() > 0.1 * bound
        assert np.abs(np.diff(track)).max() < 0.1 * bound  # slow: no jumps between frames


# ----------------------------------------------------------------------------------------------- speech


def test_missing_espeak_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(speech.SpeechSynthesisError, match=r"espeak-ng.*apt-get install espeak-ng"):
        speech.synthesize("hello there")


@needs_espeak
def test_speech_is_16khz_deterministic_and_drives_the_mouth(tmp_path):
    text = "The curious painter carried a golden lantern across the bridge."
    audio = speech.synthesize(text, voice="en-us+f2", rate=150, pitch=60)
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.abs(audio).max() <= 1.0
    assert np.array_equal(audio, speech.synthesize(text, voice="en-us+f2", rate=150, pitch=60))
    # 16 kHz: exactly the resampled length of what espeak-ng itself writes (22.05 kHz).
    import subprocess

    subprocess.run(["espeak-ng", "-v", "en-us+f2", "-s", "150", "-p", "60", "-w", str(tmp_path / "s.wav"), text],
                   check=True)
    with wave.open(str(tmp_path / "s.wav")) as wav:
        assert audio.size == math.ceil(wav.getnframes() * 16000 / wav.getframerate())
    assert np.abs(audio).max() > 0.2 and np.sqrt(np.mean(audio**2)) > 0.02  # not silent

    silence = np.zeros(8000, np.float32)
    padded = np.concatenate([silence, audio, silence])
    opening = speech.mouth_track(padded)
    assert opening.shape == (math.ceil(padded.size / 640),)
    assert np.all(opening[:11] == 0.0) and np.all(opening[-11:] == 0.0)  # closed in silence
    frames = np.zeros(opening.size * 640, np.float32)
    frames[:padded.size] = padded
    plain_db = 10 * np.log10(np.maximum((frames.reshape(-1, 640) ** 2).mean(axis=1), 1e-6))
    assert np.corrcoef(opening, plain_db)[0, 1] > 0.8  # follows the plain per-frame loudness
    assert opening.max() > 0.7 and 0.2 < opening[12:-12].mean() < 0.8
    width = speech.mouth_width_track(padded)
    assert width.shape == opening.shape and np.all(width[:11] == 0.5) and width.std() > 0.05


@needs_espeak
def test_every_listed_voice_speaks():
    for voice in speech.VOICES:
        assert np.abs(speech.synthesize("yes", voice=voice, rate=200, pitch=50)).max() > 0.05, voice


def test_sentences_are_many_and_reproducible():
    first = speech.sentences(np.random.default_rng(4), 500)
    assert first == speech.sentences(np.random.default_rng(4), 500)
    assert len(set(first)) >= 495
    assert all(6 <= len(s.split()) <= 11 and s[0].isupper() and s[-1] in ".?" for s in first)


# ---------------------------------------------------------------------------------------------- dataset


def test_train_and_heldout_share_no_person_and_no_sentence():
    train, heldout = SyntheticTalkingFaces("train", seed=3), SyntheticTalkingFaces("heldout", seed=3)
    train_specs = [train.spec(i) for i in range(600)]
    heldout_specs = [heldout.spec(i) for i in range(200)]
    assert {s.identity_index for s in heldout_specs} <= set(range(HELDOUT_IDENTITIES))
    assert min(s.identity_index for s in train_specs) >= HELDOUT_IDENTITIES
    assert not {s.identity for s in train_specs} & {s.identity for s in heldout_specs}
    assert not {s.sentence for s in train_specs} & {s.sentence for s in heldout_specs}
    assert all(is_heldout_sentence(s.sentence) for s in heldout_specs)
    assert not any(is_heldout_sentence(s.sentence) for s in train_specs)
    assert len({s.identity_index for s in heldout_specs}) > 40 and len({s.sentence for s in heldout_specs}) > 190


@needs_espeak
def test_clips_are_deterministic_and_aligned():
    data = SyntheticTalkingFaces("heldout", seed=1, size=64, clip_seconds=1.5)
    clip, again = data[2], SyntheticTalkingFaces("heldout", seed=1, size=64, clip_seconds=1.5)[2]
    assert np.array_equal(clip.frames, again.frames) and np.array_equal(clip.audio, again.audio)
    frames = math.ceil(1.5 * 16000 / 640)
    assert clip.frames.shape == (frames, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (frames * 640,) and clip.opening.shape == (frames,) and len(clip.poses) == frames
    assert not np.array_equal(clip.frames, data[3].frames)
    natural = SyntheticTalkingFaces("train", seed=1, size=64, clip_seconds=None)[0]
    assert natural.frames.shape[0] == math.ceil(natural.audio.size / 640) and natural.opening[-5:].max() == 0.0


@needs_espeak
def test_preview_cli_writes_mp4_with_audio_and_summary(tmp_path):
    assert main(["--split", "heldout", "--clips", "1", "--start", "4", "--size", "64", "--clip-seconds", "1.2",
                 "--out", str(tmp_path)]) == 0
    info = probe(tmp_path / "clip_0004.mp4")
    assert (info.frames, info.width, info.height, info.audio_sample_rate) == (30, 64, 64, 16000)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["split"] == "heldout" and [c["index"] for c in summary["clips"]] == [4]
    assert summary["clips"][0]["measured_vs_true_opening_pearson"] > 0.9
