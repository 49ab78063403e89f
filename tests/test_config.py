"""Configs: the hallo3 preset is the released model, presets are frozen, hashes key caches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hallo_rt.engine import PRESETS, DiTConfig, HalloDiT, get_preset


def test_hallo3_preset_is_the_released_model():
    c = get_preset("hallo3")
    assert (c.num_layers, c.hidden_dim, c.num_heads, c.head_dim, c.mlp_dim) == (42, 3072, 48, 64, 12288)
    assert (c.time_embed_dim, c.text_len, c.text_dim, c.patch_size) == (512, 226, 4096, 2)
    assert (c.in_channels, c.out_channels, c.latent_frames, c.video_frames) == (32, 16, 13, 49)
    assert (c.latent_height * 8, c.latent_width * 8, c.tokens_per_frame) == (480, 720, 1350)
    assert c.rope_dims == (16, 24, 24) and c.learned_pos_embed
    assert c.text_len + c.latent_frames * c.tokens_per_frame == 17776
    assert (c.face_embed_dim, c.face_tokens, c.face_token_dim) == (512, 4, 1024)
    assert (c.audio_layers, c.audio_dim, c.audio_window, c.audio_tokens, c.audio_token_dim) == (12, 768, 5, 32, 768)
    with torch.device("meta"):
        model = HalloDiT(c)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embedding"] == (1, 17776, 3072)
    assert shapes["blocks.0.attn.qkv.weight"] == (9216, 3072)
    assert shapes["blocks.0.modulation.weight"] == (36864, 512)
    assert shapes["blocks.41.face_attn.key_value.weight"] == (6144, 1024)
    assert shapes["blocks.41.audio_attn.key_value.weight"] == (6144, 768)
    assert shapes["audio_proj.conv.weight"] == (24576, 24576, 2)
    assert shapes["audio_proj.proj1.weight"] == (512, 46080)
    assert shapes["patch_embed.proj.weight"] == (3072, 32, 2, 2)
    assert shapes["final_layer.linear.weight"] == (64, 3072)


def test_tiny_has_every_module_and_is_small():
    tiny = get_preset("tiny")
    assert tiny.face_cross_attention and tiny.audio_cross_attention and tiny.learned_pos_embed
    assert tiny.latent_height * 8 >= 128 and tiny.latent_width * 8 >= 128
    model = HalloDiT(tiny)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert {"face_proj.proj.weight", "audio_proj.conv.weight", "blocks.1.face_attn.query.weight"} <= set(model.state_dict())


def test_frozen_hash_and_round_trip():
    c = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_layers = 3  # type: ignore[misc]
    assert c.compute_hash() == DiTConfig.from_dict(c.to_dict()).compute_hash()
    assert DiTConfig.from_dict(c.to_dict()) == c
    assert c.compute_hash() != dataclasses.replace(c, norm_eps=1e-6).compute_hash()
    assert len({p.compute_hash() for p in PRESETS.values()}) == len(PRESETS)


@pytest.mark.parametrize("field,value,message", [
    ("head_dim", 12, "divisible by 8"),
    ("num_layers", 0, "num_layers must be positive"),
    ("latent_height", 15, "not divisible by patch_size"),
    ("text_len", -1, "text_len must be >= 0"),
])
def test_invalid_configs(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_preset("tiny"), **{field: value})


def test_unknown_fields_and_presets():
    with pytest.raises(ValueError, match="unknown DiTConfig fields: \\['bogus'\\]"):
        DiTConfig.from_dict({**get_preset("tiny").to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="known presets: cogvideox-5b-i2v, hallo3, tiny"):
        get_preset("hallo4")
