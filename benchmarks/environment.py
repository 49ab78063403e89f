"""What every benchmark records about where it ran, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine() -> dict:
    """Platform, CPU model, logical cores and torch's thread count."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def versions(**extra: str) -> dict:
    """Python and torch versions, plus any other library versions given."""
    return {"python": sys.version.split()[0], "torch": torch.__version__, **extra}


def emit(report: dict, out: str | None) -> None:
    """Print the report as JSON and, when `out` is given, write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
