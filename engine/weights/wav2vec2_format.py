"""Audio-encoder weights: wav2vec2 Hugging Face folders, or a preset with seeded weights.

A Hugging Face folder holds `config.json` and the weights as `model.safetensors`, `pytorch_model.bin`
(loaded with weights_only=True), or either of them sharded with its `.index.json`. Accepted layouts:
  * `Wav2Vec2Model` (keys as they are) or `Wav2Vec2ForCTC` (keys under `wav2vec2.`, plus `lm_head.*`);
    wav2vec2-base-960h, Hallo3's encoder, is the latter;
  * the positional conv's weight norm stored as `conv.weight_g` / `conv.weight_v` (torch's old
    `nn.utils.weight_norm`, the released base-960h `.bin`) or `conv.parametrizations.weight.original0` /
    `original1` (the parametrization transformers saves today). Either pair is fused into `conv.weight`.
`lm_head.*` (the CTC head) and `masked_spec_embed` (SpecAugment, training only) are skipped on purpose;
any other key the model does not have, or lacks, is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..wav2vec2 import AUDIO_PRESETS, Wav2Vec2Config, Wav2Vec2Model
from .common import WeightsError, assign_state_dict, load_pickle, load_safetensors, resolve_dtype, seeded_init_

CTC_PREFIX = "wav2vec2."
SKIPPED_PREFIXES = ("lm_head.",)
SKIPPED_KEYS = ("masked_spec_embed",)
POS_CONV = "encoder.pos_conv_embed.conv."
# (g, v) names of the weight-norm pair: the parametrization (current) and the legacy hook (old checkpoints).
WEIGHT_NORM_PAIRS = (
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    ("weight_g", "weight_v"),
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")



def read_config(folder: Path) -> Wav2Vec2Config:
    """The encoder config from `folder/config.json`; WeightsError when missing or unsupported."""
    path = folder / "config.json"
    if not path.is_file():
        raise WeightsError(f"{folder}: no config.json; expected a Hugging Face wav2vec2 folder")
    try:
        return Wav2Vec2Config.from_hf_dict(json.loads(path.read_text()), name=f"hf:{folder.name}")
    except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise WeightsError(f"{path}: {err}") from None


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(raw state dict, source description) of a Hugging Face folder, single-file or sharded."""
    for name in WEIGHT_FILES:
        single, index = folder / name, folder / f"{name}.index.json"
        if single.is_file():
            files = [single]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise WeightsError(f"{index}: not a readable shard index ({err!r})") from None
            files = [folder / shard for shard in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise WeightsError(f"{index}: shard files missing: {', '.join(missing)}")
        else:
            continue
        if name.endswith(".safetensors"):
            return load_safetensors(files), str(files[0] if len(files) == 1 else index)
        state: dict[str, torch.Tensor] = {}
        for file in files:
            part = load_pickle(file)
            if not isinstance(part, Mapping):
                raise WeightsError(f"{file}: expected a state dict, found {type(part).__name__}")
            duplicated = sorted(set(part) & set(state))
            if duplicated:
                raise WeightsError(f"{file}: tensors in more than one shard: {', '.join(duplicated[:5])}")
            state.update(part)
        return state, str(files[0] if len(files) == 1 else index)
    raise WeightsError(
        f"{folder}: no weights found; expected one of {', '.join(WEIGHT_FILES)} (or its .index.json shards)"
    )


def fuse_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g * v / ||v||, the norm taken over every dim but 2 (the kernel axis), as `weight_norm(dim=2)`.

    Computed in float64 (why: it is done once, and this keeps the fused weight within one float32 rounding
    of the exact product) and returned in v's dtype."""
    v64 = v.double()
    norm = v64.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # (1, 1, K)
    return (v64 * (g.double() / norm)).to(v.dtype)


def to_engine_keys(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `wav2vec2.` prefix, drop the known training/CTC-only keys, fuse the weight-norm pair.
    Everything else is passed through untouched, for the strict check to report."""
    has_prefix = any(k.startswith(CTC_PREFIX) for k in raw)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key[len(CTC_PREFIX):] if has_prefix and key.startswith(CTC_PREFIX) else key
        if name in SKIPPED_KEYS or key.startswith(SKIPPED_PREFIXES):
            continue
        state[name] = tensor
    for g_name, v_name in WEIGHT_NORM_PAIRS:
        g_key, v_key = POS_CONV + g_name, POS_CONV + v_name
        if g_key in state and v_key in state:
            g, v = state.pop(g_key), state.pop(v_key)
            if not (g.is_floating_point() and v.is_floating_point()):
                raise WeightsError(f"{g_key} / {v_key} must be floating point, got {g.dtype} / {v.dtype}")
            if g.ndim != 3 or v.ndim != 3 or g.shape != (1, 1, v.shape[2]):
                raise WeightsError(
                    f"{g_key} {tuple(g.shape)} / {v_key} {tuple(v.shape)}: expected the weight norm over dim=2, "
                    f"i.e. g of shape (1, 1, kernel) and v of shape (out, in/groups, kernel)"
                )
            state[POS_CONV + "weight"] = fuse_weight_norm(g, v)
    return state


def load_audio_encoder(
    path_or_preset: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Wav2Vec2Model:
    """The wav2vec2 audio encoder from a preset name (`wav2vec2-base`, `tiny`: seeded random weights) or a
    Hugging Face folder (layouts in the module docstring). Loading is strict: missing, unexpected and
    mis-shaped keys are all reported in one WeightsError."""
    dtype = resolve_dtype(dtype)
    if isinstance(path_or_preset, str) and path_or_preset in AUDIO_PRESETS:
        model = seeded_init_(Wav2Vec2Model(AUDIO_PRESETS[path_or_preset]), seed)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    folder = Path(path_or_preset)
    if not folder.is_dir():
        raise WeightsError(
            f"{path_or_preset!r} is neither an audio-encoder preset ({', '.join(sorted(AUDIO_PRESETS))}) "
            f"nor a Hugging Face wav2vec2 folder"
        )
    config = read_config(folder)
    raw, source = read_weights(folder)
    state = to_engine_keys(raw)
    del raw
    return assign_state_dict(lambda: Wav2Vec2Model(config), state, source, dtype, device)
