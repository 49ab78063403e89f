"""The arithmetic of `hallo-rt bench`: deadlines, a simulated viewer, inter-arrival percentiles and stage
overlap, as pure functions of recorded times (seconds on one clock) so they can be tested exactly.

Definitions (also in benchmarks/README.md):
- A frame's *presentation time* is `start + index / fps`, where playback starts `buffer_s` after the first
  frame arrives. *Deadline attainment* is the share of frames that arrived by their presentation time.
- The *simulated viewer* starts after the same buffer and plays at `fps`; when the next frame is not there
  at its time it stalls (an underrun) until the frame arrives, then plays on from there (its clock shifts).
- A chunk's *arrival* is its first frame's; *inter-arrival* is the time between consecutive chunks.
- *Overlap*: the sum of the stages' busy time minus the time at least one stage was busy (their union).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


NESTED_STAGES = ("denoise_setup", "denoise_step")
"""Events inside a chunk's `denoise` (its setup, then each step): never counted twice in busy time."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def deadline_attainment(arrivals: Sequence[float], buffer_s: float, fps: float = 25.0,
                        after_s: float = 0.0) -> float | None:
    """Share of frames (index / fps >= after_s) that arrived by `arrivals[0] + buffer_s + index / fps`."""
    if buffer_s < 0:
        raise ValueError(f"buffer_s must be >= 0, got {buffer_s}")
    if not arrivals:
        return None
    start = arrivals[0] + buffer_s
    judged = [(i, t) for i, t in enumerate(arrivals) if i / fps >= after_s]
    if not judged:
        return None
    return sum(t <= start + i / fps + 1e-9 for i, t in judged) / len(judged)


def simulate_viewer(arrivals: Sequence[float], buffer_s: float, fps: float = 25.0) -> dict:
    """Play the frames after a buffer; count underruns (stalls) and their total length."""
    if buffer_s < 0:
        raise ValueError(f"buffer_s must be >= 0, got {buffer_s}")
    if not arrivals:
        return {"underruns": 0, "stall_s": 0.0, "buffer_s": buffer_s}
    clock = arrivals[0] + buffer_s  # when frame 0 is shown
    underruns, stall = 0, 0.0
    for index, arrived in enumerate(arrivals):
        due = clock + index / fps
        if arrived > due + 1e-9:
            underruns += 1
            stall += arrived - due
            clock += arrived - due  # the viewer waits for the frame, then plays on from it
    return {"underruns": underruns, "stall_s": stall, "buffer_s": buffer_s}


def chunk_arrivals(arrivals: Sequence[float], chunk_sizes: Sequence[int]) -> list[float]:
    """Arrival of each chunk's first frame, given the frames each chunk emitted, in order."""
    out, index = [], 0
    for size in chunk_sizes:
        if size <= 0:
            continue
        if index >= len(arrivals):
            break
        out.append(arrivals[index])
        index += size
    return out


def interarrivals(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def union_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length covered by at least one interval."""
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def stage_summary(events: Sequence[dict], wall_s: float) -> dict:
    """Per stage: calls, total busy seconds, mean and p50/p90 per call, share of the wall time, frames (where
    the events say); and the overlap of the pipeline stages (NESTED_STAGES are inside `denoise`)."""
    by_stage: dict[str, list[dict]] = {}
    for e in events:
        by_stage.setdefault(e["stage"], []).append(e)
    stages = {}
    for stage, items in by_stage.items():
        durations = [e["end"] - e["start"] for e in items]
        stages[stage] = {"calls": len(items), "total_s": sum(durations),
                         "mean_ms": 1e3 * sum(durations) / len(durations),
                         "p50_ms": 1e3 * percentile(durations, 50), "p90_ms": 1e3 * percentile(durations, 90),
                         "share_of_wall": sum(durations) / wall_s if wall_s > 0 else None}
        if any("frames" in e for e in items):
            stages[stage]["frames"] = sum(e.get("frames", 0) for e in items)
    steps = by_stage.get("denoise_step", [])
    per_step: dict[int, list[float]] = {}
    for e in steps:
        per_step.setdefault(e.get("step", 0), []).append(e["end"] - e["start"])
    pipeline = [(e["start"], e["end"]) for e in events if e["stage"] not in NESTED_STAGES]
    busy_sum = sum(b - a for a, b in pipeline)
    busy_union = union_length(pipeline)
    return {
        "stages": stages,
        "denoise_step_ms": {str(k): 1e3 * sum(v) / len(v) for k, v in sorted(per_step.items())},
        "busy_sum_s": busy_sum, "busy_union_s": busy_union, "overlap_s": busy_sum - busy_union,
        "overlap_fraction": (busy_sum - busy_union) / busy_sum if busy_sum > 0 else 0.0,
    }
