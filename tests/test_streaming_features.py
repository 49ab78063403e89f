"""Streaming audio features: equal to whole-file features when the window covers the stream, frame-aligned
windows (exact on a frame-local encoder), independent of append/take sizes, lookahead exactly as documented,
bounded memory, and clear errors."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hallo_rt.engine.audio_features import AudioError, AudioFeatureExtractor
from hallo_rt.engine.wav2vec2 import TINY_AUDIO, FeatureEncoder
from hallo_rt.runtime.streaming_features import StreamingAudioFeatures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny encoder's ops are too small to share; with 2 threads on a busy 2-core machine, OpenMP's
    waiting made this file 15x slower (64 s vs 4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def extractor():
    return AudioFeatureExtractor.from_checkpoint("tiny")


def speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with a slow envelope and an offset: non-zero mean, changing level."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = 0.05 + 0.3 * np.abs(np.sin(np.arange(n) / 16000 * 2.7))
    return (envelope * rng.standard_normal(n) + 0.01).astype(np.float32)


def stream(extractor, audio, *, piece=None, take=None, seed=0, **settings):
    """Features of every frame: audio appended in random pieces (1..piece), random takes (0..ready) when
    `take`, else everything taken after end()."""
    rng = np.random.default_rng(seed)
    features = StreamingAudioFeatures(extractor, **settings)
    parts, start = [], 0
    while start < audio.size:
        n = audio.size if piece is None else int(rng.integers(1, piece + 1))
        features.append(audio[start:start + n])
        start += n
        if take:
            parts.append(features.take(int(rng.integers(0, features.available_frames - features.frames_taken + 1))))
    features.end()
    parts.append(features.take(features.available_frames - features.frames_taken))
    return torch.cat(parts), features


@pytest.mark.parametrize("normalization", ["running", "window"])
def test_whole_stream_window_equals_whole_file_features(extractor, normalization):
    audio = speechy(2.0)[:31_337]  # not a whole number of frames
    streamed, features = stream(extractor, audio, piece=3000, take=True, lookahead_frames=100, context_frames=100,
                                block_frames=3, normalization=normalization)
    whole = extractor(audio)
    assert features.total_frames == whole.shape[0] == 49
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)


class FrameLocalEncoder:
    """wav2vec2's CNN with per-frame LayerNorms (wav2vec2-large's "layer" variant) and Hallo3's align_corners
    resampling, nothing global: windowed features equal whole-file features exactly when windows are
    frame-aligned and the grid lands on CNN frames 2i. Stands in for a graph encoder too: it answers only
    `encoder(x, num_frames=F)` and returns no hidden_states[0]."""

    def __init__(self):
        torch.manual_seed(0)
        self.config = dataclasses.replace(TINY_AUDIO, feat_extract_norm="layer", num_layers=1)
        self.cnn = FeatureEncoder(self.config).eval()
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.calls = []

    def eval(self):
        return self

    def __call__(self, x, num_frames):
        self.calls.append((tuple(x.shape), num_frames))
        with torch.no_grad():
            cnn = self.cnn(x)  # (1, C, T50)
        return None, F.interpolate(cnn, size=num_frames, mode="linear", align_corners=True).transpose(1, 2)


def test_frame_aligned_windows_give_the_whole_file_grid():
    encoder = FrameLocalEncoder()
    extractor = AudioFeatureExtractor(encoder, normalize=False)
    audio = speechy(3.0, seed=1)[: 640 * 70]  # whole frames: the whole-file grid is exactly CNN frame 2i too
    streamed, _ = stream(extractor, audio, piece=2000, take=True, lookahead_frames=0, context_frames=0,
                         block_frames=5)
    windows = encoder.calls
    torch.testing.assert_close(streamed, extractor(audio), rtol=0, atol=1e-5)
    assert len(windows) > 10 and all(shape[0] == 1 and shape[1] == 640 * frames for shape, frames in windows)


def test_take_and_append_sizes_do_not_change_the_features(extractor):
    audio = speechy(3.0, seed=2)[:47_000]
    settings = dict(lookahead_frames=2, context_frames=6, block_frames=4)
    once, _ = stream(extractor, audio, **settings)
    for seed, piece in [(1, 700), (2, 5000), (3, 1)]:
        pieces, _ = stream(extractor, audio[: 12_000] if piece == 1 else audio, piece=piece, take=True, seed=seed,
                           **settings)
        if piece == 1:  # sample by sample: a shorter stream, compared with its own one-shot run
            once_short, _ = stream(extractor, audio[:12_000], **settings)
            assert torch.equal(pieces, once_short)
        else:
            assert torch.equal(pieces, once)


def test_frames_become_available_exactly_after_the_lookahead_and_ignore_later_audio(extractor):
    lookahead, context, block, radius = 3, 5, 4, 2
    audio = speechy(2.0, seed=3)
    features = StreamingAudioFeatures(extractor, lookahead_frames=lookahead, context_frames=context,
                                      block_frames=block)
    assert features.lookahead_ms == (radius + lookahead) * 40
    frames_of_first_block = block + radius + lookahead  # 9 frames of audio make frames 0..3 available
    features.append(audio[: 640 * frames_of_first_block - 1])
    assert features.available_frames == 0
    features.append(audio[640 * frames_of_first_block - 1: 640 * frames_of_first_block])
    assert features.available_frames == block
    features.append(audio[640 * frames_of_first_block: 640 * (frames_of_first_block + block) - 1])
    assert features.available_frames == block
    early = features.take(block)
    # The same first block, with different audio from the first sample after its lookahead on: identical.
    other = audio.copy()
    other[640 * frames_of_first_block:] = speechy(2.0, seed=9)[640 * frames_of_first_block:]
    later, _ = stream(extractor, other, lookahead_frames=lookahead, context_frames=context, block_frames=block)
    assert torch.equal(later[:block], early)
    # ... but the last sample of the lookahead does matter: the lookahead is not overstated.
    other[640 * frames_of_first_block - 1] += 0.5
    moved, _ = stream(extractor, other, lookahead_frames=lookahead, context_frames=context, block_frames=block)
    assert not torch.equal(moved[block - 1], early[block - 1])


def test_end_makes_every_frame_available_and_clamps_the_window_at_both_ends(extractor):
    audio = speechy(1.0, seed=4)[:10_000]
    features = StreamingAudioFeatures(extractor, lookahead_frames=10, context_frames=4, block_frames=4)
    features.append(audio)  # 15 whole frames: the first block needs 4 + 2 + 10
    assert features.available_frames == 0 and features.total_frames is None
    features.end()
    assert features.available_frames == features.total_frames == 16  # ceil(10000 / 640)
    out = features.take(16)
    assert out.shape == (16, 5, extractor.num_layers, 32)
    assert torch.equal(out[0, 0], out[0, 2]) and torch.equal(out[0, 1], out[0, 2])  # frame -2, -1 -> 0
    assert torch.equal(out[-1, 3], out[-1, 2]) and torch.equal(out[-1, 4], out[-1, 2])  # past the end -> last
    assert torch.equal(out[-2, 4], out[-1, 2])
    assert features.take(0).shape == (0, 5, extractor.num_layers, 32)


def test_memory_stays_bounded_over_a_long_stream(extractor):
    lookahead, context, block, piece = 2, 10, 4, 320
    features = StreamingAudioFeatures(extractor, lookahead_frames=lookahead, context_frames=context,
                                      block_frames=block)
    audio = speechy(1.0, seed=5)
    bound = 640 * (context + 2 * 2 + block + lookahead + 1 + block) + piece
    peak = 0
    for i in range(45 * 50):  # 45 s in 20 ms pieces, features taken as they come
        features.append(audio[(i % 50) * piece: (i % 50 + 1) * piece])
        features.take(features.available_frames - features.frames_taken)
        peak = max(peak, features.samples_buffered)
    assert features.frames_taken == (45 * 25 - 2 - lookahead) // block * block
    assert peak <= bound, (peak, bound)


def test_bad_input_and_misuse_are_refused(extractor):
    features = StreamingAudioFeatures(extractor)
    with pytest.raises(AudioError, match="1-D float mono samples at 16000 Hz, got int16 array"):
        features.append(np.zeros(10, np.int16))
    with pytest.raises(AudioError, match=r"got float32 array of shape \(10, 2\)"):
        features.append(np.zeros((10, 2), np.float32))
    with pytest.raises(AudioError, match="2 non-finite values .* first at index 3; nothing was appended"):
        features.append(np.array([0, 0, 0, np.nan, np.inf], np.float32))
    features.append(np.zeros(0, np.float32))
    features.append(torch.zeros(640 * 5))
    with pytest.raises(ValueError, match=r"take\(1\) but only 0 frames are available .* 240 ms of lookahead"):
        features.take(1)
    features.end()
    with pytest.raises(AudioError, match="appended after end"):
        features.append(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"take\(6\) but only 5 frames .* stream has ended"):
        features.take(6)
    short = StreamingAudioFeatures(extractor)
    short.append(np.full(300, 0.1, np.float32))
    short.end()
    with pytest.raises(AudioError, match="300 samples; the wav2vec2 CNN needs at least 400"):
        short.take(1)
    for kwargs, message in [({"lookahead_frames": -1}, "lookahead_frames must be an integer >= 0"),
                            ({"block_frames": 0}, "block_frames must be an integer >= 1"),
                            ({"context_frames": 2.5}, "context_frames must be an integer"),
                            ({"normalization": "global"}, "'running' or 'window'")]:
        with pytest.raises(ValueError, match=message):
            StreamingAudioFeatures(extractor, **kwargs)
