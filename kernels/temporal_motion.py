"""Hallo4 temporal motion modulation: per-video-frame features folded to the latent frame rate.

Hallo4 (spec section 8.2) brings pose and audio features from T video frames to G = (T + 3) // 4 latent
frames the way the causal Wan VAE maps time: frame 0 is padded to 4 copies (81 -> 84 = 21 x 4,
49 -> 52 = 13 x 4), each frame's features are LayerNorm-ed, and each group of 4 consecutive frames is
folded either into channels (pose: "b (g four) n c -> b g n (four c)") or into tokens (audio:
"b (g four) m c -> b g (four m) c").

    temporal_motion_fold(x, weight, bias, eps, into_tokens) -> out
    x (B, T, N, C), T % 4 == 1   ->   out (B, G, N, 4C) into channels, or (B, G, 4N, C) into tokens

Output group g, slot j (0..3) is LayerNorm of video frame max(4g + j - 3, 0).

Both folds write the same B*G*4*N normalised rows of C values, in row-major order of the output: the
fold only decides which (batch, frame, token) a row reads. So the kernel gathers its rows straight from x
(any strides, frame 0 read for the padding slots), normalises them in fp32 and stores once, contiguously;
neither the padded (B, 4G, N, C) tensor nor a pre-rearrange copy exists.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import FLOAT_DTYPES, Launch, check_tensor, element_bytes, jit, next_power_of_2, runs_triton, tl
from .registry import FusedOp, register

# Frames per latent frame: the Wan VAE's temporal compression.
FOLD = 4

# ----------------------------------------------------------------------------------------------------
# Kernel. Argument order is (input pointers, integer scalars, output pointers, constexprs), the order a
# TensorRT AOT plugin launches with.


@jit
def _temporal_motion_fold_kernel(
    x_ptr, weight_ptr, bias_ptr,
    R, G, N, C,
    stride_xb, stride_xt, stride_xn, stride_xc,
    out_ptr,
    EPS: tl.constexpr, HAS_AFFINE: tl.constexpr, INTO_TOKENS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One program per block of BLOCK_R output rows; row r of out viewed as (R = B*G*4*N, C).
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    in_row = rows < R
    in_c = cols < C
    # Decode the row into (batch*group, slot j, token n); the two folds order (j, n) differently:
    # into tokens a group's rows are j-major (four m), into channels n-major with j inside (four c).
    if INTO_TOKENS:
        n = rows % N
        j = (rows // N) % 4
    else:
        j = rows % 4
        n = (rows // 4) % N
    bg = rows // (4 * N)
    b = bg // G
    g = bg % G
    frame = tl.maximum(4 * g + j - 3, 0)  # slots 0..2 of group 0 are the padding copies of frame 0
    src = b * stride_xb + frame * stride_xt + n * stride_xn  # (BLOCK_R,)
    mask = in_row[:, None] & in_c[None, :]  # (BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + src[:, None] + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C  # (BLOCK_R,)
    centered = tl.where(mask, x - mean[:, None], 0.0)  # padding columns must not enter the variance
    var = tl.sum(centered * centered, axis=1) / C
    y = centered * (1.0 / tl.sqrt(var + EPS))[:, None]
    if HAS_AFFINE:
        y = y * tl.load(weight_ptr + cols, mask=in_c, other=0.0).to(tl.float32)[None, :]
        y += tl.load(bias_ptr + cols, mask=in_c, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


# Elements per program: small C packs several rows into one program (Hallo4 pose: C=384 -> 8 rows).
_TILE = 4096


def _blocks(rows: int, C: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for `rows` rows of width C."""
    block_c = next_power_of_2(C)
    block_r = max(1, min(_TILE // block_c, next_power_of_2(rows)))
    return block_r, block_c, 8 if block_c >= 2048 else 4


# ----------------------------------------------------------------------------------------------------
# Launcher.


def num_groups(T: int) -> int:
    """Latent frames G for T video frames; T must be 4k + 1 (frame 0 alone, then groups of 4)."""
    if T % FOLD != 1:
        raise ValueError(f"temporal_motion_fold needs T % 4 == 1 video frames (e.g. 49 or 81: frame 0 is padded "
                         f"to 4 copies, then 4 frames per latent frame), got T={T}")
    return (T + FOLD - 1) // FOLD


def _out_shape(B: int, T: int, N: int, C: int, into_tokens: bool) -> tuple[int, int, int, int]:
    G = num_groups(T)
    return (B, G, FOLD * N, C) if into_tokens else (B, G, N, FOLD * C)


def _temporal_motion_fold_launch(x, weight, bias, eps: float, into_tokens: bool) -> Launch:
    check_tensor("x", x, 4, FLOAT_DTYPES, x.device)
    B, T, N, C = x.shape
    out_shape = _out_shape(B, T, N, C, into_tokens)
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be given or both be None")
    affine = weight is not None
    if affine:
        for name, p in (("weight", weight), ("bias", bias)):
            check_tensor(name, p, 1, (x.dtype,), x.device)
            if p.shape[0] != C or p.stride(0) != 1:
                raise ValueError(f"{name} must be a contiguous ({C},) vector (C of x {tuple(x.shape)}), "
                                 f"got shape {tuple(p.shape)} stride {p.stride()}")
    # The kernel's offsets are int32; a view's reach can exceed its numel (slices of a larger tensor).
    reach = sum((size - 1) * stride for size, stride in zip(x.shape, x.stride()) if size > 0)
    if reach >= 2**31:
        raise ValueError(f"x {tuple(x.shape)} with strides {x.stride()} spans too much memory for int32 indexing")
    out = x.new_empty(out_shape)
    rows = B * out_shape[1] * FOLD * N
    block_r, block_c, warps = _blocks(rows, C)
    return Launch(
        _temporal_motion_fold_kernel, (-(-rows // block_r),),
        (x, weight if affine else x, bias if affine else x, rows, out_shape[1], N, C, *x.stride(), out),
        dict(EPS=float(eps), HAS_AFFINE=affine, INTO_TOKENS=bool(into_tokens), BLOCK_R=block_r, BLOCK_C=block_c),
        (out,),
        # Per output element: mean and variance sums, centring, the scale (5), the affine (2 more).
        flops=(7.0 if affine else 5.0) * out.numel(),
        # Compulsory traffic: x once (the padding re-reads of frame 0 hit cache), the weights, out once.
        bytes=element_bytes(x, weight, bias, out),
        num_warps=warps,
    )


def temporal_motion_fold_triton(x, weight, bias, eps: float, into_tokens: bool):
    """Triton launch of `temporal_motion_fold_ref` (same signature and result)."""
    launch = _temporal_motion_fold_launch(x, weight, bias, eps, into_tokens)
    return launch.run()[0] if launch.outputs[0].numel() else launch.outputs[0]


# ----------------------------------------------------------------------------------------------------
# Reference: the definition of correct, and the fallback. The literal Hallo4 sequence: pad, LayerNorm,
# rearrange.


def temporal_motion_fold_ref(x, weight, bias, eps: float, into_tokens: bool):
    """x (B, T, N, C), T % 4 == 1 -> LN per frame, frame 0 padded to 4 copies, groups of 4 folded:
    (B, G, N, 4C) into channels, (B, G, 4N, C) into tokens, G = (T + 3) // 4."""
    B, T, N, C = x.shape
    G = num_groups(T)
    padded = torch.cat([x[:, :1]] * (FOLD - 1) + [x], dim=1)  # (B, 4G, N, C)
    y = F.layer_norm(padded, (C,), weight, bias, eps).reshape(B, G, FOLD, N, C)
    if into_tokens:
        return y.reshape(B, G, FOLD * N, C)  # "b (g four) m c -> b g (four m) c"
    return y.permute(0, 1, 3, 2, 4).reshape(B, G, N, FOLD * C)  # "b (g four) n c -> b g n (four c)"


# ----------------------------------------------------------------------------------------------------
# Custom op: Triton where it can run (CUDA, or CPU under TRITON_INTERPRET=1), the reference otherwise.


@torch.library.custom_op("hallo_rt::temporal_motion_fold", mutates_args=())
def temporal_motion_fold(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, into_tokens: bool,
) -> torch.Tensor:
    impl = temporal_motion_fold_triton if runs_triton(x.device) else temporal_motion_fold_ref
    return impl(x, weight, bias, eps, into_tokens).contiguous()


@temporal_motion_fold.register_fake
def _(x, weight, bias, eps, into_tokens):
    return x.new_empty(_out_shape(*x.shape, into_tokens))


# ----------------------------------------------------------------------------------------------------
# Model-size launches (meta tensors). Hallo4 (480x832, 1560 tokens per latent frame, B=1 per CFG forward):
# pose features 384 = 1536/4 channels folded into channels, audio 32 tokens x 1536 folded into tokens, for
# an 81-frame clip and a 49-frame one. Hallo3 size (480x720, 1350 tokens, width 3072, batched CFG B=2,
# 49 frames): Hallo3 itself folds audio with a temporal conv, so these show the op at that model's size.

_SIZES = {
    # label: (B, T, N, C, into_tokens)
    "hallo4_pose_81f": (1, 81, 1560, 384, False),
    "hallo4_audio_81f": (1, 81, 32, 1536, True),
    "hallo4_pose_49f": (1, 49, 1560, 384, False),
    "hallo4_audio_49f": (1, 49, 32, 1536, True),
    "hallo3_pose_49f": (2, 49, 1350, 768, False),
    "hallo3_audio_49f": (2, 49, 32, 768, True),
}


def _examples(dtype: torch.dtype) -> list[tuple[str, Launch]]:
    launches = []
    for label, (B, T, N, C, into_tokens) in _SIZES.items():
        meta = dict(dtype=dtype, device="meta")
        x, w = torch.empty(B, T, N, C, **meta), torch.empty(C, **meta)
        launches.append((label, _temporal_motion_fold_launch(x, w, w, 1e-5, into_tokens)))
    return launches


register(FusedOp("temporal_motion_fold", temporal_motion_fold, temporal_motion_fold_ref,
                 temporal_motion_fold_triton, _examples))
