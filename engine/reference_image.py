"""Reference image preparation, as Hallo3 `sample_video.py` L131-187 and L276-307 do it.

A square image is resized (bilinear) to the clip height and zero-padded left and right to the clip width,
and the output video is cropped back to a square; any other image is resized (bicubic) to cover the clip
and centre-cropped. Both are torchvision's tensor resizes, i.e. `F.interpolate(..., antialias=True)`, so
the same calls are used here. The face-masked copy (everything outside the face region black) goes through
the same resize; it is what the reference network sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .validation import InputError


@dataclass(frozen=True)
class PreparedReference:
    """The reference image at clip size, and how to undo the padding on the output."""

    image: torch.Tensor
    """(1, 3, H, W) in [-1, 1]: the full image (conditioning latent, motion frames of the first clip)."""
    face_image: torch.Tensor
    """(1, 3, H, W) in [-1, 1]: the image with everything outside the face region black (reference net)."""
    crop: tuple[int, int] | None
    """(left, width) of the square to crop the output frames to when the image was padded, else None."""


def to_float_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1], like torchvision's ToTensor."""
    array = torch.as_tensor(np.asarray(image))
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != torch.uint8 or 0 in array.shape:
        raise InputError(f"image must be uint8 (H, W, 3) RGB, got {tuple(array.shape)} {array.dtype}")
    return array.permute(2, 0, 1)[None].float() / 255.0


def box_mask(height: int, width: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """(1, 1, H, W) binary mask, 1 inside the box (x0, y0, x1, y1 in pixels, clipped to the image)."""
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"face box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {box}")
    left, top = max(0, int(round(x0))), max(0, int(round(y0)))
    right, bottom = min(width, int(round(x1))), min(height, int(round(y1)))
    if right <= left or bottom <= top:
        raise InputError(f"face box {box} lies outside the {width}x{height} image")
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def _square_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = F.interpolate(x, size=(height, height), mode="bilinear", align_corners=False, antialias=True)
    pad = width - height
    return F.pad(x, (pad // 2, pad - pad // 2, 0, 0)).clamp(0, 1)


def _cover_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if w / h > width / height:
        size = (height, int(w * height / h))
    else:
        size = (int(h * width / w), width)
    # no clamp: the reference keeps bicubic overshoot here
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]


def prepare_reference(
    image: np.ndarray | torch.Tensor, height: int, width: int, face_mask: torch.Tensor | None = None
) -> PreparedReference:
    """Resize/pad/crop an RGB uint8 image (H, W, 3) to the clip size (height, width).

    `face_mask` (1, 1, H, W) in {0, 1} at the image's own size selects the face region (the reference
    builds it from MediaPipe landmarks enlarged 1.2x); None uses the whole image.
    """
    x = to_float_image(image)
    h, w = x.shape[-2:]
    if face_mask is None:
        face = x
    else:
        if face_mask.shape[-2:] != (h, w):
            raise InputError(f"face mask is {tuple(face_mask.shape[-2:])}, the image is {(h, w)}")
        face = x * face_mask
    if width < height:
        raise InputError(f"clip size {height}x{width}: the reference padding needs width >= height")
    square = h == w
    resize = _square_pad if square else _cover_crop
    crop = ((width - height) // 2, height) if square and width != height else None
    return PreparedReference(image=resize(x, height, width) * 2 - 1,
                             face_image=resize(face, height, width) * 2 - 1, crop=crop)
