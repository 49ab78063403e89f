"""Offline Hallo3 generation: the long-video loop of hallo3 `sample_video.py` L254-427 (spec section 1.6).

One frame's walk: audio features (25 per second, +-2 window) -> 49-frame clips that overlap by the two
motion frames -> the denoiser, conditioned on [reference, motion 1, motion 2] encoded into one latent
frame, the face embedding, the text embeddings and the reference bank -> the VAE decoder -> frames 2..48
of every clip, trimmed to the audio's length.

Unlike the original, the reference bank is computed once per video rather than once per clip (its
inputs never change). Random numbers come from one seeded generator, in the reference's order: the first
clip's pixel-dropout mask, the conditioning latent's posterior sample, the reference latent's, then per
clip the sampler's noise, and after each clip the next mask and posterior sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .dit import HalloDiT
from .reference import ReferenceNet
from .reference_image import PreparedReference
from .sampling import Conditioning, SamplerConfig, sample
from .validation import InputError
from .vae import CogVideoXVae

if TYPE_CHECKING:
    from .audio_features import AudioFeatureExtractor


@dataclass(frozen=True)
class MotionConfig:
    """How clips are chained (Hallo3: `n_motion_frame = 2`, `mask_rate = 0.1`, sample_video L254-255)."""

    motion_frames: int = 2
    """Pixel frames carried from the end of one clip into the next clip's conditioning."""

    mask_rate: float = 0.1
    """Share of pixels zeroed (one random H x W map, shared by frames and channels) in the motion frames."""

    def __post_init__(self) -> None:
        if self.motion_frames < 1:
            raise ValueError(f"motion_frames must be >= 1, got {self.motion_frames}")
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {self.mask_rate}")


# (clip index, clips, step, steps) after every denoising step.
ProgressCallback = Callable[[int, int, int, int], None]


def clip_count(frames: int, clip_frames: int, motion_frames: int) -> int:
    """Clips needed for `frames` output frames: each clip adds clip_frames - motion_frames new frames."""
    return math.ceil(frames / (clip_frames - motion_frames))


def clip_audio(features: torch.Tensor, clip: int, prefix: torch.Tensor, clip_frames: int,
               motion_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio of one clip and the prefix for the next (sample_video L360-371).

    A clip sees the previous clip's last `motion_frames` audio frames (zeros for the first), then its new
    frames; a short last clip is padded by repeating its last frame."""
    new = clip_frames - motion_frames
    chunk = torch.cat([prefix, features[clip * new:(clip + 1) * new]], dim=0)
    next_prefix = chunk[-motion_frames:]
    if chunk.shape[0] < clip_frames:
        chunk = torch.cat([chunk, next_prefix[-1:].expand(clip_frames - chunk.shape[0], *chunk.shape[1:])])
    return chunk, next_prefix


class Hallo3Pipeline:
    """Denoiser + reference network + VAE: reference image, audio features, face and text -> video frames."""

    def __init__(self, dit: HalloDiT, reference_net: ReferenceNet, vae: CogVideoXVae) -> None:
        cfg = dit.config
        if not (cfg.audio_cross_attention and cfg.face_cross_attention):
            raise InputError(f"model {cfg.name!r} has no audio/face modules: it is a backbone, not Hallo3")
        if vae.config.latent_channels != cfg.out_channels:
            raise InputError(f"VAE latent channels {vae.config.latent_channels} != denoiser {cfg.out_channels}")
        self.dit, self.reference_net, self.vae = dit, reference_net, vae

    @property
    def clip_size(self) -> tuple[int, int]:
        """(height, width) of the video in pixels."""
        step, cfg = self.vae.config.spatial_compression, self.dit.config
        return cfg.latent_height * step, cfg.latent_width * step

    @property
    def clip_frames(self) -> int:
        """Pixel frames per clip (49 for 13 latent frames)."""
        return 1 + (self.dit.config.latent_frames - 1) * self.vae.config.temporal_compression

    def _encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels (1, 3, T, H, W) -> scaled latents (1, F, C, h, w), a posterior sample as in SAT."""
        latents = self.vae.encode(frames.to(self.vae.device), sample=True, generator=generator)
        return (latents * self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4).to(self.dit.dtype)

    def _conditioning_latent(self, image: torch.Tensor, motion: torch.Tensor, mask_rate: float,
                             generator: torch.Generator) -> torch.Tensor:
        """[reference, motion frames with random pixel dropout] -> one latent frame, then zero frames
        (sample_video L256-263 and L413-419; `add_mask_to_first_frame` L189-200)."""
        height, width = motion.shape[-2:]
        # compared in the frames' dtype, as the reference does (in bf16, 0.1 itself rounds to 0.10009765625)
        keep = torch.rand((height, width), generator=generator, device=generator.device).to(motion.dtype) > mask_rate
        masked = motion * keep.to(motion.device, motion.dtype)
        first = self._encode(torch.cat([image[:, :, None], masked], dim=2), generator)  # (1, 1, C, h, w)
        zeros = first.new_zeros(1, self.dit.config.latent_frames - first.shape[1], *first.shape[2:])
        return torch.cat([first, zeros], dim=1)

    @torch.no_grad()
    def generate(
        self,
        reference: PreparedReference,
        audio_features: torch.Tensor,
        face_embedding: torch.Tensor,
        text_embeds: torch.Tensor,
        sampler: SamplerConfig = SamplerConfig(),
        motion: MotionConfig = MotionConfig(),
        generator: torch.Generator | None = None,
        progress: ProgressCallback | None = None,
        num_frames: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the video clip by clip as uint8 frames (T, H, W, 3), `num_frames` frames in all.

        audio_features (frames, window, layers, dim), one per 25 fps video frame; Hallo3 pads them to a
        multiple of the clip length and trims the video to the unpadded count, which is `num_frames`
        (default: all feature frames). Clips whose frames would all be trimmed are not generated (the
        reference generates and discards them; earlier clips do not depend on them).
        face_embedding (face_embed_dim,) or (1, ...); text_embeds (text_len, text_dim) or (1, ...)."""
        cfg, dtype = self.dit.config, self.dit.dtype
        device = self.dit.device
        expected = (cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
        if audio_features.ndim != 4 or tuple(audio_features.shape[1:]) != expected or audio_features.shape[0] < 1:
            raise InputError(f"audio features must be (frames >= 1, {', '.join(map(str, expected))}), "
                             f"got {tuple(audio_features.shape)}")
        generator = generator or torch.Generator().manual_seed(0)
        length = audio_features.shape[0] if num_frames is None else num_frames
        if not 1 <= length <= audio_features.shape[0]:
            raise InputError(f"num_frames must be in 1..{audio_features.shape[0]} (the audio feature frames), "
                             f"got {num_frames}")
        clip_frames = self.clip_frames
        clips = clip_count(length, clip_frames, motion.motion_frames)
        face = face_embedding.reshape(1, -1).to(device, dtype)
        text = text_embeds.reshape(1, *text_embeds.shape[-2:]).to(device, dtype)
        features = audio_features.to(device, dtype)
        image = reference.image.to(self.vae.device, self.vae.dtype)

        # 1. first clip's motion frames are the reference image itself; the bank is computed once
        motion_pixels = image[:, :, None].expand(-1, -1, motion.motion_frames, -1, -1)
        concat = self._conditioning_latent(image, motion_pixels, motion.mask_rate, generator)
        ref_latent = self._encode(reference.face_image.to(image)[:, :, None], generator)
        bank = self.reference_net(ref_latent.to(device))
        prefix = features.new_zeros(motion.motion_frames, *features.shape[1:])
        emitted = 0
        for clip in range(clips):
            # 2. denoise one clip
            audio, prefix = clip_audio(features, clip, prefix, clip_frames, motion.motion_frames)
            cond = Conditioning(concat_latent=concat.to(device), text_embeds=text, audio=audio[None],
                                face=face, ref_bank=bank)
            step_progress = (lambda step, steps, c=clip: progress(c, clips, step, steps)) if progress else False
            latents = sample(self.dit, cond, sampler, generator=generator, progress=step_progress)
            # 3. decode with the reference grouping; frames to [0, 1] as the reference does before reuse
            # multiply by the reciprocal, as the reference does (x / s and x * (1 / s) round differently)
            pixels = self.vae.decode(latents.permute(0, 2, 1, 3, 4) * (1.0 / self.vae.config.scaling_factor))
            pixels = ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (1, 3, T, H, W)
            # 4. the last frames condition the next clip
            if clip + 1 < clips:
                # cast first, then map to [-1, 1], in the reference's order (L415-416): differs in bf16
                motion_pixels = pixels[:, :, -motion.motion_frames:].to(self.vae.dtype) * 2 - 1
                concat = self._conditioning_latent(image, motion_pixels, motion.mask_rate, generator)
            # 5. emit the new frames, trimmed to the audio length
            new = pixels[0, :, motion.motion_frames:][:, :length - emitted]
            emitted += new.shape[1]
            yield _to_uint8(new, reference.crop)


def _to_uint8(frames: torch.Tensor, crop: tuple[int, int] | None) -> torch.Tensor:
    """(3, T, H, W) in [0, 1] -> uint8 (T, H, W', 3). Truncation, not rounding, as the reference writes
    `(255.0 * frame).astype(np.uint8)` (sample_video L99)."""
    if crop is not None:
        left, size = crop
        frames = frames[..., left:left + size]
    return (frames * 255.0).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()


def _find_component(model: Path, explicit: str | Path | None, candidates: list[Path], what: str, flag: str):
    if explicit is not None:
        return explicit
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise InputError(f"no {what} found for model {model}: pass {flag} (looked in: {looked})")


def load_pipeline(
    model: str | Path = "tiny",
    vae: str | Path | None = None,
    audio_encoder: str | Path | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Hallo3Pipeline, "AudioFeatureExtractor"]:
    """The pipeline and its audio feature extractor from a preset name or a checkpoint.

    A preset builds every component with that preset's seeded weights. For a checkpoint path, the VAE and
    the audio encoder are `vae` / `audio_encoder` when given; otherwise they are looked for where the
    Hallo3 release puts them (`pretrained_models/{hallo3, cogvideox-5b-i2v-sat/vae/3d-vae.pt,
    wav2vec/wav2vec2-base-960h}`), or inside the model folder (`vae.safetensors` of a hallo-rt folder,
    `vae/` of a diffusers pipeline, `wav2vec2/`).
    """
    from .audio_features import AudioFeatureExtractor
    from .config import PRESETS
    from .weights import load_dit, load_reference_net, load_vae

    if isinstance(model, str) and model in PRESETS:
        vae_source, audio_source = vae or model, audio_encoder or model
    else:
        root = Path(model)
        folder = root if root.is_dir() else root.parent
        # the release folder holding hallo3/: the model may be hallo3/, hallo3/<iteration>/ or the .pt file
        releases = [folder.parent, folder.parent.parent]
        vae_source = _find_component(root, vae, [folder / "vae.safetensors", folder / "vae"] + [
            r / "cogvideox-5b-i2v-sat" / "vae" / "3d-vae.pt" for r in releases], "VAE", "--vae")
        if Path(vae_source).name == "vae.safetensors":
            vae_source = folder
        audio_source = _find_component(root, audio_encoder, [folder / "wav2vec2"] + [
            r / "wav2vec" / "wav2vec2-base-960h" for r in releases], "audio encoder (wav2vec2)", "--audio-encoder")
    dit = load_dit(model, dtype=dtype, device=device)
    reference_net = load_reference_net(model, dtype=dtype, device=device)
    vae_model = load_vae(vae_source, dtype=dtype, device=device)
    extractor = AudioFeatureExtractor.from_checkpoint(audio_source, dtype=dtype, device=device)
    if extractor.num_layers != dit.config.audio_layers or extractor.encoder.config.hidden_size != dit.config.audio_dim:
        raise InputError(f"audio encoder {audio_source} gives {extractor.num_layers} layers x "
                         f"{extractor.encoder.config.hidden_size}, the denoiser takes {dit.config.audio_layers} x "
                         f"{dit.config.audio_dim}")
    return Hallo3Pipeline(dit, reference_net, vae_model), extractor
