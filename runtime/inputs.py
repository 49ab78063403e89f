"""Face and text inputs of `generate`: the face embedding, the face region, the text embeddings.

Hallo3 computes the face embedding with InsightFace (`scrfd_10g_bnkps` + `glintr100`, largest face, raw
512-d `embedding`, not L2-normalised; 512 zeros when no face is found) and the face region from MediaPipe
landmarks (a box enlarged 1.2x). T5-XXL gives the text embeddings. None of those models ship with
hallo-rt; each input can be given precomputed, and each fallback is announced with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from hallo_rt.engine.reference_image import box_mask
from hallo_rt.engine.validation import InputError

from .media import MediaError, read_image


def _load_array(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                tensors = load_file(str(path))
            except SafetensorError as err:
                raise InputError(f"{path}: cannot read {what}: not a readable safetensors file ({err})") from None
            if len(tensors) != 1:
                raise InputError(f"{path}: expected exactly one tensor, found {sorted(tensors)}")
            return next(iter(tensors.values()))
    except (ValueError, OSError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot read {what} ({err})") from None
    raise InputError(f"{path}: {what} must be a .npy or .safetensors file")


def _finite(array: np.ndarray, path: str | Path, what: str) -> torch.Tensor:
    if array.dtype.kind not in "fiu":
        raise InputError(f"{path}: {what} must be numeric, got dtype {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise InputError(f"{path}: {what} contains NaN or infinity")
    return tensor


def check_embedding_file(path: str | Path, what: str) -> None:
    """Cheap early check (before minutes of model loading): the file exists, reads, is numeric and finite.
    Its shape is checked against the model later."""
    _finite(_load_array(path, what), path, what)


def load_face_embedding(path: str | Path, dim: int = 512) -> torch.Tensor:
    """A precomputed face embedding (`dim`,) or (1, `dim`) from .npy/.safetensors."""
    array = _load_array(path, "face embedding")
    if array.shape not in ((dim,), (1, dim)):
        raise InputError(f"{path}: face embedding must have shape ({dim},) or (1, {dim}), got {array.shape}")
    return _finite(array, path, "face embedding").reshape(dim)


def extract_face_embedding(image: np.ndarray, model_root: str | Path) -> torch.Tensor | None:
    """The raw InsightFace embedding of the largest face (Hallo3 `sgm/utils/image_processor.py` L54-98),
    zeros if no face is found, or None when InsightFace or its model files are not installed."""
    root = Path(model_root)
    if not (root / "models").is_dir():
        return None
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        return None
    app = FaceAnalysis(name="", root=str(root), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))  # InsightFace expects BGR
    if not faces:
        warnings.warn("InsightFace found no face in the image: using a zero face embedding, as the "
                      "reference does", stacklevel=2)
        return torch.zeros(512)
    largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return torch.as_tensor(np.asarray(largest.embedding, dtype=np.float32))


def resolve_face_embedding(image: np.ndarray, path: str | Path | None, model_root: str | Path,
                           dim: int = 512) -> tuple[torch.Tensor, str]:
    """(embedding, where it came from): the given file, else InsightFace, else zeros with a warning."""
    if path is not None:
        return load_face_embedding(path, dim), f"file {path}"
    extracted = extract_face_embedding(image, model_root) if dim == 512 else None
    if extracted is not None:
        return extracted, f"insightface ({model_root})"
    warnings.warn(f"no face embedding: pass --face-embedding FILE.npy, or install insightface with its "
                  f"antelope/buffalo models under {model_root}; using zeros (what the reference does when it "
                  f"finds no face), which weakens identity", stacklevel=2)
    return torch.zeros(dim), "zeros"


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' in pixels of the original image."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"face box must be four numbers x0,y0,x1,y1 (pixels), got {text!r}")
    return values  # type: ignore[return-value]


def resolve_face_mask(image: np.ndarray, original_size: tuple[int, int], mask_path: str | Path | None,
                      box: tuple[float, float, float, float] | None) -> tuple[torch.Tensor | None, str]:
    """(mask (1, 1, H, W) at the image's size or None for the whole image, description).

    `original_size` (width, height) is the image file's own size: boxes and masks refer to it even when
    the image was downscaled on reading."""
    height, width = image.shape[:2]
    if mask_path is not None and box is not None:
        raise InputError("give either --face-mask or --face-box, not both")
    if box is not None:
        scale_x, scale_y = width / original_size[0], height / original_size[1]
        scaled = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        return box_mask(height, width, scaled), f"box {box}"
    if mask_path is not None:
        try:
            mask = read_image(mask_path)
        except MediaError as err:
            raise InputError(f"face mask: {err}") from None
        if abs(mask.shape[1] / mask.shape[0] - width / height) > 0.01:
            raise InputError(f"face mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, which does not match "
                             f"the image's aspect ({original_size[0]}x{original_size[1]})")
        tensor = torch.from_numpy(mask.max(axis=2) >= 128).float()[None, None]
        if tensor.shape[-2:] != (height, width):
            tensor = torch.nn.functional.interpolate(tensor, size=(height, width), mode="nearest")
        if tensor.sum() == 0:
            raise InputError(f"face mask {mask_path} is empty (no pixel >= 128)")
        return tensor, f"mask {mask_path}"
    warnings.warn("no face region: pass --face-mask IMG or --face-box x0,y0,x1,y1; the whole image is used "
                  "as the reference network's face image", stacklevel=2)
    return None, "whole image"


def resolve_text_embeddings(path: str | Path | None, text_len: int, text_dim: int) -> tuple[torch.Tensor, str]:
    """(text_len, text_dim) T5 embeddings from a file, or zeros (the unconditional text) with a warning."""
    if path is None:
        warnings.warn("no text embeddings: using zeros, the model's unconditional text (see the README for "
                      "producing T5 embeddings of a prompt)", stacklevel=2)
        return torch.zeros(text_len, text_dim), "zeros"
    array = _load_array(path, "text embeddings")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (text_len, text_dim):
        raise InputError(f"{path}: text embeddings must have shape ({text_len}, {text_dim}) or "
                         f"(1, {text_len}, {text_dim}) for this model, got {array.shape}")
    return _finite(array, path, "text embeddings"), f"file {path}"
