"""Every registered Triton kernel compiles for sm_90 (H100/H200) at the model sizes, in bf16 and fp16, without
register spills and within the per-block register and shared-memory limits (kernels/compile_check.py).

No GPU is needed: Triton compiles ahead of time to PTX and cubin on CPU. The check runs in a subprocess without
TRITON_INTERPRET, because conftest sets it for this process and Triton decides at decoration time.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (the `gpu` extra): nothing to compile")

from hallo_rt.kernels import REGISTRY  # noqa: E402
from hallo_rt.kernels.compile_check import SM90_LIMITS, import_kernel_modules, main, violations  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "sm90.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # --cache: a cache hit returns the binary a fresh compile would make (the key covers source, options and
    # Triton's version); a cold cache costs ~25 s for all kernels on 2 cores.
    result = subprocess.run([sys.executable, "-m", "hallo_rt.kernels.compile_check", "--arch", "90",
                             "--dtype", *DTYPES, "--json", str(out), "--cache"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), f"no report written (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text()), result


def test_every_op_and_example_compiles_within_sm90_limits(report):
    data, result = report
    import_kernel_modules()  # the same op modules the subprocess imported, so the expected set is complete
    expected = {(name, label, dtype) for name, op in REGISTRY.items() for dtype, torch_dtype in DTYPES.items()
                for label, _ in op.examples(torch_dtype)}
    got = {(r["op"], r["label"], r["dtype"]) for r in data["kernels"]}
    assert got == expected
    assert set(data["ops"]) == set(REGISTRY)
    problems = [f"{r['op']} [{r['label']}, {r['dtype']}]: {'; '.join(r['problems'])}"
                for r in data["kernels"] if r["problems"]]
    assert not problems, "kernels that do not fit sm_90:\n" + "\n".join(problems)
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["ok"] is True


def test_report_fields_are_sane(report):
    data, _ = report
    assert data["limits"] == SM90_LIMITS and data["target"] == "sm_90"
    for r in data["kernels"]:
        where = f"{r['op']} [{r['label']}, {r['dtype']}]"
        assert "error" not in r, f"{where}: {r['error']}"
        assert 0 < r["registers"] <= SM90_LIMITS["registers_per_thread"], where
        assert r["registers_per_block"] == r["registers"] * r["num_warps"] * 32, where
        assert min(r["spill_local_bytes"], r["spill_stack_bytes"], r["sass_local_memory_ops"]) >= 0, where
        if r["spill_local_bytes"] == r["spill_stack_bytes"] == 0:  # no stack frame: no local-memory code
            assert r["sass_local_memory_ops"] == 0, where
        assert r["total_shared_bytes"] == r["static_shared_bytes"] + r["dynamic_shared_bytes"], where
        assert 0 <= r["total_shared_bytes"] <= SM90_LIMITS["shared_per_block"], where
        assert r["ptx_target"].startswith("sm_90"), where
        assert float(r["ptx_version"]) >= 7.0, where
        # The .entry holds every runtime launch argument, plus any hidden parameters Triton appends.
        assert r["launch_args"] > 0 and r["ptx_params"] >= r["launch_args"], where
        assert r["hidden_params"] == r["ptx_params"] - r["launch_args"], where
        assert r["compile_s"] >= 0 and r["num_warps"] in (1, 2, 4, 8, 16, 32), where


def test_refuses_to_run_under_the_interpreter(capsys):
    """In this process TRITON_INTERPRET is set (conftest, CPU machines): the kernels cannot be compiled here."""
    from hallo_rt.kernels import INTERPRET

    if not INTERPRET:
        pytest.skip("TRITON_INTERPRET is not set in this process (a CUDA machine)")
    assert main(["--json", os.devnull]) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().err


def test_violations_flag_spills_registers_and_shared_memory():
    fits = dict(registers=128, registers_per_block=128 * 256, spill_local_bytes=0, spill_stack_bytes=0,
                sass_local_memory_ops=0, static_shared_bytes=1024, dynamic_shared_bytes=231424,
                total_shared_bytes=232448)
    assert violations(fits) == []  # exactly at the 227 KiB opt-in limit
    assert "spills" in violations(dict(fits, spill_stack_bytes=8, sass_local_memory_ops=2))[0]
    assert "spills" in violations(dict(fits, spill_local_bytes=4))[0]
    assert "registers per thread" in violations(dict(fits, registers=256))[0]
    assert "registers per block" in violations(dict(fits, registers_per_block=65537))[0]
    assert "shared memory" in violations(dict(fits, dynamic_shared_bytes=231425, total_shared_bytes=232449))[0]
