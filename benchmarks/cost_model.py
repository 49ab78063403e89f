"""Cost model of a Hallo3 stream: FLOPs and bytes per stage, projected time on H100/H200, and a CPU cross-check.

    python -m hallo_rt.benchmarks.cost_model --preset hallo3 --size 480x720 --chunk-latents 13 --steps 50 \
        --cfg 3.5 --precision bf16 [--hardware h100|h200] [--table] [--json]

FLOPs: 2*M*N*K for every matmul, linear, convolution and attention product (QK^T and PV), the convention of
`torch.utils.flop_counter.FlopCounterMode`: for the same call `flops` equals its total (`count_flops` runs it
with the one formula it lacks on CPU). Bias adds, norms, activations, softmax, RoPE and resampling are not
counted; they are memory traffic.

Bytes: compulsory memory traffic of one call. Every weight the call uses is read once; every activation (the
output of a product, a norm, a non-linearity or a residual sum) is written once and read once. Attention
scores are never materialised (flash attention); reshapes, RoPE, adaLN modulation, concatenation and the
causal convolutions' time padding are assumed fused into a neighbour, so they add nothing. Element sizes:
weights at the precision's size (fp32 4, bf16/fp16 2, fp8/int8 1); activations at 4 bytes in fp32/tf32 and 2
bytes otherwise (fp8/int8 inference keeps activations in bf16 between layers and quantises GEMM inputs on
the fly). It is a lower bound: a layer whose working set misses the caches moves more. fp8/int8 apply to
the transformers; the VAE's convolutions stay in bf16 (`part_precision`).

Projections (`project`, `realtime_table`) are labelled `"kind": "projection"`: a stage part takes
max(flops / (peak * compute_util), bytes / (bandwidth * memory_util)) + ops * op_overhead_s, with the peaks
below and the utilisations of `Utilisation` (stated, not measured on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from hallo_rt.benchmarks.network_costs import (  # noqa: F401  (re-exported: the cost model's public API)
    PRECISIONS, Kind, Work, audio_encoder_cost, convert_cost, count_flops, denoiser_step_cost, element_bytes,
    reference_kv_cost, reference_net_cost, vae_decode_cost, vae_encode_cost,
)
from hallo_rt.engine.audio_features import SAMPLE_RATE
from hallo_rt.engine.chunks import ChunkSettings
from hallo_rt.engine.config import DiTConfig, VaeConfig, get_preset, get_vae_preset
from hallo_rt.engine.sampling import SamplerConfig
from hallo_rt.engine.vae import Grouping
from hallo_rt.engine.wav2vec2 import AUDIO_PRESETS, Wav2Vec2Config

VIDEO_FPS = 25
"""Hallo3's frame rate: real time is 25 frames per second of wall time."""


# ---------------------------------------------------------------------------------------------------------
# 1. Stages of a stream
# ---------------------------------------------------------------------------------------------------------

MODEL_PRESETS = {"hallo3": ("hallo3", "hallo3", "wav2vec2-base"), "tiny": ("tiny", "tiny", "tiny")}
"""preset -> (denoiser, VAE, audio encoder) presets, as `load_pipeline(preset)` builds them."""


def part_precision(kind: Kind, precision: str) -> str:
    """The precision a part runs at: fp8/int8 quantise the transformer GEMMs (denoiser, reference network,
    audio encoder); the VAE's convolutions stay in bf16, as fp8 inference stacks run them."""
    return "bf16" if kind == "convolution" and precision in ("fp8", "int8") else precision


@dataclass(frozen=True)
class StageCost:
    """One stage: its work per call, split by kind of kernel (each kind has its own utilisation)."""

    parts: tuple[tuple[Kind, Work], ...]
    calls_per_chunk: float
    once_per_stream: bool
    call: str
    """What one call is."""

    @property
    def work(self) -> Work:
        total = Work()
        for _, part in self.parts:
            total = total + part
        return total

    def bytes(self, precision: str) -> int:
        """Bytes of one call, each part at the precision it runs at (`part_precision`)."""
        return sum(work.bytes(part_precision(kind, precision)) for kind, work in self.parts)


@dataclass(frozen=True)
class StreamCost:
    """Every stage of a stream's steady state (`stream_cost`)."""

    stages: dict[str, StageCost]
    new_frames: int
    """Video frames a steady-state chunk adds."""
    precision: str
    settings: dict = field(default_factory=dict)

    @property
    def chunks_per_second(self) -> float:
        return VIDEO_FPS / self.new_frames

    def to_dict(self) -> dict:
        """Per call, per chunk and per second of video (0 for once-per-stream stages), in GFLOP and MB."""
        stages = {}
        for name, stage in self.stages.items():
            w, per_chunk = stage.work, 0.0 if stage.once_per_stream else stage.calls_per_chunk
            flops, size = w.flops / 1e9, stage.bytes(self.precision) / 1e6
            stages[name] = {"call": stage.call, "once_per_stream": stage.once_per_stream,
                            "calls_per_chunk": stage.calls_per_chunk, "gflop_per_call": flops, "mb_per_call": size,
                            "gflop_per_chunk": flops * per_chunk, "mb_per_chunk": size * per_chunk,
                            "gflop_per_video_s": flops * per_chunk * self.chunks_per_second,
                            "mb_per_video_s": size * per_chunk * self.chunks_per_second}
        return {"settings": self.settings, "precision": self.precision, "new_frames_per_chunk": self.new_frames,
                "chunks_per_video_s": self.chunks_per_second, "stages": stages}


def resolve_models(models: str | tuple[DiTConfig, VaeConfig, Wav2Vec2Config]):
    """A preset name or a (denoiser, VAE, audio encoder) config triple -> the triple."""
    if isinstance(models, str):
        if models not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {models!r}; known: {', '.join(MODEL_PRESETS)} (or pass configs)")
        dit, vae, audio = MODEL_PRESETS[models]
        return get_preset(dit), get_vae_preset(vae), AUDIO_PRESETS[audio]
    if len(models) != 3 or not isinstance(models[0], DiTConfig) or not isinstance(models[1], VaeConfig) \
            or not isinstance(models[2], Wav2Vec2Config):
        raise ValueError("models must be a preset name or a (DiTConfig, VaeConfig, Wav2Vec2Config) triple")
    return models


def stream_cost(models: str | tuple = "hallo3", size: tuple[int, int] | None = None, chunk_latents: int = 3,
                steps: int = 4, cfg: float = 1.0, precision: str = "bf16", motion: str = "pixel",
                reference: Literal["cached", "hallo3"] = "cached", motion_frames: int = 2,
                audio_window_frames: int | None = None, audio_block_frames: int = 4) -> StreamCost:
    """Steady-state cost of every stage of a stream (engine/chunks.py, runtime/stages.py):

    audio_features  wav2vec2 over one streaming window (context + block + 2 x 2 + lookahead frames, the
                    session's defaults), once per `audio_block_frames` new frames;
    reference_bank  VAE encode of the reference image, ReferenceNet and (cached) its per-layer K/V: once per
                    stream; `reference="hallo3"`: the network once per chunk and the K/V in every step;
    conditioning    VAE encode of [reference, motion frames]: per chunk (pixel motion) or once (latent);
    denoise_step    one denoiser forward, batch 2 with CFG (cfg != 1), `steps` per chunk;
    decode          the chunk's VAE decode: a 4F - 3 frame clip with the reference grouping (pixel), or a
                    continuation group of F latents -> 4F frames (latent; the first chunk gives 4F - 3);
    convert         the chunk's new frames to uint8 RGB.
    """
    dit_cfg, vae_cfg, audio_cfg = resolve_models(models)
    step = vae_cfg.spatial_compression
    height, width = size or (dit_cfg.latent_height * step, dit_cfg.latent_width * step)
    if height % (step * dit_cfg.patch_size) or width % (step * dit_cfg.patch_size) or min(height, width) <= 0:
        raise ValueError(f"size {height}x{width} must be positive multiples of {step * dit_cfg.patch_size} px "
                         f"(VAE {step}x, patch {dit_cfg.patch_size})")
    if reference not in ("cached", "hallo3"):
        raise ValueError(f"reference must be 'cached' or 'hallo3', got {reference!r}")
    element_bytes(precision)
    chunk = ChunkSettings(chunk_latents=chunk_latents, motion=motion, motion_frames=motion_frames)
    SamplerConfig(steps=steps, cfg_scale=cfg)  # validates steps and cfg with the engine's messages
    if audio_window_frames is None:
        from hallo_rt.runtime.streaming_features import DEFAULT_CONTEXT_FRAMES, DEFAULT_LOOKAHEAD_FRAMES

        # a block's frames, Hallo3's +-2 feature window on both sides, the context before and lookahead after
        audio_window_frames = (DEFAULT_CONTEXT_FRAMES + audio_block_frames + 2 * (dit_cfg.audio_window // 2)
                               + DEFAULT_LOOKAHEAD_FRAMES)
    stages, new_frames = _stages((dit_cfg, vae_cfg, audio_cfg), (height, width), chunk, steps, cfg, reference,
                                 audio_window_frames, audio_block_frames)
    settings = {"models": models if isinstance(models, str) else [c.name for c in models],
                "size": [height, width], "chunk_latents": chunk_latents, "steps": steps, "cfg": cfg,
                "motion": motion, "reference": reference, "audio_window_frames": audio_window_frames}
    return StreamCost(stages, new_frames, precision, settings)


def _stages(configs: tuple, size: tuple[int, int], chunk: ChunkSettings, steps: int, cfg: float, reference: str,
            audio_window_frames: int, audio_block_frames: int) -> tuple[dict[str, StageCost], int]:
    """`stream_cost`'s stages from checked arguments, and the new frames of a steady-state chunk."""
    dit_cfg, vae_cfg, audio_cfg = configs
    step, F, batch = vae_cfg.spatial_compression, chunk.chunk_latents, 2 if cfg != 1.0 else 1
    latent, pixel, cached = (size[0] // step, size[1] // step), chunk.motion == "pixel", reference == "cached"
    new_frames = chunk.clip_frames - chunk.motion_frames if pixel else 4 * F
    samples = audio_window_frames * (SAMPLE_RATE // VIDEO_FPS)
    bank = reference_net_cost(dit_cfg, latent) + (reference_kv_cost(dit_cfg, latent, batch) if cached else Work())
    stages = {
        "audio_features": StageCost(
            (("transformer", audio_encoder_cost(audio_cfg, samples, audio_window_frames)),),
            new_frames / audio_block_frames, False, f"wav2vec2 over a {audio_window_frames}-frame window"),
        "reference_bank": StageCost(
            (("convolution", vae_encode_cost(vae_cfg, 1, size)), ("transformer", bank)), 1, cached,
            "reference latent, ReferenceNet" + (" and K/V" if cached else ", per chunk")),
        "conditioning": StageCost(
            (("convolution", vae_encode_cost(vae_cfg, 1 + chunk.motion_frames, size)),), 1, not pixel,
            f"VAE encode of {1 + chunk.motion_frames} frames"),
        "denoise_step": StageCost(
            (("transformer", denoiser_step_cost(dit_cfg, F, batch, latent, chunk.clip_frames if pixel else 4 * F,
                                                "cached" if cached else "recomputed")),),
            steps, False, f"one denoiser forward, batch {batch}"),
        "decode": StageCost(
            (("convolution", vae_decode_cost(vae_cfg, Grouping.for_clip(F).sizes(F) if pixel else [F], latent,
                                             at_start=pixel)),),
            1, False, f"VAE decode of {F} latent frames"),
        "convert": StageCost((("elementwise", convert_cost(size, new_frames)),), 1, False,
                             f"{new_frames} frames to uint8 RGB"),
    }
    return stages, new_frames


# ---------------------------------------------------------------------------------------------------------
# 2. Hardware, projection, real-time table
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """Stated peaks: dense tensor-core TFLOP/s by precision, and memory bandwidth."""

    name: str
    peak_tflops: dict[str, float]
    bandwidth_tbs: float
    source: str


# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS (66.9 in the Hopper architecture
# whitepaper), TF32 989, BF16/FP16 1,979, FP8 / INT8 3,958 TFLOPS/TOPS, all quoted "with sparsity", so dense
# is half (494.7, 989.4, 1978.9); GPU memory bandwidth 3.35 TB/s (HBM3).
# NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: the same compute figures; 4.8 TB/s (HBM3e).
_HOPPER_DENSE = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}
HARDWARE = {
    "h100": Hardware("H100 SXM", _HOPPER_DENSE, 3.35, "NVIDIA H100 datasheet (SXM), dense = sparse / 2"),
    "h200": Hardware("H200 SXM", _HOPPER_DENSE, 4.8, "NVIDIA H200 datasheet (SXM), dense = sparse / 2"),
}


@dataclass(frozen=True)
class Utilisation:
    """Achieved fractions of the stated peaks. The GPU defaults are assumptions, not measurements: 0.45 of
    dense peak for the transformer GEMMs and flash attention (large-GEMM DiT inference), 0.25 for the VAE's
    3D convolutions (narrow channels at high resolution, implicit-GEMM im2col), 0.6 of HBM bandwidth for
    memory-bound kernels; no per-kernel launch overhead (CUDA graphs)."""

    transformer: float = 0.45
    convolution: float = 0.25
    memory: float = 0.6
    op_overhead_s: float = 0.0
    """Fixed time per counted op (kernel launch or eager dispatch)."""

    def __post_init__(self) -> None:
        for name in ("transformer", "convolution", "memory"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"utilisation {name} must be in (0, 1], got {getattr(self, name)}")
        if self.op_overhead_s < 0:
            raise ValueError(f"op_overhead_s must be >= 0, got {self.op_overhead_s}")

    def compute(self, kind: Kind) -> float:
        return self.convolution if kind == "convolution" else self.transformer


GPU_UTILISATION = Utilisation()


def _part_seconds(kind: Kind, work: Work, peaks: dict[str, float], bandwidth: float, precision: str,
                  util: Utilisation) -> tuple[float, float, float]:
    """(compute s, memory s, total s) of one part of a call; `peaks` in FLOP/s by compute type."""
    precision = part_precision(kind, precision)
    compute_type = PRECISIONS[precision][2]
    if compute_type not in peaks:
        raise ValueError(f"no stated {compute_type} peak (have {', '.join(peaks)})")
    compute = work.flops / (peaks[compute_type] * util.compute(kind))
    memory = work.bytes(precision) / (bandwidth * util.memory)
    return compute, memory, max(compute, memory) + work.ops * util.op_overhead_s


def stage_seconds(stage: StageCost, peaks: dict[str, float], bandwidth: float, precision: str,
                  util: Utilisation) -> dict:
    """Seconds of one call of `stage` and whether compute or memory bounds it (by the larger share);
    `peaks` in FLOP/s by compute type, `bandwidth` in bytes/s."""
    compute = memory = total = 0.0
    for kind, work in stage.parts:
        c, m, t = _part_seconds(kind, work, peaks, bandwidth, precision, util)
        compute, memory, total = compute + c, memory + m, total + t
    return {"seconds": total, "compute_s": compute, "memory_s": memory,
            "bound": "compute" if compute >= memory else "memory"}


def project(costs: StreamCost, hardware: str | Hardware = "h100", precision: str | None = None,
            utilisation: Utilisation = GPU_UTILISATION) -> dict:
    """Projected time of every stage per call, per chunk and per second of video on `hardware` (a key of
    HARDWARE or a Hardware). Labelled a projection, with the peaks and utilisations it assumed."""
    hw = HARDWARE[hardware] if isinstance(hardware, str) and hardware in HARDWARE else hardware
    if not isinstance(hw, Hardware):
        raise ValueError(f"unknown hardware {hardware!r}; choose one of {', '.join(HARDWARE)} or pass a Hardware")
    precision = precision or costs.precision
    element_bytes(precision)
    compute_type = PRECISIONS[precision][2]
    if compute_type not in hw.peak_tflops:
        raise ValueError(f"{hw.name} has no stated {compute_type} peak; it has {', '.join(hw.peak_tflops)}")
    peaks, bandwidth = {k: v * 1e12 for k, v in hw.peak_tflops.items()}, hw.bandwidth_tbs * 1e12
    stages, per_video_s = {}, 0.0
    for name, stage in costs.stages.items():
        row = stage_seconds(stage, peaks, bandwidth, precision, utilisation)
        calls = 0.0 if stage.once_per_stream else stage.calls_per_chunk
        row.update(per_chunk_s=row["seconds"] * calls, per_video_s=row["seconds"] * calls * costs.chunks_per_second,
                   once_per_stream=stage.once_per_stream)
        per_video_s += row["per_video_s"]
        stages[name] = row
    return {"kind": "projection", "hardware": hw.name, "source": hw.source, "precision": precision,
            "peak_tflops": hw.peak_tflops[compute_type], "bandwidth_tbs": hw.bandwidth_tbs,
            "convolution_precision": part_precision("convolution", precision),
            "utilisation": dataclasses.asdict(utilisation), "settings": costs.settings, "stages": stages,
            "seconds_per_video_s": per_video_s, "fps": VIDEO_FPS / per_video_s if per_video_s else math.inf}


SEQUENCE_PARALLEL_EFFICIENCY = {1: 1.0, 2: 0.9, 4: 0.8, 8: 0.7}
"""Assumed efficiency of splitting each denoiser step over G GPUs by sequence parallelism (Ulysses-style
all-to-all of Q/K/V and the attention output per layer over NVLink): step time = one-GPU time / (G * eff).
An assumption, not a measurement. Audio, reference, conditioning, decode and conversion are not split:
they run on one GPU, one after another with the denoiser (no credit for pipelining them)."""


def realtime_table(models: str | tuple = "hallo3", size: tuple[int, int] | None = (480, 720),
                   steps: tuple[int, ...] = (1, 2, 4, 8, 50), cfgs: tuple[float, ...] = (1.0, 3.5),
                   precisions: tuple[str, ...] = ("bf16", "fp8"), chunks: tuple[int, ...] = (3, 13),
                   gpus: tuple[int, ...] = (1, 2, 4, 8), hardware: tuple[str, ...] = ("h100", "h200"),
                   motion: str = "pixel", utilisation: Utilisation = GPU_UTILISATION) -> list[dict]:
    """Rows of projected seconds of compute per second of video, fps, and whether it is real time (>= 25
    fps), over every combination; see SEQUENCE_PARALLEL_EFFICIENCY for the multi-GPU assumption."""
    for g in gpus:
        if g not in SEQUENCE_PARALLEL_EFFICIENCY:
            raise ValueError(f"no parallel efficiency is stated for {g} GPUs; choose from "
                             f"{sorted(SEQUENCE_PARALLEL_EFFICIENCY)}")
    rows = []
    for precision, chunk, cfg, n in itertools.product(precisions, chunks, cfgs, steps):
        costs = stream_cost(models, size, chunk, n, cfg, precision, motion)
        for hw in hardware:
            projection = project(costs, hw, utilisation=utilisation)
            stages = projection["stages"]
            startup = sum(row["seconds"] for row in stages.values() if row["once_per_stream"])
            for g in gpus:
                efficiency = SEQUENCE_PARALLEL_EFFICIENCY[g]
                per_s = sum(row["per_video_s"] / (g * efficiency if name == "denoise_step" else 1)
                            for name, row in stages.items())
                rows.append({"kind": "projection", "hardware": projection["hardware"], "gpus": g,
                             "precision": precision, "chunk_latents": chunk, "cfg": cfg, "steps": n, "motion": motion,
                             "seconds_per_video_s": per_s, "fps": VIDEO_FPS / per_s,
                             "realtime": VIDEO_FPS / per_s >= VIDEO_FPS, "startup_s": startup,
                             "peak_tflops": projection["peak_tflops"], "bandwidth_tbs": projection["bandwidth_tbs"],
                             "utilisation": projection["utilisation"], "parallel_efficiency": efficiency})
    return rows


def markdown_table(rows: list[dict] | None = None, **table_args) -> str:
    """The real-time table as markdown: one row per (precision, chunk, cfg, steps), projected fps per
    (hardware, GPUs) column, bold when real time. `rows` from `realtime_table` (default: its defaults)."""
    rows = rows if rows is not None else realtime_table(**table_args)
    columns = sorted({(r["hardware"], r["gpus"]) for r in rows})
    lines = ["| precision | chunk | CFG | steps | " + " | ".join(f"{h} x{g}" for h, g in columns) + " |",
             "|---" * (4 + len(columns)) + "|"]
    keyed = {(r["precision"], r["chunk_latents"], r["cfg"], r["steps"], r["hardware"], r["gpus"]): r for r in rows}
    for key in dict.fromkeys((r["precision"], r["chunk_latents"], r["cfg"], r["steps"]) for r in rows):
        cells = []
        for h, g in columns:
            r = keyed.get((*key, h, g))
            cells.append("" if r is None else f"**{r['fps']:.1f}**" if r["realtime"] else f"{r['fps']:.1f}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {key[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# 3. Cross-check against CPU measurements
# ---------------------------------------------------------------------------------------------------------

CPU_UTILISATION = Utilisation(transformer=0.4, convolution=0.4, memory=0.5, op_overhead_s=10e-6)
"""Calibrated once, for every stage alike (rounded, not fitted per stage), on the development machine (2 vCPUs
= one core with SMT: fp32 GEMM peak 87-95 GFLOP/s with 1 or 2 threads, 21-25 GB/s), `tiny` at chunks of 3
(pixel and latent motion) and 13 (CFG 3.5), every stage timed alone in thread CPU time with one thread (the
machine was shared with other jobs, which made wall times swing 10x):
    python -m hallo_rt.benchmarks.cost_model --preset tiny --chunk-latents 3 --steps 4 --cfg 1 --cross-check \
        --cpu-clock thread [--motion latent]   (and --chunk-latents 13 --steps 50 --cfg 3.5)
Every stage but `convert` came within 0.70-1.58x of its measurement; `convert` 2.1-2.8x, not trusted (the
CPU conversion makes six passes over the frames, the model counts the one compulsory pass). The tiny
transformer stages are dominated by per-op dispatch (10 us x the eager kernel count), the VAE by its
convolutions."""

COMPOSITE_STAGES = {"denoise": ("denoise_step", "conditioning")}
"""Session stages that are sums of model stages per chunk: a chunk's `denoise` runs `steps` denoiser steps
and, in pixel motion, the chunk's conditioning encode (`ChunkedGenerator.denoise`)."""


def cross_check(measured: dict[str, float], costs: StreamCost, cpu_peak_gflops: float, cpu_bandwidth_gbs: float,
                utilisation: Utilisation = CPU_UTILISATION, per: Literal["call", "chunk"] = "call") -> dict:
    """Predicted vs measured seconds for each measured stage on a CPU with the given GEMM peak and
    bandwidth (measured in the same run). `per`: the measurements are per call of each stage (see
    `stream_cost` for what one call is; a session's stage events use the same calls, and its per-chunk
    `denoise` is accepted too, see COMPOSITE_STAGES) or per chunk. A stage is trusted when
    0.5 <= measured / predicted <= 2. Stage times taken from a pipelined session include the other stages
    competing for the same cores: compare with the stages timed alone where possible."""
    if cpu_peak_gflops <= 0 or cpu_bandwidth_gbs <= 0:
        raise ValueError(f"CPU peak and bandwidth must be positive, got {cpu_peak_gflops} GFLOP/s, "
                         f"{cpu_bandwidth_gbs} GB/s")
    if per not in ("call", "chunk"):
        raise ValueError(f"per must be 'call' or 'chunk', got {per!r}")
    unknown = sorted(set(measured) - set(costs.stages) - set(COMPOSITE_STAGES))
    if unknown:
        raise ValueError(f"no cost for stages {unknown}; the model has {', '.join(costs.stages)} "
                         f"and {', '.join(COMPOSITE_STAGES)}")
    # the measured GEMM peak is the CPU's peak at the precision the stages ran in
    peaks = {compute_type: cpu_peak_gflops * 1e9 for _, _, compute_type in PRECISIONS.values()}
    rows, untrusted = {}, []
    for name, seconds in measured.items():
        stage = costs.stages[name] if name in costs.stages else _composite(costs, name)
        row = stage_seconds(stage, peaks, cpu_bandwidth_gbs * 1e9, costs.precision, utilisation)
        calls = 1.0 if per == "call" or stage.once_per_stream else stage.calls_per_chunk
        predicted = row["seconds"] * calls
        ratio = seconds / predicted if predicted > 0 else math.inf
        within = 0.5 <= ratio <= 2.0
        rows[name] = {"predicted_s": predicted, "measured_s": seconds, "ratio": ratio, "within_2x": within,
                      "bound": row["bound"], "gflop": stage.work.flops * calls / 1e9,
                      "mb": stage.bytes(costs.precision) * calls / 1e6, "ops": stage.work.ops * calls}
        if not within:
            untrusted.append(name)
    summary = ("the model predicts every measured stage within 2x" if not untrusted else
               "not trusted for: " + ", ".join(f"{n} (measured/predicted {rows[n]['ratio']:.2f})" for n in untrusted))
    return {"kind": "cross-check", "per": per, "cpu_peak_gflops": cpu_peak_gflops,
            "cpu_bandwidth_gbs": cpu_bandwidth_gbs, "utilisation": dataclasses.asdict(utilisation),
            "settings": costs.settings, "stages": rows, "not_trusted": untrusted, "summary": summary}


def _composite(costs: StreamCost, name: str) -> StageCost:
    """One chunk of a COMPOSITE_STAGES stage, as one call."""
    parts = []
    for part_name in COMPOSITE_STAGES[name]:
        stage = costs.stages[part_name]
        if not stage.once_per_stream:
            parts += [(kind, work * int(stage.calls_per_chunk)) for kind, work in stage.parts]
    return StageCost(tuple(parts), 1, False, f"one chunk's {name}")


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
"""How the CPU measurements time a call: wall time with torch's threads (a quiet machine), or the calling
thread's CPU time with one torch thread (a shared one: time spent descheduled is not counted)."""


def _best_seconds(fn, repeats: int, clock: str) -> float:
    """Best of `repeats` timed calls after one warm-up, on `clock`."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    timer, best = CLOCKS[clock], math.inf
    fn()
    for _ in range(repeats):
        start = timer()
        fn()
        best = min(best, timer() - start)
    return best


class _ThreadsFor:
    """One torch thread while measuring on the thread clock; torch's threads as they were afterwards."""

    def __init__(self, clock: str) -> None:
        self.clock, self.saved = clock, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.clock == "thread":
            torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved)


def measure_bandwidth(size_mb: int = 128, repeats: int = 5, clock: str = "wall") -> dict:
    """Best-of-`repeats` CPU memory bandwidth in GB/s: a float32 copy (read + write) and an add (two reads,
    one write) of `size_mb` MB tensors, after one warm-up. `gbs` is the better of the two."""
    if size_mb <= 0 or repeats <= 0:
        raise ValueError(f"size_mb and repeats must be positive, got {size_mb} and {repeats}")
    n = size_mb * 2 ** 20 // 4
    a, b, out = torch.rand(n), torch.rand(n), torch.empty(n)
    results = {}
    with _ThreadsFor(clock):
        for name, fn, moved in (("copy", lambda: out.copy_(a), 2), ("add", lambda: torch.add(a, b, out=out), 3)):
            results[f"{name}_gbs"] = moved * n * 4 / _best_seconds(fn, repeats, clock) / 1e9
        threads = torch.get_num_threads()
    return {"gbs": max(results.values()), **results, "size_mb": size_mb, "repeats": repeats, "threads": threads,
            "clock": clock}


def measure_gemm_peak_thread_time(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 3) -> float:
    """fp32 square `torch.mm` GFLOP/s on one thread's CPU time (the `thread` clock's GEMM peak; on a quiet
    machine use `hallo_rt.benchmarks.gemm.measure_gemm_peak`)."""
    best = 0.0
    with _ThreadsFor("thread"):
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            best = max(best, 2 * n ** 3 / _best_seconds(lambda: a @ b, repeats, "thread") / 1e9)
    return best


def measure_cpu_stages(models: str = "tiny", chunk_latents: int = 3, cfg: float = 1.0, motion: str = "pixel",
                       repeats: int = 5, clock: str = "wall") -> dict[str, float]:
    """Best-of-`repeats` seconds per call of every `stream_cost` stage on this CPU (after one warm-up), fp32,
    seeded weights, each call as `stream_cost` defines it and as the engine runs it (`load_pipeline`: CPU
    convolution route included). Best, not median: like the peaks it is compared with, and robust to other
    processes on a shared machine."""
    from hallo_rt.engine.pipeline import load_pipeline
    from hallo_rt.runtime.frame_convert import to_rgb8

    costs = stream_cost(models, None, chunk_latents, 1, cfg, "fp32", motion)
    pipeline, extractor = load_pipeline(models)
    dit, vae, dcfg = pipeline.dit, pipeline.vae, pipeline.dit.config
    (H, W), F, batch = pipeline.clip_size, chunk_latents, 2 if cfg != 1.0 else 1
    step = vae.config.spatial_compression
    gen, h, w = torch.Generator().manual_seed(0), H // step, W // step
    window = costs.settings["audio_window_frames"]
    samples = torch.randn(1, window * (SAMPLE_RATE // VIDEO_FPS))
    image, motion_pixels = torch.rand(1, 3, 1, H, W) * 2 - 1, torch.rand(1, 3, 3, H, W) * 2 - 1  # ref + 2 motion
    bank = pipeline.reference_net(pipeline.encode(image, gen))
    kv = dit.reference_kv(bank, batch=batch)
    audio_frames = 4 * F - 3 if motion == "pixel" else 4 * F
    step_args = (torch.randn(batch, F, dcfg.in_channels, h, w), torch.full((batch,), 500),
                 torch.randn(batch, dcfg.text_len, dcfg.text_dim),
                 torch.randn(batch, audio_frames, dcfg.audio_window, dcfg.audio_layers, dcfg.audio_dim),
                 torch.randn(batch, dcfg.face_embed_dim), kv)
    z = torch.randn(1, dcfg.out_channels, F, h, w)
    decoder = vae.stream_decoder(Grouping(F, F))
    decoder.decode(z)  # latent motion: time a continuation chunk
    new_frames = costs.new_frames
    pixels = torch.rand(3, new_frames, H, W) * 2 - 1
    calls = {
        "audio_features": lambda: extractor.encoder(samples, num_frames=window),
        "reference_bank": lambda: dit.reference_kv(pipeline.reference_net(pipeline.encode(image, gen)), batch=batch),
        "conditioning": lambda: pipeline.encode(motion_pixels, gen),
        "denoise_step": lambda: dit(*step_args),
        "decode": (lambda: vae.decode(z)) if motion == "pixel" else (lambda: decoder.decode(z)),
        "convert": lambda: to_rgb8(pixels),
    }
    with torch.no_grad(), _ThreadsFor(clock):
        return {name: _best_seconds(fn, repeats, clock) for name, fn in calls.items()}


# ---------------------------------------------------------------------------------------------------------
# 4. Command line
# ---------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """'480x720' -> (480, 720): height x width in pixels."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be HEIGHTxWIDTH in pixels, e.g. 480x720, got {text!r}") from None
    return height, width


def _stage_lines(costs: StreamCost, projections: list[dict]) -> list[str]:
    names = [p["hardware"] for p in projections]
    lines = ["| stage | one call | calls/chunk | GFLOP/call | MB/call | " +
             " | ".join(f"{n} ms/call | {n} ms/chunk" for n in names) + " |", "|---" * (5 + 2 * len(names)) + "|"]
    for name, stage in costs.stages.items():
        work = stage.work
        calls = "per stream" if stage.once_per_stream else f"{stage.calls_per_chunk:g}"
        cells = " | ".join(f"{p['stages'][name]['seconds'] * 1e3:.3f} | " +
                           ("-" if stage.once_per_stream else f"{p['stages'][name]['per_chunk_s'] * 1e3:.3f}")
                           for p in projections)
        lines.append(f"| {name} | {stage.call} | {calls} | {work.flops / 1e9:.3f} | "
                     f"{stage.bytes(costs.precision) / 1e6:.1f} | {cells} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FLOPs, bytes and projected H100/H200 time of every stage of a "
                                     "Hallo3 stream (a projection from stated peaks, not a measurement).")
    parser.add_argument("--preset", default="hallo3", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--size", default=None, help="HEIGHTxWIDTH in pixels (default: the preset's)")
    parser.add_argument("--chunk-latents", type=int, default=13)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=3.5)
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    parser.add_argument("--motion", default="pixel", choices=["pixel", "latent"])
    parser.add_argument("--reference", default="cached", choices=["cached", "hallo3"])
    parser.add_argument("--hardware", default=None, choices=sorted(HARDWARE), help="default: both")
    parser.add_argument("--table", action="store_true", help="also the real-time table (markdown)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--cross-check", action="store_true",
                        help="measure every stage on this CPU (fp32) and compare with the model")
    parser.add_argument("--cpu-peak-gflops", type=float, default=None,
                        help="CPU GEMM peak for --cross-check (default: measured by benchmarks/gemm.py)")
    parser.add_argument("--cpu-bandwidth-gbs", type=float, default=None,
                        help="CPU bandwidth for --cross-check (default: measure_bandwidth())")
    parser.add_argument("--cpu-clock", default="wall", choices=list(CLOCKS),
                        help="--cross-check timing: wall (torch's threads; a quiet machine) or thread (one thread's "
                        "CPU time, peaks included; a shared machine)")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size) if args.size else None
        costs = stream_cost(args.preset, size, args.chunk_latents, args.steps, args.cfg, args.precision,
                            args.motion, args.reference)
        projections = [project(costs, hw) for hw in ([args.hardware] if args.hardware else sorted(HARDWARE))]
        report = {"kind": "projection", "cost": costs.to_dict(), "projections": projections}
        if args.table:
            report["realtime_table"] = realtime_table(args.preset, size, motion=args.motion,
                                                      hardware=tuple(sorted({args.hardware} - {None}) or HARDWARE))
        if args.cross_check:
            report["cross_check"] = _cross_check_here(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Projection (not a measurement), {args.preset} {costs.settings['size'][0]}x{costs.settings['size'][1]}, "
          f"chunk {args.chunk_latents} latents ({args.motion} motion, {costs.new_frames} new frames), "
          f"{args.steps} steps, CFG {args.cfg:g}, {args.precision}, reference {args.reference}")
    print("\n".join(_stage_lines(costs, projections)))
    for p in projections:
        u = p["utilisation"]
        print(f"{p['hardware']}: {p['seconds_per_video_s']:.3f} s per second of video = {p['fps']:.1f} fps "
              f"(peak {p['peak_tflops']} TFLOP/s x {u['transformer']} transformer / {u['convolution']} "
              f"convolution, {p['bandwidth_tbs']} TB/s x {u['memory']})")
    if args.table:
        print("\n" + markdown_table(report["realtime_table"]))
    if args.cross_check:
        check = report["cross_check"]
        print(f"\nCPU cross-check ({check['cpu_peak_gflops']:.1f} GFLOP/s, {check['cpu_bandwidth_gbs']:.1f} GB/s):")
        for name, row in check["stages"].items():
            print(f"  {name}: predicted {row['predicted_s'] * 1e3:.2f} ms, measured {row['measured_s'] * 1e3:.2f} ms, "
                  f"ratio {row['ratio']:.2f}{'' if row['within_2x'] else '  (not within 2x)'}")
        print("  " + check["summary"])
    return 0


def _cross_check_here(args) -> dict:
    """--cross-check: the CPU's peak and bandwidth, then every stage measured and compared, fp32."""
    peak = args.cpu_peak_gflops
    if peak is None and args.cpu_clock == "thread":
        peak = measure_gemm_peak_thread_time()
    elif peak is None:
        try:
            from hallo_rt.benchmarks.gemm import measure_gemm_peak
        except ImportError as error:
            raise ValueError(f"--cross-check needs --cpu-peak-gflops or benchmarks/gemm.py ({error})") from None
        peak = measure_gemm_peak()["gflops"]
    bandwidth = args.cpu_bandwidth_gbs or measure_bandwidth(clock=args.cpu_clock)["gbs"]
    measured = measure_cpu_stages(args.preset, args.chunk_latents, args.cfg, args.motion, clock=args.cpu_clock)
    costs = stream_cost(args.preset, None, args.chunk_latents, args.steps, args.cfg, "fp32", args.motion)
    return {**cross_check(measured, costs, peak, bandwidth), "clock": args.cpu_clock}


if __name__ == "__main__":
    sys.exit(main())
