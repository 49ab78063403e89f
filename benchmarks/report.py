"""Regenerate the results section of benchmarks/README.md (and its JSON and PNGs) with one command:

    .venv/bin/python -m hallo_rt.benchmarks.report            # the full run (~5 min on 2 CPU cores)
    .venv/bin/python -m hallo_rt.benchmarks.report --render    # only re-render the README from the last JSON

It runs `hallo-rt bench --model tiny --backend all --compare`, writes
`benchmarks/results/bench/{bench.json,timeline.png,latency_cdf.png}`, and replaces the text between the
`bench-report` markers in benchmarks/README.md; everything outside the markers is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .stream_metrics import NESTED_STAGES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench"
README = HERE / "README.md"
BEGIN, END = "<!-- bench-report:begin -->", "<!-- bench-report:end -->"

TARGETS = (  # (label, key path, comparison, threshold) from issue 7, on a 2-core CPU
    ("`tiny` streams at >= 1.0x real time", ("rtf",), ">=", 1.0),
    ("warm time to first frame <= 1.0 s", ("ttff_warm_s",), "<=", 1.0),
    ("100% deadline attainment after the first second", ("deadline_attainment_after_1s",), ">=", 1.0),
    ("denoiser step >= 1.5x faster than diffusers eager", ("side_by_side", "speedup_vs_diffusers_dit"), ">=", 1.5),
    ("mid-size denoiser step >= 50% of the GEMM peak", ("side_by_side", "gemm_peak_fraction"), ">=", 0.5),
)


def _get(report: dict, path: tuple[str, ...]):
    value = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _f(value, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def _targets(report: dict) -> list[str]:
    rows = ["| target (issue 7, 2-core CPU) | measured | met |", "|---|---|---|"]
    for label, path, op, threshold in TARGETS:
        value = _get(report, path)
        met = "not measured" if value is None else (
            "yes" if (value >= threshold if op == ">=" else value <= threshold) else "**no**")
        shown = _f(value, 3)
        dit = _get(report, ("side_by_side", "dit_stream_chunk"))
        if path[-1] == "speedup_vs_diffusers_dit" and dit:  # which path reached it, and what eager gives
            shown += f" ({dit['impl_used']}; eager {dit['speedup_by_impl'].get('eager', float('nan')):.2f})"
        rows.append(f"| {label} | {shown} | {met} |")
    return rows


def _streaming(report: dict) -> list[str]:
    cfg = report["config"]
    return [
        f"Model `{report['model']}` ({report['frame_size'][0]} x {report['frame_size'][1]}), backend "
        f"`{report['backend_used']['backend']}` on `{report['device']}`, {cfg['steps']} steps, CFG {cfg['cfg']:g}, "
        f"{cfg['chunk_latents']}-latent chunks ({cfg['motion']} motion), {cfg['seconds']:g} s of "
        f"{'synthetic speech-like audio' if cfg['audio'] is None else cfg['audio']} per phase, viewer buffer "
        f"{cfg['viewer_buffer_s']:g} s. Config hash `{report['config_hash'][:16]}`.",
        "",
        "| metric | value |", "|---|---|",
        f"| real-time factor (input as fast as possible; video s per wall s) | {_f(report['rtf'])}x |",
        f"| steady-state fps (after the first chunk) | {_f(report['fps'], 1)} |",
        f"| time to first frame, cold (engine construction included) | {_f(report['ttff_cold_s'])} s |",
        f"| time to first frame, warm (real-time input: first push to first frame) | {_f(report['ttff_warm_s'])} s |",
        f"| deadline attainment, all frames / after the first second | {_f(report['deadline_attainment'], 1, 100)}% / "
        f"{_f(report['deadline_attainment_after_1s'], 1, 100)}% |",
        f"| viewer underruns ({report['viewer_buffer_s']:g} s buffer) | {report['underruns']} |",
        f"| chunk inter-arrival p50 / p90 / p99 | {_f(report['interarrival_p50_s'], 0, 1e3)} / "
        f"{_f(report['interarrival_p90_s'], 0, 1e3)} / {_f(report['interarrival_p99_s'], 0, 1e3)} ms |",
        f"| frame latency p50 / p99 (frame out minus its last audio pushed) | {_f(report['latency_p50_s'], 0, 1e3)} / "
        f"{_f(report['latency_p99_s'], 0, 1e3)} ms |",
        f"| stage overlap (busy time hidden by pipelining) | {_f(report['overlap_fraction'], 0, 100)}% |",
        f"| peak memory, CPU RSS | {_f(report['peak_cpu_rss_mb'], 0)} MB |",
    ]


def _stages(report: dict) -> list[str]:
    rows = ["| stage (throughput phase) | calls | mean per call | p90 | busy share of wall |", "|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        rows.append(f"| {name} | {s['calls']} | {s['mean_ms']:.1f} ms | {s['p90_ms']:.1f} ms | "
                    f"{_f(s['share_of_wall'], 0, 100)}% |")
    steps = ", ".join(f"step {k}: {v:.1f} ms" for k, v in report["denoise_step_ms"].items())
    return rows + ["", f"Denoising steps (mean): {steps}.", "", _limits(report)]


def _limits(report: dict) -> str:
    """What limits the stream: each stage's busy time per frame against the 40 ms a frame has at 25 fps."""
    frames = report["phases"]["throughput"]["frames"]
    busy = {name: s["total_s"] * 1e3 / frames for name, s in report["stages"].items()
            if name not in NESTED_STAGES}
    total = sum(busy.values())
    parts = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(busy.items(), key=lambda kv: -kv[1]))
    top = max(busy, key=busy.get)
    return (f"**What limits it.** At 25 fps a frame has 40 ms. Busy time per frame in the throughput phase: "
            f"{parts} ({total:.1f} ms in all; {report['overlap_fraction'] * 100:.0f}% of the busy time "
            f"overlapped). `{top}` is the largest share ({busy[top] / total * 100:.0f}%). The stages run "
            "concurrently on two hardware threads of one physical core, so their times in the session are inflated "
            "by one another (the cost-model section compares them with the same stages timed alone).")


def _backends(report: dict) -> list[str]:
    rows = ["| backend | real-time factor | warm TTFF | cold TTFF | deadlines after 1 s | inter-arrival p99 | "
            "denoise / decode per chunk |", "|---|---|---|---|---|---|---|"]
    for name, row in report.get("backends", {}).items():
        ms = row["stage_ms"]
        rows.append(f"| {name} | {_f(row['rtf'])}x | {_f(row['ttff_warm_s'])} s | {_f(row['ttff_cold_s'])} s | "
                    f"{_f(row['deadline_attainment_after_1s'], 1, 100)}% | "
                    f"{_f(row['interarrival_p99_s'], 0, 1e3)} ms | "
                    f"{_f(ms.get('denoise'), 0)} / {_f(ms.get('decode'), 0)} ms |")
    for name, why in report.get("backends_failed", {}).items():
        rows.append(f"| {name} | **failed**: {why} | | | | | |")
    for name, why in report.get("backends_unavailable", {}).items():
        rows.append(f"| {name} | not run: {why} | | | | | |")
    return rows + ["", "Cold TTFF includes constructing the engine: loading, and on a first run exporting the graphs "
                   "(ONNX Runtime, about 30 s here) or compiling the denoiser (torch.compile, about 25 s). Both are "
                   "cached on disk (hallo-rt's artifact cache, TorchInductor's cache), so a run after an earlier "
                   "one, like this one may be, starts from the cache."]


def render(report: dict) -> str:
    """The markdown between the markers."""
    m, v = report["machine"], report["versions"]
    lines = [
        BEGIN,
        "<!-- generated by `python -m hallo_rt.benchmarks.report`; edit benchmarks/report.py, not this text -->",
        "## `hallo-rt bench`: streaming latency, side by side, cost model",
        "",
        "```bash",
        ".venv/bin/python -m hallo_rt.benchmarks.report   # runs: " + report.get("command", "hallo-rt bench"),
        "```",
        "",
        f"Run {report['timestamp_utc']} on {m['cpu']} ({m['logical_cores']} logical cores, {m['torch_threads']} torch "
        f"threads), {m['platform']}; " + ", ".join(f"{k} {val}" for k, val in v.items()) + ". Raw: "
        "[`results/bench/bench.json`](results/bench/bench.json).",
        "",
        "### Targets", "", *_targets(report), "",
        "### Streaming, `tiny` (seeded weights)", "", *_streaming(report), "",
        "![stage timeline](results/bench/timeline.png)", "", "![latency CDF](results/bench/latency_cdf.png)", "",
        "### Where the time goes", "", *_stages(report), "",
    ]
    if report.get("backends"):
        lines += ["### Every backend, same stream", "", *_backends(report), ""]
    side = report.get("side_by_side")
    if side:
        from .side_by_side import render_markdown

        lines += render_markdown(side)
    lines.append(END)
    return "\n".join(lines)


def write_readme(report: dict, readme: Path = README) -> None:
    """Replace the marked section of the README (or put it after the title if there is none yet)."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    section = render(report)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{section}\n{body}"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="regenerate benchmarks/README.md's results section")
    parser.add_argument("--render", action="store_true", help="only re-render from results/bench/bench.json")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per measured phase (default: 20)")
    args = parser.parse_args(argv)
    if not args.render:
        from hallo_rt.runtime.cli import main as cli

        # `tiny` (seeded weights), whose 13-latent clips the side-by-side runs need (the demo avatar's chunks are
        # 1-4 latent frames; its own speed is `hallo-rt bench` on the default model, in "Demo avatar")
        code = cli(["bench", "--model", "tiny", "--backend", "all", "--compare", "--seconds", f"{args.seconds:g}",
                    "--out-dir", str(RESULTS)])
        if code:
            return code
    report = json.loads((RESULTS / "bench.json").read_text())
    for name in ("timeline", "latency_cdf"):  # links in the README are relative to benchmarks/
        report.setdefault("plots", {})[name] = f"results/bench/{name}.png"
    write_readme(report)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
