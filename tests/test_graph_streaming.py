"""Graph backends at the streaming chunk lengths: `model_graphs` cuts one graph set per (chunk length, motion
mode) with stable names, and an onnxruntime engine streams 3-latent chunks (latent and pixel motion) like the
torch engine, fp32 and int8.

Tolerance tier (STYLE.md): fp32 ONNX Runtime graphs against torch are the same maths summed in another order
(~1e-6 relative per op), so after the uint8 conversion a frame may differ by one level where a value sits on a
rounding boundary, never more. int8 (dynamic MatMul/Gemm quantisation, ~3% of a layer's peak on random weights:
runtime/backends/onnxruntime_backend.py) compounds through the steps and the VAE: it is held to the frame count
and a mean error per value well below what another seed changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hallo_rt.engine import load_dit, load_reference_net, load_vae
from hallo_rt.engine.audio_features import AudioFeatureExtractor
from hallo_rt.engine.config import TINY, VaeConfig
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.export.graphs import chunk_audio_frames, model_graphs
from hallo_rt.runtime.api import Engine

# 13 latent frames (Hallo3's clip, so 3-latent chunks are not the clip) at 32x32 pixels: every stage, fast.
CLIP13 = dataclasses.replace(TINY, name="tiny-13x32", latent_frames=13, latent_height=4, latent_width=4)
SMALL_VAE = VaeConfig(name="tiny-test", base_channels=8, num_res_blocks=1, norm_groups=4)
STREAM = {"chunk_latents": 3, "steps": 2, "cfg": 1.0, "idle": False}


@pytest.fixture(scope="module")
def parts():
    pipeline = Hallo3Pipeline(load_dit("tiny", config=CLIP13), load_reference_net("tiny", config=CLIP13),
                              load_vae("tiny", config=SMALL_VAE))
    return pipeline, AudioFeatureExtractor.from_checkpoint("tiny")


@pytest.fixture(scope="module")
def torch_latent_frames(parts):
    """The torch engine's frames for 3-latent chunks with latent motion: what every graph run is held to."""
    return _frames(Engine.from_pipeline(*parts, motion="latent", **STREAM))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One artifact cache for the module: engines share the graphs they have in common."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HALLO_RT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _engine(parts, backend: str, **settings) -> Engine:
    """`Engine(...)` itself (its graph export and load), on the small test pipeline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hallo_rt.engine.pipeline.load_pipeline", lambda *args, **kwargs: parts)
        return Engine("tiny-13x32", backend=backend, **settings)


@pytest.fixture(scope="module")
def latent_engine(parts, cache):
    pytest.importorskip("onnxruntime")
    return _engine(parts, "onnxruntime", motion="latent", **STREAM)


def _speech(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * 140 * t)).astype(np.float32)


def _frames(engine: Engine, seconds: float = 1.2, **overrides) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    with engine.session(image, face_embedding=np.ones(512) * 0.1, seed=3, **overrides) as session:
        session.push_audio(_speech(seconds), 16000)
        session.end_audio()
        return np.stack([frame.image for frame in session]).astype(int)


def test_graph_sets_per_chunk_have_stable_unique_names(parts):
    pipeline, extractor = parts
    models = (pipeline.dit, pipeline.reference_net, pipeline.vae, extractor.encoder)
    clip = model_graphs(*models)
    assert {n: d.compute_hash() for n, (d, _) in model_graphs(*models, chunk_latents=13).items()} == \
        {n: d.compute_hash() for n, (d, _) in clip.items()}  # the clip with pixel motion is the offline set
    latent = model_graphs(*models, chunk_latents=3, motion="latent")
    pixel = model_graphs(*models, chunk_latents=3, motion="pixel")
    assert sorted(latent) == ["audio_encoder", "conditioning_f3_t12", "conditioning_f3_t9", "denoiser_f3",
                              "reference", "vae_decoder_first_g3x3", "vae_decoder_next_g3x3", "vae_encoder_t1",
                              "vae_encoder_t3"]
    assert sorted(pixel) == ["audio_encoder", "conditioning_f3_t9", "denoiser_f3", "reference",
                             "vae_decoder_first", "vae_decoder_next", "vae_encoder_t1", "vae_encoder_t3"]
    assert chunk_audio_frames(4, "latent") == (16,) and chunk_audio_frames(5, "latent") == (17, 20)
    # one name, one graph: wherever two sets share a name the descriptors are equal
    for a, b in ((clip, latent), (clip, pixel), (latent, pixel)):
        for name in set(a) & set(b):
            assert a[name][0].compute_hash() == b[name][0].compute_hash(), name
    with pytest.raises(ValueError, match="odd chunk_latents"):
        model_graphs(*models, chunk_latents=4, motion="pixel")


def test_latent_chunks_on_onnxruntime_match_torch(latent_engine, torch_latent_frames):
    engine, torch_frames = latent_engine, torch_latent_frames
    assert engine.backend_used["chunk"] == {"chunk_latents": 3, "motion": "latent", "motion_frames": 2}
    assert "denoiser_f3" in engine.backend_used["graphs"] and engine.backend_used["options"] == {}
    graph_frames = _frames(engine)
    assert graph_frames.shape == torch_frames.shape and graph_frames.shape[0] == 30  # 1.2 s at 25 fps
    assert np.abs(graph_frames - torch_frames).max() <= 1  # measured: 1 level on ~0.01% of the values
    for other, match in (({"chunk_latents": 5}, "chunk_latents=3, motion='latent'.*asks for chunk_latents=5"),
                         ({"motion": "pixel"}, "asks for chunk_latents=3, motion='pixel'")):
        with pytest.raises(ValueError, match=match):
            engine.session(np.zeros((32, 32, 3), np.uint8), face_embedding=np.zeros(512), **other)
    with pytest.raises(ValueError, match=r"no VAE decoder graphs for Grouping\(first=3, then=2\).*\[\(3, 3\)\]"):
        engine.pipeline.vae.stream_decoder("reference")


def test_pixel_chunks_on_onnxruntime_match_torch(parts, latent_engine):
    torch_frames = _frames(Engine.from_pipeline(*parts, motion="pixel", **STREAM), seconds=0.8)
    engine = _engine(parts, "onnxruntime", motion="pixel", **STREAM)
    graph_frames = _frames(engine, seconds=0.8)
    assert graph_frames.shape == torch_frames.shape and graph_frames.shape[0] == 20
    assert np.abs(graph_frames - torch_frames).max() <= 1  # measured: 1 level on ~0.01% of the values
    # the graphs both sets hold were exported once: the same files back both engines
    pixel, latent = engine.backend_used["graphs"], latent_engine.backend_used["graphs"]
    shared = set(pixel) & set(latent)
    assert shared == {"audio_encoder", "conditioning_f3_t9", "denoiser_f3", "reference", "vae_encoder_t1",
                      "vae_encoder_t3"}
    assert all(Path(pixel[n]["model"]).resolve() == Path(latent[n]["model"]).resolve() for n in shared)


def test_int8_engine_runs_and_is_recorded(parts, latent_engine, torch_latent_frames):
    engine = _engine(parts, "onnxruntime", motion="latent", backend_options={"quantize": "int8"}, **STREAM)
    used = engine.backend_used
    assert used["options"] == {"quantize": "int8"} and engine.describe()["backend_used"] is used
    assert {g["precision"] for g in used["graphs"].values()} == {"int8-dynamic"}
    assert used["artifacts"] == latent_engine.backend_used["artifacts"]  # quantised from the same export
    graph_frames = _frames(engine)
    assert graph_frames.shape == torch_latent_frames.shape
    # measured 4.1 levels on average (max 75); another seed moves the torch frames by ~79 on average, so
    # this holds int8 to the same video, not merely to its shape
    assert np.abs(graph_frames - torch_latent_frames).mean() < 8.0


def test_backend_options_need_a_graph_backend(parts):
    with pytest.raises(ValueError, match="backend_options.*graph backends"):
        _engine(parts, "torch", backend_options={"quantize": "int8"})


def test_exported_chunk_graphs_serve_engines_with_artifacts(parts, tmp_path, latent_engine, torch_latent_frames):
    """`hallo-rt export --chunk-latents F --motion M` writes the graphs a session of that chunk runs: an engine
    on `artifacts=` streams from them; an engine asking for another chunk is told how to export it."""
    from hallo_rt.engine.chunks import ChunkSettings
    from hallo_rt.runtime.export_cmd import export_pipeline

    out = tmp_path / "onnx"
    manifest = export_pipeline(*parts, out, precision="fp32", quiet=True,
                               chunk=ChunkSettings(chunk_latents=3, motion="latent"))
    assert "denoiser_f3" in manifest["graphs"] and "vae_decoder_next_g3x3" in manifest["graphs"]
    engine = _engine(parts, "onnxruntime", artifacts=out, motion="latent", **STREAM)
    assert engine.backend_used["artifacts"] == str(out)
    assert np.abs(_frames(engine) - torch_latent_frames).max() <= 1
    with pytest.raises(ValueError, match="has no denoiser_f2 graph .*hallo-rt export --chunk-latents F"):
        _engine(parts, "onnxruntime", artifacts=out, motion="latent", **{**STREAM, "chunk_latents": 2})


def test_export_cli_checks_chunk_arguments_before_loading(capsys, tmp_path):
    from hallo_rt.runtime.cli import main

    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--motion", "latent"]) == 2
    assert "--motion applies with --chunk-latents" in capsys.readouterr().err
    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--chunk-latents", "0"]) == 2
    assert "chunk_latents" in capsys.readouterr().err
