"""The CogVideoX 3D causal VAE (SAT `vae_modules/cp_enc_dec.py`; diffusers `AutoencoderKLCogVideoX`).

Time is causal: every 3x3x3 convolution pads time with the two frames before it, which are the previous
chunk's last two inputs (a cache) or, at the start of a clip, copies of the first frame. The decoder's
GroupNorms take statistics over every frame decoded together, so a clip's output depends on how its
latent frames are grouped; the reference decodes 2 + (F mod 2) latent frames first and then pairs
(`Grouping.for_clip`). `StreamingVaeDecoder` decodes group by group as latents arrive and equals
`CogVideoXVae.decode` on the whole clip whenever the grouping is the same.

Parameter names follow diffusers' module tree, so its folders load as they are; SAT names are renamed
by `hallo_rt.engine.weights.vae_format`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import VaeConfig
from .validation import InputError


class CausalState:
    """What one clip carries between successive decoder (or encoder) calls: the last two inputs of every
    causal convolution, and whether the next call starts the clip."""

    def __init__(self) -> None:
        self.caches: dict[nn.Module, torch.Tensor] = {}
        self.at_start = True


class CausalConv3d(nn.Module):
    """Conv3d, zero-padded in space and causally padded in time (cache, or the first frame repeated)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.time_pad = kernel_size - 1
        pad = kernel_size // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=(0, pad, pad))

    def forward(self, x: torch.Tensor, state: CausalState | None) -> torch.Tensor:
        if self.time_pad:
            past = state.caches.get(self) if state is not None else None
            if past is None:  # start of a clip: SAT's "first" padding repeats frame 0
                past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([past, x], dim=2)  # (B, C, pad + T, H, W)
            if state is not None:
                # clone: a view would keep the whole padded input alive until the next chunk
                state.caches[self] = x[:, :, -self.time_pad:].clone()
        return self.conv(x)


def _split_first(state: CausalState | None, frames: int) -> bool:
    """Whether the first frame of this call is a clip's first frame that maps to one output frame.

    The reference decides by parity (an odd-length group keeps its first frame apart); its groupings only
    ever have an odd length for the clip's first group, so this is the same rule, and a later group of one
    frame (single-frame streaming) is upsampled in time like every other continuation frame."""
    return (state is None or state.at_start) and frames % 2 == 1


class SpatialNorm3D(nn.Module):
    """GroupNorm whose scale and shift come from the latents, nearest-resized to the features (decoder)."""

    def __init__(self, channels: int, latent_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=eps)
        self.conv_y = CausalConv3d(latent_channels, channels, kernel_size=1)
        self.conv_b = CausalConv3d(latent_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, state: CausalState) -> torch.Tensor:
        frames, height, width = f.shape[-3:]
        if _split_first(state, zq.shape[2]) and frames > 1:
            # the clip's first latent frame covers exactly the first feature frame
            zq = torch.cat([F.interpolate(zq[:, :, :1], size=(1, height, width)),
                            F.interpolate(zq[:, :, 1:], size=(frames - 1, height, width))], dim=2)
        else:
            zq = F.interpolate(zq, size=(frames, height, width))
        return self.norm_layer(f) * self.conv_y(zq, state) + self.conv_b(zq, state)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, config: VaeConfig, spatial_norm: bool) -> None:
        super().__init__()
        groups, eps, latent = config.norm_groups, config.norm_eps, config.latent_channels
        if spatial_norm:
            self.norm1 = SpatialNorm3D(in_channels, latent, groups, eps)
            self.norm2 = SpatialNorm3D(out_channels, latent, groups, eps)
        else:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _norm(self, norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None, state) -> torch.Tensor:
        return norm(x, zq, state) if zq is not None else norm(x)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, state: CausalState | None) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, zq, state)), state)
        h = self.conv2(F.silu(self._norm(self.norm2, h, zq, state)), state)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


def _per_frame(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D convolution to every frame of (B, C, T, H, W)."""
    batch, _, frames = x.shape[:3]
    y = conv(x.transpose(1, 2).flatten(0, 1))  # (B*T, C', H', W')
    return y.unflatten(0, (batch, frames)).transpose(1, 2)


class Downsample3D(nn.Module):
    """Halve H and W with a stride-2 conv (asymmetric pad as in the reference); optionally halve time by
    averaging frame pairs, keeping an odd-length input's first frame as it is."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compress_time and x.shape[2] > 1:
            first, rest = (x[:, :, :1], x[:, :, 1:]) if x.shape[2] % 2 == 1 else (x[:, :, :0], x)
            # the mean of each frame pair (avg_pool's arithmetic; CPU avg_pool3d has no fp16/bf16 kernel)
            x = torch.cat([first, (rest[:, :, 0::2] + rest[:, :, 1::2]) / 2], dim=2)
        return _per_frame(self.conv, F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only: torch has no asymmetric pad


class Upsample3D(nn.Module):
    """Nearest 2x in H and W (and in time, except for a clip's first frame), then a 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        if not self.compress_time:
            x = F.interpolate(x, scale_factor=(1, 2, 2))
        elif _split_first(state, x.shape[2]):
            first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2))
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2)) if x.shape[2] > 1 else x[:, :, :0]
            x = torch.cat([first, rest], dim=2) if rest.shape[2] else first
        else:
            x = F.interpolate(x, scale_factor=(2, 2, 2))
        return _per_frame(self.conv, x)


class _Level(nn.Module):
    """One encoder or decoder resolution level: residual blocks, then an optional resampler."""

    def __init__(self, blocks: list[ResnetBlock3D], resampler: nn.Module | None, down: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(blocks)
        if resampler is not None:
            setattr(self, "downsamplers" if down else "upsamplers", nn.ModuleList([resampler]))


class _MidBlock(nn.Module):
    def __init__(self, channels: int, config: VaeConfig, spatial_norm: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, config, spatial_norm) for _ in range(2)])


class Encoder3D(nn.Module):
    """Pixels (B, 3, T, H, W) -> posterior moments (B, 2 * latent, 1 + (T - 1) // 4, H / 8, W / 8)."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        widths = config.block_channels
        self.conv_in = CausalConv3d(config.image_channels, widths[0])
        self.down_blocks = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            blocks = [ResnetBlock3D(previous if i == 0 else width, width, config, spatial_norm=False)
                      for i in range(config.num_res_blocks)]
            last = level == len(widths) - 1
            resampler = None if last else Downsample3D(width, compress_time=level < config.temporal_levels)
            self.down_blocks.append(_Level(blocks, resampler, down=True))
            previous = width
        self.mid_block = _MidBlock(widths[-1], config, spatial_norm=False)
        self.norm_out = nn.GroupNorm(config.norm_groups, widths[-1], eps=config.norm_eps)
        self.conv_out = CausalConv3d(widths[-1], 2 * config.latent_channels)

    def forward(self, x: torch.Tensor, state: CausalState | None = None) -> torch.Tensor:
        # 1. stem
        h = self.conv_in(x, state)
        # 2. levels: residual blocks, then 2x down in space (and in time on the first levels)
        for level in self.down_blocks:
            for block in level.resnets:
                h = block(h, None, state)
            if hasattr(level, "downsamplers"):
                h = level.downsamplers[0](h)
        # 3. middle and head
        for block in self.mid_block.resnets:
            h = block(h, None, state)
        return self.conv_out(F.silu(self.norm_out(h)), state)


class Decoder3D(nn.Module):
    """Latents (B, latent, n, h, w) -> pixels (B, 3, frames, 8h, 8w); 1 + 4(n-1) frames for a clip's first
    group, 4n for later ones."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        widths = tuple(reversed(config.block_channels))
        self.conv_in = CausalConv3d(config.latent_channels, widths[0])
        self.mid_block = _MidBlock(widths[0], config, spatial_norm=True)
        self.up_blocks = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            blocks = [ResnetBlock3D(previous if i == 0 else width, width, config, spatial_norm=True)
                      for i in range(config.num_res_blocks + 1)]
            last = level == len(widths) - 1
            resampler = None if last else Upsample3D(width, compress_time=level < config.temporal_levels)
            self.up_blocks.append(_Level(blocks, resampler, down=False))
            previous = width
        self.norm_out = SpatialNorm3D(widths[-1], config.latent_channels, config.norm_groups, config.norm_eps)
        self.conv_out = CausalConv3d(widths[-1], config.image_channels)

    def forward(self, z: torch.Tensor, state: CausalState) -> torch.Tensor:
        # 1. stem and middle; every norm is conditioned on the latents themselves
        h = self.conv_in(z, state)
        for block in self.mid_block.resnets:
            h = block(h, z, state)
        # 2. levels: residual blocks, then 2x up in space (and in time on the first levels)
        for level in self.up_blocks:
            for block in level.resnets:
                h = block(h, z, state)
            if hasattr(level, "upsamplers"):
                h = level.upsamplers[0](h, state)
        # 3. head
        h = self.conv_out(F.silu(self.norm_out(h, z, state)), state)
        state.at_start = False
        return h


@dataclass(frozen=True)
class Grouping:
    """How latent frames are grouped for decoding: `first` frames, then groups of `then`."""

    first: int = 3
    then: int = 2

    def __post_init__(self) -> None:
        if self.first < 1 or self.then < 1:
            raise ValueError(f"group sizes must be >= 1, got first={self.first}, then={self.then}")

    @classmethod
    def for_clip(cls, latent_frames: int) -> "Grouping":
        """The reference's grouping of a whole clip: 2 + (F mod 2) first, then pairs (13 -> 3, 2, 2, ...).
        SAT `sample_video.py` L392-411; diffusers `AutoencoderKLCogVideoX._decode`."""
        return cls(first=min(max(latent_frames, 1), 2 + latent_frames % 2), then=2)

    def sizes(self, latent_frames: int) -> list[int]:
        """Group sizes covering `latent_frames` (the last group may be shorter)."""
        sizes, done = [], 0
        while done < latent_frames:
            size = min(self.first if not sizes else self.then, latent_frames - done)
            sizes.append(size)
            done += size
        return sizes


REFERENCE_GROUPING = Grouping(3, 2)
"""The reference grouping of Hallo3's 13-latent-frame clips: [0:3], [3:5], ..., [11:13]."""

SINGLE_FRAME_GROUPING = Grouping(1, 1)
"""One latent frame per group: the lowest latency, not the reference's numerics (see the README)."""


def resolve_grouping(grouping: Grouping | str) -> Grouping:
    """A Grouping, or its name: "reference" (3 then pairs) or "single" (one latent frame at a time)."""
    named = {"reference": REFERENCE_GROUPING, "single": SINGLE_FRAME_GROUPING}
    if isinstance(grouping, str):
        if grouping not in named:
            raise ValueError(f"unknown grouping {grouping!r}; choose {', '.join(named)} or a Grouping")
        return named[grouping]
    return grouping


class CogVideoXVae(nn.Module):
    """Encoder and decoder of the CogVideoX 3D causal VAE.

    Latents here are the VAE's own; the denoiser sees `latents * config.scaling_factor`.
    """

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)

    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5:
            raise InputError(f"frames must be a 5-D tensor (B, 3, T, H, W), got {_describe(frames)}")
        step = self.config.spatial_compression
        _, channels, _, height, width = frames.shape
        if channels != self.config.image_channels or height % step or width % step or 0 in frames.shape:
            raise InputError(f"frames must be (B, {self.config.image_channels}, T, H, W) with H and W "
                             f"multiples of {step} and nothing empty, got {tuple(frames.shape)}")
        return frames.to(self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_out.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_out.conv.weight.device

    @torch.no_grad()
    def posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the latents of frames in [-1, 1], each (B, latent, F, H/8, W/8).

        The whole input is encoded in one pass, as SAT does. (diffusers splits inputs longer than nine
        frames into batches of eight, which changes the group-norm statistics; Hallo3 encodes 3 frames.)"""
        moments = self.encoder(self._check_frames(frames))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the reference's DiagonalGaussian clamp

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents of frames (B, 3, T, H, W) in [-1, 1]: a posterior sample (the reference, SAT
        `DiagonalGaussianRegularizer(sample=True)`) or, with `sample=False`, the mean."""
        mean, logvar = self.posterior(frames)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=generator.device if generator is not None else mean.device)
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device)

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            raise InputError(f"latents must be a 5-D tensor (B, C, F, H, W), got {_describe(latents)}")
        if latents.shape[1] != self.config.latent_channels or 0 in latents.shape:
            raise InputError(f"latents must be (B, {self.config.latent_channels}, F, H, W) with nothing empty, "
                             f"got {tuple(latents.shape)}")
        return latents.to(self.dtype)

    @torch.no_grad()
    def decode_group(self, latents: torch.Tensor, state: CausalState) -> torch.Tensor:
        """Decode one group of latent frames, continuing the clip that `state` carries."""
        return self.decoder(self._check_latents(latents), state)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Decode a whole clip (B, C, F, H, W) -> (B, 3, T, 8H, 8W) with the reference grouping, where
        T = 1 + 4(F-1) for odd F (13 -> 49) and 4F for even F (the reference keeps frame 0 apart only in an
        odd-length first group).

        Equal to diffusers' `AutoencoderKLCogVideoX.decode` on the same weights with `clamp=False`; by
        default the frames are clamped to [-1, 1]. Memory is bounded by one group, plus the output."""
        latents = self._check_latents(latents)
        stream = self.stream_decoder(Grouping.for_clip(latents.shape[2]), clamp=clamp)
        return torch.cat([stream.decode(latents), stream.flush()], dim=2)

    def stream_decoder(self, grouping: Grouping | str = REFERENCE_GROUPING,
                       clamp: bool = True) -> "StreamingVaeDecoder":
        """A decoder that takes latent frames as they come (see `StreamingVaeDecoder`)."""
        return StreamingVaeDecoder(self, grouping, clamp)


class GroupedLatentBuffer:
    """The group-by-group buffering shared by every streaming decoder: latent chunks of any length come
    in, each completed group (first, then `then`-sized ones) goes to `_decode_group`.

    Subclasses implement `_decode_group(group) -> frames` (which counts `_groups_done`) and
    `_empty(like) -> frames` (a zero-frame output shaped for `like`)."""

    grouping: Grouping

    def _reset_buffer(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._groups_done = 0
        self._like: torch.Tensor | None = None

    @property
    def buffered_frames(self) -> int:
        """Latent frames received but not decoded yet (waiting for their group to complete)."""
        return sum(chunk.shape[2] for chunk in self._pending)

    def _next_size(self) -> int:
        return self.grouping.first if self._groups_done == 0 else self.grouping.then

    def _decode_ready(self, latents: torch.Tensor) -> torch.Tensor:
        """Buffer checked latents (B, C, n, h, w) and decode every group now complete."""
        self._like = latents[:, :, :0]
        self._pending.append(latents)
        outputs = []
        while self.buffered_frames >= self._next_size():
            pending = torch.cat(self._pending, dim=2)
            size = self._next_size()
            outputs.append(self._decode_group(pending[:, :, :size]))
            self._pending = [pending[:, :, size:]] if pending.shape[2] > size else []
        return torch.cat(outputs, dim=2) if outputs else self._empty(latents)


class StreamingVaeDecoder(GroupedLatentBuffer):
    """Decodes a clip's latent frames chunk by chunk, group by group, carrying the causal caches.

    `decode(chunk)` takes any number (>= 1) of new latent frames (B, C, n, H, W) and returns the pixel
    frames of every group it completed, possibly none (B, 3, 0, 8H, 8W); `flush()` decodes what is left as
    a last, shorter group and ends the clip, after which the decoder starts a new one. Concatenating the
    outputs over any chunking equals `CogVideoXVae.decode` whenever the grouping is the same.
    """

    def __init__(self, vae: CogVideoXVae, grouping: Grouping | str = REFERENCE_GROUPING, clamp: bool = True):
        self.vae, self.grouping, self.clamp = vae, resolve_grouping(grouping), clamp
        self.reset()

    def reset(self) -> None:
        """Forget the caches and any buffered frames; the next frame starts a new clip."""
        self._state = CausalState()
        self._signature: tuple | None = None
        self._reset_buffer()

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        step = self.vae.config.spatial_compression
        batch, _, _, height, width = like.shape
        return like.new_zeros(batch, self.vae.config.image_channels, 0, height * step, width * step)

    def _decode_group(self, group: torch.Tensor) -> torch.Tensor:
        frames = self.vae.decode_group(group, self._state)
        self._groups_done += 1
        return frames.clamp(-1.0, 1.0) if self.clamp else frames

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = self.vae._check_latents(latents)
        signature = (latents.shape[0], latents.shape[3], latents.shape[4], latents.device)
        if self._signature is not None and signature != self._signature:
            raise InputError(f"latent chunk (batch, height, width, device) {signature} differs from this "
                             f"clip's {self._signature}; call flush() or reset() to start another clip")
        self._signature = signature
        return self._decode_ready(latents)

    def flush(self) -> torch.Tensor:
        """Decode the buffered frames (if any) as the clip's last group, then start a new clip."""
        if not self._pending:
            like = self._like
            self.reset()
            if like is None:  # nothing was ever given
                return torch.zeros(0, self.vae.config.image_channels, 0, 0, 0, dtype=self.vae.dtype)
            return self._empty(like)
        pending = torch.cat(self._pending, dim=2)
        frames = self._decode_group(pending)
        self.reset()
        return frames


def _describe(x: object) -> str:
    return f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
