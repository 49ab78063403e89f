"""One descriptor per exported graph: names, shapes (with named dynamic dims and min/opt/max), dtypes and
sample inputs. The ONNX exporter, the TensorRT builder and every runtime backend read the same object, so
input names and shapes cannot drift between them (TensorRT demo/Diffusion `BaseModel`, STYLE "Export").

A shape is a tuple of ints (static) and dim names (dynamic); `dims` gives each name's (min, opt, max).
Dtype "model" means the graph's precision (fp32/fp16/bf16, fixed inside the graph); "float32" and "int64"
are fixed whatever the precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_FIXED = {"float32": torch.float32, "int64": torch.int64}
Which = Literal["min", "opt", "max"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    """Ints are static sizes; strings name a dynamic dim of the descriptor's `dims`."""
    dtype: Literal["model", "float32", "int64"] = "model"


@dataclass(frozen=True)
class GraphDescriptor:
    name: str
    """Graph name: also the file stem (`<name>.onnx`, `<name>.plan`)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    """Dynamic dims: (name, (min, opt, max))."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    config: dict = field(default_factory=dict, compare=False)
    """The configs the graph was cut from (to_dict form), for the manifest and the cache key."""

    def __post_init__(self):
        names = [s.name for s in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate tensor names in {names}")
        known = dict(self.dims)
        for spec in self.inputs + self.outputs:
            for d in spec.shape:
                if isinstance(d, str) and d not in known:
                    raise ValueError(f"{self.name}.{spec.name}: dim {d!r} has no (min, opt, max)")
        for name, (lo, opt, hi) in self.dims:
            if not 0 < lo <= opt <= hi:
                raise ValueError(f"{self.name}: dim {name} needs 0 < min <= opt <= max, got {(lo, opt, hi)}")

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def dtype(self, spec: TensorSpec) -> torch.dtype:
        return PRECISIONS[self.precision] if spec.dtype == "model" else _FIXED[spec.dtype]

    def shape(self, spec: TensorSpec, which: Which = "opt") -> tuple[int, ...]:
        index = ("min", "opt", "max").index(which)
        dims = dict(self.dims)
        return tuple(d if isinstance(d, int) else dims[d][index] for d in spec.shape)

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes."""
        return {s.name: tuple(self.shape(s, w) for w in ("min", "opt", "max")) for s in self.inputs}

    def sample_inputs(self, which: Which = "opt", device: str | torch.device = "cpu", seed: int = 0
                      ) -> dict[str, torch.Tensor]:
        """Random inputs of the descriptor's shapes and dtypes (standard normal; int64 in [0, 1000))."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for spec in self.inputs:
            shape, dtype = self.shape(spec, which), self.dtype(spec)
            if dtype == torch.int64:
                t = torch.randint(0, 1000, shape, generator=g)
            else:
                t = torch.randn(shape, generator=g).to(dtype)
            out[spec.name] = t.to(device)
        return out

    def dynamic_shapes(self) -> dict[str, dict[int, object]] | None:
        """`torch.export` dynamic_shapes for the inputs (one `Dim` per named dim, shared across inputs)."""
        if not self.dims:
            return None
        used = {d for s in self.inputs for d in s.shape if isinstance(d, str)}  # output-only dims follow
        made = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, _, hi) in self.dims if name in used}
        return {s.name: {i: made[d] for i, d in enumerate(s.shape) if isinstance(d, str)} or None
                for s in self.inputs} if made else None

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Names, ranks, static sizes, dynamic ranges and dtypes, with the offending tensor named."""
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise ValueError(f"{self.name}: inputs missing {missing}, unexpected {extra}")
        dims = dict(self.dims)
        for spec in self.inputs:
            t = inputs[spec.name]
            if t.ndim != len(spec.shape):
                raise ValueError(f"{self.name}.{spec.name}: expected rank {len(spec.shape)} {spec.shape}, "
                                 f"got {tuple(t.shape)}")
            for size, d in zip(t.shape, spec.shape):
                ok = size == d if isinstance(d, int) else dims[d][0] <= size <= dims[d][2]
                if not ok:
                    raise ValueError(f"{self.name}.{spec.name}: shape {tuple(t.shape)} outside {spec.shape} "
                                     f"with {dict(self.dims)}")
            if t.dtype != self.dtype(spec):
                raise ValueError(f"{self.name}.{spec.name}: dtype {t.dtype}, the graph takes {self.dtype(spec)}")

    def to_dict(self) -> dict:
        return {
            "name": self.name, "precision": self.precision, "dims": {n: list(r) for n, r in self.dims},
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.outputs],
            "config": self.config,
        }

    def compute_hash(self) -> str:
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(payload.encode()).hexdigest()
