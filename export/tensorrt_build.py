"""TensorRT plans from the exported ONNX files, and `hallo-rt build`.

    build_engine(onnx_path, descriptor, out_path)   one graph -> one serialized plan, with build info
    build_all(onnx_dir, out_dir)                    every graph of an `hallo-rt export` directory, through the
                                                    artifact cache; writes <out>/<graph>.plan + plans.json
    quantize_fp8(module, calibration_inputs)        FP8 Q/DQ with NVIDIA ModelOpt, before ONNX export

Written against the TensorRT 10.x/11.x Python API and never run here (no GPU, and `tensorrt` does not install
without NVIDIA's package index); see export/README.md "TensorRT builds" for what has and has not executed.

Precision comes from the ONNX graph. TensorRT 11 networks are always strongly typed (the fp16/bf16/fp8 builder
flags are gone); on 10.x this module asks for a strongly typed network explicitly, so both versions build the
graph's own types: an fp16 export gives an fp16 engine, FP8 comes from explicit Q/DQ nodes in the graph, and
no builder flag can silently fall back to fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import (ArtifactCache, atomic_copy, atomic_write, digest_json, file_digest, gpu_architecture,
                        key_ingredients)
from .descriptors import GraphDescriptor, TensorSpec

# TensorRTUnavailable (export/trt_plugins.py) is imported where it is raised or caught: trt_plugins pulls in the
# Triton kernels, which `hallo-rt` should not pay for on every command.

MIN_TENSORRT_MAJOR = 10
EXPORT_MANIFEST = "manifest.json"
PLAN_MANIFEST = "plans.json"
"""Not manifest.json: the plans may be written into the export directory itself."""
PLAN_MANIFEST_VERSION = 1
FP8_MIN_CAPABILITY = (8, 9)  # TensorRT runs FP8 GEMMs on Ada (8.9) and Hopper (9.0); this project targets Hopper
_GET_TENSORRT = ("on a Linux machine with an NVIDIA GPU and driver, `pip install tensorrt` (the libraries come "
                 "from NVIDIA's package index, pypi.nvidia.com, which the meta-package reaches by itself)")


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse or build a graph; the message carries TensorRT's own errors."""


class QuantizationUnavailable(RuntimeError):
    """NVIDIA ModelOpt is not installed; the message says how to get it."""


# ----------------------------------------------------------------------------------------------------
# What a build needs: TensorRT, a GPU, descriptors from JSON, facts about the ONNX file.


def require_tensorrt(need_gpu: bool = True):
    """The `tensorrt` module, or one `TensorRTUnavailable` naming everything that is missing and how to get it."""
    from .trt_plugins import TensorRTUnavailable

    missing, trt = [], None
    try:
        import tensorrt as trt
    except Exception as err:  # noqa: BLE001 - ImportError, or OSError from libnvinfer & co. not found
        missing.append(f"the `tensorrt` Python package >= {MIN_TENSORRT_MAJOR}.0 "
                       f"({type(err).__name__}: {' '.join(str(err).split())})")
    else:
        major = int(str(trt.__version__).split(".")[0])
        if major < MIN_TENSORRT_MAJOR:
            missing.append(f"tensorrt >= {MIN_TENSORRT_MAJOR}.0 (found {trt.__version__})")
    if need_gpu and gpu_architecture() is None:
        missing.append("a CUDA GPU (no CUDA device visible to the driver)")
    if missing:
        raise TensorRTUnavailable(
            f"TensorRT engines cannot be built here: missing {'; and '.join(missing)}. Get them {_GET_TENSORRT}. "
            "Without TensorRT, the exported ONNX files run with --backend onnxruntime.")
    return trt


def descriptor_from_dict(data: dict) -> GraphDescriptor:
    """The inverse of `GraphDescriptor.to_dict()` (also after a JSON round trip)."""
    try:
        def specs(items):
            return tuple(TensorSpec(s["name"], tuple(s["shape"]), s.get("dtype", "model")) for s in items)

        return GraphDescriptor(
            name=data["name"], inputs=specs(data["inputs"]), outputs=specs(data["outputs"]),
            dims=tuple((name, tuple(int(v) for v in r)) for name, r in data.get("dims", {}).items()),
            precision=data.get("precision", "fp32"), config=data.get("config", {}),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a GraphDescriptor dict ({type(err).__name__}: {err}): "
                         f"{json.dumps(data, default=str)[:200]}") from None


@dataclass(frozen=True)
class OnnxFacts:
    """What the builder and the cache key need from an ONNX file, read without loading its weights."""

    files: tuple[str, ...]
    """The model file and its external-data files."""
    digest: str | None
    """SHA-256 over those files (`artifacts.file_digest`): the plan's key covers the exact graph + weights.
    None when not asked for (it reads every weight)."""
    bytes: int
    plugin_nodes: int
    """Nodes of the hallo_rt plugin domain (export.kernel_ops): the build must register the plugins."""
    fp8_nodes: tuple[str, ...]
    """Names of the FP8 quantize/dequantize nodes."""


def _graphs(graph):
    """The graph and its subgraphs (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def inspect_onnx(path: str | Path, digest: bool = True) -> OnnxFacts:
    """Read the ONNX file's structure (not its external weights): data files, plugin and FP8 nodes, and with
    `digest` the content digest of all its files."""
    try:
        import onnx
    except ImportError as err:
        raise ValueError(f"reading ONNX files needs the `onnx` package (the `onnx` extra): {err}") from None
    from .kernel_ops import DOMAIN

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    float8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
              onnx.TensorProto.FLOAT8E5M2FNUZ}
    external, types, nodes = set(), {}, []
    for graph in _graphs(model.graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                if node.op_type == "Constant" and attr.HasField("t"):
                    types[node.output[0]] = attr.t.data_type
        for tensor in tensors:
            types.setdefault(tensor.name, tensor.data_type)
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                external.update(e.value for e in tensor.external_data if e.key == "location")

    fp8_tensors, fp8_nodes = set(), []
    for node in nodes:  # ONNX nodes are topologically sorted, so a Q's output is known before its DQ
        inputs = list(node.input) + ["", "", ""]
        attrs = {a.name: a for a in node.attribute}
        if node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):  # ModelOpt's raw export
            is_fp8 = True
        elif node.op_type == "QuantizeLinear":  # the FP8 type comes from y_zero_point or output_dtype (opset 21)
            is_fp8 = types.get(inputs[2]) in float8 or ("output_dtype" in attrs and attrs["output_dtype"].i in float8)
        elif node.op_type == "DequantizeLinear":  # FP8 weights stored as initializers, or a Q's FP8 output
            is_fp8 = inputs[0] in fp8_tensors or types.get(inputs[0]) in float8 or types.get(inputs[2]) in float8
        else:
            continue
        if is_fp8:
            fp8_nodes.append(node.name or f"{node.op_type}({inputs[0]})")
            fp8_tensors.update(node.output)

    files = [path] + [path.parent / location for location in sorted(external)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: external data files not found: {missing}")
    return OnnxFacts(tuple(str(f) for f in files), file_digest(files) if digest else None,
                     sum(f.stat().st_size for f in files),
                     sum(node.domain == DOMAIN for node in nodes), tuple(fp8_nodes))


def plugin_source_digest() -> str:
    """SHA-256 of the sources the plugins' PTX is compiled from (kernels/*.py, trt_plugins.py): a changed
    kernel must not reuse a plan built from the old one."""
    here = Path(__file__).resolve().parent
    return file_digest(sorted((here.parent / "kernels").glob("*.py")) + [here / "trt_plugins.py"])


# ----------------------------------------------------------------------------------------------------
# One graph -> one plan.


@dataclass
class BuildInfo:
    name: str
    onnx: str
    plan: str
    seconds: float
    """Wall time of `build_serialized_network` (parsing excluded)."""
    parse_seconds: float
    plan_bytes: int
    onnx_bytes: int
    timing_cache: str | None
    """None (no cache file), "new", "loaded", or "rejected" (made by another TensorRT/GPU: started empty)."""
    plugins: bool
    fp8_nodes: int
    tensorrt: str
    gpu: dict | None


_LOGGER = None


def _logger(trt, verbose: bool):
    """One logger per process (TensorRT documents the builder's logger as process-wide): warnings and errors
    go to stderr, errors are also kept for the exception message."""
    global _LOGGER
    if _LOGGER is None:
        from tqdm import tqdm

        class CollectingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)  # required by TensorRT's Python ILogger
                self.errors, self.verbose = [], False

            def log(self, severity, msg):
                level = int(severity)
                if level <= int(trt.ILogger.ERROR):
                    self.errors.append(msg)
                if level <= int(trt.ILogger.WARNING) or (self.verbose and level <= int(trt.ILogger.INFO)):
                    tqdm.write(f"[TensorRT] {msg}", file=sys.stderr)

        _LOGGER = CollectingLogger()
    _LOGGER.verbose = verbose
    _LOGGER.errors.clear()
    return _LOGGER


def _network_flags(trt) -> int:
    # 11.x: strongly typed always (the flag is deprecated and ignored). 10.x: opt in, else the network would be
    # weakly typed and TensorRT free to pick other precisions than the graph's.
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parser_errors(parser, limit: int = 5) -> str:
    """The parser's errors with the node name and operator each one is about."""
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = getattr(e, "node_name", lambda: "")() or f"node #{e.node()}"
        op = getattr(e, "node_operator", lambda: "")()
        errors.append(f"{node}{f' ({op})' if op else ''}: {e.desc()} [{e.code()}]")
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(errors[:limit]) + more if errors else "no error recorded"


def _check_network(trt, network, descriptor: GraphDescriptor) -> list[str]:
    """Names, dtypes and static/dynamic dims of the parsed network against the descriptor; returns the
    names of the dynamic inputs (the ones the optimisation profile covers)."""
    import torch

    to_trt = {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16,
              torch.int64: trt.int64}
    inputs = {t.name: t for t in (network.get_input(i) for i in range(network.num_inputs))}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    problems = []
    if set(inputs) != set(descriptor.input_names) or set(outputs) != set(descriptor.output_names):
        problems.append(f"inputs {sorted(inputs)} / outputs {sorted(outputs)}, descriptor "
                        f"{sorted(descriptor.input_names)} / {sorted(descriptor.output_names)}")
    dynamic = []
    for spec in descriptor.inputs:
        tensor = inputs.get(spec.name)
        if tensor is None:
            continue
        if tensor.dtype != to_trt[descriptor.dtype(spec)]:
            problems.append(f"{spec.name}: {tensor.dtype}, descriptor {descriptor.dtype(spec)}")
        want = tuple(-1 if isinstance(d, str) else d for d in spec.shape)
        if tuple(tensor.shape) != want:
            problems.append(f"{spec.name}: shape {tuple(tensor.shape)}, descriptor {spec.shape} (dynamic = -1)")
        if -1 in want:
            dynamic.append(spec.name)
    if problems:
        raise TensorRTBuildError(f"{descriptor.name}: the ONNX graph does not match its descriptor: "
                                 + "; ".join(problems))
    return dynamic


def _use_timing_cache(trt, config, path: Path | None) -> str | None:
    if path is None:
        return None
    data, state = (path.read_bytes(), "loaded") if path.is_file() else (b"", "new")
    if not config.set_timing_cache(config.create_timing_cache(data), False):
        # Made by another TensorRT version or GPU: timings from elsewhere must not steer tactic choice here.
        config.set_timing_cache(config.create_timing_cache(b""), False)
        state = "rejected"
    return state


def build_engine(onnx_path: str | Path, descriptor: GraphDescriptor, out_path: str | Path,
                 precision: str | None = None, timing_cache_path: str | Path | None = None,
                 workspace_gb: float | None = None, fp8: bool = False, plugins: bool = False, *,
                 optimization_level: int = 3, verbose: bool = False) -> BuildInfo:
    """Parse `onnx_path` (from the file, so external data resolves beside it), check it against `descriptor`,
    build one optimisation profile from `descriptor.profile()` and write the serialized plan to `out_path`
    atomically.

    `precision` (default: the descriptor's) must equal the descriptor's: the strongly typed network takes
    its types from the graph, so this only guards against building the wrong file. `timing_cache_path`: a
    persistent timing cache, loaded when present and saved after the build. `workspace_gb`: the builder's
    workspace pool (default: TensorRT's, the device memory). `fp8`: require FP8 Q/DQ nodes in the graph and
    a GPU with compute capability >= 8.9. `plugins`: register the hallo_rt plugins
    (`trt_plugins.register_plugins()`) before parsing, for graphs exported with kernels="plugin".
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if precision is not None and precision != descriptor.precision:
        raise ValueError(f"{descriptor.name}: asked for {precision}, the graph is {descriptor.precision} (TensorRT "
                         "networks are strongly typed: precision is fixed at export, `hallo-rt export --dtype`)")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{descriptor.name}: no ONNX file at {onnx_path}")
    trt = require_tensorrt()
    gpu = gpu_architecture()
    facts = inspect_onnx(onnx_path, digest=False)
    if facts.plugin_nodes and not plugins:
        raise ValueError(f"{descriptor.name}: {onnx_path} has {facts.plugin_nodes} hallo_rt plugin nodes; build it "
                         "with plugins=True (registers the TensorRT plugins before parsing)")
    if fp8:
        capability = tuple(int(v) for v in gpu["compute_capability"].split("."))
        if capability < FP8_MIN_CAPABILITY:
            raise ValueError(f"FP8 engines need compute capability >= 8.9 (Ada/Hopper); {gpu['name']} is "
                             f"{gpu['compute_capability']}")
        if not facts.fp8_nodes:
            raise ValueError(f"{descriptor.name}: fp8=True but {onnx_path} has no FP8 quantize/dequantize nodes; "
                             "quantize the module with quantize_fp8() before exporting it")
    if plugins:
        from .trt_plugins import register_plugins

        register_plugins()

    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTBuildError(f"{descriptor.name}: TensorRT could not parse {onnx_path}: {parser_errors(parser)}")
    parse_seconds = time.perf_counter() - t0
    dynamic = _check_network(trt, network, descriptor)

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = optimization_level
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in descriptor.profile().items():
            if name in dynamic:  # static inputs need no profile entry
                profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache_path) if timing_cache_path is not None else None
    cache_state = _use_timing_cache(trt, config, cache_path)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise TensorRTBuildError(f"{descriptor.name}: TensorRT could not build {onnx_path}: "
                                 f"{'; '.join(logger.errors[-5:]) or 'no error logged'}")
    if cache_path is not None:
        atomic_write(cache_path, config.get_timing_cache().serialize())
    atomic_write(out_path, plan)
    return BuildInfo(descriptor.name, str(onnx_path), str(out_path), round(seconds, 3), round(parse_seconds, 3),
                     out_path.stat().st_size, facts.bytes, cache_state, plugins, len(facts.fp8_nodes),
                     str(trt.__version__), gpu)


# ----------------------------------------------------------------------------------------------------
# Every graph of an export directory.


@dataclass
class ExportManifest:
    directory: Path
    graphs: dict[str, tuple[Path, GraphDescriptor]]
    """name -> (ONNX path, descriptor)."""
    weights_digest: object
    data: dict


def read_export_manifest(onnx_dir: str | Path) -> ExportManifest:
    """`<onnx_dir>/manifest.json` as written by `hallo-rt export`, checked: every graph has its ONNX file and
    a descriptor of the same name, and there is a weights digest to key the plans by."""
    onnx_dir = Path(onnx_dir)
    path = onnx_dir / EXPORT_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPORT_MANIFEST} in {onnx_dir}: export first (`hallo-rt export --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    graphs = data.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ValueError(f"{path}: no graphs listed")
    if "weights_digest" not in data:
        raise ValueError(f"{path}: no weights_digest (the plans' cache key needs it); re-export")
    out = {}
    for name, entry in graphs.items():
        if not isinstance(entry, dict) or "onnx" not in entry or "descriptor" not in entry:
            raise ValueError(f"{path}: graph {name!r} needs 'onnx' and 'descriptor'")
        descriptor = descriptor_from_dict(entry["descriptor"])
        if descriptor.name != name:
            raise ValueError(f"{path}: graph {name!r} has the descriptor of {descriptor.name!r}")
        onnx_path = onnx_dir / entry["onnx"]
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{path}: graph {name!r}: {onnx_path} is missing")
        out[name] = (onnx_path, descriptor)
    return ExportManifest(onnx_dir, out, data["weights_digest"], data)


def build_all(onnx_dir: str | Path, out_dir: str | Path, *, graphs: list[str] | None = None, fp8: bool = False,
              timing_cache_path: str | Path | None = None, workspace_gb: float | None = None,
              optimization_level: int = 3, cache: ArtifactCache | None = None, verbose: bool = False,
              progress: bool = True) -> dict:
    """Build a plan per graph of an export directory into `out_dir` (`<graph>.plan`) and write `plans.json`.

    Each plan is keyed (`artifacts.key_ingredients`) by its descriptor, the export's weights digest, the ONNX
    files' content digest, the builder settings, TensorRT's version and the GPU; a cache hit is linked or
    copied instead of rebuilt. Graphs with hallo_rt plugin nodes are built with the plugins registered; graphs
    with FP8 Q/DQ as FP8. `fp8=True` requires at least one such graph (an export that was not quantised
    fails instead of silently giving bf16 engines). `timing_cache_path` defaults to one file per TensorRT
    version and GPU in the cache. One progress line per graph on stderr. Returns the plan manifest.
    """
    export = read_export_manifest(onnx_dir)
    names = list(export.graphs) if graphs is None else graphs
    unknown = [n for n in names if n not in export.graphs]
    if unknown:
        raise ValueError(f"unknown graphs {unknown}; {onnx_dir} has {sorted(export.graphs)}")
    trt = require_tensorrt()
    gpu = gpu_architecture()
    cache = cache or ArtifactCache()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing = (Path(timing_cache_path) if timing_cache_path is not None else
              cache.root / "timing" / f"{digest_json({'tensorrt': str(trt.__version__), 'gpu': gpu})[:32]}.cache")
    facts = {name: inspect_onnx(export.graphs[name][0]) for name in names}
    if fp8 and not any(f.fp8_nodes for f in facts.values()):
        raise ValueError(f"--fp8: no graph in {onnx_dir} has FP8 quantize/dequantize nodes; export a model quantised "
                         "with quantize_fp8() (NVIDIA ModelOpt) first")

    from tqdm import tqdm

    entries = {}
    bar = tqdm(names, unit="graph", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for name in bar:
        bar.set_description(f"building {name}")
        onnx_path, descriptor = export.graphs[name]
        f = facts[name]
        plugins, fp8_graph = f.plugin_nodes > 0, bool(f.fp8_nodes)
        stage = "plan-plugin" if plugins else "plan-fp8" if fp8_graph else "plan"
        extra = {"onnx": f.digest, "builder": {"optimization_level": optimization_level,
                                               "workspace_gb": workspace_gb}, "fp8_nodes": len(f.fp8_nodes)}
        if plugins:
            extra["plugin_source"] = plugin_source_digest()
        ingredients = key_ingredients(descriptor, export.weights_digest, stage, extra, gpu=gpu)
        key, filename = digest_json(ingredients), f"{name}.plan"
        out = out_dir / filename
        hit = cache.get(key, filename)
        if hit is not None:
            atomic_copy(hit, out)
            info = (cache.info(key, filename) or {}).get("producer", {}).get("build", {})
        else:
            built = build_engine(onnx_path, descriptor, out, timing_cache_path=timing, workspace_gb=workspace_gb,
                                 fp8=fp8_graph, plugins=plugins, optimization_level=optimization_level,
                                 verbose=verbose)
            info = asdict(built)
            cache.put(key, filename, out, {"ingredients": ingredients, "build": info})
        size = out.stat().st_size
        how = "cached" if hit is not None else f"built in {info['seconds']:.1f} s"
        if progress:
            tqdm.write(f"{name}: {how}, {size / 2**20:.1f} MiB -> {out}", file=sys.stderr)
        entries[name] = {"plan": filename, "descriptor": descriptor.to_dict(), "key": key, "cached": hit is not None,
                         "plan_bytes": size, "build_s": info.get("seconds"), "plugins": plugins,
                         "fp8_nodes": len(f.fp8_nodes), "onnx_digest": f.digest}
    manifest = {"format_version": PLAN_MANIFEST_VERSION, "onnx_dir": str(export.directory),
                "tensorrt": str(trt.__version__), "gpu": gpu, "weights_digest": export.weights_digest,
                "config_hash": export.data.get("config_hash"), "timing_cache": str(timing), "graphs": entries}
    atomic_write(out_dir / PLAN_MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


# ----------------------------------------------------------------------------------------------------
# FP8: explicit Q/DQ from NVIDIA ModelOpt, inserted in the torch model before ONNX export.


def quantize_fp8(module, calibration_inputs):
    """FP8 (E4M3) quantisation of `module` with NVIDIA ModelOpt (`mtq.quantize(module, mtq.FP8_DEFAULT_CFG,
    forward_loop)`): Q/DQ on the inputs and weights of its linear layers, scales calibrated (max) over
    `calibration_inputs`, an iterable of batches (dicts of named inputs, e.g. `descriptor.sample_inputs()`,
    or tuples of positional ones). ModelOpt swaps the layers in place; the module is returned.

    Export the result with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): ModelOpt writes
    its Q/DQ through TorchScript symbolic functions (`trt::TRT_FP8QuantizeLinear`/`DequantizeLinear`, which the
    TensorRT parser reads). The engine then needs compute capability >= 8.9; never run here (no GPU).
    """
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise QuantizationUnavailable(
            f"quantize_fp8 needs NVIDIA ModelOpt, which is not installed ({err}): `pip install nvidia-modelopt` "
            "(PyPI; torch >= 2.8). It is not a hallo-rt dependency: FP8 engines also need a Hopper/Ada GPU.") from None
    import torch

    batches = list(calibration_inputs)
    if not batches:
        raise ValueError("quantize_fp8 needs at least one calibration batch")

    def forward_loop(model):
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, dict):
                    model(**batch)
                else:
                    model(*batch)

    return mtq.quantize(module, mtq.FP8_DEFAULT_CFG, forward_loop)


# ----------------------------------------------------------------------------------------------------
# `hallo-rt build`.


def add_build_command(subparsers) -> argparse.ArgumentParser:
    """Add `hallo-rt build --onnx DIR --out DIR [...]` to the CLI's subparsers."""
    p = subparsers.add_parser("build", help="build TensorRT plans from an `hallo-rt export` directory")
    p.add_argument("--onnx", required=True, help="directory written by `hallo-rt export` (manifest.json)")
    p.add_argument("--out", required=True, help="output directory (<graph>.plan + plans.json)")
    p.add_argument("--fp8", action="store_true",
                   help="require FP8 Q/DQ graphs (a ModelOpt-quantised export; compute capability >= 8.9)")
    p.add_argument("--timing-cache", default=None,
                   help="persistent timing cache file (default: one per TensorRT version and GPU in the cache)")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace (default: TensorRT's)")
    p.add_argument("--optimization-level", type=int, default=3, choices=range(6), help="builder level 0-5 (3)")
    p.add_argument("--graphs", nargs="+", default=None, help="build only these graphs")
    p.add_argument("--cache", default=None, help="artifact cache root (default: $HALLO_RT_CACHE or ~/.cache/hallo-rt)")
    p.add_argument("--verbose", action="store_true", help="TensorRT info messages on stderr")
    p.add_argument("--json", action="store_true", help="print the plan manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_build)
    return p


def run_build(args: argparse.Namespace) -> int:
    """Handler of `hallo-rt build`. A missing TensorRT/GPU or a failed build is a ValueError, which the CLI
    prints as one `hallo-rt: error: ...` line (exit 2)."""
    from .trt_plugins import TensorRTUnavailable

    try:
        manifest = build_all(args.onnx, args.out, graphs=args.graphs, fp8=args.fp8,
                             timing_cache_path=args.timing_cache, workspace_gb=args.workspace_gb,
                             optimization_level=args.optimization_level,
                             cache=ArtifactCache(args.cache) if args.cache else None, verbose=args.verbose,
                             progress=not args.quiet)
    except (TensorRTUnavailable, TensorRTBuildError) as err:
        raise ValueError(str(err)) from None
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        built = sum(not g["cached"] for g in manifest["graphs"].values())
        print(f"{len(manifest['graphs'])} plans ({built} built, {len(manifest['graphs']) - built} cached) in "
              f"{args.out}; manifest {Path(args.out) / PLAN_MANIFEST}")
    return 0
