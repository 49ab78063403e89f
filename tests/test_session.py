"""Streaming sessions: exactness against the offline loop, the timeline, barge-in, backpressure, idle, faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import numpy as np
import pytest
import torch

from hallo_rt.engine import load_dit, load_reference_net, load_vae
from hallo_rt.engine.audio_features import AudioFeatureExtractor, video_frame_count
from hallo_rt.engine.config import TINY, VaeConfig
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.engine.reference_image import prepare_reference
from hallo_rt.engine.sampling import SamplerConfig
from hallo_rt.engine.validation import InputError
from hallo_rt.runtime.api import Engine
from hallo_rt.runtime.audio_input import AudioInputError
from hallo_rt.runtime.frame import SAMPLES_PER_FRAME
from hallo_rt.runtime.session import AudioBufferOverflow, SessionError

# 13 latent frames (Hallo3's clip length) at 32x32 pixels: every stage runs, fast.
CLIP13 = dataclasses.replace(TINY, name="tiny-13x32", latent_frames=13, latent_height=4, latent_width=4)
SMALL_VAE = VaeConfig(name="tiny-test", base_channels=8, num_res_blocks=1, norm_groups=4)


def _pipeline(config=CLIP13) -> Hallo3Pipeline:
    return Hallo3Pipeline(load_dit("tiny", config=config), load_reference_net("tiny", config=config),
                          load_vae("tiny", config=SMALL_VAE))


@pytest.fixture(scope="module")
def parts():
    return _pipeline(), AudioFeatureExtractor.from_checkpoint("tiny")


def _speech(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Speech-like audio: a voiced tone with a syllable-rate envelope, plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + seed)
    voice = np.sin(2 * np.pi * (140 + 20 * seed) * t) + 0.3 * np.sin(2 * np.pi * 280 * t)
    return (0.3 * envelope * voice + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _image(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def _run(session, audio: np.ndarray, rate: int = 16000, pieces: list[int] | None = None) -> list:
    start = 0
    for size in pieces or [audio.shape[0]]:
        session.push_audio(audio[start:start + size], rate)
        start += size
    session.push_audio(audio[start:], rate)
    session.end_audio()
    return list(session)


# --- exactness ----------------------------------------------------------------------------------------

def test_stream_equals_offline_generate(parts):
    """13-latent chunks, pixel motion, whole-file features, same steps, CFG and seed: the streamed frames
    are the offline loop's frames, bit for bit (both draw their random numbers in the same order)."""
    pipeline, extractor = parts
    audio = _speech(2.4)  # 60 frames: two 47-frame clips, the second trimmed
    image = _image()
    face = torch.randn(512, generator=torch.Generator().manual_seed(3))
    text = torch.randn(TINY.text_len, TINY.text_dim, generator=torch.Generator().manual_seed(4))
    sampler = SamplerConfig(steps=2, cfg_scale=3.5)
    # what `hallo-rt generate` does
    features = extractor(audio, clip_length=pipeline.clip_frames)
    reference = prepare_reference(image, *pipeline.clip_size)
    frames = video_frame_count(audio.size)
    expected = torch.cat(list(pipeline.generate(reference, features, face, text, sampler,
                                                generator=torch.Generator().manual_seed(11), num_frames=frames)))
    engine = Engine.from_pipeline(pipeline, extractor)
    session = engine.session(image, face_embedding=face, text_embeds=text, seed=11, chunk_latents=13,
                             motion="pixel", steps=2, cfg=3.5, offline_features=True, idle=False)
    streamed = _run(session, audio, pieces=[5000, 1, 17000])
    assert [f.index for f in streamed] == list(range(frames))
    assert torch.equal(torch.from_numpy(np.stack([f.image for f in streamed])), expected)


def test_stream_is_independent_of_push_sizes(parts):
    """Streaming features, latent motion: how the audio is cut into pushes changes nothing."""
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=2, steps=1, idle=False)
    audio = _speech(1.3, seed=1)
    runs = []
    for pieces in ([audio.size], [1, 639, 641, 3000, 7]):
        with engine.session(_image(), face_embedding=np.zeros(512), seed=5) as session:
            runs.append(_run(session, audio, pieces=pieces))
    assert len(runs[0]) == video_frame_count(audio.size) == len(runs[1])
    for a, b in zip(*runs):
        assert a.index == b.index and np.array_equal(a.image, b.image) and np.array_equal(a.audio, b.audio)


# --- the timeline ---------------------------------------------------------------------------------------

def test_every_sample_gets_its_frame_and_comes_back(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False)
    audio = _speech(0.9, seed=2)
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        frames = _run(session, audio, pieces=[333] * 20)
    assert len(frames) == video_frame_count(audio.size) == 23
    assert [f.pts for f in frames] == [i / 25 for i in range(23)]
    replayed = np.concatenate([f.audio for f in frames])
    expected = np.clip(np.rint(audio * 32768), -32768, 32767).astype(np.int16)
    assert np.array_equal(replayed[:audio.size], expected)
    assert not replayed[audio.size:].any()  # the last frame's tail is silence
    assert all(f.image.shape == (32, 32, 3) and f.image.dtype == np.uint8 for f in frames)
    assert not any(f.idle for f in frames)


@pytest.mark.slow
def test_ten_minutes_without_drift():
    """10 minutes of 44.1 kHz stereo pushed in random pieces: exactly ceil(samples / 640) frames, pts on
    the audio timeline, every resampled sample re-emitted in place. The whole stream is pushed before any
    frame is read, so the buffer limit covers all of it: how far the session gets meanwhile depends on the
    machine's speed, which this test does not measure (benchmarks do)."""
    rate, seconds = 44100, 600
    micro = dataclasses.replace(TINY, name="tiny-micro", latent_frames=13, latent_height=2, latent_width=2)
    engine = Engine.from_pipeline(_pipeline(micro), AudioFeatureExtractor.from_checkpoint("tiny"),
                                  motion="latent", chunk_latents=13, steps=1, idle=False,
                                  max_buffered_audio_s=seconds + 60)
    rng = np.random.default_rng(0)
    stereo = (0.2 * rng.standard_normal((rate * seconds, 2))).astype(np.float32)
    sizes = rng.integers(1, 9000, size=6000)
    from hallo_rt.runtime.audio_input import PcmConverter

    reference = PcmConverter()
    resampled = []
    with engine.session(np.zeros((16, 16, 3), np.uint8), face_embedding=np.zeros(512)) as session:
        position = 0
        for size in sizes:
            piece = stereo[position:position + size]
            session.push_audio(piece, rate)
            resampled.append(reference.push(piece, rate))
            position += size
            if position >= len(stereo):
                break
        session.push_audio(stereo[position:], rate)
        resampled += [reference.push(stereo[position:], rate), reference.flush()]
        session.end_audio()
        count = 0
        expected = np.concatenate(resampled)
        expected16 = np.clip(np.rint(expected * 32768), -32768, 32767).astype(np.int16)
        for frame in session:
            assert frame.index == count and frame.pts == count / 25
            chunk = expected16[count * SAMPLES_PER_FRAME:(count + 1) * SAMPLES_PER_FRAME]
            assert np.array_equal(frame.audio[:chunk.size], chunk)
            count += 1
    assert expected.size == round(rate * seconds * 16000 / rate)
    assert count == video_frame_count(expected.size) == 15000


# --- barge-in, backpressure, idle ---------------------------------------------------------------------------

def test_clear_drops_queued_audio_and_frames(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False)
    first, second = _speech(3.0, seed=3) * 0 + 0.25, _speech(0.6, seed=4) * 0 - 0.25
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        session.push_audio(first, 16000)
        head = [session.next_frame(timeout=60) for _ in range(3)]
        session.clear()
        session.push_audio(second, 16000)
        session.end_audio()
        rest = list(session)
    assert [f.index for f in head + rest] == list(range(3 + len(rest)))  # the timeline goes on, no gap
    assert all((f.audio == 8192).all() for f in head)
    # nothing driven by the interrupted speech comes out after clear(): only the new audio (and its tail)
    assert all(((f.audio == -8192) | (f.audio == 0)).all() for f in rest)
    assert len(rest) == video_frame_count(second.size)


def test_wait_backpressure_bounds_memory_and_overflows_clearly(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False,
                                  max_buffered_frames=6, max_buffered_audio_s=2.0)
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        session.push_audio(_speech(1.5), 16000)  # 38 frames, nobody reading
        time.sleep(3.0)
        stats = session.stats()
        assert stats["queues"]["out"] == 6 and stats["frames_emitted"] == 6
        with pytest.raises(AudioBufferOverflow, match="max_buffered_audio_s=2.0"):
            session.push_audio(np.zeros(40000, np.float32), 16000)
        session.end_audio()
        frames = list(session)
    assert [f.index for f in frames] == list(range(38))  # waiting lost nothing


def test_drop_backpressure_drops_oldest_and_counts(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False,
                                  backpressure="drop", max_buffered_frames=4)
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        session.push_audio(_speech(1.0), 16000)
        session.end_audio()
        while session.stats()["state"] != "ended" or session.stats()["queues"]["decode"]:
            time.sleep(0.05)
        time.sleep(2.0)
        frames = list(session)
        stats = session.stats()
    assert len(frames) == 4 and stats["frames_dropped"] == 25 - 4
    assert [f.index for f in frames] == [21, 22, 23, 24]  # the newest survive, on their timeline places


def test_idle_stream_keeps_moving_at_video_rate(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle_timeout_s=0.2,
                                  idle_lead_s=0.4)
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        start = time.monotonic()
        frames = []
        while time.monotonic() - start < 4.0:
            frames.append(session.next_frame(timeout=10))
        elapsed = time.monotonic() - start
    assert all(f.idle and not f.audio.any() for f in frames)
    assert [f.index for f in frames] == list(range(len(frames)))
    # at video rate: never more than the lead ahead of the clock, never frozen
    assert 25 * (elapsed - 1.5) <= len(frames) <= 25 * (elapsed + 0.4) + 4


# --- SDK surface -----------------------------------------------------------------------------------------------

def test_async_frames(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=2, steps=1, idle=False)

    async def main():
        session = engine.session(_image(), face_embedding=np.zeros(512))
        session.push_audio((_speech(0.5) * 32767).astype(np.int16), 16000)
        session.end_audio()
        out = [frame async for frame in session.frames()]
        session.close()
        return out

    frames = asyncio.run(main())
    assert [f.index for f in frames] == list(range(13))


@pytest.mark.parametrize("name, value, bad, message", [
    ("motion_noise", 0.3, -1.0, "motion_noise must be a finite number >= 0"),
    ("motion_anchor", 0.5, 1.0, r"motion_anchor must be a number in \[0, 1\)"),
])
def test_motion_latent_settings_change_only_chunks_after_the_first(parts, name, value, bad, message):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False)
    audio = _speech(0.7, seed=4)

    def frames(**settings):
        with engine.session(_image(), face_embedding=np.zeros(512), seed=2, **settings) as session:
            return np.stack([f.image for f in _run(session, audio, pieces=[audio.size])])

    plain, zero, changed, again = frames(), frames(**{name: 0.0}), frames(**{name: value}), frames(**{name: value})
    assert np.array_equal(plain, zero) and np.array_equal(changed, again)
    assert np.array_equal(plain[:1], changed[:1])  # chunk 0 (one frame) is conditioned on the portrait
    assert not np.array_equal(plain[1:], changed[1:])
    with pytest.raises(ValueError, match=message):
        engine.session(_image(), **{name: bad})


def test_settings_and_inputs_are_checked(parts, tmp_path):
    engine = Engine.from_pipeline(*parts)
    with pytest.raises(TypeError, match="unknown setting.*chunk_size"):
        engine.session(_image(), chunk_size=3)
    with pytest.raises(ValueError, match="pixel motion needs an odd chunk_latents"):
        engine.session(_image(), chunk_latents=2, motion="pixel")
    with pytest.raises(ValueError, match="backpressure must be"):
        engine.session(_image(), backpressure="later")
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        engine.session(np.zeros((8, 8), np.float32))
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"no pixels here")
    with pytest.raises(Exception, match="image"):
        engine.session(str(bad))
    with pytest.raises(InputError, match="face_embedding must have shape"):
        engine.session(_image(), face_embedding=np.zeros(10))


def test_bad_audio_is_refused_and_the_session_goes_on(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False)
    with engine.session(_image(), face_embedding=np.zeros(512)) as session:
        with pytest.raises(AudioInputError, match="NaN"):
            session.push_audio(np.array([0.0, np.nan], np.float32), 16000)
        with pytest.raises(AudioInputError, match="sample_rate -5 Hz is outside"):
            session.push_audio(np.zeros(100, np.float32), -5)
        session.push_audio(np.zeros(0, np.float32), 16000)  # a no-op
        session.push_audio(_speech(0.2), 16000)
        session.end_audio()
        with pytest.raises(SessionError, match="end_audio"):
            session.push_audio(_speech(0.1), 16000)
        assert len(list(session)) == 5


def test_a_failing_stream_reports_releases_and_spares_the_others(parts):
    engine = Engine.from_pipeline(*parts, motion="latent", chunk_latents=1, steps=1, idle=False)
    healthy = engine.session(_image(seed=1), face_embedding=np.zeros(512))
    broken = engine.session(_image(seed=2), face_embedding=np.zeros(512))
    real = broken._gen.denoise

    def denoise(features, **kwargs):
        if broken._gen is not None and broken._gen.chunks_denoised >= 2:
            raise RuntimeError("backend exploded")
        return real(features, **kwargs)

    broken._gen.denoise = denoise
    for session in (healthy, broken):
        session.push_audio(_speech(0.8), 16000)
    healthy.end_audio()
    with pytest.raises(SessionError, match="backend exploded"):
        list(broken)
    assert broken.stats()["state"] == "failed" and broken._gen is None and not broken._store
    with pytest.raises(SessionError, match="failed"):
        broken.push_audio(_speech(0.1), 16000)
    assert len(list(healthy)) == 20
    healthy.close()
    broken.close()


def test_onnxruntime_backend_streams_like_torch(parts, tmp_path, monkeypatch):
    """The exported graphs plug into a session: same frames as torch within one uint8 level."""
    pytest.importorskip("onnxruntime")
    from hallo_rt.runtime.graph_pipeline import graph_pipeline

    monkeypatch.setenv("HALLO_RT_CACHE", str(tmp_path))
    audio = _speech(0.8, seed=6)
    frames = {}
    graph, graph_extractor, used = graph_pipeline(*parts, "onnxruntime", quiet=True)
    for name, engine in (("torch", Engine.from_pipeline(*parts)),
                         ("onnxruntime", Engine.from_pipeline(graph, graph_extractor, used))):
        with engine.session(_image(), face_embedding=np.zeros(512), chunk_latents=13, steps=1, idle=False) as s:
            frames[name] = np.stack([f.image for f in _run(s, audio)]).astype(int)
        with pytest.raises(ValueError, match="chunk_latents=13") if name == "onnxruntime" else contextlib.nullcontext():
            engine.session(_image(), chunk_latents=3).close()
    assert frames["torch"].shape == (20, 32, 32, 3)
    assert np.abs(frames["torch"] - frames["onnxruntime"]).max() <= 1
