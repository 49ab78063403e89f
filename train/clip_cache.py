"""Rendered training clips on disk, so the denoiser stages render and synthesise each clip once.

    python -m hallo_rt.train.clip_cache --out runs/clips --clips 320

One `clip_NNNNN.npz` per clip of `SyntheticTalkingFaces("train", seed=DATA_SEED)`: frames (T, 128, 128, 3)
uint8, audio (T * 640,) float32, opening and width (T,), the mouth boxes (T, 4), the identity index, and the
neutral reference portrait of the clip's person (closed mouth, no sway: what a user would upload). Existing
files are kept (an interrupted run resumes); a clip is deterministic given its index.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .dataset import SyntheticTalkingFaces, identity_for_index
from .demo import DATA_SEED, TRAIN_IDENTITIES
from .faces import MouthState, Pose, mouth_box, render

CLIP_SECONDS = 4.0


def reference_portrait(identity, size: int = 128) -> np.ndarray:
    """The person at rest, facing the camera, mouth closed, eyes open: (size, size, 3) uint8."""
    return render(identity, MouthState(0.0, 0.5), Pose(), size)


def clip_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"clip_{index:05d}.npz"


def write_clip(data: SyntheticTalkingFaces, index: int, path: Path) -> None:
    clip = data[index]
    boxes = np.array([mouth_box(clip.identity, p, data.size) for p in clip.poses], np.int16)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=clip.frames, audio=clip.audio, opening=clip.opening, width=clip.width, boxes=boxes,
             identity_index=clip.spec.identity_index, reference=reference_portrait(clip.identity, data.size))
    os.replace(tmp, path)


def dataset(split: str = "train", clip_seconds: float = CLIP_SECONDS) -> SyntheticTalkingFaces:
    return SyntheticTalkingFaces(split, seed=DATA_SEED, clip_seconds=clip_seconds, train_identities=TRAIN_IDENTITIES)


def build(folder: Path, clips: int, split: str = "train") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = dataset(split)
    paths = [clip_path(folder, i) for i in range(clips)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    for i in tqdm(missing, desc=f"rendering {split} clips", unit="clip", dynamic_ncols=True, disable=not missing):
        write_clip(data, i, paths[i])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.clip_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the clip folder, or the PNG with --portrait")
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--split", choices=("train", "heldout"), default="train")
    parser.add_argument("--portrait", type=int, default=None, metavar="PERSON",
                        help="write person PERSON's neutral portrait to --out (a PNG) instead; "
                             "examples/avatar.png is held-out person 1")
    args = parser.parse_args(argv)
    if args.portrait is not None:
        from PIL import Image

        Image.fromarray(reference_portrait(identity_for_index(DATA_SEED, args.portrait))).save(args.out)
        return 0
    build(args.out, args.clips, args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
