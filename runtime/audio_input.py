"""Push-side audio input: PCM in any common layout and sample rate -> float32 mono at 16 kHz, in pieces.

    converter = PcmConverter()
    for pcm in pieces:                       # int16 or float PCM, (n,) mono or (n, 2) interleaved stereo
        out = converter.push(pcm, 44100)     # float32 (m,) at 16 kHz: what became available (may be empty)
    out = converter.flush()                  # the tail; the converter can then start a new stream

Conventions
  * Layout: (n,) mono or (n, channels) with channels 1 or 2, one row per sample instant, as soundfile reads
    and PyAV's packed formats (`frame.to_ndarray().reshape(-1, channels)`) give. Stereo is mixed down by the
    mean of the two channels. Planar (channels, n) arrays are refused, with a hint to transpose.
  * Scaling: int16 is divided by 32768 (so -32768 -> -1.0 exactly); float32/float64 are taken as [-1, 1].
  * Resampling (any integer rate 8000..192000 Hz): windowed-sinc polyphase filter, output sample n at input
    time n * rate / 16000 exactly (rational arithmetic: no drift however long the stream). A stream of N input
    samples gives exactly ceil(N * 16000 / rate) output samples after `flush()`, and the output does not
    depend on how the input was split into pushes (bit for bit). At 16 kHz the samples pass through unfiltered.
  * Bad input raises `AudioInputError` and leaves the converter as it was; float samples beyond [-1, 1] are
    clipped, counted in `clipped_samples` and warned about once (`ClippedAudioWarning`).

Filter: Kaiser-windowed sinc, 80 dB stopband from the lower Nyquist frequency (8 kHz when downsampling to
16 kHz), passband flat to 0.85 of it (6.8 kHz), 68 taps at the lower rate. Measured by
`benchmarks/audio_window.py` (results/audio-window.json): a 1 kHz sine at 0.5 amplitude comes out with an SNR
against the exact 16 kHz sine of 112.2 dB from 44.1 kHz, 104.6 dB from 48 kHz, 105.0 dB from 22.05 kHz and
94.9 dB from 8 kHz; 3 and 6 kHz pass at 0.0 dB; a 12 kHz tone (which would alias to 4 kHz) is at -102 dB from
44.1 kHz and -104 dB from 48 kHz; 400-1500x real time on one CPU core.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

OUTPUT_RATE = 16000
"""Rate of the audio timeline (`runtime.frame.AUDIO_RATE`, wav2vec2's rate)."""

MIN_RATE, MAX_RATE = 8000, 192000
"""Accepted input sample rates in Hz (telephone to studio)."""

STOPBAND_DB = 80.0
"""Stopband attenuation of the anti-aliasing filter: below 16-bit quantisation noise of speech at normal level."""

PASSBAND_EDGE = 0.85
"""Passband edge as a fraction of the lower Nyquist frequency; the transition band ends at Nyquist itself, so
nothing above it folds back below 8 kHz un-attenuated. 6.8 kHz at 16 kHz keeps all of speech's formants."""

LOW_RATE_HALF_TAPS = 34
"""Half-length of the filter in samples of the lower of the two rates. Kaiser's estimate for 80 dB over a
transition of 0.075 of the lower rate is 67 taps (Kaiser 1974; Oppenheim & Schafer eq. 7.63): rounded up."""

MAX_TABLE_ENTRIES = 1 << 21
"""Largest coefficient table (phases x taps, float64: 16 MB). Rates whose exact phase count (16000 / gcd) would
exceed it use the nearest of `MAX_TABLE_ENTRIES // taps` (>= 2500) phases: timing jitter under 1/5000 of an
input sample, no drift (the integer sample positions stay exact)."""

_BLOCK_OUTPUTS = 16384
"""Output samples filtered per step: bounds the temporary memory of one big push."""


class AudioInputError(ValueError):
    """PCM the converter cannot take: the message says what was wrong and what was expected."""


class ClippedAudioWarning(UserWarning):
    """Float samples beyond [-1, 1] were clipped (counted in `PcmConverter.clipped_samples`)."""


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16, x * 32768 rounded to nearest (ties to even) and clipped to
    [-32768, 32767]: the inverse of the converter's int16 scaling (int16 -> float -> int16 is exact)."""
    x = np.asarray(samples)
    if x.dtype.kind != "f":
        raise AudioInputError(f"to_int16 takes float samples in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise AudioInputError(f"to_int16 got {int((~np.isfinite(x)).sum())} non-finite samples (NaN or inf)")
    return np.clip(np.rint(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def _check_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioInputError(
            f"sample_rate must be an integer number of Hz, got {sample_rate!r} ({type(sample_rate).__name__})"
        )
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioInputError(f"sample_rate {int(sample_rate)} Hz is outside the supported {MIN_RATE}..{MAX_RATE} Hz")
    return int(sample_rate)


def _check_layout(pcm) -> np.ndarray:
    """The PCM as an (n, channels) array of its own dtype, or AudioInputError."""
    if not isinstance(pcm, np.ndarray):
        raise AudioInputError(
            f"pcm must be a numpy array, got {type(pcm).__name__}; for raw 16-bit bytes use "
            f"np.frombuffer(data, np.int16)"
        )
    if pcm.dtype not in (np.int16, np.float32, np.float64):
        raise AudioInputError(
            f"pcm has dtype {pcm.dtype}; expected int16 PCM or float32/float64 samples in [-1, 1]"
        )
    if pcm.ndim == 1:
        return pcm[:, None]
    if pcm.ndim != 2:
        raise AudioInputError(f"pcm has shape {pcm.shape}; expected (n,) mono or (n, channels) interleaved")
    if pcm.shape[1] not in (1, 2):
        hint = "; it looks planar (channels, n): pass pcm.T" if pcm.shape[0] in (1, 2) else ": mix down first"
        raise AudioInputError(
            f"pcm has shape {pcm.shape}: {pcm.shape[1]} channels, expected (n,) mono or (n, channels) with "
            f"1 or 2 channels{hint}"
        )
    return pcm


def _check_finite(pcm: np.ndarray) -> None:
    bad = ~np.isfinite(pcm)
    if bad.any():
        row, channel = np.argwhere(bad)[0]
        where = f"sample {row}" + (f" (channel {channel})" if pcm.shape[1] > 1 else "")
        raise AudioInputError(
            f"pcm has {int(bad.sum())} non-finite samples (NaN or inf), the first at {where}; "
            f"nothing from this push was kept"
        )


def _kaiser(u: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window at positions u in [-1, 1] (0 outside)."""
    inside = np.abs(u) <= 1.0
    arg = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    return np.where(inside, np.i0(beta * arg) / np.i0(beta), 0.0)


class _FilterBank:
    """Polyphase coefficients for rate_in -> rate_out: row p filters an output lying p / phases of an input
    sample after an input sample; `taps` = 2 * half coefficients over inputs q - half + 1 .. q + half."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g  # output n sits at input time n * down / up
        lower = min(rate_in, rate_out)
        # Filter widths in input samples: the filter is designed at the lower rate and stretched to the input's.
        half_width = LOW_RATE_HALF_TAPS * rate_in / lower
        self.half = math.ceil(half_width)
        self.taps = 2 * self.half
        self.phases = min(self.up, MAX_TABLE_ENTRIES // self.taps)
        cutoff = 0.5 * (1.0 + PASSBAND_EDGE) / 2 * lower / rate_in  # mid-transition, cycles per input sample
        beta = 0.1102 * (STOPBAND_DB - 8.7)  # Kaiser's beta for A > 50 dB
        frac = np.arange(self.phases)[:, None] / self.phases  # (P, 1)
        tau = frac + self.half - 1 - np.arange(self.taps)[None, :]  # (P, T): output time minus input time
        table = np.sinc(2 * cutoff * tau) * _kaiser(tau / half_width, beta)
        # Unit DC gain on every phase: without it the gain ripples with the phase (an audible buzz at low rates).
        self.table = table / table.sum(axis=1, keepdims=True)  # (P, T) float64

    def phase_of(self, n: int) -> tuple[int, int]:
        """(first input index of output n's taps, table row)."""
        q, rem = divmod(n * self.down, self.up)
        if self.phases == self.up:
            return q - self.half + 1, rem
        row = (2 * rem * self.phases + self.up) // (2 * self.up)  # nearest table phase
        if row == self.phases:  # rounds up onto the next input sample: same kernel, one sample later
            return q - self.half + 2, 0
        return q - self.half + 1, row


@functools.lru_cache(maxsize=8)
def _filter_bank(rate_in: int, rate_out: int) -> _FilterBank:
    """Shared between converters: building a table costs milliseconds and up to 16 MB."""
    return _FilterBank(rate_in, rate_out)


class _StreamResampler:
    """Stateful polyphase resampler on float64 mono samples. Output n depends only on the input samples, never
    on where pushes started or ended: every output is the same row-wise dot product over the same inputs."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.bank = _filter_bank(rate_in, rate_out)
        # Zeros before the stream's first sample, so output 0 has a full set of taps.
        self.buffer = np.zeros(self.bank.half - 1)
        self.buffer_start = 1 - self.bank.half  # input index of buffer[0]
        self.inputs = 0  # input samples received
        self.outputs = 0  # output samples produced

    def _ready_outputs(self) -> int:
        """Outputs whose last tap (index q + half, + 1 after rounding to a table phase) has arrived."""
        bank = self.bank
        last_q = self.inputs - 1 - bank.half - 1
        if last_q < 0:
            return 0
        return ((last_q + 1) * bank.up - 1) // bank.down + 1

    def _produce(self, end: int) -> np.ndarray:
        """Outputs self.outputs .. end - 1, then drop the inputs no later output needs."""
        bank = self.bank
        parts = []
        while self.outputs < end:
            stop = min(end, self.outputs + _BLOCK_OUTPUTS)
            parts.append(self._filter(self.outputs, stop))
            self.outputs = stop
        # The next output's first tap before any rounding to a table phase: no later output starts earlier.
        keep_from = (self.outputs * bank.down) // bank.up - bank.half + 1 - self.buffer_start
        if keep_from > 0:
            self.buffer = self.buffer[keep_from:]
            self.buffer_start += keep_from
        return np.concatenate(parts) if parts else np.zeros(0)

    def _filter(self, start: int, stop: int) -> np.ndarray:
        bank = self.bank
        out = np.empty(stop - start)
        windows = np.lib.stride_tricks.sliding_window_view(self.buffer, bank.taps)  # (L, T) view, no copy
        # Outputs n, n + up, n + 2 up, ... share a phase and step `down` inputs apart: one strided view each.
        for first in range(start, min(stop, start + bank.up)):
            count = (stop - first + bank.up - 1) // bank.up
            offset, row = bank.phase_of(first)
            offset -= self.buffer_start
            rows = windows[offset: offset + (count - 1) * bank.down + 1: bank.down]  # (count, T)
            out[first - start:: bank.up] = np.einsum("ij,j->i", rows, bank.table[row])
        return out

    def push(self, x: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, x.astype(np.float64)])
        self.inputs += x.size
        return self._produce(self._ready_outputs())

    def flush(self) -> np.ndarray:
        """The remaining outputs, ceil(inputs * up / down) in all, with zeros after the last input."""
        bank = self.bank
        total = -(-self.inputs * bank.up // bank.down)
        self.buffer = np.concatenate([self.buffer, np.zeros(bank.half + 2)])
        return self._produce(total)


class PcmConverter:
    """int16/float PCM, mono or stereo, any rate 8000..192000 Hz -> float32 mono at `sample_rate_out`,
    streamed: `push` returns what became available, `flush` the tail (see the module docstring)."""

    def __init__(self, sample_rate_out: int = OUTPUT_RATE) -> None:
        self.sample_rate_out = _check_rate(sample_rate_out)
        self.clipped_samples = 0
        """Float samples clipped to [-1, 1] so far (every channel counted), over every stream."""
        self._warned_clipping = False
        self._rate: int | None = None
        self._resampler: _StreamResampler | None = None
        self.samples_in = 0
        """Input samples (per channel) pushed since the stream started."""
        self.samples_out = 0
        """Output samples returned since the stream started."""

    @property
    def sample_rate_in(self) -> int | None:
        """Input rate of the current stream; None before its first push (and after `flush`)."""
        return self._rate

    def push(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        """Convert one piece. Returns float32 (m,) at `sample_rate_out`: the output samples this piece made
        available (the resampler holds back half its filter, 2-5 ms, until the samples after it arrive). A zero-length
        piece is a no-op. Raises AudioInputError (and keeps nothing of this piece) on bad input."""
        rate = _check_rate(sample_rate)
        frames = _check_layout(pcm)
        if self._rate is not None and rate != self._rate:
            raise AudioInputError(
                f"sample_rate changed from {self._rate} Hz to {rate} Hz mid-stream; call flush() to end the "
                f"stream first"
            )
        if frames.shape[0] == 0:
            return np.zeros(0, np.float32)
        mono = self._to_mono(frames)
        self._rate = rate
        self.samples_in += mono.size
        if rate == self.sample_rate_out:
            out = mono
        else:
            if self._resampler is None:
                self._resampler = _StreamResampler(rate, self.sample_rate_out)
            out = self._resampler.push(mono).astype(np.float32)
        self.samples_out += out.size
        return out

    def flush(self) -> np.ndarray:
        """End the stream: the remaining output samples (float32), so that the stream's total output is
        ceil(samples_in * sample_rate_out / sample_rate_in). The next push starts a new stream, at any rate."""
        out = np.zeros(0, np.float32)
        if self._resampler is not None:
            out = self._resampler.flush().astype(np.float32)
        self._rate, self._resampler = None, None
        self.samples_in = self.samples_out = 0
        return out

    def _to_mono(self, frames: np.ndarray) -> np.ndarray:
        """(n, channels) int16/float -> (n,) float32 in [-1, 1], after validation."""
        if frames.dtype == np.int16:
            # Exact in float32 (15-bit mantissa); the stereo mean of two such values is exact too.
            x = frames.astype(np.float32) / np.float32(32768.0)
        else:
            _check_finite(frames)
            clipped = int(np.count_nonzero(np.abs(frames) > 1.0))
            x = frames
            if clipped:
                x = np.clip(frames, -1.0, 1.0)
                self._count_clipped(clipped)
        if x.shape[1] == 1:
            return np.array(x[:, 0], dtype=np.float32)  # a copy: the caller may reuse its buffer
        return x.astype(np.float64).mean(axis=1).astype(np.float32)

    def _count_clipped(self, count: int) -> None:
        self.clipped_samples += count
        if not self._warned_clipping:
            self._warned_clipping = True
            warnings.warn(
                f"{count} float samples beyond [-1, 1] were clipped; further clipping is counted in "
                f"PcmConverter.clipped_samples without another warning",
                ClippedAudioWarning,
                stacklevel=4,
            )
