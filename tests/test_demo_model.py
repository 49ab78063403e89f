"""The shipped demo avatar (`engine/weights/demo`): it loads, it is what its manifest says, and a short stream
moves the mouth with the audio, which shuffled audio does not (so these tests can fail). Skipped until the
weights are built and shipped."""

from __future__ import annotations

import json

import pytest

from hallo_rt.engine.models import DEMO_FOLDER, model_defaults

pytestmark = pytest.mark.skipif(not (DEMO_FOLDER / "hallo_rt.json").is_file(),
                                reason="the demo avatar's weights are not built yet (train/README.md); these tests "
                                       "hold the shipped model to the issue's acceptance criteria once they are")

LIPSYNC_FLOOR = 0.5
"""Conservative floor for 4 s of one clip (the benchmark measures the shipped model at 0.76 over 8 clips x 4 s)."""
DRIFT_CEILING = 1.15
"""Largest rise allowed in the detail ratio from a stream's first second to its fourth (blocks raise it). Measured
on this stream: the third run's model, which drifted, rose 1.27x and lost 0.75 dB; the shipped one rises 1.08x
and gains 0.3 dB."""
PSNR_LOSS_CEILING_DB = 0.5
SHUFFLED_CEILING = 0.3


def test_shipped_weights_load_and_match_their_manifest():
    from hallo_rt.engine.pipeline import load_pipeline
    from hallo_rt.engine.weights import weights_digest
    from hallo_rt.engine.weights.common import load_safetensors
    from hallo_rt.train.demo import AUDIO_DEMO, DIT_DEMO, STREAM_DEFAULTS, VAE_DEMO

    manifest = json.loads((DEMO_FOLDER / "hallo_rt.json").read_text())
    total = sum(f.stat().st_size for f in DEMO_FOLDER.rglob("*") if f.is_file())
    assert total <= 20e6, f"the shipped weights are {total / 1e6:.1f} MB"
    for name in ("dit", "reference_net", "vae"):
        assert weights_digest(load_safetensors([DEMO_FOLDER / f"{name}.safetensors"])) == manifest[f"{name}_digest"]
    pipeline, extractor = load_pipeline("demo")
    assert pipeline.dit.config == DIT_DEMO and pipeline.vae.config == VAE_DEMO
    assert extractor.encoder.config.to_dict() == {**AUDIO_DEMO.to_dict(), "name": extractor.encoder.config.name}
    # what it was distilled for, with the motion anchor its training used
    assert model_defaults("demo") == manifest["stream_defaults"] == {**STREAM_DEFAULTS, "motion_anchor": 0.4}
    assert set(manifest["training"]) and all(r["final"] for r in manifest["training"].values())


@pytest.fixture(scope="module")
def streams():
    from hallo_rt.benchmarks.lipsync import heldout_clips, measured_openings, stream_frames
    from hallo_rt.runtime.api import Engine

    clips, portraits = heldout_clips(2, 4.0)
    engine = Engine("demo")
    a, b = clips
    T = min(a.opening.size, b.opening.size)
    frames = stream_frames(engine, portraits[0], a.audio, T)
    own = measured_openings(frames, a.identity)
    swapped = measured_openings(stream_frames(engine, portraits[0], b.audio[:T * 640], T), a.identity)
    return a.opening[:T], b.opening[:T], own, swapped, (frames, a)


def test_a_stream_does_not_drift_into_blocks(streams):
    """Second by second, the generated detail (blocks raise it) and the identity outside the mouth hold."""
    from hallo_rt.benchmarks.lipsync import by_second, outside_mouth_mask

    frames, clip = streams[-1]
    drift = by_second(frames, clip.frames[:len(frames)], outside_mouth_mask(clip.identity, clip.poses, frames.shape[1]))
    assert len(drift["detail_ratio"]) == 4
    assert drift["detail_ratio"][-1] <= DRIFT_CEILING * drift["detail_ratio"][0], drift
    assert drift["psnr_db"][-1] >= drift["psnr_db"][0] - PSNR_LOSS_CEILING_DB, drift


def test_a_short_stream_moves_the_mouth_with_the_audio(streams):
    from hallo_rt.benchmarks.lipsync import pearson

    truth, _, own, _, _ = streams
    assert own.std() > 0.05, "the mouth does not move"
    assert pearson(own, truth) >= LIPSYNC_FLOOR


def test_shuffled_audio_destroys_the_correlation(streams):
    """The same portrait driven by another clip's speech follows that speech, not this clip's."""
    from hallo_rt.benchmarks.lipsync import pearson

    truth, other_truth, _, swapped, _ = streams
    assert abs(pearson(swapped, truth) or 0.0) < SHUFFLED_CEILING
    assert pearson(swapped, other_truth) >= LIPSYNC_FLOOR
