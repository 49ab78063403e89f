"""Per-frame cross-attention (audio and face), with the query-side prologue fused.

Each latent frame's video tokens attend to that frame's few condition tokens: Hallo3 has 32 audio or 4 face
tokens at head dim 64, Hallo4 128 audio tokens at head dim 128. One launch covers every frame
(grid: query blocks x heads x (batch*frames)). A program loads its frame's keys and values once (they are a
few KB, so they stay on chip), LayerNorms the keys, and for a block of queries applies the reference's
prologue in registers: the block's self-attention QK-LayerNorm, then RoPE with frame-0 positions
(Hallo3 reuses the first frame's table for every frame; see engine/conditioning.py FrameCrossAttention).
The (queries x condition tokens) scores live only in registers; softmax in fp32.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import FLOAT_DTYPES, Launch, check_tensor, element_bytes, jit, next_power_of_2, runs_triton, tl
from .registry import FusedOp, register


@jit
def _row_stats(x, EPS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Mean and 1/std over the last axis of an fp32 (rows, HEAD_DIM) tile."""
    mean = tl.sum(x, axis=1) / HEAD_DIM
    centered = x - mean[:, None]
    return mean, 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / HEAD_DIM + EPS)


@jit
def _normalize(x, mean, rstd, weight_ptr, bias_ptr, offs_d):
    """(x - mean) / std * weight + bias, with the affine parameters gathered at channel offsets `offs_d`."""
    w = tl.load(weight_ptr + offs_d).to(tl.float32)
    b = tl.load(bias_ptr + offs_d).to(tl.float32)
    return (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]


@jit
def _frame_cross_attention_kernel(
    q_ptr, k_ptr, v_ptr, q_weight_ptr, q_bias_ptr, k_weight_ptr, k_bias_ptr, cos_ptr, sin_ptr,
    F_, N, M,
    stride_qb, stride_qf, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kf, stride_km, stride_kh, stride_kd,
    stride_vb, stride_vf, stride_vm, stride_vh, stride_vd,
    out_ptr,
    EPS: tl.constexpr, SCALE: tl.constexpr, Q_NORM: tl.constexpr, K_NORM: tl.constexpr, ROPE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, IEEE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    bf = tl.program_id(2)
    b = bf // F_
    f = bf % F_
    H = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    n_mask = offs_n < N
    m_mask = offs_m < M

    # 1. This frame's keys and values (a few tokens), K-LayerNorm-ed.
    k_base = k_ptr + b * stride_kb + f * stride_kf + head * stride_kh
    k = tl.load(k_base + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd, mask=m_mask[:, None],
                other=0.0).to(tl.float32)  # (BLOCK_M, HEAD_DIM)
    if K_NORM:
        k_mean, k_rstd = _row_stats(k, EPS, HEAD_DIM)
        k = _normalize(k, k_mean, k_rstd, k_weight_ptr, k_bias_ptr, offs_d)
    v_base = v_ptr + b * stride_vb + f * stride_vf + head * stride_vh
    v = tl.load(v_base + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd, mask=m_mask[:, None], other=0.0)

    # 2. Query prologue: LayerNorm, then RoPE (pairs 2i, 2i+1) with frame-0 positions, then the softmax scale.
    q_base = q_ptr + b * stride_qb + f * stride_qf + head * stride_qh + offs_n[:, None] * stride_qn
    raw = tl.load(q_base + offs_d[None, :] * stride_qd, mask=n_mask[:, None], other=0.0).to(tl.float32)
    q = raw
    if Q_NORM:
        mean, rstd = _row_stats(raw, EPS, HEAD_DIM)
        q = _normalize(raw, mean, rstd, q_weight_ptr, q_bias_ptr, offs_d)
    if ROPE:
        # The pair partner of channel d is d ^ 1; loading it again is cheaper than a register shuffle.
        partner_d = offs_d ^ 1
        partner = tl.load(q_base + partner_d[None, :] * stride_qd, mask=n_mask[:, None], other=0.0).to(tl.float32)
        if Q_NORM:
            partner = _normalize(partner, mean, rstd, q_weight_ptr, q_bias_ptr, partner_d)
        sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
        table = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        cos = tl.load(cos_ptr + table, mask=n_mask[:, None], other=0.0)
        sin = tl.load(sin_ptr + table, mask=n_mask[:, None], other=0.0)
        q = q * cos + partner * sign[None, :] * sin
    q = q * SCALE

    # 3. Scores over the frame's tokens, softmax in fp32, weighted values.
    if IEEE:
        scores = tl.dot(q, tl.trans(k), input_precision="ieee")  # (BLOCK_N, BLOCK_M)
    else:
        scores = tl.dot(q.to(v.dtype), tl.trans(k.to(v.dtype)))
    scores = tl.where(m_mask[None, :], scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    if IEEE:
        out = tl.dot(p, v.to(tl.float32), input_precision="ieee")  # (BLOCK_N, HEAD_DIM)
    else:
        out = tl.dot(p.to(v.dtype), v)
    out_rows = (bf * N + offs_n)[:, None] * (H * HEAD_DIM)
    tl.store(out_ptr + out_rows + head * HEAD_DIM + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=n_mask[:, None])


# ----------------------------------------------------------------------------------------------------
# Launcher.


def _check_norm(name: str, weight, bias, head_dim: int, device):
    if (weight is None) != (bias is None):
        raise ValueError(f"{name}_weight and {name}_bias must both be given or both be None")
    for label, p in ((f"{name}_weight", weight), (f"{name}_bias", bias)):
        if p is not None:
            check_tensor(label, p, 1, FLOAT_DTYPES, device)
            if p.shape[0] != head_dim or p.stride(0) != 1:
                raise ValueError(f"{label} must be a contiguous ({head_dim},) vector, got {tuple(p.shape)}")


def _frame_cross_attention_launch(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps: float,
                                  block_n: int | None = None) -> Launch:
    check_tensor("q", q, 5, FLOAT_DTYPES, q.device)
    B, Fr, N, H, Dh = q.shape
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, 5, (q.dtype,), q.device)
        if t.shape[0] != B or t.shape[1] not in (1, Fr) or t.shape[3:] != (H, Dh):
            raise ValueError(f"{name} must be (B, 1 or F, M, H, Dh) = ({B}, 1|{Fr}, M, {H}, {Dh}), "
                             f"got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    M = k.shape[2]
    if M < 1:
        raise ValueError("k and v need at least one condition token")
    if Dh < 16 or Dh & (Dh - 1):
        raise ValueError(f"head dim must be a power of two >= 16 for the tensor-core dots, got {Dh}")
    _check_norm("q", q_weight, q_bias, Dh, q.device)
    _check_norm("k", k_weight, k_bias, Dh, q.device)
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must both be given or both be None")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            check_tensor(name, t, 2, (torch.float32,), q.device)
            if tuple(t.shape) != (N, Dh) or not t.is_contiguous():
                raise ValueError(f"{name} must be a contiguous fp32 ({N}, {Dh}) table (frame-0 positions), "
                                 f"got {tuple(t.shape)}")
    # A shared context (the face tokens) broadcasts over frames through a zero frame stride.
    k, v = k.expand(B, Fr, M, H, Dh), v.expand(B, Fr, M, H, Dh)
    out = q.new_empty(B, Fr, N, H * Dh)
    block_m = max(16, next_power_of_2(M))
    # Sized for sm_90 registers: 8 warps keep the (BLOCK_N, Dh) q, partner and cos/sin tiles under 255
    # registers per thread without spilling (checked by the compile test).
    block_n = block_n or (64 if Dh <= 64 else 32)
    dummy = q  # stands in for absent optional pointers; never read (the constexpr flag is off)
    ieee = q.dtype == torch.float32
    return Launch(
        _frame_cross_attention_kernel, (-(-N // block_n), H, B * Fr),
        (q, k, v, q_weight if q_weight is not None else dummy, q_bias if q_bias is not None else dummy,
         k_weight if k_weight is not None else dummy, k_bias if k_bias is not None else dummy,
         cos if cos is not None else dummy, sin if sin is not None else dummy,
         Fr, N, M, *q.stride(), *k.stride(), *v.stride(), out),
        dict(EPS=float(eps), SCALE=1.0 / math.sqrt(Dh), Q_NORM=q_weight is not None, K_NORM=k_weight is not None,
             ROPE=cos is not None, HEAD_DIM=Dh, BLOCK_N=block_n, BLOCK_M=block_m, IEEE=ieee),
        (out,),
        flops=4.0 * B * Fr * N * H * M * Dh,
        bytes=element_bytes(q, out, cos, sin) + 2 * B * k.shape[1] * M * H * Dh * k.element_size(),
        num_warps=8,
    )


def frame_cross_attention_triton(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps: float):
    """Triton launch of `frame_cross_attention_ref` (same signature and result)."""
    launch = _frame_cross_attention_launch(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps)
    return launch.run()[0] if q.numel() else launch.outputs[0]


# ----------------------------------------------------------------------------------------------------
# Reference: the math of engine/conditioning.py FrameCrossAttention after its projections.


def frame_cross_attention_ref(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps: float):
    """q (B, F, N, H, Dh) video queries per frame; k, v (B, F or 1, M, H, Dh) that frame's condition tokens;
    optional per-head LayerNorms (Dh,) on q and k; optional RoPE tables (N, Dh) for q. Returns (B, F, N, H*Dh)."""
    B, Fr, N, H, Dh = q.shape
    q, k, v = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # (B, F, H, tokens, Dh)
    if q_weight is not None:
        q = F.layer_norm(q, (Dh,), q_weight, q_bias, eps)
    if k_weight is not None:
        k = F.layer_norm(k, (Dh,), k_weight, k_bias, eps)
    if cos is not None:  # interleaved pairs (2i, 2i+1), math in fp32 (engine/rope.py apply_rope)
        pairs = q.float().unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        q = (q.float() * cos + rotated * sin).to(q.dtype)
    k = k.expand(B, Fr, H, k.shape[-2], Dh)
    v = v.expand(B, Fr, H, v.shape[-2], Dh)
    # Frames folded into the batch, as the model does (4-dim attention exports everywhere).
    out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
    out = out.unflatten(0, (B, Fr))  # (B, F, H, N, Dh)
    return out.transpose(2, 3).flatten(-2)  # (B, F, N, H*Dh)


# ----------------------------------------------------------------------------------------------------
# Custom op.


@torch.library.custom_op("hallo_rt::frame_cross_attention", mutates_args=())
def frame_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: Optional[torch.Tensor],
    q_bias: Optional[torch.Tensor], k_weight: Optional[torch.Tensor], k_bias: Optional[torch.Tensor],
    cos: Optional[torch.Tensor], sin: Optional[torch.Tensor], eps: float,
) -> torch.Tensor:
    impl = frame_cross_attention_triton if runs_triton(q.device) else frame_cross_attention_ref
    return impl(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps).contiguous()


@frame_cross_attention.register_fake
def _(q, k, v, q_weight, q_bias, k_weight, k_bias, cos, sin, eps):
    B, Fr, N, H, Dh = q.shape
    return q.new_empty(B, Fr, N, H * Dh)


# ----------------------------------------------------------------------------------------------------
# Model-size launches: Hallo3 audio (32 tokens) and face (4 tokens, shared by all 13 frames) at
# 48 heads x 64, CFG batch 2, 13 frames x 1350 tokens; Hallo4 audio (128 tokens, 12 heads x 128,
# 22 frames x 1560 tokens, no prologue: Wan normalises the full width before the head split).

_SIZES = {
    "hallo3-audio": dict(B=2, F=13, N=1350, M=32, Fc=13, H=48, Dh=64, prologue=True),
    "hallo3-face": dict(B=2, F=13, N=1350, M=4, Fc=1, H=48, Dh=64, prologue=True),
    "hallo4-audio": dict(B=1, F=22, N=1560, M=128, Fc=22, H=12, Dh=128, prologue=False),
}


def _examples(dtype: torch.dtype) -> list[tuple[str, Launch]]:
    launches = []
    for label, s in _SIZES.items():
        meta = dict(dtype=dtype, device="meta")
        D = s["H"] * s["Dh"]
        q = torch.empty(s["B"], s["F"], s["N"], D, **meta).unflatten(-1, (s["H"], s["Dh"]))
        kv = torch.empty(s["B"], s["Fc"], s["M"], 2 * D, **meta).unflatten(-1, (2, s["H"], s["Dh"]))
        norm = torch.empty(s["Dh"], **meta) if s["prologue"] else None
        table = torch.empty(s["N"], s["Dh"], dtype=torch.float32, device="meta") if s["prologue"] else None
        launches.append((label, _frame_cross_attention_launch(
            q, kv[..., 0, :, :], kv[..., 1, :, :], norm, norm, norm, norm, table, table, 1e-5)))
    return launches


register(FusedOp("frame_cross_attention", frame_cross_attention, frame_cross_attention_ref,
                 frame_cross_attention_triton, _examples))
