"""Frame conversion on the CPU: decoder output -> uint8 RGB -> I420, the definition of correct for the CUDA kernels.

The VAE decoder gives float frames in [-1, 1], laid out (3, T, H, W). Encoders and WebRTC want uint8 RGB
(T, H, W, 3) or planar I420 (BT.709, limited range). This module is the reference: `native/frame_convert.cuh`
implements the same arithmetic for CUDA (and for a host test executable that checks it bit for bit against
this file), and `runtime/native_frames.py` launches those kernels.

Arithmetic, exactly:

- RGB: in float32, `v = (x + 1) / 2`, clamp to [0, 1] (NaN -> 0), `v * 255`, truncate toward zero. That is what
  the offline pipeline does (engine/pipeline.py `to_uint8`: `((frames.float() + 1.0) / 2.0).clamp(0.0, 1.0)`,
  then `(unit * 255.0).to(torch.uint8)`), so a stream and `hallo-rt generate` give the same bytes. bf16 and fp16
  inputs are widened to float32 first, which is exact.
- I420: integer fixed point with 16 fractional bits (`LUMA_COEFFS`, `CB_COEFFS`, `CR_COEFFS`):
  `Y = (cr*R + cg*G + cb*B + (16 << 16) + (1 << 15)) >> 16` per pixel, and chroma from the exact sum of the
  2x2 block, `U = (cr*sum(R) + cg*sum(G) + cb*sum(B) + (128 << 18) + (1 << 17)) >> 18` (likewise V), i.e. the
  BT.709 value of the block's exact mean RGB, rounded once, half up. Each sum plus its offset is a non-negative
  int32 (so >> is a floor), and the result always lies in [16, 240]: no clamp. Error against the exact BT.709
  value: at most 0.5 + 0.006 codes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

FIXED_POINT_BITS = 16
"""Fractional bits of the I420 coefficients: 2^16 keeps every coefficient within 0.66 / 65536 of BT.709 (so the
error stays below 0.006 codes) and every sum far below 2^31 (at most about 6.3e7: a chroma row on a 2x2 sum plus
its offset)."""


def _bt709_fixed_point() -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Limited-range BT.709 rows for 8-bit R, G, B, scaled by 2^16.

    Kr = 0.2126, Kb = 0.0722 (ITU-R BT.709-6 table 3 item 3.2); Y' spans 219 codes and Cb, Cr span 224.
    Each coefficient is rounded to the nearest integer; the chroma green coefficient is then set so the row sums to
    exactly zero, which maps every gray to exactly 128.
    """
    kr, kb = 0.2126, 0.0722
    kg = 1.0 - kr - kb
    scale = float(1 << FIXED_POINT_BITS)
    luma = tuple(round(k * 219.0 / 255.0 * scale) for k in (kr, kg, kb))
    cb_r, cb_b = round(-kr / (2.0 * (1.0 - kb)) * 224.0 / 255.0 * scale), round(112.0 / 255.0 * scale)
    cr_r, cr_b = round(112.0 / 255.0 * scale), round(-kb / (2.0 * (1.0 - kr)) * 224.0 / 255.0 * scale)
    return luma, (cb_r, -(cb_r + cb_b), cb_b), (cr_r, -(cr_r + cr_b), cr_b)


LUMA_COEFFS, CB_COEFFS, CR_COEFFS = _bt709_fixed_point()
"""(11966, 40254, 4064), (-6596, -22188, 28784), (28784, -26145, -2639): the same literals are in frame_convert.cuh."""

LUMA_OFFSET = (16 << FIXED_POINT_BITS) + (1 << (FIXED_POINT_BITS - 1))
"""Black level 16 plus one half, so the shift rounds half up."""

CHROMA_OFFSET = (128 << (FIXED_POINT_BITS + 2)) + (1 << (FIXED_POINT_BITS + 1))
"""Zero level 128 plus one half, on the scale of a 2x2 sum (4 pixels = 2 more bits)."""


class I420(NamedTuple):
    """Planar YUV 4:2:0: y (T, H, W), u and v (T, H/2, W/2), uint8; torch tensors or numpy arrays."""

    y: torch.Tensor | np.ndarray
    u: torch.Tensor | np.ndarray
    v: torch.Tensor | np.ndarray

    def packed(self) -> torch.Tensor | np.ndarray:
        """(T, H * 3 / 2, W) uint8: each frame's Y, U and V planes back to back, the standard I420 buffer (what
        `av.VideoFrame.from_ndarray(..., format="yuv420p")` takes per frame)."""
        frames, height, width = self.y.shape
        if isinstance(self.y, np.ndarray):
            flat = np.concatenate([p.reshape(frames, -1) for p in self], axis=1)
        else:
            flat = torch.cat([p.reshape(frames, -1) for p in self], dim=1)
        return flat.reshape(frames, height * 3 // 2, width)


def _check_crop(width: int, crop: tuple[int, int] | None) -> tuple[int, int]:
    """(left, width) of the columns to keep; the whole width when crop is None."""
    if crop is None:
        return 0, width
    left, size = (int(c) for c in crop)
    if left < 0 or size <= 0 or left + size > width:
        raise ValueError(f"crop (left={left}, width={size}) must lie inside the frame width {width}")
    return left, size


def to_rgb8(frames: torch.Tensor, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """Decoder frames (3, T, H, W) in [-1, 1] (float32, bf16 or fp16) -> uint8 (T, H, W', 3) on the same device.

    crop=(left, width) keeps columns [left, left + width) (W' = width), like the pipeline's `reference.crop`.
    Bit-exact with the offline pipeline: fp32 add 1, halve, clamp to [0, 1], times 255, truncate; NaN -> 0.
    """
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor (3, T, H, W), got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"frames must be (3, T, H, W) with 3 channels first, got shape {tuple(frames.shape)}")
    if frames.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"frames must be float32, bfloat16 or float16, got {frames.dtype}")
    left, width = _check_crop(frames.shape[-1], crop)
    frames = frames[..., left:left + width]  # the ops below are per pixel, so cropping first changes nothing
    pixels = frames.float() + 1.0  # out of place: .float() of a float32 tensor is the caller's tensor itself
    pixels.div_(2.0).clamp_(0.0, 1.0)  # (3, T, H, W') in place: same IEEE results as the pipeline's chain
    pixels.nan_to_num_(nan=0.0)  # the pipeline leaves NaN to the platform's float->uint8 cast (0 on x86 and Arm)
    pixels.mul_(255.0)
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).contiguous()  # truncation toward zero, (T, H, W', 3)


def rgb8_to_i420(rgb: torch.Tensor | np.ndarray) -> I420:
    """uint8 RGB (T, H, W, 3) or (H, W, 3), even H and W -> I420 planes (BT.709, limited range), fixed point as in
    the module docstring. Returns the same kind (torch or numpy) as given; a single frame keeps T = 1."""
    as_numpy = isinstance(rgb, np.ndarray)
    if not as_numpy and not isinstance(rgb, torch.Tensor):
        raise TypeError(f"rgb must be a torch.Tensor or numpy array, got {type(rgb).__name__}")
    pixels = torch.from_numpy(rgb) if as_numpy else rgb
    if pixels.dtype != torch.uint8:
        raise ValueError(f"rgb must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"rgb must be (T, H, W, 3) or (H, W, 3), got shape {tuple(rgb.shape)}")
    _, height, width, _ = pixels.shape
    if height % 2 or width % 2:
        raise ValueError(f"I420 needs an even height and width, got {height}x{width}")
    # channel planes (3, T, H, W), contiguous: strided channel views make every pass below several times slower
    channels = pixels.permute(3, 0, 1, 2).to(torch.int32, memory_format=torch.contiguous_format)
    y = _weighted(LUMA_COEFFS, *channels).add_(LUMA_OFFSET) >> FIXED_POINT_BITS
    pairs = channels[..., 0::2] + channels[..., 1::2]  # (3, T, H, W/2): horizontal pairs
    sums = pairs[:, :, 0::2] + pairs[:, :, 1::2]  # (3, T, H/2, W/2): 2x2 block sums, 0..1020
    u = _weighted(CB_COEFFS, *sums).add_(CHROMA_OFFSET) >> (FIXED_POINT_BITS + 2)
    v = _weighted(CR_COEFFS, *sums).add_(CHROMA_OFFSET) >> (FIXED_POINT_BITS + 2)
    planes = I420(*(p.to(torch.uint8) for p in (y, u, v)))  # always within [16, 240]: no clamp needed
    return I420(*(p.numpy() for p in planes)) if as_numpy else planes


def _weighted(coeffs: tuple[int, int, int], red: torch.Tensor, green: torch.Tensor, blue: torch.Tensor) -> torch.Tensor:
    """cr * red + cg * green + cb * blue in int32 (a new tensor; add_ with alpha saves two temporaries)."""
    return torch.mul(red, coeffs[0]).add_(green, alpha=coeffs[1]).add_(blue, alpha=coeffs[2])


def to_i420(frames: torch.Tensor, crop: tuple[int, int] | None = None) -> I420:
    """Decoder frames (3, T, H, W) in [-1, 1] -> I420 planes: `rgb8_to_i420(to_rgb8(frames, crop))`, the composition
    the fused CUDA kernel computes in one pass."""
    return rgb8_to_i420(to_rgb8(frames, crop))
