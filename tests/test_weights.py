"""Checkpoint loading: format detection, conversion round trips, strictness, safety, memory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_factory import diffusers_to_sat_keys, write_malicious_pickle, write_sat_checkpoint
from helpers import SMALL, random_inputs, small_config

from hallo_rt.engine import HalloDiT, WeightsError, convert, load_dit, load_reference_net
from hallo_rt.engine.weights import detect_format, sat
from hallo_rt.engine.weights.common import load_pickle

REPO = Path(__file__).resolve().parents[1]


def outputs(dit, seed=11, **cond):
    latents, t, text, audio, face = random_inputs(dit.config, batch=2, seed=seed)
    kwargs = {}
    if dit.config.audio_cross_attention:
        kwargs.update(audio=audio, face=face)
    with torch.no_grad():
        return dit(latents, t, text, **kwargs, **cond)


def test_detect_format(checkpoints, tmp_path):
    assert detect_format("tiny") == "preset"
    assert detect_format(checkpoints.diffusers_dir) == "diffusers"
    assert detect_format(checkpoints.sat_hallo3_dir) == "sat"
    assert detect_format(checkpoints.sat_hallo3_dir / "1") == "sat"
    assert detect_format(checkpoints.sat_hallo3_dir / "1" / "mp_rank_00_model_states.pt") == "sat"
    with pytest.raises(WeightsError, match="neither a preset"):
        detect_format(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="unknown checkpoint format"):
        detect_format(tmp_path / "junk")


def test_convert_hallo3_round_trip_is_exact(checkpoints, tmp_path):
    cfg = small_config(hallo3=True)
    out = convert(checkpoints.sat_hallo3_dir, tmp_path / "engine", config=cfg)
    manifest = json.loads((out / "hallo_rt.json").read_text())
    assert manifest["format_version"] == 1 and manifest["source"].startswith("sat:")
    assert (out / "reference_net.safetensors").is_file() and len(manifest["dit_digest"]) == 64
    original, converted = load_dit(checkpoints.sat_hallo3_dir, config=cfg), load_dit(out)
    assert converted.config == cfg
    ref_a = load_reference_net(checkpoints.sat_hallo3_dir, config=cfg)
    ref_b = load_reference_net(out)
    ref_latent = torch.randn(1, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width)
    for x, y in ((original, converted), (ref_a, ref_b)):  # the weights survive the trip bit for bit
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)
    # Outputs agree to rounding: BLAS may take another path for differently aligned buffers (mmap vs file).
    bank = ref_a(ref_latent)
    assert (bank - ref_b(ref_latent)).abs().max() < 1e-5
    assert (outputs(original, ref_bank=bank) - outputs(converted, ref_bank=bank)).abs().max() < 1e-5


def test_convert_diffusers_and_dtype(checkpoints, tmp_path):
    out = convert(checkpoints.diffusers_sharded_dir, tmp_path / "bf16", dtype="bf16")
    dit = load_dit(out)
    assert dit.dtype == torch.float32  # load_dit casts to the dtype asked for ...
    raw = load_dit(out, dtype=torch.bfloat16)
    fp32 = load_dit(checkpoints.diffusers_dir, dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), fp32.state_dict().values()))
    with pytest.raises(WeightsError, match="no reference network"):
        load_reference_net(out)


def test_convert_cli(checkpoints, tmp_path):
    exe = Path(sys.executable).parent / "hallo-rt"
    result = subprocess.run([str(exe), "convert", str(checkpoints.diffusers_dir), "--out", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "c" / "dit.safetensors").is_file()
    bad = subprocess.run([str(exe), "convert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "neither a preset" in bad.stderr and not (tmp_path / "d").exists()


def test_infer_config_from_shapes_with_hallo3_geometry(tmp_path):
    """SAT stores no config: widths come from shapes, the text length from the positional embedding."""
    from helpers import random_diffusers_model

    state = diffusers_to_sat_keys({k: v.float() for k, v in random_diffusers_model(0).state_dict().items()})
    D = SMALL["heads"] * SMALL["head_dim"]
    state["model.diffusion_model.mixins.pos_embed.pos_embedding"] = torch.zeros(1, 226 + 13 * 1350, D)
    write_sat_checkpoint(tmp_path / "geo", state)
    dit = load_dit(tmp_path / "geo", device="cpu")
    cfg = dit.config
    assert (cfg.text_len, cfg.latent_frames, cfg.latent_height, cfg.latent_width) == (226, 13, 60, 90)
    assert (cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (2, 2, 32, 256)
    assert (cfg.text_dim, cfg.time_embed_dim, cfg.in_channels, cfg.out_channels) == (48, 32, 8, 4)
    assert (cfg.norm_eps, cfg.qk_norm_eps, cfg.out_norm_eps) == (1e-5, 1e-6, 1e-6)  # SAT's
    assert not cfg.face_cross_attention and not cfg.audio_cross_attention


def test_hallo3_config_inferred_from_shapes(checkpoints):
    state = sat.to_engine_keys(checkpoints.hallo3_module, sat.DENOISER_PREFIX)
    geometry = dataclasses.replace(small_config(True), audio_window=5, audio_layers=3, audio_dim=16)
    inferred = sat.infer_config(state, base=geometry, name="small-test")
    assert inferred == small_config(hallo3=True)
    with pytest.raises(WeightsError, match="fewer than the .* video tokens"):
        load_dit(checkpoints.sat_hallo3_dir)  # Hallo3 geometry does not fit the small embedding


def _module_with(checkpoints, edit) -> dict:
    module = dict(checkpoints.hallo3_module)
    edit(module)
    return module


def test_strict_errors_list_every_problem(checkpoints, tmp_path):
    p = "model.diffusion_model."

    def edit(m):
        del m[p + "transformer.layers.1.mlp.dense_h_to_4h.bias"]
        m[p + "transformer.layers.0.attention.surprise.weight"] = torch.zeros(3)
        m[p + "mixins.final_layer.linear.weight"] = torch.zeros(5, 64)
        m["something_else.weight"] = torch.zeros(1)

    write_sat_checkpoint(tmp_path / "bad", _module_with(checkpoints, edit))
    with pytest.raises(WeightsError) as err:
        load_dit(tmp_path / "bad", config=small_config(hallo3=True))
    message = str(err.value)
    assert "missing keys (1): blocks.1.mlp.fc1.bias" in message
    assert "unmapped:transformer.layers.0.attention.surprise.weight" in message
    assert "unmapped:something_else.weight" in message
    assert "final_layer.linear.weight: checkpoint (5, 64) vs model (16, 64)" in message


def test_non_tensor_values_and_non_dict_are_refused(checkpoints, tmp_path):
    def edit(m):
        m["model.diffusion_model.transformer.final_layernorm.weight"] = [1.0, 2.0]

    write_sat_checkpoint(tmp_path / "list", _module_with(checkpoints, edit))
    with pytest.raises(WeightsError, match="not tensors"):
        load_dit(tmp_path / "list", config=small_config(hallo3=True))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="expected a dict"):
        load_dit(tmp_path / "list.pt")


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    path = tmp_path / "evil.pt"
    write_malicious_pickle(path)
    with pytest.raises(WeightsError, match="refused to unpickle"):
        load_dit(path)
    assert not list(tmp_path.glob("*.pwned"))


def test_corrupt_and_truncated_files(checkpoints, tmp_path):
    for seed in range(20):  # arbitrary bytes fail in arbitrary places inside the unpickler
        (tmp_path / "noise.pt").write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(WeightsError, match="not a readable torch checkpoint|refused"):
            load_dit(tmp_path / "noise.pt")
    good = (checkpoints.sat_plain_dir / "1" / "mp_rank_00_model_states.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        load_dit(tmp_path / "cut.pt")
    bad_st = tmp_path / "st"
    bad_st.mkdir()
    (bad_st / "hallo_rt.json").write_text(json.dumps({"format_version": 1, "dit": small_config(False).to_dict()}))
    (bad_st / "dit.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_dit(bad_st)


def test_latest_pointing_nowhere(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "latest").write_text("7")
    with pytest.raises(WeightsError, match="names iteration '7'"):
        load_dit(tmp_path / "ck")


def test_deepspeed_extras_load(checkpoints, tmp_path):
    """Real DeepSpeed checkpoints also carry RNG states (numpy arrays) and sometimes saved arguments."""
    extras = {"np_rng_state": np.random.RandomState(0).get_state(), "torch_rng_state": torch.get_rng_state(),
              "args": argparse.Namespace(lr=1e-4, layers=42), "random_rng_state": (3, tuple(range(5)), None)}
    write_sat_checkpoint(tmp_path / "ds", dict(checkpoints.hallo3_module), extra_top_level=extras)
    payload = load_pickle(tmp_path / "ds" / "1" / "mp_rank_00_model_states.pt")
    assert payload["args"].layers == 42
    dit = load_dit(tmp_path / "ds", config=small_config(hallo3=True))
    reference = load_dit(checkpoints.sat_hallo3_dir, config=small_config(True)).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in dit.state_dict().items())


def test_hallo3_denoiser_checkpoint_without_reference_tree(checkpoints, tmp_path):
    module = {k: v for k, v in checkpoints.hallo3_module.items() if not k.startswith("ref_model.")}
    write_sat_checkpoint(tmp_path / "noref", module)
    with pytest.raises(WeightsError, match="without 'ref_model"):
        load_reference_net(tmp_path / "noref", config=small_config(True))


def test_bad_dtype_and_unknown_preset():
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_dit("tiny", dtype="int8")
    with pytest.raises(WeightsError, match="neither a preset .*tiny"):
        load_dit("tinyy")


@pytest.mark.parametrize("kind", ["sat", "engine"])
def test_loading_does_not_hold_two_copies(tmp_path, kind):
    """Peak RSS while loading a ~120 MB checkpoint stays far below two copies of it."""
    from safetensors.torch import save_file

    cfg = dataclasses.replace(small_config(False), num_layers=1, num_heads=8, head_dim=64, mlp_dim=2048,
                              latent_frames=13, latent_height=120, latent_width=120, text_len=0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HalloDiT(cfg).state_dict().items()}
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    nbytes = sum(v.numel() * 4 for v in state.values())
    assert nbytes > 100e6
    if kind == "sat":
        module = {_to_sat(key): value for key, value in state.items()}
        write_sat_checkpoint(tmp_path / "big", module)
        path = tmp_path / "big"
    else:
        path = tmp_path / "big"
        path.mkdir()
        save_file(state, str(path / "dit.safetensors"))
        (path / "hallo_rt.json").write_text(json.dumps({"format_version": 1, "dit": cfg.to_dict()}))
    del state
    script = textwrap.dedent(f"""
        import json, resource, torch
        from hallo_rt.engine import load_dit, DiTConfig
        cfg = DiTConfig.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dit = load_dit({str(path)!r}, config=cfg)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    assert growth < 1.4 * nbytes, f"peak RSS grew {growth / 1e6:.0f} MB for a {nbytes / 1e6:.0f} MB checkpoint"


def _to_sat(key: str) -> str:
    """hallo-rt key -> SAT key (the inverse of the loader's renames), for writing test checkpoints."""
    from hallo_rt.engine.weights.sat import _FIXED_RULES, _LAYER_RULES, _MIXIN_TARGET

    prefix = "model.diffusion_model."
    if key == "pos_embedding":
        return prefix + "mixins.pos_embed.pos_embedding"
    module, _, kind = key.rpartition(".")
    for sat_name, ours in _FIXED_RULES.items():
        if module == ours:
            return f"{prefix}{sat_name}.{kind}"
    _, layer, body = module.split(".", 2)
    for group, ours in _MIXIN_TARGET.items():
        if body == ours:
            return f"{prefix}mixins.adaln_layer.{group}.{layer}.{'1.' if group == 'adaLN_modulations' else ''}{kind}"
    for sat_name, ours in _LAYER_RULES:
        if body == ours:
            return f"{prefix}transformer.layers.{layer}.{sat_name}.{kind}"
    raise KeyError(key)
