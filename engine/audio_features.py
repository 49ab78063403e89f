"""Hallo3's audio features: 16 kHz waveform -> (frames, window, layers, dim) for the denoiser.

The steps and where they come from (hallo3 repository, `hallo3/`):
  1. normalise the utterance to zero mean, unit variance (`Wav2Vec2FeatureExtractor`, do_normalize=True;
     `sgm/utils/audio_processor.py` L104);
  2. count video frames, seq_len = ceil(samples / 16000 * 25) (L105);
  3. optionally zero-pad so seq_len is a multiple of the clip length (L110-112, `hallo3_padding`);
  4. wav2vec2 with the CNN features resampled to seq_len steps (L115-116, `sgm/models/wav2vec.py` L75-77);
  5. stack the outputs of every transformer layer, hidden_states[1:] (L121-122);
  6. a window of +-2 frames around each frame, clamped at the ends (`sample_video.py` L161-171).
Vocal separation and resampling to 16 kHz (L88-103) happen before this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .validation import InputError
from .wav2vec2 import AUDIO_PRESETS, Wav2Vec2Model
from .weights.wav2vec2_format import load_audio_encoder

SAMPLE_RATE = 16000
"""Rate wav2vec2 was trained at; the CNN's 320-sample hop gives 50 frames per second at it."""

VIDEO_FPS = 25
"""Hallo3's video frame rate (`sample_video.py` passes fps=25 to `AudioProcessor.preprocess`)."""

NORM_EPS = 1e-7
"""Variance epsilon of transformers' `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`."""


class AudioError(InputError):
    """A waveform the audio encoder cannot take (wrong shape or dtype, empty, non-finite, too short)."""


def _as_waveform(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 1-D float32 CPU tensor, or AudioError saying what is wrong."""
    if isinstance(waveform, np.ndarray):
        if waveform.dtype.kind != "f":
            raise AudioError(
                f"waveform has dtype {waveform.dtype}; expected floating-point samples (int16 PCM: divide by 32768)"
            )
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise AudioError(f"waveform must be a torch.Tensor or numpy.ndarray, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise AudioError(
            f"waveform has dtype {waveform.dtype}; expected floating-point samples (int16 PCM: divide by 32768)"
        )
    if waveform.ndim != 1:
        raise AudioError(
            f"waveform must be 1-D mono samples, got shape {tuple(waveform.shape)}; mix the channels down "
            f"(e.g. x.mean(dim=0)) and pass one utterance at a time"
        )
    if waveform.numel() == 0:
        raise AudioError("waveform is empty")
    # transformers casts to float32 before normalising; so do we, so the rounding of the input matches.
    waveform = waveform.detach().to(device="cpu", dtype=torch.float32)
    bad = ~torch.isfinite(waveform)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise AudioError(
            f"waveform has {int(bad.sum())} non-finite samples (NaN or inf), the first at index {first}"
        )
    return waveform


def normalize_waveform(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-7) over the last dim (population variance), as
    `Wav2Vec2FeatureExtractor(do_normalize=True)` does per utterance. Returns float32.

    The statistics are taken in float64 (why: numpy's float32 pairwise sums and torch's differ in the last
    bits; float64 keeps both within one float32 rounding of the exact value)."""
    x64 = x.to(torch.float32).double()
    mean = x64.mean(dim=-1, keepdim=True)
    var = x64.var(dim=-1, unbiased=False, keepdim=True)
    return ((x64 - mean) / torch.sqrt(var + NORM_EPS)).to(torch.float32)


def video_frame_count(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Video frames covering `num_samples` of audio: ceil(num_samples / sample_rate * fps).

    Computed exactly in integers, ceil(num_samples * fps / sample_rate). Hallo3 evaluates the float
    expression (`audio_processor.py` L105), which overshoots by one frame for some exact multiples of
    sample_rate / fps samples: 4480 samples is 7 frames exactly, but 4480 / 16000 * 25 = 7.000000000000001
    gives 8 (925 such lengths below 10 minutes at 16 kHz, all multiples of 640). We use the exact count."""
    if num_samples < 0 or sample_rate <= 0 or fps <= 0:
        raise ValueError(f"need num_samples >= 0 and positive rates, got {num_samples}, {sample_rate}, {fps}")
    return -(-num_samples * fps // sample_rate)


def hallo3_padding(
    num_samples: int, clip_length: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS
) -> tuple[int, int]:
    """(zero samples appended, padded frame count) of Hallo3's clip padding (`audio_processor.py` L110-112).

    With seq_len = video_frame_count(num_samples) and r = seq_len % clip_length, when r != 0 Hallo3
      * appends (clip_length - r) * (sample_rate // fps) zeros to the *normalised* waveform (so the padding
        is the utterance's mean level, and it does not change the normalisation statistics, L104 vs L111);
      * raises seq_len to the next multiple of clip_length (L112).
    The encoder then sees the padded waveform, and its CNN features are interpolated to the padded seq_len
    (L116): the padding changes the features of the real frames too (through the interpolation grid, the
    positional conv and attention), so reproducing Hallo3 means padding before the encoder, as here.
    The padded frames are kept: `sample_video.py` L271-272 windows the padded sequence (so the clamping
    happens at the padded end) and generates clips over it; the unpadded seq_len, returned alongside as
    `audio_length` (L106, L126), only trims the finished video (`sample_video.py` L427). r == 0: no padding.
    sample_rate // fps floors when the rate is not a multiple of fps, as Hallo3's `16000 // 25.0` does.
    """
    if clip_length <= 0:
        raise ValueError(f"clip_length must be positive, got {clip_length}")
    frames = video_frame_count(num_samples, sample_rate, fps)
    remainder = frames % clip_length
    if remainder == 0:
        return 0, frames
    missing = clip_length - remainder
    return missing * (sample_rate // fps), frames + missing


def window_features(features: torch.Tensor, window: int = 5) -> torch.Tensor:
    """(frames, ...) -> (frames, window, ...): frames i - window//2 .. i + window//2 for each frame i, indices
    clamped to [0, frames - 1] (`process_audio_emb`, `sample_video.py` L161-171)."""
    if window <= 0 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    frames = features.shape[0]
    radius = window // 2
    offsets = torch.arange(-radius, radius + 1, device=features.device)
    index = (torch.arange(frames, device=features.device)[:, None] + offsets).clamp(0, frames - 1)  # (F, W)
    return features[index]  # (F, W, ...)


class AudioFeatureExtractor:
    """16 kHz waveform -> Hallo3 audio features (frames, window, layers, dim), e.g. (F, 5, 12, 768) for
    wav2vec2-base, with frames = video_frame_count(samples) (or its clip-padded count).

    The whole utterance goes through the encoder at once, as in Hallo3: the positional conv, attention and
    the interpolation grid all see the full sequence, so chunking would change the features. Cost and memory
    grow with length (attention is quadratic in frames: 1 minute = 1500 frames).
    """

    def __init__(
        self,
        encoder: Wav2Vec2Model,
        sample_rate: int = SAMPLE_RATE,
        fps: int = VIDEO_FPS,
        window: int = 5,
        normalize: bool = True,
    ) -> None:
        if window <= 0 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        self.encoder = encoder.eval()
        self.sample_rate = sample_rate
        self.fps = fps
        self.window = window
        self.normalize = normalize

    @classmethod
    def from_checkpoint(
        cls,
        path_or_preset: str | Path,
        dtype: torch.dtype | str = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **kwargs,
    ) -> "AudioFeatureExtractor":
        """Load the encoder with `load_audio_encoder`; a Hugging Face folder's `preprocessor_config.json`
        supplies do_normalize and sampling_rate (Hallo3 reads the same file, `audio_processor.py` L70)."""
        encoder = load_audio_encoder(path_or_preset, dtype=dtype, device=device, seed=seed)
        preprocessor = Path(path_or_preset) / "preprocessor_config.json"
        is_preset = isinstance(path_or_preset, str) and path_or_preset in AUDIO_PRESETS
        if not is_preset and preprocessor.is_file():
            raw = json.loads(preprocessor.read_text())
            kwargs.setdefault("normalize", bool(raw.get("do_normalize", True)))
            kwargs.setdefault("sample_rate", int(raw.get("sampling_rate", SAMPLE_RATE)))
        return cls(encoder, **kwargs)

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_layers

    def prepare(self, waveform: torch.Tensor | np.ndarray, clip_length: int | None = None) -> tuple[torch.Tensor, int]:
        """(encoder input (samples,) float32, frame count to interpolate to): validation, normalisation,
        frame count and Hallo3's clip padding."""
        x = _as_waveform(waveform)
        frames = video_frame_count(x.numel(), self.sample_rate, self.fps)
        if self.normalize:
            x = normalize_waveform(x)
        if clip_length is not None:
            pad, frames = hallo3_padding(x.numel(), clip_length, self.sample_rate, self.fps)
            x = F.pad(x, (0, pad))  # zeros after normalisation, as Hallo3 L111
        needed = self.encoder.config.receptive_field
        if x.numel() < needed:
            raise AudioError(
                f"waveform has {x.numel()} samples; the wav2vec2 CNN needs at least {needed} "
                f"({1000 * needed / self.sample_rate:.1f} ms at {self.sample_rate} Hz) for one frame"
            )
        return x, frames

    def encode(self, waveform: torch.Tensor | np.ndarray, clip_length: int | None = None) -> torch.Tensor:
        """Per-frame features before windowing, (frames, layers, dim): Hallo3's `audio_emb` (L121-122)."""
        x, frames = self.prepare(waveform, clip_length)
        encoder = self.encoder
        with torch.no_grad():
            states = encoder(x[None].to(device=encoder.device, dtype=encoder.dtype), num_frames=frames)
        # hidden_states[0] is the pre-transformer embedding, which Hallo3 drops.
        return torch.stack(states[1:], dim=2)[0]  # (1, F, L, D) -> (F, L, D)

    def __call__(
        self,
        waveform: torch.Tensor | np.ndarray,
        clip_length: int | None = None,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """(frames, window, layers, dim) on the encoder's device and dtype.

        `waveform`: 1-D float samples at `self.sample_rate` (pass `sample_rate` to have that checked).
        `clip_length`: Hallo3's padding to a multiple of this many frames (49 in Hallo3; see
        `hallo3_padding`); None, the default, pads nothing and gives video_frame_count(samples) frames.
        """
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise AudioError(
                f"waveform is at {sample_rate} Hz but the audio encoder takes {self.sample_rate} Hz; resample first"
            )
        return window_features(self.encode(waveform, clip_length), self.window)

