"""The face and text inputs of `generate` (runtime/inputs.py): files are read safely and checked for shape,
InsightFace is used the way Hallo3 uses it (largest face, BGR, raw embedding), boxes and masks follow the
image through downscaling, and every fallback is announced with a warning."""

from __future__ import annotations

import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from hallo_rt.engine.config import TINY
from hallo_rt.engine.validation import InputError
from hallo_rt.runtime.inputs import (
    extract_face_embedding,
    load_face_embedding,
    parse_box,
    resolve_face_embedding,
    resolve_face_mask,
    resolve_text_embeddings,
)

DIM = 512
L, D = TINY.text_len, TINY.text_dim  # (16, 64)


def _write(path: Path, array: np.ndarray) -> Path:
    """`array` as .npy (no pickling) or as the single tensor of a .safetensors file, by suffix."""
    if path.suffix == ".safetensors":
        save_file({"embedding": np.ascontiguousarray(array)}, str(path))
    else:
        np.save(path, array, allow_pickle=False)
    return path


def _embedding(seed: int = 0) -> np.ndarray:
    # Raw InsightFace embeddings are not unit vectors (norm ~20-30): keep that scale.
    return (np.random.default_rng(seed).standard_normal(DIM) * 1.1).astype(np.float32)


# ---------------------------------------------------------------------------------- load_face_embedding


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("shape", [(DIM,), (1, DIM)], ids=["flat", "batch1"])
def test_face_embedding_files_are_read_as_512_floats(tmp_path, suffix, shape):
    values = _embedding()
    path = _write(tmp_path / f"face{suffix}", values.reshape(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_face_embedding(path)
    assert loaded.shape == (DIM,) and loaded.dtype == torch.float32
    assert torch.equal(loaded, torch.from_numpy(values))  # exact: no normalisation, no rescaling


def test_face_embedding_other_float_dtypes_become_float32(tmp_path):
    values = _embedding().astype(np.float64)
    loaded = load_face_embedding(_write(tmp_path / "face.npy", values))
    assert loaded.dtype == torch.float32 and torch.equal(loaded, torch.from_numpy(values.astype(np.float32)))


@pytest.mark.parametrize("shape", [(511,), (513,), (2, DIM), (1, 1, DIM), (DIM, 2)])
def test_face_embedding_wrong_size_or_rank_is_refused(tmp_path, shape):
    path = _write(tmp_path / "face.npy", np.ones(shape, np.float32))
    expected = rf"face\.npy: face embedding must have shape \(512,\) or \(1, 512\), got {re.escape(str(shape))}$"
    with pytest.raises(InputError, match=expected):
        load_face_embedding(path)


@pytest.mark.parametrize("shape", [(2, 256), (DIM, 1), (32, 16)])
def test_face_embedding_of_512_values_in_another_2d_shape_is_refused(tmp_path, shape):
    # The message promises (512,) or (1, 512); two faces of 256 values (or a column) are not one embedding.
    path = _write(tmp_path / "face.npy", np.ones(shape, np.float32))
    with pytest.raises(InputError, match=r"must have shape \(512,\) or \(1, 512\)"):
        load_face_embedding(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_face_embedding_non_finite_is_refused(tmp_path, bad, suffix):
    values = _embedding()
    values[7] = bad
    with pytest.raises(InputError, match=rf"face{suffix}: face embedding contains NaN or infinity"):
        load_face_embedding(_write(tmp_path / f"face{suffix}", values))


@pytest.mark.parametrize("array", [np.array(["x"] * DIM), np.zeros(DIM, bool), np.zeros(DIM, np.complex64)],
                         ids=["str", "bool", "complex"])
def test_face_embedding_non_numeric_is_refused(tmp_path, array):
    with pytest.raises(InputError, match=rf"face embedding must be numeric, got dtype {array.dtype}"):
        load_face_embedding(_write(tmp_path / "face.npy", array))


class _MakesDirectoryWhenUnpickled:
    """Unpickling this runs os.mkdir(path): a harmless, visible stand-in for arbitrary code in a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_pickled_npy_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle_ran"
    objects = np.empty(DIM, dtype=object)
    objects[:] = [_MakesDirectoryWhenUnpickled(str(marker))] * DIM
    path = tmp_path / "face.npy"
    np.save(path, objects, allow_pickle=True)
    with pytest.raises(InputError, match=r"face\.npy: cannot read face embedding \(.*allow_pickle"):
        load_face_embedding(path)
    assert not marker.exists()


def test_face_embedding_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match=r"face embedding file .*nope\.npy does not exist"):
        load_face_embedding(tmp_path / "nope.npy")
    (tmp_path / "face.pt").write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match=r"face\.pt: face embedding must be a \.npy or \.safetensors file"):
        load_face_embedding(tmp_path / "face.pt")
    with pytest.raises(InputError, match=r"does not exist"):  # a directory is not an embedding file
        load_face_embedding(tmp_path)


def test_corrupt_npy_is_refused(tmp_path):
    path = tmp_path / "face.npy"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match=r"face\.npy: cannot read face embedding"):
        load_face_embedding(path)


def test_corrupt_safetensors_is_an_input_error(tmp_path):
    # A user's broken file must give the one-line InputError, not safetensors' own exception type.
    path = tmp_path / "face.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(InputError, match=r"face\.safetensors: cannot read face embedding"):
        load_face_embedding(path)


# ---------------------------------------------------------------------------------- InsightFace (faked)


class _Face:
    def __init__(self, bbox, embedding):
        self.bbox = np.asarray(bbox, np.float32)
        self.embedding = embedding


@pytest.fixture
def fake_insightface(monkeypatch):
    """Install modules `insightface` and `insightface.app` whose FaceAnalysis records what it is given and
    returns `state["faces"]`."""
    state: dict = {"faces": [], "images": []}

    class FaceAnalysis:
        def __init__(self, name=None, root=None, providers=None, **kwargs):
            state["root"], state["providers"] = root, providers

        def prepare(self, ctx_id=0, det_size=(640, 640), **kwargs):
            state["prepared"] = (ctx_id, det_size)

        def get(self, img):
            state["images"].append(img.copy())
            return list(state["faces"])

    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = FaceAnalysis
    package = types.ModuleType("insightface")
    package.__path__ = []
    package.app = app
    monkeypatch.setitem(sys.modules, "insightface", package)
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    return state


@pytest.fixture
def model_root(tmp_path) -> Path:
    (tmp_path / "face_analysis" / "models").mkdir(parents=True)
    return tmp_path / "face_analysis"


def _rgb(height: int = 40, width: int = 60) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 10  # R, G, B all different
    image[::3, ::5] = np.random.default_rng(1).integers(0, 256, image[::3, ::5].shape, dtype=np.uint8)
    return image


def test_insightface_largest_face_raw_embedding_bgr(fake_insightface, model_root):
    embeddings = [_embedding(seed) * 20 for seed in range(3)]
    fake_insightface["faces"] = [
        _Face([0, 0, 300, 10], embeddings[0]),  # widest and tallest-reaching box, but area 3000
        _Face([10, 10, 70, 80], embeddings[1]),  # area 60 x 70 = 4200: the largest face
        _Face([5, 5, 25, 105], embeddings[2]),  # tallest, area 2000
    ]
    image = _rgb()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedding = extract_face_embedding(image, model_root)
    assert embedding.dtype == torch.float32 and embedding.shape == (DIM,)
    assert torch.equal(embedding, torch.from_numpy(embeddings[1]))  # raw: norm ~500 here, not 1
    assert fake_insightface["root"] == str(model_root)
    (seen,) = fake_insightface["images"]
    assert seen.shape == image.shape and seen.dtype == np.uint8
    assert np.array_equal(seen, image[:, :, ::-1])  # BGR, as cv2.imread gives the reference
    assert np.array_equal(image[0, 1], [200, 100, 10])  # the caller's image is not flipped in place


def test_insightface_without_faces_gives_zeros_and_a_warning(fake_insightface, model_root):
    with pytest.warns(UserWarning, match="no face in the image: using a zero face embedding"):
        embedding = extract_face_embedding(_rgb(), model_root)
    assert torch.equal(embedding, torch.zeros(DIM))


def test_insightface_is_not_used_without_a_models_directory(fake_insightface, tmp_path):
    (tmp_path / "empty_root").mkdir()
    for root in (tmp_path / "missing_root", tmp_path / "empty_root"):
        assert extract_face_embedding(_rgb(), root) is None
    assert fake_insightface["images"] == []


def test_insightface_not_installed_gives_none(monkeypatch, model_root):
    monkeypatch.setitem(sys.modules, "insightface", None)  # `import insightface` raises ImportError
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    assert extract_face_embedding(_rgb(), model_root) is None


# ---------------------------------------------------------------------------------- resolve_face_embedding


def test_resolve_face_embedding_from_file(tmp_path, fake_insightface, model_root):
    values = _embedding(3)
    path = _write(tmp_path / "face.npy", values.reshape(1, DIM))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedding, source = resolve_face_embedding(_rgb(), path, model_root)
    assert source == f"file {path}"
    assert torch.equal(embedding, torch.from_numpy(values))
    assert fake_insightface["images"] == []  # a given file wins over InsightFace


def test_resolve_face_embedding_from_insightface(fake_insightface, model_root):
    fake_insightface["faces"] = [_Face([0, 0, 10, 10], _embedding(5))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedding, source = resolve_face_embedding(_rgb(), None, model_root)
    assert source == f"insightface ({model_root})"
    assert torch.equal(embedding, torch.from_numpy(_embedding(5)))


@pytest.mark.parametrize("installed_models", [False, True], ids=["no_model_dir", "models_but_no_package"])
def test_resolve_face_embedding_falls_back_to_zeros_with_a_warning(monkeypatch, tmp_path, installed_models):
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    root = tmp_path / "face_analysis"
    if installed_models:
        (root / "models").mkdir(parents=True)
    with pytest.warns(UserWarning) as record:
        embedding, source = resolve_face_embedding(_rgb(), None, root)
    assert source == "zeros" and torch.equal(embedding, torch.zeros(DIM))
    (warning,) = record
    message = str(warning.message)
    assert "no face embedding" in message and "--face-embedding" in message and str(root) in message


def test_resolve_face_embedding_other_dim_never_calls_insightface(fake_insightface, model_root):
    with pytest.warns(UserWarning, match="no face embedding"):
        embedding, source = resolve_face_embedding(_rgb(), None, model_root, dim=64)
    assert source == "zeros" and embedding.shape == (64,)
    assert fake_insightface["images"] == []


# ---------------------------------------------------------------------------------- boxes and masks


@pytest.mark.parametrize("text,box", [("10,20,30,40", (10.0, 20.0, 30.0, 40.0)),
                                      (" 1.5, 2 ,3e2,4", (1.5, 2.0, 300.0, 4.0)),
                                      ("-5,0,10,10", (-5.0, 0.0, 10.0, 10.0))])
def test_parse_box(text, box):
    assert parse_box(text) == box


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,5", "", "a,b,c,d", "1;2;3;4", "1,2,,4"])
def test_parse_box_refuses_anything_but_four_numbers(text):
    with pytest.raises(InputError, match=rf"face box must be four numbers x0,y0,x1,y1 \(pixels\), got {text!r}"):
        parse_box(text)


def _mask_file(path: Path, width: int, height: int, box: tuple[int, int, int, int] | None, value: int = 255) -> Path:
    mask = np.zeros((height, width), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = value
    Image.fromarray(mask).save(path)
    return path


IMAGE_HW = (250, 500)  # the image as read: a 1000x2000 original (width x height 2000 x 1000) downscaled 4x
ORIGINAL_WH = (2000, 1000)


def test_box_is_scaled_from_the_original_to_the_read_image():
    image = np.zeros((*IMAGE_HW, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask, source = resolve_face_mask(image, ORIGINAL_WH, None, (400.0, 200.0, 1200.0, 600.0))
    assert source == "box (400.0, 200.0, 1200.0, 600.0)"
    expected = torch.zeros(1, 1, *IMAGE_HW)
    expected[..., 50:150, 100:300] = 1.0  # the box / 4
    assert torch.equal(mask, expected)


def test_box_outside_or_inverted_is_refused():
    image = np.zeros((*IMAGE_HW, 3), np.uint8)
    with pytest.raises(InputError, match="x1 > x0 and y1 > y0"):
        resolve_face_mask(image, ORIGINAL_WH, None, (100.0, 100.0, 50.0, 200.0))
    with pytest.raises(InputError, match="lies outside the 500x250 image"):
        resolve_face_mask(image, ORIGINAL_WH, None, (2100.0, 0.0, 2200.0, 100.0))


@pytest.mark.parametrize("mask_wh,rect", [((1000, 500), (200, 100, 600, 300)),  # downscaled 2x
                                           ((100, 50), (20, 10, 60, 30))],  # upscaled 5x
                         ids=["larger_mask", "smaller_mask"])
def test_mask_is_resized_to_the_image_with_nearest(tmp_path, mask_wh, rect):
    path = _mask_file(tmp_path / "mask.png", *mask_wh, rect)
    image = np.zeros((*IMAGE_HW, 3), np.uint8)
    mask, source = resolve_face_mask(image, ORIGINAL_WH, path, None)
    assert source == f"mask {path}"
    assert mask.shape == (1, 1, *IMAGE_HW) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}  # nearest: still binary
    expected = torch.zeros(1, 1, *IMAGE_HW)
    expected[..., 50:150, 100:300] = 1.0
    assert torch.equal(mask, expected)


def test_mask_threshold_is_128_on_any_channel(tmp_path):
    mask = np.zeros((250, 500, 3), np.uint8)
    mask[0:10, 0:10, 1] = 128  # green only, at the threshold: face
    mask[20:30, 0:10] = 127  # just below on every channel: not face
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result, _ = resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, tmp_path / "mask.png", None)
    assert result.sum() == 100 and result[0, 0, :10, :10].all()


def test_mask_with_another_aspect_is_refused(tmp_path):
    path = _mask_file(tmp_path / "square.png", 300, 300, (0, 0, 10, 10))
    with pytest.raises(InputError, match=r"square\.png is 300x300, which does not match the image's aspect "
                                         r"\(2000x1000\)"):
        resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, path, None)


def test_all_black_mask_is_refused(tmp_path):
    path = _mask_file(tmp_path / "black.png", 500, 250, None)
    with pytest.raises(InputError, match=r"black\.png is empty \(no pixel >= 128\)"):
        resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, path, None)


def test_unreadable_mask_is_an_input_error(tmp_path):
    (tmp_path / "mask.png").write_text("not an image\n")
    with pytest.raises(InputError, match=r"face mask: .*mask\.png' is not an image file"):
        resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, tmp_path / "mask.png", None)
    with pytest.raises(InputError, match=r"face mask: .*does not exist"):
        resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, tmp_path / "nope.png", None)


def test_mask_and_box_together_are_refused(tmp_path):
    path = _mask_file(tmp_path / "mask.png", 500, 250, (0, 0, 10, 10))
    with pytest.raises(InputError, match="either --face-mask or --face-box, not both"):
        resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, path, (0.0, 0.0, 10.0, 10.0))


def test_no_mask_no_box_is_the_whole_image_with_a_warning():
    with pytest.warns(UserWarning) as record:
        mask, source = resolve_face_mask(np.zeros((*IMAGE_HW, 3), np.uint8), ORIGINAL_WH, None, None)
    assert mask is None and source == "whole image"
    (warning,) = record
    assert "no face region" in str(warning.message) and "--face-mask" in str(warning.message)
    assert "--face-box" in str(warning.message)


# ---------------------------------------------------------------------------------- text embeddings


def test_text_embeddings_default_to_zeros_with_a_warning():
    with pytest.warns(UserWarning) as record:
        text, source = resolve_text_embeddings(None, L, D)
    assert source == "zeros" and torch.equal(text, torch.zeros(L, D))
    (warning,) = record
    assert "no text embeddings" in str(warning.message)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("batched", [False, True], ids=["LD", "1LD"])
def test_text_embeddings_files_are_accepted(tmp_path, suffix, batched):
    values = np.random.default_rng(0).standard_normal((L, D)).astype(np.float32)
    path = _write(tmp_path / f"text{suffix}", values[None] if batched else values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text, source = resolve_text_embeddings(path, L, D)
    assert source == f"file {path}"
    assert text.dtype == torch.float32 and torch.equal(text, torch.from_numpy(values))


@pytest.mark.parametrize("shape", [(L, D - 1), (L + 1, D), (D, L), (2, L, D), (L * D,), (1, 1, L, D)])
def test_text_embeddings_wrong_shape_is_refused_with_the_expected_shape(tmp_path, shape):
    path = _write(tmp_path / "text.safetensors", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=r"text\.safetensors: text embeddings must have shape \(16, 64\) or "
                                         r"\(1, 16, 64\) for this model, got \("):
        resolve_text_embeddings(path, L, D)


@pytest.mark.parametrize("tensors", [2, 0])
def test_text_embeddings_safetensors_must_hold_one_tensor(tmp_path, tensors):
    path = tmp_path / "text.safetensors"
    save_file({name: np.zeros((L, D), np.float32) for name in ["prompt", "negative"][:tensors]}, str(path))
    found = r"\['negative', 'prompt'\]" if tensors else r"\[\]"
    with pytest.raises(InputError, match=rf"text\.safetensors: expected exactly one tensor, found {found}"):
        resolve_text_embeddings(path, L, D)


@pytest.mark.parametrize("name", ["text.pt", "text.json", "text.NPY", "text"])
def test_text_embeddings_unknown_suffix_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"{}")
    with pytest.raises(InputError, match=r"text embeddings must be a \.npy or \.safetensors file"):
        resolve_text_embeddings(tmp_path / name, L, D)


def test_text_embeddings_missing_or_non_finite_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"text embeddings file .*nope\.npy does not exist"):
        resolve_text_embeddings(tmp_path / "nope.npy", L, D)
    values = np.zeros((1, L, D), np.float32)
    values[0, 3, 5] = np.nan
    with pytest.raises(InputError, match="text embeddings contains NaN or infinity"):
        resolve_text_embeddings(_write(tmp_path / "text.npy", values), L, D)
