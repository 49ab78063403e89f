"""Fused adaLN modulation for the joint [text | video] sequence, and the gated residual.

`ln_modulate`: LayerNorm, then x * (1 + scale) + shift with the text modulation on the first L tokens and
the video modulation on the rest, read from the two separate streams and written as the one
(B, L+S, D) tensor the joint attention and the MLP consume. One pass: one read of x, one write.

`gated_residual`: text + text_gate * y[:, :L] and video + video_gate * y[:, L:], with y the joint output.

Statistics and arithmetic in fp32, one rounding to the input dtype at the store (the unfused reference
rounds after the LayerNorm and again after the modulation, hence the half-precision tolerance tier).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import FLOAT_DTYPES, Launch, check_tensor, element_bytes, jit, next_power_of_2, runs_triton, tl
from .registry import FusedOp, register

# ----------------------------------------------------------------------------------------------------
# Kernels. Argument order is (input pointers, integer scalars, output pointers, constexprs), the order a
# TensorRT AOT plugin launches with.


@jit
def _ln_modulate_kernel(
    text_ptr, video_ptr, weight_ptr, bias_ptr, text_shift_ptr, text_scale_ptr, video_shift_ptr, video_scale_ptr,
    L, S, D,
    stride_tb, stride_tl, stride_td, stride_vb, stride_vs, stride_vd,
    stride_mtb, stride_mtd, stride_mvb, stride_mvd,
    out_ptr,
    EPS: tl.constexpr, HAS_AFFINE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # one program per (batch, token) of the joint sequence
    b = row // (L + S)
    t = row % (L + S)
    offs = tl.arange(0, BLOCK_D)
    in_d = offs < D
    token = offs * 0 + t  # the row's token index as a vector, so masks stay vectors of i1
    text_mask = in_d & (token < L)
    video_mask = in_d & (token >= L)
    # The row comes from one of the two streams: two masked loads, only one of which touches memory.
    x = tl.load(text_ptr + b * stride_tb + t * stride_tl + offs * stride_td, mask=text_mask, other=0.0).to(tl.float32)
    x += tl.load(video_ptr + b * stride_vb + (t - L) * stride_vs + offs * stride_vd, mask=video_mask,
                 other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    centered = tl.where(in_d, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / D
    y = centered * (1.0 / tl.sqrt(var + EPS))
    if HAS_AFFINE:
        y = y * tl.load(weight_ptr + offs, mask=in_d, other=0.0).to(tl.float32)
        y += tl.load(bias_ptr + offs, mask=in_d, other=0.0).to(tl.float32)
    shift = tl.load(text_shift_ptr + b * stride_mtb + offs * stride_mtd, mask=text_mask, other=0.0).to(tl.float32)
    shift += tl.load(video_shift_ptr + b * stride_mvb + offs * stride_mvd, mask=video_mask, other=0.0).to(tl.float32)
    scale = tl.load(text_scale_ptr + b * stride_mtb + offs * stride_mtd, mask=text_mask, other=0.0).to(tl.float32)
    scale += tl.load(video_scale_ptr + b * stride_mvb + offs * stride_mvd, mask=video_mask, other=0.0).to(tl.float32)
    y = y * (1.0 + scale) + shift
    tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=in_d)


@jit
def _gated_residual_kernel(
    text_ptr, video_ptr, y_ptr, text_gate_ptr, video_gate_ptr,
    L, S, D,
    stride_tb, stride_tl, stride_td, stride_vb, stride_vs, stride_vd, stride_yb, stride_ys, stride_yd,
    stride_gtb, stride_gtd, stride_gvb, stride_gvd,
    text_out_ptr, video_out_ptr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // (L + S)
    t = row % (L + S)
    is_text = t < L
    offs = tl.arange(0, BLOCK_D)
    in_d = offs < D
    token = offs * 0 + t  # the row's token index as a vector, so masks stay vectors of i1
    text_mask = in_d & (token < L)
    video_mask = in_d & (token >= L)
    y = tl.load(y_ptr + b * stride_yb + t * stride_ys + offs * stride_yd, mask=in_d, other=0.0).to(tl.float32)
    if is_text:
        x = tl.load(text_ptr + b * stride_tb + t * stride_tl + offs * stride_td, mask=text_mask).to(tl.float32)
        gate = tl.load(text_gate_ptr + b * stride_gtb + offs * stride_gtd, mask=text_mask).to(tl.float32)
        tl.store(text_out_ptr + (b * L + t) * D + offs, (x + gate * y).to(text_out_ptr.dtype.element_ty),
                 mask=text_mask)
    else:
        x = tl.load(video_ptr + b * stride_vb + (t - L) * stride_vs + offs * stride_vd, mask=video_mask).to(tl.float32)
        gate = tl.load(video_gate_ptr + b * stride_gvb + offs * stride_gvd, mask=video_mask).to(tl.float32)
        tl.store(video_out_ptr + (b * S + t - L) * D + offs, (x + gate * y).to(video_out_ptr.dtype.element_ty),
                 mask=video_mask)


def _row_warps(block: int) -> int:
    # Sized on sm_90: 8 warps at BLOCK_D=2048 spilled in fp16 (compile check); 4 warps there use 116 registers.
    return 8 if block >= 4096 else 4


# ----------------------------------------------------------------------------------------------------
# Launchers.


def _check_streams(text, video, mods: dict) -> tuple[int, int, int, int]:
    check_tensor("video", video, 3, FLOAT_DTYPES, video.device)
    B, S, D = video.shape
    check_tensor("text", text, 3, (video.dtype,), video.device)
    if text.shape[0] != B or text.shape[2] != D:
        raise ValueError(f"text {tuple(text.shape)} and video {tuple(video.shape)} disagree on batch or width")
    for name, m in mods.items():
        check_tensor(name, m, 2, (video.dtype,), video.device)
        if tuple(m.shape) != (B, D):
            raise ValueError(f"{name} must have shape {(B, D)}, got {tuple(m.shape)}")
    return B, text.shape[1], S, D


def _ln_modulate_launch(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale,
                       eps: float) -> Launch:
    B, L, S, D = _check_streams(text, video, {"text_shift": text_shift, "text_scale": text_scale,
                                              "video_shift": video_shift, "video_scale": video_scale})
    _check_same_strides(text_shift, text_scale, "text_shift and text_scale")
    _check_same_strides(video_shift, video_scale, "video_shift and video_scale")
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given or both be None")
    affine = weight is not None
    if affine:
        for name, p in (("weight", weight), ("bias", bias)):
            check_tensor(name, p, 1, FLOAT_DTYPES, video.device)
            if p.shape[0] != D or p.stride(0) != 1:
                raise ValueError(f"{name} must be a contiguous ({D},) vector, got {tuple(p.shape)}")
    out = video.new_empty(B, L + S, D)
    block = next_power_of_2(D)
    return Launch(
        _ln_modulate_kernel, (B * (L + S),),
        (text, video, weight if affine else video, bias if affine else video,
         text_shift, text_scale, video_shift, video_scale,
         L, S, D, *text.stride(), *video.stride(), *text_shift.stride(), *video_shift.stride(), out),
        dict(EPS=float(eps), HAS_AFFINE=affine, BLOCK_D=block), (out,),
        flops=8.0 * out.numel(),
        bytes=element_bytes(text, video, weight, bias, out) + 4 * B * D * text.element_size(),
        num_warps=_row_warps(block),
    )


def ln_modulate_triton(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale, eps: float):
    """Triton launch of `ln_modulate_ref` (same signature and result)."""
    launch = _ln_modulate_launch(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale, eps)
    return launch.run()[0] if launch.outputs[0].numel() else launch.outputs[0]


def _check_same_strides(a: torch.Tensor, b: torch.Tensor, names: str):
    if a.stride() != b.stride():
        raise ValueError(f"{names} must share strides (views of one modulation tensor, or both contiguous)")


def _gated_residual_launch(text, video, y, text_gate, video_gate) -> Launch:
    B, L, S, D = _check_streams(text, video, {"text_gate": text_gate, "video_gate": video_gate})
    check_tensor("y", y, 3, (video.dtype,), video.device)
    if tuple(y.shape) != (B, L + S, D):
        raise ValueError(f"y must have shape {(B, L + S, D)}, got {tuple(y.shape)}")
    text_out = text.new_empty(text.shape)
    video_out = video.new_empty(video.shape)
    block = next_power_of_2(D)
    return Launch(
        _gated_residual_kernel, (B * (L + S),),
        (text, video, y, text_gate, video_gate, L, S, D,
         *text.stride(), *video.stride(), *y.stride(), *text_gate.stride(), *video_gate.stride(),
         text_out, video_out),
        dict(BLOCK_D=block), (text_out, video_out),
        flops=2.0 * y.numel(), bytes=element_bytes(text, video, y, text_out, video_out),
        num_warps=_row_warps(block),
    )


def gated_residual_triton(text, video, y, text_gate, video_gate):
    """Triton launch of `gated_residual_ref` (same signature and result)."""
    launch = _gated_residual_launch(text, video, y, text_gate, video_gate)
    return launch.run() if y.numel() else launch.outputs


# ----------------------------------------------------------------------------------------------------
# References: the definition of correct, and the fallback. Same math as `engine.dit.modulate` + LayerNorm.


def ln_modulate_ref(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale, eps: float):
    """text (B, L, D), video (B, S, D), shifts/scales (B, D) -> [LN(text)(1+s_t)+b_t | LN(video)(1+s_v)+b_v]."""
    D = video.shape[-1]
    text = F.layer_norm(text, (D,), weight, bias, eps) * (1 + text_scale[:, None]) + text_shift[:, None]
    video = F.layer_norm(video, (D,), weight, bias, eps) * (1 + video_scale[:, None]) + video_shift[:, None]
    return torch.cat([text, video], dim=1)  # (B, L+S, D)


def gated_residual_ref(text, video, y, text_gate, video_gate):
    """(text + text_gate * y[:, :L], video + video_gate * y[:, L:]) with (B, D) gates."""
    L = text.shape[1]
    return text + text_gate[:, None] * y[:, :L], video + video_gate[:, None] * y[:, L:]


# ----------------------------------------------------------------------------------------------------
# Custom ops: Triton where it can run (CUDA, or CPU under TRITON_INTERPRET=1), the reference otherwise.


@torch.library.custom_op("hallo_rt::ln_modulate", mutates_args=())
def ln_modulate(
    text: torch.Tensor, video: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    text_shift: torch.Tensor, text_scale: torch.Tensor, video_shift: torch.Tensor, video_scale: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    impl = ln_modulate_triton if runs_triton(video.device) else ln_modulate_ref
    return impl(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale, eps)


@ln_modulate.register_fake
def _(text, video, weight, bias, text_shift, text_scale, video_shift, video_scale, eps):
    return video.new_empty(video.shape[0], text.shape[1] + video.shape[1], video.shape[2])


@torch.library.custom_op("hallo_rt::gated_residual", mutates_args=())
def gated_residual(
    text: torch.Tensor, video: torch.Tensor, y: torch.Tensor, text_gate: torch.Tensor, video_gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = gated_residual_triton if runs_triton(video.device) else gated_residual_ref
    text_out, video_out = impl(text, video, y, text_gate, video_gate)
    return text_out.contiguous(), video_out.contiguous()


@gated_residual.register_fake
def _(text, video, y, text_gate, video_gate):
    return torch.empty_like(text, memory_format=torch.contiguous_format), torch.empty_like(
        video, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------------
# Model-size launches (meta tensors): Hallo3 CFG batch (B=2, 226 text + 13x1350 video tokens, D=3072) and
# Hallo4 (B=1, video only, 22x1560 tokens, D=1536).

_SIZES = {"hallo3": (2, 226, 13 * 1350, 3072), "hallo4": (1, 0, 22 * 1560, 1536)}


def _modulation_examples(dtype: torch.dtype, fn):
    launches = []
    for label, (B, L, S, D) in _SIZES.items():
        meta = dict(dtype=dtype, device="meta")
        mods = torch.empty(B, 12 * D, **meta).chunk(12, dim=1)
        text, video = torch.empty(B, L, D, **meta), torch.empty(B, S, D, **meta)
        launches.append((label, fn(text, video, mods, torch.empty(D, **meta))))
    return launches


register(FusedOp(
    "ln_modulate", ln_modulate, ln_modulate_ref, ln_modulate_triton,
    lambda dtype: _modulation_examples(
        dtype, lambda t, v, m, w: _ln_modulate_launch(t, v, w, w, m[6], m[7], m[0], m[1], 1e-5)),
))
register(FusedOp(
    "gated_residual", gated_residual, gated_residual_ref, gated_residual_triton,
    lambda dtype: _modulation_examples(
        dtype, lambda t, v, m, w: _gated_residual_launch(t, v, torch.cat([t, v], 1), m[8], m[2])),
))
