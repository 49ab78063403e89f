"""The demo avatar's training recipe: the streaming features it trains on, resumable deterministic stages,
the distillation target, and the shipped folder's round trip through the engine's loaders."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from hallo_rt.engine.audio_features import AudioFeatureExtractor
from hallo_rt.engine.sampling import ddim_step
from hallo_rt.runtime.streaming_features import StreamingAudioFeatures
from hallo_rt.train import loop
from hallo_rt.train.distill import parse_rounds, student_x0_target
from hallo_rt.train.stream_features import chunk_features, needed_samples


def _speechy(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    envelope = np.clip(np.sin(2 * np.pi * 2.3 * t) + 0.3 * rng.standard_normal(n).cumsum() / np.sqrt(n), 0, None)
    return (0.2 * envelope * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("context", [12, 50])
def test_training_features_equal_the_streaming_runtime(context):
    """The denoiser trains on exactly what a live session computes: same windows, normalisation, frames."""
    extractor = AudioFeatureExtractor.from_checkpoint("tiny")
    audio = _speechy(3.0, 0)
    runtime = StreamingAudioFeatures(extractor, context_frames=context)
    runtime.append(audio)
    frames = runtime.available_frames
    expected = runtime.take(frames)
    starts = [0, 8, 28]
    with torch.no_grad():
        got = chunk_features(extractor.encoder, [audio] * 3, starts, 8, context=context)
    for row, start in enumerate(starts):
        assert start + 8 <= frames
        torch.testing.assert_close(got[row], expected[start:start + 8], rtol=1e-4, atol=1e-5)
    assert needed_samples(36) <= audio.size


def test_training_features_refuse_a_window_past_the_audio():
    extractor = AudioFeatureExtractor.from_checkpoint("tiny")
    with pytest.raises(ValueError, match="needs"):
        chunk_features(extractor.encoder, [_speechy(0.5, 1)], [8], 8)


def test_distillation_target_makes_one_student_step_land_on_the_teacher():
    g = torch.Generator().manual_seed(0)
    x, x_end = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    for a, a_next in [(0.0, 0.3), (0.3, 0.7), (0.7, 1.0)]:
        target = student_x0_target(x, x_end, a, a_next)
        torch.testing.assert_close(ddim_step(x, target, a, a_next), x_end, rtol=1e-5, atol=1e-5)


def test_distillation_rounds_must_halve_and_chain():
    assert parse_rounds("8:4,4:2,2:1") == [(8, 4), (4, 2), (2, 1)]
    for bad in ("8:3", "8:4,2:1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rounds(bad)


def test_cosine_schedule_warms_up_then_decays_to_five_percent():
    assert loop.cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert loop.cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert loop.cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.05)
    assert 0.05 < loop.cosine_lr(55, 100, 1.0, 10) < 1.0


def _vae_stage(out, *extra):
    from hallo_rt.train import train_vae

    assert train_vae.main(["--out", str(out), "--pool", "3", "--log-every", "1", "--save-every", "2",
                           "--threads", "2", *extra]) == 0
    return torch.load(out / loop.CHECKPOINT, weights_only=False)


@pytest.mark.slow
def test_a_resumed_stage_equals_the_uninterrupted_run(tmp_path):
    """Batches and noise come from (seed, step): stopping and resuming changes nothing, bit for bit."""
    whole = _vae_stage(tmp_path / "whole", "--steps", "4")
    _vae_stage(tmp_path / "split", "--steps", "2")
    first_half = loop.read_losses(tmp_path / "split")
    resumed = _vae_stage(tmp_path / "split", "--steps", "4")
    assert resumed["step"] == 4 and [row["step"] for row in loop.read_losses(tmp_path / "split")] == [1, 2, 3, 4]
    for key, value in whole["modules"]["vae"].items():
        assert torch.equal(value, resumed["modules"]["vae"][key]), key
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in loop.read_losses(tmp_path / "whole")]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in loop.read_losses(tmp_path / "split")]
    assert first_half[0]["loss"] == strip[0]["loss"] and math.isfinite(strip[-1]["loss"])
    with pytest.raises(loop.TrainingError, match="other settings"):
        _vae_stage(tmp_path / "split", "--steps", "6", "--lr", "0.5")
    with pytest.raises(loop.TrainingError, match="run that stage first"):
        loop.load_stage_modules(tmp_path / "nothing", "VAE")


@pytest.mark.slow
def test_decoder_only_fine_tuning_keeps_the_encoder_and_so_the_latents(tmp_path):
    base = _vae_stage(tmp_path / "base", "--steps", "2")["modules"]["vae"]
    tuned = _vae_stage(tmp_path / "tuned", "--steps", "2", "--init", str(tmp_path / "base"), "--decoder-only",
                       "--mouth-weight", "16")
    assert tuned["settings"]["decoder_only"] and tuned["settings"]["mouth_weight"] == 16
    tuned = tuned["modules"]["vae"]
    encoder = [k for k in base if k.startswith("encoder.")]
    assert encoder and all(torch.equal(base[k], tuned[k]) for k in encoder)
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))
    with pytest.raises(SystemExit):
        _vae_stage(tmp_path / "bad", "--decoder-only")


@pytest.mark.slow
def test_shipped_folder_round_trips_through_the_engine(tmp_path):
    """ship writes a hallo-rt folder the engine loads as any model, with the settings it was trained for."""
    from hallo_rt.engine.pipeline import load_pipeline
    from hallo_rt.engine.vae import CogVideoXVae
    from hallo_rt.runtime.api import Engine
    from hallo_rt.train.demo import STREAM_DEFAULTS, VAE_DEMO
    from hallo_rt.train.ship import ship
    from hallo_rt.train.train_denoiser import DemoAvatar

    model, vae = DemoAvatar(seed=3), CogVideoXVae(VAE_DEMO)
    for name, modules in (("denoiser", {"model": model}), ("vae", {"vae": vae})):
        folder = tmp_path / name
        folder.mkdir()
        settings = {"steps": 1, **({"motion_anchor": 0.4} if name == "denoiser" else {})}
        torch.save({"step": 1, "settings": settings, "modules": {k: m.state_dict() for k, m in modules.items()}},
                   folder / loop.CHECKPOINT)
        (folder / loop.SETTINGS).write_text(json.dumps({"settings": settings}))
    out = ship(tmp_path / "vae", tmp_path / "denoiser", tmp_path / "shipped", steps=2, extra_stages=[])
    pipeline, extractor = load_pipeline(out)
    for mine, loaded in ((model.dit, pipeline.dit), (model.reference_net.backbone, pipeline.reference_net.backbone),
                         (model.audio, extractor.encoder)):
        for key, value in mine.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0, msg=key)
    assert extractor.normalize and extractor.num_layers == model.audio.config.num_layers
    engine = Engine(out)
    chunk, sampler, stream = engine.settings_for()
    assert (sampler.kind, sampler.steps, sampler.cfg_scale) == ("ddim", 2, 1.0)
    assert (chunk.chunk_latents, chunk.motion) == (STREAM_DEFAULTS["chunk_latents"], "latent")
    assert chunk.motion_anchor == 0.4  # trained with anchored motion latents, so it streams with them
    assert stream.context_frames == STREAM_DEFAULTS["context_frames"]
    assert engine.settings_for(steps=4, chunk_latents=3)[1].steps == 4  # the caller's settings win
    manifest = json.loads((out / "hallo_rt.json").read_text())
    assert manifest["face_embedding"] == "none" and manifest["stream_defaults"]["sampler"] == "ddim"
    # generate runs a latent-motion folder with its own settings: whole-file features, the chunked loop
    import contextlib
    import io
    from pathlib import Path

    from hallo_rt.runtime.cli import main
    from hallo_rt.runtime.media import probe

    examples = Path(__file__).resolve().parents[1] / "examples"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["generate", "--model", str(out), "--image", str(examples / "avatar.png"), "--audio",
                     str(examples / "speech.wav"), "--out", str(tmp_path / "out.mp4"), "--quiet", "--json"])
    assert code == 0
    summary = json.loads(stdout.getvalue())
    frames = math.ceil(51137 / 640)  # examples/speech.wav: 51,137 samples at 16 kHz
    assert (summary["sampler"], summary["steps"], summary["cfg_scale"]) == ("ddim", 2, 1.0)
    assert summary["frames"] == frames == probe(tmp_path / "out.mp4").frames
    assert summary["clips"] == 1 + math.ceil((frames - 8) / 8)  # 2-latent chunks: 8 new frames each
    assert summary["face_embedding"].startswith("none")


def test_check_samples_a_chunk_as_the_engine_sampler_does():
    """train.check's chunks are what `engine.sampling.sample` (DDIM, no CFG) gives on the same inputs."""
    from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample
    from hallo_rt.train.check import CHUNK, sample_chunk
    from hallo_rt.train.demo import DIT_DEMO
    from hallo_rt.train.train_denoiser import DemoAvatar

    torch.manual_seed(0)
    model = DemoAvatar(seed=5).eval()
    shape = (DIT_DEMO.out_channels, DIT_DEMO.latent_height, DIT_DEMO.latent_width)
    motion, reference = torch.randn(shape), torch.randn(shape)
    features = torch.randn(1, 4 * CHUNK, DIT_DEMO.audio_window, DIT_DEMO.audio_layers, DIT_DEMO.audio_dim)
    with torch.no_grad():
        mine = sample_chunk(model, 3, motion, reference, features, torch.Generator().manual_seed(7))
        concat = torch.zeros(1, CHUNK, *shape)
        concat[0, 0] = motion
        cond = Conditioning(concat, torch.zeros(1, DIT_DEMO.text_len, DIT_DEMO.text_dim), audio=features,
                            face=torch.zeros(1, DIT_DEMO.face_embed_dim),
                            ref_bank=model.reference_net(reference[None, None]))
        engine = sample(model.dit, cond, SamplerConfig(kind="ddim", steps=3, cfg_scale=1.0),
                        generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(mine, engine[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("anchor", [0.0, 0.4])
def test_own_motion_replaces_the_true_previous_latent_with_a_drawn_one_and_keeps_its_jitter(anchor):
    from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample
    from hallo_rt.train.demo import CONTEXT_FRAMES, DIT_DEMO
    from hallo_rt.train.train_denoiser import ChunkExamples, DemoAvatar, OwnMotion

    g = torch.Generator().manual_seed(0)
    C, h = DIT_DEMO.out_channels, DIT_DEMO.latent_height
    data = {"latents": [torch.randn(8, C, h, h, generator=g).half() for _ in range(2)],
            "reference": [torch.randn(C, h, h, generator=g).half() for _ in range(2)],
            "first": [torch.randn(C, h, h, generator=g).half() for _ in range(2)],
            "audio": [_speechy(1.6, s) for s in range(2)],
            "mouth": [torch.zeros(8, h, h) for _ in range(2)], "opening": [np.zeros(40, np.float32)] * 2}
    examples = ChunkExamples(data, motion_jitter=0.5, motion_anchor=anchor)
    sampler = DemoAvatar(0)
    own = OwnMotion(sampler, steps=1, share=1.0)
    rng = np.random.default_rng(4)
    x0, concat, *_ = examples.draw(rng, 6, torch.Generator().manual_seed(1), first_share=0.0)
    before = concat.clone()
    replaced = own.apply(examples, concat, rng, torch.Generator().manual_seed(2))
    late = [b for b, (c, j) in enumerate(examples.picks) if j > 2]
    assert late and replaced == len(late) < 6
    # the batch's initial noise is the generator's first draw, row by row in the order of the replaced rows
    noise = torch.randn((len(late), 2, C, h, h), generator=torch.Generator().manual_seed(2))
    for b, (c, j) in enumerate(examples.picks):
        if b not in late:
            assert torch.equal(concat[b], before[b])
            continue
        # redo this row alone: one DDIM step of the 2-latent chunk before the target, on the true latent before it
        motion = torch.zeros(1, 2, C, h, h)
        motion[0, 0] = (1 - anchor) * data["latents"][c][j - 3].float() + anchor * data["first"][c].float()
        with torch.no_grad():
            features = chunk_features(sampler.audio, [np.pad(data["audio"][c], (0, 16000))], [4 * (j - 2)], 8,
                                      context=CONTEXT_FRAMES)
            cond = Conditioning(motion, examples.text, audio=features, face=examples.face,
                                ref_bank=sampler.reference_net(data["reference"][c].float()[None, None]))
            drawn = sample(sampler.dit, cond, SamplerConfig(kind="ddim", steps=1, cfg_scale=1.0),
                           noise=noise[late.index(b)][None])
        # the true latent's jitter and the anchor are kept: (1 - a) * (drawn + jitter) + a * first
        jitter = (before[b, 0] - anchor * data["first"][c].float()) / (1 - anchor) - data["latents"][c][j - 1].float()
        expected = (1 - anchor) * (drawn[0, -1] + jitter) + anchor * data["first"][c].float()
        torch.testing.assert_close(concat[b, 0], expected, rtol=1e-4, atol=1e-4)
        assert not concat[b, 1:].any()


def test_anchored_examples_blend_later_motion_latents_toward_the_first_chunk_latent():
    """With --motion-anchor a, a later chunk's motion latent is (1 - a) * (true + jitter) + a * first, drawn
    from the same numbers as without it; a first chunk's is the first-chunk latent either way."""
    from hallo_rt.train.demo import DIT_DEMO
    from hallo_rt.train.train_denoiser import ChunkExamples

    g = torch.Generator().manual_seed(0)
    C, h = DIT_DEMO.out_channels, DIT_DEMO.latent_height
    data = {"latents": [torch.randn(8, C, h, h, generator=g).half() for _ in range(3)],
            "reference": [torch.randn(C, h, h, generator=g).half() for _ in range(3)],
            "first": [torch.randn(C, h, h, generator=g).half() for _ in range(3)],
            "audio": [np.zeros(16000 * 2, np.float32)] * 3,
            "mouth": [torch.zeros(8, h, h) for _ in range(3)], "opening": [np.zeros(48, np.float32)] * 3}
    for first_share in (0.0, 1.0):
        plain, anchored = (ChunkExamples(data, motion_jitter=0.5, motion_anchor=a) for a in (0.0, 0.4))
        x0, concat, *_ = plain.draw(np.random.default_rng(5), 4, torch.Generator().manual_seed(1), first_share)
        y0, blended, *_ = anchored.draw(np.random.default_rng(5), 4, torch.Generator().manual_seed(1), first_share)
        assert torch.equal(x0, y0) and plain.picks == anchored.picks
        firsts = torch.stack([data["first"][c].float() for c, _ in plain.picks])
        if first_share:
            assert torch.equal(blended, concat) and torch.equal(blended[:, 0], firsts)
        else:
            torch.testing.assert_close(blended[:, 0], 0.6 * concat[:, 0] + 0.4 * firsts, rtol=0, atol=1e-6)
            assert not blended[:, 1:].any()


def test_the_reference_network_learns_in_training_and_keeps_no_graph_in_eval():
    """A training step's loss reaches the reference network (it was frozen by a no_grad before), and an
    eval-mode network, as inference loads it, returns a bank without a graph."""
    from hallo_rt.train.demo import DIT_DEMO
    from hallo_rt.train.train_denoiser import DemoAvatar, predict_v

    model = DemoAvatar(0)
    C, h = DIT_DEMO.out_channels, DIT_DEMO.latent_height
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(1, 2, C, h, h, generator=g), torch.randn(1, 1, C, h, h, generator=g)
    audio = torch.randn(1, 8, DIT_DEMO.audio_window, DIT_DEMO.audio_layers, DIT_DEMO.audio_dim, generator=g)
    v = predict_v(model, x, torch.zeros_like(x), ref, audio, torch.tensor([500]),
                  torch.zeros(1, DIT_DEMO.text_len, DIT_DEMO.text_dim), torch.zeros(1, DIT_DEMO.face_embed_dim))
    v.pow(2).mean().backward()
    grads = [p.grad for p in model.reference_net.parameters() if p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)
    model.reference_net.eval()
    assert not model.reference_net(ref).requires_grad


def _denoiser_folder(folder, model, settings):
    folder.mkdir()
    torch.save({"step": 1, "settings": settings, "modules": {"model": model.state_dict()}}, folder / loop.CHECKPOINT)
    (folder / loop.SETTINGS).write_text(json.dumps({"settings": settings}))
    return folder


def _fake_clips(folder, count, seconds=1.6, size=128):
    """clip_cache-format npz files of random frames (what the stages read: frames, reference, audio, boxes)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = int(seconds * 25)
    for i in range(count):
        corner = rng.integers(20, 80, (frames, 2))
        np.savez(folder / f"clip_{i:05d}.npz", frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                 reference=rng.integers(0, 256, (size, size, 3), dtype=np.uint8), audio=_speechy(seconds, i),
                 boxes=np.concatenate([corner, corner + 20], axis=1), opening=np.zeros(frames, np.float32))
    return sorted(folder.glob("clip_*.npz"))


@pytest.mark.slow
def test_denoised_pairs_are_the_models_chunks_on_anchored_true_motion_beside_the_true_frames(tmp_path):
    from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample
    from hallo_rt.train.demo import CONTEXT_FRAMES, DIT_DEMO
    from hallo_rt.train.denoised_pairs import denoised_pairs
    from hallo_rt.train.train_denoiser import ChunkExamples, DemoAvatar

    model = DemoAvatar(4).eval()
    folder = _denoiser_folder(tmp_path / "round", model, {"steps": 1, "student_steps": 1, "motion_anchor": 0.4})
    files = _fake_clips(tmp_path / "clips", 2)
    g = torch.Generator().manual_seed(0)
    C, h = DIT_DEMO.out_channels, DIT_DEMO.latent_height
    data = {"latents": [torch.randn(10, C, h, h, generator=g).half() for _ in range(2)],
            "reference": [torch.randn(C, h, h, generator=g).half() for _ in range(2)],
            "first": [torch.randn(C, h, h, generator=g).half() for _ in range(2)],
            "audio": [np.load(f)["audio"] for f in files], "scaling_factor": 4.0}
    pairs = denoised_pairs(folder, data, files, count=5, seed=1, batch=5)
    assert pairs["latents"].shape == (5, C, 2, h, h) and pairs["frames"].shape == (5, 8, 128, 128, 3)
    blank = ChunkExamples({"latents": []})
    noise = torch.randn((5, 2, C, h, h), generator=torch.Generator().manual_seed(1 * 7919 + 23))
    for b, (c, j) in enumerate(pairs["picks"].tolist()):
        clip = np.load(files[c])
        assert np.array_equal(pairs["frames"][b].numpy(), clip["frames"][4 * j:4 * j + 8])
        assert np.array_equal(pairs["boxes"][b].numpy(), clip["boxes"][4 * j:4 * j + 8])
        first = data["first"][c].float()
        concat = torch.zeros(1, 2, C, h, h)
        concat[0, 0] = first if j == 0 else 0.6 * data["latents"][c][j - 1].float() + 0.4 * first
        with torch.no_grad():
            features = chunk_features(model.audio, [np.pad(data["audio"][c], (0, 16000))], [4 * j], 8,
                                      context=CONTEXT_FRAMES)
            cond = Conditioning(concat, blank.text, audio=features, face=blank.face,
                                ref_bank=model.reference_net(data["reference"][c].float()[None, None]))
            drawn = sample(model.dit, cond, SamplerConfig(kind="ddim", steps=1, cfg_scale=1.0), noise=noise[b][None])
        expected = (drawn[0] / 4.0).permute(1, 0, 2, 3)
        torch.testing.assert_close(pairs["latents"][b].float(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_decoder_fine_tuning_on_denoised_pairs_keeps_the_encoder_and_reuses_its_pairs(tmp_path):
    from hallo_rt.train.train_denoiser import DemoAvatar

    _vae_stage(tmp_path / "base", "--steps", "1")
    _fake_clips(tmp_path / "clips", 2)
    folder = _denoiser_folder(tmp_path / "teacher", DemoAvatar(2), {"steps": 1})
    options = ["--init", str(tmp_path / "base"), "--decoder-only", "--on-denoiser", str(folder), "--latents",
               str(tmp_path / "latents"), "--clips", str(tmp_path / "clips"), "--clip-count", "2", "--pairs", "3"]
    tuned = _vae_stage(tmp_path / "tuned", "--steps", "2", *options)
    assert (tmp_path / "latents" / "encoded.pt").is_file()  # the clips were encoded where --latents says
    pairs = torch.load(tmp_path / "tuned" / "denoised_pairs.pt", weights_only=False)
    assert pairs["pairs"]["latents"].shape[0] == 3
    assert tuned["settings"]["on_denoiser"] == str(folder) and tuned["settings"]["pairs"] == 3
    losses = loop.read_losses(tmp_path / "tuned")
    assert all(math.isfinite(row["pair_l1"]) for row in losses)
    base = torch.load(tmp_path / "base" / loop.CHECKPOINT, weights_only=False)["modules"]["vae"]
    encoder = [k for k in base if k.startswith("encoder.")]
    assert all(torch.equal(base[k], tuned["modules"]["vae"][k]) for k in encoder)
    # resumed to more steps, the cached pairs are used (drawn again they would be identical, but slow)
    mtime = (tmp_path / "tuned" / "denoised_pairs.pt").stat().st_mtime_ns
    _vae_stage(tmp_path / "tuned", "--steps", "3", *options)
    assert (tmp_path / "tuned" / "denoised_pairs.pt").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit):
        _vae_stage(tmp_path / "bad", "--on-denoiser", str(folder))
