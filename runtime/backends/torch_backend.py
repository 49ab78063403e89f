"""The torch backend: the graph module itself, eager, optionally through `torch.compile`, optionally replayed
as CUDA graphs.

    get_backend("torch", device="cuda", compile=True, cuda_graphs=True).load(descriptor, module)

CUDA graphs: the first `warmup` calls with a given set of input shapes run eagerly on a side stream (so
lazy initialisation, cuBLAS workspaces and compile happen outside capture), then the call is captured with
static input buffers; later calls with those shapes copy into the buffers and replay. One graph per shape
set (the dynamic batch of a descriptor gives a handful), all in one memory pool: the outputs are cloned right
after each replay, so graphs never hand out memory another graph may overwrite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...export.descriptors import PRECISIONS, GraphDescriptor
from ..devices import resolve_device
from . import Backend, BackendUnavailable, Runner


@dataclass
class _CapturedGraph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class TorchBackend(Backend):
    """Options: `device` ("cpu", "cuda", "cuda:N"), `compile` (torch.compile the module), `compile_options`
    (keyword arguments for torch.compile, e.g. {"mode": "max-autotune-no-cudagraphs"}), `cuda_graphs`
    (capture after `warmup` eager calls per input-shape set; CUDA only)."""

    name = "torch"

    def __init__(self, device: str = "cpu", compile: bool = False, compile_options: dict | None = None,
                 cuda_graphs: bool = False, warmup: int = 2):
        try:
            self.device = resolve_device(device)
        except ValueError as error:
            raise BackendUnavailable(f"torch backend: {error}") from error
        if cuda_graphs and self.device.type != "cuda":
            raise BackendUnavailable(f"torch backend: cuda_graphs=True needs a CUDA device, got device "
                                     f"{str(self.device)!r} (CUDA available: {torch.cuda.is_available()})")
        if warmup < 1:
            raise ValueError("torch backend: warmup must be >= 1 (capture needs one eager call first)")
        self.compile, self.compile_options = compile, dict(compile_options or {})
        self.cuda_graphs, self.warmup = cuda_graphs, warmup

    def load(self, descriptor: GraphDescriptor, module: nn.Module) -> TorchRunner:
        """`module` is the graph's nn.Module (export.graphs); it is moved to the device and set to eval."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"torch backend: load({descriptor.name!r}, ...) takes the graph nn.Module, "
                            f"got {type(module).__name__}")
        module = module.to(self.device).eval()
        expected = PRECISIONS[descriptor.precision]
        floats = {p.dtype for p in module.parameters() if p.is_floating_point()}
        if floats and expected not in floats:  # a module left in fp32 for an fp16 graph fails here, by name
            raise ValueError(f"torch backend: {descriptor.name} is {descriptor.precision} but the module's "
                             f"parameters are {sorted(map(str, floats))}")
        fn = torch.compile(module, **self.compile_options) if self.compile else module
        return TorchRunner(descriptor, module, fn, self)


class TorchRunner(Runner):
    def __init__(self, descriptor: GraphDescriptor, module: nn.Module, fn: Callable, backend: TorchBackend):
        super().__init__(descriptor, backend.device)
        self.module, self._fn = module, fn
        self.cuda_graphs, self.warmup = backend.cuda_graphs, backend.warmup
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._calls: dict[tuple, int] = {}
        self._pool = torch.cuda.graph_pool_handle() if backend.cuda_graphs else None
        self.backend_used = {
            "backend": "torch", "device": str(backend.device), "precision": descriptor.precision,
            "compile": backend.compile, "compile_options": backend.compile_options,
            "cuda_graphs": backend.cuda_graphs, "torch": torch.__version__,
        }

    def _infer(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        args = [inputs[name].to(self.device, non_blocking=True) for name in self.descriptor.input_names]
        with torch.inference_mode():
            if not self.cuda_graphs:
                return self._as_list(self._fn(*args))
            key = tuple(tuple(a.shape) for a in args)
            captured = self._graphs.get(key)
            if captured is None:
                self._calls[key] = self._calls.get(key, 0) + 1
                if self._calls[key] <= self.warmup:
                    return self._eager_on_side_stream(args)
                captured = self._graphs[key] = self._capture(args)
            for buffer, arg in zip(captured.inputs, args):
                buffer.copy_(arg, non_blocking=True)
            captured.graph.replay()
            return [out.clone() for out in captured.outputs]

    def _eager_on_side_stream(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        # Warm-up off the default stream, as torch's CUDA-graph docs ask, so what it initialises is capturable.
        caller, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            outputs = self._as_list(self._fn(*args))
        caller.wait_stream(side)
        for out in outputs:  # made on `side`, used on `caller`: keep the allocator from reusing them early
            out.record_stream(caller)
        return outputs

    def _capture(self, args: list[torch.Tensor]) -> _CapturedGraph:
        static = [a.clone() for a in args]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self._as_list(self._fn(*static))
        return _CapturedGraph(graph, static, outputs)

    def _as_list(self, result) -> list[torch.Tensor]:
        if isinstance(result, torch.Tensor):
            return [result]
        if isinstance(result, (tuple, list)):
            return list(result)
        if isinstance(result, dict):  # by name, so a module returning a dict cannot be mis-ordered
            return [result[name] for name in self.descriptor.output_names]
        raise TypeError(f"{self.descriptor.name}: the module returned {type(result).__name__}; "
                        "the torch backend takes a tensor, a tuple/list or a dict of tensors")

    def _release(self) -> None:
        self._graphs.clear()
        self.module = self._fn = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
