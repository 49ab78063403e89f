"""The fused ops, by name: each op file registers its custom op, reference, Triton launcher and the
launches it makes at the real model sizes (for the sm_90 compile check, the TensorRT AOT plugins and the
roofline benchmark). Export and benchmarks iterate this table instead of listing ops by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._triton import Launch


@dataclass(frozen=True)
class FusedOp:
    name: str
    """Op name in the `hallo_rt` torch.library namespace (and the ONNX custom domain)."""
    custom_op: Callable
    """The `torch.library.custom_op` definition (kept alive here); call the op through `op`."""
    reference: Callable
    """Plain-torch definition of correct, same signature as `op`."""
    triton: Callable
    """The Triton launcher, same signature as `op`."""
    examples: Callable[[torch.dtype], list[tuple[str, Launch]]]
    """Launches at model sizes (Hallo3, Hallo4) on meta tensors: label -> Launch."""

    @property
    def op(self):
        """`torch.ops.hallo_rt.<name>`, looked up in the dispatcher at call time. Calling the CustomOpDef
        object itself went through an overload it cached at definition, which raised
        `ValueError: vector::reserve` (or segfaulted) in torch 2.13 on meta/fake tensors after other tests
        had run, while the same call through torch.ops worked."""
        return getattr(torch.ops.hallo_rt, self.name)

    @property
    def overload(self):
        return getattr(torch.ops.hallo_rt, self.name).default


REGISTRY: dict[str, FusedOp] = {}


def register(op: FusedOp) -> FusedOp:
    if op.name in REGISTRY:
        raise ValueError(f"fused op {op.name!r} registered twice")
    REGISTRY[op.name] = op
    return op
