"""Audio encoder and Hallo3 audio features: parity with transformers' wav2vec2, checkpoint layouts and
strictness, Hallo3's interpolation, padding and windowing, waveform checks."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hallo_rt.engine.audio_features import (
    AudioError,
    AudioFeatureExtractor,
    hallo3_padding,
    normalize_waveform,
    video_frame_count,
    window_features,
)
from hallo_rt.engine.validation import InputError
from hallo_rt.engine.wav2vec2 import TINY_AUDIO, WAV2VEC2_BASE, Wav2Vec2Config, Wav2Vec2Model
from hallo_rt.engine.weights.common import WeightsError
from hallo_rt.engine.weights.wav2vec2_format import load_audio_encoder

# fp32 parity with transformers: same ops, different kernels and summation orders (sdpa vs sdpa, a fused
# vs a parametrized weight norm); observed errors are ~1e-6.
ATOL = 1e-5

# Small transformers configs covering the variants: base-like (group norm, post-LN, even pos-conv kernel,
# no conv bias) and large-lv60-like (layer norm, pre-LN, odd kernel, conv bias), plus a mix.
VARIANTS = {
    "group": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    "layer_stable": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                         num_conv_pos_embeddings=15, num_conv_pos_embedding_groups=2, layer_norm_eps=1e-6),
    "layer_postln": dict(feat_extract_norm="layer", do_stable_layer_norm=False, conv_bias=True,
                         num_conv_pos_embeddings=12, num_conv_pos_embedding_groups=8),
}

# facebook/wav2vec2-base-960h's config.json, the fields inference reads (Hallo3's audio encoder).
BASE_960H_CONFIG = {
    "architectures": ["Wav2Vec2ForCTC"], "model_type": "wav2vec2", "conv_bias": False,
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "do_stable_layer_norm": False, "feat_extract_activation": "gelu", "feat_extract_norm": "group",
    "hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "mask_time_prob": 0.05, "num_attention_heads": 12, "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128, "num_feat_extract_layers": 7, "num_hidden_layers": 12, "vocab_size": 32,
}


def hf_config(variant: str) -> transformers.Wav2Vec2Config:
    return transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
        conv_dim=(16, 16, 16, 16, 16, 16, 24), vocab_size=12, mask_time_prob=0.05, **VARIANTS[variant],
    )


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, norms and biases included, so no path is trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                values = 1 + 0.3 * torch.randn(p.shape, generator=g)
            elif p.ndim == 1:
                values = 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("original0"):  # weight-norm magnitude g (1, 1, K): positive, as trained
                values = 0.5 + torch.rand(p.shape, generator=g)
            else:
                values = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
            p.copy_(values)
    return model.eval()


def hf_model(variant: str, ctc: bool = False, seed: int = 0):
    cls = transformers.Wav2Vec2ForCTC if ctc else transformers.Wav2Vec2Model
    return randomize_(cls(hf_config(variant)), seed)


def base_of(model):
    return model.wav2vec2 if isinstance(model, transformers.Wav2Vec2ForCTC) else model


def legacy_keys(state: dict) -> dict:
    """Rename the weight-norm parametrization to torch's old weight_g / weight_v, as in released .bin files."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        renamed[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return renamed


def save_folder(model, folder: Path, layout: str) -> Path:
    """Write a Hugging Face folder. transformers 5 always writes safetensors, so .bin files are written with
    torch.save, exactly what older transformers' `safe_serialization=False` produced."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
    else:
        model.config.save_pretrained(folder)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(legacy_keys(state) if layout == "legacy_bin" else state, folder / "pytorch_model.bin")
    return folder


def reference_states(model, x: torch.Tensor, num_frames: int | None = None):
    """transformers' hidden states; with num_frames, Hallo3's Wav2VecModel: CNN features resampled by an
    explicit align_corners=True linear interpolation (written out here, not F.interpolate) before the
    projection, injected by a forward hook on the feature extractor."""
    base = base_of(model)

    def resample(_module, _args, features):  # (B, C, T) -> (B, C, num_frames)
        T = features.shape[-1]
        pos = torch.arange(num_frames, dtype=torch.float64) * ((T - 1) / (num_frames - 1) if num_frames > 1 else 0)
        lo = pos.floor().long().clamp(max=T - 1)
        hi = (lo + 1).clamp(max=T - 1)
        w = (pos - lo).to(features.dtype)
        return features[..., lo] * (1 - w) + features[..., hi] * w

    handle = base.feature_extractor.register_forward_hook(resample) if num_frames is not None else None
    try:
        with torch.no_grad():
            out = base(x, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    return out.hidden_states, out.last_hidden_state


def max_error(ours, theirs) -> float:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs))


def waveform(samples: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (samples,) if batch is None else (batch, samples)
    return 0.1 * torch.randn(shape, generator=g) + 0.01


# --------------------------------------------------------------------------- parity with transformers

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_hidden_states_match_transformers(variant, layout, tmp_path):
    reference = hf_model(variant, seed=1)
    ours = load_audio_encoder(save_folder(reference, tmp_path / "m", layout))
    assert ours.config.feat_extract_norm == VARIANTS[variant]["feat_extract_norm"]
    x = waveform(6000, batch=2)  # 18 CNN frames each
    expected, expected_last = reference_states(reference, x)
    with torch.no_grad():
        states = ours(x)
    assert len(states) == 3 + 1 and states[0].shape == (2, 18, 32)
    err = max_error(states, expected)
    assert err < ATOL, f"{variant}/{layout}: max abs error {err:.2e}"
    last_err = (ours.last_hidden_state(states) - expected_last).abs().max().item()
    assert last_err < ATOL
    print(f"[parity] {variant} {layout}: max abs error {err:.2e}, last_hidden_state {last_err:.2e}")


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "legacy_bin"])
def test_ctc_checkpoints_load_and_match(layout, tmp_path):
    """base-960h is a Wav2Vec2ForCTC: `wav2vec2.` prefix, lm_head and masked_spec_embed; its released .bin
    stores the positional conv as weight_g / weight_v."""
    reference = hf_model("group", ctc=True, seed=2)
    folder = save_folder(reference, tmp_path / "ctc", layout)
    if layout == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    if layout == "legacy_bin":
        raw = torch.load(folder / "pytorch_model.bin", weights_only=True)
        assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in raw and "lm_head.weight" in raw
        assert "wav2vec2.masked_spec_embed" in raw
    ours = load_audio_encoder(folder)
    x = waveform(5000, seed=3, batch=1)
    err = max_error(ours(x), reference_states(reference, x)[0])
    assert err < ATOL
    print(f"[parity] ForCTC {layout}: max abs error {err:.2e}")


@pytest.mark.parametrize("num_frames", [7, 25, 1])
def test_interpolated_hidden_states_match_hallo3(num_frames, tmp_path):
    """num_frames resamples the 15 CNN frames (down to 7, up to 25, or to 1) before the projection."""
    reference = hf_model("group", seed=4)
    ours = load_audio_encoder(save_folder(reference, tmp_path / "m", "safetensors"))
    x = waveform(5000, seed=5, batch=2)
    with torch.no_grad():
        states = ours(x, num_frames=num_frames)
    assert states[-1].shape == (2, num_frames, 32)
    err = max_error(states, reference_states(reference, x, num_frames)[0])
    assert err < ATOL
    # Not the same as interpolating afterwards: the encoder itself runs at the new rate.
    if num_frames == 7:
        native = ours(x)[-1].transpose(1, 2)
        after = torch.nn.functional.interpolate(native, size=7, mode="linear", align_corners=True).transpose(1, 2)
        assert (after - states[-1]).abs().max() > 1e-2
    print(f"[parity] interpolated to {num_frames}: max abs error {err:.2e}")


def test_feature_extractor_matches_hallo3_pipeline(tmp_path):
    """End to end, against Hallo3's AudioProcessor.preprocess + process_audio_emb written out with
    transformers' feature extractor and model (float frame count replaced by the exact one)."""
    reference = hf_model("group", ctc=True, seed=6)
    extractor = AudioFeatureExtractor(load_audio_encoder(save_folder(reference, tmp_path / "m", "safetensors")))
    clip_length = 7
    speech = (0.2 * np.random.default_rng(7).standard_normal(9000) + 0.03).astype(np.float32)

    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    values = torch.from_numpy(np.squeeze(fe(speech, sampling_rate=16000).input_values)).float()
    seq_len = math.ceil(Fraction(len(values) * 25, 16000))
    assert seq_len == 15
    values = torch.nn.functional.pad(values, (0, int((clip_length - seq_len % clip_length) * (16000 // 25.0))))
    seq_len += clip_length - seq_len % clip_length  # 21
    hidden, _ = reference_states(reference, values[None], seq_len)
    audio_emb = torch.stack(hidden[1:], dim=1).squeeze(0).transpose(0, 1)  # (seq_len, layers, dim)
    n = audio_emb.shape[0]
    expected = torch.stack([torch.stack([audio_emb[max(min(i + j, n - 1), 0)] for j in range(-2, 3)])
                            for i in range(n)])

    ours = extractor(speech, clip_length=clip_length, sample_rate=16000)
    assert ours.shape == expected.shape == (21, 5, 3, 32)
    err = (ours - expected).abs().max().item()
    assert err < ATOL
    unpadded = extractor(speech)
    assert unpadded.shape == (15, 5, 3, 32)
    # The padding reaches the real frames: Hallo3's features differ from unpadded ones.
    assert (unpadded[:, 2] - ours[:15, 2]).abs().max() > 1e-3
    print(f"[parity] Hallo3 pipeline (clip padding 15 -> 21 frames): max abs error {err:.2e}")


# --------------------------------------------------------------------------- Hallo3 numerics

def test_window_clamps_at_the_edges():
    features = torch.arange(6.0)[:, None, None].expand(6, 2, 3)  # frame i holds the value i
    windows = window_features(features, 5)
    assert windows.shape == (6, 5, 2, 3)
    picked = windows[:, :, 0, 0].long().tolist()
    assert picked == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4],
                      [1, 2, 3, 4, 5], [2, 3, 4, 5, 5], [3, 4, 5, 5, 5]]
    assert window_features(torch.tensor([[7.0]]), 5)[:, :, 0].tolist() == [[7.0] * 5]
    assert window_features(features, 3)[0, :, 0, 0].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="odd"):
        window_features(features, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_waveform_matches_transformers(dtype):
    rng = np.random.default_rng(0)
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    for speech in (0.3 * rng.standard_normal(12345) + 0.05, rng.uniform(-1, 1, 400) * 1e-3, np.zeros(800)):
        speech = speech.astype(dtype)
        expected = np.squeeze(fe(speech, sampling_rate=16000).input_values)
        ours = normalize_waveform(torch.from_numpy(speech))
        assert ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-6)
    x = torch.from_numpy((0.3 * rng.standard_normal(5000) + 0.05).astype(np.float32))
    assert abs(normalize_waveform(x).mean().item()) < 1e-6
    assert abs(normalize_waveform(x).std(unbiased=False).item() - 1) < 1e-5


def test_video_frame_count_is_exact():
    def exact(n, sr, fps):
        return math.ceil(Fraction(n * fps, sr))

    cases = [(1, 16000, 25), (640, 16000, 25), (641, 16000, 25), (16000, 16000, 25), (4480, 16000, 25),
             (16000 * 600, 16000, 25), (44100, 44100, 25), (44101, 44100, 25), (1764, 44100, 25),
             (44100 * 3 + 1, 44100, 30), (1, 44100, 30), (0, 16000, 25)]
    for n, sr, fps in cases:
        assert video_frame_count(n, sr, fps) == exact(n, sr, fps), (n, sr, fps)
    assert all(video_frame_count(n) == exact(n, 16000, 25) for n in range(1, 20000))
    assert video_frame_count(1) == 1 and video_frame_count(640) == 1 and video_frame_count(641) == 2
    # The float expression Hallo3 uses overshoots here; the exact count does not.
    assert math.ceil(4480 / 16000 * 25) == 8 and video_frame_count(4480) == 7


def test_hallo3_padding():
    def hallo3(n, clip):  # audio_processor.py L105-112, on a length where the float count is exact
        seq_len = math.ceil(n / 16000 * 25)
        if seq_len % clip == 0:
            return 0, seq_len
        return int((clip - seq_len % clip) * (16000 // 25.0)), seq_len + clip - seq_len % clip

    for n, clip in ((16000, 49), (31360, 49), (31361, 49), (1, 49), (400, 7), (123457, 49)):
        assert hallo3_padding(n, clip) == hallo3(n, clip), n
    assert hallo3_padding(16000, 49) == (24 * 640, 49)
    assert hallo3_padding(31360, 49) == (0, 49)
    with pytest.raises(ValueError):
        hallo3_padding(100, 0)


# --------------------------------------------------------------------------- checkpoints

def test_strict_loading_names_the_keys(tmp_path):
    reference = hf_model("group", ctc=True, seed=8)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    assert "lm_head.weight" in state and "wav2vec2.masked_spec_embed" in state

    def write(name, tensors):
        folder = tmp_path / name
        reference.config.save_pretrained(folder)
        torch.save(tensors, folder / "pytorch_model.bin")
        return folder

    load_audio_encoder(write("ok", state))  # lm_head.* and masked_spec_embed are skipped on purpose

    extra = dict(state, **{"wav2vec2.encoder.extra_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): encoder\.extra_proj\.weight"):
        load_audio_encoder(write("extra", extra))

    missing = {k: v for k, v in state.items() if k != "wav2vec2.encoder.layers.1.feed_forward.output_dense.bias"}
    with pytest.raises(WeightsError, match=r"missing keys \(1\): encoder\.layers\.1\.feed_forward\.output_dense\.bias"):
        load_audio_encoder(write("missing", missing))

    half_pair = {k: v for k, v in state.items() if not k.endswith("original1")}
    with pytest.raises(WeightsError, match=r"missing keys \(1\): encoder\.pos_conv_embed\.conv\.weight") as info:
        load_audio_encoder(write("half_pair", half_pair))
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in str(info.value)

    wrong = dict(state, **{"wav2vec2.feature_projection.projection.weight": torch.zeros(32, 16)})
    with pytest.raises(WeightsError, match=r"feature_projection\.projection\.weight: checkpoint \(32, 16\)"):
        load_audio_encoder(write("shape", wrong))

    hubert = tmp_path / "hubert"
    hubert.mkdir()
    (hubert / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(WeightsError, match="hubert"):
        load_audio_encoder(hubert)
    no_weights = tmp_path / "no_weights"
    reference.config.save_pretrained(no_weights)
    with pytest.raises(WeightsError, match="no weights found"):
        load_audio_encoder(no_weights)
    with pytest.raises(WeightsError, match="neither an audio-encoder preset"):
        load_audio_encoder(tmp_path / "nowhere")


def test_base_config_and_presets():
    assert dataclasses.replace(Wav2Vec2Config.from_hf_dict(BASE_960H_CONFIG), name="wav2vec2-base") == WAV2VEC2_BASE
    assert WAV2VEC2_BASE.receptive_field == 400 and WAV2VEC2_BASE.hop_length == 320
    assert WAV2VEC2_BASE.cnn_frames(16000) == 49 and WAV2VEC2_BASE.cnn_frames(399) == 0
    assert TINY_AUDIO.cnn_frames(16000) == 49  # same kernels and strides: 50 Hz
    with pytest.raises(ValueError, match="gelu"):
        Wav2Vec2Config.from_hf_dict(dict(BASE_960H_CONFIG, hidden_act="relu"))
    with pytest.raises(ValueError, match="adapter"):
        Wav2Vec2Config.from_hf_dict(dict(BASE_960H_CONFIG, add_adapter=True))
    assert WAV2VEC2_BASE.compute_hash() != TINY_AUDIO.compute_hash()
    # Our module tree has transformers' key names, minus the weight-norm pair fused into one weight.
    with torch.device("meta"):
        ours = set(Wav2Vec2Model(TINY_AUDIO).state_dict())
        theirs = set(transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0)).state_dict())
    pair = {f"encoder.pos_conv_embed.conv.parametrizations.weight.original{i}" for i in (0, 1)}
    assert ours == (theirs - pair) | {"encoder.pos_conv_embed.conv.weight"}


def test_tiny_preset_is_deterministic_and_shaped():
    a, b, c = load_audio_encoder("tiny"), load_audio_encoder("tiny"), load_audio_encoder("tiny", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    extractor = AudioFeatureExtractor(a)
    features = extractor(waveform(16000, seed=9))  # 1.0 s
    assert features.shape == (25, 5, 4, 32) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std() > 0.1
    assert torch.equal(features, AudioFeatureExtractor(b)(waveform(16000, seed=9)))
    # Hallo3's clip padding: 25 frames -> 49 (one clip).
    assert extractor(waveform(16000, seed=9), clip_length=49).shape == (49, 5, 4, 32)
    half = AudioFeatureExtractor(load_audio_encoder("tiny", dtype="bf16"))(waveform(16000, seed=9))
    assert half.dtype == torch.bfloat16 and half.shape == (25, 5, 4, 32)


def test_from_checkpoint_reads_the_preprocessor_config(tmp_path):
    folder = save_folder(hf_model("group", seed=10), tmp_path / "m", "safetensors")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    extractor = AudioFeatureExtractor.from_checkpoint(folder)
    assert extractor.normalize is False and extractor.sample_rate == 16000
    x = waveform(4000, seed=11)
    direct = AudioFeatureExtractor(load_audio_encoder(folder), normalize=False)(x)
    assert torch.equal(extractor(x), direct)
    assert not torch.allclose(AudioFeatureExtractor(load_audio_encoder(folder))(x), direct, atol=1e-3)


# --------------------------------------------------------------------------- bad waveforms

def test_bad_waveforms_are_rejected_with_clear_messages():
    extractor = AudioFeatureExtractor(load_audio_encoder("tiny"))
    with pytest.raises(AudioError, match="empty"):
        extractor(torch.zeros(0))
    with pytest.raises(AudioError, match=r"1-D mono samples, got shape \(2, 16000\)"):
        extractor(torch.zeros(2, 16000))
    x = waveform(16000)
    x[123] = float("nan")
    x[500] = float("inf")
    with pytest.raises(AudioError, match="2 non-finite samples .* first at index 123"):
        extractor(x)
    with pytest.raises(AudioError, match="399 samples; the wav2vec2 CNN needs at least 400 .*25.0 ms"):
        extractor(waveform(399))
    assert extractor(waveform(400)).shape == (1, 5, 4, 32)  # exactly the receptive field: 1 frame
    assert extractor(waveform(100), clip_length=49).shape == (49, 5, 4, 32)  # the padding makes it long enough
    with pytest.raises(AudioError, match="int16 PCM"):
        extractor(np.zeros(16000, dtype=np.int16))
    with pytest.raises(AudioError, match="int16 PCM"):
        extractor(torch.zeros(16000, dtype=torch.int16))
    with pytest.raises(AudioError, match="torch.Tensor or numpy.ndarray, got list"):
        extractor([0.0] * 16000)
    with pytest.raises(AudioError, match="44100 Hz .* 16000 Hz; resample"):
        extractor(waveform(16000), sample_rate=44100)
    assert issubclass(AudioError, InputError) and issubclass(AudioError, ValueError)
