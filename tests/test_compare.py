"""Side-by-side comparisons (benchmarks/compare.py, benchmarks/gemm.py): the diffusers mappings, the reference
offline loop, the speed-up ladder, the GEMM peak and the FLOP count behind `gemm_peak_fraction`.

Tolerances: our backbone and diffusers' run the same float32 ops (measured difference 0.0), the VAEs differ
only by `small_cpu_convolutions`' summation order (measured ~6e-6): both asserted at 1e-4, the brief's
bound. The reference loop must equal `Hallo3Pipeline.generate` bit for bit (see its test). No timing is
asserted; timings only have to be positive.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hallo_rt.benchmarks import compare, gemm
from hallo_rt.engine.audio_features import AudioFeatureExtractor
from hallo_rt.engine.chunks import ChunkSettings
from hallo_rt.engine.config import TINY, VaeConfig
from hallo_rt.engine.cpu_convolutions import small_cpu_convolutions
from hallo_rt.engine.dit import HalloDiT, ReferenceKV
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.engine.reference import ReferenceNet, reference_config
from hallo_rt.engine.reference_image import prepare_reference
from hallo_rt.engine.sampling import SamplerConfig
from hallo_rt.engine.vae import CogVideoXVae
from hallo_rt.engine.weights.common import seeded_init_

# `tiny`'s topology at 64 x 64 px (8 x 8 latents) and a VAE of widths 4..32: every module, a fraction of the cost.
MINI = dataclasses.replace(TINY, name="mini", latent_height=8, latent_width=8)
MINI_VAE = VaeConfig(name="mini", base_channels=4, channel_multipliers=(1, 2, 4, 8), num_res_blocks=1, norm_groups=4)
PARITY_ATOL = 1e-4
CLIP_NEW = 47  # new frames per 49-frame clip (2 motion frames)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small ops: on a shared 2-core machine OpenMP barrier spinning made two threads many times slower than
    one (see tests/test_vae.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mini():
    """(pipeline, extractor): `mini` denoiser, its reference network, the mini VAE on the CPU convolution
    route (as `load_pipeline` sets it up on CPU), and `tiny`'s audio encoder."""
    dit = seeded_init_(HalloDiT(MINI), 0).eval().requires_grad_(False)
    reference_net = seeded_init_(ReferenceNet(reference_config(MINI)), 1).eval().requires_grad_(False)
    vae = small_cpu_convolutions(seeded_init_(CogVideoXVae(MINI_VAE), 2).eval().requires_grad_(False))
    return Hallo3Pipeline(dit, reference_net, vae), AudioFeatureExtractor.from_checkpoint("tiny")


def speech(frames: int, seed: int = 0) -> torch.Tensor:
    """`frames` video frames' worth of 16 kHz noise-like audio (the content does not matter here)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames * 640, generator=g) * 0.1


def portrait():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (96, 80, 3), generator=g, dtype=torch.uint8).numpy()


# --- diffusers mappings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("frames, batch", [(3, 1), (13, 2)])
def test_dit_mapping_matches_diffusers(frames, batch):
    result = compare.dit_vs_diffusers(MINI, frames, batch, impls=("eager",), repeats=1, warmup=0)
    assert result["max_abs_diff_vs_diffusers"]["eager"] < PARITY_ATOL
    assert result["impl_used"] == "eager" and result["speedup_vs_diffusers_dit"] > 0
    assert result["tokens_per_step"] == MINI.text_len + frames * MINI.tokens_per_frame
    assert result["config_hash"] == MINI.compute_hash()
    assert result["engine_hallo3_step_with_face_audio_cached_kv"]["eager"]["median_s"] > 0


def test_vae_mapping_matches_diffusers():
    result = compare.vae_vs_diffusers(MINI_VAE, latent_frames=5, latent_size=(4, 6), repeats=1, warmup=0)
    assert result["max_abs_diff_vs_diffusers"] < PARITY_ATOL
    assert result["video_frames"] == 17 == result["engine_stream_decode_grouping_3_3"]["frames"]
    assert result["frame_size"] == [32, 48] and result["speedup_vs_diffusers_vae"] > 0


def test_plain_convolutions_undoes_the_cpu_route_and_keeps_the_weights(mini):
    pipeline, _ = mini
    plain = compare.plain_convolutions(pipeline.vae)
    assert torch.equal(plain.state_dict()["decoder.conv_in.conv.weight"],
                       pipeline.vae.state_dict()["decoder.conv_in.conv.weight"])
    assert "plain Conv3d" in compare._pipeline_backend(Hallo3Pipeline(pipeline.dit, pipeline.reference_net, plain))
    assert "small_cpu_convolutions" in compare._pipeline_backend(pipeline)
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert (plain.decode(z) - pipeline.vae.decode(z)).abs().max() < 1e-5  # another summation order only


# --- the reference loop and the ladder --------------------------------------------------------------------

def test_reference_loop_equals_generate(mini):
    """Bit for bit, two clips: the loop recomputes the bank per clip and hands the denoiser the raw bank,
    whose K/V every layer projects at every step on the bank broadcast to the CFG batch; `generate` uses
    `reference_kv(bank, batch=2)`, the same projection of the same broadcast bank, computed once. The
    reference network is deterministic and the random numbers are drawn in the same order, so every op sees
    the same operands in the same order."""
    pipeline, extractor = mini
    frames = CLIP_NEW + 13  # two clips, the second one short (padded, then trimmed)
    audio, image = speech(frames), portrait()
    banks, calls = [], []
    hooks = [pipeline.dit.register_forward_pre_hook(lambda module, args: banks.append(type(args[5]))),
             pipeline.reference_net.register_forward_hook(lambda *a: calls.append(1))]
    try:
        result = compare.reference_offline_loop(pipeline, extractor, image, audio, steps=2, cfg_scale=3.5,
                                                seed=5, keep_frames=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert result["frames"] == frames and result["clips"] == 2 and len(calls) == 2
    assert banks == [torch.Tensor] * 4  # 2 clips x 2 steps, each with the raw bank
    cfg = pipeline.dit.config
    features = extractor(audio, clip_length=pipeline.clip_frames)
    expected = torch.cat(list(pipeline.generate(
        prepare_reference(image, *pipeline.clip_size), features, torch.zeros(cfg.face_embed_dim),
        torch.zeros(cfg.text_len, cfg.text_dim), SamplerConfig(steps=2, cfg_scale=3.5),
        generator=torch.Generator().manual_seed(5), num_frames=frames)))
    assert result["video"].shape == expected.shape == (frames, 64, 64, 3)
    assert torch.equal(result["video"], expected)


def test_generate_uses_the_cached_kv(mini):
    """The contrast the ladder's caching rung measures: `generate` gives the denoiser `ReferenceKV`."""
    pipeline, extractor = mini
    banks = []
    hook = pipeline.dit.register_forward_pre_hook(lambda module, args: banks.append(type(args[5])))
    try:
        compare.chunked_loop(pipeline, extractor, portrait(), speech(20),
                             ChunkSettings(chunk_latents=MINI.latent_frames, motion="pixel"),
                             SamplerConfig(steps=1, cfg_scale=1.0))
    finally:
        hook.remove()
    assert banks == [ReferenceKV]


def test_ladder_rungs_produce_the_same_frames(mini):
    pipeline, extractor = mini
    result = compare.speedup_ladder(pipeline, extractor, portrait(), speech(80), clips=1, reference_steps=2,
                                    few_steps=1, seed=1)
    names = [r["rung"] for r in result["rungs"]]
    assert names == ["reference", "few_steps", "no_cfg", "caching", "streaming_chunks", "backend", "pipelining",
                     "streaming_features"]
    assert result["audio_s"] == CLIP_NEW / 25  # trimmed to one clip's new frames
    assert {r["frames"] for r in result["rungs"]} == {CLIP_NEW}
    rungs = result["rungs"]
    assert rungs[0]["factor_over_previous"] is None
    for before, after in zip(rungs, rungs[1:]):
        assert after["factor_over_previous"] == pytest.approx(before["s_per_video_s"] / after["s_per_video_s"])
    assert result["total_speedup"] == pytest.approx(rungs[0]["s_per_video_s"] / rungs[-1]["s_per_video_s"])
    assert "plain Conv3d" in rungs[0]["backend_used"] and "small_cpu_convolutions" in rungs[5]["backend_used"]
    assert rungs[0]["parameters"]["steps"] == 2 and rungs[2]["parameters"]["cfg_scale"] == 1.0
    assert rungs[4]["parameters"]["chunk"]["motion"] == "latent"


# --- GEMM peak and FLOPs ----------------------------------------------------------------------------------

def test_gemm_peak_returns_positive_numbers():
    peak = gemm.measure_gemm_peak(sizes=(64, 96), repeats=1)
    assert {"gflops", "size", "dtype", "threads", "samples"} <= set(peak)
    assert peak["gflops"] > 0 and peak["size"] in (64, 96) and peak["threads"] == 1
    assert peak["dtype"] == "torch.float32"
    assert len(peak["samples"]) == 2 * len(peak["routes"])
    assert peak["gflops"] == max(s["gflops"] for s in peak["samples"])


def test_step_flops_are_every_matrix_product_including_cpu_attention():
    """The backbone's FLOPs, derived by hand, equal what `denoiser_gemm_fraction` counts: the attention
    (`_scaled_dot_product_flash_attention_for_cpu`, which torch's counter leaves at 0) is included."""
    c = dataclasses.replace(MINI, face_cross_attention=False, audio_cross_attention=False)
    B, F = 2, 3
    D, T, L, H, Dh, M, p = c.hidden_dim, c.time_embed_dim, c.text_len, c.num_heads, c.head_dim, c.mlp_dim, c.patch_size
    S = F * c.tokens_per_frame
    N = L + S
    attention = 4 * B * H * N * N * Dh  # Q K^T and P V
    per_layer = 2 * B * T * 12 * D + 2 * B * N * D * 3 * D + attention + 2 * B * N * D * D + 4 * B * N * D * M
    expected = (2 * B * (D * T + T * T) + 2 * B * S * D * c.in_channels * p * p + 2 * B * L * c.text_dim * D
                + c.num_layers * per_layer + 2 * B * T * 2 * D + 2 * B * S * D * p * p * c.out_channels)
    result = gemm.denoiser_gemm_fraction(c, 100.0, frames=F, batch=B, repeats=1, warmup=0, reference_bank=False)
    assert result["flops"]["total"] == expected
    assert result["flops"]["by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] == c.num_layers * attention
    assert result["gemm_peak_fraction"] == pytest.approx(result["achieved_gflops"] / 100.0)


def test_onednn_linears_compute_the_same_step():
    result = gemm.denoiser_gemm_fraction(MINI, {"gflops": 50.0}, frames=3, impl="onednn", repeats=1, warmup=0)
    assert result["max_abs_diff_vs_eager"] < 1e-4 and result["peak_gflops"] == 50.0
    assert result["tokens_per_step"] == MINI.text_len + 3 * MINI.tokens_per_frame


def test_a_measured_peak_is_timed_again_between_the_steps():
    peak = gemm.measure_gemm_peak(sizes=(64,), repeats=1, routes=("torch.mm",))
    result = gemm.denoiser_gemm_fraction(MINI, peak, frames=1, repeats=2, warmup=0)
    assert result["peak_gflops_given"] == peak["gflops"] and result["peak_gflops_during_steps"] > 0
    assert result["peak_gflops"] == max(peak["gflops"], result["peak_gflops_during_steps"])
    assert result["gemm_peak_fraction"] == pytest.approx(result["achieved_gflops"] / result["peak_gflops"])


def test_the_engine_fraction_counts_only_engine_paths():
    steps = {impl: {"impl": impl, "gemm_peak_fraction": f, "backend_used": impl}
             for impl, f in (("eager", 0.6), ("onednn", 0.8), ("compile", 0.7))}
    result = gemm.engine_fraction(steps)
    assert result["gemm_peak_fraction"] == 0.7 and result["impl"] == "compile"
    assert result["by_impl"]["onednn"] == 0.8
    assert gemm.engine_fraction({"onednn": steps["onednn"]})["gemm_peak_fraction"] is None


def test_midsize_config_is_large_enough():
    cfg = gemm.midsize_config()
    assert cfg.name == "mid" and cfg.hidden_dim >= 1024 and cfg.mlp_dim == 4 * cfg.hidden_dim
    assert cfg.latent_frames * cfg.tokens_per_frame + cfg.text_len >= 1000 and cfg.num_layers == 2
    assert cfg.face_cross_attention and cfg.audio_cross_attention


# --- bad arguments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: gemm.measure_gemm_peak(sizes=()), ValueError, "sizes"),
    (lambda: gemm.measure_gemm_peak(sizes=(0,)), ValueError, "sizes"),
    (lambda: gemm.measure_gemm_peak(repeats=0), ValueError, "repeats"),
    (lambda: gemm.measure_gemm_peak(dtype=torch.int32), ValueError, "dtype"),
    (lambda: gemm.measure_gemm_peak(routes=("cublas",)), ValueError, "available here: torch.mm"),
    (lambda: gemm.denoiser_gemm_fraction(MINI, 0.0), ValueError, "peak"),
    (lambda: gemm.denoiser_gemm_fraction(MINI, {"gflops": -1}), ValueError, "peak"),
    (lambda: gemm.denoiser_gemm_fraction(MINI, 10.0, impl="tensorrt"), ValueError, "impl 'tensorrt'"),
    (lambda: gemm.denoiser_gemm_fraction(MINI, 10.0, frames=14), ValueError, r"frames must be an integer in 1\.\.13"),
    (lambda: compare.dit_vs_diffusers(MINI, 0, 1), ValueError, "frames"),
    (lambda: compare.dit_vs_diffusers(MINI, 3, 0), ValueError, "batch"),
    (lambda: compare.dit_vs_diffusers(MINI, 3, 1, impls=("onnx",)), ValueError, "impl"),
    (lambda: compare.dit_vs_diffusers(MINI_VAE, 3, 1), TypeError, "DiTConfig"),
    (lambda: compare.vae_vs_diffusers(MINI, 3), TypeError, "VaeConfig"),
    (lambda: compare.vae_vs_diffusers(MINI_VAE, 0), ValueError, "latent_frames"),
])
def test_bad_arguments_raise_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("kwargs, message", [
    ({"clips": 0}, "clips"), ({"backend": "tensorrt"}, "ladder backend"), ({"chunk_latents": 0}, "chunk_latents"),
])
def test_bad_ladder_arguments_raise_before_any_work(mini, kwargs, message):
    pipeline, extractor = mini
    with pytest.raises(ValueError, match=message):
        compare.speedup_ladder(pipeline, extractor, portrait(), speech(10), **kwargs)


@pytest.mark.parametrize("kwargs, audio, message", [
    ({"steps": 0}, speech(10), "steps"), ({"cfg_scale": -1.0}, speech(10), "cfg_scale"),
    ({}, torch.zeros(2, 640), "1-D"),
])
def test_bad_reference_loop_arguments_raise(mini, kwargs, audio, message):
    pipeline, extractor = mini
    with pytest.raises(ValueError, match=message):
        compare.reference_offline_loop(pipeline, extractor, portrait(), audio, **kwargs)
