"""The streaming runtime's audio features, differentiable, for training the audio encoder with the denoiser.

`runtime.streaming_features.StreamingAudioFeatures` computes a stream's features in blocks of 4 frames, each
from its own bounded window of audio (2 s of context, 240 ms of lookahead) normalised by the running moments
of the stream so far. The denoiser is trained on exactly those features (not on whole-clip ones), so what it
learns is what a live session feeds it; `tests/test_train_recipe.py` checks the two agree.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.audio_features import NORM_EPS, video_frame_count
from ..runtime.frame import SAMPLES_PER_FRAME
from ..runtime.streaming_features import DEFAULT_BLOCK_FRAMES, DEFAULT_CONTEXT_FRAMES, DEFAULT_LOOKAHEAD_FRAMES

RADIUS = 2  # Hallo3's +-2 frame window


def block_window(block: int, block_frames: int = DEFAULT_BLOCK_FRAMES, context: int = DEFAULT_CONTEXT_FRAMES,
                 lookahead: int = DEFAULT_LOOKAHEAD_FRAMES) -> tuple[int, int]:
    """(first frame, end sample) of block `block`'s encoder window in a stream that has not ended."""
    first = max(0, block * block_frames - RADIUS - context)
    end = ((block + 1) * block_frames + RADIUS + lookahead) * SAMPLES_PER_FRAME
    return first, end


def needed_samples(end_frame: int) -> int:
    """Audio a stream must hold for the blocks up to frame `end_frame` (a multiple of 4) to be computed."""
    return block_window(end_frame // DEFAULT_BLOCK_FRAMES - 1)[1]  # the end does not depend on the context


def normalized_window(audio: np.ndarray, first: int, end: int) -> np.ndarray:
    """audio[first * 640: end] normalised by the mean and variance of audio[:end] ("running" moments)."""
    prefix = audio[:end].astype(np.float64)
    mean, var = prefix.mean(), prefix.var()
    return ((prefix[first * SAMPLES_PER_FRAME:] - mean) / np.sqrt(var + NORM_EPS)).astype(np.float32)


def chunk_features(encoder, audios: list[np.ndarray], starts: list[int], frames: int,
                   context: int = DEFAULT_CONTEXT_FRAMES) -> torch.Tensor:
    """Streaming features of frames [start, start + frames) of each stream (start and frames multiples of 4):
    (B, frames, 5, layers, dim), with gradients into `encoder` (unless called under no_grad). `context`: the
    session's `context_frames`. Windows of equal length run as one batch."""
    B = len(audios)
    blocks_per = frames // DEFAULT_BLOCK_FRAMES
    jobs: dict[int, list[tuple[int, int, int, np.ndarray]]] = {}
    for b, (audio, start) in enumerate(zip(audios, starts)):
        for k in range(blocks_per):
            block = start // DEFAULT_BLOCK_FRAMES + k
            first, end = block_window(block, context=context)
            if end > audio.size:
                raise ValueError(f"stream {b} has {audio.size} samples; block {block} needs {end}")
            window = normalized_window(audio, first, end)
            jobs.setdefault(window.size, []).append((b, k, first, window))
    out = [[None] * blocks_per for _ in range(B)]
    offsets = torch.arange(-RADIUS, RADIUS + 1)
    for size, items in jobs.items():
        n_frames = video_frame_count(size)
        x = torch.from_numpy(np.stack([w for *_, w in items]))
        states = encoder(x, num_frames=n_frames)
        per_frame = torch.stack(states[1:], dim=2)  # (n, frames, layers, dim)
        for row, (b, k, first, _) in enumerate(items):
            block = starts[b] // DEFAULT_BLOCK_FRAMES + k
            wanted = torch.arange(block * DEFAULT_BLOCK_FRAMES, (block + 1) * DEFAULT_BLOCK_FRAMES)
            index = (wanted[:, None] + offsets).clamp(0, first + n_frames - 1) - first
            out[b][k] = per_frame[row][index]
    return torch.stack([torch.cat(blocks) for blocks in out])
