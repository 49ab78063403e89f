"""Chunked autoregressive generation: the one loop behind `hallo-rt generate` and the streaming sessions.

A stream is a sequence of chunks of `chunk_latents` latent frames. Everything that never changes in a
stream is computed once when it starts (`ChunkedGenerator`): the first chunk's conditioning latent, the
reference latent and its bank in the form attention consumes (`ReferenceKV`), the face and text inputs.
What links chunk k to chunk k + 1 is the motion conditioning, a pluggable strategy:

  pixel   Hallo3 (`sample_video.py` L347-427): every chunk is a clip of 4F - 3 video frames whose first
          `motion_frames` repeat the end of the previous clip; those last decoded frames, with random pixel
          dropout, are VAE-encoded with the reference into the next clip's conditioning latent. Decoding
          is on the critical path. Chunk 0..13-latent clips reproduce the offline pipeline exactly.
  latent  for streaming-distilled models: the previous chunk's last `motion_latents` latent frames are the
          next chunk's conditioning latent, so the next chunk starts as soon as the last one is denoised;
          one causal VAE decoder runs over the whole stream (each latent frame -> 4 new video frames).

Random numbers are drawn in Hallo3's order from one generator: the first chunk's pixel-dropout mask and
conditioning posterior sample, the reference latent's posterior sample, then per chunk (pixel mode) the
mask and posterior of its conditioning, and the sampler's noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch

from .sampling import Conditioning, SamplerConfig, sample
from .vae import Grouping

if TYPE_CHECKING:
    from .pipeline import Hallo3Pipeline
    from .reference_image import PreparedReference


@dataclass(frozen=True)
class ChunkSettings:
    """How a stream is cut into chunks and how each chunk is conditioned on the one before."""

    chunk_latents: int = 3
    """Latent frames denoised together (1 latent frame = 4 video frames = 160 ms at 25 fps)."""

    motion: Literal["pixel", "latent"] = "pixel"
    """`pixel`: Hallo3's re-encoded motion frames; `latent`: the previous chunk's latent frames."""

    motion_frames: int = 2
    """pixel: decoded frames carried into the next chunk (Hallo3 `n_motion_frame = 2`)."""

    mask_rate: float = 0.1
    """Share of pixels dropped from the motion frames before encoding (Hallo3 `mask_rate = 0.1`)."""

    motion_latents: int = 1
    """latent: latent frames of the previous chunk placed at the start of the conditioning latent."""

    motion_noise: float = 0.0
    """latent: std of the Gaussian noise added to those carried latent frames (drawn from the stream's generator);
    0 carries them exactly. Meant for models trained with noised motion latents. The demo avatar measured worse
    with it (train/README.md, "Results") and runs with 0."""

    motion_anchor: float = 0.0
    """latent: blend the carried latent frames this far toward the stream's first conditioning latent frame
    (the portrait, encoded) before the noise: (1 - a) * carried + a * portrait. Each chunk then passes on only
    a (1 - a) share of its errors, which bounds the drift of a model that amplifies them; 0 carries them as
    they are. Meant for models trained with the same blend (`train_denoiser --motion-anchor`)."""

    def __post_init__(self) -> None:
        if self.motion not in ("pixel", "latent"):
            raise ValueError(f"motion must be 'pixel' or 'latent', got {self.motion!r}")
        if not isinstance(self.chunk_latents, int) or self.chunk_latents < 1:
            raise ValueError(f"chunk_latents must be a positive integer, got {self.chunk_latents!r}")
        if self.motion == "pixel" and (self.chunk_latents < 3 or self.chunk_latents % 2 == 0):
            # a clip of F latents decodes to 4F - 3 frames only for odd F (the causal VAE keeps frame 0
            # apart only in an odd first group); F = 1 would leave no frame beyond the motion frames
            raise ValueError(f"pixel motion needs an odd chunk_latents >= 3 (clips of 4F - 3 frames, as "
                             f"Hallo3's 13), got {self.chunk_latents}; use motion='latent' for other lengths")
        if self.motion_frames < 1 or (self.motion == "pixel" and self.clip_frames <= self.motion_frames):
            raise ValueError(f"motion_frames must be in 1..{4 * self.chunk_latents - 4}, got {self.motion_frames}")
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {self.mask_rate}")
        if not 1 <= self.motion_latents <= self.chunk_latents:
            raise ValueError(f"motion_latents must be in 1..chunk_latents={self.chunk_latents}, "
                             f"got {self.motion_latents}")
        if not (isinstance(self.motion_noise, (int, float)) and 0.0 <= self.motion_noise < float("inf")):
            raise ValueError(f"motion_noise must be a finite number >= 0, got {self.motion_noise!r}")
        if not (isinstance(self.motion_anchor, (int, float)) and 0.0 <= self.motion_anchor < 1.0):
            raise ValueError(f"motion_anchor must be a number in [0, 1), got {self.motion_anchor!r}")

    @property
    def clip_frames(self) -> int:
        """Video frames of one pixel-mode clip: 4F - 3 (49 for 13 latent frames)."""
        return 4 * self.chunk_latents - 3

    def compute_hash(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


def pad_frames(features: torch.Tensor, count: int) -> torch.Tensor:
    """`features` (n >= 1, ...) extended to `count` frames by repeating the last (Hallo3 pads a short last
    clip this way, sample_video L365-371)."""
    if features.shape[0] >= count:
        return features[:count]
    return torch.cat([features, features[-1:].expand(count - features.shape[0], *features.shape[1:])])


class MotionConditioning(ABC):
    """What links chunk k to the chunks before it: the conditioning latent, the audio the denoiser sees,
    and how the chunk's latents become new video frames."""

    needs_decoded_frames: bool
    """True when chunk k + 1's conditioning needs chunk k decoded first (decoding on the critical path)."""

    def __init__(self, generator: "ChunkedGenerator") -> None:
        self.gen = generator
        self.settings = generator.settings

    @abstractmethod
    def new_frames(self, chunk: int) -> int:
        """Video frames chunk `chunk` adds to the stream."""

    @abstractmethod
    def denoiser_audio(self, chunk: int, features: torch.Tensor) -> torch.Tensor:
        """The chunk's new audio features (new_frames(chunk), ...) -> the denoiser's audio input."""

    @abstractmethod
    def conditioning(self, chunk: int) -> torch.Tensor:
        """The conditioning latent (1, F, C, h, w) of chunk `chunk` > 0."""

    def after_denoise(self, latents: torch.Tensor) -> None:
        """Called with every chunk's latents (1, F, C, h, w) right after denoising."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A chunk's latents -> its new video frames (3, new_frames, H, W) in [-1, 1], in chunk order."""


class PixelMotion(MotionConditioning):
    """Hallo3: clips of 4F - 3 frames, the first `motion_frames` repeating the previous clip's end."""

    needs_decoded_frames = True

    def __init__(self, generator: "ChunkedGenerator") -> None:
        super().__init__(generator)
        s = self.settings
        self._prefix: torch.Tensor | None = None  # the previous clip's last motion_frames audio frames
        self._motion_pixels: torch.Tensor | None = None  # (1, 3, m, H, W) in [-1, 1], the VAE's dtype
        self._grouping = Grouping.for_clip(s.chunk_latents)

    def new_frames(self, chunk: int) -> int:
        return self.settings.clip_frames - self.settings.motion_frames

    def denoiser_audio(self, chunk: int, features: torch.Tensor) -> torch.Tensor:
        m = self.settings.motion_frames
        if self._prefix is None:
            self._prefix = features.new_zeros(m, *features.shape[1:])  # zeros before the first clip
        audio = torch.cat([self._prefix, features], dim=0)  # (clip_frames, window, layers, dim)
        self._prefix = audio[-m:]
        return audio

    def conditioning(self, chunk: int) -> torch.Tensor:
        if self._motion_pixels is None:
            raise RuntimeError(f"chunk {chunk} needs the previous chunk decoded first (pixel motion)")
        motion, self._motion_pixels = self._motion_pixels, None
        return self.gen.conditioning_latent(motion)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        gen, m = self.gen, self.settings.motion_frames
        vae = gen.pipeline.vae
        # multiply by the reciprocal, as the reference does (x / s and x * (1 / s) round differently)
        pixels = vae.decode(latents.permute(0, 2, 1, 3, 4) * (1.0 / vae.config.scaling_factor))[0]  # (3, T, H, W)
        # the reference maps to [0, 1] before reuse, then casts and maps back, in this order (L415-416)
        unit = ((pixels[:, -m:].float() + 1.0) / 2.0).clamp(0.0, 1.0)
        self._motion_pixels = unit[None].to(vae.dtype) * 2 - 1
        return pixels[:, m:]


class LatentMotion(MotionConditioning):
    """The previous chunk's last latent frames condition the next; one decoder over the whole stream."""

    needs_decoded_frames = False

    def __init__(self, generator: "ChunkedGenerator") -> None:
        super().__init__(generator)
        F = self.settings.chunk_latents
        self._last: torch.Tensor | None = None
        self._decoder = generator.pipeline.vae.stream_decoder(Grouping(first=F, then=F))

    def new_frames(self, chunk: int) -> int:
        return latent_chunk_frames(self.settings.chunk_latents, first=chunk == 0)

    def denoiser_audio(self, chunk: int, features: torch.Tensor) -> torch.Tensor:
        return features

    def conditioning(self, chunk: int) -> torch.Tensor:
        m = self.settings.motion_latents
        concat = torch.zeros_like(self._last)
        concat[:, :m] = self._last[:, -m:]
        a = self.settings.motion_anchor
        if a:
            anchor = self.gen.anchor_latent.to(concat.device, torch.float32)
            concat[:, :m] = ((1.0 - a) * concat[:, :m].float() + a * anchor).to(concat.dtype)
        sigma = self.settings.motion_noise
        if sigma:
            gen = self.gen.generator
            noise = torch.randn(concat[:, :m].shape, generator=gen, device=gen.device, dtype=torch.float32)
            concat[:, :m] = (concat[:, :m].float() + sigma * noise.to(concat.device)).to(concat.dtype)
        return concat

    def after_denoise(self, latents: torch.Tensor) -> None:
        self._last = latents.to(self.gen.pipeline.dit.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.gen.pipeline.vae
        return self._decoder.decode(latents.permute(0, 2, 1, 3, 4) * (1.0 / vae.config.scaling_factor))[0]


def latent_chunk_frames(chunk_latents: int, first: bool) -> int:
    """Video frames a latent-motion chunk adds: 4F, except a stream's first chunk when F is odd, whose first
    latent frame decodes to one video frame (the causal VAE keeps frame 0 apart in an odd first group)."""
    return 4 * chunk_latents - 3 if first and chunk_latents % 2 else 4 * chunk_latents


MOTION_MODES: dict[str, type[MotionConditioning]] = {"pixel": PixelMotion, "latent": LatentMotion}


class ChunkedGenerator:
    """One stream's state: the constants computed at its start and the motion state between chunks.

    `denoise(features)` turns the next chunk's new audio features into latents; `decode(latents)` turns
    them into new video frames. Calls come in chunk order; in pixel mode chunk k must be decoded before
    chunk k + 1 is denoised (`motion.needs_decoded_frames`)."""

    def __init__(
        self,
        pipeline: "Hallo3Pipeline",
        reference: "PreparedReference",
        face_embedding: torch.Tensor,
        text_embeds: torch.Tensor,
        settings: ChunkSettings = ChunkSettings(),
        sampler: SamplerConfig = SamplerConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        dit, vae = pipeline.dit, pipeline.vae
        self.pipeline, self.settings, self.sampler = pipeline, settings, sampler
        self.generator = generator or torch.Generator().manual_seed(0)
        device, dtype = dit.device, dit.dtype
        self.face = face_embedding.reshape(1, -1).to(device, dtype)
        self.text = text_embeds.reshape(1, *text_embeds.shape[-2:]).to(device, dtype)
        self.image = reference.image.to(vae.device, vae.dtype)  # (1, 3, H, W) in [-1, 1]
        self.crop = reference.crop
        # 1. the first chunk's motion frames are the reference image itself
        motion = self.image[:, :, None].expand(-1, -1, settings.motion_frames, -1, -1)
        self._first_concat = self.conditioning_latent(motion)
        # 2. the reference latent and its bank, once per stream, kept as attention consumes it
        ref_latent = pipeline.encode(reference.face_image.to(self.image)[:, :, None], self.generator)
        bank = pipeline.reference_net(ref_latent.to(device))
        if hasattr(dit, "reference_kv"):  # graph backends take the raw bank
            bank = dit.reference_kv(bank, batch=2 if sampler.cfg_scale != 1.0 else 1)
        self.bank = bank
        self.motion = MOTION_MODES[settings.motion](self)
        self.chunks_denoised = 0

    @property
    def anchor_latent(self) -> torch.Tensor:
        """(1, 1, C, h, w): the first chunk's conditioning latent frame (the portrait with its pixel-dropout
        copies, encoded), toward which `ChunkSettings.motion_anchor` pulls the carried latents."""
        return self._first_concat[:, :1]

    def conditioning_latent(self, motion: torch.Tensor) -> torch.Tensor:
        """[reference, motion frames with random pixel dropout] -> one latent frame, then zero frames
        (sample_video L256-263 and L413-419; `add_mask_to_first_frame` L189-200). (1, F, C, h, w)."""
        height, width = motion.shape[-2:]
        gen = self.generator
        # compared in the frames' dtype, as the reference does (in bf16, 0.1 itself rounds to 0.10009765625)
        keep = torch.rand((height, width), generator=gen, device=gen.device).to(motion.dtype) > self.settings.mask_rate
        masked = motion * keep.to(motion.device, motion.dtype)
        first = self.pipeline.encode(torch.cat([self.image[:, :, None], masked], dim=2), gen)  # (1, 1, C, h, w)
        zeros = first.new_zeros(1, self.settings.chunk_latents - first.shape[1], *first.shape[2:])
        return torch.cat([first, zeros], dim=1)

    def new_frames(self, chunk: int | None = None) -> int:
        """Video frames chunk `chunk` (default: the next) adds."""
        return self.motion.new_frames(self.chunks_denoised if chunk is None else chunk)

    @torch.no_grad()
    def denoise(self, features: torch.Tensor, progress: Callable[[int, int], None] | bool = False,
                on_start: Callable[[], None] | None = None) -> torch.Tensor:
        """The next chunk's new audio features (new_frames(), window, layers, dim) -> latents (1, F, C, h, w).
        `progress` and `on_start` go to `sample` (per-step callback; called before the first step)."""
        chunk, dit = self.chunks_denoised, self.pipeline.dit
        expected = self.new_frames()
        if features.shape[0] != expected:
            raise ValueError(f"chunk {chunk} takes {expected} audio feature frames, got {features.shape[0]}")
        concat = self._first_concat if chunk == 0 else self.motion.conditioning(chunk)
        audio = self.motion.denoiser_audio(chunk, features.to(dit.device, dit.dtype))
        cond = Conditioning(concat_latent=concat.to(dit.device), text_embeds=self.text, audio=audio[None],
                            face=self.face, ref_bank=self.bank)
        latents = sample(dit, cond, self.sampler, generator=self.generator, progress=progress, on_start=on_start)
        self.motion.after_denoise(latents)
        self.chunks_denoised += 1
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A chunk's latents -> its new video frames (3, T, H, W) in [-1, 1], uncropped."""
        return self.motion.decode(latents)
