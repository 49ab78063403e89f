"""Model configurations: frozen dataclasses (denoiser, VAE), named presets, and stable hashes.

The field values of the `hallo3` presets are the released model's (see
`shared/research/hallo-model-spec.md` sections 2-4 and 6). Variants are made with
`dataclasses.replace`, never by mutating a config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DiTConfig:
    """Shape and numerics of a CogVideoX-style expert DiT with Hallo3's conditioning modules."""

    name: str = "custom"
    """Human-readable name (a preset name, or where the config came from). Part of the hash."""

    num_layers: int = 42
    """Number of transformer blocks."""

    num_heads: int = 48
    """Attention heads in self-attention and in the face/audio cross-attention."""

    head_dim: int = 64
    """Channels per head. Must be divisible by 8: 3D RoPE splits it t/h/w = 1/4, 3/8, 3/8."""

    mlp_dim: int = 12288
    """Inner width of the tanh-GELU MLP."""

    time_embed_dim: int = 512
    """Width of the timestep embedding that drives every adaLN modulation."""

    text_dim: int = 4096
    """Width of the raw text-encoder outputs (T5-XXL: 4096), projected inside the model."""

    text_len: int = 226
    """Number of text tokens the learned positional embedding was trained with."""

    patch_size: int = 2
    """Spatial patch size (no temporal patching in CogVideoX 1.0)."""

    in_channels: int = 32
    """Input latent channels: 16 noisy + 16 conditioning (I2V channel concat)."""

    out_channels: int = 16
    """Output latent channels (the v-prediction)."""

    latent_frames: int = 13
    """Latent frames of one clip (49 video frames at 4x temporal compression)."""

    latent_height: int = 60
    """Latent height of one clip (480 px / 8)."""

    latent_width: int = 90
    """Latent width of one clip (720 px / 8)."""

    learned_pos_embed: bool = True
    """Learned absolute positional embedding over text + video tokens (the I2V variant)."""

    rope_theta: float = 10000.0
    """RoPE base frequency."""

    norm_eps: float = 1e-5
    """Epsilon of the block LayerNorms (input, post-attention, face/audio pre-norms) and the final LayerNorm.
    SAT: its layer factory passes `layernorm_epsilon` (default 1e-5), which overrides the partial's 1e-6."""

    qk_norm_eps: float = 1e-6
    """Epsilon of the per-head QK-LayerNorms (SAT and diffusers both use 1e-6)."""

    out_norm_eps: float = 1e-6
    """Epsilon of the final layer's modulated LayerNorm. SAT: 1e-6; diffusers: its `norm_eps` (1e-5)."""

    face_cross_attention: bool = True
    """Hallo3's per-latent-frame face cross-attention (and the face projection)."""

    face_embed_dim: int = 512
    """Raw face embedding width (ArcFace: 512)."""

    face_tokens: int = 4
    """Face tokens produced by the face projection."""

    face_token_dim: int = 1024
    """Width of each face token (the cross-attention key/value input width)."""

    audio_cross_attention: bool = True
    """Hallo3's per-latent-frame audio cross-attention (and the audio projection)."""

    audio_window: int = 5
    """Audio feature frames stacked per video frame (+-2)."""

    audio_layers: int = 12
    """Audio-encoder hidden states stacked per frame (wav2vec2-base: 12)."""

    audio_dim: int = 768
    """Width of each audio-encoder hidden state."""

    audio_hidden_dim: int = 512
    """Width of the audio projection MLP."""

    audio_tokens: int = 32
    """Audio tokens per latent frame after the projection."""

    audio_token_dim: int = 768
    """Width of each audio token (the cross-attention key/value input width)."""

    proj_norm_eps: float = 1e-5
    """Epsilon of the LayerNorms closing the face and audio projections (torch default in the reference)."""

    extra: tuple[tuple[str, Any], ...] = field(default=())
    """Free-form provenance (e.g. the source format); part of the hash, never read by the model."""

    def __post_init__(self) -> None:
        if self.head_dim % 8 != 0:
            raise ValueError(f"head_dim must be divisible by 8 for the 3D RoPE split, got {self.head_dim}")
        for name in ("num_layers", "num_heads", "mlp_dim", "time_embed_dim", "text_dim", "patch_size",
                     "in_channels", "out_channels", "latent_frames", "latent_height", "latent_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.text_len < 0:
            raise ValueError(f"text_len must be >= 0, got {self.text_len}")
        if self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            raise ValueError(
                f"latent size {self.latent_height}x{self.latent_width} is not divisible by patch_size {self.patch_size}"
            )

    @property
    def hidden_dim(self) -> int:
        """Model width: heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Channels of each head given to the t, h, w rotary axes (64 -> 16, 24, 24)."""
        return self.head_dim // 4, self.head_dim // 8 * 3, self.head_dim // 8 * 3

    @property
    def tokens_per_frame(self) -> int:
        """Video tokens per latent frame after patching."""
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    @property
    def video_frames(self) -> int:
        """Video frames of one clip: (latent_frames - 1) * 4 + 1."""
        return (self.latent_frames - 1) * 4 + 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["extra"] = [list(item) for item in self.extra]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig fields: {unknown}")
        data = dict(data)
        if "extra" in data:
            data["extra"] = tuple(tuple(item) for item in data["extra"])
        return cls(**data)

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of every field; keys caches of exported and built artifacts."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


HALLO3 = DiTConfig(name="hallo3")
"""The released Hallo3 denoiser: CogVideoX-5B-I2V + face and audio cross-attention, 480x720, 13 latent frames."""

COGVIDEOX_5B_I2V = dataclasses.replace(
    HALLO3, name="cogvideox-5b-i2v", face_cross_attention=False, audio_cross_attention=False
)
"""The plain CogVideoX-5B-I2V backbone (also the reference network's architecture)."""

TINY = DiTConfig(
    name="tiny",
    num_layers=2,
    num_heads=2,
    head_dim=32,
    mlp_dim=256,
    time_embed_dim=64,
    text_dim=64,
    text_len=16,
    latent_frames=13,
    latent_height=16,  # 128 px
    latent_width=16,
    face_tokens=4,
    face_token_dim=64,
    audio_window=5,
    audio_layers=4,
    audio_dim=32,
    audio_hidden_dim=64,
    audio_tokens=4,
    audio_token_dim=64,
)
"""Same topology as `hallo3`, sized for a 2-core CPU: 128x128 px, 64 tokens per latent frame."""

PRESETS: dict[str, DiTConfig] = {c.name: c for c in (HALLO3, COGVIDEOX_5B_I2V, TINY)}


def get_preset(name: str) -> DiTConfig:
    """Look a preset up by name; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def _config_to_dict(config) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class VaeConfig:
    """Shape and numerics of the CogVideoX 3D causal VAE (SAT `vae_modules/cp_enc_dec.py`)."""

    name: str = "custom"
    """Human-readable name (a preset name, or where the config came from). Part of the hash."""

    image_channels: int = 3
    """Pixel channels in and out (RGB)."""

    latent_channels: int = 16
    """Latent channels (the encoder emits twice as many: posterior mean and log-variance)."""

    base_channels: int = 128
    """Channels of the first encoder level (`ch` in SAT)."""

    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    """Per-level width multipliers (`ch_mult`): 128, 256, 256, 512. One level = one 2x spatial step."""

    num_res_blocks: int = 3
    """Residual blocks per encoder level; the decoder has one more per level (SAT and diffusers alike)."""

    norm_groups: int = 32
    """GroupNorm groups. SAT hard-codes 32; the decoder's norms take statistics over all frames decoded
    together, which is why the decode grouping is part of the model's output."""

    norm_eps: float = 1e-6
    """Epsilon of every GroupNorm."""

    temporal_compression: int = 4
    """Temporal compression (a power of two): the first log2 levels also halve time, keeping frame 0."""

    scaling_factor: float = 0.7
    """Latents given to the denoiser are `encode(x) * scaling_factor`; decode takes `z / scaling_factor`.
    0.7 is CogVideoX-5B's value (`configs/cogvideox_5b_i2v_s2.yaml` L2; diffusers' vae/config.json)."""

    def __post_init__(self) -> None:
        if not self.channel_multipliers:
            raise ValueError("channel_multipliers must not be empty")
        levels = len(self.channel_multipliers) - 1
        compression = self.temporal_compression
        if compression < 1 or compression & (compression - 1) or compression.bit_length() - 1 > levels:
            raise ValueError(f"temporal_compression must be a power of two <= 2**{levels}, got {compression}")
        for width in self.block_channels:
            if width % self.norm_groups:
                raise ValueError(f"channel width {width} is not divisible by norm_groups {self.norm_groups}")

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Channel width of each encoder level (the decoder walks them in reverse)."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along height and width (8 for four levels)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def temporal_levels(self) -> int:
        """How many levels also compress time (log2 of temporal_compression)."""
        return self.temporal_compression.bit_length() - 1

    def to_dict(self) -> dict[str, Any]:
        return _config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VaeConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VaeConfig fields: {unknown}")
        data = dict(data)
        if "channel_multipliers" in data:
            data["channel_multipliers"] = tuple(data["channel_multipliers"])
        return cls(**data)

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of every field."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


VAE_HALLO3 = VaeConfig(name="hallo3")
"""The CogVideoX-5B(-I2V) VAE that Hallo3 uses (`cogvideox-5b-i2v-sat/vae/3d-vae.pt`)."""

VAE_TINY = VaeConfig(name="tiny", base_channels=8, channel_multipliers=(1, 2, 4, 8), num_res_blocks=1, norm_groups=4)
"""Same topology (four levels, two of them temporal, spatial norms, causal convs), sized to stream at video
rate on a 2-core CPU: widths 8, 16, 32, 64 (narrow where the resolution is high, where the decoder spends
its time) and one residual block per encoder level (two per decoder level). Its narrow full-resolution
layers fall under PyTorch's CPU heuristic that sends small 3D convolutions (B*C*T*H <= 20480) to the slow
`slow_conv3d`; `engine.cpu_convolutions.small_cpu_convolutions` (applied by `load_pipeline` on CPU) runs
those through oneDNN's 2D path instead: 21 ms per decoded 128 x 128 frame instead of 60 ms
(`benchmarks/README.md`, "Resizing tiny")."""

VAE_PRESETS: dict[str, VaeConfig] = {c.name: c for c in (VAE_HALLO3, VAE_TINY)}


def get_vae_preset(name: str) -> VaeConfig:
    """Look a VAE preset up by name; the error lists the known ones."""
    try:
        return VAE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown VAE preset {name!r}; known presets: {', '.join(sorted(VAE_PRESETS))}") from None
