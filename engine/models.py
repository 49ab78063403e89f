"""Named models: the shipped demo avatar, and the settings a model folder asks to be run with.

`demo` is the avatar trained here on synthetic talking faces (`hallo_rt.train`, issue 9): a hallo-rt folder
inside the package (`engine/weights/demo/`, written by `python -m hallo_rt.train.ship`), and the embedded
default (`DEFAULT_MODEL`) of `Engine`, `generate`, `stream`, `bench` and `export`. A model folder's
`hallo_rt.json` may carry the settings it was trained and distilled for (`stream_defaults`: sampler, steps,
chunk length, motion, audio context) and `face_embedding: "none"` (trained without face embeddings, so
their absence is not a loss); `Engine`, `generate`, `stream` and `bench` apply them under the caller's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO = "demo"
DEMO_FOLDER = Path(__file__).parent / "weights" / "demo"

ALIASES = {DEMO: DEMO_FOLDER}

DEFAULT_MODEL = DEMO
"""What runs when no model is named: the trained demo avatar (the `tiny` preset's weights are random)."""


def resolve_model(model: str | Path) -> str | Path:
    """A model alias (`demo`) -> its folder; anything else (preset names, paths) unchanged."""
    if isinstance(model, str) and model in ALIASES:
        folder = ALIASES[model]
        if not (folder / "hallo_rt.json").is_file():
            raise FileNotFoundError(f"the {model!r} model's weights are not in {folder}: they are built by the "
                                    f"recipe in train/README.md (python -m hallo_rt.train.ship --out {folder})")
        return folder
    return model


def model_manifest(model: str | Path) -> dict[str, Any]:
    """The hallo-rt folder manifest of a model (empty for presets and other formats)."""
    path = Path(resolve_model(model))
    manifest = path / "hallo_rt.json"
    if path.is_dir() and manifest.is_file():
        return json.loads(manifest.read_text())
    return {}


def model_defaults(model: str | Path) -> dict[str, Any]:
    """The stream settings a model folder was trained for (`stream_defaults`), or {}."""
    return dict(model_manifest(model).get("stream_defaults", {}))


def uses_face_embedding(model: str | Path) -> bool:
    """False for models trained without face embeddings (zeros are then what they expect)."""
    return model_manifest(model).get("face_embedding", "arcface") != "none"
