"""`hallo-rt bench --compare`: the side-by-side runs, in the same process, machine and weights as the stream.

- GEMM peak of this machine, and the mid-size denoiser step's share of it (`gemm.py`): `gemm_peak_fraction`;
- the denoiser step against diffusers' `CogVideoXTransformer3DModel` (eager) at the stream's chunk shape and
  at a Hallo3 CFG clip step, and the VAE decode against `AutoencoderKLCogVideoX.decode` (`compare.py`):
  `speedup_vs_diffusers_dit`, `speedup_vs_diffusers_vae`;
- the speed-up ladder from Hallo3's offline loop to the streaming session (`compare.speedup_ladder`);
- the cost model (`cost_model.py`): the measured stages cross-checked against its prediction for this CPU
  (GEMM peak and bandwidth measured here), and hallo3 at 480 x 720 projected on H100/H200.
"""

from __future__ import annotations

import sys
import time

from hallo_rt.runtime.streaming_features import DEFAULT_BLOCK_FRAMES



def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)


def _strip_samples(value):
    """Drop per-call sample lists (kept in memory only) so the JSON stays readable."""
    if isinstance(value, dict):
        return {k: _strip_samples(v) for k, v in value.items() if k != "samples_s"}
    if isinstance(value, list):
        return [_strip_samples(v) for v in value]
    return value


def run_side_by_side(report: dict, settings, progress: bool = True) -> dict:
    """Every comparison for the model and settings of a `run_bench` report (CPU, torch backends)."""
    from hallo_rt.engine.config import get_preset, get_vae_preset
    from hallo_rt.engine.pipeline import load_pipeline

    from . import compare, cost_model, gemm
    from .stream_bench import load_inputs

    out: dict = {}
    started = time.perf_counter()
    _say(progress, "GEMM peak and the mid-size denoiser step")
    peak = gemm.measure_gemm_peak()
    mid = gemm.midsize_config()
    step = gemm.denoiser_gemm_fraction(mid, peak, impl="eager")
    out["gemm"] = {"peak": peak, "midsize_config": mid.to_dict(), "midsize_step": step}
    out["gemm_peak_fraction"] = step["gemm_peak_fraction"]
    dit_cfg = get_preset(settings.model)
    vae_cfg = get_vae_preset(settings.model)
    batch = 2 if settings.cfg != 1.0 else 1
    _say(progress, f"denoiser step vs diffusers ({settings.chunk_latents} latent frames, batch {batch}; "
                   f"then a {dit_cfg.latent_frames}-frame CFG step)")
    out["dit_stream_chunk"] = compare.dit_vs_diffusers(dit_cfg, settings.chunk_latents, batch)
    out["dit_clip_cfg"] = compare.dit_vs_diffusers(dit_cfg, dit_cfg.latent_frames, 2)
    out["speedup_vs_diffusers_dit"] = out["dit_stream_chunk"]["speedup_vs_diffusers_dit"]
    _say(progress, "VAE decode vs diffusers")
    out["vae"] = compare.vae_vs_diffusers(vae_cfg, dit_cfg.latent_frames, (dit_cfg.latent_height,
                                                                           dit_cfg.latent_width))
    out["speedup_vs_diffusers_vae"] = out["vae"]["speedup_vs_diffusers_vae"]
    _say(progress, "speed-up ladder (Hallo3's offline loop first: 50 steps with CFG)")
    pipeline, extractor = load_pipeline(settings.model)
    audio, image = load_inputs(settings)
    out["ladder"] = compare.speedup_ladder(pipeline, extractor, image, audio, few_steps=settings.steps,
                                           chunk_latents=settings.chunk_latents, seed=settings.seed,
                                           progress=progress)
    _say(progress, "cost model: cross-check against this run's stages, projections")
    out["cost_model"] = cost_model_section(report, settings, peak, cost_model)
    out["wall_s"] = time.perf_counter() - started
    return _strip_samples(out)


MEASURED_STAGES = ("audio_features", "denoise_step", "denoise", "decode", "convert")
"""Session stages the cost model predicts per call (see `cost_model.stream_cost`)."""


def cost_model_section(report: dict, settings, peak: dict, cost_model) -> dict:
    """Cross-check of the stream's measured stage times (throughput phase, mean per call) against the cost
    model on this CPU, and hallo3 at 480 x 720 projected on H100/H200 (labelled projections)."""
    bandwidth = cost_model.measure_bandwidth()
    costs = cost_model.stream_cost(settings.model, chunk_latents=settings.chunk_latents, steps=settings.steps,
                                   cfg=settings.cfg, precision="fp32", motion=settings.motion)
    # the model predicts a stage's own compute: check it against each stage timed alone (best of 5, wall
    # clock, this process, right now); the session's stage times, inflated by the stages competing for the
    # same two hardware threads, are reported next to it
    alone = cost_model.measure_cpu_stages(settings.model, chunk_latents=settings.chunk_latents, cfg=settings.cfg,
                                          motion=settings.motion)
    check = cost_model.cross_check(alone, costs, peak["gflops"], bandwidth["gbs"])
    stages = report["stages"]
    in_session = {name: stages[name]["mean_ms"] / 1e3 for name in MEASURED_STAGES if name in stages}
    if "frames" in stages.get("audio_features", {}):  # the model's call is one block; a session call may be more
        blocks = stages["audio_features"]["frames"] / DEFAULT_BLOCK_FRAMES
        in_session["audio_features"] = stages["audio_features"]["total_s"] / max(blocks, 1)
    check["in_session"] = cost_model.cross_check(in_session, costs, peak["gflops"], bandwidth["gbs"])
    projections = {}
    for label, args in (("hallo3 offline (13-latent clips, 50 steps, CFG 3.5, bf16)",
                         {"chunk_latents": 13, "steps": 50, "cfg": 3.5, "precision": "bf16", "motion": "pixel",
                          "reference": "hallo3"}),
                        ("hallo3 streaming (3-latent chunks, 4 steps, no CFG, bf16, latent motion)",
                         {"chunk_latents": 3, "steps": 4, "cfg": 1.0, "precision": "bf16", "motion": "latent"}),
                        ("hallo3 streaming (3-latent chunks, 4 steps, no CFG, fp8, latent motion)",
                         {"chunk_latents": 3, "steps": 4, "cfg": 1.0, "precision": "fp8", "motion": "latent"})):
        cost = cost_model.stream_cost("hallo3", size=(480, 720), **args)
        projections[label] = {hw: cost_model.project(cost, hw) for hw in ("h100", "h200")}
    return {"bandwidth": bandwidth, "cross_check": check, "projections": projections,
            "realtime_table_markdown": cost_model.markdown_table(models="hallo3", size=(480, 720))}


# --- markdown for benchmarks/README.md --------------------------------------------------------------------

def _ms(timing: dict) -> str:
    return f"{timing['median_s'] * 1e3:.2f} ms"


def _dit_rows(name: str, d: dict) -> list[str]:
    eager = d["engine_backbone_step"].get("eager")
    compiled = d["engine_backbone_step"].get("compile")
    return [f"| {name}: {d['frames']} latent frames, batch {d['batch']}, {d['tokens_per_step']} tokens | "
            f"{_ms(d['diffusers_backbone_step'])} | {_ms(eager) if eager else '-'} | "
            f"{_ms(compiled) if compiled else '-'} | **{d['speedup_vs_diffusers_dit']:.2f}x** ({d['impl_used']}) | "
            f"{max(d['max_abs_diff_vs_diffusers'].values()):.1e} |"]


def render_markdown(side: dict) -> list[str]:
    """README lines for the side-by-side results and the cost model."""
    lines = ["### Side by side: Hallo3's offline loop to the streaming session (same weights, audio, machine)", "",
             "| rung | change | s of wall per s of video | factor over previous |", "|---|---|---|---|"]
    ladder = side["ladder"]
    for rung in ladder["rungs"]:
        factor = rung["factor_over_previous"]
        lines.append(f"| {rung['rung']} | {rung['change']} | {rung['s_per_video_s']:.3f} | "
                     f"{'-' if factor is None else f'{factor:.2f}x'} |")
    by_name = {r["rung"]: r for r in ladder["rungs"]}
    pipelining = by_name.get("pipelining")
    if pipelining is not None and pipelining["factor_over_previous"] < 1:
        lines += ["", f"Pipelining is {1 / pipelining['factor_over_previous']:.2f}x *slower* than running the same "
                  "chunks one stage after another on this machine: its two vCPUs are one physical core with SMT, "
                  "so stages running at once (each with two OpenMP threads) slow one another down more than "
                  "overlapping them hides; the session's design targets GPUs (denoise and decode on their own "
                  "CUDA streams), which this run cannot measure."]
    lines += ["", f"Total: **{ladder['total_speedup']:.1f}x** over the reference loop "
              f"({ladder['audio_s']:.2f} s of audio = {ladder['parameters']['clips']} Hallo3 clips; backend rung: "
              f"{ladder['backend_used']}).", ""]
    lines += ["### Denoiser step vs diffusers `CogVideoXTransformer3DModel` (eager), same config and weights", "",
              "Backbone only (face and audio off, so both compute the same function).", "",
              "| shape | diffusers eager | hallo-rt eager | hallo-rt torch.compile | speed-up (fastest) "
              "| max abs diff |",
              "|---|---|---|---|---|---|"]
    lines += _dit_rows("stream chunk", side["dit_stream_chunk"]) + _dit_rows("Hallo3 CFG clip step",
                                                                             side["dit_clip_cfg"])
    full = side["dit_stream_chunk"]["engine_hallo3_step_with_face_audio_cached_kv"]
    lines += ["", "Full Hallo3 step at the stream chunk (face + audio cross-attention, cached reference K/V): "
              + ", ".join(f"{impl} {_ms(t)}" for impl, t in full.items()) + ".", ""]
    vae = side["vae"]
    lines += ["### VAE decode vs diffusers `AutoencoderKLCogVideoX.decode`", "",
              "| what | per clip | per frame |", "|---|---|---|",
              f"| diffusers, {vae['latent_frames']} latents -> {vae['video_frames']} frames "
              f"{vae['frame_size'][0]} x {vae['frame_size'][1]} | {_ms(vae['diffusers_decode'])} | "
              f"{vae['diffusers_ms_per_frame']:.1f} ms |",
              f"| hallo-rt (`small_cpu_convolutions`) | {_ms(vae['engine_decode'])} | "
              f"{vae['engine_ms_per_frame']:.1f} ms |",
              f"| hallo-rt streaming decoder, 3-latent groups | - | "
              f"{vae['engine_stream_decode_grouping_3_3']['ms_per_frame']:.1f} ms |",
              "", f"Speed-up **{vae['speedup_vs_diffusers_vae']:.2f}x**, max abs diff "
              f"{vae['max_abs_diff_vs_diffusers']:.1e}.", ""]
    g = side["gemm"]
    step = g["midsize_step"]
    lines += ["### GEMM peak and the mid-size denoiser step", "",
              f"Peak: **{g['peak']['gflops']:.1f} GFLOP/s** fp32 (best square product, {g['peak'].get('route', '')} "
              f"n={g['peak']['size']}, {g['peak']['threads']} threads). Mid-size config `{step['config']}`: hidden "
              f"{step['hidden']}, {step['layers']} layers, {step['tokens_per_step']} tokens per step (+ "
              f"{step['reference_bank_tokens']} reference-bank tokens), face and audio cross-attention: "
              f"{step['gflop_per_step']:.1f} GFLOP per step in {step['step']['median_s'] * 1e3:.0f} ms (eager) = "
              f"{step['achieved_gflops']:.1f} GFLOP/s = **{step['gemm_peak_fraction'] * 100:.0f}% of the peak**.", ""]
    lines += _cost_lines(side["cost_model"])
    return lines


def _cost_lines(cost: dict) -> list[str]:
    check = cost["cross_check"]
    session = check.get("in_session", {"stages": {}})["stages"]
    u = check["utilisation"]
    lines = ["### Cost model", "",
             "FLOPs are counted as `torch.utils.flop_counter` counts them (tests hold every network to it exactly); "
             "bytes are compulsory traffic. Cross-check: each stage of this configuration timed alone in the same "
             f"run (best of 5, wall clock) against the model on this CPU's measured peak "
             f"({check['cpu_peak_gflops']:.0f} GFLOP/s) and bandwidth ({check['cpu_bandwidth_gbs']:.1f} GB/s), "
             f"utilisation assumed: transformer {u['transformer']}, convolution {u['convolution']}, memory "
             f"{u['memory']}, {u['op_overhead_s'] * 1e6:.0f} us per eager op. The last column is the same stage's "
             "mean inside the streaming session (throughput phase), where the stages compete for the same two "
             "hardware threads (one physical core with SMT).", "",
             "| stage | GFLOP | MB | predicted | measured alone | alone / predicted | within 2x | in session / "
             "predicted |", "|---|---|---|---|---|---|---|---|"]
    for name, row in check["stages"].items():
        in_session = "-" if name not in session else f"{session[name]['ratio']:.1f}"
        lines.append(f"| {name} | {row['gflop']:.3f} | {row['mb']:.1f} | {row['predicted_s'] * 1e3:.2f} ms | "
                     f"{row['measured_s'] * 1e3:.2f} ms | {row['ratio']:.2f} | "
                     f"{'yes' if row['within_2x'] else '**no**'} | "
                     f"{in_session} |")
    lines += ["", f"Verdict (stages alone): {check['summary']}.", "",
              "**Projections (not measurements)**: hallo3 at 480 x 720 on H100 SXM / H200 from datasheet peaks "
              "and the utilisation stated in each row:", "",
              "| configuration | GPU | s of compute per s of video | fps | utilisation assumed |",
              "|---|---|---|---|---|"]
    for label, by_hw in cost["projections"].items():
        for hw, p in by_hw.items():
            u = p["utilisation"]
            lines.append(f"| {label} | {p['hardware']} | {p['seconds_per_video_s']:.2f} | {p['fps']:.1f} | "
                         f"transformer {u['transformer']}, convolution {u['convolution']}, memory {u['memory']} |")
    lines += ["", "What real time needs for hallo3 at 480 x 720 (projected fps; **bold** = at least 25 fps; the "
              "denoiser split across GPUs by sequence parallelism, everything else on one):", "",
              cost["realtime_table_markdown"], ""]
    return lines
