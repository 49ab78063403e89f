"""CUDA frame conversion: the kernels of native/frame_convert.cu, loaded through cuda-python's driver API.

The fatbin is built by the repository's CMakeLists.txt (`cmake -S . -B build/native && cmake --build build/native`).
Kernels run on torch's current stream and write into tensors allocated by torch, so they order with the decoder's
work like any torch op. Their bytes equal `runtime/frame_convert.py` (the CPU path and definition of correct), which
the tests check through the host build of the same arithmetic; nothing here falls back to the CPU by itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .frame_convert import I420, _check_crop

FATBIN_NAME = "frame_convert.fatbin"
NATIVE_DIR_ENV = "HALLO_RT_NATIVE_DIR"
"""Directory holding frame_convert.fatbin; searched before the repository's build/native."""

_REPO_BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "native"
_BLOCK = (32, 8, 1)  # 256 threads: one warp spans 32 columns, so loads along W coalesce
_MAX_FRAMES = 65535  # grid z limit: one frame per z index
_KERNEL_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_CPU_HINT = ("the CPU path gives the same bytes: hallo_rt.runtime.frame_convert.to_rgb8 / to_i420 "
             "(move the frames to the CPU first)")


class NativeUnavailable(RuntimeError):
    """The CUDA frame path cannot be used here; the message says what is missing and points to the CPU path."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; {_CPU_HINT}")
        self.reason = reason


def find_fatbin(path: str | os.PathLike | None = None) -> Path:
    """The fatbin to load: `path` (a file or a directory), else $HALLO_RT_NATIVE_DIR, else build/native in the
    repository. Raises NativeUnavailable naming every place it looked."""
    if path is not None:
        candidates = [Path(path) / FATBIN_NAME if Path(path).is_dir() else Path(path)]
    else:
        candidates = [Path(os.environ[NATIVE_DIR_ENV]) / FATBIN_NAME] if os.environ.get(NATIVE_DIR_ENV) else []
        candidates.append(_REPO_BUILD_DIR / FATBIN_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise NativeUnavailable(f"{FATBIN_NAME} not found (looked in: {looked}); build it with "
                            f"`cmake -S . -B build/native && cmake --build build/native` (needs nvcc) or set "
                            f"{NATIVE_DIR_ENV}")


def _import_driver():
    """cuda-python's driver module, or NativeUnavailable saying how to install it."""
    try:
        from cuda.bindings import driver
    except ImportError as error:
        raise NativeUnavailable(f"cuda-python is not installed ({error}): pip install 'cuda-python>=12.6' "
                                f"(or hallo-rt[gpu])") from error
    return driver


def _requirements(path: str | os.PathLike | None):
    """(driver module, fatbin path), or NativeUnavailable listing everything missing at once."""
    missing, driver, fatbin = [], None, None
    if not torch.cuda.is_available():
        missing.append(f"no CUDA device is visible to torch (needs a CUDA build of torch and an NVIDIA driver; this "
                       f"torch is {torch.__version__}, CUDA {torch.version.cuda})")
    try:
        driver = _import_driver()
    except NativeUnavailable as error:
        missing.append(error.reason)
    try:
        fatbin = find_fatbin(path)
    except NativeUnavailable as error:
        missing.append(error.reason)
    if missing:
        raise NativeUnavailable("CUDA frame conversion unavailable: " + "; ".join(missing))
    return driver, fatbin


def _check(driver, result):
    """Unpack a cuda-python (CUresult, *values) tuple; raise RuntimeError with the driver's name for a failure."""
    error, *values = result
    if error != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(error)
        raise RuntimeError(f"CUDA driver call failed: {name.decode() if name else error}")
    return values[0] if len(values) == 1 else tuple(values)


class NativeFrameConverter:
    """The frame kernels of one fatbin, loaded into one device's primary context (the one torch uses).

    Lifecycle: `load()` -> `to_rgb8` / `to_i420` / `rgb8_to_i420` any number of times, from any thread -> `close()`.
    """

    def __init__(self, driver, device: torch.device, cu_device, context, module, path: Path) -> None:
        self._driver = driver
        self._cu_device, self._context, self._module = cu_device, context, module
        self.device = device
        self.path = path
        names = [f"hrt_frames_{s}_to_{o}" for s in _KERNEL_SUFFIX.values() for o in ("rgb8", "i420")]
        self._functions = {name: self._in_context(driver.cuModuleGetFunction, module, name.encode())
                           for name in [*names, "hrt_rgb8_to_i420"]}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None,
             device: torch.device | str | int | None = None) -> NativeFrameConverter:
        """Load the fatbin (see `find_fatbin`) on `device` (default: torch's current CUDA device).
        Raises NativeUnavailable listing everything missing: a CUDA device, cuda-python, the built fatbin."""
        driver, fatbin = _requirements(path)
        device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"device must be a CUDA device, got {device}")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.init()
        _check(driver, driver.cuInit(0))
        cu_device = _check(driver, driver.cuDeviceGet(device.index))
        context = _check(driver, driver.cuDevicePrimaryCtxRetain(cu_device))
        image = np.frombuffer(fatbin.read_bytes(), dtype=np.uint8)  # kept alive across the call below
        try:
            _check(driver, driver.cuCtxPushCurrent(context))
            try:
                module = _check(driver, driver.cuModuleLoadData(image.ctypes.data))
            finally:
                _check(driver, driver.cuCtxPopCurrent())
        except RuntimeError:
            driver.cuDevicePrimaryCtxRelease(cu_device)  # e.g. CUDA_ERROR_NO_BINARY_FOR_GPU: keep no reference
            raise
        return cls(driver, device, cu_device, context, module, fatbin)

    def close(self) -> None:
        """Unload the module and release the primary context reference taken by `load`."""
        if self._module is not None:
            self._in_context(self._driver.cuModuleUnload, self._module)
            _check(self._driver, self._driver.cuDevicePrimaryCtxRelease(self._cu_device))
            self._module = None

    def to_rgb8(self, frames: torch.Tensor, crop: tuple[int, int] | None = None) -> torch.Tensor:
        """CUDA frames (3, T, H, W) in [-1, 1] (float32, bf16, fp16; any strides) -> uint8 (T, H, W', 3) on the same
        device, bit-exact with `frame_convert.to_rgb8(frames, crop)`."""
        suffix, (frames_n, height, width), left = self._check_frames(frames, crop)
        out = torch.empty(frames_n, height, width, 3, dtype=torch.uint8, device=self.device)
        if out.numel():
            self._launch(f"hrt_frames_{suffix}_to_rgb8", (width, height, frames_n),
                         [(np.uint64, frames.data_ptr()), (np.uint64, out.data_ptr()), *self._frame_args(
                             frames, frames_n, height, width, left)])
        return out

    def to_i420(self, frames: torch.Tensor, crop: tuple[int, int] | None = None) -> I420:
        """CUDA frames (3, T, H, W) in [-1, 1] -> I420 planes in one pass, bit-exact with `frame_convert.to_i420`.
        The planes are views into one packed (T, H * 3 / 2, W') buffer (one device-to-host copy moves them all)."""
        suffix, (frames_n, height, width), left = self._check_frames(frames, crop)
        planes, pointers = self._alloc_i420(frames_n, height, width)
        if frames_n and width:
            self._launch(f"hrt_frames_{suffix}_to_i420", (width // 2, height // 2, frames_n),
                         [(np.uint64, frames.data_ptr()), *pointers[:3],
                          *self._frame_args(frames, frames_n, height, width, left), *pointers[3:]])
        return planes

    def rgb8_to_i420(self, rgb: torch.Tensor) -> I420:
        """CUDA uint8 RGB (T, H, W, 3) -> I420 planes, bit-exact with `frame_convert.rgb8_to_i420`."""
        if not isinstance(rgb, torch.Tensor) or rgb.dtype != torch.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be a uint8 torch.Tensor (T, H, W, 3), got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{tuple(getattr(rgb, 'shape', ()))}")
        self._check_device(rgb)
        frames_n, height, width, _ = rgb.shape
        _check_frame_count(frames_n)
        _check_even(height, width)
        rgb = rgb.contiguous()  # the kernel reads packed RGB rows
        planes, pointers = self._alloc_i420(frames_n, height, width)
        if rgb.numel():
            self._launch("hrt_rgb8_to_i420", (width // 2, height // 2, frames_n),
                         [(np.uint64, rgb.data_ptr()), *pointers[:3], (np.int32, frames_n), (np.int32, height),
                          (np.int32, width), *pointers[3:]])
        return planes

    # ---- internals ----

    def _check_device(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            raise ValueError(f"expected a tensor on {self.device} (where the kernels are loaded), got {tensor.device}; "
                             f"for CPU tensors use hallo_rt.runtime.frame_convert")

    def _check_frames(self, frames: torch.Tensor, crop: tuple[int, int] | None):
        """(kernel suffix, (T, H, W'), crop left) after checking the frames the kernels accept."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] != 3:
            raise ValueError(f"frames must be a torch.Tensor (3, T, H, W), got {tuple(getattr(frames, 'shape', ()))}")
        if frames.dtype not in _KERNEL_SUFFIX:
            raise ValueError(f"frames must be float32, bfloat16 or float16, got {frames.dtype}")
        self._check_device(frames)
        _, frames_n, height, full_width = frames.shape
        _check_frame_count(frames_n)
        left, width = _check_crop(full_width, crop)
        return _KERNEL_SUFFIX[frames.dtype], (frames_n, height, width), left

    @staticmethod
    def _frame_args(frames: torch.Tensor, frames_n: int, height: int, width: int, left: int) -> list:
        """Kernel arguments after the pointers: sizes, element strides (C, T, H, W), crop left."""
        stride_c, stride_t, stride_h, stride_w = frames.stride()
        return [(np.int32, frames_n), (np.int32, height), (np.int32, width), (np.int64, stride_c),
                (np.int64, stride_t), (np.int64, stride_h), (np.int64, stride_w), (np.int32, left)]

    def _alloc_i420(self, frames_n: int, height: int, width: int):
        """One packed (T, H * 3 / 2, W) buffer, its plane views, and the kernel's plane arguments
        (y, u, v pointers, then the per-frame strides of luma and chroma)."""
        _check_even(height, width)
        luma = height * width
        packed = torch.empty(frames_n, luma * 3 // 2, dtype=torch.uint8, device=self.device)  # (T, 1.5 H W)
        planes = I420(packed[:, :luma].view(frames_n, height, width),
                      packed[:, luma:luma * 5 // 4].view(frames_n, height // 2, width // 2),
                      packed[:, luma * 5 // 4:].view(frames_n, height // 2, width // 2))
        frame_stride = luma * 3 // 2
        pointers = [(np.uint64, p.data_ptr()) for p in planes] + [(np.int64, frame_stride), (np.int64, frame_stride)]
        return planes, pointers

    def _launch(self, name: str, extent: tuple[int, int, int], args: list) -> None:
        """Launch `name` over extent (columns, rows, frames) on torch's current stream of this device."""
        driver = self._driver
        values, pointers = _kernel_params(args)  # values must outlive the launch call, which copies them
        grid = tuple(-(-n // b) for n, b in zip(extent[:2], _BLOCK[:2])) + (extent[2],)
        stream = driver.CUstream(torch.cuda.current_stream(self.device).cuda_stream)
        self._in_context(driver.cuLaunchKernel, self._functions[name], *grid, *_BLOCK, 0, stream,
                         pointers.ctypes.data, 0)

    def _in_context(self, call, *args):
        """Run a driver call with this device's primary context pushed, leaving the thread's current context (and
        so torch's current device) as it was; returns the call's values."""
        driver = self._driver
        _check(driver, driver.cuCtxPushCurrent(self._context))
        try:
            return _check(driver, call(*args))
        finally:
            _check(driver, driver.cuCtxPopCurrent())

def _kernel_params(args: list) -> tuple[list[np.ndarray], np.ndarray]:
    """cuLaunchKernel's kernelParams for [(numpy dtype, value), ...]: one array per value, and the array of their
    addresses (the kernel's N parameters are copied from N pointers at launch)."""
    values = [np.array([value], dtype=dtype) for dtype, value in args]
    return values, np.array([v.ctypes.data for v in values], dtype=np.uint64)


def _check_frame_count(frames_n: int) -> None:
    if frames_n > _MAX_FRAMES:
        raise ValueError(f"at most {_MAX_FRAMES} frames per call (one grid z index each), got {frames_n}")


def _check_even(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"I420 needs an even height and width, got {height}x{width}")
