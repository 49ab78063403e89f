"""QK-LayerNorm and rotary embedding for the joint attention, straight out of the fused QKV projection.

    qk_norm_rope(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start, eps) -> (q, k)

qkv is the (B, S, 3, H, Dh) view of the QKV Linear output (any strides). Per head, q and k get a LayerNorm over
Dh, then the rows [rope_start, rope_start + R) are rotated by the (R, Dh) cos/sin tables (interleaved pairs, as
`engine.rope.apply_rope`: rotated[2i] = -x[2i+1], rotated[2i+1] = x[2i]; out = x * cos + rotated * sin). In
Hallo3 those rows are the video tokens after the 226 text tokens. q and k come out as contiguous (B, H, S, Dh),
the layout the attention kernel reads fastest. A None weight means no LayerNorm on that side (its bias must be
None too); a weight with a None bias is a LayerNorm without bias. Norm parameters share qkv's dtype; cos/sin
are fp32 and both None for no rotation.

One launch does both q and k (grid axis 2 selects the side), reading qkv once and writing q and k once; the
unfused model makes a LayerNorm pass, a RoPE pass and a concatenation pass over each of them. Statistics and
rotation in fp32, one rounding to the input dtype at the store (the reference rounds after the LayerNorm and
again after the rotation, hence the half-precision tolerance tier).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import FLOAT_DTYPES, Launch, check_tensor, element_bytes, jit, next_power_of_2, runs_triton, tl
from .registry import FusedOp, register

# ----------------------------------------------------------------------------------------------------
# Kernel. Argument order is (input pointers, integer scalars, output pointers, constexprs), the order a
# TensorRT AOT plugin launches with.


@jit
def _layer_norm_tile(x, w_ptr, b_ptr, offs_d, in_d, D: tl.constexpr, EPS: tl.constexpr, NORM: tl.constexpr,
                     BIAS: tl.constexpr, ALIGNED: tl.constexpr):
    """LayerNorm of each row of the fp32 (BLOCK_S, BLOCK_D) tile over its first D columns."""
    if NORM:
        mean = tl.sum(x, axis=1) / D  # padding columns were loaded as 0
        centered = tl.where(in_d[None, :], x - mean[:, None], 0.0)
        var = tl.sum(centered * centered, axis=1) / D
        x = centered * (1.0 / tl.sqrt(var + EPS))[:, None]
        w_ptrs = w_ptr + offs_d
        b_ptrs = b_ptr + offs_d
        if ALIGNED:
            w_ptrs = tl.multiple_of(w_ptrs, [16])
            b_ptrs = tl.multiple_of(b_ptrs, [16])
        x = x * tl.load(w_ptrs, mask=in_d, other=0.0).to(tl.float32)[None, :]
        if BIAS:
            x += tl.load(b_ptrs, mask=in_d, other=0.0).to(tl.float32)[None, :]
    return x


@jit
def _qk_norm_rope_kernel(
    qkv_ptr, q_weight_ptr, q_bias_ptr, k_weight_ptr, k_bias_ptr, cos_ptr, sin_ptr,
    S, H, ROPE_START, R,
    stride_b, stride_s, stride_3, stride_h, stride_d, stride_rr, stride_rd,
    q_out_ptr, k_out_ptr,
    D: tl.constexpr, EPS: tl.constexpr, Q_NORM: tl.constexpr, Q_BIAS: tl.constexpr, K_NORM: tl.constexpr,
    K_BIAS: tl.constexpr, HAS_ROPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Grid (token blocks, B*H, 2): a (BLOCK_S, Dh) tile of one head, of q (axis 2 == 0) or k (== 1). Rows of
    # one head are Dh-contiguous in qkv and fully contiguous in the output, so both sides move whole lines.
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    side = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    in_s = offs_s < S
    in_d = offs_d < D  # all true, so no mask along Dh, when Dh is a power of 2: vector loads and stores
    mask = in_s[:, None] & in_d[None, :]
    src = qkv_ptr + b * stride_b + side * stride_3 + h * stride_h
    src += offs_s[:, None] * stride_s + offs_d[None, :] * stride_d
    dst = bh * S * D + offs_s[:, None] * D + offs_d[None, :]  # contiguous (B, H, S, Dh)
    q_dst = q_out_ptr + dst
    k_dst = k_out_ptr + dst
    if ALIGNED:  # head rows start on 16 bytes (launcher-checked): lets AOT builds vectorise loads and stores
        src = tl.multiple_of(src, [1, 16])
        q_dst = tl.multiple_of(q_dst, [1, 16])
        k_dst = tl.multiple_of(k_dst, [1, 16])
    x = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    if side == 0:
        y = _layer_norm_tile(x, q_weight_ptr, q_bias_ptr, offs_d, in_d, D, EPS, Q_NORM, Q_BIAS, ALIGNED)
    else:
        y = _layer_norm_tile(x, k_weight_ptr, k_bias_ptr, offs_d, in_d, D, EPS, K_NORM, K_BIAS, ALIGNED)
    if HAS_ROPE:
        r = offs_s - ROPE_START  # row of the cos/sin tables
        rotates = in_s & (r >= 0) & (r < R)
        table = r[:, None] * stride_rr + offs_d[None, :] * stride_rd
        cos_ptrs = cos_ptr + table
        sin_ptrs = sin_ptr + table
        if ALIGNED:
            cos_ptrs = tl.multiple_of(cos_ptrs, [1, 16])
            sin_ptrs = tl.multiple_of(sin_ptrs, [1, 16])
        rmask = rotates[:, None] & in_d[None, :]
        cos = tl.load(cos_ptrs, mask=rmask, other=1.0)
        sin = tl.load(sin_ptrs, mask=rmask, other=0.0)
        # Partner of each interleaved pair, in registers: (2i, 2i+1) -> (-x[2i+1], x[2i]). Dh is even, so the
        # padding columns pair among themselves.
        even, odd = tl.split(tl.reshape(y, (BLOCK_S, BLOCK_D // 2, 2)))
        rotated = tl.reshape(tl.join(-odd, even), (BLOCK_S, BLOCK_D))
        y = tl.where(rotates[:, None], y * cos + rotated * sin, y)
    if side == 0:
        tl.store(q_dst, y.to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(k_dst, y.to(k_out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# Launcher.


def _check_norm(side: str, weight, bias, D: int, qkv: torch.Tensor) -> tuple[bool, bool]:
    if weight is None:
        if bias is not None:
            raise ValueError(f"{side}_bias given without {side}_weight (a None weight means no {side} norm)")
        return False, False
    for name, p in ((f"{side}_weight", weight), (f"{side}_bias", bias)):
        if p is None:
            continue
        check_tensor(name, p, 1, (qkv.dtype,), qkv.device)
        if p.shape[0] != D or p.stride(0) != 1:
            raise ValueError(f"{name} must be a contiguous ({D},) vector, got shape {tuple(p.shape)}")
    return True, bias is not None


def _rows_aligned(*tensors: torch.Tensor | None) -> bool:
    """Whether every tensor has unit last-dim stride and all its rows start on 16 bytes (the model's layouts);
    the kernel then promises the compiler so (`tl.multiple_of`), which AOT signatures cannot carry."""
    for t in tensors:
        if t is None:
            continue
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * t.element_size() % 16 for s in t.stride()[:-1]):
            return False
    return True


def _max_offset(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()) if n > 0)


def _qk_norm_rope_launch(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start: int, eps: float) -> Launch:
    check_tensor("qkv", qkv, 5, FLOAT_DTYPES, qkv.device)
    B, S, three, H, D = qkv.shape
    if three != 3:
        raise ValueError(f"qkv must be a (B, S, 3, H, Dh) view of the QKV projection, got shape {tuple(qkv.shape)}")
    q_norm, q_bias_on = _check_norm("q", q_weight, q_bias, D, qkv)
    k_norm, k_bias_on = _check_norm("k", k_weight, k_bias, D, qkv)
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must both be given or both be None")
    rope = cos is not None
    R = 0
    if rope:
        check_tensor("cos", cos, 2, (torch.float32,), qkv.device)
        check_tensor("sin", sin, 2, (torch.float32,), qkv.device)
        R = cos.shape[0]
        if tuple(cos.shape) != (R, D) or tuple(sin.shape) != (R, D):
            raise ValueError(f"cos and sin must have shape (R, {D}), got {tuple(cos.shape)} and {tuple(sin.shape)}")
        if cos.stride() != sin.stride():
            raise ValueError("cos and sin must share strides (both contiguous, or views of one table)")
        if D % 2:
            raise ValueError(f"RoPE rotates pairs of channels: head dim must be even, got {D}")
        if rope_start < 0 or rope_start + R > S:
            raise ValueError(f"RoPE rows [{rope_start}, {rope_start + R}) must lie within the {S} tokens")
    if _max_offset(qkv) >= 2**31:
        raise ValueError(f"qkv view {tuple(qkv.shape)} spans more than 2**31 elements: split the batch")
    q = qkv.new_empty(B, H, S, D)
    k = qkv.new_empty(B, H, S, D)
    block_d = next_power_of_2(D)
    block_s = max(1, min(next_power_of_2(S), 4096 // block_d))  # ~4K elements a program
    table_strides = cos.stride() if rope else (0, 0)
    return Launch(
        _qk_norm_rope_kernel, ((S + block_s - 1) // block_s, B * H, 2),
        (qkv, q_weight if q_norm else qkv, q_bias if q_bias_on else qkv, k_weight if k_norm else qkv,
         k_bias if k_bias_on else qkv, cos if rope else qkv, sin if rope else qkv,
         S, H, int(rope_start) if rope else 0, R, *qkv.stride(), *table_strides, q, k),
        dict(D=D, EPS=float(eps), Q_NORM=q_norm, Q_BIAS=q_bias_on, K_NORM=k_norm, K_BIAS=k_bias_on, HAS_ROPE=rope,
             ALIGNED=_rows_aligned(qkv, cos, sin, q, k, q_weight, q_bias, k_weight, k_bias), BLOCK_S=block_s,
             BLOCK_D=block_d),
        (q, k),
        flops=12.0 * 2 * q.numel(),  # LayerNorm ~8, rotation ~4 per element
        # q and k read from qkv, written once; the small params and tables read once.
        bytes=2 * element_bytes(q, k) + element_bytes(q_weight, q_bias, k_weight, k_bias, cos, sin),
        num_warps=8,  # 16 elements a thread: ~48 registers in the sm_90 build
    )


def qk_norm_rope_triton(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start: int, eps: float):
    """Triton launch of `qk_norm_rope_ref` (same signature and result)."""
    launch = _qk_norm_rope_launch(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start, eps)
    return launch.run() if launch.outputs[0].numel() else launch.outputs


# ----------------------------------------------------------------------------------------------------
# Reference: the definition of correct, and the fallback. The math of `engine.dit.JointAttention` (steps 1-2);
# `engine.rope.apply_rope` is restated here because kernels must not import the engine.


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., R, Dh) rotated by (R, Dh) tables, interleaved pairs, math in fp32 (as engine.rope.apply_rope)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., R, Dh/2, 2)
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., R, Dh)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def qk_norm_rope_ref(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start: int, eps: float):
    """qkv (B, S, 3, H, Dh) -> q, k (B, H, S, Dh): LayerNorm per head (skipped where the weight is None), then
    RoPE on rows [rope_start, rope_start + R) with (R, Dh) fp32 cos/sin (none when both are None)."""
    D = qkv.shape[-1]
    outs = []
    for i, (weight, bias) in enumerate(((q_weight, q_bias), (k_weight, k_bias))):
        x = qkv[:, :, i].transpose(1, 2)  # (B, H, S, Dh)
        if weight is not None:
            x = F.layer_norm(x, (D,), weight, bias, eps)
        if cos is not None:
            end = rope_start + cos.shape[0]
            x = torch.cat([x[:, :, :rope_start], _apply_rope(x[:, :, rope_start:end], cos, sin), x[:, :, end:]], dim=2)
        outs.append(x.contiguous())
    return tuple(outs)


# ----------------------------------------------------------------------------------------------------
# Custom op: Triton where it can run (CUDA, or CPU under TRITON_INTERPRET=1), the reference otherwise.


@torch.library.custom_op("hallo_rt::qk_norm_rope", mutates_args=())
def qk_norm_rope(
    qkv: torch.Tensor, q_weight: Optional[torch.Tensor], q_bias: Optional[torch.Tensor],
    k_weight: Optional[torch.Tensor], k_bias: Optional[torch.Tensor], cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor], rope_start: int, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    impl = qk_norm_rope_triton if runs_triton(qkv.device) else qk_norm_rope_ref
    q, k = impl(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start, eps)
    # Custom-op outputs must not alias inputs: without norm and rope the reference may return a view of qkv.
    return tuple(t.clone() if t.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr() else t
                 for t in (q, k))


@qk_norm_rope.register_fake
def _(qkv, q_weight, q_bias, k_weight, k_bias, cos, sin, rope_start, eps):
    B, S, _, H, D = qkv.shape
    return qkv.new_empty(B, H, S, D), qkv.new_empty(B, H, S, D)


# ----------------------------------------------------------------------------------------------------
# Model-size launches (meta tensors): Hallo3 CFG batch (B=2, 226 text + 13x1350 video tokens, 48 heads x 64,
# RoPE on the video rows) and Hallo4 (B=1, video only, 22x1560 tokens, 12 heads x 128).

_SIZES = {"hallo3": (2, 226, 13 * 1350, 48, 64), "hallo4": (1, 0, 22 * 1560, 12, 128)}


def _examples(dtype: torch.dtype) -> list[tuple[str, Launch]]:
    launches = []
    for label, (B, L, S, H, D) in _SIZES.items():
        meta = dict(dtype=dtype, device="meta")
        qkv = torch.empty(B, L + S, 3 * H * D, **meta).unflatten(-1, (3, H, D))  # the Linear's output, viewed
        w = torch.empty(4, D, **meta)
        table = torch.empty(S, D, dtype=torch.float32, device="meta")
        launches.append((label, _qk_norm_rope_launch(qkv, w[0], w[1], w[2], w[3], table, table, L, 1e-5)))
    return launches


register(FusedOp("qk_norm_rope", qk_norm_rope, qk_norm_rope_ref, qk_norm_rope_triton, _examples))
