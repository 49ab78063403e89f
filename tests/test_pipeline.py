"""The offline Hallo3 loop against a literal port of hallo3 `sample_video.py` L254-427, and its pieces."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hallo_rt.engine import load_dit, load_reference_net, load_vae
from hallo_rt.engine.config import TINY, VaeConfig
from hallo_rt.engine.chunks import PixelMotion, pad_frames
from hallo_rt.engine.pipeline import Hallo3Pipeline, MotionConfig, clip_count
from hallo_rt.engine.reference_image import box_mask, prepare_reference
from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample
from hallo_rt.engine.validation import InputError
from hallo_rt.engine.vae import CausalState

# A small clip keeps the test fast: 5 latent frames = 17 pixel frames (15 new per clip), 64x64 pixels.
SMALL = dataclasses.replace(TINY, name="tiny-small-clip", latent_frames=5, latent_height=8, latent_width=8)
SMALL_VAE = VaeConfig(name="tiny-test", base_channels=8, num_res_blocks=1, norm_groups=4)


@pytest.fixture(scope="module")
def pipeline() -> Hallo3Pipeline:
    return Hallo3Pipeline(load_dit("tiny", config=SMALL), load_reference_net("tiny", config=SMALL),
                          load_vae("tiny", config=SMALL_VAE))


def _features(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, SMALL.audio_window, SMALL.audio_layers, SMALL.audio_dim, generator=g)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_loop(pipe, prepared, features, face, text, sampler, seed, length):
    """hallo3 sample_video.py, line by line (one generator stands in for the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    vae, scale = pipe.vae, pipe.vae.config.scaling_factor
    T = pipe.dit.config.latent_frames
    L = (T - 1) * 4 + 1
    n_motion_frame, mask_rate = 2, 0.1

    def add_mask_to_first_frame(image):  # L189-200
        b, c, f, h, w = image.shape
        mask = (torch.rand(h, w, generator=g).to(dtype=image.dtype) > mask_rate)[None, None, None]
        return (image.permute(0, 2, 1, 3, 4) * mask.expand(b, f, c, h, w)).permute(0, 2, 1, 3, 4)

    def encode_first_stage(x):  # latent * scale_factor, posterior sample
        return vae.encode(x, sample=True, generator=g) * scale

    dtype = vae.dtype  # the reference casts the whole engine (and its image tensors) to bf16
    image = prepared.image.to(dtype)
    ref_image_pixel = image.unsqueeze(2)
    motion_image = torch.cat([image.unsqueeze(2)] * n_motion_frame, dim=2)
    mask_image = torch.cat([ref_image_pixel, add_mask_to_first_frame(motion_image)], dim=2)
    mask_image = encode_first_stage(mask_image).permute(0, 2, 1, 3, 4)
    ref_image = encode_first_stage(prepared.face_image.to(dtype).unsqueeze(2)).permute(0, 2, 1, 3, 4)
    pad_shape = (1, T - 1, *mask_image.shape[2:])
    mask_image = torch.cat([mask_image, torch.zeros(pad_shape, dtype=dtype)], dim=1)
    bank = pipe.reference_net(ref_image)  # the reference recomputes this per clip; same value

    times = math.ceil(features.shape[0] / (L - n_motion_frame))
    video = []
    pre_fix = torch.zeros_like(features[:n_motion_frame])
    for t in range(times):
        audio_tensor = features[t * (L - n_motion_frame): min((t + 1) * (L - n_motion_frame), features.shape[0])]
        audio_tensor = torch.cat([pre_fix, audio_tensor], dim=0)
        pre_fix = audio_tensor[-n_motion_frame:]
        if audio_tensor.shape[0] != L:
            pad = L - audio_tensor.shape[0]
            audio_tensor = torch.cat([audio_tensor, pre_fix[-1:].repeat(pad, 1, 1, 1)], dim=0)
        cond = Conditioning(concat_latent=mask_image, text_embeds=text[None].to(dtype),
                            audio=audio_tensor[None].to(dtype), face=face[None].to(dtype), ref_bank=bank)
        samples_z = sample(pipe.dit, cond, sampler, generator=g)
        latent = 1.0 / scale * samples_z.permute(0, 2, 1, 3, 4)
        state, recons = CausalState(), []
        for i in range((T - 1) // 2):  # L392-411
            start, end = (0, 3) if i == 0 else (i * 2 + 1, i * 2 + 3)
            recons.append(vae.decode_group(latent[:, :, start:end], state))
        recon = torch.cat(recons, dim=2)
        samples = torch.clamp((recon.to(torch.float32) + 1.0) / 2.0, min=0.0, max=1.0)
        motion_image = samples[:, :, -n_motion_frame:].to(dtype) * 2 - 1
        mask_image = torch.cat([ref_image_pixel, add_mask_to_first_frame(motion_image)], dim=2)
        mask_image = encode_first_stage(mask_image).permute(0, 2, 1, 3, 4)
        mask_image = torch.cat([mask_image, torch.zeros(pad_shape, dtype=dtype)], dim=1)
        video.append(samples[:, :, n_motion_frame:])
    video = torch.cat(video, dim=2)[:, :, :length]  # (1, 3, frames, H, W)
    return (255.0 * video[0]).to(torch.uint8).permute(1, 2, 3, 0)  # astype(uint8) truncates


@pytest.fixture(scope="module")
def pipeline_bf16() -> Hallo3Pipeline:
    return Hallo3Pipeline(load_dit("tiny", config=SMALL, dtype="bf16"),
                          load_reference_net("tiny", config=SMALL, dtype="bf16"),
                          load_vae("tiny", config=SMALL_VAE, dtype="bf16"))


def test_generate_equals_literal_reference_loop_in_bf16(pipeline_bf16):
    """The reference runs everything in bf16; the dropout mask and the motion frames are cast where it casts."""
    test_generate_equals_literal_reference_loop(pipeline_bf16, 30, 30)


@pytest.mark.parametrize("frames, length", [(30, 30), (45, 37), (15, 15)])
def test_generate_equals_literal_reference_loop(pipeline, frames, length):
    prepared = prepare_reference(_image(70, 90), 64, 64)
    features = _features(frames)
    face = torch.randn(512, generator=torch.Generator().manual_seed(1))
    text = torch.randn(SMALL.text_len, SMALL.text_dim, generator=torch.Generator().manual_seed(2))
    sampler = SamplerConfig(steps=2, cfg_scale=3.5)
    ours = torch.cat(list(pipeline.generate(prepared, features, face, text, sampler,
                                            generator=torch.Generator().manual_seed(7), num_frames=length)))
    expected = reference_loop(pipeline, prepared, features, face, text, sampler, seed=7, length=length)
    assert ours.shape == (length, 64, 64, 3) and ours.dtype == torch.uint8
    assert torch.equal(ours, expected)


def test_generate_yields_clip_by_clip_and_runs_the_reference_net_once(pipeline):
    calls = []
    handle = pipeline.reference_net.register_forward_hook(lambda *a: calls.append(1))
    try:
        chunks = list(pipeline.generate(prepare_reference(_image(64, 64), 64, 64), _features(40),
                                        torch.zeros(512), torch.zeros(SMALL.text_len, SMALL.text_dim),
                                        SamplerConfig(steps=1), generator=torch.Generator().manual_seed(0)))
    finally:
        handle.remove()
    assert [c.shape[0] for c in chunks] == [15, 15, 10]
    assert len(calls) == 1


def test_generate_is_deterministic_and_seed_dependent(pipeline):
    args = (prepare_reference(_image(64, 64), 64, 64), _features(15), torch.ones(512),
            torch.zeros(SMALL.text_len, SMALL.text_dim), SamplerConfig(steps=1))

    def run(seed):
        return torch.cat(list(pipeline.generate(*args, generator=torch.Generator().manual_seed(seed))))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_clip_progress_reports_every_step(pipeline):
    seen = []
    list(pipeline.generate(prepare_reference(_image(64, 64), 64, 64), _features(20), torch.zeros(512),
                           torch.zeros(SMALL.text_len, SMALL.text_dim), SamplerConfig(steps=2),
                           generator=torch.Generator().manual_seed(0), progress=lambda *a: seen.append(a)))
    assert seen == [(0, 2, 1, 2), (0, 2, 2, 2), (1, 2, 1, 2), (1, 2, 2, 2)]


def test_generate_rejects_bad_inputs(pipeline):
    prepared = prepare_reference(_image(64, 64), 64, 64)
    text = torch.zeros(SMALL.text_len, SMALL.text_dim)
    with pytest.raises(InputError, match=r"audio features must be \(frames >= 1, 5, 4, 32\)"):
        next(pipeline.generate(prepared, torch.zeros(10, 5, 12, 768), torch.zeros(512), text))
    with pytest.raises(InputError, match="num_frames must be in 1..10"):
        next(pipeline.generate(prepared, _features(10), torch.zeros(512), text, num_frames=11))


def test_pipeline_refuses_a_backbone_without_audio():
    backbone = dataclasses.replace(SMALL, audio_cross_attention=False)
    with pytest.raises(InputError, match="no audio/face modules"):
        Hallo3Pipeline(load_dit("tiny", config=backbone), load_reference_net("tiny", config=SMALL),
                       load_vae("tiny", config=SMALL_VAE))


# --- pieces -------------------------------------------------------------------------------------------

def test_pixel_motion_audio_prefix_and_padding():
    """Each clip sees the previous clip's last 2 audio frames (zeros first), then its new frames; a short
    last clip repeats its last frame (sample_video L360-371)."""
    features = torch.arange(20.0)[:, None, None, None].expand(20, 1, 1, 1)
    motion = PixelMotion.__new__(PixelMotion)  # only the audio bookkeeping, no model
    motion.settings, motion._prefix = type("S", (), {"motion_frames": 2})(), None
    first = motion.denoiser_audio(0, pad_frames(features[0:7], 7))
    assert first.flatten().tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6]
    second = motion.denoiser_audio(1, pad_frames(features[7:14], 7))
    assert second.flatten().tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    last = motion.denoiser_audio(2, pad_frames(features[14:21], 7))
    # 14..19 are new; the short clip repeats its last frame
    assert last.flatten().tolist() == [12, 13, 14, 15, 16, 17, 18, 19, 19]


def test_clip_count():
    assert clip_count(47, 49, 2) == 1
    assert clip_count(48, 49, 2) == 2
    assert clip_count(80, 49, 2) == 2
    assert clip_count(1, 49, 2) == 1


def test_square_image_is_resized_and_padded_then_cropped_back():
    image = _image(100, 100)
    prepared = prepare_reference(image, 48, 72)
    assert prepared.image.shape == (1, 3, 48, 72) and prepared.crop == (12, 48)
    # black padding (0 in [0, 1] -> -1) on both sides, 12 columns each
    assert torch.equal(prepared.image[..., :12], torch.full((1, 3, 48, 12), -1.0))
    assert torch.equal(prepared.image[..., 60:], torch.full((1, 3, 48, 12), -1.0))
    inner = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(48, 48),
                          mode="bilinear", align_corners=False, antialias=True).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(prepared.image[..., 12:60], inner, rtol=0, atol=1e-6)


def test_wide_and_tall_images_cover_and_centre_crop():
    wide = _image(60, 200)  # 200/60 > 72/48: resize to height 48, width int(200*48/60) = 160, crop 44..116
    prepared = prepare_reference(wide, 48, 72)
    assert prepared.crop is None and prepared.image.shape == (1, 3, 48, 72)
    resized = F.interpolate(torch.from_numpy(wide).permute(2, 0, 1)[None].float() / 255, size=(48, 160),
                            mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(prepared.image, resized[..., 44:116] * 2 - 1, rtol=0, atol=1e-6)
    tall = _image(200, 60)  # resize to width 72, height int(200*72/60) = 240, crop rows 96..144
    resized = F.interpolate(torch.from_numpy(tall).permute(2, 0, 1)[None].float() / 255, size=(240, 72),
                            mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(prepare_reference(tall, 48, 72).image, resized[..., 96:144, :] * 2 - 1,
                               rtol=0, atol=1e-6)


def test_face_mask_blacks_out_everything_but_the_face():
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    mask = box_mask(40, 60, (10, 5, 30, 25))
    prepared = prepare_reference(image, 40, 60, face_mask=mask)
    face = (prepared.face_image + 1) / 2
    assert face[..., 5:25, 10:30].min() > 0.7  # the face region keeps its pixels (resize blurs the border)
    assert face[..., :3, :].max() == 0 and face[..., :, 33:].max() == 0
    torch.testing.assert_close(prepared.image, torch.full_like(prepared.image, 200 / 255 * 2 - 1))


@pytest.mark.parametrize("box, message", [((5, 5, 5, 10), "x1 > x0"), ((100, 100, 200, 200), "outside")])
def test_bad_face_boxes(box, message):
    with pytest.raises(InputError, match=message):
        box_mask(40, 60, box)


def test_bad_images_are_refused():
    with pytest.raises(InputError, match="uint8"):
        prepare_reference(np.zeros((10, 10, 3), dtype=np.float32), 48, 72)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        prepare_reference(np.zeros((10, 10), dtype=np.uint8), 48, 72)
    with pytest.raises(InputError, match="face mask is"):
        prepare_reference(_image(10, 10), 48, 72, face_mask=torch.ones(1, 1, 5, 5))


def test_motion_config_validation():
    with pytest.raises(ValueError, match="mask_rate"):
        MotionConfig(mask_rate=1.0)
    with pytest.raises(ValueError, match="motion_frames"):
        MotionConfig(motion_frames=0)


def _latent_motion(anchor=None, **settings):
    from types import SimpleNamespace

    from hallo_rt.engine.chunks import ChunkSettings, LatentMotion

    vae = SimpleNamespace(stream_decoder=lambda grouping: None)
    gen = SimpleNamespace(settings=ChunkSettings(motion="latent", **settings), anchor_latent=anchor,
                          generator=torch.Generator().manual_seed(3),
                          pipeline=SimpleNamespace(vae=vae, dit=SimpleNamespace(dtype=torch.float32)))
    return LatentMotion(gen)


def test_latent_motion_carries_the_last_latents_exactly_without_noise():
    motion = _latent_motion(chunk_latents=3, motion_latents=2)
    last = torch.randn(1, 3, 4, 6, 6)
    motion.after_denoise(last)
    concat = motion.conditioning(1)
    assert torch.equal(concat[:, :2], last[:, 1:]) and not concat[:, 2:].any()


def test_latent_motion_noise_is_drawn_from_the_stream_generator():
    motion = _latent_motion(chunk_latents=2, motion_noise=0.5)
    last = torch.randn(1, 2, 4, 6, 6)
    motion.after_denoise(last)
    first, second = motion.conditioning(1), motion.conditioning(2)
    g = torch.Generator().manual_seed(3)
    for concat in (first, second):  # each chunk draws new noise, in order, from the stream's generator
        expected = last[:, -1:] + 0.5 * torch.randn((1, 1, 4, 6, 6), generator=g)
        torch.testing.assert_close(concat[:, :1], expected, rtol=0, atol=1e-6)
        assert not concat[:, 1:].any()
    assert not torch.equal(first, second)


def test_latent_motion_anchor_blends_toward_the_first_latent_then_adds_the_noise():
    anchor = torch.randn(1, 1, 4, 6, 6)
    last = torch.randn(1, 3, 4, 6, 6)
    exact = _latent_motion(anchor, chunk_latents=3, motion_latents=2, motion_anchor=0.25)
    exact.after_denoise(last)
    concat = exact.conditioning(1)
    torch.testing.assert_close(concat[:, :2], 0.75 * last[:, 1:] + 0.25 * anchor, rtol=0, atol=1e-6)
    assert not concat[:, 2:].any()
    noisy = _latent_motion(anchor, chunk_latents=2, motion_anchor=0.5, motion_noise=0.1)
    noisy.after_denoise(last[:, :2])
    noise = 0.1 * torch.randn((1, 1, 4, 6, 6), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy.conditioning(1)[:, :1], 0.5 * last[:, 1:2] + 0.5 * anchor + noise,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), "0.3"])
def test_motion_anchor_must_be_in_zero_to_one(value):
    from hallo_rt.engine.chunks import ChunkSettings

    with pytest.raises(ValueError, match=r"motion_anchor must be a number in \[0, 1\)"):
        ChunkSettings(motion="latent", chunk_latents=2, motion_anchor=value)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.3"])
def test_motion_noise_must_be_a_finite_non_negative_number(value):
    from hallo_rt.engine.chunks import ChunkSettings

    with pytest.raises(ValueError, match="motion_noise must be a finite number >= 0"):
        ChunkSettings(motion="latent", chunk_latents=2, motion_noise=value)


# --- finding the release's components --------------------------------------------------------------------

def _release_layout(root):
    """pretrained_models/{hallo3, cogvideox-5b-i2v-sat/vae/3d-vae.pt, wav2vec/wav2vec2-base-960h} from small
    models, in the release's formats (hallo-rt folder for the denoiser, SAT pickle, Hugging Face folder)."""
    import transformers
    from vae_checkpoints import engine_to_sat_vae_keys, write_sat_vae

    from hallo_rt.engine import save_engine_format
    from hallo_rt.engine.vae import CogVideoXVae
    from hallo_rt.engine.weights.common import seeded_init_

    save_engine_format(root / "hallo3", load_dit("tiny"), load_reference_net("tiny"))
    # widths divisible by SAT's fixed 32 groups, so the config is inferred from the file alone
    vae = seeded_init_(CogVideoXVae(VaeConfig(name="v", base_channels=32, num_res_blocks=1)), 5)
    (root / "cogvideox-5b-i2v-sat" / "vae").mkdir(parents=True)
    write_sat_vae(root / "cogvideox-5b-i2v-sat" / "vae" / "3d-vae.pt", engine_to_sat_vae_keys(vae.state_dict(), 4))
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=4)
    transformers.Wav2Vec2Model(config).save_pretrained(root / "wav2vec" / "wav2vec2-base-960h")
    return vae


def test_load_pipeline_finds_the_release_layout(tmp_path):
    from hallo_rt.engine.pipeline import load_pipeline

    vae = _release_layout(tmp_path)
    pipeline, extractor = load_pipeline(tmp_path / "hallo3")
    assert pipeline.vae.config.base_channels == 32 and extractor.num_layers == 4
    for key, value in vae.state_dict().items():
        assert torch.equal(pipeline.vae.state_dict()[key], value), key
    # an explicit --vae wins over the release layout
    pipeline, _ = load_pipeline(tmp_path / "hallo3", vae="tiny")
    assert pipeline.vae.config.name == "tiny"


def test_load_pipeline_says_what_is_missing(tmp_path):
    import shutil

    from hallo_rt.engine.pipeline import load_pipeline

    _release_layout(tmp_path)
    shutil.rmtree(tmp_path / "wav2vec")
    with pytest.raises(InputError, match=r"no audio encoder \(wav2vec2\) found .* pass --audio-encoder"):
        load_pipeline(tmp_path / "hallo3")
    shutil.rmtree(tmp_path / "cogvideox-5b-i2v-sat")
    with pytest.raises(InputError, match="no VAE found .* pass --vae"):
        load_pipeline(tmp_path / "hallo3")
