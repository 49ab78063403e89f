"""The TensorRT backend: a serialized plan (`hallo-rt build`), run with preallocated buffers on its own
stream, optionally replayed as CUDA graphs.

    get_backend("tensorrt", device="cuda", cuda_graphs=True).load(descriptor, "engines/denoiser.plan")

NOT RUN HERE: written against the TensorRT 10/11 Python API as NVIDIA documents it (Runtime.
deserialize_cuda_engine, ICudaEngine.get_tensor_name / get_tensor_mode / get_tensor_dtype /
get_tensor_profile_shape, IExecutionContext.set_optimization_profile_async / set_input_shape /
get_tensor_shape / set_tensor_address / execute_async_v3) and checked against public code that uses it, but
the development machines have neither TensorRT nor a GPU; here `load` raises `BackendUnavailable`.

Lifecycle: `load` deserializes the plan, checks its tensors against the descriptor (names, dtypes, and that
the optimisation profile covers the descriptor's min/max), creates the context and allocates one buffer per
tensor at the profile's largest shape; the addresses are bound once. A call copies the inputs into the
buffers (caller's stream), sets input shapes only when they change, runs `execute_async_v3` on the runner's
stream between two events, and clones the outputs on the caller's stream after the engine's event, so a
caller never waits on the host and never sees a buffer the next call overwrites. `release` drops graphs,
context, engine and buffers in that order.

Streams and graphs are torch's (`torch.cuda.Stream`, `Event`, `CUDAGraph`) rather than cuda-python's: the
buffers are torch tensors anyway, the caching allocator and stream semantics then line up, and it is the
pattern Torch-TensorRT's Python runtime uses (`torch.cuda.graph(g, stream=engine_stream)` around
`execute_async_v3`). TensorRT does not run on the legacy default stream without extra synchronisation and
CUDA graphs cannot be captured on it, hence the runner's own stream. A graph is captured per input-shape set
after `warmup` eager calls with those shapes (TensorRT finishes shape-dependent setup in the first enqueue
after a shape change; capture must not include it).

Plans with plugin nodes: the fused-kernel plugins are AOT plugins (export/trt_plugins.py) whose PTX is in
the plan, so deserializing needs no Python registration. Only optimisation profile 0 is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...export.descriptors import GraphDescriptor
from ..devices import resolve_device
from . import Backend, BackendUnavailable, Runner, numel

MIN_TENSORRT_MAJOR = 10  # execute_async_v3 / set_input_shape / name-based tensor API


def _import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: bindings present, libnvinfer missing
        raise BackendUnavailable(
            f"tensorrt is not installed ({error}); the tensorrt backend needs TensorRT >= {MIN_TENSORRT_MAJOR} "
            "(pip install tensorrt-cu12 or tensorrt-cu13, from NVIDIA's index) and an NVIDIA GPU") from error
    major = int(tensorrt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise BackendUnavailable(f"tensorrt {tensorrt.__version__} is too old; the backend needs "
                                 f">= {MIN_TENSORRT_MAJOR}")
    return tensorrt


def _torch_dtypes(trt) -> dict:
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8,
             "bool": torch.bool, "fp8": torch.float8_e4m3fn}
    return {getattr(trt, name): dtype for name, dtype in names.items() if hasattr(trt, name)}


class TensorRTBackend(Backend):
    """Options: `device` ("cuda" or "cuda:N"), `cuda_graphs` (capture after `warmup` eager calls per
    input-shape set), `log_level` ("error" | "warning" | "info" | "verbose")."""

    name = "tensorrt"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _import_tensorrt()
        except BackendUnavailable as error:
            return str(error)
        if not torch.cuda.is_available():
            return f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
        return None

    def __init__(self, device: str = "cuda", cuda_graphs: bool = False, warmup: int = 2, log_level: str = "warning"):
        if warmup < 1:
            raise ValueError("tensorrt backend: warmup must be >= 1 (capture needs one eager call per shape first)")
        if log_level not in ("error", "warning", "info", "verbose"):
            raise ValueError(f"tensorrt backend: unknown log_level {log_level!r}")
        self.device_name, self.cuda_graphs, self.warmup, self.log_level = device, cuda_graphs, warmup, log_level

    def load(self, descriptor: GraphDescriptor, plan: str | Path) -> TensorRTRunner:
        """Deserialize `plan`, check it against `descriptor`, allocate buffers at the profile's max shapes."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"tensorrt backend: {reason}")
        try:
            device = resolve_device(self.device_name)
        except ValueError as error:
            raise BackendUnavailable(f"tensorrt backend: {error}") from error
        if device.type != "cuda":
            raise BackendUnavailable(f"tensorrt backend: runs on a CUDA device, got {self.device_name!r}")
        plan = Path(plan)
        if not plan.is_file():
            raise FileNotFoundError(f"tensorrt backend: no plan for {descriptor.name} at {plan}")
        return TensorRTRunner(descriptor, plan, device, self)


class TensorRTRunner(Runner):
    def __init__(self, descriptor: GraphDescriptor, plan: Path, device: torch.device, backend: TensorRTBackend):
        super().__init__(descriptor, device)
        trt = _import_tensorrt()
        self._dtypes = _torch_dtypes(trt)
        levels = {"error": trt.Logger.ERROR, "warning": trt.Logger.WARNING, "info": trt.Logger.INFO,
                  "verbose": trt.Logger.VERBOSE}
        self._logger = trt.Logger(levels[backend.log_level])
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if self._engine is None:
                raise RuntimeError(
                    f"TensorRT {trt.__version__} could not deserialize {plan} on {torch.cuda.get_device_name(device)}: "
                    "plans are tied to the TensorRT version and GPU they were built with (rebuild with hallo-rt build)")
            self._check_engine(trt, plan)
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device)
            self._inputs_ready, self._done = torch.cuda.Event(), torch.cuda.Event()
            self._context.set_optimization_profile_async(0, self._stream.cuda_stream)
            self._allocate()
        self.cuda_graphs, self.warmup = backend.cuda_graphs, backend.warmup
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._calls: dict[tuple, int] = {}
        self._shapes: tuple | None = None
        self.backend_used = {
            "backend": "tensorrt", "device": str(device), "gpu": torch.cuda.get_device_name(device),
            "plan": str(plan), "precision": descriptor.precision, "tensorrt": trt.__version__,
            "cuda_graphs": backend.cuda_graphs,
        }

    # -- load / allocate -------------------------------------------------------------------------------

    def _check_engine(self, trt, plan: Path) -> None:
        """Tensor names, IO modes and dtypes against the descriptor; profile 0 must cover its min..max."""
        engine, desc = self._engine, self.descriptor
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(desc.input_names) or sorted(outputs) != sorted(desc.output_names):
            raise ValueError(f"{plan.name}: engine inputs {inputs}, outputs {outputs}; the descriptor "
                             f"{desc.name} has {desc.input_names}, {desc.output_names} (rebuild the plan)")
        for spec in desc.inputs + desc.outputs:
            got = self._dtypes.get(engine.get_tensor_dtype(spec.name))
            if got != desc.dtype(spec):
                raise ValueError(f"{plan.name}: {spec.name} is {engine.get_tensor_dtype(spec.name)} in the engine, "
                                 f"the descriptor gives {desc.dtype(spec)}")
        for spec in desc.inputs:
            static = tuple(engine.get_tensor_shape(spec.name))  # -1 where the engine takes a range
            lo = hi = static
            if -1 in static:
                lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape(spec.name, 0))
            want_lo, want_hi = desc.shape(spec, "min"), desc.shape(spec, "max")
            if any(a > b for a, b in zip(lo, want_lo)) or any(a < b for a, b in zip(hi, want_hi)):
                raise ValueError(f"{plan.name}: profile 0 of {spec.name} is {lo}..{hi}, the descriptor needs "
                                 f"{want_lo}..{want_hi} (rebuild the plan from this descriptor)")

    def _allocate(self) -> None:
        """One flat buffer per tensor at the descriptor's largest shapes (inputs beyond them are refused before
        they get here; the profile may be larger), bound once: the addresses never change, which is what lets a
        captured CUDA graph be replayed."""
        self._buffers: dict[str, torch.Tensor] = {}
        for spec in self.descriptor.inputs:
            hi = self.descriptor.shape(spec, "max")
            self._context.set_input_shape(spec.name, hi)
            self._buffers[spec.name] = torch.empty(numel(hi), dtype=self.descriptor.dtype(spec), device=self.device)
        for spec in self.descriptor.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            if any(s < 0 for s in shape):
                raise ValueError(f"{self.descriptor.name}.{spec.name}: data-dependent output shape {shape} "
                                 "(the tensorrt backend preallocates outputs; it needs shapes from the inputs)")
            self._buffers[spec.name] = torch.empty(numel(shape), dtype=self.descriptor.dtype(spec), device=self.device)
        for name, buffer in self._buffers.items():
            self._context.set_tensor_address(name, buffer.data_ptr())

    def _view(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self._buffers[name][: numel(shape)].view(shape)

    # -- infer ---------------------------------------------------------------------------------------------

    def _infer(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        names = self.descriptor.input_names
        shapes = tuple(tuple(inputs[n].shape) for n in names)
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            changed = shapes != self._shapes
            if changed:
                for name, shape in zip(names, shapes):
                    self._context.set_input_shape(name, shape)
                self._shapes = shapes
                self._out_shapes = [tuple(self._context.get_tensor_shape(n)) for n in self.descriptor.output_names]
            for name, shape in zip(names, shapes):  # on the caller's stream: ordered after whatever made them
                self._view(name, shape).copy_(inputs[name], non_blocking=True)
            self._inputs_ready.record(caller)
            self._stream.wait_event(self._inputs_ready)
            self._enqueue(shapes, changed)
            self._done.record(self._stream)
            caller.wait_event(self._done)
            # Cloned on the caller's stream after the engine: the caller owns them, the next call can reuse buffers.
            return [self._view(n, s).clone() for n, s in zip(self.descriptor.output_names, self._out_shapes)]

    def _enqueue(self, shapes: tuple, changed: bool) -> None:
        if not self.cuda_graphs:
            self._execute()
            return
        graph = self._graphs.get(shapes)
        if graph is None:
            self._calls[shapes] = self._calls.get(shapes, 0) + 1
            # Never capture the first enqueue after a shape change: TensorRT does shape-dependent setup there.
            if self._calls[shapes] <= self.warmup or changed:
                self._execute()
                return
            graph = self._graphs[shapes] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._execute()
            # Capture records without running: this call's inputs still need a real run.
        with torch.cuda.stream(self._stream):
            graph.replay()

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.descriptor.name}: TensorRT execute_async_v3 failed (see the TensorRT log)")

    # -- release -------------------------------------------------------------------------------------------

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._graphs.clear()
        # Context before engine before runtime: each holds resources of the next.
        self._context = None
        self._engine = None
        self._runtime = None
        self._buffers = {}
        self._stream = None
        torch.cuda.empty_cache()

    @property
    def engine(self) -> Any:
        """The deserialized ICudaEngine (for inspection: layers, memory sizes)."""
        return self._engine
