"""Input checks for the denoiser: every wrong shape or dtype gets one sentence that says what was expected."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .conditioning import AudioProjection

if TYPE_CHECKING:
    from .dit import HalloDiT


class InputError(ValueError):
    """A model input has the wrong shape, dtype or device."""


def _check_tensor(name: str, x: object, ndim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise InputError(f"{name} has dtype {x.dtype} but the model runs in {dtype}; cast it with .to({dtype})")
    if x.device != device:
        raise InputError(f"{name} is on {x.device} but the model is on {device}")
    return x


def _batch(name: str, x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        # Materialised: a stride-0 batch takes another GEMM path and rounds differently from B real copies.
        return x.expand(batch, *x.shape[1:]).contiguous()
    raise InputError(f"{name} has batch {x.shape[0]}, expected {batch} (or 1 to broadcast)")


def check_dit_inputs(model: "HalloDiT", latents, timestep, text_embeds, audio, face, ref_bank):
    """Validate the denoiser inputs; returns (timestep (B,), text_embeds, audio, face), batch-1 inputs
    repeated to the batch and a missing audio or face filled with zeros."""
    cfg = model.config
    dtype = model.dtype
    device = model.patch_embed.proj.weight.device
    latents = _check_tensor("latents", latents, 5, dtype, device)
    B, Fr, C, H, W = latents.shape
    if C != cfg.in_channels:
        raise InputError(
            f"latents have {C} channels, expected {cfg.in_channels} (noisy latents with the conditioning "
            f"latent concatenated on channels); shape must be (B, F, C, H, W), got {tuple(latents.shape)}"
        )
    if H % cfg.patch_size or W % cfg.patch_size:
        raise InputError(f"latent size {H}x{W} is not divisible by the patch size {cfg.patch_size}")
    if cfg.learned_pos_embed:
        if (H, W) != (cfg.latent_height, cfg.latent_width):
            raise InputError(
                f"latent size {H}x{W} differs from the {cfg.latent_height}x{cfg.latent_width} the learned "
                f"positional embedding was trained for ({cfg.latent_height * 8}x{cfg.latent_width * 8} px)"
            )
        if Fr > cfg.latent_frames:
            raise InputError(f"{Fr} latent frames exceed the learned positional embedding's {cfg.latent_frames}")

    if not isinstance(timestep, torch.Tensor):
        timestep = torch.tensor(timestep, device=device)
    if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, B)):
        raise InputError(f"timestep must be a scalar or have shape ({B},), got shape {tuple(timestep.shape)}")
    if timestep.is_complex() or timestep.dtype == torch.bool:
        raise InputError(f"timestep must be real numbers, got dtype {timestep.dtype}")
    timestep = timestep.to(device).reshape(-1).expand(B)

    text_embeds = _check_tensor("text_embeds", text_embeds, 3, dtype, device)
    if text_embeds.shape[2] != cfg.text_dim:
        raise InputError(f"text_embeds width is {text_embeds.shape[2]}, expected {cfg.text_dim}")
    if cfg.learned_pos_embed and text_embeds.shape[1] != cfg.text_len:
        raise InputError(
            f"text_embeds have {text_embeds.shape[1]} tokens; the learned positional embedding expects "
            f"exactly {cfg.text_len} (pad or truncate like the text encoder's max_length)"
        )
    text_embeds = _batch("text_embeds", text_embeds, B)

    if cfg.audio_cross_attention:
        if audio is None:
            shape = (B, 4 * Fr - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
            audio = torch.zeros(shape, dtype=dtype, device=device)
        audio = _check_tensor("audio", audio, 5, dtype, device)
        expected = (cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
        if tuple(audio.shape[2:]) != expected:
            raise InputError(f"audio must be (B, T_video, {', '.join(map(str, expected))}), got {tuple(audio.shape)}")
        if AudioProjection.latent_frames_for(audio.shape[1]) != Fr:
            raise InputError(
                f"audio has {audio.shape[1]} video frames, which compress to "
                f"{AudioProjection.latent_frames_for(audio.shape[1])} latent frames, not {Fr}; "
                f"give {4 * Fr - 3} frames for a clip starting at frame 0 or {4 * Fr} for a continuation"
            )
        audio = _batch("audio", audio, B)
    elif audio is not None:
        raise InputError("audio was given but this model has no audio cross-attention")

    if cfg.face_cross_attention:
        if face is None:
            face = torch.zeros(B, cfg.face_embed_dim, dtype=dtype, device=device)
        face = _check_tensor("face", face, 2, dtype, device)
        if face.shape[1] != cfg.face_embed_dim:
            raise InputError(f"face embedding width is {face.shape[1]}, expected {cfg.face_embed_dim}")
        face = _batch("face", face, B)
    elif face is not None:
        raise InputError("face was given but this model has no face cross-attention")

    if ref_bank is not None and hasattr(ref_bank, "keys"):  # a precomputed ReferenceKV
        if len(ref_bank.keys) != cfg.num_layers or ref_bank.batch not in (1, B):  # B: computed for this batch
            raise InputError(f"reference K/V must have {cfg.num_layers} layers and batch {B} or 1, got "
                             f"{len(ref_bank.keys)} layers and batch {ref_bank.batch}")
    elif ref_bank is not None:
        ref_bank = _check_tensor("ref_bank", ref_bank, 4, dtype, device)
        if ref_bank.shape[0] != cfg.num_layers or ref_bank.shape[3] != cfg.hidden_dim:
            raise InputError(
                f"ref_bank must be (num_layers={cfg.num_layers}, B or 1, N_ref, {cfg.hidden_dim}), "
                f"got {tuple(ref_bank.shape)}"
            )
        if ref_bank.shape[1] not in (1, B):
            raise InputError(f"ref_bank has batch {ref_bank.shape[1]}, expected {B} or 1")
    return timestep, text_embeds, audio, face
