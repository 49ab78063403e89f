"""Optional Triton: the import guard, the interpreter switch, and errors that say what is missing.

Kernel files decorate with `jit` from here, so they import (and their `_ref` functions work) without
Triton installed; launching a kernel then raises `KernelUnavailable` instead.

`TRITON_INTERPRET=1` must be set before this module is imported: Triton decides at decoration time
whether a kernel is compiled or interpreted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

# Triton 3.9 warns that its fp-fusion default changes in 3.10; pin today's default (fused mul-add) so
# kernels compile the same across versions.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # the `gpu` extra is not installed
    triton = None
    tl = SimpleNamespace(constexpr="constexpr")  # lets kernel signatures be defined without Triton
    TRITON_IMPORT_ERROR = error

# Triton reads TRITON_INTERPRET with this truthiness (triton/knobs.py getenv_bool).
INTERPRET = triton is not None and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

IMPLS = ("triton", "reference")


class KernelUnavailable(RuntimeError):
    """The Triton implementation cannot run here; the message says what is missing and what is available."""


def jit(fn):
    """`triton.jit` when Triton is installed; otherwise a stand-in that fails with a clear message on launch."""
    if triton is not None:
        return triton.jit(fn)
    return _MissingKernel(fn.__name__)


class _MissingKernel:
    def __init__(self, name: str):
        self.__name__ = name

    def __getitem__(self, grid):
        raise KernelUnavailable(triton_missing_reason())


def triton_missing_reason() -> str:
    return (f"Triton is not installed ({TRITON_IMPORT_ERROR}); install the `gpu` extra "
            "(pip install 'hallo-rt[gpu]'). Available: impl='reference'.")


def runs_triton(device: torch.device) -> bool:
    """Whether the custom ops take the Triton path for tensors on `device`."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


def require_triton(device: torch.device | str) -> None:
    """Raise `KernelUnavailable` unless Triton kernels can run for tensors on `device`."""
    device = torch.device(device)
    if triton is None:
        raise KernelUnavailable(triton_missing_reason())
    if device.type == "cuda":
        return
    if device.type == "cpu":
        if INTERPRET:
            return
        raise KernelUnavailable(
            "impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before hallo_rt.kernels is imported "
            "(Triton's interpreter, for tests), or a CUDA device. Available here: impl='reference'."
        )
    raise KernelUnavailable(f"no Triton kernels for device {device.type!r}; available: impl='reference'")


def check_tensor(name: str, t: torch.Tensor, ndim: int, dtypes: tuple[torch.dtype, ...], device: torch.device):
    """Launcher argument check: rank, dtype and device, with the offending value in the message."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class Launch:
    """One kernel launch, fully decided by a launcher: what runs, on which grid, with which arguments.

    Launchers build it and call `run()`; the sm_90 compile check and the TensorRT AOT plugins read the
    same object (`signature()`), so the argument list cannot drift between eager, AOT and export.
    `flops` and `bytes` are the launch's work model for the roofline benchmark (bytes: compulsory DRAM
    traffic, each input read once and each output written once).
    """

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    outputs: tuple
    flops: float
    bytes: float
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for value in self.args:  # kernels index with int32 arithmetic
            if isinstance(value, torch.Tensor) and value.numel() >= 2**31:
                raise ValueError(f"{self.kernel.__name__}: a {tuple(value.shape)} tensor is too large for "
                                 "int32 indexing; split the batch")

    def run(self):
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)
        return self.outputs

    def signature(self) -> tuple[dict[str, str], dict[str, object]]:
        """Triton AOT signature and constexprs: tensors -> '*fp16' etc., ints -> 'i32' (1 specialised)."""
        names = [n for n in self.kernel.arg_names if n not in self.constexprs]
        if len(names) != len(self.args):
            raise ValueError(f"{self.kernel.__name__}: {len(self.args)} args for parameters {names}")
        signature, constexprs = {}, dict(self.constexprs)
        for name, value in zip(names, self.args):
            if isinstance(value, torch.Tensor):
                signature[name] = "*" + _TRITON_TYPES[value.dtype]
            elif isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{self.kernel.__name__}.{name}: unsupported launch argument {value!r}")
            elif value == 1:  # what Triton's JIT specialises too: unit strides become constants
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32"
        for name, value in self.constexprs.items():
            signature[name] = "constexpr"
        return signature, constexprs


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                 torch.int64: "i64"}


def element_bytes(*tensors: torch.Tensor | None) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors if t is not None))
