"""Roofline of every registered Triton kernel at the model sizes and, on a GPU, its timing against the reference.

    .venv/bin/python benchmarks/kernels.py [--dtype bf16 fp16] [--op NAME ...] [--warmup-ms 25] [--rep-ms 100]
                                           [--out FILE]

For each op in `hallo_rt.kernels.REGISTRY`, each example launch (`op.examples(dtype)`, Hallo3/Hallo4 sizes)
and each dtype: the launch's FLOP and byte model (`Launch.flops`, `Launch.bytes`: compulsory DRAM traffic),
its arithmetic intensity, and the time the roofline allows on an H100 SXM and an H200.

With a CUDA device it also times the kernel (`triton.testing.do_bench`, L2 flushed between runs, median of the
runs after a separate first launch that compiles it) on random inputs of the example's shapes, strides and
dtype, and the op's plain-torch reference on the same inputs; it reports ms, achieved TFLOP/s and TB/s, the
share of the roofline reached, the speed-up over the reference and the largest difference from it.
Without one it says so, writes the static model, and exits 0.

Writes JSON (default `results/kernels-cpu.json` without a GPU, `results/kernels-<gpu>.json` with one).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch

from hallo_rt.benchmarks.environment import machine, versions

from hallo_rt import __version__
from hallo_rt.kernels import _triton
from hallo_rt.kernels.compile_check import import_kernel_modules
from hallo_rt.kernels.registry import REGISTRY

# Roofline peaks, dense (no sparsity), from NVIDIA's datasheets: H100 Tensor Core GPU datasheet, H100 SXM column
# (BF16/FP16 Tensor Core 1,979 TFLOPS "with sparsity", so 989.4 dense; GPU memory bandwidth 3.35 TB/s HBM3);
# H200 Tensor Core GPU datasheet, H200 SXM column (same 1,979 sparse / 989.4 dense BF16; 4.8 TB/s HBM3e).
# The tensor-core peak is the compute roof of the tl.dot (attention) kernels. The element-wise kernels run on
# the CUDA cores (about 67 TFLOP/s FP32 on both), but at their few FLOP per byte they sit far left of either
# ridge point, so their roof is the memory bandwidth whichever compute peak is used.
PEAKS = {
    "H100 SXM": {"tflops": 989.4, "tb_per_s": 3.35},
    "H200": {"tflops": 989.4, "tb_per_s": 4.8},
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def gpu_key(device_name: str) -> str | None:
    """Which PEAKS entry a CUDA device name is ('NVIDIA H100 80GB HBM3' -> 'H100 SXM'); None if not listed."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name and ("SXM" in name or "HBM3" in name):  # PCIe and NVL parts have other peaks
        return "H100 SXM"
    return None


def roofline(flops: float, nbytes: float, gpu: str) -> dict:
    """Time the roofline allows for this work on `gpu`, and which roof bounds it."""
    peak = PEAKS[gpu]
    compute_s = flops / (peak["tflops"] * 1e12)
    memory_s = nbytes / (peak["tb_per_s"] * 1e12)
    return {"bound": "memory" if memory_s >= compute_s else "compute", "time_us": max(compute_s, memory_s) * 1e6,
            "ridge_flop_per_byte": peak["tflops"] / peak["tb_per_s"]}


def capture_examples(op, dtype: torch.dtype) -> list[tuple[str, object, tuple | None]]:
    """`op.examples(dtype)` as (label, launch, (args, kwargs) the example passed to the op's launcher, or None).

    The examples build their launches by calling the op module's `_<op>_launch` (the repository's convention);
    wrapping that function while they run records its arguments, so the benchmark can rebuild the same launch
    and call the reference on the same real tensors.
    """
    module = sys.modules[op.triton.__module__]
    name = f"_{op.name}_launch"
    original = getattr(module, name, None)
    if original is None:
        return [(label, launch, None) for label, launch in op.examples(dtype)]
    calls = {}

    def recording(*args, **kwargs):
        launch = original(*args, **kwargs)
        calls[id(launch)] = (args, kwargs)
        return launch

    setattr(module, name, recording)
    try:
        examples = op.examples(dtype)
    finally:
        setattr(module, name, original)
    return [(label, launch, calls.get(id(launch))) for label, launch in examples]


def materialise(value, device: torch.device, generator: torch.Generator, memo: dict):
    """A meta tensor -> a real one on `device` with the same shape, strides and dtype, randomly filled.

    Floats ~ N(0, 1); integers zero (safe as indices). Storage is sized for the strides, so expanded (stride 0)
    and strided views work; the same meta tensor maps to the same real tensor (memo), keeping aliasing among
    the arguments. Non-tensors pass through.
    """
    if not isinstance(value, torch.Tensor):
        return value
    if id(value) in memo:
        return memo[id(value)]
    span = 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride())) if value.numel() else 0
    flat = torch.empty(span, dtype=value.dtype, device=device)
    if device.type == "meta":  # dry run: shapes only
        pass
    elif flat.is_floating_point():
        flat.normal_(generator=generator)
    else:
        flat.zero_()
    memo[id(value)] = real = flat.as_strided(value.shape, value.stride())
    return real


def static_entry(op_name: str, label: str, dtype: str, launch) -> dict:
    programs = 1
    for g in launch.grid:
        programs *= g
    return {
        "op": op_name, "label": label, "dtype": dtype, "kernel": launch.kernel.__name__, "grid": list(launch.grid),
        "programs": programs, "num_warps": launch.num_warps, "flops": launch.flops, "bytes": launch.bytes,
        "intensity_flop_per_byte": launch.flops / launch.bytes if launch.bytes else None,
        "roofline": {gpu: roofline(launch.flops, launch.bytes, gpu) for gpu in PEAKS},
    }


def _outputs(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def prepare(op, launch, captured, device: torch.device, seed: int = 0):
    """Real inputs for one example: (launch on `device`, reference call on the same inputs or None, note).

    With the launcher call captured, the launch is rebuilt by calling the launcher again on real copies of the
    example's arguments, and the reference gets those same tensors. Otherwise only the kernel's own arguments
    are made real, and there is no reference to compare with.
    """
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    memo: dict = {}
    if captured is not None:
        args, kwargs = captured
        real_args = [materialise(a, device, generator, memo) for a in args]
        real_kwargs = {k: materialise(v, device, generator, memo) for k, v in kwargs.items()}
        real = getattr(sys.modules[op.triton.__module__], f"_{op.name}_launch")(*real_args, **real_kwargs)
        # The reference takes the launcher's arguments minus launcher-only tuning keywords (block sizes).
        signature = inspect.signature(op.reference)
        bound = signature.bind(*real_args, **{k: v for k, v in real_kwargs.items() if k in signature.parameters})
        return real, (lambda: op.reference(*bound.args, **bound.kwargs)), "the example's launcher arguments, random"
    real = _triton.Launch(
        launch.kernel, launch.grid, tuple(materialise(a, device, generator, memo) for a in launch.args),
        launch.constexprs, tuple(materialise(o, device, generator, memo) for o in launch.outputs),
        launch.flops, launch.bytes, launch.num_warps, launch.num_stages)
    return real, None, "the launch's kernel arguments, random (launcher not found: no reference)"


def max_abs_diff(got, want) -> float | None:
    """Largest |got - want| over the outputs (fp32), or None when their number or shapes differ."""
    got, want = _outputs(got), _outputs(want)
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)) or not got:
        return None
    return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))


def measure(op, launch, captured, gpu: str | None, warmup_ms: int, rep_ms: int) -> dict:
    """Time one example's kernel on the GPU (and its reference, when the launcher call was captured)."""
    from triton.testing import do_bench

    real, reference, note = prepare(op, launch, captured, torch.device("cuda"))
    real.run()  # the first launch compiles the kernel; kept out of the timing
    torch.cuda.synchronize()
    median, p20, p80 = do_bench(real.run, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    seconds = median * 1e-3
    result = dict(inputs=note, kernel_ms=median, kernel_ms_p20=p20, kernel_ms_p80=p80,
                  achieved_tflops=launch.flops / seconds / 1e12, achieved_tb_per_s=launch.bytes / seconds / 1e12)
    if gpu is not None:
        result["pct_of_roofline"] = 100.0 * roofline(launch.flops, launch.bytes, gpu)["time_us"] / (median * 1e3)
    if reference is not None:
        try:  # the reference may need far more memory than the fused kernel; keep the kernel's numbers then
            result["max_abs_diff_vs_reference"] = max_abs_diff(real.run(), reference())
            ref_ms = do_bench(reference, warmup=warmup_ms, rep=rep_ms, return_mode="median")
            result.update(reference_ms=ref_ms, speedup_vs_reference=ref_ms / median)
        except Exception as error:
            result["reference_error"] = f"{type(error).__name__}: {error}"
    return result


def _row(e: dict, gpus: list[str]) -> str:
    m = e.get("measured") or {}
    cells = [(f"{e['op']:<22}{e['label']:<18}{e['dtype']:<5}{e['flops'] / 1e9:>9.2f}{e['bytes'] / 1e6:>10.1f}"
              f"{e['intensity_flop_per_byte'] or 0:>10.1f}")]
    cells += [f"{e['roofline'][g]['time_us']:>11.1f}{e['roofline'][g]['bound'][0]:>2}" for g in gpus]
    if m:
        cells.append(f"{m['kernel_ms'] * 1e3:>10.1f}{m.get('pct_of_roofline') or 0:>6.0f}%"
                     f"{(m.get('reference_ms') or 0) * 1e3:>10.1f}{m.get('speedup_vs_reference') or 0:>7.2f}x")
    return "".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--op", nargs="+", default=None, help="only these ops (default: all registered)")
    parser.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time per kernel")
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time per kernel")
    parser.add_argument("--out", default=None, help="JSON path (default: results/kernels-<cpu|gpu>.json)")
    args = parser.parse_args(argv)

    modules = import_kernel_modules()
    unknown = sorted(set(args.op or []) - set(REGISTRY))
    if unknown:
        print(f"unknown ops {unknown}; registered: {sorted(REGISTRY)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if cuda and _triton.triton is None:
        print(f"cannot time kernels: {_triton.triton_missing_reason()}", file=sys.stderr)
        return 2
    if cuda and _triton.INTERPRET:
        print("cannot time kernels: TRITON_INTERPRET is set, so they would run in Triton's interpreter; "
              "unset it (env -u TRITON_INTERPRET ...)", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    gpu = gpu_key(device_name) if cuda else None
    if not cuda:
        print("no CUDA device: kernels cannot be timed here; writing the static FLOP/byte/roofline model only")
    elif gpu is None:
        print(f"{device_name} is not in PEAKS ({sorted(PEAKS)}): timings without % of roofline")

    entries = []
    for op_name in sorted(args.op or REGISTRY):
        op = REGISTRY[op_name]
        for dtype in args.dtype:
            for label, launch, captured in capture_examples(op, DTYPES[dtype]):
                entry = static_entry(op_name, label, dtype, launch)
                if cuda:
                    try:
                        entry["measured"] = measure(op, launch, captured, gpu, args.warmup_ms, args.rep_ms)
                    except Exception as error:  # one failing kernel must not hide the others' numbers
                        entry["measured"] = None
                        entry["error"] = f"{type(error).__name__}: {error}"
                    torch.cuda.empty_cache()
                entries.append(entry)

    gpus = list(PEAKS)
    header = (f"{'op':<22}{'example':<18}{'dtype':<5}{'GFLOP':>9}{'MB':>10}{'FLOP/B':>10}"
              + "".join(f"{g + ' us':>13}" for g in gpus)
              + (f"{'kernel us':>10}{'roof':>7}{'ref us':>10}{'speedup':>8}" if cuda else ""))
    print(header)
    for e in entries:
        print(_row(e, gpus) + (f"  ERROR {e['error']}" if e.get("error") else ""))
    print("roofline columns: the time the roofline allows, m = memory-bound, c = compute-bound; roof: share of it "
          "reached")

    import_versions = {"triton": _triton.triton.__version__} if _triton.triton is not None else {}
    if cuda:
        import_versions["cuda"] = torch.version.cuda or ""
    report = {
        "benchmark": "kernels", "hallo_rt": __version__, "device": device_name, "gpu_peaks_used": gpu,
        "timed": cuda, "note": None if cuda else "no CUDA device: kernels cannot be timed here; static model only",
        "peaks": PEAKS, "dtypes": args.dtype, "modules": modules, "ops": sorted(args.op or REGISTRY),
        "timing": {"method": "triton.testing.do_bench, L2 flushed, median; first launch (compile) excluded",
                   "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms} if cuda else None,
        "machine": machine(), "versions": versions(**import_versions),
        "command": "python benchmarks/kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": entries,
    }
    tag = "cpu" if not cuda else (gpu or "gpu").split()[0].lower()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"kernels-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if any(e.get("error") for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
