"""Packaging: one `hallo_rt` namespace, no bare top-level imports, a light `import hallo_rt`, a working CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "export", "kernels", "runtime")
HALLO = Path(sys.executable).parent / "hallo-rt"


def _python_files():
    for folder in PACKAGES + ("benchmarks",):
        yield from (REPO / folder).rglob("*.py")
    yield REPO / "__init__.py"


def test_no_bare_top_level_imports_of_our_folders():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not offenders, offenders


def test_import_is_light():
    code = "import sys, hallo_rt, hallo_rt.engine; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'onnxruntime', 'tensorrt', 'triton', 'transformers', 'av'))))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_wheel_maps_folders_under_hallo_rt(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("hallo_rt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"hallo_rt"}
    for expected in ("hallo_rt/__init__.py", "hallo_rt/engine/dit.py", "hallo_rt/engine/weights/sat.py",
                     "hallo_rt/runtime/cli.py", "hallo_rt/kernels/__init__.py", "hallo_rt/export/__init__.py",
                     "hallo_rt/runtime/backends/__init__.py", "hallo_rt/benchmarks/stream_bench.py",
                     "hallo_rt/benchmarks/cost_model.py", "hallo_rt/train/train_denoiser.py"):
        assert expected in names
    assert not any(n.startswith("hallo_rt/tests/") or n.startswith("hallo_rt/benchmarks/results/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hallo-rt = hallo_rt.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_cli_denoise_main_job_few_steps():
    result = subprocess.run([str(HALLO), "denoise", "--model", "tiny", "--steps", "2", "--cfg", "1", "--json",
                             "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["latent_shape"] == [1, 13, 16, 16, 16] and summary["finite"]
    assert summary["sampling_s"] > 0 and summary["denoise_rtf"] > 0


@pytest.mark.parametrize("argv,message", [
    (["denoise", "--device", "cuda"], "device 'cuda' is not available"),
    (["denoise", "--model", "does-not-exist"], "neither a preset"),
    (["denoise", "--steps", "0"], "steps must be in 1..1000"),
    (["info", "nope"], "neither a preset"),
])
def test_cli_errors_are_one_clear_line(argv, message):
    result = subprocess.run([str(HALLO), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_info_hallo3_counts_parameters_without_materialising():
    result = subprocess.run([str(HALLO), "info", "hallo3"], capture_output=True, text=True, timeout=120, check=True)
    info = json.loads(result.stdout)
    assert info["config"]["num_layers"] == 42 and info["config"]["num_heads"] == 48
    assert 8.8e9 < info["parameters"] < 9.0e9  # 5.6 B backbone + face/audio attention + 1.2 B audio conv
