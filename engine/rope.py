"""3D rotary position embedding as CogVideoX/Hallo3 apply it.

Head channels are split t/h/w = 1/4, 3/8, 3/8; each frequency is repeated twice *interleaved*
and rotated GPT-J style (adjacent pairs), on integer grid positions (no interpolation).
Reference: hallo3 `dit_video_concat.py` `Rotary3DPositionEmbeddingMixin`.
"""

from __future__ import annotations

import torch


def _axis_angles(dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
    angles = positions[:, None] * freqs[None, :]  # (P, dim/2)
    return angles.repeat_interleave(2, dim=-1)  # (P, dim): "(n r)", r=2


def rope_table(
    dims: tuple[int, int, int], frames: int, height: int, width: int, theta: float = 10000.0,
    frame_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (frames*height*width, sum(dims)) in (t, h, w) token order, fp32."""
    dim_t, dim_h, dim_w = dims
    t = _axis_angles(dim_t, torch.arange(frame_offset, frame_offset + frames, dtype=torch.float32), theta)
    h = _axis_angles(dim_h, torch.arange(height, dtype=torch.float32), theta)
    w = _axis_angles(dim_w, torch.arange(width, dtype=torch.float32), theta)
    angles = torch.cat(
        [
            t[:, None, None, :].expand(frames, height, width, dim_t),
            h[None, :, None, :].expand(frames, height, width, dim_h),
            w[None, None, :, :].expand(frames, height, width, dim_w),
        ],
        dim=-1,
    ).reshape(frames * height * width, -1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., S, D) rotated by the (S, D) tables; pairs (2i, 2i+1) rotate together. Math in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., S, D/2, 2)
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)
