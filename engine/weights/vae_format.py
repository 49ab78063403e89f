"""VAE weights: the SAT `3d-vae.pt`, diffusers `AutoencoderKLCogVideoX` folders, hallo-rt folders, presets.

SAT keys (`vae_modules/cp_enc_dec.py`) differ from ours (diffusers' tree) by the renames below; the
decoder's SAT levels are stored in resolution order (`up.0` is the last one applied), diffusers' in
application order. This is the inverse of the VAE part of diffusers'
`scripts/convert_cogvideox_to_diffusers.py`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from ..config import VAE_HALLO3, VAE_PRESETS, VaeConfig, get_vae_preset
from ..vae import CogVideoXVae
from . import diffusers_format
from .common import WeightsError, assign_state_dict, load_pickle, load_safetensors, resolve_dtype, seeded_init_

DIFFUSERS_CLASS = "AutoencoderKLCogVideoX"
SAT_FILE = "3d-vae.pt"
ENGINE_FILE = "vae.safetensors"
# A whole-engine SAT state dict keeps the VAE under this prefix.
ENGINE_PREFIX = "first_stage_model."
# The training losses (LPIPS, discriminator) saved beside the autoencoder: no role in inference.
SAT_IGNORED_PREFIXES = ("loss.",)

_SAT_LEVEL = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)$")
_SAT_MID = re.compile(r"^(encoder|decoder)\.mid\.block_([12])\.(.+)$")


def sat_to_engine_keys(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename SAT VAE keys to hallo-rt's (= diffusers') names; unknown keys are kept (and then reported)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(SAT_IGNORED_PREFIXES):
            continue
        new = key
        level = _SAT_LEVEL.match(key)
        mid = _SAT_MID.match(key)
        if level:
            part, index, what, block, rest = level.groups()
            index = int(index)
            if part == "decoder.up":
                index = levels - 1 - index
            head = "encoder.down_blocks" if part == "encoder.down" else "decoder.up_blocks"
            inner = f"resnets.{block}" if block is not None else ("downsamplers.0" if what == "downsample"
                                                                    else "upsamplers.0")
            new = f"{head}.{index}.{inner}.{rest}"
        elif mid:
            side, number, rest = mid.groups()
            new = f"{side}.mid_block.resnets.{int(number) - 1}.{rest}"
        out[new.replace(".nin_shortcut.", ".conv_shortcut.")] = tensor
    return out


def infer_sat_config(state: dict[str, torch.Tensor], name: str) -> VaeConfig:
    """Dimensions from the tensor shapes; GroupNorm groups, eps, temporal compression and the scaling
    factor are not stored in the file and take Hallo3's values (SAT hard-codes 32 groups and 1e-6)."""
    try:
        stem = state["encoder.conv_in.conv.weight"]
        levels = 1 + max(int(m.group(2)) for k in state if (m := _SAT_LEVEL.match(k)) and m.group(1) == "encoder.down")
        widths = [state[f"encoder.down.{i}.block.0.conv1.conv.weight"].shape[0] for i in range(levels)]
        blocks = 1 + max(int(m.group(4)) for k in state
                         if (m := _SAT_LEVEL.match(k)) and m.group(1) == "encoder.down" and m.group(4) is not None)
        latent = state["decoder.conv_in.conv.weight"].shape[1]
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{name}: not a CogVideoX VAE state dict (no {err})") from None
    base = stem.shape[0]
    if any(w % base for w in widths):
        raise WeightsError(f"{name}: level widths {widths} are not multiples of the stem width {base}")
    try:
        return dataclasses.replace(
            VAE_HALLO3, name=name, image_channels=stem.shape[1], latent_channels=latent, base_channels=base,
            channel_multipliers=tuple(w // base for w in widths), num_res_blocks=blocks,
        )
    except ValueError as err:
        raise WeightsError(f"{name}: cannot infer a config with SAT's fixed {VAE_HALLO3.norm_groups} norm groups "
                           f"({err}); pass config=VaeConfig(...) with this VAE's norm_groups") from None


def _sat_file(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in (path / SAT_FILE, path / "vae" / SAT_FILE):
        if candidate.is_file():
            return candidate
    raise WeightsError(f"{path}: no {SAT_FILE} (looked in the folder and in vae/)")


def read_sat(path: Path) -> dict[str, torch.Tensor]:
    """The VAE state dict of a SAT `3d-vae.pt` (`{"state_dict": ...}`), or of a whole-engine SAT file."""
    raw = load_pickle(path)
    state = raw.get("state_dict", raw.get("module", raw)) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict with a 'state_dict', got {type(raw).__name__}")
    if any(k.startswith(ENGINE_PREFIX) for k in state):
        state = {k[len(ENGINE_PREFIX):]: v for k, v in state.items() if k.startswith(ENGINE_PREFIX)}
    return state


def find_diffusers_folder(path: Path) -> Path | None:
    """`path` or its `vae/` subfolder when its config.json names AutoencoderKLCogVideoX."""
    return diffusers_format.find_folder(path, DIFFUSERS_CLASS, subfolder="vae")


def read_diffusers_config(folder: Path) -> VaeConfig:
    raw = json.loads((folder / "config.json").read_text())
    # Options of other CogVideoX versions that this implementation does not have.
    unsupported = {"use_quant_conv": False, "use_post_quant_conv": False, "invert_scale_latents": False,
                   "shift_factor": None, "latents_mean": None, "latents_std": None, "act_fn": "silu",
                   "in_channels": 3, "out_channels": 3}
    for key, want in unsupported.items():
        if raw.get(key, want) != want:
            raise WeightsError(f"{folder}: {key}={raw[key]!r} is not supported (expected {want!r})")
    widths = list(raw.get("block_out_channels", (128, 256, 256, 512)))
    base = widths[0]
    if any(w % base for w in widths):
        raise WeightsError(f"{folder}: block_out_channels {widths} are not multiples of the first")
    try:
        return VaeConfig(
            name=f"diffusers:{folder.name}",
            latent_channels=raw.get("latent_channels", 16),
            base_channels=base,
            channel_multipliers=tuple(w // base for w in widths),
            num_res_blocks=raw.get("layers_per_block", 3),
            norm_groups=raw.get("norm_num_groups", 32),
            norm_eps=raw.get("norm_eps", 1e-6),
            temporal_compression=int(raw.get("temporal_compression_ratio", 4)),
            scaling_factor=raw.get("scaling_factor", 1.15258426),
        )
    except ValueError as err:
        raise WeightsError(f"{folder}: {err}") from None


def _engine_manifest(path: Path) -> dict | None:
    manifest = path / "hallo_rt.json"
    if path.is_dir() and manifest.is_file():
        data = json.loads(manifest.read_text())
        from . import ENGINE_FORMAT_VERSION

        if data.get("format_version") != ENGINE_FORMAT_VERSION:
            raise WeightsError(f"{path}: format_version {data.get('format_version')} is not {ENGINE_FORMAT_VERSION}")
        if "vae" in data:
            return data
        raise WeightsError(f"{path}: this hallo-rt folder has no VAE (save it with save_engine_format(..., vae=))")
    return None


def vae_state(path: Path, config: VaeConfig | None) -> tuple[VaeConfig, dict[str, torch.Tensor], str]:
    """(config, state dict in hallo-rt keys, source) of any supported VAE checkpoint path."""
    manifest = _engine_manifest(path)
    if manifest is not None:
        file = path / ENGINE_FILE
        return config or VaeConfig.from_dict(manifest["vae"]), load_safetensors([file]), str(file)
    folder = find_diffusers_folder(path) if path.is_dir() else None
    if folder is not None:
        cfg = config or read_diffusers_config(folder)
        return cfg, load_safetensors(diffusers_format.weight_files(folder)), str(folder)
    file = _sat_file(path)
    state = read_sat(file)
    cfg = config or infer_sat_config(state, name=f"sat:{file.name}")
    return cfg, sat_to_engine_keys(state, len(cfg.channel_multipliers)), f"{file} (SAT VAE)"


def load_vae(
    path_or_preset: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    config: VaeConfig | None = None,
    seed: int = 2,
) -> CogVideoXVae:
    """The CogVideoX VAE from a preset name (`hallo3`, `tiny`: deterministic seeded weights) or a checkpoint:
    SAT `3d-vae.pt` (the file, or a folder holding it or `vae/3d-vae.pt`), a diffusers
    `AutoencoderKLCogVideoX` folder (or a pipeline folder with `vae/`), or a hallo-rt folder with a VAE.
    Loading is strict: missing, unexpected and mis-shaped keys are all reported."""
    from ..models import resolve_model

    dtype = resolve_dtype(dtype)
    path_or_preset = resolve_model(path_or_preset)
    if isinstance(path_or_preset, str) and path_or_preset in VAE_PRESETS:
        model = seeded_init_(CogVideoXVae(config or get_vae_preset(path_or_preset)), seed)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    path = Path(path_or_preset)
    if not path.exists():
        raise WeightsError(f"{path_or_preset!r} is neither a VAE preset ({', '.join(sorted(VAE_PRESETS))}) "
                           f"nor an existing path")
    cfg, state, source = vae_state(path, config)
    return assign_state_dict(lambda: CogVideoXVae(cfg), state, source, dtype, device)
