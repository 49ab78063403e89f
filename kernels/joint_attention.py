"""Joint self-attention over [text | video | reference bank]: a flash-attention forward.

    joint_attention(q, k, v, k_bank, v_bank) -> out (B, Sq, H*Dh)

q (B, H, Sq, Dh); k, v (B, H, Sk, Dh); k_bank, v_bank (B, H, Nb, Dh) or both None; any strides for all of them.
The keys are [k | k_bank]: the kernel loops over the main keys, then over the bank keys read from their own
buffers, so the (B, H, Sk+Nb, Dh) concatenation the model makes every layer is never materialised. v is read in
place from the QKV projection (`qkv[:, :, 2].transpose(1, 2)`), the bank values from the bank's K/V projection.
The output is written as (B, Sq, H*Dh), the layout the output Linear consumes (no transpose + copy).

Online softmax in fp32 with exp2: log2(e) is folded into the 1/sqrt(Dh) scale. fp32 inputs use IEEE fp32 dots
(the accuracy path); fp16/bf16 inputs use half-precision dots accumulating in fp32, probabilities rounded to the
input dtype before the PV product (as the flash-attention kernels and torch's half SDPA do).
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import FLOAT_DTYPES, Launch, check_tensor, element_bytes, jit, runs_triton, tl
from .registry import FusedOp, register

# ----------------------------------------------------------------------------------------------------
# Kernel. Argument order is (input pointers, integer scalars, output pointers, constexprs), the order a
# TensorRT AOT plugin launches with.


@jit
def _attend_block(
    acc, m_i, l_i, q, k_base, v_base, start, N, stride_kn, stride_kd, stride_vn, stride_vd,
    QK_SCALE: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ALIGNED: tl.constexpr, Q_IN_LOOP: tl.constexpr,
):
    """One BLOCK_N block of keys/values into the running (acc, row max m_i, row sum l_i), log2 domain.
    `q` is the (BLOCK_M, BLOCK_D) query tile, or with Q_IN_LOOP its pointers (loaded here, from L1)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ptrs = k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn  # K^T tile (BLOCK_D, BLOCK_N)
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, BLOCK_D)
    if ALIGNED:  # every head row starts on 16 bytes (launcher-checked): 16-byte vector loads, cp.async pipeline
        k_ptrs = tl.multiple_of(k_ptrs, [16, 1])
        v_ptrs = tl.multiple_of(v_ptrs, [1, 16])
    if MASKED:  # only the ragged last block pays for masks
        valid = offs_n < N
        k = tl.load(k_ptrs, mask=valid[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if Q_IN_LOOP:
        q = tl.load(q)
    qk = tl.dot(q, k, input_precision=DOT_PRECISION) * QK_SCALE  # (BLOCK_M, BLOCK_N) fp32, log2 units
    if MASKED:
        qk = tl.where(valid[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))  # finite: every block processed has a valid key
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@jit
def _attend(
    acc, m_i, l_i, q, k_base, v_base, N, stride_kn, stride_kd, stride_vn, stride_vd,
    QK_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr, Q_IN_LOOP: tl.constexpr,
):
    """All N keys of one key buffer: full blocks without masks, then the ragged tail."""
    n_full = (N // BLOCK_N) * BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, start, N, stride_kn, stride_kd,
                                      stride_vn, stride_vd, QK_SCALE, False, BLOCK_N, BLOCK_D, DOT_PRECISION,
                                      ALIGNED, Q_IN_LOOP)
    if n_full < N:
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, n_full, N, stride_kn, stride_kd,
                                      stride_vn, stride_vd, QK_SCALE, True, BLOCK_N, BLOCK_D, DOT_PRECISION,
                                      ALIGNED, Q_IN_LOOP)
    return acc, m_i, l_i


@jit
def _joint_attention_kernel(
    q_ptr, k_ptr, v_ptr, k_bank_ptr, v_bank_ptr,
    H, SQ, SK, NB,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd, stride_kbb, stride_kbh, stride_kbn, stride_kbd,
    stride_vbb, stride_vbh, stride_vbn, stride_vbd,
    out_ptr,
    QK_SCALE: tl.constexpr, HAS_BANK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, ALIGNED: tl.constexpr, Q_IN_LOOP: tl.constexpr,
):
    pid_m = tl.program_id(0)  # grid (query blocks, B*H)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < SQ
    rows = tl.minimum(offs_m, SQ - 1)  # padding rows re-read the last query (no load masks); never stored
    q_ptrs = q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd
    # (B, Sq, H*Dh) output: row (b, m), columns h*Dh .. h*Dh + Dh.
    out_ptrs = out_ptr + (b * SQ + offs_m[:, None]) * (H * BLOCK_D) + h * BLOCK_D + offs_d[None, :]
    if ALIGNED:
        q_ptrs = tl.multiple_of(q_ptrs, [1, 16])
        out_ptrs = tl.multiple_of(out_ptrs, [1, 16])
    if Q_IN_LOOP:
        # fp32 FMA dots hold each thread's share of the q operand in registers, K = Dh wide: at BLOCK_D=128 that
        # spills. Reloading the (L1-resident) tile in every step keeps it out of the loop-carried registers.
        q = q_ptrs
    else:
        q = tl.load(q_ptrs)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_ptr + b * stride_kb + h * stride_kh,
                            v_ptr + b * stride_vb + h * stride_vh, SK, stride_kn, stride_kd, stride_vn, stride_vd,
                            QK_SCALE, BLOCK_N, BLOCK_D, DOT_PRECISION, ALIGNED, Q_IN_LOOP)
    if HAS_BANK:  # the same softmax continues over the bank's keys, read from the bank's own buffers
        acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_bank_ptr + b * stride_kbb + h * stride_kbh,
                                v_bank_ptr + b * stride_vbb + h * stride_vbh, NB, stride_kbn, stride_kbd,
                                stride_vbn, stride_vbd, QK_SCALE, BLOCK_N, BLOCK_D, DOT_PRECISION, ALIGNED,
                                Q_IN_LOOP)
    out = acc / l_i[:, None]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=in_m[:, None])


# ----------------------------------------------------------------------------------------------------
# Launcher.

_LOG2E = 1.4426950408889634


def _config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for sm_90, chosen so the AOT build neither spills nor exceeds
    shared memory (python -m hallo_rt.kernels.compile_check --dtype fp16 bf16 fp32; not timed on a GPU).

    Half precision: 128 query rows over two warpgroups (64 wgmma rows each), 64-key tiles, 3-stage cp.async
    pipeline (Dh=64: 120 registers, 64 KiB; Dh=128: 158 registers, 128 KiB). fp32 IEEE dots run on FMA units
    whose operand layouts replicate rows across threads, so the tiles are small (Dh=64: 166 registers;
    Dh=128: 79)."""
    if dtype == torch.float32:
        return (32, 32, 4, 2) if head_dim <= 64 else (32, 16, 8, 2)
    return (128, 64, 8, 3) if head_dim <= 128 else (64, 32, 8, 2)


def _max_offset(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()) if n > 0)


def _aligned(*tensors: torch.Tensor | None) -> bool:
    """Whether every operand has unit head-dim stride and all its rows start on 16 bytes (the model's layouts).

    The kernel then tells the compiler so (`tl.multiple_of`): an AOT signature carries no alignment, and
    without it the loads are neither vectorised nor pipelined through cp.async."""
    for t in tensors:
        if t is None:
            continue
        row_strides = t.stride()[:-1]
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * t.element_size() % 16 for s in row_strides):
            return False
    return True


def _joint_attention_launch(q, k, v, k_bank, v_bank, *, block_m: int | None = None,
                            block_n: int | None = None) -> Launch:
    check_tensor("q", q, 4, FLOAT_DTYPES, q.device)
    B, H, Sq, D = q.shape
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"head dim must be a power of 2 in [16, 256] (tensor-core dot tiles), got {D}")
    check_tensor("k", k, 4, (q.dtype,), q.device)
    check_tensor("v", v, 4, (q.dtype,), q.device)
    Sk = k.shape[2]
    if tuple(k.shape) != (B, H, Sk, D) or tuple(v.shape) != (B, H, Sk, D):
        raise ValueError(f"k and v must have shape {(B, H, 'Sk', D)} (q is {tuple(q.shape)}), "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if (k_bank is None) != (v_bank is None):
        raise ValueError("k_bank and v_bank must both be given or both be None")
    bank = k_bank is not None
    Nb = 0
    if bank:
        check_tensor("k_bank", k_bank, 4, (q.dtype,), q.device)
        check_tensor("v_bank", v_bank, 4, (q.dtype,), q.device)
        Nb = k_bank.shape[2]
        if tuple(k_bank.shape) != (B, H, Nb, D) or tuple(v_bank.shape) != (B, H, Nb, D):
            raise ValueError(f"k_bank and v_bank must have shape {(B, H, 'Nb', D)}, "
                             f"got {tuple(k_bank.shape)} and {tuple(v_bank.shape)}")
    if Sk + Nb == 0:
        raise ValueError("attention needs at least one key: k is empty and there is no bank")
    for name, t in (("q", q), ("k", k), ("v", v), ("k_bank", k_bank), ("v_bank", v_bank)):
        if t is not None and _max_offset(t) >= 2**31:
            raise ValueError(f"{name} view {tuple(t.shape)} spans more than 2**31 elements: split the batch")
    default_m, default_n, num_warps, num_stages = _config(D, q.dtype)
    block_m, block_n = block_m or default_m, block_n or default_n
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name} must be a power of 2 >= 16, got {block}")
    out = q.new_empty(B, Sq, H * D)
    bank_strides = (*k_bank.stride(), *v_bank.stride()) if bank else (0,) * 8
    return Launch(
        _joint_attention_kernel, ((Sq + block_m - 1) // block_m, B * H),
        (q, k, v, k_bank if bank else k, v_bank if bank else v, H, Sq, Sk, Nb,
         *q.stride(), *k.stride(), *v.stride(), *bank_strides, out),
        dict(QK_SCALE=_LOG2E / math.sqrt(D), HAS_BANK=bank, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=D,
             DOT_PRECISION="ieee", ALIGNED=_aligned(q, k, v, k_bank, v_bank, out),
             Q_IN_LOOP=q.dtype == torch.float32),
        (out,),
        flops=4.0 * B * H * Sq * (Sk + Nb) * D,
        bytes=element_bytes(q, k, v, k_bank, v_bank, out),
        num_warps=num_warps, num_stages=num_stages,
    )


def joint_attention_triton(q, k, v, k_bank, v_bank, *, block_m: int | None = None, block_n: int | None = None):
    """Triton launch of `joint_attention_ref` (same signature and result). `block_m`/`block_n` override the sm_90
    tile sizes (for the CPU interpreter, where fewer, larger programs run faster); not part of the op."""
    launch = _joint_attention_launch(q, k, v, k_bank, v_bank, block_m=block_m, block_n=block_n)
    return launch.run()[0] if launch.outputs[0].numel() else launch.outputs[0]


# ----------------------------------------------------------------------------------------------------
# Reference: the definition of correct, and the fallback. The math of `engine.dit.JointAttention` step 3-4.


def joint_attention_ref(q, k, v, k_bank, v_bank):
    """SDPA of q over keys/values [k | k_bank], [v | v_bank]; (B, H, Sq, Dh) -> (B, Sq, H*Dh)."""
    if k_bank is not None:
        k = torch.cat([k, k_bank], dim=2)  # (B, H, Sk+Nb, Dh)
        v = torch.cat([v, v_bank], dim=2)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Sq, Dh)
    return out.transpose(1, 2).flatten(2)  # (B, Sq, H*Dh)


# ----------------------------------------------------------------------------------------------------
# Custom op: Triton where it can run (CUDA, or CPU under TRITON_INTERPRET=1), the reference otherwise.


@torch.library.custom_op("hallo_rt::joint_attention", mutates_args=())
def joint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_bank: Optional[torch.Tensor], v_bank: Optional[torch.Tensor],
) -> torch.Tensor:
    impl = joint_attention_triton if runs_triton(q.device) else joint_attention_ref
    return impl(q, k, v, k_bank, v_bank).contiguous()


@joint_attention.register_fake
def _(q, k, v, k_bank, v_bank):
    B, H, Sq, D = q.shape
    return q.new_empty(B, Sq, H * D)


# ----------------------------------------------------------------------------------------------------
# Model-size launches (meta tensors), laid out as the model makes them: q and k from qk_norm_rope
# (contiguous), v a view of the QKV projection, the bank's values a view of its (B, Nb, 2, H, Dh) K/V
# projection and its keys LayerNorm-ed (contiguous). Hallo3: CFG batch 2, 226 text + 13x1350 video tokens,
# a 1350-token bank, 48 heads x 64. Hallo4: B=1, 22x1560 video tokens, 12 heads x 128, no bank.

_SIZES = {"hallo3": (2, 48, 64, 226 + 13 * 1350, 1350), "hallo4": (1, 12, 128, 22 * 1560, 0)}


def _examples(dtype: torch.dtype) -> list[tuple[str, Launch]]:
    launches = []
    for label, (B, H, D, S, Nb) in _SIZES.items():
        meta = dict(dtype=dtype, device="meta")
        qkv = torch.empty(B, S, 3 * H * D, **meta).unflatten(-1, (3, H, D))  # (B, S, 3, H, Dh)
        q, k = torch.empty(B, H, S, D, **meta), torch.empty(B, H, S, D, **meta)
        v = qkv[:, :, 2].transpose(1, 2)  # (B, H, S, Dh) view
        k_bank = v_bank = None
        if Nb:
            kv = torch.empty(B, Nb, 2 * H * D, **meta).unflatten(-1, (2, H, D))  # (B, Nb, 2, H, Dh)
            k_bank, v_bank = torch.empty(B, H, Nb, D, **meta), kv[:, :, 1].transpose(1, 2)
        launches.append((label, _joint_attention_launch(q, k, v, k_bank, v_bank)))
    return launches


register(FusedOp("joint_attention", joint_attention, joint_attention_ref, joint_attention_triton, _examples))
