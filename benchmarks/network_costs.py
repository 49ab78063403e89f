"""FLOPs and bytes of one call of each network of the Hallo3 pipeline: the denoiser step, the reference
network and its K/V, the VAE encoder and decoder, the wav2vec2 audio encoder, and the frame conversion.

Counted from the model code (engine/dit.py, engine/conditioning.py, engine/reference.py, engine/vae.py,
engine/wav2vec2.py) layer by layer, for any config and shape. `hallo_rt.benchmarks.cost_model` assembles them
into the stages of a stream and projects them; its docstring states the conventions (FLOPs as
`FlopCounterMode` counts them, bytes as compulsory traffic), which `tests/test_cost_model.py` checks against
the real modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from hallo_rt.engine.config import DiTConfig, VaeConfig
from hallo_rt.engine.wav2vec2 import Wav2Vec2Config

Kind = Literal["transformer", "convolution", "elementwise"]


@dataclass
class Work:
    """Counted work of one call: products' FLOPs, weight and activation elements, ops (kernels) launched."""

    flops: int = 0
    weights: int = 0
    """Parameter elements read (each once per call)."""
    activations: int = 0
    """Activation elements written once and read once."""
    raw_bytes: int = 0
    """Traffic of fixed width, whatever the precision (the uint8 frames of `convert`)."""
    ops: int = 0
    """Kernels eager PyTorch launches (non-view aten ops, `engine/` as written): the counted products,
    norms and element-wise ops above, plus the small ones the traffic model treats as fused (`eager`)."""

    def __add__(self, other: "Work") -> "Work":
        return Work(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __mul__(self, times: int) -> "Work":
        """`times` calls in a row (the weights are read by each)."""
        return Work(*(value * times for value in dataclasses.astuple(self)))

    def bytes(self, precision: str) -> int:
        weight, activation = element_bytes(precision)
        return weight * self.weights + 2 * activation * self.activations + self.raw_bytes

    # --- counting helpers: each adds one op's work ---
    def linear(self, rows: int, n_in: int, n_out: int, bias: bool = True, shared: bool = False) -> None:
        """`rows` x (n_in -> n_out); `shared`: the weights were already read in this call."""
        self.product(2 * rows * n_in * n_out, 0 if shared else n_in * n_out + n_out * bias, rows * n_out)

    def conv(self, outputs: int, c_in: int, c_out: int, taps: int, bias: bool = True, shared: bool = False) -> None:
        """A convolution with `outputs` output positions (batch included), c_in per group, taps per filter."""
        self.product(2 * outputs * c_out * c_in * taps, 0 if shared else c_out * c_in * taps + c_out * bias,
                     outputs * c_out)

    def attention(self, heads: int, q_len: int, kv_len: int, head_dim: int) -> None:
        """`heads` (batch x heads) attention problems: QK^T and PV."""
        self.product(4 * heads * q_len * kv_len * head_dim, 0, heads * q_len * head_dim)

    def product(self, flops: int, weights: int, outputs: int) -> None:
        self.flops += flops
        self.weights += weights
        self.activations += outputs
        self.ops += 1

    def norm(self, elements: int, params: int) -> None:
        self.product(0, params, elements)

    def elementwise(self, elements: int) -> None:
        self.product(0, 0, elements)

    def eager(self, kernels: int) -> None:
        """Kernels eager mode runs that the traffic model fuses into a neighbour (RoPE, adaLN modulation,
        gates, concatenations, causal padding): launch/dispatch cost only. Counted from the engine's code
        with a dispatch counter (tests/test_cost_model.py checks the totals)."""
        self.ops += kernels


PRECISIONS: dict[str, tuple[int, int, str]] = {
    "fp32": (4, 4, "fp32"), "tf32": (4, 4, "tf32"), "bf16": (2, 2, "bf16"), "fp16": (2, 2, "fp16"),
    "fp8": (1, 2, "fp8"), "int8": (1, 2, "int8"),
}
"""precision -> (weight bytes, activation bytes, tensor-core peak it runs at)."""


def element_bytes(precision: str) -> tuple[int, int]:
    """(weight, activation) bytes per element; see the module docstring."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision][:2]


# ---------------------------------------------------------------------------------------------------------
# Denoiser (engine/dit.py, engine/conditioning.py) and reference network (engine/reference.py)
# ---------------------------------------------------------------------------------------------------------

def _latent_grid(config: DiTConfig, latent_size: tuple[int, int] | None) -> tuple[int, int, int]:
    """(h, w, tokens per frame) after patching."""
    height, width = latent_size or (config.latent_height, config.latent_width)
    p = config.patch_size
    if height % p or width % p:
        raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {p}")
    return height // p, width // p, (height // p) * (width // p)


def _embed(w: Work, cfg: DiTConfig, batch: int, frames: int, tokens: int) -> None:
    """Timestep MLP, text projection, patch embedding, positional embedding (`HalloDiT.prepare`)."""
    D, L = cfg.hidden_dim, cfg.text_len
    w.linear(batch, D, cfg.time_embed_dim)  # the sinusoid is hidden_dim wide
    w.elementwise(batch * cfg.time_embed_dim)
    w.linear(batch, cfg.time_embed_dim, cfg.time_embed_dim)
    w.linear(batch * L, cfg.text_dim, D)
    w.conv(batch * frames * tokens, cfg.in_channels, D, cfg.patch_size ** 2)
    if cfg.learned_pos_embed:
        w.weights += (L + frames * tokens) * D  # the slice of the table this sequence uses
        w.elementwise(batch * (L + frames * tokens) * D)
    w.eager(12)  # the timestep sinusoid, casts, the second positional add


def _self_attention(w: Work, cfg: DiTConfig, batch: int, seq: int, bank_tokens: int, bank_kv: bool) -> None:
    """adaLN modulation, LN1, QKV, QK-norms, [bank K/V], joint attention, output, gated residual."""
    D, H, Dh = cfg.hidden_dim, cfg.num_heads, cfg.head_dim
    w.elementwise(batch * cfg.time_embed_dim)  # SiLU(emb)
    w.linear(batch, cfg.time_embed_dim, 12 * D)
    w.norm(batch * seq * D, 2 * D)
    w.linear(batch * seq, D, 3 * D)
    w.norm(2 * batch * seq * D, 4 * Dh)
    if bank_kv:  # the bank through this layer's K/V rows and K-norm (`JointAttention.bank_kv`)
        w.linear(batch * bank_tokens, D, 2 * D, shared=True)
        w.norm(batch * bank_tokens * D, 0)
    w.attention(batch * H, seq, seq + bank_tokens, Dh)
    w.linear(batch * seq, D, D)
    w.elementwise(batch * seq * D)
    # text and video LN1 and adaLN apart, [text | video] concat, the second QK-norm, RoPE on q and k and
    # their concats, the gates; the bank's K/V concats
    w.eager(25 + (2 if bank_tokens else 0))


def _mlp(w: Work, cfg: DiTConfig, batch: int, seq: int) -> None:
    D = cfg.hidden_dim
    w.norm(batch * seq * D, 2 * D)
    w.linear(batch * seq, D, cfg.mlp_dim)  # text and video rows share the weights (two calls, counted as one)
    w.elementwise(batch * seq * cfg.mlp_dim)
    w.linear(batch * seq, cfg.mlp_dim, D)
    w.elementwise(batch * seq * D)
    w.eager(13)  # text and video apart: second LN2, fc1, GELU, fc2; adaLN modulation; gates


def _frame_cross_attention(w: Work, cfg: DiTConfig, batch: int, frames: int, tokens: int,
                           context_rows: int, context_len: int, context_dim: int) -> None:
    """LN, per-frame cross-attention (`FrameCrossAttention`) and its plain residual."""
    D, H, Dh = cfg.hidden_dim, cfg.num_heads, cfg.head_dim
    video = batch * frames * tokens
    w.norm(video * D, 2 * D)
    w.linear(video, D, D)
    w.linear(context_rows, context_dim, 2 * D)
    w.norm(video * D + context_rows * D, 0)  # the block's own QK-norms
    w.attention(batch * frames * H, tokens, context_len, Dh)
    w.linear(video, D, D)
    w.elementwise(video * D)
    w.eager(7)  # the second QK-norm, RoPE on q, the broadcast context made contiguous


def _audio_projection(w: Work, cfg: DiTConfig, batch: int, audio_frames: int) -> int:
    """`AudioProjection`: per-frame MLP, the shared stride-2 conv twice. Returns the latent frames."""
    width = cfg.audio_tokens * cfg.audio_token_dim
    rows = batch * audio_frames
    w.linear(rows, cfg.audio_window * cfg.audio_layers * cfg.audio_dim, cfg.audio_hidden_dim)
    w.elementwise(rows * cfg.audio_hidden_dim)
    w.linear(rows, cfg.audio_hidden_dim, cfg.audio_hidden_dim)
    w.elementwise(rows * cfg.audio_hidden_dim)
    w.linear(rows, cfg.audio_hidden_dim, width)
    frames = audio_frames
    for i in range(2):
        kept = frames % 2  # an odd count keeps its first frame out of the conv
        out = (frames - kept) // 2
        if out:
            w.conv(batch * out, width, width, 2, shared=i > 0)
        w.eager(kept)  # the pass-through frame's concat
        frames = kept + out
    w.norm(batch * frames * width, 2 * cfg.audio_token_dim)
    return frames


def denoiser_step_cost(config: DiTConfig, frames: int, batch: int = 1, latent_size: tuple[int, int] | None = None,
                       audio_frames: int | None = None,
                       bank: Literal["none", "cached", "recomputed"] = "cached") -> Work:
    """One `HalloDiT.forward` (condition projections included) on `frames` latent frames.

    audio_frames: video frames of audio features (default 4F - 3, a clip from frame 0; 4F continues).
    bank: "cached" = a `ReferenceKV` (K/V projected once per stream); "recomputed" = the raw bank, projected
    in every layer of every step (Hallo3); "none" = no reference tokens. Bank tokens: one latent frame's."""
    cfg = config
    if frames < 1 or batch < 1:
        raise ValueError(f"frames and batch must be >= 1, got {frames} and {batch}")
    if bank not in ("none", "cached", "recomputed"):
        raise ValueError(f"bank must be 'none', 'cached' or 'recomputed', got {bank!r}")
    _, _, tokens = _latent_grid(cfg, latent_size)
    w = Work()
    if cfg.audio_cross_attention:
        audio_frames = 4 * frames - 3 if audio_frames is None else audio_frames
        if _audio_projection(w, cfg, batch, audio_frames) != frames:
            raise ValueError(f"{audio_frames} audio frames do not compress to {frames} latent frames")
    if cfg.face_cross_attention:
        w.linear(batch, cfg.face_embed_dim, cfg.face_tokens * cfg.face_token_dim)
        w.norm(batch * cfg.face_tokens * cfg.face_token_dim, 2 * cfg.face_token_dim)
    _embed(w, cfg, batch, frames, tokens)
    seq = cfg.text_len + frames * tokens
    bank_tokens = 0 if bank == "none" else tokens
    for i in range(cfg.num_layers):
        _self_attention(w, cfg, batch, seq, bank_tokens, bank == "recomputed")
        if cfg.face_cross_attention:  # one context for every frame
            _frame_cross_attention(w, cfg, batch, frames, tokens, batch * cfg.face_tokens, cfg.face_tokens,
                                   cfg.face_token_dim)
        if cfg.audio_cross_attention:
            _frame_cross_attention(w, cfg, batch, frames, tokens, batch * frames * cfg.audio_tokens,
                                   cfg.audio_tokens, cfg.audio_token_dim)
        _mlp(w, cfg, batch, seq)
    D, video = cfg.hidden_dim, batch * frames * tokens
    w.norm(video * D, 2 * D)  # norm_final
    w.norm(video * D, 2 * D)  # the final layer's own LayerNorm
    w.linear(batch, cfg.time_embed_dim, 2 * D)
    w.linear(video, D, cfg.patch_size ** 2 * cfg.out_channels)
    w.eager(5)  # SiLU, adaLN modulation, unpatchify copy
    return w


def reference_net_cost(config: DiTConfig, latent_size: tuple[int, int] | None = None, batch: int = 1) -> Work:
    """One `ReferenceNet.forward` on a 1-frame reference latent: every layer's modulated LN1, and every layer
    but the last run in full (attention without bank, MLP); no face/audio modules, no output head."""
    cfg = dataclasses.replace(config, face_cross_attention=False, audio_cross_attention=False)
    _, _, tokens = _latent_grid(cfg, latent_size)
    seq, D = cfg.text_len + tokens, cfg.hidden_dim
    w = Work()
    _embed(w, cfg, batch, 1, tokens)
    for i in range(cfg.num_layers):
        if i + 1 < cfg.num_layers:
            _self_attention(w, cfg, batch, seq, 0, False)
            _mlp(w, cfg, batch, seq)
        else:  # the last layer only produces its bank entry
            w.elementwise(batch * cfg.time_embed_dim)
            w.linear(batch, cfg.time_embed_dim, 12 * D)
            w.norm(batch * seq * D, 2 * D)
            w.eager(7)  # text and video LN1 and adaLN apart
    w.eager(4)  # zero text and timestep, [ref | ref] concat, the stacked bank
    return w


def reference_kv_cost(config: DiTConfig, latent_size: tuple[int, int] | None = None, batch: int = 1) -> Work:
    """`HalloDiT.reference_kv(bank, batch=batch)`: every layer's K/V projection and K-norm of the bank."""
    _, _, tokens = _latent_grid(config, latent_size)
    D, w = config.hidden_dim, Work()
    for _ in range(config.num_layers):
        w.linear(batch * tokens, D, 2 * D)
        w.norm(batch * tokens * D, 2 * config.head_dim)
        w.eager(2)  # the broadcast bank made contiguous, the bias add
    return w


# ---------------------------------------------------------------------------------------------------------
# VAE (engine/vae.py) and audio encoder (engine/wav2vec2.py)
# ---------------------------------------------------------------------------------------------------------

def _causal_conv(w: Work, positions: int, c_in: int, c_out: int, cached: bool) -> None:
    """`CausalConv3d` 3x3x3, time padded by 2 frames: one output per input frame. Eager: the padding concat
    and, when a stream carries the caches (the decoder), the cache copy."""
    w.conv(positions, c_in, c_out, 27)
    w.eager(2 if cached else 1)


def _resnet(w: Work, positions: int, c_in: int, c_out: int, latent: int | None, split: bool = False) -> None:
    """`ResnetBlock3D` at `positions` = B*T*H*W: (spatial) norm, SiLU, causal 3x3x3 conv, twice, + shortcut.
    `latent`: the decoder's latent channels (spatial norms, streamed caches); None in the encoder."""
    for channels, out in ((c_in, c_out), (c_out, c_out)):
        _norm3d(w, positions, channels, latent, split)
        w.elementwise(positions * channels)
        _causal_conv(w, positions, channels, out, latent is not None)
    if c_in != c_out:
        w.conv(positions, c_in, c_out, 1)
    w.elementwise(positions * c_out)


def _norm3d(w: Work, positions: int, channels: int, latent: int | None, split: bool = False) -> None:
    """GroupNorm, or the decoder's `SpatialNorm3D`: GroupNorm * conv_y(zq) + conv_b(zq), 1x1x1 convs on the
    latents resized to the features (`split`: a clip's first latent frame resized apart)."""
    w.norm(positions * channels, 2 * channels)
    if latent is not None:
        w.elementwise(positions * latent)  # zq resized
        w.conv(positions, latent, channels, 1)
        w.conv(positions, latent, channels, 1)
        w.elementwise(positions * channels)
        w.eager(3 if split else 1)  # GroupNorm * y + b: two kernels; a split resize: two more


def vae_encode_cost(config: VaeConfig, frames: int, size: tuple[int, int], batch: int = 1) -> Work:
    """`Encoder3D` on (B, 3, frames, H, W) pixels -> (B, 2 * latent, 1 + (frames - 1) // 4, H / 8, W / 8)."""
    height, width = size
    step = config.spatial_compression
    if frames < 1 or height % step or width % step or height < step or width < step:
        raise ValueError(f"VAE input must be >= 1 frame of H x W multiples of {step}, got {frames}x{height}x{width}")
    widths, w = config.block_channels, Work()
    T, H, W = frames, height, width
    _causal_conv(w, batch * T * H * W, config.image_channels, widths[0], False)
    previous = widths[0]
    for level, channels in enumerate(widths):
        for _ in range(config.num_res_blocks):
            _resnet(w, batch * T * H * W, previous, channels, None)
            previous = channels
        if level < len(widths) - 1:
            if level < config.temporal_levels and T > 1:  # frame pairs averaged, an odd first frame kept
                w.eager(1 + T % 2)  # sum and halving apart, the first frame's concat
                T = T % 2 + T // 2
                w.elementwise(batch * T * H * W * channels)
            H, W = H // 2, W // 2  # asymmetric pad, 3x3 stride 2
            w.eager(1)  # the pad
            w.conv(batch * T * H * W, channels, channels, 9)
    for _ in range(2):
        _resnet(w, batch * T * H * W, previous, previous, None)
    w.norm(batch * T * H * W * previous, 2 * previous)
    w.elementwise(batch * T * H * W * previous)
    _causal_conv(w, batch * T * H * W, previous, 2 * config.latent_channels, False)
    return w


def vae_decode_cost(config: VaeConfig, groups: list[int], latent_size: tuple[int, int], at_start: bool = True,
                    batch: int = 1) -> Work:
    """`Decoder3D` over consecutive groups of latent frames (a `StreamingVaeDecoder`'s calls), the first at
    the start of a clip when `at_start` (its odd first frame decodes to one frame), the rest continuing."""
    if not groups or min(groups) < 1:
        raise ValueError(f"groups must be non-empty positive frame counts, got {groups}")
    widths, Cz, total = tuple(reversed(config.block_channels)), config.latent_channels, Work()
    for index, n in enumerate(groups):
        w, start = Work(), at_start and index == 0
        split = start and n % 2 == 1  # the spatial norms resize the first latent frame apart
        T, H, W = n, *latent_size
        _causal_conv(w, batch * T * H * W, Cz, widths[0], True)
        previous = widths[0]
        for _ in range(2):
            _resnet(w, batch * T * H * W, previous, previous, Cz, split and T > 1)
        for level, channels in enumerate(widths):
            for _ in range(config.num_res_blocks + 1):
                _resnet(w, batch * T * H * W, previous, channels, Cz, split and T > 1)
                previous = channels
            if level < len(widths) - 1:
                if level < config.temporal_levels:
                    w.eager(2 if start and T % 2 and T > 1 else 0)  # the first frame upsampled apart
                    T = 1 + 2 * (T - 1) if start and T % 2 else 2 * T
                H, W = 2 * H, 2 * W
                w.elementwise(batch * T * H * W * channels)  # nearest upsampling
                w.conv(batch * T * H * W, channels, channels, 9)
        _norm3d(w, batch * T * H * W, previous, Cz, split and T > 1)
        w.elementwise(batch * T * H * W * previous)
        _causal_conv(w, batch * T * H * W, previous, config.image_channels, True)
        if index > 0:  # weights are read once per call, by its first group
            w.weights = 0
        total = total + w
    return total


def audio_encoder_cost(config: Wav2Vec2Config, samples: int, num_frames: int | None = None, batch: int = 1) -> Work:
    """`Wav2Vec2Model.forward` on `samples` samples, the CNN features resampled to `num_frames` (Hallo3) or
    kept at their native rate (None)."""
    cfg, w = config, Work()
    length, previous = samples, 1
    for i, (channels, kernel, stride) in enumerate(zip(cfg.conv_dims, cfg.conv_kernels, cfg.conv_strides)):
        if length < kernel:
            raise ValueError(f"{samples} samples are too few for the wav2vec2 CNN (needs {cfg.receptive_field})")
        length = (length - kernel) // stride + 1
        w.conv(batch * length, previous, channels, kernel, bias=cfg.conv_bias)
        if cfg.feat_extract_norm == "layer" or i == 0:
            w.norm(batch * length * channels, 2 * channels)
        w.elementwise(batch * length * channels)
        previous = channels
    T, D = num_frames or length, cfg.hidden_size
    if num_frames is not None:
        w.elementwise(batch * T * previous)
    w.norm(batch * T * previous, 2 * previous)
    w.linear(batch * T, previous, D)
    K = cfg.pos_conv_kernel
    w.conv(batch * (T + 2 * (K // 2) - K + 1), D // cfg.pos_conv_groups, D, K)
    w.elementwise(2 * batch * T * D)  # GELU, sum
    if not cfg.do_stable_layer_norm:
        w.norm(batch * T * D, 2 * D)
    for _ in range(cfg.num_layers):
        for _ in range(4):  # q, k, v, out
            w.linear(batch * T, D, D)
        w.attention(batch * cfg.num_heads, T, T, D // cfg.num_heads)
        w.elementwise(batch * T * D)
        w.norm(batch * T * D, 2 * D)
        w.linear(batch * T, D, cfg.intermediate_size)
        w.elementwise(batch * T * cfg.intermediate_size)
        w.linear(batch * T, cfg.intermediate_size, D)
        w.elementwise(batch * T * D)
        w.norm(batch * T * D, 2 * D)
    return w


def convert_cost(size: tuple[int, int], frames: int = 1) -> Work:
    """Decoder output (float) -> uint8 RGB: each pixel value read once (the activation), one byte written."""
    w = Work()
    w.elementwise(3 * frames * size[0] * size[1])
    w.raw_bytes = 3 * frames * size[0] * size[1]
    return w


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """(FlopCounterMode's total, result) of `fn(*args, **kwargs)`; see `count_flops_by_op`."""
    total, _, result = count_flops_by_op(fn, *args, **kwargs)
    return total, result


def count_flops_by_op(fn, *args, **kwargs) -> tuple[int, dict[str, int], object]:
    """(total, {aten op: FLOPs}, result) of `fn(*args, **kwargs)` under FlopCounterMode. On CPU, SDPA runs
    `_scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode has no formula for (it counts 0);
    it is given the formula FlopCounterMode uses for the CUDA attention kernels."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_op: cpu_flash} if cpu_op is not None else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        result = fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op, result
