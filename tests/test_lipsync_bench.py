"""The lip-sync benchmark's measures (`benchmarks/lipsync.py`) on known inputs, and the example avatar."""

from __future__ import annotations

import numpy as np
import pytest

from hallo_rt.benchmarks.lipsync import chunk_starts, identity_metrics, pearson, seam_ratio


def test_the_measure_reads_the_ground_truth_mouth():
    """The benchmark's pixel measure itself, on ground-truth frames at the neutral pose it uses."""
    from hallo_rt.benchmarks.lipsync import heldout_clips, measured_openings, pearson

    (clip,), _ = heldout_clips(1, 3.0)
    assert pearson(measured_openings(clip.frames, clip.identity), clip.opening) > 0.95
    assert np.isfinite(clip.opening).all()


def test_chunk_starts_follow_the_latent_motion_frame_counts():
    assert chunk_starts(30, 2) == [8, 16, 24]  # even chunks: 4F frames from the start
    assert chunk_starts(30, 3) == [9, 21]  # odd chunks: the first decodes 4F - 3
    assert chunk_starts(5, 1) == [1, 5][:1]


def test_seam_ratio_sees_a_jump_at_chunk_starts_and_not_elsewhere():
    frames = np.zeros((24, 4, 4, 3), np.uint8)
    frames += (2 * np.arange(24)).astype(np.uint8)[:, None, None, None]  # a steady ramp: 2 levels per frame
    assert seam_ratio(frames, [8, 16]) == pytest.approx(1.0)
    jumpy = frames.copy()
    jumpy[8:] += 20  # a 20-level step into frame 8
    assert seam_ratio(jumpy, [8, 16]) == pytest.approx((22 + 2) / 2 / 2)
    assert seam_ratio(frames, []) is None


def test_identity_metrics_on_identical_and_shifted_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mask = np.ones((2, 32, 32), bool)
    same = identity_metrics(frames, frames, mask)
    assert same["ssim"] == pytest.approx(1.0) and same["psnr_db"] > 100
    off = np.clip(frames.astype(int) + 16, 0, 255).astype(np.uint8)
    assert identity_metrics(off, frames, mask)["psnr_db"] < 30
    assert pearson(np.arange(5), np.arange(5) * 2 + 1) == pytest.approx(1.0)
    assert pearson(np.ones(3), np.arange(3)) is None


def test_example_avatar_is_the_documented_held_out_person():
    import hashlib
    import re
    from pathlib import Path

    from PIL import Image

    from hallo_rt.train.clip_cache import reference_portrait
    from hallo_rt.train.dataset import HELDOUT_IDENTITIES, identity_for_index
    from hallo_rt.train.demo import DATA_SEED

    examples = Path(__file__).resolve().parents[1] / "examples"
    row = [line for line in (examples / "README.md").read_text().splitlines() if line.startswith("| `avatar.png`")]
    assert len(row) == 1
    path = examples / "avatar.png"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == re.search(r"\b[0-9a-f]{64}\b", row[0]).group(0)
    assert 1 < HELDOUT_IDENTITIES
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")),
                                  reference_portrait(identity_for_index(DATA_SEED, 1)))


def test_speech_frame_r_ignores_the_silence_speech_shape():
    """A mouth that opens a fixed amount whenever there is speech scores high pooled, but zero on speech frames;
    one that follows the syllables scores on both."""
    from hallo_rt.benchmarks.lipsync import speech_frames_r

    rng = np.random.default_rng(0)
    truth = np.concatenate([np.zeros(50), rng.uniform(0.1, 1.0, 100), np.zeros(50)])
    gate = (truth > 0) * 0.5 + rng.normal(0, 1e-3, truth.size)  # open while speaking, syllables ignored
    assert pearson(gate, truth) > 0.7 and abs(speech_frames_r(gate, truth)) < 0.2
    follows = truth + rng.normal(0, 0.05, truth.size)
    assert speech_frames_r(follows, truth) > 0.9
    assert speech_frames_r(np.zeros(4), np.zeros(4)) is None


def test_drift_by_second_sees_blocks_grow_and_identity_fall():
    """A video that turns to 8-pixel blocks over 3 s: the detail ratio climbs above 1 and the PSNR falls,
    second by second; the truth against itself stays at a ratio of 1."""
    from hallo_rt.benchmarks.lipsync import by_second, laplacian_energy

    rng = np.random.default_rng(1)
    y = np.linspace(0, 1, 64)
    smooth = (np.outer(y, y) * 200 + 20)[None, :, :, None].repeat(75, 0).repeat(3, 3)  # (75, 64, 64, 3)
    truth = smooth.astype(np.uint8)
    blocks = rng.normal(0, 1, (75, 8, 8)).repeat(8, 1).repeat(8, 2)[..., None]  # 8 x 8 blocks of noise
    grow = np.repeat([0.0, 10.0, 30.0], 25)[:, None, None, None]
    drifting = np.clip(smooth + grow * blocks, 0, 255).astype(np.uint8)
    mask = np.ones(truth.shape[:3], bool)
    report = by_second(drifting, truth, mask)
    assert len(report["psnr_db"]) == len(report["detail_ratio"]) == 3
    assert report["psnr_db"][0] > report["psnr_db"][1] > report["psnr_db"][2]
    assert report["detail_ratio"][0] == pytest.approx(1.0)
    assert 1.0 < report["detail_ratio"][1] < report["detail_ratio"][2]
    assert by_second(truth, truth, mask)["detail_ratio"] == pytest.approx([1.0, 1.0, 1.0])
    assert by_second(truth[:24], truth[:24], mask[:24]) == {"psnr_db": [], "detail_ratio": []}  # no whole second
    assert laplacian_energy(np.full((1, 8, 8, 3), 90, np.uint8))[0] == 0


def test_a_failing_variant_is_recorded_and_the_others_kept(tmp_path, monkeypatch):
    """One backend failing must not lose the other variants' results; the command then exits 1."""
    import json

    from hallo_rt.benchmarks import lipsync

    def evaluate(variant, clips, portraits, cache, keep_series=False):
        if variant.backend == "onnxruntime":
            raise RuntimeError("no onnxruntime here")
        result = {"label": variant.label, "lipsync_r": 0.8, "lipsync_r_shuffled_audio": 0.0,
                  "psnr_outside_mouth_db": 30.0, "ssim_outside_mouth": 0.9, "seam_ratio": 1.0,
                  "seam_ratio_ground_truth": 1.0, "wall_s": 1.0, "psnr_outside_mouth_by_second_db": [30.0],
                  "detail_ratio_by_second": [1.0]}
        if keep_series:
            result["series"] = {"measured": [0.0], "truth": [0.0], "loudness_db": [-60.0], "sentence": "x"}
        return result

    monkeypatch.setattr(lipsync, "heldout_clips", lambda count, seconds: ([], []))
    monkeypatch.setattr(lipsync, "evaluate", evaluate)
    monkeypatch.setattr(lipsync, "plot", lambda *args: None)
    code = lipsync.main(["--backends", "torch,onnxruntime", "--chunks", "2,3", "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "lipsync.json").read_text())
    assert code == 1
    assert [r["label"] for r in report["results"]] == ["shipped, stream", "shipped, offline",
                                                       "shipped, stream, chunk 3"]
    assert report["failed"] == [{"label": "shipped, stream, onnxruntime", "model": "demo", "backend": "onnxruntime",
                                 "error": "RuntimeError: no onnxruntime here"}]


def test_variants_cover_backends_chunks_motion_noise_and_compared_models():
    import argparse

    from hallo_rt.benchmarks.lipsync import variants_from_args

    args = argparse.Namespace(model="demo", backends=["torch", "onnxruntime"], chunks=[2, 3], motion_noise=[0.0],
                              compare=["teacher, 8 steps=runs/ship/teacher@8", "other=some/folder"])
    got = [(v.label, v.model, v.mode, v.backend, v.settings) for v in variants_from_args(args)]
    assert got == [
        ("shipped, stream", "demo", "stream", "torch", {}),
        ("shipped, offline", "demo", "offline", "torch", {}),
        ("shipped, stream, onnxruntime", "demo", "stream", "onnxruntime", {}),
        ("shipped, stream, chunk 3", "demo", "stream", "torch", {"chunk_latents": 3}),
        ("shipped, stream, motion noise 0", "demo", "stream", "torch", {"motion_noise": 0.0}),
        ("teacher, 8 steps", "runs/ship/teacher", "stream", "torch", {"steps": 8}),
        ("other", "some/folder", "stream", "torch", {}),
    ]
