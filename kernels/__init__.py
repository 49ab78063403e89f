"""Triton kernels for the hot paths, each beside its plain-torch reference.

    apply_kernels(model, impl="triton" | "reference") -> the model running the fused ops
    REGISTRY: name -> FusedOp (custom op, reference, Triton launcher, model-size launches)

Ops (one file each): ln_modulate + gated_residual (modulation.py), frame_cross_attention, qk_norm_rope,
joint_attention, temporal_motion_fold (temporal_motion.py). They are torch custom ops in the `hallo_rt`
namespace (`torch.ops.hallo_rt.*`): on CUDA tensors they run Triton; on CPU tensors the reference, or
Triton's interpreter when TRITON_INTERPRET=1 was set before this package was imported. Triton itself is
optional (the `gpu` extra); without it the references still work and impl="triton" says what is missing.
"""

from . import frame_cross_attention, joint_attention, modulation, qk_norm_rope, temporal_motion
from ._triton import IMPLS, INTERPRET, KernelUnavailable, require_triton, runs_triton
from .apply import FusedDiTBlock, apply_kernels, kernel_ops
from .registry import REGISTRY, FusedOp

__all__ = ["IMPLS", "INTERPRET", "KernelUnavailable", "require_triton", "runs_triton", "REGISTRY", "FusedOp",
           "apply_kernels", "kernel_ops", "FusedDiTBlock", "frame_cross_attention", "joint_attention", "modulation",
           "qk_norm_rope", "temporal_motion"]
