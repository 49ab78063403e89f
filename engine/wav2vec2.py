"""wav2vec2 in plain PyTorch: the audio encoder Hallo3 conditions on (facebook/wav2vec2-base-960h).

Module and parameter names follow transformers' `Wav2Vec2Model`
(transformers/models/wav2vec2/modeling_wav2vec2.py), so a Hugging Face state dict loads key for key; the one
difference is the positional convolution, whose weight-norm pair (g, v) is fused into a plain `weight` at
load time (`engine/weights/wav2vec2_format.py`). Inference only: no dropout, SpecAugment masking, attention
masks or adapters.

One addition, from Hallo3 (`sgm/models/wav2vec.py` L75-77, L196-209): `forward(..., num_frames=F)` resamples
the 50 Hz CNN features linearly to F steps *before* the projection and the transformer, so the encoder
itself runs at the video frame rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Shape and numerics of a wav2vec2 encoder (the subset of transformers' Wav2Vec2Config that inference reads)."""

    name: str = "custom"
    """Human-readable name (a preset name, or where the config came from). Part of the hash."""

    hidden_size: int = 768
    """Transformer width."""

    num_layers: int = 12
    """Transformer layers; the model returns num_layers + 1 hidden states."""

    num_heads: int = 12
    """Self-attention heads; must divide hidden_size."""

    intermediate_size: int = 3072
    """Inner width of each layer's GELU feed-forward."""

    conv_dims: tuple[int, ...] = (512,) * 7
    """Output channels of each CNN feature-extractor layer; the last is the projected feature width."""

    conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    """Kernel size of each CNN layer."""

    conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    """Stride of each CNN layer. Their product (320) is the hop in samples: 50 frames per second at 16 kHz."""

    conv_bias: bool = False
    """Whether the CNN convolutions have a bias (base-960h: no; large-lv60: yes)."""

    feat_extract_norm: Literal["group", "layer"] = "group"
    """CNN normalisation. "group": a per-channel GroupNorm after the first conv only (wav2vec2-base);
    "layer": a LayerNorm over channels after every conv (wav2vec2-large-lv60)."""

    do_stable_layer_norm: bool = False
    """Transformer layer order. False: post-LN layers, LayerNorm applied to the encoder input (base);
    True: pre-LN layers, LayerNorm applied to the encoder output (large-lv60)."""

    pos_conv_kernel: int = 128
    """Kernel of the convolutional positional embedding. Even kernels drop the last output step
    (transformers' `Wav2Vec2SamePadLayer`) so the sequence keeps its length."""

    pos_conv_groups: int = 16
    """Groups of the positional convolution; must divide hidden_size."""

    layer_norm_eps: float = 1e-5
    """Epsilon of the feature-projection and transformer LayerNorms. The CNN's GroupNorm/LayerNorm always use
    torch's default 1e-5, as in transformers."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "pos_conv_kernel",
                     "pos_conv_groups"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.conv_dims or not (len(self.conv_dims) == len(self.conv_kernels) == len(self.conv_strides)):
            raise ValueError(
                f"conv_dims, conv_kernels and conv_strides must be non-empty and equally long, got "
                f"{len(self.conv_dims)}, {len(self.conv_kernels)} and {len(self.conv_strides)}"
            )
        if min(self.conv_dims + self.conv_kernels + self.conv_strides) <= 0:
            raise ValueError("conv_dims, conv_kernels and conv_strides must be positive")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % self.pos_conv_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by pos_conv_groups {self.pos_conv_groups}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")

    @property
    def hop_length(self) -> int:
        """Samples between two CNN output frames (product of the strides; 320 = 20 ms at 16 kHz)."""
        hop = 1
        for stride in self.conv_strides:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Fewest input samples that give one CNN frame (400 = 25 ms at 16 kHz for base)."""
        samples = 1
        for kernel, stride in zip(reversed(self.conv_kernels), reversed(self.conv_strides)):
            samples = (samples - 1) * stride + kernel
        return samples

    def cnn_frames(self, num_samples: int) -> int:
        """CNN output frames for `num_samples` input samples (0 when too short)."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernels, self.conv_strides):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of every field; keys caches of exported audio-encoder artifacts."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], name: str = "hf") -> "Wav2Vec2Config":
        """From a Hugging Face `config.json` dict. Missing keys take transformers' defaults; options this
        implementation does not have (adapters, other activations, other model types) raise ValueError."""
        model_type = raw.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ValueError(f"model_type {model_type!r} is not supported; only 'wav2vec2' is")
        for key in ("hidden_act", "feat_extract_activation"):
            if raw.get(key, "gelu") != "gelu":
                raise ValueError(f"{key}={raw[key]!r} is not supported; only 'gelu' is")
        if raw.get("add_adapter", False) or raw.get("adapter_attn_dim") is not None:
            raise ValueError("wav2vec2 adapters (add_adapter / adapter_attn_dim) are not supported")
        defaults = cls()
        conv_dims = tuple(raw.get("conv_dim", defaults.conv_dims))
        layers = raw.get("num_feat_extract_layers", len(conv_dims))
        if layers != len(conv_dims):
            raise ValueError(f"num_feat_extract_layers={layers} but conv_dim has {len(conv_dims)} entries")
        return cls(
            name=name,
            hidden_size=raw.get("hidden_size", defaults.hidden_size),
            num_layers=raw.get("num_hidden_layers", defaults.num_layers),
            num_heads=raw.get("num_attention_heads", defaults.num_heads),
            intermediate_size=raw.get("intermediate_size", defaults.intermediate_size),
            conv_dims=conv_dims,
            conv_kernels=tuple(raw.get("conv_kernel", defaults.conv_kernels)),
            conv_strides=tuple(raw.get("conv_stride", defaults.conv_strides)),
            conv_bias=bool(raw.get("conv_bias", defaults.conv_bias)),
            feat_extract_norm=raw.get("feat_extract_norm", defaults.feat_extract_norm),
            do_stable_layer_norm=bool(raw.get("do_stable_layer_norm", defaults.do_stable_layer_norm)),
            pos_conv_kernel=raw.get("num_conv_pos_embeddings", defaults.pos_conv_kernel),
            pos_conv_groups=raw.get("num_conv_pos_embedding_groups", defaults.pos_conv_groups),
            layer_norm_eps=float(raw.get("layer_norm_eps", defaults.layer_norm_eps)),
        )


WAV2VEC2_BASE = Wav2Vec2Config(name="wav2vec2-base")
"""facebook/wav2vec2-base-960h, the encoder Hallo3 ships (`pretrained_models/wav2vec/wav2vec2-base-960h`)."""

TINY_AUDIO = Wav2Vec2Config(
    name="tiny",
    hidden_size=32,
    num_layers=4,  # the tiny denoiser's audio_layers
    num_heads=2,
    intermediate_size=64,
    conv_dims=(32,) * 7,  # base kernels and strides, so still 50 Hz frames from 16 kHz audio
    pos_conv_kernel=16,
    pos_conv_groups=4,
)
"""Audio encoder of the `tiny` denoiser preset: 4 layers x 32 wide, matching its audio_layers / audio_dim."""

AUDIO_PRESETS: dict[str, Wav2Vec2Config] = {c.name: c for c in (WAV2VEC2_BASE, TINY_AUDIO)}


class ConvLayer(nn.Module):
    """One CNN feature-extractor layer: conv -> optional norm -> GELU."""

    def __init__(self, cfg: Wav2Vec2Config, index: int) -> None:
        super().__init__()
        in_dim = cfg.conv_dims[index - 1] if index > 0 else 1
        out_dim = cfg.conv_dims[index]
        self.conv = nn.Conv1d(in_dim, out_dim, cfg.conv_kernels[index], stride=cfg.conv_strides[index],
                              bias=cfg.conv_bias)
        self.norm_kind = cfg.feat_extract_norm if (cfg.feat_extract_norm == "layer" or index == 0) else None
        if self.norm_kind == "group":
            # One group per channel: each channel normalised over time (wav2vec2-base's first layer).
            self.layer_norm = nn.GroupNorm(out_dim, out_dim)
        elif self.norm_kind == "layer":
            self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, C, T)
        if self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)  # normalised over C
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    """The CNN: raw samples (B, S) -> features (B, C, T50)."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(ConvLayer(cfg, i) for i in range(len(cfg.conv_dims)))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples[:, None]  # (B, 1, S)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T50)


class FeatureProjection(nn.Module):
    """LayerNorm over the CNN channels, then a linear map to the transformer width."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dims[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dims[-1], cfg.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(features))  # (B, T, C) -> (B, T, D)


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time + GELU, added to the encoder input. `conv.weight` is the weight-norm product
    g * v / ||v|| (norm over all dims but the kernel axis, dim=2) computed once at load time."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        kernel = cfg.pos_conv_kernel
        self.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel, padding=kernel // 2,
                              groups=cfg.pos_conv_groups)
        # padding k//2 on both sides yields T+1 steps for an even kernel; the extra last one is dropped.
        self.remove_last = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, D, T + remove_last)
        if self.remove_last:
            y = y[:, :, :-self.remove_last]
        return F.gelu(y).transpose(1, 2)  # (B, T, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (all with bias), no mask."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        dim = cfg.hidden_size
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        heads = (B, T, self.num_heads, D // self.num_heads)
        q = self.q_proj(x).view(heads).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh); scale Dh^-0.5 as in transformers
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN (base) or pre-LN ("stable", large-lv60) transformer layer."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = SelfAttention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    """Positional conv + LayerNorm + layers. Returns every hidden state, as transformers 5 records them:
    [encoder input (after the positional conv, and after the LayerNorm in the post-LN variant), output of
    layer 1, ..., output of layer N]."""

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        # Post-LN: normalises the encoder input. Pre-LN: normalises the output; transformers applies it to
        # `last_hidden_state` only (hidden_states[-1] stays un-normalised in transformers 5; 4.x normalised
        # it), so it is not part of what `forward` returns here: see `Wav2Vec2Model.last_hidden_state`.
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x + self.pos_conv_embed(x)  # (B, T, D)
        if not self.pre_norm:
            x = self.layer_norm(x)
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        return tuple(states)  # num_layers + 1 of (B, T, D)


class Wav2Vec2Model(nn.Module):
    """wav2vec2 encoder: samples (B, S) at 16 kHz -> num_layers + 1 hidden states (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = TransformerEncoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.feature_projection.projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.feature_projection.projection.weight.device

    def forward(self, input_values: torch.Tensor, num_frames: int | None = None) -> tuple[torch.Tensor, ...]:
        """`input_values` (B, S), normalised samples. `num_frames`: resample the CNN features to this many
        steps first (Hallo3); None keeps the native rate, T = config.cnn_frames(S).

        Returns hidden_states: hidden_states[0] is the transformer input, hidden_states[i] the output of
        layer i, each (B, T, D) with T = num_frames or the native frame count.
        """
        # 1. CNN features at the native rate (50 Hz for 16 kHz input)
        features = self.feature_extractor(input_values)  # (B, C, T50)

        # 2. Hallo3's resampling to the video frame rate; align_corners=True maps the first and last CNN
        #    frames onto the first and last output steps (sgm/models/wav2vec.py L196-209).
        if num_frames is not None:
            features = F.interpolate(features, size=num_frames, mode="linear", align_corners=True)  # (B, C, F)

        # 3. projection to the transformer width
        hidden = self.feature_projection(features.transpose(1, 2))  # (B, T, D)

        # 4. transformer, keeping every layer's output
        return self.encoder(hidden)

    def last_hidden_state(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """transformers' `last_hidden_state` from `forward`'s output: the last hidden state, through the
        encoder's final LayerNorm in the pre-LN ("stable") variant."""
        if self.config.do_stable_layer_norm:
            return self.encoder.layer_norm(hidden_states[-1])
        return hidden_states[-1]
