"""Device selection: what the user asked for, or an error saying what this machine has."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; never a silent fallback to another device."""
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    kind = name.split(":")[0]
    if kind not in available:
        raise ValueError(
            f"device {name!r} is not available on this machine "
            f"(torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}); "
            f"available: {', '.join(available)}"
        )
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
