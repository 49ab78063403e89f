"""The denoiser against diffusers (plain CogVideoX) and against an independent SAT-literal reference
(tests/sat_reference.py) for the Hallo3 extras: face/audio cross-attention and the reference bank."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import random_inputs, small_config
from sat_reference import sat_forward, sat_reference_bank

from hallo_rt.engine import load_dit, load_reference_net
from hallo_rt.engine.rope import rope_table

PREFIX = "model.diffusion_model."
REF_PREFIX = "ref_model.diffusion_model."


def diffusers_output(model, latents, timesteps, text):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    F, H, W = latents.shape[1], latents.shape[3] // 2, latents.shape[4] // 2
    head_dim = model.config.attention_head_dim
    # Full-grid crop = integer positions, as SAT uses at 480x720.
    cos, sin = get_3d_rotary_pos_embed(head_dim, ((0, 0), (H, W)), (H, W), F)
    with torch.no_grad():
        return model(latents, text, timesteps, image_rotary_emb=(cos, sin), return_dict=False)[0]


@pytest.mark.parametrize("folder", ["diffusers_dir", "diffusers_sharded_dir"])
def test_matches_diffusers_fp32(checkpoints, folder):
    dit = load_dit(getattr(checkpoints, folder))
    assert dit.config.learned_pos_embed and not dit.config.face_cross_attention
    latents, t, text, _, _ = random_inputs(dit.config, batch=2, seed=3)
    expected = diffusers_output(checkpoints.diffusers_model, latents, t, text)
    with torch.no_grad():
        got = dit(latents, t, text)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    assert expected.abs().max() > 1.0  # the comparison is not between two near-zero tensors


def test_rope_table_matches_diffusers():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cos, sin = rope_table((16, 24, 24), 13, 30, 45)
    ref_cos, ref_sin = get_3d_rotary_pos_embed(64, ((0, 0), (30, 45)), (30, 45), 13)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_sat_plain_equals_diffusers_weights(checkpoints):
    """The same weights as a SAT checkpoint and as a diffusers folder give the same model. The only numeric
    difference between the formats is the output LayerNorm epsilon (SAT 1e-6, diffusers 1e-5)."""
    sat_dit = load_dit(checkpoints.sat_plain_dir, config=small_config(hallo3=False))
    diff_dit = load_dit(checkpoints.diffusers_dir)
    sat_state, diff_state = sat_dit.state_dict(), diff_dit.state_dict()
    assert sat_state.keys() == diff_state.keys()
    assert all(torch.equal(sat_state[k], diff_state[k]) for k in sat_state)
    assert sat_dit.config.out_norm_eps == 1e-6 and diff_dit.config.out_norm_eps == 1e-5
    latents, t, text, _, _ = random_inputs(sat_dit.config, batch=2, seed=4)
    with torch.no_grad():
        a, b = sat_dit(latents, t, text), diff_dit(latents, t, text)
    assert (a - b).abs().max() < 1e-3  # eps only
    same_eps = load_dit(checkpoints.sat_plain_dir, config=dataclasses.replace(small_config(False), out_norm_eps=1e-5))
    with torch.no_grad():
        assert torch.equal(same_eps(latents, t, text), b)


def test_sat_plain_matches_sat_reference(checkpoints):
    dit = load_dit(checkpoints.sat_plain_dir, config=small_config(hallo3=False))
    latents, t, text, _, _ = random_inputs(dit.config, batch=2, seed=5)
    module = {k: v for k, v in checkpoints.hallo3_module.items()}
    expected = sat_forward(module, PREFIX, latents, t, text, num_heads=2)
    with torch.no_grad():
        got = dit(latents, t, text)
    assert (got - expected).abs().max() < 1e-4


def test_hallo3_sat_matches_sat_reference(checkpoints):
    """Face and audio cross-attention and the reference bank, against the SAT-literal reference."""
    cfg = small_config(hallo3=True)
    dit = load_dit(checkpoints.sat_hallo3_dir, config=cfg)
    reference = load_reference_net(checkpoints.sat_hallo3_dir, config=cfg)
    module = checkpoints.hallo3_module
    g = torch.Generator().manual_seed(6)
    ref_latent = torch.randn(1, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width, generator=g)

    bank = reference(ref_latent)
    expected_bank = sat_reference_bank(module, REF_PREFIX, ref_latent, num_heads=2, text_len=cfg.text_len,
                                       text_dim=cfg.text_dim)
    assert bank.shape == (cfg.num_layers, 1, cfg.tokens_per_frame, cfg.hidden_dim)
    assert (bank - torch.stack(expected_bank)).abs().max() < 1e-5

    latents, t, text, audio, face = random_inputs(cfg, batch=2, seed=7)
    expected = sat_forward(module, PREFIX, latents, t, text, num_heads=2, audio=audio, face=face,
                           bank=[b.expand(2, -1, -1) for b in expected_bank])
    with torch.no_grad():
        got = dit(latents, t, text, audio=audio, face=face, ref_bank=bank)
    assert (got - expected).abs().max() < 1e-4
    # Each conditioning input matters: drop one and the output moves well beyond the tolerance.
    with torch.no_grad():
        for kwargs in ({"audio": audio, "face": face}, {"audio": audio, "ref_bank": bank},
                       {"face": face, "ref_bank": bank}):
            assert (dit(latents, t, text, **kwargs) - got).abs().max() > 1e-2


def test_hallo3_single_frame_continuation_audio(checkpoints):
    """A 1-latent-frame chunk with 4 continuation audio frames (even count: convolved, no passthrough)."""
    cfg = small_config(hallo3=True)
    dit = load_dit(checkpoints.sat_hallo3_dir, config=cfg)
    latents, t, text, _, face = random_inputs(cfg, batch=1, seed=8, frames=1)
    audio = torch.randn(1, 4, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, generator=torch.Generator().manual_seed(9))
    expected = sat_forward(checkpoints.hallo3_module, PREFIX, latents, t[:1], text, num_heads=2, audio=audio, face=face)
    with torch.no_grad():
        got = dit(latents, t[:1], text, audio=audio, face=face)
    assert got.shape == (1, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width)
    assert (got - expected).abs().max() < 1e-4


def test_reference_net_from_plain_cogvideox_is_its_backbone(checkpoints):
    """Hallo3 stage 1 initialises the reference network from the plain CogVideoX checkpoint."""
    cfg = small_config(hallo3=False)
    reference = load_reference_net(checkpoints.sat_plain_dir, config=cfg)
    ref_latent = torch.randn(2, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width)
    expected = sat_reference_bank(checkpoints.hallo3_module, PREFIX, ref_latent, num_heads=2,
                                  text_len=cfg.text_len, text_dim=cfg.text_dim)
    assert (reference(ref_latent) - torch.stack(expected)).abs().max() < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_half_precision_close_to_fp32(checkpoints, dtype, tol):
    cfg = small_config(hallo3=True)
    full = load_dit(checkpoints.sat_hallo3_dir, config=cfg)
    half = load_dit(checkpoints.sat_hallo3_dir, config=cfg, dtype=dtype)
    assert half.dtype == dtype
    latents, t, text, audio, face = random_inputs(cfg, batch=1, seed=10)
    with torch.no_grad():
        ref = full(latents, t[:1], text, audio=audio, face=face)
        got = half(latents.to(dtype), t[:1], text.to(dtype), audio=audio.to(dtype), face=face.to(dtype))
    rel = (got.float() - ref).norm() / ref.norm()
    assert rel < tol


def test_tiny_preset_is_deterministic_and_seed_dependent():
    a, b, c = load_dit("tiny"), load_dit("tiny"), load_dit("tiny", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
