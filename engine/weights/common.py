"""What every checkpoint format shares: safe unpickling, strict key checks, meta-device model building."""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


class WeightsError(ValueError):
    """A checkpoint cannot be read, or does not match the model it should fill."""


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """`fp32` / `fp16` / `bf16` or the torch dtype itself; anything else is refused with the choices."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}; choose torch.float32, torch.float16 or torch.bfloat16")
    return dtype


def _benign_globals() -> list:
    """Globals that DeepSpeed/SAT training checkpoints carry besides tensors, none of which can run code:
    numpy arrays and dtypes (the saved numpy RNG state) and argparse namespaces (saved arguments)."""
    import numpy as np

    allowed: list = [argparse.Namespace, np.ndarray, np.dtype]
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed += [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(name)) for name in ("uint32", "int64", "float32", "float64")]
    return allowed


def load_pickle(path: Path) -> dict:
    """torch.load with weights_only=True (plus the benign globals above), memory-mapped when possible."""
    try:
        with torch.serialization.safe_globals(_benign_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err) and "zip" not in str(err):
                    raise
                # Legacy (pre-zip) torch pickles cannot be memory-mapped.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise WeightsError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain data "
            f"(torch.load weights_only=True said: {first}). hallo-rt never runs code from a checkpoint."
        ) from None
    except Exception as err:  # a corrupt pickle can fail anywhere inside the unpickler (IndexError, KeyError...)
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None


def load_safetensors(paths: Iterable[Path]) -> dict[str, torch.Tensor]:
    """Tensors of one or more (sharded) safetensors files; a key in two shards is an error."""
    from safetensors import safe_open
    from safetensors import SafetensorError

    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    if key in tensors:
                        raise WeightsError(f"{path}: tensor {key!r} appears in more than one shard")
                    tensors[key] = handle.get_tensor(key)
        except SafetensorError as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict check: raises WeightsError listing missing keys, unexpected keys and shape mismatches."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in (set(expected) & set(state)) - set(not_tensors)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched or not_tensors:
        lines = [f"{source} does not match the model ({type(model).__name__}):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched), ("values that are not tensors", not_tensors)):
            if items:
                shown = items if len(items) <= 20 else items[:20] + [f"... and {len(items) - 20} more"]
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise WeightsError("\n".join(lines))


def assign_state_dict(
    build, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype, device: str | torch.device
) -> nn.Module:
    """Build the model on the meta device and assign the checkpoint tensors into it (no second copy).

    `build` is a zero-argument callable returning the model. Each tensor is cast and moved one at a time;
    tensors already in the right dtype and device (e.g. memory-mapped) are used as they are.
    """
    with torch.device("meta"):
        model = build()
    check_state_dict(model, state, source)
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {key!r} has dtype {tensor.dtype}, expected floating point")
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def seeded_init_(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic, non-degenerate weights for presets: independent of the global RNG and of device.

    Matrices ~ N(0, 1/fan_in); biases ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.1); the learned positional
    embedding ~ N(0, 0.02). Every gate and modulation is non-zero, so every path is exercised.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        shape = param.shape
        if name.endswith("pos_embedding") or name.endswith("bias"):
            values = torch.randn(shape, generator=generator) * 0.02
        elif len(shape) == 1:
            values = 1 + torch.randn(shape, generator=generator) * 0.1
        else:
            fan_in = param[0].numel()
            values = torch.randn(shape, generator=generator) / fan_in**0.5
        with torch.no_grad():
            param.copy_(values.to(param.dtype))
    return model
