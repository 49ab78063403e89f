"""Compile every registered Triton kernel for Hopper (sm_90) ahead of time and check its resource usage.

    python -m hallo_rt.kernels.compile_check [--arch 90] [--dtype bf16 fp16] [--json PATH] [--cache]

For each op in `REGISTRY`, each of its model-size example launches and each dtype, the launch's own AOT
signature (`Launch.signature()`, the one the TensorRT AOT plugins use) is compiled with `triton.compile` for
the target GPU; no GPU is needed. Per kernel it records registers, spills, shared memory, the PTX ISA version
and the number of PTX entry parameters, and fails (exit 1) when a kernel spills, needs more than 255
registers per thread or more shared memory than a block can have on sm_90. Exit 2: the check cannot run here.

Resource usage is read from the cubin Triton produced, with the cuobjdump that Triton bundles, so the numbers
are those of the exact binary Triton would load. (The plain `ptxas` Triton bundles, 12.9, is too old for the
PTX ISA 9.4 that Triton 3.9 emits; Triton assembles sm_90 with its newer `ptxas-blackwell` and its own flags.)

Must run in a process without TRITON_INTERPRET: Triton decides at decoration time whether a kernel is
compiled or interpreted, and interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Per-block limits of compute capability 9.0 (H100, H200), from the CUDA C++ Programming Guide table
# "Technical Specifications per Compute Capability": at most 255 registers per thread, 64 K 32-bit registers
# per block, and 227 KB of shared memory per block (232448 bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin,
# reached only after opting in with cudaFuncSetAttribute, which Triton's launcher does). The runtime API
# (cudaFuncSetAttribute, cudaFuncAttributeMaxDynamicSharedMemorySize) states that static plus dynamic shared
# memory cannot exceed that opt-in limit, so the check compares their sum.
SM90_LIMITS = {"registers_per_thread": 255, "registers_per_block": 65536, "shared_per_block": 232448}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Modules of the kernels package that hold no op (apply: swaps the ops into the model; it imports them itself).
_NOT_OPS = {"apply", "compile_check", "registry"}


def import_kernel_modules() -> list[str]:
    """Import every op module in `hallo_rt.kernels` (each registers its ops in REGISTRY); returns their names.

    Private modules (`_triton`), the registry and this module are skipped. Importing an already imported
    module is a no-op, so this stays harmless once the package imports every op itself.
    """
    import hallo_rt.kernels as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                   if not m.name.startswith("_") and m.name not in _NOT_OPS and not m.ispkg)
    for name in names:
        importlib.import_module(f"{package.__name__}.{name}")
    return names


def cuobjdump_path() -> Path:
    """Triton's bundled cuobjdump (it ships with the NVIDIA backend, so no CUDA toolkit is needed)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def ptxas_version(arch: int) -> str | None:
    """Version of the ptxas Triton assembles with for `arch` (the register allocation depends on it)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).version
    except Exception:  # a private Triton helper: the report only loses a detail if it moves
        return None


def resource_usage(cubin: bytes, kernel_name: str) -> dict[str, int]:
    """`cuobjdump --dump-resource-usage` of one cubin: {'REG': .., 'STACK': .., 'SHARED': .., 'LOCAL': .., ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel_name}.cubin"
        path.write_bytes(cubin)
        result = subprocess.run([str(cuobjdump_path()), "--dump-resource-usage", str(path)], capture_output=True,
                                text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {kernel_name}: {result.stderr.strip() or result.stdout.strip()}")
    # Output: "Function <name>:" then "REG:115 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:656 ..." on the next line.
    lines = result.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"Function {kernel_name}:" and i + 1 < len(lines):
            return {key: int(value) for key, value in re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", lines[i + 1])}
    raise RuntimeError(f"no resource usage for {kernel_name} in cuobjdump output:\n{result.stdout}")


def sass_local_memory_ops(cubin: bytes, kernel_name: str) -> int:
    """Number of local-memory loads and stores (LDL/STL) in the SASS: the spill code itself, which tells a real
    spill from a stack frame kept for another reason."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel_name}.cubin"
        path.write_bytes(cubin)
        result = subprocess.run([str(cuobjdump_path()), "-sass", str(path)], capture_output=True, text=True,
                                check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed on {kernel_name}: {result.stderr.strip()}")
    return len(re.findall(r"\b(?:LDL|STL)(?:\.[A-Z0-9]+)*\b", result.stdout))


def ptx_facts(ptx: str, kernel_name: str) -> dict:
    """PTX ISA version, target and the number of parameters of the kernel's `.entry`."""
    version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    entry = re.search(rf"\.entry\s+{re.escape(kernel_name)}\s*\((.*?)\)", ptx, re.S)
    if entry is None:
        raise RuntimeError(f"no .entry {kernel_name} in the PTX")
    return {"ptx_version": version.group(1) if version else None, "ptx_target": target.group(1) if target else None,
            "ptx_params": len(re.findall(r"\.param\b", entry.group(1)))}


def compile_launch(launch, arch: int) -> dict:
    """AOT-compile one Launch for `sm_<arch>` and measure it: registers, spills, shared memory, PTX facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs = launch.signature()
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))
    seconds = time.perf_counter() - start
    name = compiled.metadata.name
    usage = resource_usage(compiled.asm["cubin"], name)
    ptx = ptx_facts(compiled.asm["ptx"], name)
    launch_args = sum(1 for kind in signature.values() if kind != "constexpr")
    threads = launch.num_warps * 32
    # On sm_90 ptxas adds a 1 KiB system-reserved shared region (.nv.shared.reserved) to kernels that use shared
    # memory (seen in these cubins; none in kernels without any). It shows up as static SHARED; Triton itself
    # allocates only dynamic shared memory (metadata.shared).
    static_shared, dynamic_shared = usage.get("SHARED", 0), int(compiled.metadata.shared)
    return {
        "kernel": name, "grid": list(launch.grid), "num_warps": launch.num_warps, "num_stages": launch.num_stages,
        "registers": usage["REG"], "registers_per_block": usage["REG"] * threads,
        "spill_local_bytes": usage.get("LOCAL", 0), "spill_stack_bytes": usage.get("STACK", 0),
        # Disassembling takes ~0.4 s, so only when there is a stack frame or local memory to explain.
        "sass_local_memory_ops": (sass_local_memory_ops(compiled.asm["cubin"], name)
                                  if usage.get("STACK", 0) or usage.get("LOCAL", 0) else 0),
        "static_shared_bytes": static_shared, "dynamic_shared_bytes": dynamic_shared,
        "total_shared_bytes": static_shared + dynamic_shared,
        **ptx,
        # Triton 3.9 appends hidden scratch pointers (global / profile scratch) to the .entry; a TensorRT AOT
        # plugin passes only the launch arguments, so any hidden parameter is a compatibility risk.
        "launch_args": launch_args, "hidden_params": ptx["ptx_params"] - launch_args,
        "compile_s": round(seconds, 3),
    }


def violations(record: dict, limits: dict = SM90_LIMITS) -> list[str]:
    """What makes a compiled kernel unfit for the target: spills, too many registers, too much shared memory."""
    problems = []
    if record["spill_local_bytes"] > 0 or record["spill_stack_bytes"] > 0:
        problems.append(f"spills registers (LOCAL {record['spill_local_bytes']} B, STACK "
                        f"{record['spill_stack_bytes']} B per thread, {record['sass_local_memory_ops']} LDL/STL "
                        f"in the SASS at {record['registers']} registers)")
    if record["registers"] > limits["registers_per_thread"]:
        problems.append(f"{record['registers']} registers per thread > {limits['registers_per_thread']}")
    if record["registers_per_block"] > limits["registers_per_block"]:
        problems.append(f"{record['registers_per_block']} registers per block > {limits['registers_per_block']}")
    if record["total_shared_bytes"] > limits["shared_per_block"]:
        problems.append(f"{record['total_shared_bytes']} B shared memory per block (static "
                        f"{record['static_shared_bytes']} + dynamic {record['dynamic_shared_bytes']}) > "
                        f"{limits['shared_per_block']} B")
    return problems


def check_all(arch: int, dtypes: list[str], ops: list[str] | None = None) -> list[dict]:
    """Compile every example launch of every registered op (or of `ops`) for each dtype; one record each.

    A kernel that fails to compile gets a record with `error` set instead of the measurements.
    """
    from .registry import REGISTRY

    records = []
    for op_name in sorted(ops or REGISTRY):
        op = REGISTRY[op_name]
        for dtype_name in dtypes:
            for label, launch in op.examples(DTYPES[dtype_name]):
                record = {"op": op_name, "label": label, "dtype": dtype_name}
                try:
                    record.update(compile_launch(launch, arch))
                    record["problems"] = violations(record)
                except Exception as error:  # a compile failure is a finding, reported with the others
                    record.update(error=f"{type(error).__name__}: {error}",
                                  problems=[f"does not compile: {type(error).__name__}: {error}"])
                records.append(record)
    return records


def _table(records: list[dict]) -> str:
    op_w = max([len(r["op"]) for r in records] + [2]) + 2
    label_w = max([len(r["label"]) for r in records] + [7]) + 2
    header = (f"{'op':<{op_w}}{'example':<{label_w}}{'dtype':<6}{'regs':>5}{'spill':>7}{'smem':>8}{'dyn':>8}"
              f"{'warps':>6}{'ptx':>5}{'params':>9}{'secs':>7}")
    rows = [header, "-" * len(header)]
    for r in records:
        lead = f"{r['op']:<{op_w}}{r['label']:<{label_w}}{r['dtype']:<6}"
        if "error" in r:
            rows.append(f"{lead}  COMPILE ERROR")
            continue
        spill = r["spill_local_bytes"] + r["spill_stack_bytes"]
        params = f"{r['ptx_params']}({r['hidden_params']:+d})"
        rows.append(f"{lead}{r['registers']:>5}{spill:>7}{r['total_shared_bytes']:>8}{r['dynamic_shared_bytes']:>8}"
                    f"{r['num_warps']:>6}{r['ptx_version']:>5}{params:>9}{r['compile_s']:>7.2f}")
    rows.append("regs: per thread; spill: LOCAL+STACK bytes per thread; smem: static+dynamic shared bytes per "
                "block (static includes sm_90's 1 KiB reserved region); params: PTX .entry params (hidden)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--op", nargs="+", default=None, help="only these ops (default: all registered)")
    parser.add_argument("--json", default=None, help="write the records here as JSON")
    parser.add_argument("--cache", action="store_true",
                        help="reuse Triton's compile cache (default: compile afresh, so compile_s is real)")
    args = parser.parse_args(argv)

    from . import _triton

    if _triton.triton is None:
        print(f"compile check: {_triton.triton_missing_reason()}", file=sys.stderr)
        return 2
    if _triton.INTERPRET:
        print("compile check: TRITON_INTERPRET is set, so the kernels were decorated for Triton's interpreter "
              "and cannot be compiled. Run it in a process without it: "
              "env -u TRITON_INTERPRET python -m hallo_rt.kernels.compile_check", file=sys.stderr)
        return 2
    if not os.access(cuobjdump_path(), os.X_OK):
        print(f"compile check: Triton's cuobjdump is missing at {cuobjdump_path()}", file=sys.stderr)
        return 2
    if args.arch != 90:
        print(f"note: the limits checked are sm_90's; arch {args.arch} may differ", file=sys.stderr)
    _triton.triton.knobs.compilation.always_compile = not args.cache

    modules = import_kernel_modules()
    from .registry import REGISTRY

    unknown = sorted(set(args.op or []) - set(REGISTRY))
    if unknown:
        print(f"compile check: unknown ops {unknown}; registered: {sorted(REGISTRY)}", file=sys.stderr)
        return 2
    records = check_all(args.arch, args.dtype, args.op)
    print(_table(records))
    failed = [r for r in records if r["problems"]]
    report = {
        "arch": args.arch, "target": f"sm_{args.arch}", "dtypes": args.dtype, "modules": modules,
        "ops": sorted(args.op or REGISTRY), "limits": SM90_LIMITS,
        "versions": {"triton": _triton.triton.__version__, "torch": torch.__version__,
                     "ptxas": ptxas_version(args.arch)},
        "ok": not failed, "kernels": records,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    hidden = sorted({r["hidden_params"] for r in records if "hidden_params" in r})
    if hidden and hidden != [0]:
        print(f"note: the PTX entries carry {hidden} hidden parameter(s) beyond the launch arguments (Triton "
              f"{_triton.triton.__version__} scratch pointers); a TensorRT AOT plugin launches with the launch "
              "arguments only: verify on a GPU that it tolerates them, or make the PTX with a Triton that adds none")
    if failed:
        print(f"FAILED: {len(failed)} of {len(records)} kernels do not fit sm_{args.arch}:", file=sys.stderr)
        for r in failed:
            print(f"  {r['op']} [{r['label']}, {r['dtype']}]: {'; '.join(r['problems'])}", file=sys.stderr)
        return 1
    print(f"OK: {len(records)} kernels ({len(REGISTRY if not args.op else args.op)} ops x examples x "
          f"{len(args.dtype)} dtypes) compile for sm_{args.arch} without spills, within registers and shared memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
