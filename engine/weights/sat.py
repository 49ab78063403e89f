"""SAT/DeepSpeed checkpoints: the Hallo3 release and the plain CogVideoX-5B-I2V transformer.

Layout: `<dir>/latest` names an iteration, `<dir>/<iteration>/mp_rank_00_model_states.pt` is a torch pickle
`{"module": state_dict, ...}`. Keys: spec section 7.2 (`model.diffusion_model.*` for the denoiser,
`ref_model.diffusion_model.*` for the Hallo3 reference network).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from ..config import HALLO3, DiTConfig
from .common import WeightsError, load_pickle

DENOISER_PREFIX = "model.diffusion_model."
REFERENCE_PREFIX = "ref_model.diffusion_model."
# Other parts of a whole-engine SAT state dict; hallo-rt loads them elsewhere (VAE) or not at all (T5).
OTHER_ENGINE_PREFIXES = ("first_stage_model.", "conditioner.", "denoiser.", "loss_fn.")
# SAT leftovers with no role in inference: RoPE tables (recomputed) and an unused position table.
IGNORED_SUFFIXES = ("mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos", "transformer.position_embeddings.weight")

_LAYER_RULES = [
    ("input_layernorm", "norm1"),
    ("attention.query_key_value", "attn.qkv"),
    ("attention.dense", "attn.out"),
    ("post_attention_layernorm", "norm2"),
    ("mlp.dense_h_to_4h", "mlp.fc1"),
    ("mlp.dense_4h_to_h", "mlp.fc2"),
    ("face_input_layernorm", "face_norm"),
    ("face_attn.query", "face_attn.query"),
    ("face_attn.key_value", "face_attn.key_value"),
    ("face_attn.dense", "face_attn.out"),
    ("audio_input_layernorm", "audio_norm"),
    ("audio_attn.query", "audio_attn.query"),
    ("audio_attn.key_value", "audio_attn.key_value"),
    ("audio_attn.dense", "audio_attn.out"),
]
_FIXED_RULES = {
    "mixins.patch_embed.proj": "patch_embed.proj",
    "mixins.patch_embed.text_proj": "patch_embed.text_proj",
    "time_embed.0": "time_embed.linear_1",
    "time_embed.2": "time_embed.linear_2",
    "transformer.final_layernorm": "norm_final",
    "mixins.final_layer.norm_final": "final_layer.norm",
    "mixins.final_layer.linear": "final_layer.linear",
    "mixins.final_layer.adaLN_modulation.1": "final_layer.modulation",
    "transformer.audio_proj.proj1": "audio_proj.proj1",
    "transformer.audio_proj.proj2": "audio_proj.proj2",
    "transformer.audio_proj.proj3": "audio_proj.proj3",
    "transformer.audio_proj.conv1": "audio_proj.conv",
    "transformer.audio_proj.norm": "audio_proj.norm",
    "transformer.face_proj.proj": "face_proj.proj",
    "transformer.face_proj.norm": "face_proj.norm",
}
_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_MIXIN_LIST_KEY = re.compile(
    r"^mixins\.adaln_layer\.(adaLN_modulations|query_layernorm_list|key_layernorm_list)\.(\d+)\.(?:1\.)?(weight|bias)$"
)
_MIXIN_TARGET = {"adaLN_modulations": "modulation", "query_layernorm_list": "attn.norm_q",
                 "key_layernorm_list": "attn.norm_k"}


def resolve_checkpoint_file(path: Path) -> Path:
    """A SAT checkpoint may be given as the .pt file, its iteration folder, or the folder holding `latest`."""
    if path.is_file():
        return path
    direct = path / "mp_rank_00_model_states.pt"
    if direct.is_file():
        return direct
    latest = path / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        candidate = path / tag / "mp_rank_00_model_states.pt"
        if candidate.is_file():
            return candidate
        raise WeightsError(f"{latest} names iteration {tag!r} but {candidate} does not exist")
    raise WeightsError(f"{path}: no mp_rank_00_model_states.pt, and no 'latest' file naming an iteration folder")


def read_module_state(path: Path) -> dict[str, torch.Tensor]:
    """The `module` dict of a SAT/DeepSpeed checkpoint, memory-mapped."""
    file = resolve_checkpoint_file(path)
    payload = load_pickle(file)
    if not isinstance(payload, dict):
        raise WeightsError(f"{file}: expected a dict with a 'module' state dict, got {type(payload).__name__}")
    module = payload.get("module", payload)
    if not isinstance(module, dict) or not module:
        raise WeightsError(f"{file}: the 'module' entry is not a non-empty tensor dict")
    return module


def has_prefix(module: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in module)


def _rename(key: str) -> str | None:
    """SAT key without the engine prefix -> hallo-rt key; None when the key is not a model weight."""
    if key in IGNORED_SUFFIXES:
        return None
    if key == "mixins.pos_embed.pos_embedding":
        return "pos_embedding"
    match = _LAYER_KEY.match(key)
    if match:
        layer, body, kind = match.groups()
        for sat_name, ours in _LAYER_RULES:
            if body == sat_name:
                return f"blocks.{layer}.{ours}.{kind}"
        return f"unmapped:{key}"
    match = _MIXIN_LIST_KEY.match(key)
    if match:
        group, layer, kind = match.groups()
        return f"blocks.{layer}.{_MIXIN_TARGET[group]}.{kind}"
    module, _, kind = key.rpartition(".")
    if module in _FIXED_RULES:
        return f"{_FIXED_RULES[module]}.{kind}"
    return f"unmapped:{key}"


def to_engine_keys(module: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Select the keys under `prefix` and rename them; unknown keys keep an `unmapped:` name so the strict
    check reports them as unexpected. Keys of other known engine parts are skipped."""
    known_prefixes = (DENOISER_PREFIX, REFERENCE_PREFIX) + OTHER_ENGINE_PREFIXES
    state: dict[str, torch.Tensor] = {}
    for key, tensor in module.items():
        if key.startswith(prefix):
            name = _rename(key[len(prefix):])
            if name is not None:
                state[name] = tensor
        elif not key.startswith(known_prefixes):
            state[f"unmapped:{key}"] = tensor
    return state


def infer_config(state: dict[str, torch.Tensor], base: DiTConfig = HALLO3, name: str = "sat") -> DiTConfig:
    """Dimensions from tensor shapes (hallo-rt key names). SAT stores no config: the clip geometry
    (latent frames and size) comes from `base`, and the text length from the learned positional
    embedding's length minus the video tokens of that geometry. Epsilons are SAT's (config defaults)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise WeightsError(f"cannot infer the model config: tensor {key!r} is missing")
        return tuple(state[key].shape)

    hidden, in_channels, patch, _ = shape("patch_embed.proj.weight")
    head_dim = shape("blocks.0.attn.norm_q.weight")[0]
    num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    fields = dict(
        name=name,
        num_layers=num_layers,
        num_heads=hidden // head_dim,
        head_dim=head_dim,
        mlp_dim=shape("blocks.0.mlp.fc1.weight")[0],
        time_embed_dim=shape("time_embed.linear_1.weight")[0],
        text_dim=shape("patch_embed.text_proj.weight")[1],
        patch_size=patch,
        in_channels=in_channels,
        out_channels=shape("final_layer.linear.weight")[0] // (patch * patch),
        learned_pos_embed="pos_embedding" in state,
        face_cross_attention="blocks.0.face_attn.query.weight" in state,
        audio_cross_attention="blocks.0.audio_attn.query.weight" in state,
    )
    if fields["learned_pos_embed"]:
        video_tokens = base.latent_frames * (base.latent_height // patch) * (base.latent_width // patch)
        text_len = shape("pos_embedding")[1] - video_tokens
        if text_len < 0:
            raise WeightsError(
                f"the learned positional embedding has {shape('pos_embedding')[1]} rows, fewer than the "
                f"{video_tokens} video tokens of the assumed geometry ({base.latent_frames} latent frames of "
                f"{base.latent_height}x{base.latent_width}); pass a config with the right geometry"
            )
        fields["text_len"] = text_len
    if fields["face_cross_attention"]:
        face_width = shape("face_proj.norm.weight")[0]
        fields.update(face_embed_dim=shape("face_proj.proj.weight")[1], face_token_dim=face_width,
                      face_tokens=shape("face_proj.proj.weight")[0] // face_width)
    if fields["audio_cross_attention"]:
        token_dim = shape("audio_proj.norm.weight")[0]
        in_dim = shape("audio_proj.proj1.weight")[1]
        fields.update(
            audio_token_dim=token_dim,
            audio_tokens=shape("audio_proj.proj3.weight")[0] // token_dim,
            audio_hidden_dim=shape("audio_proj.proj1.weight")[0],
        )
        if in_dim != base.audio_window * base.audio_layers * base.audio_dim:
            raise WeightsError(
                f"audio projection input width {in_dim} is not window x layers x dim of the assumed audio "
                f"features ({base.audio_window} x {base.audio_layers} x {base.audio_dim}); pass a config"
            )
    return dataclasses.replace(base, **fields)
