"""diffusers `CogVideoXTransformer3DModel` folders (config.json + safetensors, sharded or not).

The mapping is the inverse of diffusers' `scripts/convert_cogvideox_to_diffusers.py` (spec section 7.3).
diffusers has no Hallo3 modules, so these weights give the backbone only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import DiTConfig
from .common import WeightsError, load_safetensors

CLASS_NAME = "CogVideoXTransformer3DModel"

_BLOCK_RENAMES = {
    "norm1.norm": "norm1",
    "norm2.norm": "norm2",
    "attn1.norm_q": "attn.norm_q",
    "attn1.norm_k": "attn.norm_k",
    "attn1.to_out.0": "attn.out",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_TOP_RENAMES = {
    "patch_embed.proj": "patch_embed.proj",
    "patch_embed.text_proj": "patch_embed.text_proj",
    "time_embedding.linear_1": "time_embed.linear_1",
    "time_embedding.linear_2": "time_embed.linear_2",
    "norm_final": "norm_final",
    "norm_out.norm": "final_layer.norm",
    "norm_out.linear": "final_layer.modulation",
    "proj_out": "final_layer.linear",
}
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")


def find_folder(path: Path, class_name: str = CLASS_NAME, subfolder: str = "transformer") -> Path | None:
    """The model folder: `path` itself, or `path/<subfolder>` of a pipeline folder, whose config.json
    names `class_name`."""
    for folder in (path, path / subfolder):
        config = folder / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("_class_name") == class_name:
                    return folder
            except json.JSONDecodeError:
                return None
    return None


def read_config(folder: Path) -> DiTConfig:
    raw = json.loads((folder / "config.json").read_text())
    unsupported = {
        "patch_size_t": raw.get("patch_size_t"),  # CogVideoX 1.5 temporal patching
        "ofs_embed_dim": raw.get("ofs_embed_dim"),  # CogVideoX 1.5 I2V
    }
    for key, value in unsupported.items():
        if value:
            raise WeightsError(f"{folder}: {key}={value} (CogVideoX 1.5) is not supported; hallo-rt implements 1.0")
    if not raw.get("use_rotary_positional_embeddings", False):
        raise WeightsError(f"{folder}: models without rotary embeddings (sincos CogVideoX-2B) are not supported")
    checks = {"activation_fn": "gelu-approximate", "timestep_activation_fn": "silu", "flip_sin_to_cos": True,
              "freq_shift": 0, "attention_bias": True, "norm_elementwise_affine": True}
    for key, want in checks.items():
        if raw.get(key, want) != want:
            raise WeightsError(f"{folder}: {key}={raw[key]!r} is not supported (expected {want!r})")
    frames = (raw.get("sample_frames", 49) - 1) // raw.get("temporal_compression_ratio", 4) + 1
    norm_eps = raw.get("norm_eps", 1e-5)
    return DiTConfig(
        name=f"diffusers:{folder.name}",
        num_layers=raw.get("num_layers", 30),
        num_heads=raw.get("num_attention_heads", 30),
        head_dim=raw.get("attention_head_dim", 64),
        mlp_dim=4 * raw.get("num_attention_heads", 30) * raw.get("attention_head_dim", 64),
        time_embed_dim=raw.get("time_embed_dim", 512),
        text_dim=raw.get("text_embed_dim", 4096),
        text_len=raw.get("max_text_seq_length", 226),
        patch_size=raw.get("patch_size", 2),
        in_channels=raw.get("in_channels", 16),
        out_channels=raw.get("out_channels") or raw.get("in_channels", 16),
        latent_frames=frames,
        latent_height=raw.get("sample_height", 60),
        latent_width=raw.get("sample_width", 90),
        learned_pos_embed=bool(raw.get("use_learned_positional_embeddings", False)),
        norm_eps=norm_eps,
        qk_norm_eps=1e-6,  # diffusers hard-codes 1e-6 for the attention's QK norms
        out_norm_eps=norm_eps,  # diffusers' AdaLayerNorm output norm takes the config's norm_eps
        face_cross_attention=False,
        audio_cross_attention=False,
    )


def weight_files(folder: Path) -> list[Path]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise WeightsError(f"{folder}: shards listed in {index.name} are missing: {missing}")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder}: no .safetensors weights (a .bin-only folder: re-save with safetensors)")
    return files


def to_engine_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> hallo-rt keys. Q/K/V are concatenated (rows Q|K|V); the two 6-chunk adaLN linears
    become one 12-chunk linear in SAT order [msa, mlp, text msa, text mlp] x [shift, scale, gate]."""
    state: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key == "patch_embed.pos_embedding":
            state["pos_embedding"] = tensor
            continue
        match = _BLOCK_KEY.match(key)
        if match:
            layer, body, kind = match.groups()
            if body in _BLOCK_RENAMES:
                state[f"blocks.{layer}.{_BLOCK_RENAMES[body]}.{kind}"] = tensor
            elif body in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "norm1.linear", "norm2.linear"):
                pending.setdefault((layer, kind), {})[body] = tensor
            else:
                state[f"unmapped:{key}"] = tensor
            continue
        module, _, kind = key.rpartition(".")
        state[f"{_TOP_RENAMES[module]}.{kind}" if module in _TOP_RENAMES else f"unmapped:{key}"] = tensor
    for (layer, kind), parts in pending.items():
        qkv = [parts.get(f"attn1.to_{n}") for n in "qkv"]
        if all(t is not None for t in qkv):
            state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
        mods = [parts.get("norm1.linear"), parts.get("norm2.linear")]
        if all(t is not None for t in mods):
            msa, mlp = (m.chunk(2, dim=0) for m in mods)  # each: (video shift/scale/gate, text ...)
            state[f"blocks.{layer}.modulation.{kind}"] = torch.cat([msa[0], mlp[0], msa[1], mlp[1]], dim=0)
        leftovers = {"attn1.to_q", "attn1.to_k", "attn1.to_v"} if not all(t is not None for t in qkv) else set()
        leftovers |= {"norm1.linear", "norm2.linear"} if not all(t is not None for t in mods) else set()
        for body in leftovers & set(parts):
            state[f"unmapped:transformer_blocks.{layer}.{body}.{kind}"] = parts[body]
    return state


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    return to_engine_keys(load_safetensors(weight_files(folder)))
