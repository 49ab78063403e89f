"""The machine's GEMM peak and the share of it one denoiser step reaches (issue 7: `gemm_peak_fraction`).

    .venv/bin/python -m hallo_rt.benchmarks.gemm [--impl eager onednn compile] [--repeats 5] [--out FILE]

The peak is the best GFLOP/s of square matrix products measured here, in this run, on every GEMM route
torch offers on CPU: `torch.mm` (MKL in the official wheels) and oneDNN's matmul (the route inductor's
CPU code and `onednn_linears` take). On AMD CPUs MKL runs its AVX2 kernels, about 20% below oneDNN's
AVX-512 ones (measured while writing this, one thread on an AMD EPYC (Zen 4): 90 against 110 GFLOP/s for
1024-2048 square fp32 products), so a peak from `torch.mm` alone would be one the engine's own GEMMs can
exceed; the report keeps each route's best and takes the highest as the peak.

The step is `midsize_config()`'s full Hallo3 step (face and audio cross-attention, cached reference K/V),
its FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` on one call (matrix products,
convolutions and attention; element-wise work is not counted, it is what the fraction loses to).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from typing import Literal

import torch
from torch import nn

from hallo_rt.engine.config import DiTConfig
from hallo_rt.engine.dit import HalloDiT

GEMM_ROUTES = ("torch.mm", "onednn")
"""Square-GEMM routes `measure_gemm_peak` can time."""

ROUTE_NAMES = {"torch.mm": "torch.mm (the build's BLAS: MKL in the official CPU wheels)",
               "onednn": "oneDNN matmul (torch.ops.mkldnn._linear_pointwise)"}

STEP_IMPLS = ("eager", "onednn", "compile")
"""How `denoiser_gemm_fraction` runs the step: the engine's eager module, the same with every Linear on
oneDNN (`onednn_linears`), or `torch.compile` (inductor; its compile time is reported on its own)."""

Impl = Literal["eager", "onednn", "compile"]

ENGINE_IMPLS = ("eager", "compile")
"""The impls that are paths of the engine itself (`hallo_rt.Engine` backends torch and torch-compile);
`onednn` is a candidate speed-up measured beside them, not counted as the engine's fraction."""


# --- the peak ---------------------------------------------------------------------------------------------

def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _square_product(route: str, size: int, dtype: torch.dtype):
    """A zero-argument callable computing one size x size x size product on `route`."""
    g = torch.Generator().manual_seed(size)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    if route == "torch.mm":
        out = torch.empty(size, size, dtype=dtype)
        return lambda: torch.mm(a, b, out=out)
    # oneDNN computes x @ w.T for a (out, in) weight, as nn.Linear does; no bias
    return lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def measure_gemm_peak(dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (1024, 2048, 3072),
                      repeats: int = 5, routes: tuple[str, ...] | None = None) -> dict:
    """Best achieved GFLOP/s of square matrix products on this machine, with torch's current threads.

    Every (route, size) is run once untimed (warm-up: page faults, oneDNN's kernel selection), then
    `repeats` times; its best time gives its GFLOP/s (2 n^3 FLOP per product). routes: a subset of
    `GEMM_ROUTES` (default: every route available here, recorded in the output).
    Returns {"gflops" (the best), "size" and "route" (where it was reached), "dtype", "threads", "samples"
    (every route x size), "by_route" (each route's best), "backend_used", "config_hash", "parameters"}."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    sizes = tuple(sizes)
    if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be a non-empty sequence of positive integers, got {sizes!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    available = GEMM_ROUTES if _onednn_available() else ("torch.mm",)
    routes = available if routes is None else tuple(routes)
    unknown = [r for r in routes if r not in available]
    if not routes or unknown:
        raise ValueError(f"unknown or unavailable GEMM route(s) {unknown or list(routes)}; "
                         f"available here: {', '.join(available)}")
    samples = []
    with torch.inference_mode():
        for route in routes:
            for size in sizes:
                product = _square_product(route, size, dtype)
                product()  # warm-up, not timed
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    product()
                    times.append(time.perf_counter() - start)
                flop = 2.0 * size**3
                samples.append({"route": route, "size": size, "best_s": min(times),
                                "gflops": flop / min(times) / 1e9,
                                "median_gflops": flop / statistics.median(times) / 1e9})
    best = max(samples, key=lambda s: s["gflops"])
    by_route = {r: max(s["gflops"] for s in samples if s["route"] == r) for r in routes}
    parameters = {"dtype": str(dtype), "sizes": list(sizes), "repeats": repeats, "routes": list(routes)}
    return {"gflops": best["gflops"], "size": best["size"], "route": best["route"], "dtype": str(dtype),
            "threads": torch.get_num_threads(), "samples": samples, "by_route": by_route,
            "routes": list(routes), "repeats": repeats, "backend_used": ROUTE_NAMES[best["route"]],
            "config_hash": parameters_hash(parameters), "parameters": parameters}


def parameters_hash(parameters: dict) -> str:
    """SHA-256 of the canonical JSON of a measurement's parameters (for results with no model config)."""
    payload = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


# --- the mid-size step ------------------------------------------------------------------------------------

def midsize_config() -> DiTConfig:
    """`mid`: the Hallo3 topology at a width where the matrices are large enough to matter on a CPU.

    16 heads x 64 = 1024 hidden, MLP 4096 (4x), 2 layers; 4 latent frames of 32 x 32 latents (256 x 256
    px), patch 2: 1024 video tokens, plus Hallo3's 226 T5-XXL text tokens = 1250 tokens per sample (and
    256 reference-bank keys). Face (4 tokens x 1024) and audio cross-attention on, with Hallo3's audio
    input (5-frame window x 12 wav2vec2-base layers x 768); the audio tokens are kept small (4 x 512) so
    that the audio projection, whose temporal convolution has (tokens x token width)^2 weights and is
    bound by reading them, stays a minor part of the step."""
    return DiTConfig(
        name="mid", num_layers=2, num_heads=16, head_dim=64, mlp_dim=4096, time_embed_dim=512,
        text_dim=4096, text_len=226, latent_frames=4, latent_height=32, latent_width=32,
        face_tokens=4, face_token_dim=1024, audio_window=5, audio_layers=12, audio_dim=768,
        audio_hidden_dim=512, audio_tokens=4, audio_token_dim=512,
        extra=(("purpose", "issue 7 gemm_peak_fraction: hidden >= 1024, >= 1000 tokens per step"),),
    )


class OneDnnLinear(nn.Linear):
    """`nn.Linear` whose float32 CPU products go through oneDNN's matmul on a weight reordered once into
    oneDNN's blocked layout (`mkldnn._reorder_linear_weight` / `_linear_pointwise`, what inductor emits
    for frozen CPU linears) instead of MKL's sgemm: the same products, accumulated in another order (fp32
    rounding, about 1e-6 relative). The reordered copy is made on first use and again whenever the weight
    changes; it doubles the Linear weights' memory. Under graph capture it is a plain Linear.

    Measured here (2 threads, AMD EPYC): never slower than MKL, from 2.6 M multiply-adds (208 x 64 x 192:
    48 against 58 us) to 3.9 G (1250 x 1024 x 3072: 36 against 44 ms). Without the reorder oneDNN
    reorders the weight on every call and loses to MKL below ~0.1 G multiply-adds."""

    _packed: torch.Tensor | None = None
    _packed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling() or torch.jit.is_tracing() or x.device.type != "cpu"
                or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or self.weight.requires_grad):
            return super().forward(x)
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed_key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
            self._packed_key = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def onednn_linears(model: nn.Module) -> nn.Module:
    """Return `model` with every `nn.Linear` swapped for `OneDnnLinear` (in place; same parameters)."""
    if not _onednn_available():
        raise RuntimeError("this torch build has no oneDNN (torch.backends.mkldnn is unavailable)")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                new = OneDnnLinear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                new.weight, new.bias = child.weight, child.bias
                setattr(module, name, new)
    return model


def count_step_flops(fn, *args, **kwargs) -> dict:
    """FLOPs of one call `fn(*args, **kwargs)` by aten op, CPU flash attention included
    (`network_costs.count_flops_by_op`)."""
    from .network_costs import count_flops_by_op

    with torch.inference_mode():
        total, by_op, _ = count_flops_by_op(fn, *args, **kwargs)
    return {"total": total, "by_op": by_op}


def step_inputs(config: DiTConfig, frames: int, batch: int, seed: int = 0) -> tuple[tuple, dict]:
    """Random (args, kwargs) of one denoiser step: latents, timestep, text and, when the config has those
    modules, the audio of a clip that starts at frame 0 (4F - 3 video frames) and the face embedding."""
    g = torch.Generator().manual_seed(seed)
    c = config
    latents = torch.randn(batch, frames, c.in_channels, c.latent_height, c.latent_width, generator=g)
    text = torch.randn(batch, c.text_len, c.text_dim, generator=g)
    kwargs = {}
    if c.audio_cross_attention:
        kwargs["audio"] = torch.randn(batch, 4 * frames - 3, c.audio_window, c.audio_layers, c.audio_dim, generator=g)
    if c.face_cross_attention:
        kwargs["face"] = torch.randn(batch, c.face_embed_dim, generator=g)
    return (latents, torch.full((batch,), 500), text), kwargs


def time_calls(fn, repeats: int, warmup: int) -> dict:
    """Median / p10 / p90 wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """`time_calls` for several callables at once, their calls interleaved (a, b, a, b, ...) so that a change
    in the machine's load during the measurement weighs on each of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    out = {}
    for name, times in samples.items():
        ordered = sorted(times)
        out[name] = {"median_s": statistics.median(times), "p10_s": ordered[len(ordered) // 10],
                     "p90_s": ordered[(len(ordered) * 9) // 10], "min_s": ordered[0], "repeats": repeats,
                     "warmup": warmup, "samples_s": times}
    return out


def _peak_gflops(peak: dict | float) -> float:
    value = peak["gflops"] if isinstance(peak, dict) else peak
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"peak must be a positive GFLOP/s number or measure_gemm_peak()'s dict, got {peak!r}")
    return float(value)


def denoiser_gemm_fraction(config: DiTConfig, peak: dict | float, frames: int | None = None, batch: int = 1,
                           impl: Impl = "eager", repeats: int = 5, warmup: int = 2,
                           reference_bank: bool = True, seed: int = 0) -> dict:
    """One full Hallo3 step of `config` (seeded weights, fp32, CPU): FLOPs, median time, achieved GFLOP/s
    and `gemm_peak_fraction` = achieved / peak (`peak`: GFLOP/s, or `measure_gemm_peak()`'s dict, whose
    best product is then timed again between the steps and the peak is the best of both).

    frames: latent frames (default: the config's clip); reference_bank: attend to a cached reference
    bank (`HalloDiT.reference_kv` of one latent frame of tokens), as a session's steps do."""
    from hallo_rt.engine.weights.common import seeded_init_

    peak_gflops = _peak_gflops(peak)
    if impl not in STEP_IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(STEP_IMPLS)}")
    frames = config.latent_frames if frames is None else frames
    if not isinstance(frames, int) or not 1 <= frames <= config.latent_frames:
        raise ValueError(f"frames must be an integer in 1..{config.latent_frames}, got {frames!r}")
    if not isinstance(batch, int) or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch and repeats must be >= 1 and warmup >= 0, got {batch}, {repeats}, {warmup}")
    dit = seeded_init_(HalloDiT(config), seed).eval().requires_grad_(False)
    args, kwargs = step_inputs(config, frames, batch, seed + 1)
    if reference_bank:
        g = torch.Generator().manual_seed(seed + 2)
        bank = torch.randn(config.num_layers, 1, config.tokens_per_frame, config.hidden_dim, generator=g)
        kwargs["ref_bank"] = dit.reference_kv(bank, batch=batch)
    flops = count_step_flops(dit, *args, **kwargs)  # on the eager module: every impl does the same maths
    with torch.inference_mode():
        reference = dit(*args, **kwargs)
    step, compile_s = dit, None
    if impl == "onednn":
        step = onednn_linears(dit)
    elif impl == "compile":
        step = torch.compile(dit, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            step(*args, **kwargs)
        compile_s = time.perf_counter() - start
    calls = {"step": lambda: step(*args, **kwargs)}
    if isinstance(peak, dict) and peak.get("route") in GEMM_ROUTES:
        # the peak's product again, interleaved with the steps: load that comes and goes weighs on both
        calls["peak_product"] = _square_product(peak["route"], peak["size"], torch.float32)
    with torch.inference_mode():
        max_diff = float((step(*args, **kwargs) - reference).abs().max())
        timings = time_interleaved(calls, repeats, warmup)
    timing, peak_during = timings["step"], None
    if "peak_product" in timings:
        peak_during = 2.0 * peak["size"] ** 3 / timings["peak_product"]["min_s"] / 1e9
        peak_gflops = max(peak_gflops, peak_during)  # the best achieved, over both measurements
    achieved = flops["total"] / timing["median_s"] / 1e9
    tokens = config.text_len + frames * config.tokens_per_frame
    return {
        "benchmark": "denoiser_gemm_fraction", "config": config.name, "config_hash": config.compute_hash(),
        "hidden": config.hidden_dim, "layers": config.num_layers, "frames": frames, "batch": batch,
        "tokens_per_step": tokens, "reference_bank_tokens": config.tokens_per_frame if reference_bank else 0,
        "impl": impl, "backend_used": _impl_name(impl), "dtype": "fp32", "device": "cpu",
        "threads": torch.get_num_threads(), "flops": flops, "gflop_per_step": flops["total"] / 1e9,
        "step": timing, "compile_s": compile_s, "achieved_gflops": achieved, "peak_gflops": peak_gflops,
        "peak_gflops_given": _peak_gflops(peak), "peak_gflops_during_steps": peak_during,
        "gemm_peak_fraction": achieved / peak_gflops, "max_abs_diff_vs_eager": max_diff,
        "parameters": {"frames": frames, "batch": batch, "impl": impl, "repeats": repeats, "warmup": warmup,
                       "reference_bank": reference_bank, "seed": seed},
    }


def engine_fraction(steps: dict) -> dict:
    """From `denoiser_gemm_fraction` results by impl: the engine's `gemm_peak_fraction` (its best path
    among ENGINE_IMPLS), the impl that reached it, and every impl's fraction."""
    engine = [s for impl, s in steps.items() if impl in ENGINE_IMPLS]
    best = max(engine, key=lambda s: s["gemm_peak_fraction"]) if engine else None
    return {"gemm_peak_fraction": best and best["gemm_peak_fraction"], "impl": best and best["impl"],
            "backend_used": best and best["backend_used"],
            "by_impl": {impl: s["gemm_peak_fraction"] for impl, s in steps.items()}}


def _impl_name(impl: str) -> str:
    return {"eager": "torch eager (CPU)", "onednn": "torch eager, Linear on oneDNN matmul (CPU)",
            "compile": "torch.compile (inductor, CPU C++/OpenMP)"}[impl]


def main(argv: list[str] | None = None) -> int:
    from hallo_rt.benchmarks.environment import emit, machine, versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=["eager", "onednn"], choices=STEP_IMPLS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = midsize_config()
    peak = measure_gemm_peak(repeats=args.repeats)
    steps = {impl: denoiser_gemm_fraction(config, peak, impl=impl, repeats=args.repeats) for impl in args.impl}
    report = {"benchmark": "gemm_peak_fraction", "config": config.name, "config_hash": config.compute_hash(),
              "config_description": midsize_config.__doc__.split("\n\n")[0], "gemm_peak": peak,
              "steps": steps, **engine_fraction(steps), "machine": machine(), "versions": versions(),
              "command": "python -m hallo_rt.benchmarks.gemm " + " ".join(argv)}
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
