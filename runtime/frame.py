"""What a streaming session emits: one video frame with its place on the audio timeline.

Frame i shows video time i / fps and is driven by the audio samples [i * rate / fps, (i + 1) * rate / fps):
at 25 fps and 16 kHz, 640 samples. The session re-emits those samples with the frame, so a consumer that
plays `frame.audio` back to back, and shows `frame.image` at `frame.pts`, is in sync by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIDEO_FPS = 25
"""Frames per second of every stream (Hallo3's rate)."""

AUDIO_RATE = 16000
"""Sample rate of the audio timeline and of `Frame.audio` (wav2vec2's rate)."""

SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS
"""640 audio samples per video frame: an integer, so frame boundaries fall exactly on samples (no drift)."""


@dataclass(frozen=True)
class Frame:
    """One output frame."""

    index: int
    """0, 1, 2, ... over the whole stream (idle frames included)."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB."""

    audio: np.ndarray
    """(SAMPLES_PER_FRAME,) int16 mono at AUDIO_RATE: the samples this frame covers (zeros when idle)."""

    idle: bool = False
    """True when no pushed audio drove this frame (silence was inserted to keep the stream at video rate)."""

    @property
    def pts(self) -> float:
        """Presentation time in seconds on the audio timeline: index / VIDEO_FPS."""
        return self.index / VIDEO_FPS

    @property
    def audio_start(self) -> int:
        """Index of this frame's first sample on the audio timeline."""
        return self.index * SAMPLES_PER_FRAME
