"""Export hooks of the fused ops: ONNX plugin nodes, the decomposed ONNX on ONNX Runtime, and the TensorRT
plugins' launch arithmetic checked against the launchers (TensorRT itself is never installed here).

Generic over `REGISTRY`: every op module present in hallo_rt.kernels is imported, and a registered op
without a small test call below, or without a TensorRT plugin spec, fails the coverage tests.
"""

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import hallo_rt.kernels as kernels_package
from hallo_rt.export import kernel_ops, trt_plugins
from hallo_rt.kernels.registry import REGISTRY

from kernel_tolerances import assert_close

_NOT_OP_MODULES = {"registry", "compile_check", "apply"}
for _module in pkgutil.iter_modules(kernels_package.__path__):
    if not _module.name.startswith("_") and _module.name not in _NOT_OP_MODULES:
        importlib.import_module(f"hallo_rt.kernels.{_module.name}")

EPS = 1e-5
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# A small module calling every op (odd sizes; one None optional input per kind of op).


def _call_examples(g: torch.Generator) -> dict:
    """op name -> list of (args) for a small call of that op; fp32, CPU."""
    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    B, L, S, D = 2, 3, 5, 8
    mods = r(B, 6 * D).chunk(6, dim=1)  # views, as the model slices its modulation
    # Head dim 64, the Hallo3 one: the attention kernels then pick their model tile configs (joint attention
    # needs 64 KiB of shared memory, beyond the 48 KiB a launch gets without opting in).
    Dh = 64
    qkv = r(B, 7, 3, 2, Dh)  # (B, S, 3, H, Dh)
    return {
        "ln_modulate": [(r(B, L, D), r(B, S, D), None, None, *mods[:4], EPS),
                        (r(B, L, D), r(B, S, D), 1 + r(D), r(D), *mods[2:], 1e-6)],
        "gated_residual": [(r(B, L, D), r(B, S, D), r(B, L + S, D), mods[4], mods[5])],
        "qk_norm_rope": [(qkv, 1 + r(Dh), r(Dh), 1 + r(Dh), None, r(4, Dh), r(4, Dh), 3, EPS),
                         (qkv, 1 + r(Dh), r(Dh), 1 + r(Dh), r(Dh), r(7, Dh), r(7, Dh), 0, EPS)],
        "joint_attention": [(r(B, 2, 7, Dh), r(B, 2, 7, Dh), qkv[:, :, 2].transpose(1, 2), r(B, 2, 5, Dh),
                             r(B, 2, 5, Dh)),
                            (r(B, 2, 7, Dh), r(B, 2, 6, Dh), r(B, 2, 6, Dh), None, None)],
        "frame_cross_attention": [(r(B, 3, 5, 2, Dh), r(B, 3, 4, 2, Dh), r(B, 3, 4, 2, Dh), 1 + r(Dh), r(Dh),
                                   None, None, r(5, Dh), r(5, Dh), EPS),
                                  (r(B, 3, 5, 2, Dh), r(B, 1, 3, 2, Dh), r(B, 1, 3, 2, Dh), None, None, None,
                                   None, None, None, EPS)],
        "temporal_motion_fold": [(r(B, 9, 3, D), 1 + r(D), r(D), EPS, False), (r(B, 5, 3, D), None, None, EPS, True)],
    }


class AllOps(torch.nn.Module):
    """Calls the ops of `calls` in order, tensors from forward's inputs; returns every output."""

    def __init__(self, calls: dict):
        super().__init__()
        # Per call: each argument is "tensor" (the next forward input), None, or the scalar itself.
        self.plan = [(name, ["tensor" if isinstance(a, torch.Tensor) else a for a in args])
                     for name in calls for args in calls[name]]

    def forward(self, *tensors):
        outputs, inputs = [], iter(tensors)
        for name, spec in self.plan:
            out = getattr(torch.ops.hallo_rt, name)(*(next(inputs) if isinstance(a, str) else a for a in spec))
            outputs.extend(out if isinstance(out, (tuple, list)) else [out])
        return tuple(outputs)


def _all_ops_module():
    calls = {name: c for name, c in _call_examples(torch.Generator().manual_seed(0)).items() if name in REGISTRY}
    tensors = tuple(a for name in calls for args in calls[name] for a in args if isinstance(a, torch.Tensor))
    return AllOps(calls).eval(), tensors, calls


def test_every_registered_op_has_a_test_call_and_a_plugin_spec():
    assert set(REGISTRY) <= set(_call_examples(torch.Generator().manual_seed(0)))
    assert set(REGISTRY) <= set(trt_plugins.SPECS)


def test_signatures_follow_the_schemas():
    ln = kernel_ops.op_signature("ln_modulate")
    assert ln.inputs == ("text", "video", "weight", "bias", "text_shift", "text_scale", "video_shift", "video_scale")
    assert ln.optional == {"weight", "bias"} and ln.attributes == {"eps": float} and ln.num_outputs == 1
    assert kernel_ops.op_signature("gated_residual").num_outputs == 2
    for name, fused in REGISTRY.items():
        sig = kernel_ops.op_signature(fused)
        assert sig.arguments == tuple(a.name for a in fused.overload._schema.arguments)
        assert set(sig.inputs) | set(sig.attributes) == set(sig.arguments)
    if "temporal_motion_fold" in REGISTRY:
        assert kernel_ops.op_signature("temporal_motion_fold").attributes == {"eps": float, "into_tokens": bool}
    if "qk_norm_rope" in REGISTRY:
        assert kernel_ops.op_signature("qk_norm_rope").attributes == {"rope_start": int, "eps": float}


def test_unknown_variant_lists_the_available_ones(tmp_path):
    with pytest.raises(ValueError, match="plugin, decomposed"):
        kernel_ops.export_onnx(torch.nn.Identity(), (torch.ones(1),), tmp_path / "m.onnx", variant="trt")


def test_plugin_variant_emits_one_hallo_rt_node_per_call(tmp_path):
    module, tensors, calls = _all_ops_module()
    path = tmp_path / "plugin.onnx"
    kernel_ops.export_onnx(module, tensors, path, variant="plugin", external_data=False)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)  # the hallo_rt schemas are registered by the export
    assert {o.domain: o.version for o in model.opset_import}[kernel_ops.DOMAIN] == 1
    nodes = kernel_ops.plugin_nodes(model)
    assert [n.op_type for n in nodes] == [name for name in calls for _ in calls[name]]
    for node, (name, args) in zip(nodes, [(name, args) for name in calls for args in calls[name]]):
        sig = kernel_ops.op_signature(name)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.pop("plugin_namespace") == b"hallo_rt" and attrs.pop("aot") == 1
        values = dict(zip(sig.arguments, args))
        assert set(attrs) == set(sig.attributes)
        for attr, kind in sig.attributes.items():
            assert attrs[attr] == (pytest.approx(values[attr], rel=1e-6) if kind is float else int(values[attr]))
        assert len(node.input) == len(sig.inputs) and len(node.output) == sig.num_outputs
        assert [i == "" for i in node.input] == [values[arg] is None for arg in sig.inputs]


def test_plugin_variant_of_the_modulation_pair_with_dynamic_tokens(tmp_path):
    # The brief's module: ln_modulate + gated_residual, the video length dynamic.
    class Modulation(torch.nn.Module):
        def forward(self, text, video, mod):
            m = mod.chunk(6, dim=1)
            y = torch.ops.hallo_rt.ln_modulate(text, video, None, None, m[0], m[1], m[2], m[3], EPS)
            return torch.ops.hallo_rt.gated_residual(text, video, y * 2, m[4], m[5])

    args = (torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 48))
    path = tmp_path / "mod.onnx"
    kernel_ops.export_onnx(Modulation(), args, path, variant="plugin", aot=False, external_data=False,
                           dynamic_shapes=({}, {1: torch.export.Dim("S", min=2, max=4096)}, {}))
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ln, gated = kernel_ops.plugin_nodes(model)
    assert (ln.op_type, gated.op_type) == ("ln_modulate", "gated_residual")
    assert {a.name for a in ln.attribute} == {"eps", "plugin_namespace"}  # no aot attribute when aot=False
    assert list(ln.input[2:4]) == ["", ""] and len(gated.output) == 2
    video = next(i for i in model.graph.input if i.name == ln.input[1])
    assert video.type.tensor_type.shape.dim[1].dim_param  # symbolic, not 5


def test_decomposed_variant_runs_on_onnxruntime_cpu(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module, tensors, _ = _all_ops_module()
    path = tmp_path / "decomposed.onnx"
    kernel_ops.export_onnx(module, tensors, path, variant="decomposed", external_data=False)
    model = onnx.load(path)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors)})
    with torch.no_grad():  # the definition of correct: each op's reference
        program = torch.export.export(module, tensors).run_decompositions(kernel_ops.decomposition_table())
        want = program.module()(*tensors)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(torch.from_numpy(g), w, dtype=torch.float32)


def test_decomposed_variant_keeps_dynamic_shapes(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Modulation(torch.nn.Module):
        def forward(self, text, video, mod):
            m = mod.chunk(6, dim=1)
            y = torch.ops.hallo_rt.ln_modulate(text, video, None, None, m[0], m[1], m[2], m[3], EPS)
            return torch.ops.hallo_rt.gated_residual(text, video, y, m[4], m[5])

    args = (torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 48))
    path = tmp_path / "mod.onnx"
    kernel_ops.export_onnx(Modulation(), args, path, variant="decomposed", external_data=False,
                           dynamic_shapes=({}, {1: torch.export.Dim("S", min=2, max=4096)}, {}))
    other = (torch.randn(2, 3, 8), torch.randn(2, 11, 8), torch.randn(2, 48))  # a video length not exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), other)})
    m = other[2].chunk(6, dim=1)
    y = REGISTRY["ln_modulate"].reference(other[0], other[1], None, None, m[0], m[1], m[2], m[3], EPS)
    for g, w in zip(got, REGISTRY["gated_residual"].reference(other[0], other[1], y, m[4], m[5])):
        assert_close(torch.from_numpy(g), w, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------
# TensorRT plugin arithmetic, without TensorRT: the pure functions on strict symbolic integers.


class Sym:
    """An integer that allows only what TensorRT's SymInt32 expressions allow: + - * // with the expression
    on the left (they have no reflected operators) and no truth value or comparison (they are symbolic)."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        self.value = value

    def _other(self, other):
        if isinstance(other, Sym):
            return other.value
        if type(other) is int:
            return other
        raise TypeError(f"unsupported operand {other!r}")

    def __add__(self, other):
        return Sym(self.value + self._other(other))

    def __sub__(self, other):
        return Sym(self.value - self._other(other))

    def __mul__(self, other):
        return Sym(self.value * self._other(other))

    def __floordiv__(self, other):
        return Sym(self.value // self._other(other))

    def __bool__(self):
        raise TypeError("a shape expression has no truth value")

    def __eq__(self, other):
        raise TypeError("a shape expression cannot be compared in Python")

    __hash__ = None

    def __index__(self):
        raise TypeError("a shape expression is not a Python int")


def _value(x):
    return x.value if isinstance(x, Sym) else x


def _recorded_example_calls(fused, dtype) -> list[tuple[str, tuple]]:
    """The op arguments behind each of `fused.examples(dtype)`: the examples call the module's launcher by
    name, so wrapping it records them."""
    module = importlib.import_module(fused.triton.__module__)
    name = f"_{fused.name}_launch"
    launcher, calls = getattr(module, name), []

    def record(*args, **kwargs):
        calls.append(args)
        return launcher(*args, **kwargs)

    setattr(module, name, record)
    try:
        labels = [label for label, _ in fused.examples(dtype)]
    finally:
        setattr(module, name, launcher)
    assert len(labels) == len(calls)
    return list(zip(labels, calls))


def _edge_cases() -> list[tuple[str, str, tuple]]:
    """Odd small calls beyond the model sizes: (op, label, meta args)."""
    def m(*shape, dtype=torch.float16):
        return torch.empty(*shape, dtype=dtype, device="meta")

    cases = [
        ("ln_modulate", "odd", (m(3, 1, 7), m(3, 9, 7), None, None, m(3, 7), m(3, 7), m(3, 7), m(3, 7), EPS)),
        ("qk_norm_rope", "no-rope", (m(1, 5, 3, 3, 16), None, None, None, None, None, None, 0, EPS)),
        ("qk_norm_rope", "rope-at-0", (m(2, 9, 3, 1, 32), m(32), None, m(32), m(32), m(9, 32, dtype=torch.float32),
                                       m(9, 32, dtype=torch.float32), 0, EPS)),
        ("frame_cross_attention", "one-frame", (m(1, 1, 7, 3, 16), m(1, 1, 5, 3, 16), m(1, 1, 5, 3, 16), None,
                                                None, None, None, None, None, EPS)),
        ("temporal_motion_fold", "one-frame", (m(1, 1, 3, 5), None, None, EPS, True)),
        ("joint_attention", "one-key", (m(1, 1, 3, 16), m(1, 1, 1, 16), m(1, 1, 1, 16), None, None)),
    ]
    return [c for c in cases if c[0] in REGISTRY]


def _cases():
    cases = []
    for dtype in (torch.float16, torch.float32):
        for name, fused in REGISTRY.items():
            examples = _recorded_example_calls(fused, dtype)
            cases += [(name, f"{label}-{str(dtype)[6:]}", args) for label, args in examples]
    return cases + _edge_cases()


def _fake_outputs(op, tensors, attrs) -> tuple:
    """The op's register_fake outputs, under FakeTensorMode (the path torch.export takes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fakes = [None if t is None else torch.empty(t.shape, dtype=t.dtype) for t in tensors]  # fake, not allocated
        out = op(*fakes, *attrs.values())
    return out if isinstance(out, tuple) else (out,)


def _contiguous_launch(name, args):
    """Contiguous meta copies of the op's tensor arguments (what TensorRT hands a plugin), and their Launch."""
    sig = kernel_ops.op_signature(name)
    tensors = [None if a is None else torch.empty(tuple(a.shape), dtype=a.dtype, device="meta")
               for a in args[:len(sig.inputs)]]
    attrs = dict(zip(sig.attributes, args[len(sig.inputs):]))
    return tensors, attrs, trt_plugins.op_launcher(REGISTRY[name])(*tensors, *attrs.values())


@pytest.mark.parametrize("name,label,args", [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in _cases()])
def test_plugin_launch_arithmetic_matches_the_launcher(name, label, args):
    tensors, attrs, launch = _contiguous_launch(name, args)
    spec = trt_plugins.SPECS[name]
    shapes = [None if t is None else tuple(Sym(d) for d in t.shape) for t in tensors]
    grid, ints = spec.launch(shapes, attrs, launch.constexprs)
    assert tuple(_value(g) for g in grid) == tuple(launch.grid) + (1,) * (3 - len(launch.grid))
    assert [_value(i) for i in ints] == [a for a in launch.args if not isinstance(a, torch.Tensor)]
    # Kernel order is (inputs, ints, outputs): the op's tensor arguments first, in schema order.
    pointers = [a for a in launch.args if isinstance(a, torch.Tensor)]
    assert len(pointers) == len(tensors) + len(launch.outputs)
    for given, passed in zip(tensors, pointers):
        assert given is None or passed is given or passed.shape == torch.broadcast_shapes(given.shape, passed.shape)
    assert all(p is o for p, o in zip(pointers[len(tensors):], launch.outputs))
    # Output descriptors: the register_fake shapes.
    fake = _fake_outputs(REGISTRY[name].op, tensors, attrs)
    outs = spec.output_shapes(shapes, attrs)
    assert [tuple(_value(d) for d in o) for o in outs] == [tuple(f.shape) for f in fake]
    assert all(f.dtype == tensors[0].dtype for f in fake)  # the plugin's outputs take the first input's dtype


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_aot_plan_matches_the_launch_signature(name):
    """Unit strides (literal 1 in the pure function) become constants, every other integer an i32 extra
    argument, pointers keep the launcher's dtypes."""
    label, args = _recorded_example_calls(REGISTRY[name], torch.float16)[0]
    tensors, attrs, launch = _contiguous_launch(name, args)
    shapes = [None if t is None else tuple(Sym(d) for d in t.shape) for t in tensors]
    plan = trt_plugins.plan_aot(name, shapes, [None if t is None else t.shape for t in tensors],
                                [None if t is None else t.dtype for t in tensors], attrs)
    jit_signature, jit_constexprs = launch.signature()
    assert list(plan.signature) == list(launch.kernel.arg_names)
    _, ints = trt_plugins.SPECS[name].launch(shapes, attrs, launch.constexprs)
    int_params = [p for p in plan.signature if p not in launch.constexprs and not jit_signature[p].startswith("*")]
    assert len(int_params) == len(ints)
    for param, value in zip(int_params, ints):
        unit = isinstance(value, int) and value == 1
        assert plan.signature[param] == ("constexpr" if unit else "i32")
        if unit:  # Triton's JIT specialises it too
            assert jit_signature[param] == "constexpr" and jit_constexprs[param] == 1
    assert [_value(x) for x in plan.extra_args] == [_value(v) for v in ints if not (isinstance(v, int) and v == 1)]
    for param, kind in jit_signature.items():
        if kind.startswith("*"):
            assert plan.signature[param] == kind


def test_aot_kernels_compile_with_the_tensorrt_parameter_layout():
    """Compile each op's AOT plan for sm_90 (no GPU needed) and read the PTX .entry: input pointers, i32 extra
    arguments, output pointers, then only Triton's trailing hidden scratch pointers (which TensorRT pads with
    null; the compile refuses kernels that need scratch). Runs in a subprocess: under TRITON_INTERPRET the
    kernels cannot be compiled."""
    pytest.importorskip("triton")
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_kernel_export as t
        from hallo_rt.export import trt_plugins, kernel_ops
        out = {{}}
        for name in sorted(t.REGISTRY):
            label, args = t._recorded_example_calls(t.REGISTRY[name], torch.float16)[0]
            tensors, attrs, launch = t._contiguous_launch(name, args)
            shapes = [None if x is None else tuple(t.Sym(d) for d in x.shape) for x in tensors]
            plan = trt_plugins.plan_aot(name, shapes, [None if x is None else x.shape for x in tensors],
                                        [None if x is None else x.dtype for x in tensors], attrs)
            kernel = trt_plugins.compile_kernel(plan, 90)
            out[name] = dict(params=trt_plugins.ptx_entry_params(kernel.ptx, kernel.name),
                             inputs=len(kernel_ops.op_signature(name).inputs), extra=len(plan.extra_args),
                             outputs=len(launch.outputs), warps=kernel.num_warps)
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == set(REGISTRY)
    for name, r in report.items():
        n_in, n_x, n_out = r["inputs"], r["extra"], r["outputs"]
        assert r["params"][:n_in] == [".u64"] * n_in, name
        assert r["params"][n_in:n_in + n_x] == [".u32"] * n_x, name
        assert r["params"][n_in + n_x:n_in + n_x + n_out] == [".u64"] * n_out, name
        hidden = r["params"][n_in + n_x + n_out:]
        assert hidden == [".u64"] * len(hidden) and len(hidden) <= 2, name


def test_register_plugins_without_tensorrt_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as on every CPU box
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    with pytest.raises(trt_plugins.TensorRTUnavailable, match=r"tensorrt\.plugin.*TensorRT >= 10\.9") as error:
        trt_plugins.register_plugins()
    assert "decomposed" in str(error.value)  # and what works without it


def test_dense_strides_match_torch_including_empty_and_unit_dims():
    for shape in [(2, 3, 4), (2, 0, 8), (1, 1, 5), (3, 1, 0, 2), (7,)]:
        assert [_value(s) for s in trt_plugins.dense_strides(tuple(Sym(d) for d in shape))] == \
            list(torch.empty(shape).stride())


# ----------------------------------------------------------------------------------------------------
# The check that settles the TensorRT questions (KERNELS.md): needs a CUDA GPU and TensorRT, skipped here.


def _trt_engine(trt, path):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 11 networks are strongly typed by default; 10.x needs the flag for the fp16 graph to stay fp16.
    flags = 0 if strongly_typed is None or int(trt.__version__.split(".")[0]) >= 11 else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise AssertionError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None, "engine build failed (see the TensorRT log)"
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


@pytest.mark.gpu
@pytest.mark.parametrize("name,index", [(name, i) for name, calls in _call_examples(torch.Generator()).items()
                                        for i in range(len(calls)) if name in REGISTRY])
def test_tensorrt_aot_plugin_matches_the_reference(name, index, tmp_path):
    """Export one call as a plugin node (aot=1), register the plugins, parse, build, run in TensorRT and
    compare with the reference. Calls with a None optional input test the empty-input ("") question."""
    trt = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if kernels_package.INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: the plugin kernels cannot be compiled in this process")
    args = _call_examples(torch.Generator().manual_seed(1))[name][index]
    # Half precision, as the engine runs; the RoPE tables are fp32 by the ops' contract.
    args = tuple(a.to(torch.float32 if arg in ("cos", "sin") else torch.float16) if isinstance(a, torch.Tensor) else a
                 for arg, a in zip(kernel_ops.op_signature(name).arguments, args))
    module, tensors = AllOps({name: [args]}).eval(), tuple(a for a in args if isinstance(a, torch.Tensor))
    path = tmp_path / f"{name}.onnx"
    kernel_ops.export_onnx(module, tensors, path, variant="plugin", external_data=False)
    trt_plugins.register_plugins()  # before parsing: the parser finds the plugins in TensorRT's registry
    engine = _trt_engine(trt, path)
    context = engine.create_execution_context()
    graph = onnx.load(path).graph
    buffers = {i.name: t.cuda().contiguous() for i, t in zip(graph.input, tensors)}
    for tensor, buffer in buffers.items():
        context.set_input_shape(tensor, tuple(buffer.shape))
    torch_dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    for output in graph.output:
        buffers[output.name] = torch.empty(tuple(context.get_tensor_shape(output.name)), device="cuda",
                                           dtype=torch_dtype[engine.get_tensor_dtype(output.name)])
    for tensor, buffer in buffers.items():
        context.set_tensor_address(tensor, buffer.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    outputs = [buffers[output.name] for output in graph.output]
    want = REGISTRY[name].reference(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    want = want if isinstance(want, tuple) else (want,)
    assert len(outputs) == len(want)
    for got, ref in zip(outputs, want):
        assert_close(got, ref, dtype=torch.float16)
