"""Input validation of the denoiser (and the reference network): wrong inputs fail early with a sentence that
names the problem; optional inputs and batch-1 broadcasting are exact equivalences."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from hallo_rt.engine import InputError, load_dit, load_reference_net

B, FR = 2, 2


@pytest.fixture(scope="module")
def dit():
    return load_dit("tiny")


def _inputs(cfg, batch=B, frames=FR, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.latent_height, cfg.latent_width
    return dict(
        latents=torch.randn(batch, frames, cfg.in_channels, H, W, generator=g),
        timestep=torch.tensor([999, 499][:batch] + [249] * max(0, batch - 2)),
        text_embeds=torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g),
        audio=torch.randn(batch, 4 * frames - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, generator=g),
        face=torch.randn(batch, cfg.face_embed_dim, generator=g),
        ref_bank=torch.randn(cfg.num_layers, batch, cfg.tokens_per_frame, cfg.hidden_dim, generator=g),
    )


def _call(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


def _raises(model, pattern, **changes):
    inputs = _inputs(model.config)
    inputs.update(changes)
    with pytest.raises(InputError, match=pattern) as info:
        _call(model, **inputs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_valid_inputs_run(dit):
    out = _call(dit, **_inputs(dit.config))
    cfg = dit.config
    assert out.shape == (B, FR, cfg.out_channels, cfg.latent_height, cfg.latent_width)
    assert torch.isfinite(out).all()


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


# ---- latents ------------------------------------------------------------------------------------------


def test_latents_wrong_rank(dit):
    x = torch.randn(B, dit.config.in_channels, 16, 16)
    _raises(dit, r"latents must have 5 dimensions, got shape \(2, 32, 16, 16\)", latents=x)


def test_latents_not_a_tensor(dit):
    _raises(dit, r"latents must be a torch\.Tensor, got list", latents=[[0.0]])


def test_latents_wrong_channels(dit):
    x = torch.randn(B, FR, 16, 16, 16)
    msg = _raises(dit, r"latents have 16 channels, expected 32", latents=x)
    assert "(2, 2, 16, 16, 16)" in msg


def test_latents_float64(dit):
    x = torch.randn(B, FR, 32, 16, 16, dtype=torch.float64)
    _raises(dit, r"latents has dtype torch\.float64 but the model runs in torch\.float32", latents=x)


def test_latents_spatial_size_differs_from_pos_embed(dit):
    x = torch.randn(B, FR, 32, 8, 12)
    msg = _raises(dit, r"latent size 8x12 differs from the 16x16 the learned positional embedding", latents=x)
    assert "128x128 px" in msg


def test_latents_not_divisible_by_patch(dit):
    _raises(dit, r"latent size 15x16 is not divisible by the patch size 2", latents=torch.randn(B, FR, 32, 15, 16))


def test_too_many_latent_frames(dit):
    F = dit.config.latent_frames + 1
    _raises(dit, rf"{F} latent frames exceed the learned positional embedding's {F - 1}",
            latents=torch.randn(B, F, 32, 16, 16), audio=None)


# ---- timestep -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (2, 1)])
def test_timestep_wrong_shape(dit, shape):
    t = torch.full(shape, 999)
    _raises(dit, re.escape(f"timestep must be a scalar or have shape (2,), got shape {tuple(shape)}"), timestep=t)


def test_timestep_scalar_equals_vector(dit):
    inputs = _inputs(dit.config)
    a = _call(dit, **{**inputs, "timestep": 500})
    b = _call(dit, **{**inputs, "timestep": torch.tensor([500, 500])})
    c = _call(dit, **{**inputs, "timestep": torch.tensor(500.0)})
    assert torch.equal(a, b)
    assert torch.equal(a, c)


# ---- text ---------------------------------------------------------------------------------------------


def test_text_wrong_width(dit):
    _raises(dit, r"text_embeds width is 32, expected 64", text_embeds=torch.randn(B, dit.config.text_len, 32))


def test_text_wrong_token_count(dit):
    _raises(dit, r"text_embeds have 10 tokens; the learned positional embedding expects exactly 16",
            text_embeds=torch.randn(B, 10, dit.config.text_dim))


# ---- audio --------------------------------------------------------------------------------------------


def test_audio_wrong_trailing_dims(dit):
    cfg = dit.config
    bad = torch.randn(B, 4 * FR - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim // 2)
    _raises(dit, r"audio must be \(B, T_video, 5, 4, 32\), got \(2, 5, 5, 4, 16\)", audio=bad)


@pytest.mark.parametrize("frames", [4, 9, 1])
def test_audio_frame_count_does_not_compress_to_latent_frames(dit, frames):
    cfg = dit.config
    bad = torch.randn(B, frames, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
    msg = _raises(dit, rf"audio has {frames} video frames, which compress to \d+ latent frames, not {FR}", audio=bad)
    assert f"give {4 * FR - 3} frames for a clip starting at frame 0 or {4 * FR} for a continuation" in msg


def test_audio_continuation_length_accepted(dit):
    cfg = dit.config
    audio = torch.randn(B, 4 * FR, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
    out = _call(dit, **{**_inputs(cfg), "audio": audio})
    assert torch.isfinite(out).all()


def test_audio_none_equals_zero_features(dit):
    cfg = dit.config
    inputs = _inputs(cfg)
    zeros = torch.zeros(B, 4 * FR - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
    a = _call(dit, **{**inputs, "audio": None})
    b = _call(dit, **{**inputs, "audio": zeros})
    assert torch.equal(a, b)
    assert (a - _call(dit, **inputs)).abs().max() > 1e-4  # audio does change the output


def test_audio_given_to_model_without_audio_attention(dit):
    cfg = dataclasses.replace(dit.config, audio_cross_attention=False)
    model = load_dit("tiny", config=cfg)
    assert model.blocks[0].audio_attn is None
    _raises(model, r"audio was given but this model has no audio cross-attention")
    inputs = _inputs(cfg)
    inputs["audio"] = None
    assert torch.isfinite(_call(model, **inputs)).all()


# ---- face ---------------------------------------------------------------------------------------------


def test_face_wrong_width(dit):
    _raises(dit, r"face embedding width is 256, expected 512", face=torch.randn(B, 256))


def test_face_none_equals_zeros(dit):
    inputs = _inputs(dit.config)
    a = _call(dit, **{**inputs, "face": None})
    b = _call(dit, **{**inputs, "face": torch.zeros(B, 512)})
    assert torch.equal(a, b)
    assert (a - _call(dit, **inputs)).abs().max() > 1e-4  # the face does change the output


# ---- reference bank -----------------------------------------------------------------------------------


def test_ref_bank_wrong_layer_count(dit):
    cfg = dit.config
    bad = torch.randn(cfg.num_layers + 1, B, 64, cfg.hidden_dim)
    _raises(dit, r"ref_bank must be \(num_layers=2, B or 1, N_ref, 64\), got \(3, 2, 64, 64\)", ref_bank=bad)


def test_ref_bank_wrong_width(dit):
    cfg = dit.config
    _raises(dit, r"ref_bank must be \(num_layers=2", ref_bank=torch.randn(cfg.num_layers, B, 64, 32))


# ---- batch --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text_embeds", "audio", "face"])
def test_batch_mismatch(dit, name):
    bad = _inputs(dit.config, batch=3)[name]
    _raises(dit, rf"{name} has batch 3, expected 2 \(or 1 to broadcast\)", **{name: bad})


def test_ref_bank_batch_mismatch(dit):
    bad = _inputs(dit.config, batch=3)["ref_bank"]
    _raises(dit, r"ref_bank has batch 3, expected 2 or 1", ref_bank=bad)


def _single_and_repeated(inputs, name):
    if name == "ref_bank":
        single = inputs[name][:, :1]
        return single, single.repeat(1, B, 1, 1)
    single = inputs[name][:1]
    return single, single.repeat(B, *([1] * (single.ndim - 1)))


@pytest.mark.parametrize("name", ["text_embeds", "face", "ref_bank", "audio"])
def test_batch_one_broadcast_equals_repeated(dit, name):
    """Bit-exact: a batch-1 condition behaves like B explicit copies (the brief's contract)."""
    inputs = _inputs(dit.config)
    single, repeated = _single_and_repeated(inputs, name)
    a = _call(dit, **{**inputs, name: single})
    b = _call(dit, **{**inputs, name: repeated})
    assert torch.isfinite(a).all()
    assert (a - _call(dit, **inputs)).abs().max() > 1e-4  # batch 1 really replaced the second sample's input
    assert torch.equal(a, b)


def test_batch_one_broadcast_all_inputs_close(dit):
    inputs = _inputs(dit.config)
    names = ("text_embeds", "audio", "face", "ref_bank")
    pairs = {n: _single_and_repeated(inputs, n) for n in names}
    a = _call(dit, **{**inputs, **{n: p[0] for n, p in pairs.items()}})
    b = _call(dit, **{**inputs, **{n: p[1] for n, p in pairs.items()}})
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Batch 1 broadcast means both samples see the same conditions: with the same latents they agree.
    same = {**inputs, **{n: p[0] for n, p in pairs.items()}}
    same["latents"] = inputs["latents"][:1].expand(B, -1, -1, -1, -1)
    same["timestep"] = 700
    out = _call(dit, **same)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-5)


# ---- reference network --------------------------------------------------------------------------------


def test_reference_net_bad_rank():
    net = load_reference_net("tiny")
    with pytest.raises(ValueError, match=r"ref_latent must be \(B, F, 16, H, W\), got \(2, 16, 16, 16\)"):
        net(torch.randn(2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"ref_latent must be \(B, F, 16, H, W\), got \(2, 1, 32, 16, 16\)"):
        net(torch.randn(2, 1, 32, 16, 16))
    bank = net(torch.randn(2, 1, 16, 16, 16))
    cfg = net.config
    assert bank.shape == (cfg.num_layers, 2, cfg.tokens_per_frame, cfg.hidden_dim)
