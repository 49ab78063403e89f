"""Synthetic talking-face clips: a procedural face (`faces`) speaking an espeak-ng sentence (`speech`), its
mouth driven by the speech's own loudness, at 25 fps with 640 audio samples per frame.

    data = SyntheticTalkingFaces("train", seed=0)
    clip = data[17]     # Clip(frames (125, 128, 128, 3) uint8, audio (80000,) float32 16 kHz, opening (125,), ...)

Preview clips as MP4 with their audio, plus a JSON summary:

    python -m hallo_rt.train.dataset --split heldout --clips 3 --out previews/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..runtime.frame import AUDIO_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from .faces import FaceIdentity, MouthState, Pose, measure_opening, random_poses, render
from .speech import PITCHES, RATES, VOICES, mouth_track, mouth_width_track, sentences, synthesize

HELDOUT_IDENTITIES = 64
"""Identity indices [0, 64) are the held-out people; training draws from [64, 64 + train_identities)."""

HELDOUT_SENTENCE_SHARE = 10
"""One sentence text in 10 (by a hash of the text) is held out; see `is_heldout_sentence`."""

_SPLIT_CODES = {"train": 0, "heldout": 1}
_IDENTITY_STREAM = 1  # keeps the identity generators apart from the clip generators of the same seed


def is_heldout_sentence(text: str) -> bool:
    """True for the texts reserved for the held-out split: those whose BLAKE2b hash is 0 mod
    HELDOUT_SENTENCE_SHARE. A property of the text alone, so no seed, index or sampling order can leak a
    held-out sentence into training."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_SENTENCE_SHARE == 0


def identity_for_index(seed: int, index: int) -> FaceIdentity:
    """The person with this identity index under this seed (indices below HELDOUT_IDENTITIES are held out)."""
    return FaceIdentity.sample(np.random.default_rng([seed, _IDENTITY_STREAM, index]))


@dataclass(frozen=True)
class ClipSpec:
    """What a clip will show and say, drawn from its seed without rendering or synthesising anything."""

    index: int
    identity_index: int
    identity: FaceIdentity
    sentence: str
    voice: str
    rate: int
    pitch: int
    lead_seconds: float
    """Silence before the speech starts."""
    motion_seed: int
    """Seeds the clip's head motion and blinks."""


@dataclass(frozen=True)
class Clip:
    """One rendered clip: T frames at 25 fps and the T * 640 audio samples they cover (T = ceil(samples / 640);
    the audio is zero-padded to whole frames)."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB."""
    audio: np.ndarray
    """(T * 640,) float32 mono at 16 kHz in [-1, 1]."""
    opening: np.ndarray
    """(T,) float32 in [0, 1]: the ground-truth mouth opening (`speech.mouth_track` of the audio)."""
    width: np.ndarray
    """(T,) float32 in [0, 1]: the mouth width (`speech.mouth_width_track`)."""
    identity: FaceIdentity
    poses: tuple[Pose, ...]
    spec: ClipSpec


class SyntheticTalkingFaces:
    """Deterministic synthetic talking-face clips; `dataset[i]` renders clip i of the split.

    Everything about clip i comes from the generator seeded with (seed, split, i), so clips can be built in any
    order, on any worker. Train and held-out never share a person or a sentence:
      * people: identity indices [0, HELDOUT_IDENTITIES) are held out, training uses the next
        `train_identities` indices; index k is always the same person under one seed (`identity_for_index`);
      * sentences: a text is held out iff its hash says so (`is_heldout_sentence`, one in ten); each split
        draws sentences until it gets one of its own, so the same text can never reach both splits.
    Voices, rates and pitches are shared: they are conditions, not content to generalise to.

    `clip_seconds`: every clip lasts exactly this long (silence, then speech cut at the end if it runs over,
    then silence), or None for the natural length (lead silence + sentence + 0.3 s).
    """

    def __init__(self, split: Literal["train", "heldout"], seed: int = 0, size: int = 128,
                 clip_seconds: float | None = 5.0, length: int | None = None, train_identities: int = 4096):
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if clip_seconds is not None and not clip_seconds >= 1.0:
            raise ValueError(f"clip_seconds must be >= 1.0 (or None for the natural length), got {clip_seconds!r}")
        self.split, self.seed, self.size, self.clip_seconds = split, int(seed), int(size), clip_seconds
        self.length = length if length is not None else (10_000 if split == "train" else 200)
        self.train_identities = int(train_identities)

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not -self.length <= index < self.length:
            raise IndexError(f"clip index {index!r} out of range for {self.length} {self.split} clips")
        return int(index) % self.length

    def identity_indices(self) -> range:
        """The identity indices this split draws from."""
        if self.split == "heldout":
            return range(HELDOUT_IDENTITIES)
        return range(HELDOUT_IDENTITIES, HELDOUT_IDENTITIES + self.train_identities)

    def spec(self, index: int) -> ClipSpec:
        """Clip `index`'s person, sentence, voice and timing, without rendering (cheap)."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        people = self.identity_indices()
        identity_index = people[int(rng.integers(len(people)))]
        want_heldout = self.split == "heldout"
        while True:  # one draw in ten for held-out, nine in ten for train: a few draws at most, typically
            sentence = sentences(rng, 1)[0]
            if is_heldout_sentence(sentence) == want_heldout:
                break
        return ClipSpec(
            index=index, identity_index=identity_index, identity=identity_for_index(self.seed, identity_index),
            sentence=sentence, voice=VOICES[int(rng.integers(len(VOICES)))],
            rate=int(rng.integers(RATES[0], RATES[1] + 1)), pitch=int(rng.integers(PITCHES[0], PITCHES[1] + 1)),
            lead_seconds=float(rng.uniform(0.1, 0.5)), motion_seed=int(rng.integers(2**31)),
        )

    def audio(self, spec: ClipSpec) -> np.ndarray:
        """The clip's audio, padded with silence to whole frames: (T * 640,) float32."""
        speech = synthesize(spec.sentence, spec.voice, spec.rate, spec.pitch)
        lead = int(round(spec.lead_seconds * AUDIO_RATE))
        if self.clip_seconds is None:
            total = lead + speech.size + int(0.3 * AUDIO_RATE)
        else:
            total = int(round(self.clip_seconds * AUDIO_RATE))
        frames = math.ceil(total / SAMPLES_PER_FRAME)
        audio = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
        kept = speech[:max(total - lead, 0)]
        audio[lead:lead + kept.size] = kept
        return audio

    def __getitem__(self, index: int) -> Clip:
        spec = self.spec(index)
        audio = self.audio(spec)
        opening = mouth_track(audio).astype(np.float32)
        width = mouth_width_track(audio).astype(np.float32)
        # Head motion is scaled with the frame so a pose means the same thing at every resolution.
        poses = random_poses(np.random.default_rng(spec.motion_seed), opening.size, VIDEO_FPS,
                             motion_px=2.5 * self.size / 128)
        frames = np.stack([render(spec.identity, MouthState(float(o), float(w)), pose, self.size)
                           for o, w, pose in zip(opening, width, poses)])
        return Clip(frames=frames, audio=audio, opening=opening, width=width, identity=spec.identity,
                    poses=tuple(poses), spec=spec)


# ------------------------------------------------------------------------------------------------- preview


def write_preview(clip: Clip, path: Path) -> None:
    """The clip as an MP4 (H.264 + AAC) through the runtime's own sink."""
    from ..runtime.frame import Frame
    from ..runtime.sinks import Mp4Sink

    pcm = np.clip(np.rint(clip.audio * 32767.0), -32768, 32767).astype(np.int16)
    with Mp4Sink(path) as sink:
        for i, image in enumerate(clip.frames):
            sink.write(Frame(i, image, pcm[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME], idle=False))


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def main(argv: list[str] | None = None) -> int:
    """`python -m hallo_rt.train.dataset`: write MP4 previews of some clips and a JSON summary of them."""
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.dataset",
                                     description="Preview synthetic talking-face clips as MP4 with audio.")
    parser.add_argument("--split", choices=sorted(_SPLIT_CODES), default="heldout")
    parser.add_argument("--clips", type=int, default=3, help="how many clips, from --start on")
    parser.add_argument("--start", type=int, default=0, help="index of the first clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="0 for each sentence's natural length")
    parser.add_argument("--out", type=Path, required=True, help="folder for clip_NNNN.mp4 and summary.json")
    args = parser.parse_args(argv)
    data = SyntheticTalkingFaces(args.split, seed=args.seed, size=args.size,
                                 clip_seconds=args.clip_seconds or None, length=args.start + args.clips)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"split": args.split, "seed": args.seed, "size": args.size, "clip_seconds": data.clip_seconds,
               "fps": VIDEO_FPS, "sample_rate": AUDIO_RATE, "clips": []}
    for index in range(args.start, args.start + args.clips):
        clip = data[index]
        name = f"clip_{index:04d}.mp4"
        write_preview(clip, args.out / name)
        measured = np.array([measure_opening(f, clip.identity, p) for f, p in zip(clip.frames, clip.poses)])
        spec = clip.spec
        summary["clips"].append({
            "file": name, "index": index, "identity_index": spec.identity_index, "sentence": spec.sentence,
            "voice": spec.voice, "rate": spec.rate, "pitch": spec.pitch, "frames": int(clip.frames.shape[0]),
            "seconds": clip.audio.size / AUDIO_RATE, "mean_opening": float(clip.opening.mean()),
            "blinks": int(sum(p.blink > 0.5 and (i == 0 or clip.poses[i - 1].blink <= 0.5)
                              for i, p in enumerate(clip.poses))),
            "measured_vs_true_opening_pearson": _pearson(measured, clip.opening),
        })
        print(f"{name}: {spec.sentence!r} ({spec.voice}, {spec.rate} wpm, pitch {spec.pitch})", file=sys.stderr)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
