"""The cost model against the real modules: FLOPs equal FlopCounterMode's count of the same call, weights equal
the parameters read; the projection maths by hand; the real-time table's shape and monotonicity; the CPU
cross-check's flagging; the CLI; and clear errors for bad arguments."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hallo_rt.benchmarks import cost_model as cm
from hallo_rt.engine.chunks import ChunkedGenerator, ChunkSettings
from hallo_rt.engine.config import TINY, VAE_TINY, VaeConfig
from hallo_rt.engine.cpu_convolutions import small_cpu_convolutions
from hallo_rt.engine.dit import HalloDiT
from hallo_rt.engine.pipeline import Hallo3Pipeline
from hallo_rt.engine.reference import ReferenceNet, reference_config
from hallo_rt.engine.reference_image import prepare_reference
from hallo_rt.engine.sampling import SamplerConfig
from hallo_rt.engine.vae import CogVideoXVae, Grouping
from hallo_rt.engine.weights.common import seeded_init_
from hallo_rt.engine.wav2vec2 import TINY_AUDIO, Wav2Vec2Config, Wav2Vec2Model

# A second denoiser with other widths everywhere (and patch 1), a second VAE (three levels, one temporal),
# and a second audio encoder (layer-norm CNN with bias, pre-LN layers, odd positional kernel).
OTHER_DIT = dataclasses.replace(
    TINY, name="other", num_layers=3, num_heads=3, head_dim=16, mlp_dim=96, time_embed_dim=40, text_dim=24,
    text_len=5, patch_size=1, latent_height=6, latent_width=10, face_tokens=3, face_token_dim=20,
    audio_window=3, audio_layers=2, audio_dim=12, audio_hidden_dim=28, audio_tokens=5, audio_token_dim=36)
OTHER_VAE = VaeConfig(name="other", base_channels=8, channel_multipliers=(1, 3, 2), num_res_blocks=2, norm_groups=4,
                      temporal_compression=2)
OTHER_AUDIO = Wav2Vec2Config(name="other", hidden_size=24, num_layers=2, num_heads=3, intermediate_size=40,
                             conv_dims=(16, 20, 12), conv_kernels=(10, 3, 2), conv_strides=(5, 4, 4), conv_bias=True,
                             feat_extract_norm="layer", do_stable_layer_norm=True, pos_conv_kernel=7,
                             pos_conv_groups=3)
SMALL = dataclasses.replace(TINY, name="tiny-small", latent_frames=5, latent_height=4, latent_width=4)  # 32x32 px
SMALL_VAE = VaeConfig(name="tiny-test", base_channels=8, num_res_blocks=1, norm_groups=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """FLOP counts do not depend on threads; one thread keeps these many small calls fast on a busy machine
    (two threads on two shared vCPUs wait for each other at every op)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _seeded(module: torch.nn.Module) -> torch.nn.Module:
    seeded_init_(module, 0)
    return module.eval()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dit_inputs(cfg, frames: int, batch: int, audio_frames: int | None = None):
    g = torch.Generator().manual_seed(0)
    audio_frames = 4 * frames - 3 if audio_frames is None else audio_frames
    return (torch.randn(batch, frames, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=g),
            torch.full((batch,), 500), torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g),
            torch.randn(batch, audio_frames, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, generator=g),
            torch.randn(batch, cfg.face_embed_dim, generator=g))


@pytest.fixture(scope="module")
def tiny_dit():
    return {cfg.name: (_seeded(HalloDiT(cfg)), _seeded(ReferenceNet(reference_config(cfg))))
            for cfg in (TINY, OTHER_DIT)}


# --- FLOPs and weights against the real modules --------------------------------------------------------

@pytest.mark.parametrize("name,frames,batch,bank", [
    ("tiny", 3, 1, "cached"), ("tiny", 3, 2, "cached"), ("tiny", 13, 1, "recomputed"), ("tiny", 13, 2, "cached"),
    ("tiny", 3, 2, "none"), ("other", 3, 2, "recomputed"), ("other", 4, 1, "cached")])
def test_denoiser_step_flops_equal_flop_counter(tiny_dit, name, frames, batch, bank):
    dit, reference_net = tiny_dit[name]
    cfg = dit.config
    ref = reference_net(torch.randn(1, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width))
    bank_input = {"cached": dit.reference_kv(ref, batch=batch), "recomputed": ref, "none": None}[bank]
    audio_frames = 4 * frames if frames % 2 == 0 else None  # an even count: a continuation's 4F audio frames
    with torch.no_grad():
        counted, out = cm.count_flops(dit, *_dit_inputs(cfg, frames, batch, audio_frames), ref_bank=bank_input)
    assert out.shape[:2] == (batch, frames)
    work = cm.denoiser_step_cost(cfg, frames, batch, audio_frames=audio_frames, bank=bank)
    assert work.flops == counted
    if frames == cfg.latent_frames:  # every parameter is read once (the positional table in full)
        assert work.weights == _params(dit)


def test_count_flops_counts_cpu_attention():
    q, k = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 11, 8)
    counted, _ = cm.count_flops(torch.nn.functional.scaled_dot_product_attention, q, k, k)
    assert counted == 2 * (2 * 3 * 7 * 11 * 8) * 2  # QK^T and PV, 2*M*N*K each


@pytest.mark.parametrize("name", ["tiny", "other"])
def test_reference_net_and_kv_flops(tiny_dit, name):
    dit, reference_net = tiny_dit[name]
    cfg = dit.config
    latent = torch.randn(1, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width)
    counted, bank = cm.count_flops(reference_net, latent)
    assert cm.reference_net_cost(cfg).flops == counted
    counted, _ = cm.count_flops(dit.reference_kv, bank, batch=2)
    assert cm.reference_kv_cost(cfg, batch=2).flops == counted


@pytest.mark.parametrize("config,frames,size", [(VAE_TINY, 3, (64, 64)), (VAE_TINY, 1, (128, 64)),
                                                (OTHER_VAE, 5, (24, 36)), (SMALL_VAE, 3, (64, 64))])
def test_vae_encode_flops_and_weights(config, frames, size):
    vae = _seeded(CogVideoXVae(config))
    counted, moments = cm.count_flops(vae.encoder, torch.randn(1, 3, frames, *size))
    work = cm.vae_encode_cost(config, frames, size)
    assert work.flops == counted
    assert work.weights == _params(vae.encoder)
    step = config.spatial_compression
    assert moments.shape[2:] == (1 + (frames - 1) // config.temporal_compression, size[0] // step, size[1] // step)


@pytest.mark.parametrize("config,latent", [(VAE_TINY, (4, 6)), (OTHER_VAE, (5, 7))])
def test_vae_decode_flops_first_chunk_clip_and_continuation(config, latent):
    # the engine's CPU route (load_pipeline applies it): the same products, so the same count, and 3x faster
    vae = small_cpu_convolutions(_seeded(CogVideoXVae(config)))
    z = torch.randn(1, config.latent_channels, 5, *latent)
    # a whole 5-latent clip with the reference grouping (3, 2), as pixel motion decodes it
    counted, _ = cm.count_flops(vae.decode, z)
    work = cm.vae_decode_cost(config, Grouping.for_clip(5).sizes(5), latent)
    assert work.flops == counted and work.weights == _params(vae.decoder)
    # latent motion: a stream decoder with Grouping(3, 3): the first chunk, then a continuation
    stream = vae.stream_decoder(Grouping(3, 3))
    counted, first = cm.count_flops(stream.decode, z[:, :, :3])
    assert cm.vae_decode_cost(config, [3], latent, at_start=True).flops == counted
    counted, later = cm.count_flops(stream.decode, z[:, :, 3:])
    assert later.shape[2] == 0  # 2 of 3 frames: nothing decoded yet
    counted, later = cm.count_flops(stream.decode, z[:, :, :1])
    assert cm.vae_decode_cost(config, [3], latent, at_start=False).flops == counted
    t = config.temporal_compression
    assert (first.shape[2], later.shape[2]) == (1 + t * 2, 3 * t)


@pytest.mark.parametrize("config,samples,frames", [(TINY_AUDIO, 62 * 640, 62), (TINY_AUDIO, 16000, None),
                                                   (OTHER_AUDIO, 5000, 9), (OTHER_AUDIO, 4321, None)])
def test_audio_encoder_flops_and_weights(config, samples, frames):
    encoder = _seeded(Wav2Vec2Model(config))
    with torch.no_grad():
        counted, states = cm.count_flops(encoder, torch.randn(1, samples), num_frames=frames)
    work = cm.audio_encoder_cost(config, samples, frames)
    assert work.flops == counted
    assert states[0].shape[1] == (frames or config.cnn_frames(samples))
    unused = 0 if not config.do_stable_layer_norm else 2 * config.hidden_size  # pre-LN: the output norm is not run
    assert work.weights == _params(encoder) - unused


class _KernelCounter(TorchDispatchMode):
    """Non-view aten ops run: the kernels eager mode launches (what `Work.ops` models)."""

    VIEWS = {"view", "_unsafe_view", "expand", "permute", "transpose", "unsqueeze", "squeeze", "slice", "select",
             "t", "alias", "as_strided", "detach", "unflatten", "split", "chunk", "unbind", "split_with_sizes",
             "lift_fresh", "_reshape_alias", "unfold"}

    def __init__(self):
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.kernels += func._overloadpacket.__name__ not in self.VIEWS
        return func(*args, **(kwargs or {}))


def _kernels(fn, *args, **kwargs) -> int:
    fn(*args, **kwargs)  # warm caches (RoPE tables) first
    with torch.no_grad(), _KernelCounter() as counter:
        fn(*args, **kwargs)
    return counter.kernels


def test_op_counts_follow_the_eager_kernels(tiny_dit):
    """`ops` (what the per-op overhead multiplies) is within 5% of the kernels eager mode runs."""
    dit, reference_net = tiny_dit["tiny"]
    latent = torch.randn(1, 1, 16, 16, 16)
    bank = reference_net(latent)
    vae, encoder = _seeded(CogVideoXVae(VAE_TINY)), _seeded(Wav2Vec2Model(TINY_AUDIO))
    z = torch.randn(1, 16, 5, 4, 4)
    stream = vae.stream_decoder(Grouping(3, 3))
    stream.decode(z[:, :, :3])
    cases = [
        (_kernels(dit, *_dit_inputs(TINY, 3, 1), ref_bank=dit.reference_kv(bank)), cm.denoiser_step_cost(TINY, 3)),
        (_kernels(dit, *_dit_inputs(TINY, 13, 2), ref_bank=bank),
         cm.denoiser_step_cost(TINY, 13, 2, bank="recomputed")),
        (_kernels(reference_net, latent), cm.reference_net_cost(TINY)),
        (_kernels(vae.encoder, torch.randn(1, 3, 3, 32, 32)), cm.vae_encode_cost(VAE_TINY, 3, (32, 32))),
        (_kernels(vae.decode, z), cm.vae_decode_cost(VAE_TINY, [3, 2], (4, 4))),
        (_kernels(lambda: stream.decode(z[:, :, :3])), cm.vae_decode_cost(VAE_TINY, [3], (4, 4), at_start=False)),
        (_kernels(encoder, torch.randn(1, 62 * 640), num_frames=62), cm.audio_encoder_cost(TINY_AUDIO, 62 * 640, 62)),
    ]
    for kernels, work in cases:
        assert abs(work.ops - kernels) <= 0.05 * kernels, (work.ops, kernels)


def test_stages_equal_the_engine_calls():
    """The stream's stages count what `ChunkedGenerator` runs: a chunk's denoising (steps x step, CFG batch 2),
    the next chunk's conditioning (inside its denoise, pixel motion) and each chunk's decode."""
    from hallo_rt.engine.weights import load_dit, load_reference_net, load_vae

    pipeline = Hallo3Pipeline(load_dit("tiny", config=SMALL), load_reference_net("tiny", config=SMALL),
                              small_cpu_convolutions(load_vae("tiny", config=SMALL_VAE)))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    reference = prepare_reference(image, 32, 32)
    costs = cm.stream_cost((SMALL, SMALL_VAE, TINY_AUDIO), (32, 32), 3, 2, 3.5, "fp32", "pixel")
    stages = {name: stage.work.flops for name, stage in costs.stages.items()}
    counted, gen = cm.count_flops(
        ChunkedGenerator, pipeline, reference, torch.zeros(SMALL.face_embed_dim), torch.zeros(SMALL.text_len,
                                                                                              SMALL.text_dim),
        ChunkSettings(chunk_latents=3, motion="pixel"), SamplerConfig(steps=2, cfg_scale=3.5),
        torch.Generator().manual_seed(0))
    assert counted == stages["reference_bank"] + stages["conditioning"]  # first conditioning, reference, its K/V
    features = torch.randn(costs.new_frames, SMALL.audio_window, SMALL.audio_layers, SMALL.audio_dim)
    for chunk in range(2):
        counted, latents = cm.count_flops(gen.denoise, features)
        assert counted == 2 * stages["denoise_step"] + (stages["conditioning"] if chunk else 0)
        counted, frames = cm.count_flops(gen.decode, latents)
        assert counted == stages["decode"] and frames.shape[1] == costs.new_frames


# --- projection ----------------------------------------------------------------------------------------

def _one_stage(work: cm.Work, kind="transformer", calls=4.0) -> cm.StreamCost:
    return cm.StreamCost({"s": cm.StageCost(((kind, work),), calls, False, "one call")}, new_frames=10,
                         precision="bf16")


def test_projection_by_hand():
    hw = cm.Hardware("test", {"bf16": 100.0}, 2.0, "made up")
    util = cm.Utilisation(transformer=0.5, convolution=0.25, memory=0.8, op_overhead_s=1e-3)
    # compute-bound: 1e12 FLOP at 100 TFLOP/s x 0.5 = 20 ms; bytes 2 x 1e9 + 2 x 2 x 1e9 = 6e9 at 2 TB/s x 0.8
    # = 3.75 ms; plus 3 ops x 1 ms
    work = cm.Work(flops=10**12, weights=10**9, activations=10**9, ops=3)
    row = cm.project(_one_stage(work), hw, utilisation=util)
    stage = row["stages"]["s"]
    assert row["kind"] == "projection" and row["peak_tflops"] == 100.0 and row["utilisation"]["memory"] == 0.8
    assert stage["compute_s"] == pytest.approx(0.02) and stage["memory_s"] == pytest.approx(6e9 / 1.6e12)
    assert stage["seconds"] == pytest.approx(0.023) and stage["bound"] == "compute"
    assert stage["per_chunk_s"] == pytest.approx(0.092)  # 4 calls per chunk
    assert row["seconds_per_video_s"] == pytest.approx(0.092 * 2.5)  # 25 fps / 10 frames per chunk
    assert row["fps"] == pytest.approx(25 / 0.23)
    # the same work as a convolution takes half the compute rate; a memory-bound one is set by the bytes
    assert cm.project(_one_stage(work, "convolution"), hw, utilisation=util)["stages"]["s"]["compute_s"] == \
        pytest.approx(0.04)
    memory = cm.project(_one_stage(cm.Work(flops=10**9, weights=8 * 10**9)), hw, "bf16", util)["stages"]["s"]
    assert memory["bound"] == "memory" and memory["seconds"] == pytest.approx(16e9 / 1.6e12)
    # fp8 quantises the transformer GEMMs only: a convolution part runs at the bf16 peak with bf16 bytes
    hw8 = cm.Hardware("test8", {"bf16": 100.0, "fp8": 200.0}, 2.0, "made up")
    fp8 = cm.project(_one_stage(work), hw8, "fp8", util)["stages"]["s"]
    assert fp8["compute_s"] == pytest.approx(0.01) and fp8["memory_s"] == pytest.approx((1e9 + 4e9) / 1.6e12)
    conv8 = cm.project(_one_stage(work, "convolution"), hw8, "fp8", util)["stages"]["s"]
    assert conv8["compute_s"] == pytest.approx(0.04) and conv8["memory_s"] == pytest.approx(6e9 / 1.6e12)


def test_bytes_follow_precision():
    work = cm.Work(weights=100, activations=10, raw_bytes=7)
    assert [work.bytes(p) for p in ("fp32", "bf16", "fp8")] == [400 + 80 + 7, 200 + 40 + 7, 100 + 40 + 7]


def test_hallo3_stream_cost_shape():
    costs = cm.stream_cost("hallo3", (480, 720), 13, 50, 3.5, "bf16", "pixel")
    stages = costs.to_dict()["stages"]
    assert costs.new_frames == 47 and stages["denoise_step"]["calls_per_chunk"] == 50
    assert stages["reference_bank"]["once_per_stream"] and stages["reference_bank"]["gflop_per_video_s"] == 0
    # one CFG step of the 5B backbone plus face/audio over 226 + 13 x 1350 tokens: 0.80 PFLOP
    assert 7.9e5 < stages["denoise_step"]["gflop_per_call"] < 8.1e5
    hallo3 = cm.stream_cost("hallo3", (480, 720), 13, 50, 3.5, "bf16", "pixel", reference="hallo3")
    assert hallo3.stages["denoise_step"].work.flops > costs.stages["denoise_step"].work.flops
    assert not hallo3.stages["reference_bank"].once_per_stream
    latent = cm.stream_cost("hallo3", (480, 720), 3, 4, 1.0, "bf16", "latent")
    assert latent.new_frames == 12 and latent.stages["conditioning"].once_per_stream


def test_realtime_table_rows_and_monotone():
    rows = cm.realtime_table("hallo3", (480, 720))
    assert len(rows) == 5 * 2 * 2 * 2 * 4 * 2 and all(r["kind"] == "projection" for r in rows)
    index = {(r["hardware"], r["gpus"], r["precision"], r["chunk_latents"], r["cfg"], r["steps"]): r for r in rows}
    assert len(index) == len(rows)
    for hw, g, p, c, cfg in itertools.product(("H100 SXM", "H200 SXM"), (1, 2, 4, 8), ("bf16", "fp8"), (3, 13),
                                              (1.0, 3.5)):
        times = [index[(hw, g, p, c, cfg, n)]["seconds_per_video_s"] for n in (1, 2, 4, 8, 50)]
        assert times == sorted(times) and times[0] < times[-1]  # more steps never faster
        for n in (1, 50):
            row = index[(hw, g, p, c, cfg, n)]
            assert row["realtime"] == (row["fps"] >= 25)
            assert row["seconds_per_video_s"] >= index[(hw, g, p, c, 1.0, n)]["seconds_per_video_s"]
            if g > 1:
                assert row["seconds_per_video_s"] < index[(hw, g // 2, p, c, cfg, n)]["seconds_per_video_s"]
    assert not index[("H100 SXM", 1, "bf16", 13, 3.5, 50)]["realtime"]
    table = cm.markdown_table(rows)
    assert table.count("\n") == 1 + 2 * 2 * 2 * 5 and "H200 SXM x8" in table


# --- cross-check ---------------------------------------------------------------------------------------

def test_cross_check_flags_a_stage_three_times_off():
    costs = cm.stream_cost("tiny", None, 3, 4, 1.0, "fp32", "pixel")
    util = cm.Utilisation(0.5, 0.2, 0.5, 1e-5)
    exact = cm.cross_check({name: 1.0 for name in costs.stages}, costs, 80.0, 20.0, util)
    predicted = {name: row["predicted_s"] for name, row in exact["stages"].items()}
    ok = cm.cross_check(predicted, costs, 80.0, 20.0, util)
    assert ok["not_trusted"] == [] and all(r["ratio"] == pytest.approx(1.0) for r in ok["stages"].values())
    off = cm.cross_check({**predicted, "decode": 3 * predicted["decode"]}, costs, 80.0, 20.0, util)
    assert off["not_trusted"] == ["decode"] and not off["stages"]["decode"]["within_2x"]
    assert off["stages"]["decode"]["ratio"] == pytest.approx(3.0) and "decode" in off["summary"]
    # per chunk: the denoiser's 4 steps per chunk; a session's `denoise`: 4 steps and the conditioning encode
    chunk = cm.cross_check({"denoise_step": 4 * predicted["denoise_step"]}, costs, 80.0, 20.0, util, per="chunk")
    assert chunk["stages"]["denoise_step"]["ratio"] == pytest.approx(1.0)
    session = cm.cross_check({"denoise": 4 * predicted["denoise_step"] + predicted["conditioning"]}, costs, 80.0,
                             20.0, util)
    assert session["stages"]["denoise"]["ratio"] == pytest.approx(1.0, rel=1e-6)


def test_measure_bandwidth_keys():
    result = cm.measure_bandwidth(size_mb=4, repeats=2)
    assert result["gbs"] > 0 and result["copy_gbs"] > 0 and result["add_gbs"] > 0 and result["size_mb"] == 4
    assert cm.measure_bandwidth(size_mb=4, repeats=1, clock="thread")["threads"] == 1
    with pytest.raises(ValueError, match="clock must be one of wall, thread"):
        cm.measure_bandwidth(size_mb=4, clock="cpu")


def test_measure_cpu_stages_feeds_cross_check():
    """Every stage is timed (structure only: no timing assertions) and the cross-check takes the result."""
    measured = cm.measure_cpu_stages("tiny", 3, 1.0, "latent", repeats=1, clock="thread")
    costs = cm.stream_cost("tiny", None, 3, 4, 1.0, "fp32", "latent")
    assert set(measured) == set(costs.stages) and all(t > 0 for t in measured.values())
    peak = cm.measure_gemm_peak_thread_time(sizes=(128,), repeats=1)
    check = cm.cross_check(measured, costs, peak, 20.0)
    assert peak > 0 and check["kind"] == "cross-check" and set(check["stages"]) == set(costs.stages)


# --- CLI and errors --------------------------------------------------------------------------------------

def test_cli_json_and_markdown(capsys):
    assert cm.main(["--preset", "tiny", "--chunk-latents", "3", "--steps", "4", "--cfg", "1", "--json",
                    "--hardware", "h200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "projection" and [p["hardware"] for p in report["projections"]] == ["H200 SXM"]
    assert report["cost"]["stages"]["denoise_step"]["calls_per_chunk"] == 4
    assert cm.main(["--preset", "hallo3", "--size", "480x720", "--chunk-latents", "13", "--steps", "50",
                    "--cfg", "3.5", "--precision", "bf16", "--table"]) == 0
    out = capsys.readouterr().out
    assert "Projection (not a measurement)" in out and "| denoise_step |" in out and "H100 SXM x8" in out


@pytest.mark.parametrize("argv,message", [
    (["--size", "480by720"], "HEIGHTxWIDTH"), (["--size", "480x700"], "multiples of 16"),
    (["--chunk-latents", "4"], "odd chunk_latents"), (["--steps", "0"], "steps must be in")])
def test_cli_bad_args(capsys, argv, message):
    assert cm.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_args_raise_clearly():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        cm.stream_cost("nope")
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        cm.stream_cost("tiny", precision="fp4")
    with pytest.raises(ValueError, match="cfg_scale must be"):
        cm.stream_cost("tiny", cfg=-1.0)
    with pytest.raises(ValueError, match="unknown hardware 'a100'"):
        cm.project(cm.stream_cost("tiny"), "a100")
    with pytest.raises(ValueError, match="no stated fp32 peak"):
        cm.project(cm.stream_cost("tiny", precision="fp32"), cm.Hardware("x", {"bf16": 1.0}, 1.0, ""))
    with pytest.raises(ValueError, match="no cost for stages"):
        cm.cross_check({"encode_mp4": 1.0}, cm.stream_cost("tiny"), 80.0, 20.0)
    with pytest.raises(ValueError, match="3 GPUs"):
        cm.realtime_table("tiny", None, gpus=(3,))
    with pytest.raises(ValueError, match="utilisation memory"):
        cm.Utilisation(memory=1.5)
    with pytest.raises(ValueError, match="do not compress to 3"):
        cm.denoiser_step_cost(TINY, 3, audio_frames=5)
