"""The ONNX Runtime backend: an InferenceSession on `<name>.onnx`.

    get_backend("onnxruntime")                                            # CPU execution provider
    get_backend("onnxruntime", intra_op_num_threads=2, quantize="int8")   # dynamic int8 MatMul/Gemm
    get_backend("onnxruntime", providers=["CUDAExecutionProvider"])       # device tensors via IO binding

Providers: ONNX Runtime drops a provider it cannot load and runs on CPU with only a warning (tested: the
CPU wheel and onnxruntime-gpu without a GPU both do). We never do: a provider missing from this build fails
when the backend is made, and after the session is created every requested provider must appear in
`session.get_providers()`, else `BackendUnavailable` names it and the available ones. This checks the
session, not each node: a provider can still leave single nodes to the CPU provider (ONNX Runtime logs that).

Inputs go in as numpy arrays and outputs come back as torch tensors (no copy on CPU). With a CUDA/TensorRT
provider (or `io_binding=True`) torch tensors are bound in place by pointer and the outputs are written into
torch tensors preallocated from the descriptor's shapes. bf16 graphs are refused: numpy has no bfloat16 and
the CPU provider lacks bf16 kernels (Sigmoid), so export fp32 or fp16 for this backend.

int8 (`quantize="int8"`): `onnxruntime.quantization.quantize_dynamic`, int8 weights (symmetric, per tensor
unless `per_channel=True`) and per-call uint8 activation scales, on MatMul and Gemm only (the transformer's
linear layers; convolutions stay fp32). The quantized model is written beside the source as
`<stem>.int8-<key>.onnx`, the key hashing the source and its external data, the onnxruntime version and the
settings, so a re-export makes a new file and an unchanged one is reused. ONNX Runtime's optional
`quant_pre_process` is not run (it is advice, and its symbolic shape inference is fragile on dynamic graphs).

Measured int8 error against torch fp32 (onnxruntime 1.31.1, torch 2.13 CPU; seeded weights, standard-normal
inputs, 5 seeds x batch min/opt/max), as max |int8 - fp32| / max |fp32| (relative L2 in brackets):
    tests' TinyGraph (LayerNorm, 64 -> 128 -> 64 GELU MLP)   per-tensor 0.015 (0.014)   per-channel 0.016 (0.014)
    tiny preset's denoiser step (2 layers, 13 frames)         per-tensor 0.032 (0.026)   per-channel 0.029 (0.023)
The tests hold int8 to 0.05 of the output's peak. Real checkpoints have outlier channels that random weights
lack: measure them before relying on int8 (per-channel scales are the first thing to try).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...export.descriptors import GraphDescriptor
from . import Backend, BackendUnavailable, Runner, output_shapes

_ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)",
              torch.bfloat16: "tensor(bfloat16)", torch.int64: "tensor(int64)"}
_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
_DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_OPT_LEVELS = ("disable", "basic", "extended", "all")
QUANTIZED_OPS = ("MatMul", "Gemm")


def _import_ort():
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable(f"onnxruntime is not installed ({error}); pip install 'hallo-rt[onnx]'") from error
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Options: `providers` (names or (name, options) pairs, in priority order; default CPU),
    `intra_op_num_threads` / `inter_op_num_threads` (None: ONNX Runtime's default, one per physical core),
    `graph_optimization_level` ("disable" | "basic" | "extended" | "all"), `quantize` (None | "int8"),
    `per_channel` (int8 weight scales per output channel), `io_binding` (None: on with a device provider)."""

    name = "onnxruntime"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _import_ort()
        except BackendUnavailable as error:
            return str(error)
        return None

    def __init__(self, providers: list | None = None, intra_op_num_threads: int | None = None,
                 inter_op_num_threads: int | None = None, graph_optimization_level: str = "all",
                 quantize: str | None = None, per_channel: bool = False, io_binding: bool | None = None):
        ort = _import_ort()
        entries = providers or ["CPUExecutionProvider"]
        self.providers = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in entries]
        available = ort.get_available_providers()
        missing = [name for name, _ in self.providers if name not in available]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime: execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"{ort.__version__} build; available providers: {', '.join(available)} (the CUDA and TensorRT "
                "providers need onnxruntime-gpu and an NVIDIA GPU)")
        if graph_optimization_level not in _OPT_LEVELS:
            raise ValueError(f"onnxruntime: graph_optimization_level must be one of {_OPT_LEVELS}")
        if quantize not in (None, "int8"):
            raise ValueError(f"onnxruntime: quantize must be None or 'int8', got {quantize!r}")
        self.intra_op_num_threads, self.inter_op_num_threads = intra_op_num_threads, inter_op_num_threads
        self.graph_optimization_level, self.quantize, self.per_channel = graph_optimization_level, quantize, per_channel
        self.device = self._device()
        self.io_binding = self.device.type == "cuda" if io_binding is None else io_binding

    def _device(self) -> torch.device:
        """Where outputs are returned: the device provider's GPU if torch can reach it, else the CPU."""
        for name, options in self.providers:
            if name in _DEVICE_PROVIDERS and torch.cuda.is_available():
                return torch.device("cuda", int(options.get("device_id", 0)))
        return torch.device("cpu")

    def load(self, descriptor: GraphDescriptor, path: str | Path) -> OnnxRuntimeRunner:
        """An InferenceSession on `path` (int8-quantized first if asked), checked against the descriptor."""
        ort = _import_ort()
        if descriptor.precision == "bf16":
            raise BackendUnavailable(
                f"onnxruntime: {descriptor.name} is a bf16 graph; ONNX Runtime's CPU provider has no bf16 kernels "
                "and numpy no bfloat16, so this backend cannot feed it. Export fp32 or fp16 for onnxruntime, "
                "or use the torch/tensorrt backend for bf16")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"onnxruntime: no ONNX file for {descriptor.name} at {path}")
        source = path
        if self.quantize == "int8":
            path = quantize_int8(path, per_channel=self.per_channel)
        session = ort.InferenceSession(str(path), sess_options=self._session_options(ort), providers=self.providers)
        in_use = session.get_providers()
        fell_back = [name for name, _ in self.providers if name not in in_use]
        if fell_back:
            del session
            raise BackendUnavailable(
                f"onnxruntime: requested execution provider(s) {', '.join(fell_back)} are not in use for "
                f"{path.name} (ONNX Runtime fell back to {', '.join(in_use)}); available providers: "
                f"{', '.join(ort.get_available_providers())}. Check the CUDA/cuDNN/TensorRT libraries and the "
                "GPU; this backend does not run on another provider than the one asked for")
        _check_signature(descriptor, session, path)
        used = {
            "backend": "onnxruntime", "device": str(self.device), "providers": in_use,
            "provider_options": {k: v for k, v in session.get_provider_options().items() if k in in_use},
            "precision": "int8-dynamic" if self.quantize else descriptor.precision, "model": str(path),
            "source_model": str(source), "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads, "io_binding": self.io_binding,
            "onnxruntime": ort.__version__,
        }
        return OnnxRuntimeRunner(descriptor, session, self.device, self.io_binding, used)

    def _session_options(self, ort) -> Any:
        options = ort.SessionOptions()
        if self.intra_op_num_threads is not None:
            options.intra_op_num_threads = self.intra_op_num_threads
        if self.inter_op_num_threads is not None:
            options.inter_op_num_threads = self.inter_op_num_threads
        levels = ort.GraphOptimizationLevel
        options.graph_optimization_level = {
            "disable": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
            "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        return options


def _check_signature(descriptor: GraphDescriptor, session: Any, path: Path) -> None:
    """Input/output names (in order) and element types of the file against the descriptor."""
    for kind, specs, args in (("inputs", descriptor.inputs, session.get_inputs()),
                              ("outputs", descriptor.outputs, session.get_outputs())):
        names = [a.name for a in args]
        if names != [s.name for s in specs]:
            raise ValueError(f"{path.name}: {kind} {names}, the descriptor {descriptor.name} has "
                             f"{[s.name for s in specs]} (re-export the graph)")
        for spec, arg in zip(specs, args):
            if arg.type != _ORT_TYPES[descriptor.dtype(spec)]:
                raise ValueError(f"{path.name}: {spec.name} is {arg.type}, the descriptor gives "
                                 f"{descriptor.dtype(spec)} ({descriptor.precision} graph)")


class OnnxRuntimeRunner(Runner):
    def __init__(self, descriptor: GraphDescriptor, session: Any, device: torch.device, io_binding: bool,
                 backend_used: dict):
        super().__init__(descriptor, device)
        self.session, self.io_binding, self.backend_used = session, io_binding, backend_used

    def _infer(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.io_binding:
            return self._infer_bound(inputs)
        feed = {name: inputs[name].detach().cpu().contiguous().numpy() for name in self.descriptor.input_names}
        results = self.session.run(self.descriptor.output_names, feed)
        return [torch.from_numpy(r).to(self.device) for r in results]

    def _infer_bound(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Bind torch memory directly: inputs by pointer, outputs preallocated at the descriptor's shapes."""
        shapes = output_shapes(self.descriptor, inputs)
        if shapes is None:
            raise ValueError(f"{self.descriptor.name}: io_binding needs every output dim determined by the inputs")
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        bound = []  # the contiguous copies must outlive the run
        for name in self.descriptor.input_names:
            t = inputs[name].detach().to(self.device).contiguous()
            bound.append(t)
            binding.bind_input(name, kind, index, _NUMPY_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        outputs = []
        for spec, shape in zip(self.descriptor.outputs, shapes):
            out = torch.empty(shape, dtype=self.descriptor.dtype(spec), device=self.device)
            binding.bind_output(spec.name, kind, index, _NUMPY_TYPES[out.dtype], shape, out.data_ptr())
            outputs.append(out)
        if kind == "cuda":  # ONNX Runtime runs on its own stream: the inputs torch queued must be written first
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        if kind == "cuda":
            binding.synchronize_outputs()
        return outputs

    def _release(self) -> None:
        self.session = None


def _digest_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def quantized_path(path: Path, per_channel: bool) -> tuple[Path, bool]:
    """Where `quantize_int8` writes (or finds) the int8 model for `path` (keyed by content, not by name), and
    whether the source keeps its weights in external data files."""
    import onnx
    import onnxruntime

    digest = hashlib.sha256()
    _digest_file(path, digest)
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                        if entry.key == "location"})
    for location in locations:  # the weights of a model saved with external data live in these files
        if not (path.parent / location).is_file():
            raise FileNotFoundError(f"external data file {location} of {path.name} is missing from {path.parent}")
        _digest_file(path.parent / location, digest)
    digest.update(f"onnxruntime={onnxruntime.__version__};ops={QUANTIZED_OPS};per_channel={per_channel};"
                  "weights=QInt8".encode())
    return path.with_name(f"{path.stem}.int8-{digest.hexdigest()[:16]}.onnx"), bool(locations)


def quantize_int8(path: str | Path, per_channel: bool = False) -> Path:
    """Dynamic int8 quantisation of MatMul/Gemm weights, cached beside `path`; returns the quantized file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    target, external = quantized_path(path, per_channel)
    if target.is_file():
        return target
    import onnx

    # The dynamo exporter records value_info for initializers too; the quantizer rewrites some weights (a Gemm's
    # transposed B) and its shape inference then fails on the stale entry ("Inferred shape and existing shape
    # differ"). It re-infers every shape itself, so the copy it reads has none. Saved beside the source, the
    # copy's external-data locations still resolve; the weights are not loaded.
    model = onnx.load(str(path), load_external_data=False)
    del model.graph.value_info[:]
    stripped = target.with_name(f"{target.stem}.source-{os.getpid()}.onnx")
    onnx.save(model, str(stripped))
    # Written in a scratch folder and moved in, data first: the .onnx appearing marks a complete cache entry,
    # and its external data keeps the name it refers to (`<target>.onnx.data`).
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as scratch:
        try:
            quantize_dynamic(str(stripped), str(Path(scratch) / target.name), weight_type=QuantType.QInt8,
                             per_channel=per_channel, op_types_to_quantize=list(QUANTIZED_OPS),
                             use_external_data_format=external)
        finally:
            stripped.unlink(missing_ok=True)
        for produced in sorted(Path(scratch).iterdir(), key=lambda p: p.name == target.name):
            os.replace(produced, path.parent / produced.name)
    return target
