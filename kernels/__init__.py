"""Triton kernels for the hot paths, each beside its plain-torch reference.

    apply_kernels(model, impl="triton" | "reference") -> the model running the fused ops
    REGISTRY: name -> FusedOp (custom op, reference, Triton launcher, model-size launches)

The ops are torch custom ops in the `hallo_rt` namespace (`torch.ops.hallo_rt.*`). On CUDA tensors they
run Triton; on CPU tensors they run the reference, or Triton's interpreter when TRITON_INTERPRET=1 was
set before this package was imported. Triton itself is optional (the `gpu` extra).
"""

from . import modulation
from ._triton import IMPLS, INTERPRET, KernelUnavailable, require_triton, runs_triton
from .registry import REGISTRY, FusedOp

__all__ = ["IMPLS", "INTERPRET", "KernelUnavailable", "require_triton", "runs_triton", "REGISTRY", "FusedOp",
           "modulation"]
