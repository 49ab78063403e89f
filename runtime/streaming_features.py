"""Hallo3 audio features for a stream: 16 kHz audio appended in pieces -> per-frame features, each computed
from a bounded window of audio with a fixed lookahead.

Whole-file features (`engine.audio_features.AudioFeatureExtractor`) run wav2vec2 once over the utterance, so
every frame's features depend on all of the audio. Here frames are produced in blocks of `block_frames`; the
encoder sees, for block k (frames kB .. kB + B - 1, B = block_frames, r = window // 2 = 2):

    frames [kB - r - context_frames,  (k+1)B + r + lookahead_frames)     clamped to the stream

Windows start and end on frame boundaries (640 samples), so wav2vec2's 50 Hz CNN frames 0, 2, 4, ... of a
window are exactly video frames a, a+1, ... of the stream, and Hallo3's align_corners interpolation to 25 fps
picks them without mixing neighbours, as it does for a whole file of whole frames. The block's frames are the
encoder's frames, then Hallo3's +-r window is taken inside the block's encoder window, clamped at the true
start (frame 0) and, after `end()`, at the true end, like `window_features` on a whole file. A block's features
depend only on the audio, never on how it was appended or taken.

Lookahead: block k can be computed once audio up to the end of frame (k+1)B - 1 + r + lookahead_frames has
arrived: the last frame of a block waits (r + lookahead_frames) * 40 ms, its first frame B - 1 frames more.
When every window covers the whole stream (context and lookahead at least the stream's length) the features
equal whole-file features.

Normalisation (when the extractor normalises): Hallo3 normalises the whole utterance to zero mean and unit
variance, which a stream cannot. "running": mean and variance of all samples from the stream start to the end
of the block's window (float64 running sums, constant memory); "window": of the block's window alone.
`benchmarks/audio_window.py` measures both against whole-file features; the defaults come from it. For
wav2vec2-base and `tiny` the two agree to 4 decimals: their first CNN layer is a bias-free convolution followed
by a GroupNorm over time, which removes any affine change of the input; the choice matters for "layer"-norm
encoders (wav2vec2-large-lv60).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from hallo_rt.engine.audio_features import NORM_EPS, AudioError, normalize_waveform, video_frame_count

DEFAULT_CONTEXT_FRAMES = 50
"""Audio before a block's +-2 window: 2 s. Measured (`benchmarks/results/audio-window.json`, random-weight
`tiny`, 240 ms lookahead): mean cosine to whole-file features 0.80 / 0.92 / 0.94 / 0.96 / 0.97 with 0 / 0.5 /
1 / 2 / 4 s of context, while the audio encoded per second of stream grows as (context + 10 frames) / 4: 2 s
is past the knee at half the cost of 4 s."""

DEFAULT_LOOKAHEAD_FRAMES = 4
"""Audio after a block's +-2 window: 160 ms, 240 ms of lookahead in all. Measured as above with 2 s of
context: mean cosine 0.914 / 0.940 / 0.960 / 0.971 / 0.976 for 80 / 160 / 240 / 400 / 720 ms in all (min over
frames 0.37 / 0.60 / 0.79 / 0.82 / 0.89): the big gains stop at 240 ms."""

DEFAULT_BLOCK_FRAMES = 4
"""Frames per encoder run: one latent frame. A session whose chunks are whole blocks gets the same latency
from any block length (a chunk waits for its last frame's lookahead anyway), so it should pass its chunk
length in video frames: fewer encoder runs and more lookahead for the early frames (mean cosine 0.972 with
16-frame blocks vs 0.960 with 4 and 0.947 with 1)."""


class _RunningMoments:
    """Count, mean and sum of squared deviations of a growing sequence, merged segment by segment in float64
    (Chan, Golub & LeVeque's pairwise update: no cancellation, unlike sum(x^2) - sum(x)^2 / n)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, segment: np.ndarray) -> None:
        if segment.size == 0:
            return
        x = segment.astype(np.float64)
        mean_b = float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        count = self.count + x.size
        delta = mean_b - self.mean
        self.mean += delta * x.size / count
        self.m2 += m2_b + delta * delta * self.count * x.size / count
        self.count = count

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / sqrt(var + 1e-7), population variance, as `normalize_waveform`; float32 out."""
        var = self.m2 / self.count
        return ((x.astype(np.float64) - self.mean) / np.sqrt(var + NORM_EPS)).astype(np.float32)


class StreamingAudioFeatures:
    """Audio features for a stream, frame by frame, from bounded windows (see the module docstring).

        features = StreamingAudioFeatures(AudioFeatureExtractor.from_checkpoint("tiny"))
        features.append(samples)                     # float 16 kHz mono, any number of times, any size
        ready = features.available_frames - features.frames_taken
        emb = features.take(ready)                   # (ready, window, layers, dim) on the encoder's device
        features.end()                               # no more audio: every frame becomes available

    `extractor`: an `AudioFeatureExtractor` (torch or graph-backed encoder); only its `encoder(x[None],
    num_frames=F)`, `normalize`, `window`, `sample_rate` and `fps` are used.
    """

    def __init__(
        self,
        extractor,
        lookahead_frames: int = DEFAULT_LOOKAHEAD_FRAMES,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
        normalization: Literal["running", "window"] = "running",
    ) -> None:
        for name, value, low in (("lookahead_frames", lookahead_frames, 0), ("context_frames", context_frames, 0),
                                 ("block_frames", block_frames, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if normalization not in ("running", "window"):
            raise ValueError(f"normalization must be 'running' or 'window', got {normalization!r}")
        if extractor.sample_rate % extractor.fps:
            raise ValueError(
                f"the extractor's {extractor.sample_rate} Hz is not a whole number of samples per frame at "
                f"{extractor.fps} fps; frame-aligned windows need one"
            )
        self.extractor = extractor
        self.lookahead_frames = lookahead_frames
        self.context_frames = context_frames
        self.block_frames = block_frames
        self.normalization = normalization
        self.samples_per_frame = extractor.sample_rate // extractor.fps
        self.radius = extractor.window // 2
        self._receptive_field = extractor.encoder.config.receptive_field
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # stream index of _buffer[0]
        self._appended = 0
        self._ended = False
        self._next_block = 0
        self._pending: torch.Tensor | None = None  # computed, not yet taken: (m, window, layers, dim)
        self._frames_taken = 0
        self._moments = _RunningMoments()
        self._moments_end = 0  # stream index up to which _moments has seen the samples

    @property
    def lookahead_ms(self) -> float:
        """Audio a block's last frame waits for after its own end: (window // 2 + lookahead_frames) frames."""
        return (self.radius + self.lookahead_frames) * 1000 / self.extractor.fps

    @property
    def frames_taken(self) -> int:
        """Frames returned by `take` so far."""
        return self._frames_taken

    @property
    def total_frames(self) -> int | None:
        """ceil(samples / 640) after `end()`; None while audio may still come."""
        return video_frame_count(self._appended, self.extractor.sample_rate, self.extractor.fps) \
            if self._ended else None

    @property
    def available_frames(self) -> int:
        """Frames 0 .. available_frames - 1 can be produced now (`take(available_frames - frames_taken)`):
        whole blocks whose window's lookahead has arrived, or every frame after `end()`."""
        if self._ended:
            return self.total_frames
        frames_in = self._appended // self.samples_per_frame
        blocks = max(0, (frames_in - self.radius - self.lookahead_frames) // self.block_frames)
        return blocks * self.block_frames

    @property
    def samples_buffered(self) -> int:
        """Audio samples held: the next window's context onwards (what bounds this object's memory)."""
        return self._buffer.size

    def append(self, samples: np.ndarray | torch.Tensor) -> None:
        """Add 1-D float mono samples at the extractor's rate (16 kHz); any length, 0 included."""
        if self._ended:
            raise AudioError("audio appended after end(); start a new StreamingAudioFeatures for a new stream")
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        if not isinstance(samples, np.ndarray) or samples.dtype.kind != "f" or samples.ndim != 1:
            desc = f"{samples.dtype} array of shape {samples.shape}" if isinstance(samples, np.ndarray) \
                else type(samples).__name__
            raise AudioError(f"append takes 1-D float mono samples at {self.extractor.sample_rate} Hz, got {desc}")
        bad = ~np.isfinite(samples)
        if bad.any():
            raise AudioError(
                f"samples have {int(bad.sum())} non-finite values (NaN or inf), the first at index "
                f"{int(np.argmax(bad))}; nothing was appended"
            )
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32)])
        self._appended += samples.size

    def end(self) -> None:
        """No more audio: the last frames are computed with the encoder seeing the real end of the stream."""
        self._ended = True

    def take(self, n: int) -> torch.Tensor:
        """The next n frames' features, (n, window, layers, dim) on the encoder's device and dtype.
        n must not exceed `available_frames - frames_taken`."""
        ready = self.available_frames - self._frames_taken
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"take(n) needs an integer n >= 0, got {n!r}")
        if n > ready:
            more = "the stream has ended" if self._ended else \
                f"the rest waits for {self.lookahead_ms:.0f} ms of lookahead audio or end()"
            raise ValueError(f"take({n}) but only {ready} frames are available ({more})")
        while (0 if self._pending is None else self._pending.shape[0]) < n:
            block = self._compute_block(self._next_block)
            self._next_block += 1
            self._pending = block if self._pending is None else torch.cat([self._pending, block])
        if n == 0:
            encoder = self.extractor.encoder
            shape = (0, self.extractor.window, self.extractor.num_layers, encoder.config.hidden_size)
            return torch.zeros(shape, device=encoder.device, dtype=encoder.dtype)
        out, self._pending = self._pending[:n], self._pending[n:]
        self._frames_taken += n
        return out

    def _window(self, block: int) -> tuple[int, int]:
        """(first frame, end sample) of block k's encoder window, clamped to the stream (see module docs)."""
        spf = self.samples_per_frame
        first = max(0, block * self.block_frames - self.radius - self.context_frames)
        end = ((block + 1) * self.block_frames + self.radius + self.lookahead_frames) * spf
        if self._ended:
            end = min(end, self._appended)
            if end - first * spf < self._receptive_field:
                # A short final window (e.g. no context) reaches back until the CNN has one frame.
                first = max(0, (end - self._receptive_field) // spf)
        return first, end

    def _compute_block(self, block: int) -> torch.Tensor:
        """Features of block k's frames, (frames, window, layers, dim); drops samples no later block needs."""
        spf = self.samples_per_frame
        first, end = self._window(block)
        samples = self._buffer[first * spf - self._buffer_start: end - self._buffer_start]
        if samples.size < self._receptive_field:
            raise AudioError(
                f"the stream has {self._appended} samples; the wav2vec2 CNN needs at least "
                f"{self._receptive_field} for one frame"
            )
        x = self._normalized(samples, end)
        frames = video_frame_count(samples.size, self.extractor.sample_rate, self.extractor.fps)
        encoder = self.extractor.encoder
        with torch.no_grad():
            states = encoder(x[None].to(device=encoder.device, dtype=encoder.dtype), num_frames=frames)
        # hidden_states[0] (the transformer input) is dropped, as Hallo3 does.
        per_frame = torch.stack(states[1:], dim=2)[0]  # (frames, layers, dim), stream frames first ..
        last = block * self.block_frames + self.block_frames
        if self._ended:
            last = min(last, self.total_frames)
        wanted = torch.arange(block * self.block_frames, last, device=per_frame.device)  # stream frame indices
        offsets = torch.arange(-self.radius, self.radius + 1, device=per_frame.device)
        # Clamping to the window's first/last frame only binds at the true start and the true end.
        index = (wanted[:, None] + offsets).clamp(0, first + frames - 1) - first  # (n, window)
        self._drop_before(max(0, (block + 1) * self.block_frames - self.radius - self.context_frames - 1) * spf)
        return per_frame[index]  # (n, window, layers, dim)

    def _normalized(self, samples: np.ndarray, end: int) -> torch.Tensor:
        """The window's samples, normalised as `normalization` says (or untouched), as a float32 tensor."""
        if not self.extractor.normalize:
            return torch.from_numpy(samples.copy())
        if self.normalization == "window":
            return normalize_waveform(torch.from_numpy(samples))
        if end > self._moments_end:
            self._moments.add(self._buffer[self._moments_end - self._buffer_start: end - self._buffer_start])
            self._moments_end = end
        return torch.from_numpy(self._moments.normalize(samples))

    def _drop_before(self, sample: int) -> None:
        """Forget samples before stream index `sample`: one frame before the next window, as a short final
        window may reach back that far. The running moments have already seen them (a window's end lies
        past the next window's start)."""
        drop = sample - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop
