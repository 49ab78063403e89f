"""ONNX export of models that call the fused ops (`hallo_rt.kernels.REGISTRY`), in two variants.

    export_onnx(module, args, path, variant="plugin" | "decomposed", opset=20, dynamic_shapes=None)

- "plugin": every fused op becomes one node of the custom domain `hallo_rt` whose op_type is the op name,
  with the string attribute plugin_namespace="hallo_rt" and the op's scalar arguments as attributes: what
  the TensorRT ONNX parser maps onto the plugins of `export.trt_plugins` (its fallback importer looks a
  plugin up by op_type, `plugin_version` (default "1") and `plugin_namespace`). ONNX Runtime cannot run it.
- "decomposed": every fused op is replaced by its plain-torch reference before translation, so the graph
  holds standard ONNX ops only and runs anywhere (ONNX Runtime CPU, the TensorRT parser without plugins).

Everything is derived from the torch op schemas (`FusedOp.overload._schema`): `Tensor` and `Tensor?`
arguments become node inputs in schema order (a None `Tensor?` becomes the empty input name ""), `float`,
`int` and `bool` arguments become attributes (ONNX has no bool attribute: bools are INT 0/1), and the
schema's returns give the node's outputs. No op is listed by hand, so a newly registered op exports too.

Both variants go through `torch.export.export` (the custom ops stay opaque there: their `register_fake`
gives the shapes, so nothing runs, and TRITON_INTERPRET does not matter). The decomposed variant then runs
`ExportedProgram.run_decompositions({op: reference})`, which traces each reference into aten ops that the
ONNX exporter already translates; the reference stays the single definition of what the op computes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..kernels.registry import REGISTRY, FusedOp

DOMAIN = "hallo_rt"
"""ONNX domain of the plugin nodes, and the TensorRT plugin namespace."""
DOMAIN_VERSION = 1
VARIANTS = ("plugin", "decomposed")

# Tensor dtypes the fused ops take. cos/sin tables are fp32 while q may be fp16, so every input gets its own
# type variable; every output has the dtype of the op's first input (the exporter takes the outputs' types
# from this binding: with free output variables they would be left untyped).
_FLOAT_TENSORS = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
_SCALAR_TYPES = {"float": float, "int": int, "bool": bool}


@dataclass(frozen=True)
class OpSignature:
    """One fused op as an ONNX node: which arguments are inputs, which are attributes, how many outputs."""

    name: str
    arguments: tuple[str, ...]
    """All arguments, in schema order (tensors first, then scalars, for every op so far)."""
    inputs: tuple[str, ...]
    """Tensor arguments, in schema order: the node's inputs."""
    optional: frozenset[str]
    """Inputs declared `Tensor?`; None becomes the empty input name ""."""
    attributes: dict[str, type]
    """Scalar arguments -> float, int or bool: the node's attributes."""
    num_outputs: int


def op_signature(fused: FusedOp | str) -> OpSignature:
    """The ONNX view of a registered fused op, read from its torch schema."""
    fused = REGISTRY[fused] if isinstance(fused, str) else fused
    schema = fused.overload._schema
    inputs, optional, attributes = [], set(), {}
    for arg in schema.arguments:
        kind = str(arg.type)
        if kind in ("Tensor", "Optional[Tensor]"):
            inputs.append(arg.name)
            if kind != "Tensor":
                optional.add(arg.name)
        elif kind in _SCALAR_TYPES:
            attributes[arg.name] = _SCALAR_TYPES[kind]
        else:
            raise TypeError(f"hallo_rt::{fused.name}: argument {arg.name!r} of type {kind} has no ONNX mapping "
                            "(supported: Tensor, Tensor?, float, int, bool)")
    for ret in schema.returns:
        if str(ret.type) != "Tensor":
            raise TypeError(f"hallo_rt::{fused.name}: return type {ret.type} has no ONNX mapping (Tensor only)")
    return OpSignature(fused.name, tuple(a.name for a in schema.arguments), tuple(inputs), frozenset(optional),
                       attributes, len(schema.returns))


# ----------------------------------------------------------------------------------------------------
# Plugin variant: ONNX schemas and the custom translation table.


def register_onnx_schemas() -> list[str]:
    """Register an ONNX OpSchema (domain `hallo_rt`, version 1) for every registered op that has none yet.

    The exporter and `onnx.checker` both need them. Idempotent: safe to call before every export, and ops
    registered later (their module imported later) get their schema on the next call. Returns the op names.
    """
    import onnx.defs
    from onnx.defs import OpSchema

    attr_type = {float: OpSchema.AttrType.FLOAT, int: OpSchema.AttrType.INT, bool: OpSchema.AttrType.INT}
    for name, fused in REGISTRY.items():
        if onnx.defs.has(name, DOMAIN):
            continue
        sig = op_signature(fused)
        inputs = [OpSchema.FormalParameter(
            arg, f"T_{arg}", "", param_option=(OpSchema.FormalParameterOption.Optional if arg in sig.optional
                                                else OpSchema.FormalParameterOption.Single))
            for arg in sig.inputs]
        outputs = [OpSchema.FormalParameter(f"output_{i}", f"T_{sig.inputs[0]}", "") for i in range(sig.num_outputs)]
        type_constraints = [(f"T_{arg}", list(_FLOAT_TENSORS), "") for arg in sig.inputs]
        attributes = [OpSchema.Attribute(arg, attr_type[kind], "") for arg, kind in sig.attributes.items()]
        attributes += [
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
            # Read by the TensorRT parser: 1 = use the plugin's ahead-of-time (PTX) implementation.
            OpSchema.Attribute("aot", OpSchema.AttrType.INT, "1: TensorRT AOT plugin", required=False),
        ]
        onnx.defs.register_schema(OpSchema(
            name, DOMAIN, DOMAIN_VERSION, doc=f"hallo_rt fused op {name} (TensorRT plugin {DOMAIN}::{name})",
            inputs=inputs, outputs=outputs, type_constraints=type_constraints, attributes=attributes))
    return sorted(REGISTRY)


def _plugin_translation(sig: OpSignature, opset, aot: bool) -> Callable:
    """An ONNX translation for one op: emits the `hallo_rt::<name>` node.

    torch.onnx reads the function's signature to split node inputs from attributes (unannotated parameters
    are inputs, float/int/bool-annotated ones are attributes), so the signature is built from the schema.
    """
    params = [inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for arg in sig.arguments]
    signature = inspect.Signature(params)
    emit = getattr(opset, sig.name)
    extra = dict(plugin_namespace=DOMAIN, **({"aot": 1} if aot else {}))

    def translate(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        attrs = {name: int(bound[name]) if kind is bool else kind(bound[name])
                 for name, kind in sig.attributes.items()}
        # A None optional input is passed as None: onnxscript writes it as the empty input name "".
        return emit(*(bound[name] for name in sig.inputs), **attrs, **extra)

    translate.__signature__ = signature
    translate.__annotations__ = dict(sig.attributes)
    translate.__name__ = translate.__qualname__ = f"{sig.name}_to_plugin"
    return translate


def custom_translation_table(aot: bool = True) -> dict:
    """`torch.onnx.export(custom_translation_table=...)` mapping every registered op to its plugin node.

    `aot=True` adds the attribute aot=1, which makes the TensorRT parser request the plugin's AOT (PTX)
    implementation, the only one `trt_plugins` defines.
    """
    import onnxscript

    register_onnx_schemas()
    opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)
    return {fused.overload: _plugin_translation(op_signature(fused), opset, aot) for fused in REGISTRY.values()}


# ----------------------------------------------------------------------------------------------------
# Decomposed variant.


def decomposition_table() -> dict:
    """`ExportedProgram.run_decompositions` table: every registered op -> its plain-torch reference. (The
    references attend in 4 dims, the only rank the ONNX translation of SDPA takes.)"""
    return {fused.overload: fused.reference for fused in REGISTRY.values()}


# ----------------------------------------------------------------------------------------------------
# Export.


def export_onnx(module: torch.nn.Module, args: tuple, path: str | Path, *, variant: str = "plugin",
                opset: int = 20, dynamic_shapes=None, kwargs: dict | None = None, aot: bool = True,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                external_data: bool = True):
    """Export `module(*args, **kwargs)` to `path` with the fused ops as plugin nodes or decomposed.

    `dynamic_shapes` is passed to `torch.export.export` (its format: torch.export.Dim per input dim).
    `external_data` keeps large initializers in `<path>.data` (needed beyond 2 GB). Returns the
    `torch.onnx.ONNXProgram`; the file is written to `path`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown export variant {variant!r}; available: {', '.join(VARIANTS)}")
    program = torch.export.export(module, tuple(args), kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    options = dict(dynamo=True, opset_version=opset, input_names=input_names, output_names=output_names,
                   external_data=external_data)
    if variant == "plugin":
        options["custom_translation_table"] = custom_translation_table(aot=aot)
    else:
        program = program.run_decompositions(decomposition_table())
        _check_no_fused_ops(program)
    onnx_program = torch.onnx.export(program, tuple(args), kwargs=kwargs, **options)
    if variant == "plugin":
        _pad_optional_inputs(onnx_program.model.graph)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path), external_data=external_data)
    return onnx_program


def _pad_optional_inputs(graph) -> None:
    """Give every plugin node all of its op's inputs: onnxscript drops trailing None inputs (valid ONNX),
    but a TensorRT plugin has a fixed number of inputs, so absent ones stay visible as "" in place."""
    for node in graph:
        if node.domain == DOMAIN and node.op_type in REGISTRY:
            count = len(op_signature(node.op_type).inputs)
            if len(node.inputs) < count:
                node.resize_inputs(count)


def _check_no_fused_ops(program) -> None:
    """After decomposition no hallo_rt op may remain (one that is not in REGISTRY would)."""
    left = sorted({str(node.target) for node in program.graph.nodes
                   if node.op == "call_function" and str(node.target).startswith("hallo_rt.")})
    if left:
        raise RuntimeError(f"ops without a registered reference remain after decomposition: {left}; "
                           f"registered: {sorted(REGISTRY)}")


def plugin_nodes(model) -> list:
    """The `hallo_rt`-domain nodes of an ONNX ModelProto (top-level graph)."""
    return [node for node in model.graph.node if node.domain == DOMAIN]
