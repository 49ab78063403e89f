"""Push-side PCM conversion: exact pass-through, split-invariant resampling with exact sample counts, quality,
downmix and scaling, and every bad input's error."""

import warnings

import numpy as np
import pytest

from hallo_rt.runtime.audio_input import (
    AudioInputError,
    ClippedAudioWarning,
    PcmConverter,
    to_int16,
)


def convert(pcm: np.ndarray, rate: int, sizes=None, seed: int = 0) -> np.ndarray:
    """Push `pcm` in one piece (sizes None) or in random pieces of 0..sizes samples, then flush."""
    converter = PcmConverter()
    if sizes is None:
        return np.concatenate([converter.push(pcm, rate), converter.flush()])
    rng = np.random.default_rng(seed)
    parts, start = [], 0
    while start < len(pcm):
        n = int(rng.integers(0, sizes + 1))
        parts.append(converter.push(pcm[start:start + n], rate))
        start += n
    parts.append(converter.flush())
    return np.concatenate(parts)


def test_16khz_passes_through_bit_exact():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 5000).astype(np.float32)
    out = convert(x, 16000, sizes=700)
    assert out.dtype == np.float32 and np.array_equal(out, x)
    pcm = rng.integers(-32768, 32768, 5000).astype(np.int16)
    out = convert(pcm, 16000)
    assert np.array_equal(out, pcm.astype(np.float32) / 32768)
    assert np.array_equal(to_int16(out), pcm)  # int16 -> float -> int16 round trip


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 47999, 191999])
def test_resampling_does_not_depend_on_how_the_stream_is_split(rate):
    # 47999 and 191999 Hz have 16000 exact phases: their tables use the nearest of fewer phases.
    x = np.random.default_rng(rate).uniform(-0.9, 0.9, rate // 2).astype(np.float32)
    whole = convert(x, rate)
    assert np.array_equal(convert(x, rate, sizes=1500), whole)
    assert np.array_equal(convert(x, rate, sizes=3, seed=1)[:4000], whole[:4000])
    assert whole.size == -(-x.size * 16000 // rate)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 32000])
@pytest.mark.parametrize("n", [1, 2, 37, 441, 1000, 44101])
def test_exact_sample_count(rate, n):
    out = convert(np.zeros(n, np.float32), rate, sizes=97)
    assert out.size == -(-n * 16000 // rate)  # ceil(n * 16000 / rate)


def test_ten_minutes_at_44100_in_random_pieces_has_no_drift():
    rate, seconds, freq = 44100, 600, 1000.0
    converter = PcmConverter()
    rng = np.random.default_rng(0)
    total_in, total_out, tail = 0, 0, []
    while total_in < rate * seconds:
        n = min(int(rng.integers(1, 20000)), rate * seconds - total_in)
        t = np.arange(total_in, total_in + n) / rate
        out = converter.push((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
        total_in, total_out = total_in + n, total_out + out.size
        tail = (tail + [out])[-20:]
    out = converter.flush()
    total_out += out.size
    assert total_out == 16000 * seconds
    # The last second still lines up with the exact sine at t = n / 16000: no accumulated timing error.
    last = np.concatenate(tail + [out])[-16000:-100].astype(np.float64)  # the very end saw the zero padding
    n = np.arange(total_out - 16000, total_out - 100)
    assert np.abs(last - 0.5 * np.sin(2 * np.pi * freq * n / 16000)).max() < 1e-4


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_quality_1khz_sine_snr_and_alias_rejection(rate):
    t = np.arange(rate) / rate
    y = convert((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate).astype(np.float64)
    n = np.arange(y.size)
    core = slice(2000, y.size - 2000)
    ref = 0.5 * np.sin(2 * np.pi * 1000 * n / 16000)
    snr = 10 * np.log10(np.mean(ref[core] ** 2) / np.mean((y[core] - ref[core]) ** 2))
    assert snr > 90, snr  # measured 94.9 (8 kHz), 112.2 (44.1 kHz), 104.6 dB (48 kHz)
    if rate > 24000:  # 12 kHz would fold onto 4 kHz; the filter's stopband starts at 8 kHz
        y = convert((0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32), rate)
        assert np.abs(y[core]).max() < 0.5 * 10 ** (-80 / 20)


def test_stereo_is_the_mean_of_the_channels_and_int16_scales_by_32768():
    pcm = np.array([[-32768, 32767], [16384, 16384], [100, -100], [-1, 0]], np.int16)
    out = convert(pcm, 16000)
    assert np.array_equal(out, np.array([-0.5 / 32768, 0.5, 0.0, -0.5 / 32768], np.float32))
    assert np.array_equal(convert(np.array([-32768, 16384], np.int16), 16000), np.array([-1.0, 0.5], np.float32))
    mono = np.random.default_rng(2).uniform(-1, 1, 3000)
    assert np.array_equal(convert(mono[:, None], 44100), convert(mono, 44100))  # (n, 1) is mono
    assert np.array_equal(convert(np.stack([mono, mono], 1), 44100), convert(mono, 44100))
    assert not convert(np.stack([mono, -mono], 1), 48000).any()  # opposite channels cancel


def test_rate_change_needs_a_flush_and_zero_length_pushes_are_no_ops():
    converter = PcmConverter()
    assert converter.push(np.zeros(0, np.int16), 44100).size == 0
    converter.push(np.zeros(4410, np.int16), 44100)
    assert converter.sample_rate_in == 44100
    with pytest.raises(AudioInputError, match="changed from 44100 Hz to 48000 Hz mid-stream; call flush"):
        converter.push(np.zeros(480, np.int16), 48000)
    assert converter.push(np.zeros(0, np.float32), 44100).size == 0
    tail = converter.flush()
    assert converter.sample_rate_in is None and tail.size > 0
    out = np.concatenate([converter.push(np.zeros(480, np.int16), 48000), converter.flush()])
    assert out.size == 160


@pytest.mark.parametrize("pcm, message", [
    (np.zeros(10, np.int32), "dtype int32; expected int16 PCM or float32/float64"),
    (np.zeros(10, np.uint8), "dtype uint8"),
    (np.zeros(10, np.complex64), "dtype complex64"),
    (np.zeros((4, 2, 2), np.float32), r"shape \(4, 2, 2\); expected \(n,\) mono or \(n, channels\)"),
    (np.zeros((100, 6), np.float32), "6 channels, expected .* 1 or 2 channels: mix down first"),
    (np.zeros((2, 4800), np.float32), r"looks planar \(channels, n\): pass pcm.T"),
    ([0.0, 0.1], "must be a numpy array, got list"),
    (b"\x00\x01", r"np.frombuffer\(data, np.int16\)"),
])
def test_bad_pcm_is_refused(pcm, message):
    with pytest.raises(AudioInputError, match=message):
        PcmConverter().push(pcm, 16000)


@pytest.mark.parametrize("rate, message", [
    (44100.0, r"integer number of Hz, got 44100.0 \(float\)"),
    (True, "integer number of Hz, got True"),
    ("16000", "integer number of Hz"),
    (0, "0 Hz is outside the supported 8000..192000 Hz"),
    (-16000, "-16000 Hz is outside"),
    (7999, "7999 Hz is outside"),
    (192001, "192001 Hz is outside"),
])
def test_bad_sample_rate_is_refused(rate, message):
    with pytest.raises(AudioInputError, match=message):
        PcmConverter().push(np.zeros(10, np.int16), rate)


def test_non_finite_samples_are_refused_and_nothing_of_the_push_is_kept():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-1, 1, (3000, 2)), rng.uniform(-1, 1, (3000, 2))
    bad = b.copy()
    bad[17, 1], bad[500, 0], bad[900, 0] = np.nan, np.inf, -np.inf
    converter = PcmConverter()
    first = converter.push(a, 44100)
    with pytest.raises(AudioInputError, match=r"3 non-finite samples \(NaN or inf\), the first at sample 17 "
                                              r"\(channel 1\); nothing from this push was kept"):
        converter.push(bad, 44100)
    rest = [converter.push(b, 44100), converter.flush()]
    assert converter.samples_in == 0
    assert np.array_equal(np.concatenate([first, *rest]), convert(np.concatenate([a, b]), 44100))
    with pytest.raises(AudioInputError, match="1 non-finite samples .* first at sample 2;"):
        PcmConverter().push(np.array([0, 0, np.nan], np.float32), 16000)


def test_clipped_float_samples_are_clipped_counted_and_warned_about_once():
    converter = PcmConverter()
    with pytest.warns(ClippedAudioWarning, match="3 float samples beyond"):
        out = converter.push(np.array([[1.5, 0.5], [-2.0, -3.0], [0.25, 1.0]]), 16000)
    assert np.array_equal(out, np.array([0.75, -1.0, 0.625], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converter.push(np.array([1.01, -1.0, 0.3], np.float32), 16000)  # -1.0 exactly is not clipped
    assert converter.clipped_samples == 4


def test_to_int16_rounds_to_nearest_and_clips():
    x = np.array([1.0, -1.0, 2.0, 0.5 / 32768, 1.5 / 32768, -0.6 / 32768, 0.25], np.float32)
    assert to_int16(x).tolist() == [32767, -32768, 32767, 0, 2, -1, 8192]
    with pytest.raises(AudioInputError, match="float samples"):
        to_int16(np.zeros(3, np.int16))
    with pytest.raises(AudioInputError, match="1 non-finite"):
        to_int16(np.array([0.0, np.nan]))
