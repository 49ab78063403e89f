"""Backends: one call signature for every exported graph, whatever runs it.

    backend = get_backend("onnxruntime", providers=["CPUExecutionProvider"])
    runner = backend.load(descriptor, "out/denoiser.onnx")   # torch: the graph nn.Module; tensorrt: a .plan
    outputs = runner({"latents": ..., "timestep": ..., ...})  # name -> torch.Tensor in and out
    runner.release()

    torch        eager, optional torch.compile, CUDA graphs on CUDA             (torch_backend.py)
    onnxruntime  CPU execution provider by default, CUDA/TensorRT providers by  (onnxruntime_backend.py)
                 option, a check that the providers in use are those asked for, dynamic int8
    tensorrt     serialized plans, preallocated buffers, a stream with events,  (tensorrt_backend.py)
                 CUDA graph capture after warm-up

Every runner checks its inputs against the descriptor, returns outputs named and ordered as the descriptor's
outputs (shapes and dtypes checked too), on its device, and records what actually ran in `backend_used`
(benchmarks write it next to their timings). Nothing falls back silently: a backend, device or provider that
is not there raises `BackendUnavailable` naming what is missing and what is available. Backend modules import
their libraries (onnxruntime, tensorrt) only when a backend is asked for (vLLM's lazily loaded backends).
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from ...export.descriptors import GraphDescriptor

# name -> (module, class): imported on first use, so `import hallo_rt.runtime.backends` stays light.
_REGISTRY = {
    "torch": ("torch_backend", "TorchBackend"),
    "onnxruntime": ("onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("tensorrt_backend", "TensorRTBackend"),
}
BACKENDS = tuple(_REGISTRY)


class BackendUnavailable(ValueError):
    """A backend, device or execution provider that cannot run here; the message says what can."""


class Runner(ABC):
    """One loaded graph. Subclasses implement `_infer` (inputs already checked) and `_release`.

    `backend_used`: what actually runs (backend, device, providers or plan, precision), for benchmark output.
    """

    backend_used: dict[str, Any]

    def __init__(self, descriptor: GraphDescriptor, device: torch.device):
        self.descriptor = descriptor
        self.device = device
        self._released = False

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the graph: name -> tensor in (checked against the descriptor), name -> tensor out."""
        if self._released:
            raise RuntimeError(f"{self.descriptor.name}: this {self.backend_used['backend']} runner was released")
        self.descriptor.check_inputs(inputs)
        resolve_dims(self.descriptor, inputs)  # a dynamic dim must take one size across all inputs
        outputs = list(self._infer(inputs))
        check_outputs(self.descriptor, inputs, outputs, self.backend_used["backend"])
        return dict(zip(self.descriptor.output_names, outputs))

    def release(self) -> None:
        """Free the session/engine/buffers now rather than at garbage collection. Idempotent."""
        if not self._released:
            self._release()
            self._released = True

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @abstractmethod
    def _infer(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The backend's inference: outputs in descriptor order."""

    @abstractmethod
    def _release(self) -> None:
        """Free what `load` allocated."""


class Backend(ABC):
    """A way to run graphs; constructed with its options by `get_backend(name, **options)`."""

    name: str = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run on this machine, else why not (what is missing)."""
        return None

    @abstractmethod
    def load(self, descriptor: GraphDescriptor, artifact: Any) -> Runner:
        """Load `artifact` (torch: the graph module; onnxruntime: `<name>.onnx`; tensorrt: `<name>.plan`)."""


def _backend_class(name: str) -> type[Backend]:
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def available_backends() -> dict[str, str | None]:
    """Every known backend -> None if it can run here, else the reason it cannot."""
    return {name: _backend_class(name).unavailable_reason() for name in BACKENDS}


def _available_list() -> str:
    return ", ".join(n for n, reason in available_backends().items() if reason is None) or "none"


def get_backend(name: str, **options) -> Backend:
    """The backend `name` with its options; `BackendUnavailable` if unknown or unusable here."""
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}; "
                                 f"available here: {_available_list()}")
    cls = _backend_class(name)
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}; "
                                 f"available: {_available_list()}")
    return cls(**options)


def resolve_dims(descriptor: GraphDescriptor, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """The size each dynamic dim takes in these (checked) inputs."""
    sizes: dict[str, int] = {}
    for spec in descriptor.inputs:
        for size, dim in zip(inputs[spec.name].shape, spec.shape):
            if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                raise ValueError(f"{descriptor.name}.{spec.name}: dim {dim!r} is {size} here but "
                                 f"{sizes[dim]} in another input")
    return sizes


def output_shapes(descriptor: GraphDescriptor, inputs: dict[str, torch.Tensor]) -> list[tuple[int, ...]] | None:
    """Each output's shape for these inputs, or None if an output has a dim no input determines."""
    sizes = resolve_dims(descriptor, inputs)
    shapes = []
    for spec in descriptor.outputs:
        if any(isinstance(d, str) and d not in sizes for d in spec.shape):
            return None
        shapes.append(tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape))
    return shapes


def check_outputs(descriptor: GraphDescriptor, inputs: dict[str, torch.Tensor], outputs: list[torch.Tensor],
                  backend: str) -> None:
    """Count, shapes and dtypes of what a backend returned, so a graph that drifted from its descriptor fails
    here and not three stages later."""
    if len(outputs) != len(descriptor.outputs):
        raise ValueError(f"{descriptor.name} ({backend}): {len(outputs)} outputs, the descriptor has "
                         f"{descriptor.output_names}")
    expected = output_shapes(descriptor, inputs)
    for i, (spec, out) in enumerate(zip(descriptor.outputs, outputs)):
        if expected is not None and tuple(out.shape) != expected[i]:
            raise ValueError(f"{descriptor.name}.{spec.name} ({backend}): shape {tuple(out.shape)}, "
                             f"the descriptor gives {expected[i]}")
        if out.dtype != descriptor.dtype(spec):
            raise ValueError(f"{descriptor.name}.{spec.name} ({backend}): dtype {out.dtype}, "
                             f"the descriptor gives {descriptor.dtype(spec)}")


def numel(shape) -> int:
    return math.prod(int(s) for s in shape)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "Runner", "available_backends", "check_outputs",
           "get_backend", "output_shapes", "resolve_dims"]
