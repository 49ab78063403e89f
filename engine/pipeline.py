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

from .chunks import ChunkedGenerator, ChunkSettings, pad_frames
from .dit import HalloDiT
from .reference import ReferenceNet
from .reference_image import PreparedReference
from .sampling import SamplerConfig
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

    def encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels (1, 3, T, H, W) -> scaled latents (1, F, C, h, w), a posterior sample as in SAT."""
        latents = self.vae.encode(frames.to(self.vae.device), sample=True, generator=generator)
        return (latents * self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4).to(self.dit.dtype)

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
        chunk: ChunkSettings | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the video clip by clip as uint8 frames (T, H, W, 3), `num_frames` frames in all.

        audio_features (frames, window, layers, dim), one per 25 fps video frame; Hallo3 pads them to a
        multiple of the clip length and trims the video to the unpadded count, which is `num_frames`
        (default: all feature frames). Clips whose frames would all be trimmed are not generated (the
        reference generates and discards them; earlier clips do not depend on them).
        face_embedding (face_embed_dim,) or (1, ...); text_embeds (text_len, text_dim) or (1, ...).
        `chunk`: how the video is cut and chained (default: Hallo3's clips of the model's latent frames with
        pixel motion); a latent-motion setting runs the streaming models' loop over the whole file."""
        cfg = self.dit.config
        expected = (cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
        if audio_features.ndim != 4 or tuple(audio_features.shape[1:]) != expected or audio_features.shape[0] < 1:
            raise InputError(f"audio features must be (frames >= 1, {', '.join(map(str, expected))}), "
                             f"got {tuple(audio_features.shape)}")
        length = audio_features.shape[0] if num_frames is None else num_frames
        if not 1 <= length <= audio_features.shape[0]:
            raise InputError(f"num_frames must be in 1..{audio_features.shape[0]} (the audio feature frames), "
                             f"got {num_frames}")
        settings = chunk or ChunkSettings(chunk_latents=cfg.latent_frames, motion="pixel",
                                          motion_frames=motion.motion_frames, mask_rate=motion.mask_rate)
        # 1. what never changes: first conditioning latent, reference bank (once per video, not per clip)
        stream = ChunkedGenerator(self, reference, face_embedding, text_embeds, settings, sampler, generator)
        clips = chunk_count(stream, length)
        emitted = taken = 0
        for clip in range(clips):
            # 2. denoise one clip on its new audio frames (a short last clip repeats its last frame)
            new = stream.new_frames()
            features = pad_frames(audio_features[taken:taken + new], new)
            taken += new
            step_progress = (lambda step, steps, c=clip: progress(c, clips, step, steps)) if progress else False
            latents = stream.denoise(features, progress=step_progress)
            # 3. decode; the last frames condition the next clip; emit the new frames, trimmed to the audio
            frames = stream.decode(latents)[:, :length - emitted]  # (3, T, H, W) in [-1, 1]
            emitted += frames.shape[1]
            yield to_uint8(frames, reference.crop)


def chunk_count(stream: ChunkedGenerator, frames: int) -> int:
    """Chunks `stream` needs for `frames` new frames (its first chunk may add a different number)."""
    first, then = stream.new_frames(0), stream.new_frames(1)
    return 1 + max(0, math.ceil((frames - first) / then))


def to_uint8(frames: torch.Tensor, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """Decoded frames (3, T, H, W) in [-1, 1] -> uint8 (T, H, W', 3) on the CPU, cropped to (left, width).

    As the reference: to [0, 1] in fp32 and clamped (sample_video L409), then truncated, not rounded, as it
    writes `(255.0 * frame).astype(np.uint8)` (L99)."""
    if crop is not None:
        left, size = crop
        frames = frames[..., left:left + size]
    unit = ((frames.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return (unit * 255.0).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()


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
    """The pipeline and its audio feature extractor from a model name (`demo`), a preset name or a checkpoint.

    A preset builds every component with that preset's seeded weights. For a checkpoint path, the VAE and
    the audio encoder are `vae` / `audio_encoder` when given; otherwise they are looked for where the
    Hallo3 release puts them (`pretrained_models/{hallo3, cogvideox-5b-i2v-sat/vae/3d-vae.pt,
    wav2vec/wav2vec2-base-960h}`), or inside the model folder (`vae.safetensors` of a hallo-rt folder,
    `vae/` of a diffusers pipeline, `wav2vec2/`). On CPU the VAE's small convolutions take oneDNN's 2D
    route (`small_cpu_convolutions`: the same maths, summed in another order).
    """
    from .audio_features import AudioFeatureExtractor
    from .config import PRESETS
    from .models import resolve_model
    from .weights import load_dit, load_reference_net, load_vae

    model = resolve_model(model)  # `demo` -> its folder in the package
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
    if torch.device(device).type == "cpu":
        from .cpu_convolutions import small_cpu_convolutions

        vae_model = small_cpu_convolutions(vae_model)  # same maths; see its docstring
    extractor = AudioFeatureExtractor.from_checkpoint(audio_source, dtype=dtype, device=device)
    if extractor.num_layers != dit.config.audio_layers or extractor.encoder.config.hidden_size != dit.config.audio_dim:
        raise InputError(f"audio encoder {audio_source} gives {extractor.num_layers} layers x "
                         f"{extractor.encoder.config.hidden_size}, the denoiser takes {dit.config.audio_layers} x "
                         f"{dit.config.audio_dim}")
    return Hallo3Pipeline(dit, reference_net, vae_model), extractor
