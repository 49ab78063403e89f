"""The artifact cache of the export chain (torch -> ONNX -> TensorRT plan).

Every artifact is stored under a key that hashes what made it, never a hand-built string (STYLE "Export";
counter-example: StreamDiffusion's `unet--lcm_lora-True--tiny_vae-True...` prefixes):

    key = sha256(canonical JSON of {descriptor hash, weights digest, stage, versions of the libraries the
                                    stage depends on, GPU architecture (plans only), extra})

    cache = ArtifactCache()                      # $HALLO_RT_CACHE or ~/.cache/hallo-rt
    key = artifact_key(descriptor, weights_digest, "plan", {"onnx": onnx_digest})
    path = cache.get(key, "denoiser.plan") or cache.put(key, "denoiser.plan", plan_bytes, producer)

An entry is `<root>/<key[:2]>/<key>/<filename>` plus `<filename>.json`, a sidecar saying what produced it.
Both are written to a temporary file in the same directory and renamed into place, the sidecar last, so a
reader sees either a complete entry or none (an artifact without its sidecar is a miss).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from .descriptors import GraphDescriptor

# What each stage's output depends on besides the descriptor and the weights. ONNX files depend on the
# exporter (torch, onnxscript) and onnx; int8 graphs on ONNX Runtime's quantiser; fp8 graphs on ModelOpt's
# Q/DQ placement. A plan is built from an ONNX file, whose content digest goes in `extra`, so the exporter's
# versions reach it through that digest; what the plan adds is TensorRT (and Triton for the plugins' PTX)
# and the GPU it was tuned on.
STAGES: dict[str, tuple[str, ...]] = {
    "onnx": ("torch", "onnxscript", "onnx"),
    "onnx-plugin": ("torch", "onnxscript", "onnx"),
    "onnx-int8": ("torch", "onnxscript", "onnx", "onnxruntime"),
    "onnx-fp8": ("torch", "onnx", "modelopt"),
    "plan": ("tensorrt",),
    "plan-plugin": ("tensorrt", "triton"),
    "plan-fp8": ("tensorrt",),
}
_KEY = re.compile(r"[0-9a-f]{64}")


def canonical_json(value) -> str:
    """Sorted keys, no whitespace, no fallback for unknown types (an object's repr is not a stable key)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def digest_json(value) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """`module.__version__` of each library, None when it is not installed (or does not import)."""
    out = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an installed but broken package (tensorrt without its libs) counts as absent
            out[name] = None
            continue
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def gpu_architecture() -> dict | None:
    """The CUDA device plans are built for: {"compute_capability": "9.0", "name": ...}, or None without one.

    torch's current device when torch has CUDA (TensorRT builds on the calling thread's current device),
    else device 0 through the driver API, so a CPU build of torch on a GPU machine still finds the GPU.
    """
    try:
        import torch

        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(index)
            return {"compute_capability": f"{major}.{minor}", "name": torch.cuda.get_device_name(index)}
    except Exception:  # noqa: BLE001, S110 - torch without a working CUDA: ask the driver
        pass
    return _driver_gpu()


def _driver_gpu() -> dict | None:
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, count = ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    major, minor, name = ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76 (cuda.h).
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
    cuda.cuDeviceGetName(name, len(name), device)
    return {"compute_capability": f"{major.value}.{minor.value}", "name": name.value.decode(errors="replace")}


def key_ingredients(descriptor: GraphDescriptor, weights_digest, stage: str, extra: dict | None = None, *,
                    versions: dict | None = None, gpu: dict | None = None) -> dict:
    """Everything an artifact key hashes, as a JSON-able dict (also what the cache sidecar records).

    `weights_digest`: a digest string or a dict of them (per component). `versions`: the stage's library
    versions (default: probed, `STAGES`). `gpu`: for plan stages, the `gpu_architecture()` to key by
    (default: the current device's; a plan stage without a GPU is an error, not a key without one).
    `extra`: anything else that changes the artifact (builder settings, the source file's digest).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown artifact stage {stage!r}; known stages: {', '.join(STAGES)}")
    if versions is None:
        versions = library_versions(STAGES[stage])
    ingredients = {"descriptor": descriptor.compute_hash(), "graph": descriptor.name,
                   "weights_digest": weights_digest, "stage": stage, "versions": dict(versions),
                   "extra": extra or {}}
    if stage.startswith("plan"):
        gpu = gpu if gpu is not None else gpu_architecture()
        if gpu is None:
            raise ValueError(f"stage {stage!r} is keyed by the GPU architecture and no CUDA device is visible; "
                             "build plans on the GPU they will run on (or pass gpu=)")
        # The name too, not only the capability: TensorRT tunes tactics for the exact device (an H100 plan
        # on an H200 loads, with a warning, but is not tuned for it).
        ingredients["gpu"] = {"compute_capability": gpu["compute_capability"], "name": gpu.get("name")}
    canonical_json(ingredients)  # fail here, naming nothing unstable, rather than at hashing time
    return ingredients


def artifact_key(descriptor: GraphDescriptor, weights_digest, stage: str, extra: dict | None = None, *,
                 versions: dict | None = None, gpu: dict | None = None) -> str:
    """SHA-256 (hex) over the canonical JSON of `key_ingredients(...)` (same arguments)."""
    return digest_json(key_ingredients(descriptor, weights_digest, stage, extra, versions=versions, gpu=gpu))


def file_digest(paths: Iterable[str | Path], chunk: int = 1 << 24) -> str:
    """SHA-256 over the files' names (without directory) and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of one file's bytes (what `sha256sum` prints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, data) -> Path:
    """Write bytes-like `data` to `path` through a temporary file in the same directory and a rename, so
    the path holds the old content or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | Path, dst: str | Path, *, link: bool = True) -> Path:
    """Put `src` at `dst` atomically: a hard link when `link` and the filesystem allows (plans are GBs),
    else a copy; through a temporary name in dst's directory either way."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            if not link:
                raise OSError("copy requested")
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def default_cache_root() -> Path:
    return Path(os.environ.get("HALLO_RT_CACHE") or "~/.cache/hallo-rt").expanduser()


class ArtifactCache:
    """Content-keyed files under `root` (default `$HALLO_RT_CACHE`, else `~/.cache/hallo-rt`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def path_for(self, key: str, filename: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"artifact keys are 64 lowercase hex digits (artifact_key), got {key!r}")
        if not filename or filename != Path(filename).name or filename.startswith("."):
            raise ValueError(f"artifact filename must be a plain file name, got {filename!r}")
        return self.root / key[:2] / key / filename

    def _sidecar(self, key: str, filename: str) -> Path:
        return self.path_for(key, filename + ".json")

    def get(self, key: str, filename: str, *, verify: bool = False) -> Path | None:
        """The entry's path, or None if it is absent or incomplete. `verify`: also re-hash the content
        against the sidecar's digest (reads the whole file)."""
        path, sidecar = self.path_for(key, filename), self._sidecar(key, filename)
        if not (path.is_file() and sidecar.is_file()):
            return None
        if verify and self.info(key, filename).get("sha256") != sha256_file(path):
            return None
        return path

    def info(self, key: str, filename: str) -> dict | None:
        """The sidecar of an entry: key, filename, bytes, sha256, created, producer."""
        sidecar = self._sidecar(key, filename)
        return json.loads(sidecar.read_text()) if sidecar.is_file() else None

    def put(self, key: str, filename: str, data, producer: dict | None = None, *, link: bool = True) -> Path:
        """Store bytes-like `data`, or the file at a `Path` `data` (hard-linked when `link` and possible),
        under (key, filename), then its sidecar recording `producer` (e.g. `key_ingredients(...)` and build
        info). Returns the entry's path."""
        path = self.path_for(key, filename)
        if isinstance(data, (str, Path)):
            atomic_copy(data, path, link=link)
        else:
            atomic_write(path, data)
        sidecar = {"key": key, "filename": filename, "bytes": path.stat().st_size,
                   "sha256": sha256_file(path), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "producer": producer or {}}
        atomic_write(self._sidecar(key, filename), json.dumps(sidecar, indent=2, default=str).encode())
        return path
