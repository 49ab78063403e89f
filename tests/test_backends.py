"""The backend registry and its runners: one call signature, checked inputs and outputs, torch vs ONNX Runtime
parity (a small graph and the tiny preset's denoiser step), int8 within its measured bound, and the errors
that replace ONNX Runtime's silent CPU fallback. TensorRT runs only where it is installed with a GPU."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from hallo_rt.export.descriptors import GraphDescriptor, TensorSpec
from hallo_rt.runtime.backends import BackendUnavailable, available_backends, get_backend
from hallo_rt.runtime.backends.onnxruntime_backend import quantized_path
from hallo_rt.runtime.backends.tensorrt_backend import TensorRTBackend

ort = pytest.importorskip("onnxruntime")

FP32_TOL = 1e-4  # ONNX Runtime fp32 vs torch fp32 (issue 5); measured ~2e-6 on the denoiser
# int8 dynamic quantisation vs fp32, as max |err| / max |fp32 output|. Measured with onnxruntime 1.31.1:
# TinyGraph 0.015, denoiser step 0.032 (worst of 5 seeds x 3 batch sizes, per-tensor weight scales; the table is
# in onnxruntime_backend's docstring).
INT8_REL_TOL = 0.05


class TinyGraph(nn.Module):
    """LayerNorm, a timestep projection and a GELU MLP: MatMul and Gemm for the quantizer, two outputs."""

    def __init__(self):
        super().__init__()
        self.norm, self.time = nn.LayerNorm(64), nn.Linear(1, 64)
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x, timestep):
        h = self.norm(x) + self.time(timestep[:, None])[:, None]  # (B, N, 64)
        y = self.fc2(torch.nn.functional.gelu(self.fc1(h)))
        return y, y.mean(1)  # (B, N, 64), (B, 64)


def tiny_descriptor(precision: str = "fp32", input_names=("x", "timestep"), outputs=("y", "pooled")) -> GraphDescriptor:
    specs = {"y": ("batch", 10, 64), "pooled": ("batch", 64)}
    return GraphDescriptor(
        "tiny", (TensorSpec(input_names[0], ("batch", 10, 64)), TensorSpec(input_names[1], ("batch",), "float32")),
        tuple(TensorSpec(name, specs[name]) for name in outputs), (("batch", (1, 2, 4)),), precision)


def export(module: nn.Module, desc: GraphDescriptor, path) -> None:
    inputs = desc.sample_inputs()
    torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=True, input_names=desc.input_names,
                      output_names=desc.output_names, dynamic_shapes=desc.dynamic_shapes(), opset_version=20,
                      verbose=False)


def rel_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    return ((ref - got).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    module, desc = TinyGraph().eval(), tiny_descriptor()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export(module, desc, path)
    return desc, module, path


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    from hallo_rt.engine import load_dit
    from hallo_rt.export.graphs import DenoiserStep, denoiser_descriptor

    dit = load_dit("tiny")
    desc, module = denoiser_descriptor(dit.config), DenoiserStep(dit).eval()
    path = tmp_path_factory.mktemp("denoiser") / "denoiser.onnx"
    export(module, desc, path)
    return desc, module, path


# -- registry ------------------------------------------------------------------------------------------------

def test_registry_lists_every_backend_with_reasons():
    available = available_backends()
    assert list(available) == ["torch", "onnxruntime", "tensorrt"]
    assert available["torch"] is None and available["onnxruntime"] is None
    if available["tensorrt"] is not None:
        assert "tensorrt" in available["tensorrt"] or "CUDA" in available["tensorrt"]


def test_unknown_backend_lists_what_is_available():
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'nope'.*available here: torch, onnxruntime"):
        get_backend("nope")
    assert issubclass(BackendUnavailable, ValueError)


def test_tensorrt_reports_it_is_unavailable_here(tiny, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except (ImportError, OSError):
        pass
    assert "tensorrt is not installed" in available_backends()["tensorrt"]
    with pytest.raises(BackendUnavailable, match=r"'tensorrt' is not available here: tensorrt is not installed"
                                                 r".*available: torch, onnxruntime"):
        get_backend("tensorrt")
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):  # built directly, failing at load
        TensorRTBackend().load(tiny[0], tmp_path / "tiny.plan")


# -- the call convention, for every backend that runs here -------------------------------------------------

@pytest.fixture(params=["torch", "onnxruntime"])
def runner(request, tiny):
    desc, module, path = tiny
    loaded = get_backend(request.param).load(desc, module if request.param == "torch" else path)
    yield loaded
    loaded.release()


def test_runner_checks_inputs(runner):
    desc = runner.descriptor
    good = desc.sample_inputs()
    with pytest.raises(ValueError, match=r"missing \['timestep'\]"):
        runner({"x": good["x"]})
    with pytest.raises(ValueError, match=r"tiny.x: dtype torch.float64"):
        runner({**good, "x": good["x"].double()})
    with pytest.raises(ValueError, match=r"tiny.x: shape \(5, 10, 64\) outside"):  # batch max is 4
        runner({**good, "x": torch.randn(5, 10, 64)})
    with pytest.raises(ValueError, match=r"dim 'batch' is 3 here but 2"):
        runner({**good, "timestep": torch.zeros(3)})


def test_runner_outputs_named_ordered_and_released(runner, tiny):
    inputs = tiny[0].sample_inputs("max", seed=4)
    outputs = runner(inputs)
    assert list(outputs) == ["y", "pooled"]
    with torch.no_grad():
        y, pooled = tiny[1](*inputs.values())
    torch.testing.assert_close(outputs["y"], y, atol=FP32_TOL, rtol=0)
    torch.testing.assert_close(outputs["pooled"], pooled, atol=FP32_TOL, rtol=0)
    assert runner.backend_used["backend"] in ("torch", "onnxruntime") and runner.backend_used["device"] == "cpu"
    runner.release()
    runner.release()  # idempotent
    with pytest.raises(RuntimeError, match="released"):
        runner(inputs)


def test_outputs_are_checked_against_the_descriptor(tiny):
    _, module, _ = tiny
    one_output = tiny_descriptor(outputs=("y",))  # the module returns two
    with get_backend("torch").load(one_output, module) as runner, pytest.raises(ValueError, match="2 outputs"):
        runner(one_output.sample_inputs())
    with pytest.raises(ValueError, match=r"tiny is fp16 but the module's parameters are \['torch.float32'\]"):
        get_backend("torch").load(tiny_descriptor("fp16"), module)


# -- torch ------------------------------------------------------------------------------------------------------

def test_torch_device_and_cuda_graph_errors():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(BackendUnavailable, match="cuda_graphs=True needs a CUDA device"):
        get_backend("torch", cuda_graphs=True)
    with pytest.raises(BackendUnavailable, match=r"device 'cuda' is not available.*available: cpu"):
        get_backend("torch", device="cuda")


def test_torch_compile_matches_eager(tiny):
    desc, module, _ = tiny
    # aot_eager runs torch.compile's whole tracing path without a C++ toolchain (inductor needs one, and time).
    compiled = get_backend("torch", compile=True, compile_options={"backend": "aot_eager"}).load(desc, module)
    eager = get_backend("torch").load(desc, module)
    for which in ("min", "max"):
        inputs = desc.sample_inputs(which, seed=1)
        torch.testing.assert_close(compiled(inputs), eager(inputs), atol=1e-6, rtol=0)
    assert compiled.backend_used["compile"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_torch_cuda_graphs_replay_equals_eager(tiny):
    desc, module, _ = tiny
    eager = get_backend("torch", device="cuda").load(desc, module)
    graphed = get_backend("torch", device="cuda", cuda_graphs=True, warmup=1).load(desc, module)
    for which in ("opt", "min", "opt", "opt", "min", "min"):  # warm-up, capture and replay for two shapes
        inputs = desc.sample_inputs(which, seed=len(which))
        expected, got = eager(inputs), graphed(inputs)
        for name in desc.output_names:
            assert torch.equal(got[name], expected[name])
    assert len(graphed._graphs) == 2


# -- onnxruntime ------------------------------------------------------------------------------------------------

def test_onnxruntime_denoiser_matches_torch(denoiser):
    desc, module, path = denoiser
    torch_runner = get_backend("torch").load(desc, module)
    ort_runner = get_backend("onnxruntime", intra_op_num_threads=2).load(desc, path)
    for which in ("min", "opt"):  # batch 1 and 2 through the one dynamic-batch file
        inputs = desc.sample_inputs(which, seed=7)
        expected, got = torch_runner(inputs)["v"], ort_runner(inputs)["v"]
        assert (expected - got).abs().max().item() < FP32_TOL
    assert ort_runner.backend_used["providers"] == ["CPUExecutionProvider"]
    assert ort_runner.backend_used["precision"] == "fp32"


def test_onnxruntime_io_binding_equals_numpy_route(tiny):
    desc, _, path = tiny
    plain = get_backend("onnxruntime").load(desc, path)
    bound = get_backend("onnxruntime", io_binding=True).load(desc, path)
    assert bound.backend_used["io_binding"] and not plain.backend_used["io_binding"]
    for which in ("min", "max"):
        inputs = desc.sample_inputs(which, seed=2)
        a, b = plain(inputs), bound(inputs)
        for name in desc.output_names:
            assert torch.equal(a[name], b[name])  # same session kernels, different plumbing


def test_cuda_provider_on_a_cpu_machine_is_an_error(tiny):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the CUDA provider may legitimately run")
    desc, _, path = tiny
    with pytest.raises(BackendUnavailable, match=r"CUDAExecutionProvider.*available providers: .*CPUExecutionProvider"):
        get_backend("onnxruntime", providers=["CUDAExecutionProvider"]).load(desc, path)


def test_silent_cpu_fallback_is_refused(tiny, monkeypatch):
    """The onnxruntime-gpu case: CUDA listed as available but not loadable. The session quietly runs on CPU;
    the backend must notice from `session.get_providers()` and refuse."""
    desc, _, path = tiny
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = get_backend("onnxruntime", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match=r"CUDAExecutionProvider are not in use.*fell back to CPUExecution"):
        backend.load(desc, path)


def test_onnxruntime_refuses_graph_drift_and_bf16(tiny):
    path = tiny[2]
    renamed = tiny_descriptor(input_names=("hidden", "timestep"))
    with pytest.raises(ValueError, match=r"inputs \['x', 'timestep'\], the descriptor tiny has \['hidden', "):
        get_backend("onnxruntime").load(renamed, path)
    with pytest.raises(BackendUnavailable, match="bf16 graph"):
        get_backend("onnxruntime").load(tiny_descriptor("bf16"), path)


def test_int8_within_measured_bound_and_cached(tiny, denoiser, tmp_path):
    for desc, module, path in (tiny, denoiser):
        torch_runner = get_backend("torch").load(desc, module)
        int8 = get_backend("onnxruntime", quantize="int8").load(desc, path)
        assert int8.backend_used["precision"] == "int8-dynamic"
        quantized = int8.backend_used["model"]
        assert quantized != str(path) and "MatMulInteger" in _op_types(quantized)
        for which in ("min", "opt"):
            inputs = desc.sample_inputs(which, seed=3)
            expected, got = torch_runner(inputs), int8(inputs)
            for name in desc.output_names:
                error = rel_error(expected[name], got[name])
                assert 1e-4 < error < INT8_REL_TOL, (desc.name, name, error)  # quantized, and within the bound

    # The cache: reused as is, keyed by content (a copy under another name maps to the same key; a changed
    # weight to another).
    desc, _, path = tiny
    first = get_backend("onnxruntime", quantize="int8").load(desc, path).backend_used["model"]
    stamp = _mtime(first)
    assert get_backend("onnxruntime", quantize="int8").load(desc, path).backend_used["model"] == first
    assert _mtime(first) == stamp
    copy, data = tmp_path / "renamed.onnx", tmp_path / "tiny.onnx.data"  # the graph names its data file
    shutil.copy(path, copy)
    shutil.copy(path.parent / "tiny.onnx.data", data)

    def key(onnx_path) -> str:
        return quantized_path(onnx_path, per_channel=False)[0].name.split(".int8-")[1]

    assert key(copy) == key(path)
    weights = bytearray(data.read_bytes())
    weights[-1] ^= 0xFF
    data.write_bytes(bytes(weights))
    assert key(copy) != key(path)
    data.unlink()
    with pytest.raises(FileNotFoundError, match="external data file tiny.onnx.data of renamed.onnx"):
        key(copy)


def _op_types(path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def _mtime(path) -> int:
    import os

    return os.stat(path).st_mtime_ns


# -- tensorrt (GPU machines with TensorRT only) ------------------------------------------------------------------

@pytest.mark.gpu
def test_tensorrt_matches_torch(tiny, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    desc, module, path = tiny
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in desc.profile().items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))

    reference = get_backend("torch").load(desc, module)
    for cuda_graphs in (False, True):
        with get_backend("tensorrt", cuda_graphs=cuda_graphs, warmup=1).load(desc, plan) as runner:
            # Per shape: eager, then capture + replay, then replay; back to a captured shape replays at once.
            for step, which in enumerate(("opt", "opt", "opt", "max", "max", "max", "opt")):
                inputs = desc.sample_inputs(which, seed=step)
                expected, got = reference(inputs), runner(inputs)
                for name in desc.output_names:
                    assert got[name].device.type == "cuda"
                    assert rel_error(expected[name], got[name].cpu()) < 1e-2  # TF32 is on by default in TensorRT
            assert runner.backend_used["plan"] == str(plan)
            assert len(runner._graphs) == (2 if cuda_graphs else 0)
