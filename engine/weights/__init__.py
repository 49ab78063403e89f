"""Loading and converting denoiser weights.

Formats, detected from the path:
  (a) Hallo3 SAT/DeepSpeed checkpoint (`mp_rank_00_model_states.pt`, its iteration folder, or the folder
      with `latest`): `model.diffusion_model.*` is the denoiser, `ref_model.diffusion_model.*` the reference
      network;
  (b) the plain CogVideoX-5B-I2V SAT transformer checkpoint (backbone only; Hallo3 initialises its
      reference network from it);
  (c) a diffusers `CogVideoXTransformer3DModel` folder (or a pipeline folder with `transformer/`);
  (d) hallo-rt's own format: a folder with `hallo_rt.json` (config + provenance), `dit.safetensors` and,
      when there is one, `reference_net.safetensors`.
A preset name builds that preset with deterministic seeded weights; `demo` is the trained avatar's folder
inside the package (`engine.models`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch

from ..config import PRESETS, DiTConfig, get_preset
from ..dit import HalloDiT
from ..models import resolve_model
from ..reference import ReferenceNet, reference_config
from ..vae import CogVideoXVae
from . import diffusers_format, sat, vae_format
from .common import WeightsError, assign_state_dict, load_safetensors, resolve_dtype, seeded_init_

__all__ = ["WeightsError", "load_dit", "load_reference_net", "load_vae", "save_engine_format", "convert",
           "detect_format"]

ENGINE_MANIFEST = "hallo_rt.json"
ENGINE_FORMAT_VERSION = 1
Format = Literal["preset", "sat", "diffusers", "engine"]


def detect_format(path_or_preset: str | Path) -> Format:
    """Which loader reads this; raises WeightsError naming what was looked for."""
    if isinstance(path_or_preset, str) and path_or_preset in PRESETS:
        return "preset"
    path = Path(path_or_preset)
    if not path.exists():
        raise WeightsError(
            f"{path_or_preset!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing path"
        )
    if path.is_dir() and (path / ENGINE_MANIFEST).is_file():
        return "engine"
    if path.is_dir() and diffusers_format.find_folder(path) is not None:
        return "diffusers"
    if path.is_file() and path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return "sat"
    if path.is_dir() and ((path / "latest").is_file() or (path / "mp_rank_00_model_states.pt").is_file()):
        return "sat"
    raise WeightsError(
        f"{path}: unknown checkpoint format; expected a SAT checkpoint (.pt file or folder with 'latest'), "
        f"a diffusers CogVideoXTransformer3DModel folder (config.json + safetensors), or a hallo-rt folder "
        f"({ENGINE_MANIFEST} + dit.safetensors)"
    )


def _read_engine_manifest(path: Path) -> dict:
    manifest = json.loads((path / ENGINE_MANIFEST).read_text())
    if manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise WeightsError(f"{path}: format_version {manifest.get('format_version')} is not {ENGINE_FORMAT_VERSION}")
    return manifest


def _denoiser_state(path_or_preset, fmt: Format, config: DiTConfig | None):
    """(config, state dict in hallo-rt keys, source description) of the denoiser."""
    path = Path(path_or_preset)
    if fmt == "engine":
        manifest = _read_engine_manifest(path)
        cfg = config or DiTConfig.from_dict(manifest["dit"])
        return cfg, load_safetensors([path / "dit.safetensors"]), f"{path / 'dit.safetensors'}"
    if fmt == "diffusers":
        folder = diffusers_format.find_folder(path)
        return config or diffusers_format.read_config(folder), diffusers_format.read_state(folder), str(folder)
    module = sat.read_module_state(path)
    if not sat.has_prefix(module, sat.DENOISER_PREFIX):
        raise WeightsError(f"{path}: no '{sat.DENOISER_PREFIX}*' keys; this is not a SAT diffusion checkpoint")
    state = sat.to_engine_keys(module, sat.DENOISER_PREFIX)
    return config or sat.infer_config(state, name=f"sat:{path.name}"), state, f"{path} ({sat.DENOISER_PREFIX}*)"


def load_dit(
    path_or_preset: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    config: DiTConfig | None = None,
    seed: int = 0,
) -> HalloDiT:
    """The denoiser from a preset name or a checkpoint (formats in the module docstring).

    `config` overrides the stored or inferred config (SAT checkpoints carry none: their dimensions are
    inferred from shapes and the clip geometry is Hallo3's unless a config says otherwise). The weights must
    match it exactly: missing, unexpected and mis-shaped keys are all reported. `seed` is used by presets.
    """
    dtype = resolve_dtype(dtype)
    path_or_preset = resolve_model(path_or_preset)
    fmt = detect_format(path_or_preset)
    if fmt == "preset":
        cfg = config or get_preset(str(path_or_preset))
        model = seeded_init_(HalloDiT(cfg), seed)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    cfg, state, source = _denoiser_state(path_or_preset, fmt, config)
    return assign_state_dict(lambda: HalloDiT(cfg), state, source, dtype, device)


def load_reference_net(
    path_or_preset: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    config: DiTConfig | None = None,
    seed: int = 1,
) -> ReferenceNet:
    """The identity reference network. Hallo3 SAT checkpoints: `ref_model.diffusion_model.*`; a plain
    CogVideoX checkpoint (SAT or diffusers): its backbone, as Hallo3 stage 1 initialises it; hallo-rt
    folders: `reference_net.safetensors`. `config` is the denoiser's or the reference's config."""
    dtype = resolve_dtype(dtype)
    path_or_preset = resolve_model(path_or_preset)
    fmt = detect_format(path_or_preset)
    if fmt == "preset":
        cfg = reference_config(config or get_preset(str(path_or_preset)))
        net = ReferenceNet(cfg)
        seeded_init_(net.backbone, seed)
        return net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    path = Path(path_or_preset)
    if fmt == "engine":
        manifest = _read_engine_manifest(path)
        if "reference_net" not in manifest:
            raise WeightsError(f"{path}: this hallo-rt folder has no reference network")
        cfg = config or DiTConfig.from_dict(manifest["reference_net"])
        state = load_safetensors([path / "reference_net.safetensors"])
        source = str(path / "reference_net.safetensors")
    elif fmt == "sat":
        module = sat.read_module_state(path)
        prefix = sat.REFERENCE_PREFIX if sat.has_prefix(module, sat.REFERENCE_PREFIX) else sat.DENOISER_PREFIX
        state = sat.to_engine_keys(module, prefix)
        if prefix == sat.DENOISER_PREFIX and any(".face_attn." in k or ".audio_attn." in k for k in state):
            raise WeightsError(f"{path}: a Hallo3 denoiser checkpoint without '{sat.REFERENCE_PREFIX}*' keys")
        cfg = config or sat.infer_config(state, name=f"sat:{path.name}:reference")
        source = f"{path} ({prefix}*)"
    else:
        cfg, state, source = _denoiser_state(path, fmt, config)
    cfg = reference_config(cfg)
    state = {f"backbone.{k}": v for k, v in state.items()}
    return assign_state_dict(lambda: ReferenceNet(cfg), state, source, dtype, device)


load_vae = vae_format.load_vae


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in key order; keys artifact caches."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_engine_format(
    out: str | Path, dit: HalloDiT, reference: ReferenceNet | None = None, source: str = "",
    vae: "CogVideoXVae | None" = None,
) -> Path:
    """Write a hallo-rt folder: hallo_rt.json + dit.safetensors (+ reference_net.safetensors, vae.safetensors)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    manifest = {"format_version": ENGINE_FORMAT_VERSION, "source": source, "dit": dit.config.to_dict(),
                "dit_digest": weights_digest(state)}
    save_file(state, str(out / "dit.safetensors"))
    if reference is not None:
        ref_state = {k[len("backbone."):]: v.contiguous() for k, v in reference.state_dict().items()}
        save_file(ref_state, str(out / "reference_net.safetensors"))
        manifest["reference_net"] = reference.config.to_dict()
        manifest["reference_net_digest"] = weights_digest(ref_state)
    if vae is not None:
        vae_state = {k: v.contiguous() for k, v in vae.state_dict().items()}
        save_file(vae_state, str(out / vae_format.ENGINE_FILE))
        manifest["vae"] = vae.config.to_dict()
        manifest["vae_digest"] = weights_digest(vae_state)
    (out / ENGINE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def convert(src: str | Path, out: str | Path, config: DiTConfig | None = None,
            dtype: torch.dtype | str | None = None) -> Path:
    """Convert a SAT or diffusers checkpoint (formats a-c) into hallo-rt's format (d).

    Hallo3 SAT checkpoints keep their reference network; plain CogVideoX checkpoints get none (load it
    with `load_reference_net(src)` when it is wanted). `dtype` defaults to the checkpoint's own."""
    fmt = detect_format(src)
    if fmt not in ("sat", "diffusers"):
        raise WeightsError(f"{src}: convert reads SAT or diffusers checkpoints, this is a {fmt}")
    cfg, state, source = _denoiser_state(src, fmt, config)
    dtype = resolve_dtype(dtype) if dtype is not None else next(iter(state.values())).dtype
    dit = assign_state_dict(lambda: HalloDiT(cfg), state, source, dtype, "cpu")
    del state
    reference = None
    if fmt == "sat" and sat.has_prefix(sat.read_module_state(Path(src)), sat.REFERENCE_PREFIX):
        reference = load_reference_net(src, dtype=dtype, config=cfg)
    return save_engine_format(out, dit, reference, source=f"{fmt}:{Path(src).resolve()}")
