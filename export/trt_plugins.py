"""TensorRT plugins for the fused ops: Quickly Deployable Plugins (`tensorrt.plugin`) with ahead-of-time
implementations, so the Triton kernels are compiled to PTX at engine build and embedded in the engine.

    register_plugins()   # before parsing the plugin-variant ONNX (export.kernel_ops, variant="plugin")

For each op in `hallo_rt.kernels.REGISTRY` this registers `hallo_rt::<op>` with
- `@trtp.register`: the op's tensor arguments as TensorDesc inputs (all of them, in schema order: a QDP has
  a fixed number of inputs), its scalar arguments as attributes, outputs from shape expressions;
- `@trtp.aot_impl`: the op's own launcher is called on meta tensors at the profile's largest shapes, which
  decides the constexprs (block sizes, eps, the softmax scale, feature flags: AOT extra arguments are
  integers only, so every float is baked into the PTX), `num_warps` and `num_stages`; the kernel is compiled
  with `triton.compile` for the build GPU; grid and integer arguments are shape expressions.

TensorRT hands a plugin contiguous tensors, so every stride is an expression of the shape. Those
expressions are the per-op pure functions in `SPECS` (`output_shapes`, `launch`): they use only `+ - * //`
with the shape on the left, so they run unchanged on TensorRT's SymInt32 expressions and on plain ints,
and the tests check them against the launchers on CPU. The kernels take (input pointers, integer scalars,
output pointers), TensorRT's AOT launch order. Literal unit strides are compiled as constants (as Triton's
JIT specialises them), every other integer is an `i32` extra argument. See export/KERNELS.md for what is
verified where, and the Triton/PTX compatibility checks that need a GPU with TensorRT.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Callable

import torch

from ..kernels.registry import REGISTRY, FusedOp
from .kernel_ops import DOMAIN, op_signature


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or what the AOT plugins need with it) is not installed; the message says what is missing."""


def cdiv(a, b: int):
    """Ceiling division by a positive int constant, for ints and TensorRT shape expressions alike."""
    return (a + (b - 1)) // b


def at_least_one(n):
    """max(n, 1) for n >= 0 with + - * // only: (2n) // (n + 1) is 0 for n = 0 and 1 for n >= 1."""
    return n + 1 - (n * 2) // (n + 1)


def times(a, b):
    """a * b with a shape expression, if there is one, on the left (TensorRT's expressions have no __rmul__)."""
    return b * a if isinstance(a, int) else a * b


def dense_strides(shape) -> tuple:
    """Strides of a contiguous tensor, exactly as torch computes them (size-0/1 dims count as 1)."""
    strides, step = [], 1
    for size in reversed(tuple(shape)):
        strides.append(step)
        step = times(at_least_one(size), step)
    return tuple(reversed(strides))


# ----------------------------------------------------------------------------------------------------
# Per-op pure functions. `shapes`: one shape per tensor argument of the op, in schema order (None for an
# absent optional input; TensorRT always passes all of them); `attrs`: the scalar arguments by name;
# `constexprs`: the compile-time values the launcher chose. `launch` returns (grid as 3 values, the integer
# kernel arguments in kernel order), exactly what the launcher passes for contiguous inputs.


def _ln_modulate_out(shapes, attrs):
    (B, L, D), (_, S, _) = shapes[0], shapes[1]
    return ((B, L + S, D),)


def _ln_modulate_launch(shapes, attrs, constexprs):
    text, video, text_mod, video_mod = shapes[0], shapes[1], shapes[4], shapes[6]
    B, L, D = text
    S = video[1]
    ints = (L, S, D, *dense_strides(text), *dense_strides(video), *dense_strides(text_mod),
            *dense_strides(video_mod))
    return (B * (L + S), 1, 1), ints


def _gated_residual_out(shapes, attrs):
    return (tuple(shapes[0]), tuple(shapes[1]))


def _gated_residual_launch(shapes, attrs, constexprs):
    text, video, y, text_gate, video_gate = shapes
    B, L, D = text
    S = video[1]
    ints = (L, S, D, *dense_strides(text), *dense_strides(video), *dense_strides(y), *dense_strides(text_gate),
            *dense_strides(video_gate))
    return (B * (L + S), 1, 1), ints


def _qk_norm_rope_out(shapes, attrs):
    B, S, _, H, D = shapes[0]
    return ((B, H, S, D), (B, H, S, D))


def _qk_norm_rope_launch(shapes, attrs, constexprs):
    qkv, cos = shapes[0], shapes[5]
    B, S, _, H, _ = qkv
    rope = cos is not None
    table = dense_strides(cos) if rope else (0, 0)
    ints = (S, H, attrs["rope_start"] if rope else 0, cos[0] if rope else 0, *dense_strides(qkv), *table)
    return (cdiv(S, constexprs["BLOCK_S"]), B * H, 2), ints


def _frame_cross_attention_out(shapes, attrs):
    B, F, N, H, Dh = shapes[0]
    return ((B, F, N, H * Dh),)


def _frame_cross_attention_launch(shapes, attrs, constexprs):
    q, k, v = shapes[:3]
    B, F, N, H, Dh = q
    Fc, M = k[1], k[2]

    def per_frame(shape):
        # The launcher expands a shared (Fc = 1) context over the F frames: frame stride 0. Fc // F is 1 when
        # Fc == F (including F = 1) and 0 when Fc == 1 < F.
        sb, sf, sm, sh, sd = dense_strides(shape)
        return sb, times(sf, Fc // F), sm, sh, sd

    ints = (F, N, M, *dense_strides(q), *per_frame(k), *per_frame(v))
    return (cdiv(N, constexprs["BLOCK_N"]), H, B * F), ints


def _temporal_motion_fold_out(shapes, attrs):
    B, T, N, C = shapes[0]
    G = (T + 3) // 4
    return ((B, G, N * 4, C),) if attrs["into_tokens"] else ((B, G, N, C * 4),)


def _temporal_motion_fold_launch(shapes, attrs, constexprs):
    x = shapes[0]
    B, T, N, C = x
    G = (T + 3) // 4
    rows = B * G * 4 * N
    return (cdiv(rows, constexprs["BLOCK_R"]), 1, 1), (rows, G, N, C, *dense_strides(x))


def _joint_attention_out(shapes, attrs):
    B, H, Sq, D = shapes[0]
    return ((B, Sq, H * D),)


def _joint_attention_launch(shapes, attrs, constexprs):
    q, k, v, k_bank, v_bank = shapes
    B, H, Sq, D = q
    bank = k_bank is not None
    banks = (*dense_strides(k_bank), *dense_strides(v_bank)) if bank else (0,) * 8
    ints = (H, Sq, k[2], k_bank[2] if bank else 0, *dense_strides(q), *dense_strides(k), *dense_strides(v), *banks)
    return (cdiv(Sq, constexprs["BLOCK_M"]), B * H, 1), ints


@dataclass(frozen=True)
class PluginSpec:
    """What TensorRT needs beyond the op itself: output shapes and the launch as shape expressions."""

    output_shapes: Callable
    """(shapes, attrs) -> one shape tuple per output."""
    launch: Callable
    """(shapes, attrs, constexprs) -> ((grid_x, grid_y, grid_z), integer kernel arguments)."""
    static_dims: tuple[tuple[int, int], ...] = ()
    """(input, dim) pairs the compiled kernel bakes in exactly (e.g. the head dim as a constexpr tile): they
    must be static in the TensorRT network. Other block sizes are chosen at the largest profile shape and
    stay correct for every smaller one (the kernels mask)."""


SPECS: dict[str, PluginSpec] = {
    "ln_modulate": PluginSpec(_ln_modulate_out, _ln_modulate_launch),
    "gated_residual": PluginSpec(_gated_residual_out, _gated_residual_launch),
    # The head dim D is a constexpr (the LayerNorm divisor and the tile).
    "qk_norm_rope": PluginSpec(_qk_norm_rope_out, _qk_norm_rope_launch, ((0, 4),)),
    # HEAD_DIM (tile width, unmasked loads) and SCALE = Dh**-0.5 come from the head dim.
    "frame_cross_attention": PluginSpec(_frame_cross_attention_out, _frame_cross_attention_launch, ((0, 4),)),
    "temporal_motion_fold": PluginSpec(_temporal_motion_fold_out, _temporal_motion_fold_launch),
    # BLOCK_D = Dh and QK_SCALE = log2(e) / sqrt(Dh).
    "joint_attention": PluginSpec(_joint_attention_out, _joint_attention_launch, ((0, 3),)),
}


# ----------------------------------------------------------------------------------------------------
# The AOT plan: everything an aot_impl returns except the compiled PTX, computable without TensorRT.


@dataclass
class AotPlan:
    kernel: object
    signature: dict
    """Triton signature of the non-constexpr parameters: '*fp16'.. pointers, 'i32' scalars."""
    constexprs: dict
    grid: tuple
    extra_args: tuple
    """The 'i32' scalars, in kernel order: TensorRT's extra arguments (between inputs and outputs)."""
    num_warps: int
    num_stages: int


def op_launcher(fused: FusedOp) -> Callable:
    """The op's `_<name>_launch(...) -> Launch`, from the module that defines its Triton launcher."""
    import importlib

    module = importlib.import_module(fused.triton.__module__)
    launcher = getattr(module, f"_{fused.name}_launch", None)
    if launcher is None:
        raise LookupError(f"{module.__name__} has no _{fused.name}_launch (the launcher the AOT plugin reuses)")
    return launcher


def plan_aot(name: str, shape_exprs: list, bound_shapes: list, dtypes: list, attrs: dict) -> AotPlan:
    """Plan the AOT launch of op `name`.

    `shape_exprs`: per tensor argument, its shape as TensorRT expressions (or ints); `bound_shapes`: the
    concrete shapes the constexprs are chosen at (the profile's largest); `dtypes`: torch dtypes of the
    inputs; `attrs`: scalar arguments by name. The launcher validates the shapes and picks the constexprs;
    the op's `PluginSpec.launch` turns grid and integer arguments into expressions.
    """
    fused, spec, sig = REGISTRY[name], SPECS[name], op_signature(name)
    meta = [None if shape is None else torch.empty(tuple(shape), dtype=dtype, device="meta")
            for shape, dtype in zip(bound_shapes, dtypes)]
    launch = op_launcher(fused)(*meta, *(attrs[a] for a in sig.attributes))
    grid, ints = spec.launch(shape_exprs, attrs, launch.constexprs)
    params = [p for p in launch.kernel.arg_names if p not in launch.constexprs]
    n_in, n_out = len(sig.inputs), len(launch.outputs)
    if len(params) != n_in + len(ints) + n_out:
        raise ValueError(f"{name}: kernel {launch.kernel.__name__} has {len(params)} runtime parameters, "
                         f"expected {n_in} inputs + {len(ints)} integers + {n_out} outputs")
    pointer_types, _ = launch.signature()
    signature, constexprs, extra = {}, dict(launch.constexprs), []
    for i, param in enumerate(params):
        if i < n_in or i >= n_in + len(ints):
            signature[param] = pointer_types[param]
            continue
        value = ints[i - n_in]
        if isinstance(value, int) and value == 1:  # a literal unit stride: a constant, as Triton's JIT does
            signature[param], constexprs[param] = "constexpr", 1
        else:
            signature[param] = "i32"
            extra.append(value)
    for param in launch.constexprs:
        signature[param] = "constexpr"
    return AotPlan(launch.kernel, signature, constexprs, tuple(grid), tuple(extra), launch.num_warps,
                   launch.num_stages)


# ----------------------------------------------------------------------------------------------------
# Compiling for TensorRT.


@dataclass
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared: int


def driver_ptx_version() -> int | None:
    """Highest PTX ISA the installed CUDA driver loads (Triton's encoding, 94 = 9.4), or None if no driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
        from triton.backends.nvidia.compiler import ptx_get_version

        return ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}")
    except (OSError, ImportError, AttributeError, RuntimeError):
        return None


def _ptx_cap(cc: int) -> int | None:
    """The PTX ISA to ask Triton for: the driver's maximum when it is below what Triton would emit (the
    driver rejects newer PTX when TensorRT loads it), else None (Triton's default; asking for more than
    Triton's ptxas knows fails the compile)."""
    driver = driver_ptx_version()
    try:
        from triton.backends.nvidia.compiler import get_ptxas, ptx_get_version

        default = ptx_get_version(get_ptxas(cc).version)
    except Exception:  # private Triton helpers: without them, trust the driver's number
        return driver
    return driver if driver is not None and driver < default else None


def compile_kernel(plan: AotPlan, cc: int, ptx_version: int | None = None) -> CompiledKernel:
    """`triton.compile` the plan for sm_<cc> and check that TensorRT can launch the result.

    TensorRT launches with (inputs, extra args, outputs) and pads Triton's trailing hidden scratch pointers
    with null, so the kernel must need no scratch memory, and only plain launches (one CTA per cluster, no
    cooperative grid, no PDL, no tensor descriptors) are possible. `ptx_version` caps the PTX ISA (default:
    what the local driver loads; Triton 3.9 emits 9.4, which needs a CUDA 13.4 driver).
    """
    from ..kernels import _triton

    if _triton.triton is None:
        raise TensorRTUnavailable(f"the AOT plugins compile Triton kernels: {_triton.triton_missing_reason()}")
    if _triton.INTERPRET:
        raise RuntimeError("TRITON_INTERPRET is set, so the kernels were decorated for Triton's interpreter and "
                           "cannot be compiled; build TensorRT engines in a process without it")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    ptx_version = ptx_version or _ptx_cap(cc)
    if ptx_version:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(ASTSource(plan.kernel, plan.signature, plan.constexprs),
                              target=GPUTarget("cuda", cc, 32), options=options)
    meta = compiled.metadata
    problems = [f"{field}={getattr(meta, field)}" for field in ("global_scratch_size", "profile_scratch_size",
                                                                "tmem_size")
                if getattr(meta, field, 0)]
    problems += [f"{field}=True" for field in ("launch_cooperative_grid", "launch_pdl") if getattr(meta, field, False)]
    if getattr(meta, "num_ctas", 1) != 1:
        problems.append(f"num_ctas={meta.num_ctas}")
    if getattr(meta, "tensordesc_meta", None):
        problems.append("tensor descriptors")
    if problems:
        raise RuntimeError(f"{meta.name} needs launch features a TensorRT AOT plugin cannot provide: "
                           f"{', '.join(problems)}")
    return CompiledKernel(meta.name, compiled.asm["ptx"], meta.num_warps, meta.shared)


def ptx_entry_params(ptx: str, kernel_name: str) -> list[str]:
    """The `.param` types of the kernel's `.entry` ('.u64' pointers, '.u32' ints), in order."""
    entry = re.search(rf"\.entry\s+{re.escape(kernel_name)}\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise ValueError(f"no .entry {kernel_name} in the PTX")
    return re.findall(r"\.param\s+(\.\w+)", entry.group(1))


# ----------------------------------------------------------------------------------------------------
# Registration with TensorRT.

_REGISTERED: set[str] = set()


def register_plugins(cc: int | None = None) -> list[str]:
    """Register the AOT plugin `hallo_rt::<op>` of every registered op with TensorRT; returns the op names.

    Call it before parsing an ONNX model with plugin nodes (the parser looks plugins up in TensorRT's
    registry). `cc`: compute capability x10 to compile for (default: the current CUDA device's). Engines
    built this way embed the PTX and need no Python to deserialize. Raises `TensorRTUnavailable` without
    TensorRT >= 10.9 (AOT plugins) or Triton. Idempotent.
    """
    try:
        import tensorrt.plugin as trtp
    except ImportError as error:
        raise TensorRTUnavailable(
            f"TensorRT's Python package is not installed ({error}): the hallo_rt plugins need `tensorrt` with "
            "its `tensorrt.plugin` module (TensorRT >= 10.9 for AOT plugins) and its libraries "
            "(libnvinfer, libnvonnxparser). Available without it: export variant 'decomposed'.") from error
    if not hasattr(trtp, "aot_impl"):
        raise TensorRTUnavailable("this TensorRT has no tensorrt.plugin.aot_impl (AOT plugins need TensorRT >= 10.9)")
    from ..kernels import _triton

    if _triton.triton is None:
        raise TensorRTUnavailable(f"the AOT plugins compile Triton kernels: {_triton.triton_missing_reason()}")
    if cc is None:
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("no CUDA device to compile the plugin kernels for; pass cc= explicitly")
        major, minor = torch.cuda.get_device_capability()
        cc = major * 10 + minor
    missing = sorted(set(REGISTRY) - set(SPECS))
    if missing:
        raise LookupError(f"no TensorRT plugin spec for the registered ops {missing}; add them to SPECS")
    for name in REGISTRY:
        if name not in _REGISTERED:
            _register_one(trtp, name, cc)
            _REGISTERED.add(name)
    return sorted(_REGISTERED)


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if trt_dtype not in table:
        raise TypeError(f"hallo_rt plugins take fp32/fp16/bf16 tensors, got {trt_dtype}")
    return table[trt_dtype]


def _bound_shape(desc) -> tuple[int, ...]:
    """The largest shape of the optimization profile (the constexprs must hold for every smaller one)."""
    shape = desc.shape
    return tuple(shape.max) if shape.is_dynamic else tuple(shape)


def _register_one(trtp, name: str, cc: int) -> None:
    """Define `register` and `aot_impl` for one op. QDP validates the functions by their signatures, so the
    signatures are built from the op schema: TensorDesc inputs, typed attributes, then outputs and tactic."""
    import numpy as np
    import numpy.typing as npt

    sig, spec = op_signature(name), SPECS[name]
    plugin_id = f"{DOMAIN}::{name}"
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    tensors = [inspect.Parameter(arg, positional, annotation=trtp.TensorDesc) for arg in sig.inputs]
    # Scalars are declared as 1-element arrays: QDP turns a scalar-annotated field into a Python scalar with
    # float(field.data) on the 1-element array the parser gives, which NumPy >= 2.4 refuses (NVIDIA's sample
    # pins numpy 1.26); an array annotation takes the `.astype` path. The parser writes ONNX FLOAT attributes
    # as float32 and INT ones (bools too) as int32 fields.
    array_types = {float: npt.NDArray[np.float32], int: npt.NDArray[np.int32], bool: npt.NDArray[np.int32]}
    attrs = [inspect.Parameter(arg, positional, annotation=array_types[kind]) for arg, kind in sig.attributes.items()]
    if tuple(p.name for p in tensors + attrs) != sig.arguments:
        raise ValueError(f"{name}: a QDP needs all tensor arguments before the scalar ones, got {sig.arguments}")

    def scalars(values: dict) -> dict:
        return {arg: kind(np.asarray(values[arg]).reshape(-1)[0]) for arg, kind in sig.attributes.items()}

    def describe(*inputs, **attributes):
        shapes = [desc.shape_expr for desc in inputs]
        return tuple(trtp.from_shape_expr(tuple(shape), dtype=inputs[0].dtype)
                     for shape in spec.output_shapes(shapes, scalars(attributes)))

    describe.__signature__ = inspect.Signature(
        tensors + attrs, return_annotation=typing.Tuple[tuple([trtp.TensorDesc] * sig.num_outputs)])
    trtp.register(plugin_id)(describe)

    def aot(*args):
        inputs, values = args[:len(sig.inputs)], args[len(sig.inputs):len(sig.inputs) + len(sig.attributes)]
        attributes = scalars(dict(zip(sig.attributes, values)))
        for index, dim in spec.static_dims:
            shape = inputs[index].shape
            if shape.is_dynamic and shape.min[dim] != shape.max[dim]:
                raise ValueError(f"{plugin_id}: dim {dim} of input {sig.inputs[index]!r} is compiled into the "
                                 f"kernel and must be static (profile {shape.min[dim]}..{shape.max[dim]})")
        plan = plan_aot(name, [d.shape_expr for d in inputs], [_bound_shape(d) for d in inputs],
                        [_torch_dtype(d.dtype) for d in inputs], attributes)
        kernel = compile_kernel(plan, cc)
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y, launch.grid_z = plan.grid
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared
        extra = trtp.SymIntExprs(len(plan.extra_args))
        for i, value in enumerate(plan.extra_args):
            extra[i] = trtp.SymInt32(value)  # TensorRT requires SymInt32 exactly; a bare int would be SymIntExpr
        return kernel.name, kernel.ptx, launch, extra

    aot.__signature__ = inspect.Signature(
        tensors + attrs + [inspect.Parameter("outputs", positional), inspect.Parameter("tactic", positional)],
        return_annotation=typing.Tuple[typing.Union[str, bytes], typing.Union[str, bytes], trtp.KernelLaunchParams,
                                       trtp.SymIntExprs])
    trtp.aot_impl(plugin_id)(aot)
