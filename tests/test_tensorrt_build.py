"""The TensorRT build side (export/tensorrt_build.py, export/artifacts.py).

On CPU: artifact keys (each ingredient changes the key, nothing else does), the cache's atomic put/get,
descriptors from JSON, what is read from ONNX files (external data, plugin and FP8 nodes), build_all's caching
with the TensorRT build replaced by a fake, and every TensorRT entry point failing with one clear message when
TensorRT or the GPU is missing. With `tensorrt` and a CUDA GPU: a tiny graph is built into a plan and run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (the `onnx` extra)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hallo_rt.engine.config import TINY, VAE_TINY  # noqa: E402
from hallo_rt.export import artifacts, tensorrt_build  # noqa: E402
from hallo_rt.export.artifacts import ArtifactCache, artifact_key, digest_json, key_ingredients  # noqa: E402
from hallo_rt.export.descriptors import GraphDescriptor, TensorSpec  # noqa: E402
from hallo_rt.export.graphs import (audio_encoder_descriptor, conditioning_descriptor,  # noqa: E402
                                    denoiser_descriptor, reference_descriptor, vae_encoder_descriptor)
from hallo_rt.export.tensorrt_build import (QuantizationUnavailable, add_build_command, build_all,  # noqa: E402
                                            build_engine, descriptor_from_dict, inspect_onnx, quantize_fp8,
                                            require_tensorrt)
from hallo_rt.export.trt_plugins import TensorRTUnavailable  # noqa: E402

GPU = {"compute_capability": "9.0", "name": "NVIDIA H100 80GB HBM3"}
VERSIONS = {"tensorrt": "10.13.0"}


def tiny_descriptor(name: str = "tiny", precision: str = "fp32", max_batch: int = 4) -> GraphDescriptor:
    return GraphDescriptor(name, (TensorSpec("x", ("batch", 8)),), (TensorSpec("y", ("batch", 4)),),
                           (("batch", (1, 2, max_batch)),), precision, {"test": True})


def tiny_onnx(path: Path, seed: int = 0, external: bool = False) -> np.ndarray:
    """y = relu(x @ w), x (batch, 8) fp32 with a dynamic batch: the graph of `tiny_descriptor`. Returns w."""
    w = np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
         helper.make_node("Relu", ["xw"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [numpy_helper.from_array(w, "w")])
    # IR 8 / opset 17: old enough for every TensorRT 10.x parser.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return w


def export_dir(root: Path, names=("a", "b"), weights_digest="w0") -> Path:
    graphs = {}
    for i, name in enumerate(names):
        tiny_onnx(root / f"{name}.onnx", seed=i, external=True)
        graphs[name] = {"onnx": f"{name}.onnx", "descriptor": tiny_descriptor(name).to_dict()}
    (root / "manifest.json").write_text(json.dumps({"graphs": graphs, "config_hash": "c0",
                                                    "weights_digest": weights_digest}))
    return root


@pytest.fixture
def no_tensorrt(monkeypatch):
    """This machine as it is (no tensorrt, no GPU), also on a machine that has them."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(tensorrt_build, "gpu_architecture", lambda: None)


# ----------------------------------------------------------------------------------------------------
# Artifact keys


def test_key_is_stable_and_canonical():
    d = tiny_descriptor()
    key = artifact_key(d, "w0", "plan", {"a": 1, "b": [1, 2]}, versions=VERSIONS, gpu=GPU)
    assert len(key) == 64 and int(key, 16) >= 0
    # Same ingredients, dicts in another order, a descriptor rebuilt from JSON: the same key.
    assert artifact_key(tiny_descriptor(), "w0", "plan", {"b": [1, 2], "a": 1}, versions=dict(VERSIONS),
                        gpu=dict(reversed(GPU.items()))) == key
    assert artifact_key(descriptor_from_dict(json.loads(json.dumps(d.to_dict()))), "w0", "plan",
                        {"a": 1, "b": [1, 2]}, versions=VERSIONS, gpu=GPU) == key
    assert key == digest_json(key_ingredients(d, "w0", "plan", {"a": 1, "b": [1, 2]}, versions=VERSIONS, gpu=GPU))


def test_key_changes_with_each_ingredient():
    base = {"descriptor": tiny_descriptor(), "weights_digest": "w0", "stage": "plan", "extra": {"onnx": "d0"},
            "versions": VERSIONS, "gpu": GPU}

    def key(**change):
        args = {**base, **change}
        return artifact_key(args["descriptor"], args["weights_digest"], args["stage"], args["extra"],
                            versions=args["versions"], gpu=args["gpu"])

    variants = {
        "descriptor precision": key(descriptor=tiny_descriptor(precision="fp16")),
        "descriptor profile": key(descriptor=tiny_descriptor(max_batch=8)),
        "descriptor name": key(descriptor=tiny_descriptor("other")),
        "weights": key(weights_digest="w1"),
        "weights per component": key(weights_digest={"dit": "w0"}),
        "stage": key(stage="plan-fp8"),
        "tensorrt version": key(versions={"tensorrt": "11.4.0"}),
        "gpu architecture": key(gpu={**GPU, "compute_capability": "8.9"}),
        "gpu model": key(gpu={**GPU, "name": "NVIDIA H200"}),
        "onnx digest": key(extra={"onnx": "d1"}),
        "builder setting": key(extra={"onnx": "d0", "builder": {"optimization_level": 5}}),
    }
    keys = [key()] + list(variants.values())
    assert len(set(keys)) == len(keys), variants


def test_key_versions_are_probed_per_stage(monkeypatch):
    d = tiny_descriptor()
    onnx_stage = key_ingredients(d, "w0", "onnx")
    assert onnx_stage["versions"]["torch"] == torch.__version__
    assert onnx_stage["versions"]["onnx"] == onnx.__version__
    assert "gpu" not in onnx_stage  # ONNX files do not depend on the GPU
    assert set(key_ingredients(d, "w0", "onnx-int8")["versions"]) >= {"torch", "onnx", "onnxruntime"}
    plan = key_ingredients(d, "w0", "plan", gpu=GPU)
    assert set(plan["versions"]) == {"tensorrt"} and plan["gpu"] == GPU
    # A different installed version changes the key without being passed in.
    before = artifact_key(d, "w0", "onnx")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert artifact_key(d, "w0", "onnx") != before


def test_key_refuses_what_it_cannot_key(monkeypatch):
    d = tiny_descriptor()
    monkeypatch.setattr(artifacts, "gpu_architecture", lambda: None)
    with pytest.raises(ValueError, match="GPU architecture"):
        artifact_key(d, "w0", "plan", versions=VERSIONS)  # no GPU: no plan key rather than one without it
    with pytest.raises(ValueError, match="known stages"):
        artifact_key(d, "w0", "engine")
    with pytest.raises(TypeError):
        artifact_key(d, "w0", "onnx", {"path": Path("x")}, versions={})  # no repr-based fallback


# ----------------------------------------------------------------------------------------------------
# The cache


def test_cache_put_get_and_sidecar(tmp_path):
    cache, key = ArtifactCache(tmp_path), "ab" * 32
    assert cache.get(key, "g.plan") is None and cache.info(key, "g.plan") is None
    data = os.urandom(100_000)
    path = cache.put(key, "g.plan", data, {"stage": "plan", "graph": "g"})
    assert path == tmp_path / "ab" / key / "g.plan" and cache.get(key, "g.plan") == path
    assert path.read_bytes() == data
    info = cache.info(key, "g.plan")
    assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["producer"] == {"stage": "plan", "graph": "g"} and info["key"] == key
    assert cache.get(key, "g.plan", verify=True) == path
    path.write_bytes(data[:-1] + b"x")  # corrupted behind the cache's back
    assert cache.get(key, "g.plan", verify=True) is None
    cache.put(key, "g.plan", b"new")  # a second put replaces the entry whole
    assert path.read_bytes() == b"new" and cache.info(key, "g.plan")["bytes"] == 3
    # An artifact without its sidecar (a put that died in between) is a miss.
    (path.parent / "g.plan.json").unlink()
    assert cache.get(key, "g.plan") is None


def test_cache_put_never_shows_a_partial_file(tmp_path, monkeypatch):
    cache, key = ArtifactCache(tmp_path), "cd" * 32
    target = cache.path_for(key, "g.plan")
    seen = []
    real_fsync = os.fsync

    def fsync_while_writing(fd):  # runs after the bytes are written, before the rename
        seen.append((target.exists(), sorted(p.name for p in target.parent.iterdir())))
        real_fsync(fd)

    monkeypatch.setattr(artifacts.os, "fsync", fsync_while_writing)
    cache.put(key, "g.plan", b"x" * 1000)
    assert seen[0][0] is False and len(seen[0][1]) == 1 and seen[0][1][0].startswith(".g.plan.")
    monkeypatch.setattr(artifacts.os, "fsync", real_fsync)

    # A write that fails before the rename leaves nothing: no target, no temporary file, a miss.
    def broken_replace(src, dst):
        raise OSError("disk full")

    other = "ef" * 32
    monkeypatch.setattr(artifacts.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cache.put(other, "g.plan", b"y" * 1000)
    monkeypatch.undo()
    assert cache.get(other, "g.plan") is None
    assert list(cache.path_for(other, "g.plan").parent.iterdir()) == []
    assert cache.get(key, "g.plan").read_bytes() == b"x" * 1000  # the earlier entry is untouched


def test_cache_put_from_file_links_or_copies(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    src = tmp_path / "built.plan"
    src.write_bytes(b"plan-1")
    linked = cache.put("01" * 32, "g.plan", src)
    copied = cache.put("02" * 32, "g.plan", src, link=False)
    assert linked.read_bytes() == copied.read_bytes() == b"plan-1"
    assert os.stat(copied).st_ino != os.stat(src).st_ino
    # The builder replaces its output atomically (a new inode), so the cached entry keeps its content.
    artifacts.atomic_write(src, b"plan-2")
    assert linked.read_bytes() == b"plan-1" and copied.read_bytes() == b"plan-1"


def test_cache_root_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HALLO_RT_CACHE", str(tmp_path / "env"))
    assert ArtifactCache().root == tmp_path / "env"
    monkeypatch.delenv("HALLO_RT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ArtifactCache().root == tmp_path / "home" / ".cache" / "hallo-rt"
    cache = ArtifactCache(tmp_path)
    for bad_key in ("abc", "AB" * 32, "../" + "a" * 61):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            cache.path_for(bad_key, "g.plan")
    for bad_name in ("../g.plan", "sub/g.plan", ".hidden", ""):
        with pytest.raises(ValueError, match="plain file name"):
            cache.path_for("ab" * 32, bad_name)


# ----------------------------------------------------------------------------------------------------
# Descriptors from JSON


def model_descriptors() -> list[GraphDescriptor]:
    out = [denoiser_descriptor(TINY), denoiser_descriptor(TINY, "bf16", frames=5, bank=False),
           conditioning_descriptor(TINY, "fp16"), reference_descriptor(TINY), audio_encoder_descriptor(4, 32),
           audio_encoder_descriptor(4, 32, "fp16"), vae_encoder_descriptor(VAE_TINY, 16, 16),
           vae_encoder_descriptor(VAE_TINY, 16, 16, frames=3)]
    try:
        from hallo_rt.export.vae_graphs import vae_decoder_descriptors
    except ImportError:  # written alongside; the round trip covers it once it is there
        return out
    return out + list(vae_decoder_descriptors(VAE_TINY, 16, 16).values())


@pytest.mark.parametrize("descriptor", model_descriptors(), ids=lambda d: f"{d.name}-{d.precision}-{len(d.dims)}")
def test_descriptor_round_trip(descriptor):
    data = json.loads(json.dumps(descriptor.to_dict()))
    back = descriptor_from_dict(data)
    assert back == descriptor
    assert json.loads(json.dumps(back.to_dict())) == data
    assert back.compute_hash() == descriptor.compute_hash()
    assert back.profile() == descriptor.profile()
    assert {k: v.shape for k, v in back.sample_inputs("min").items()} == \
        {k: v.shape for k, v in descriptor.sample_inputs("min").items()}


def test_descriptor_from_bad_dict():
    data = tiny_descriptor().to_dict()
    with pytest.raises(ValueError, match="not a GraphDescriptor"):
        descriptor_from_dict({k: v for k, v in data.items() if k != "inputs"})
    data["inputs"][0]["shape"] = ["seq", 8]
    with pytest.raises(ValueError, match="has no"):  # the descriptor's own validation still runs
        descriptor_from_dict(data)


# ----------------------------------------------------------------------------------------------------
# ONNX facts


def test_inspect_onnx_external_data_and_digest(tmp_path):
    tiny_onnx(tmp_path / "a" / "g.onnx", seed=0, external=True)
    tiny_onnx(tmp_path / "b" / "g.onnx", seed=0, external=True)
    tiny_onnx(tmp_path / "c" / "g.onnx", seed=1, external=True)
    a, b, c = (inspect_onnx(tmp_path / d / "g.onnx") for d in "abc")
    assert [Path(f).name for f in a.files] == ["g.onnx", "g.onnx.data"]
    assert a.bytes == sum(Path(f).stat().st_size for f in a.files)
    assert a.digest == b.digest != c.digest  # the weights (in the .data file) are part of the digest
    assert a.plugin_nodes == 0 and a.fp8_nodes == ()
    assert inspect_onnx(tmp_path / "a" / "g.onnx", digest=False).digest is None
    (tmp_path / "a" / "g.onnx.data").unlink()
    with pytest.raises(FileNotFoundError, match="external data"):
        inspect_onnx(tmp_path / "a" / "g.onnx")


def _qdq_model(path: Path, kind: str) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    if kind == "fp8-qdq":  # ONNX QuantizeLinear to FLOAT8E4M3FN (type from the zero point), then back
        zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q0"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq0")]
        inits, opset = [scale, zp], 19
    elif kind == "fp8-weight":  # FP8 weights stored as an initializer, dequantized in the graph
        w = helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, [4], [1.0, 2.0, 0.5, -1.0])
        nodes = [helper.make_node("DequantizeLinear", ["w8", "scale"], ["w"], name="dqw"),
                 helper.make_node("Mul", ["x", "w"], ["y"], name="mul")]
        inits, opset = [scale, w], 19
    elif kind == "modelopt":  # ModelOpt's raw TorchScript export: TensorRT's own FP8 ops
        nodes = [helper.make_node("TRT_FP8QuantizeLinear", ["x", "scale"], ["q"], name="tq", domain="trt"),
                 helper.make_node("TRT_FP8DequantizeLinear", ["q", "scale"], ["y"], name="tdq", domain="trt")]
        inits, opset = [scale], 17
    elif kind == "int8":  # INT8 Q/DQ is not FP8
        zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q0"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq0")]
        inits, opset = [scale, zp], 17
    else:  # a hallo_rt plugin node (export/kernel_ops.py)
        nodes = [helper.make_node("gated_residual", ["x", "x", "x", "x", "x"], ["y", "z"], name="p",
                                  domain="hallo_rt", plugin_namespace="hallo_rt")]
        inits, opset = [], 17
    model = helper.make_model(helper.make_graph(nodes, kind, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("trt", 1),
                                             helper.make_opsetid("hallo_rt", 1)])
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("kind,fp8,plugins", [("fp8-qdq", ["q0", "dq0"], 0), ("fp8-weight", ["dqw"], 0),
                                              ("modelopt", ["tq", "tdq"], 0), ("int8", [], 0), ("plugin", [], 1)])
def test_inspect_onnx_finds_fp8_and_plugin_nodes(tmp_path, kind, fp8, plugins):
    facts = inspect_onnx(_qdq_model(tmp_path / f"{kind}.onnx", kind))
    assert list(facts.fp8_nodes) == fp8 and facts.plugin_nodes == plugins


# ----------------------------------------------------------------------------------------------------
# Without TensorRT: one clear error everywhere


def test_require_tensorrt_names_what_is_missing(no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as err:
        require_tensorrt()
    message = str(err.value)
    assert "\n" not in message
    for part in ("`tensorrt` Python package >= 10.0", "a CUDA GPU", "pip install tensorrt", "--backend onnxruntime"):
        assert part in message, message


def test_build_engine_without_tensorrt(tmp_path, no_tensorrt):
    tiny_onnx(tmp_path / "g.onnx")
    with pytest.raises(TensorRTUnavailable, match="TensorRT engines cannot be built here"):
        build_engine(tmp_path / "g.onnx", tiny_descriptor(), tmp_path / "g.plan")
    assert not (tmp_path / "g.plan").exists()
    # Argument errors come first, whatever is installed.
    with pytest.raises(ValueError, match="strongly typed"):
        build_engine(tmp_path / "g.onnx", tiny_descriptor(), tmp_path / "g.plan", "fp16")
    with pytest.raises(FileNotFoundError):
        build_engine(tmp_path / "missing.onnx", tiny_descriptor(), tmp_path / "g.plan")


def test_build_all_without_tensorrt(tmp_path, no_tensorrt):
    onnx_dir = export_dir(tmp_path / "onnx")
    with pytest.raises(TensorRTUnavailable, match="missing the `tensorrt` Python package"):
        build_all(onnx_dir, tmp_path / "plans", cache=ArtifactCache(tmp_path / "cache"), progress=False)
    assert not (tmp_path / "plans").exists() and not (tmp_path / "cache").exists()


def build_cli(argv):
    parser = argparse.ArgumentParser(prog="hallo-rt")
    add_build_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_handler_without_tensorrt(tmp_path, no_tensorrt):
    onnx_dir = export_dir(tmp_path / "onnx")
    args = build_cli(["build", "--onnx", str(onnx_dir), "--out", str(tmp_path / "plans"), "--workspace-gb", "8",
                      "--timing-cache", str(tmp_path / "t.cache"), "--fp8", "--cache", str(tmp_path / "cache")])
    assert (args.workspace_gb, args.fp8, args.optimization_level) == (8.0, True, 3)
    # A ValueError: the CLI's main prints it as one "hallo-rt: error: ..." line and exits 2.
    with pytest.raises(ValueError, match="TensorRT engines cannot be built here: missing") as err:
        args.func(args)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        args.func(build_cli(["build", "--onnx", str(tmp_path), "--out", str(tmp_path / "plans")]))


def test_hallo_rt_build_exits_nonzero_with_one_line(tmp_path, no_tensorrt, capsys):
    from hallo_rt.runtime import cli

    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "build" not in commands:
        pytest.skip("`hallo-rt build` is not wired into runtime/cli.py yet")
    code = cli.main(["build", "--onnx", str(export_dir(tmp_path / "onnx")), "--out", str(tmp_path / "plans")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("hallo-rt: error: TensorRT engines cannot be built")


def test_read_export_manifest_errors(tmp_path):
    onnx_dir = export_dir(tmp_path / "onnx")
    manifest = json.loads((onnx_dir / "manifest.json").read_text())

    def expect(change, error, match):
        data = json.loads(json.dumps(manifest))
        change(data)
        (onnx_dir / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(error, match=match):
            tensorrt_build.read_export_manifest(onnx_dir)

    expect(lambda d: d.pop("weights_digest"), ValueError, "no weights_digest")
    expect(lambda d: d.update(graphs={}), ValueError, "no graphs")
    expect(lambda d: d["graphs"]["a"].update(onnx="nope.onnx"), FileNotFoundError, "nope.onnx is missing")
    expect(lambda d: d["graphs"]["a"].update(descriptor=tiny_descriptor("b").to_dict()), ValueError,
           "descriptor of 'b'")


def test_quantize_fp8_without_modelopt(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(QuantizationUnavailable, match="pip install nvidia-modelopt"):
        quantize_fp8(torch.nn.Linear(4, 4), [(torch.zeros(1, 4),)])


# ----------------------------------------------------------------------------------------------------
# build_all's cache logic, with the TensorRT build replaced by a fake


@pytest.fixture
def fake_tensorrt(monkeypatch):
    calls = []

    def fake_build(onnx_path, descriptor, out_path, precision=None, timing_cache_path=None, workspace_gb=None,
                   fp8=False, plugins=False, **kwargs):
        calls.append(descriptor.name)
        data = Path(onnx_path).read_bytes()
        artifacts.atomic_write(out_path, b"PLAN" + hashlib.sha256(data).digest())
        return tensorrt_build.BuildInfo(descriptor.name, str(onnx_path), str(out_path), 1.5, 0.1,
                                        Path(out_path).stat().st_size, len(data), "new", plugins, 0, "10.99.0", GPU)

    fake = SimpleNamespace(__version__="10.99.0")
    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda need_gpu=True: fake)
    monkeypatch.setattr(tensorrt_build, "gpu_architecture", lambda: GPU)
    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    return calls


def test_build_all_caches_plans(tmp_path, fake_tensorrt, capsys):
    onnx_dir, out, cache = export_dir(tmp_path / "onnx"), tmp_path / "plans", ArtifactCache(tmp_path / "cache")
    first = build_all(onnx_dir, out, cache=cache)
    assert fake_tensorrt == ["a", "b"]
    lines = capsys.readouterr().err
    assert "a: built in 1.5 s" in lines and "b: built in 1.5 s" in lines
    assert json.loads((out / "plans.json").read_text()) == first
    assert first["tensorrt"] == "10.99.0" and first["gpu"] == GPU and first["weights_digest"] == "w0"
    for name, entry in first["graphs"].items():
        assert (out / entry["plan"]).read_bytes().startswith(b"PLAN") and not entry["cached"]
        assert cache.get(entry["key"], entry["plan"]).read_bytes() == (out / entry["plan"]).read_bytes()
        assert descriptor_from_dict(entry["descriptor"]) == tiny_descriptor(name)
        assert cache.info(entry["key"], entry["plan"])["producer"]["ingredients"]["gpu"] == GPU
    assert first["graphs"]["a"]["key"] != first["graphs"]["b"]["key"]

    # Again into a fresh directory: every plan from the cache, nothing built.
    second = build_all(onnx_dir, tmp_path / "plans2", cache=cache, progress=False)
    assert fake_tensorrt == ["a", "b"] and all(g["cached"] for g in second["graphs"].values())
    assert {n: g["key"] for n, g in second["graphs"].items()} == {n: g["key"] for n, g in first["graphs"].items()}

    # New weights in one graph: that one is rebuilt. New weights digest or builder settings: all of them.
    tiny_onnx(onnx_dir / "b.onnx", seed=7, external=True)
    third = build_all(onnx_dir, out, cache=cache, progress=False)
    assert fake_tensorrt == ["a", "b", "b"] and third["graphs"]["a"]["cached"] and not third["graphs"]["b"]["cached"]
    build_all(onnx_dir, out, cache=cache, progress=False, optimization_level=5)
    assert fake_tensorrt[3:] == ["a", "b"]
    build_all(onnx_dir, out, cache=cache, progress=False, graphs=["a"], workspace_gb=4)
    assert fake_tensorrt[5:] == ["a"]
    with pytest.raises(ValueError, match="unknown graphs"):
        build_all(onnx_dir, out, cache=cache, progress=False, graphs=["c"])
    with pytest.raises(ValueError, match="no graph .* has FP8"):
        build_all(onnx_dir, out, cache=cache, progress=False, fp8=True)


# ----------------------------------------------------------------------------------------------------
# With TensorRT and a GPU: build a plan and run it


def _tensorrt_or_skip():
    try:
        import tensorrt as trt
    except Exception as err:  # noqa: BLE001 - any import failure means no TensorRT here
        pytest.skip(f"tensorrt is not importable ({type(err).__name__}: {err}); install it on a GPU machine")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch")
    return trt


@pytest.mark.gpu
def test_build_and_run_a_tiny_plan(tmp_path):
    trt = _tensorrt_or_skip()
    w = tiny_onnx(tmp_path / "tiny.onnx", external=True)
    descriptor = tiny_descriptor()
    timing = tmp_path / "timing.cache"
    info = build_engine(tmp_path / "tiny.onnx", descriptor, tmp_path / "tiny.plan", "fp32", timing, workspace_gb=1)
    assert info.timing_cache == "new" and timing.stat().st_size > 0
    assert info.plan_bytes == (tmp_path / "tiny.plan").stat().st_size > 0 and info.seconds > 0
    again = build_engine(tmp_path / "tiny.onnx", descriptor, tmp_path / "again.plan", timing_cache_path=timing)
    assert again.timing_cache == "loaded"

    logger = tensorrt_build._logger(trt, verbose=False)  # the builder's: one logger per process
    engine = trt.Runtime(logger).deserialize_cuda_engine((tmp_path / "tiny.plan").read_bytes())
    assert engine is not None
    names = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
             for i in range(engine.num_io_tensors)}
    assert names == {"x": trt.TensorIOMode.INPUT, "y": trt.TensorIOMode.OUTPUT}
    context = engine.create_execution_context()
    for batch in (1, 3, 4):  # across the profile's range (1, 2, 4)
        x = torch.randn(batch, 8, device="cuda")
        y = torch.empty(batch, 4, device="cuda")
        assert context.set_input_shape("x", tuple(x.shape))
        context.set_tensor_address("x", x.data_ptr())
        context.set_tensor_address("y", y.data_ptr())
        stream = torch.cuda.current_stream()
        assert context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        expected = torch.relu(x @ torch.from_numpy(w).cuda())
        # TensorRT may run fp32 GEMMs in TF32 (on by default): ~1e-3 here; a wrong graph is off by O(1).
        torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_build_all_on_gpu(tmp_path):
    _tensorrt_or_skip()
    onnx_dir = export_dir(tmp_path / "onnx")
    cache = ArtifactCache(tmp_path / "cache")
    first = build_all(onnx_dir, tmp_path / "plans", cache=cache, timing_cache_path=tmp_path / "t.cache")
    second = build_all(onnx_dir, tmp_path / "plans2", cache=cache, timing_cache_path=tmp_path / "t.cache")
    assert not any(g["cached"] for g in first["graphs"].values())
    assert all(g["cached"] for g in second["graphs"].values())
    assert (tmp_path / "plans2" / "a.plan").read_bytes() == (tmp_path / "plans" / "a.plan").read_bytes()
