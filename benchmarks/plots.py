"""The PNGs of `hallo-rt bench`: a per-chunk stage timeline that shows the overlap, and a latency CDF.

matplotlib is the `bench` extra (`pip install 'hallo-rt[bench]'`); `require_matplotlib()` says so before a
long run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .stream_metrics import percentile

LANES = ("audio_features", "denoise", "decode", "convert", "encode")
"""Timeline rows, top to bottom, in the order a frame goes through them."""


def require_matplotlib():
    """matplotlib.pyplot with the file-only Agg backend, or an error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the PNG plots need matplotlib: pip install 'hallo-rt[bench]' "
                           "(or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def stage_timeline(events: Sequence[dict], t0: float, path: str | Path, title: str, window_s: float = 6.0) -> Path:
    """Horizontal bars per stage (rows) over time, coloured by chunk, denoising steps outlined inside
    `denoise`; the first `window_s` seconds after `t0`. Where bars of different rows are stacked at the
    same time, the stages overlapped."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(12, 3.6), dpi=110)
    colours = plt.get_cmap("tab10")
    rows = {name: i for i, name in enumerate(LANES)}
    for e in events:
        start, end = e["start"] - t0, e["end"] - t0
        if end < 0 or start > window_s:
            continue
        if e["stage"] == "denoise_step":
            ax.broken_barh([(start, end - start)], (rows["denoise"] - 0.38, 0.76), facecolors="none",
                           edgecolors="black", linewidth=0.5)
            continue
        if e["stage"] not in rows:
            continue
        chunk = e.get("chunk")
        colour = colours(chunk % 10) if chunk is not None else "0.55"
        ax.broken_barh([(start, max(end - start, 1e-4))], (rows[e["stage"]] - 0.38, 0.76), facecolors=colour)
    ax.set_yticks(range(len(LANES)), LANES)
    ax.invert_yaxis()
    ax.set_xlim(0, window_s)
    ax.set_xlabel("seconds since the first audio was pushed (colour = chunk; outlined = denoising steps)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def latency_cdf(series: dict[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Empirical CDF of per-frame latency (seconds) for each named series, with p50/p99 marked."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        n = len(ordered)
        p50, p99 = percentile(ordered, 50) * 1e3, percentile(ordered, 99) * 1e3  # as the report computes them
        ax.step([v * 1e3 for v in ordered], [(i + 1) / n for i in range(n)], where="post",
                label=f"{name} (p50 {p50:.0f} ms, p99 {p99:.0f} ms)")
    ax.set_xlabel("frame latency, ms (frame out minus its last audio sample pushed)")
    ax.set_ylabel("fraction of frames")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)
