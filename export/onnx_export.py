"""ONNX export of the graphs (`export/graphs.py`), and `hallo-rt export`: every graph plus a manifest.

Per graph: `torch.onnx.export(..., dynamo=True)` with the descriptor's names and dynamic dims, precision
fixed inside the graph (the modules are cast before export: TensorRT 11 networks are strongly typed),
external data for large weights, the exporter's optimisation pass (constant folding, dead-code and
redundant-cast elimination: `ONNXProgram.optimize()`), `onnx.checker` (by path, so external data is
checked too) and shape inference. `graph_summary` (op histogram + I/O signature) is what the golden tests
pin, so an accidental graph change fails loudly.

`kernels="plugin"` exports the denoiser and reference network with the fused ops as `hallo_rt`-domain
plugin nodes for TensorRT (`export/kernel_ops.py`); "none" keeps standard ops (ONNX Runtime).
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .descriptors import GraphDescriptor

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
KERNEL_MODES = ("none", "plugin")


def _quiet_exporter():
    """The dynamo exporter logs every step and warns about torchvision ops it cannot register."""
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_graph(module: nn.Module, descriptor: GraphDescriptor, path: str | Path, *, opset: int = 20,
                 kernels: str = "none", external_data: bool = True) -> dict:
    """Export `module` as `descriptor` to `path` (.onnx; weights in `<path>.data` when external). Returns
    the graph summary."""
    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}, got {kernels!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = descriptor.sample_inputs("opt", device=next(module.parameters()).device)
    dynamic = descriptor.dynamic_shapes()
    table = None
    if kernels == "plugin":
        from .kernel_ops import custom_translation_table, register_onnx_schemas

        register_onnx_schemas()
        table = custom_translation_table()
    _quiet_exporter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(), tuple(inputs.values()), dynamo=True, opset_version=opset,
            input_names=descriptor.input_names, output_names=descriptor.output_names,
            dynamic_shapes=tuple(dynamic.values()) if dynamic else None, custom_translation_table=table,
            verbose=False, optimize=False,
        )
        program.optimize()
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    program.save(str(path), external_data=external_data)
    return check_graph(path, descriptor, plugins=kernels == "plugin")


def check_graph(path: str | Path, descriptor: GraphDescriptor, plugins: bool = False) -> dict:
    """onnx.checker + shape inference on the file; the graph's I/O must be the descriptor's. Returns the
    summary."""
    import onnx

    if plugins:
        from .kernel_ops import register_onnx_schemas

        register_onnx_schemas()
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    summary = graph_summary(inferred)
    names = ([i["name"] for i in summary["inputs"]], [o["name"] for o in summary["outputs"]])
    if names != (descriptor.input_names, descriptor.output_names):
        raise ValueError(f"{path}: graph I/O {names} differs from the descriptor's "
                         f"{(descriptor.input_names, descriptor.output_names)}")
    return summary


def graph_summary(model) -> dict:
    """Op histogram ("domain::op" or "op" -> count) and the I/O signature (name, element type, shape with
    dim names). What the golden tests compare."""
    import onnx

    def signature(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type), "shape": shape})
        return out

    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                  for n in model.graph.node)
    return {"ops": dict(sorted(ops.items())), "nodes": sum(ops.values()), "inputs": signature(model.graph.input),
            "outputs": signature(model.graph.output)}


def versions() -> dict:
    import onnx

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "python": platform.python_version()}
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return out


def export_all(graphs: dict[str, tuple[GraphDescriptor, nn.Module]], out_dir: str | Path, *, sources: dict,
               kernels: str = "none", progress=None) -> dict:
    """Export every graph into `out_dir` and write `manifest.json` (descriptors, summaries, config hashes,
    weights digests, versions). `progress(name, seconds)` is called after each graph."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (descriptor, module) in graphs.items():
        t0 = time.perf_counter()
        summary = export_graph(module, descriptor, out_dir / f"{name}.onnx",
                               kernels=kernels if name in ("denoiser", "reference") else "none")
        seconds = time.perf_counter() - t0
        entries[name] = {"onnx": f"{name}.onnx", "descriptor": descriptor.to_dict(),
                         "descriptor_hash": descriptor.compute_hash(), "summary": summary,
                         "export_s": round(seconds, 2)}
        if progress is not None:
            progress(name, seconds)
    manifest = {"format_version": MANIFEST_VERSION, "kernels": kernels, "graphs": entries, **sources,
                "versions": versions()}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out_dir / MANIFEST)
    return manifest
