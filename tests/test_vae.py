"""The CogVideoX 3D causal VAE: parity with diffusers, checkpoint loading (diffusers, SAT, hallo-rt, presets),
streaming decode exactness and memory, input errors.

Tolerances: our decoder and diffusers' run the same float32 ops in the same order, so parity (and streaming vs
whole-clip decode) is asserted at 1e-5, measured exactly 0; two routes through the same group loop (manual
`decode_group` vs streaming, chunk sizes of single-frame streaming) must be bit-exact. bf16 vs fp32 of the same
weights: relative L2 < 0.05 (measured 0.01).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import pytest
import torch
from checkpoint_factory import write_malicious_pickle
from vae_checkpoints import SAT_FILE, engine_to_sat_vae_keys, loss_junk, sat_vae_shapes, write_sat_vae

from hallo_rt.engine.config import VAE_HALLO3, VAE_TINY, VaeConfig, get_vae_preset
from hallo_rt.engine.validation import InputError
from hallo_rt.engine.vae import CausalState, CogVideoXVae, Grouping
from hallo_rt.engine.weights import WeightsError, load_dit, load_vae, save_engine_format
from hallo_rt.engine.weights import vae_format
from hallo_rt.engine.weights.common import seeded_init_

# Widths 8, 16, 16, 32 with 4 groups: every module of the real VAE, small enough for two CPU cores.
CFG = VaeConfig(name="test-small", base_channels=8, num_res_blocks=1, norm_groups=4)
LEVELS = len(CFG.channel_multipliers)
LATENT_H, LATENT_W = 4, 6  # 32 x 48 pixels
PARITY_ATOL = 1e-5


def latents(frames: int, batch: int = 1, seed: int = 0, height: int = LATENT_H, width: int = LATENT_W):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CFG.latent_channels, frames, height, width, generator=g)


def pixels(frames: int, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, 8 * LATENT_H, 8 * LATENT_W, generator=g) * 2 - 1


def pixel_frames(latent_frames: int, first_group_odd: bool) -> int:
    """Output frames of `latent_frames` decoded from the clip start: the first frame stands alone only when the
    first group has an odd length."""
    if latent_frames == 0:
        return 0
    return 4 * latent_frames - 3 if first_group_odd else 4 * latent_frames


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    different = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def diffusers_model(cfg: VaeConfig, scaling_factor: float = 0.7):
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        block_out_channels=cfg.block_channels, layers_per_block=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_groups, latent_channels=cfg.latent_channels, scaling_factor=scaling_factor,
    ).eval()


def stream_chunks(stream, z: torch.Tensor, sizes: list[int], grouping: Grouping) -> torch.Tensor:
    """Feed `z` to `stream` in chunks of `sizes`, checking after each call that exactly the completed groups were
    emitted and the rest is buffered; returns everything emitted, flush() included."""
    total = z.shape[2]
    sizes_of_groups = grouping.sizes(total)
    bounds = [0]  # ends of the groups decode() completes; a short last group waits for flush()
    for index, size in enumerate(sizes_of_groups):
        if size == (grouping.first if index == 0 else grouping.then):
            bounds.append(bounds[-1] + size)
    first_odd = sizes_of_groups[0] % 2 == 1
    outputs, received, emitted = [], 0, 0
    for size in sizes:
        out = stream.decode(z[:, :, received:received + size])
        received += size
        done = max(b for b in bounds if b <= received)
        assert out.shape[2] == pixel_frames(done, first_odd) - emitted, (sizes, received)
        assert stream.buffered_frames == received - done
        emitted += out.shape[2]
        outputs.append(out)
    assert received == total
    outputs.append(stream.flush())
    assert stream.buffered_frames == 0
    return torch.cat(outputs, dim=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These convolutions are tiny: intra-op threads gain little and, on shared cores, OpenMP barrier spinning
    made this file 5-10x slower (measured 22 s with one thread vs 130-210 s with two on a loaded 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vae() -> CogVideoXVae:
    return seeded_init_(CogVideoXVae(CFG), 0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def reference(vae):
    """diffusers' AutoencoderKLCogVideoX holding the same weights (our names are diffusers')."""
    model = diffusers_model(CFG)
    model.load_state_dict(vae.state_dict(), strict=True)
    return model


@pytest.fixture(scope="module")
def clip13(vae):
    """A 13-latent-frame clip (Hallo3's length) and its whole-clip decode."""
    z = latents(13, seed=13)
    return z, vae.decode(z)


# ---------------------------------------------------------------------------------------------------------------
# 1. parity with diffusers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 13])
def test_decode_matches_diffusers(vae, reference, frames):
    z = latents(frames, batch=2, seed=100 + frames)
    ours = vae.decode(z, clamp=False)
    with torch.no_grad():
        theirs = reference.decode(z).sample
    expected = 1 + 4 * (frames - 1) if frames % 2 else 4 * frames
    assert ours.shape == theirs.shape == (2, 3, expected, 8 * LATENT_H, 8 * LATENT_W)
    assert max_err(ours, theirs) < PARITY_ATOL
    assert not torch.equal(ours[0], ours[1])  # the batch rows are decoded independently, not broadcast


def test_decode_clamps_by_default(vae):
    z = latents(3, seed=3)
    raw = vae.decode(z, clamp=False)
    assert raw.abs().max() > 1.5  # random weights overshoot, so the clamp is visible
    assert torch.equal(vae.decode(z), raw.clamp(-1.0, 1.0))


@pytest.mark.parametrize("frames", [1, 3, 9])
def test_posterior_matches_diffusers(vae, reference, frames):
    x = pixels(frames, batch=2, seed=frames)
    mean, logvar = vae.posterior(x)
    with torch.no_grad():
        dist = reference.encode(x).latent_dist
    latent_frames = 1 + (frames - 1) // 4
    assert mean.shape == logvar.shape == (2, CFG.latent_channels, latent_frames, LATENT_H, LATENT_W)
    assert max_err(mean, dist.mean) < PARITY_ATOL
    assert max_err(logvar, dist.logvar) < PARITY_ATOL


def test_encode_samples_the_posterior(vae):
    x = pixels(5, seed=21)
    mean, logvar = vae.posterior(x)
    assert mean.shape[2] == 2
    sample = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    assert max_err(sample, mean + torch.exp(0.5 * logvar) * noise) < 1e-6
    assert max_err(sample, mean) > 0.1  # a sample, not the mean (SAT DiagonalGaussianRegularizer(sample=True))
    assert torch.equal(vae.encode(x, sample=False), mean)
    again = vae.encode(x, generator=torch.Generator().manual_seed(7))
    other = vae.encode(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(again, sample)
    assert max_err(other, sample) > 0.1


# ---------------------------------------------------------------------------------------------------------------
# 2. diffusers folders
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_pipeline(tmp_path_factory, vae):
    """A pipeline-style folder whose vae/ holds our weights saved by diffusers (scaling 0.55: not a default)."""
    root = tmp_path_factory.mktemp("diffusers_pipeline")
    model = diffusers_model(CFG, scaling_factor=0.55)
    model.load_state_dict(vae.state_dict(), strict=True)
    model.save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": "CogVideoXImageToVideoPipeline", "vae": ["diffusers", "AutoencoderKLCogVideoX"]}))
    return root, model


@pytest.mark.parametrize("where", ["vae folder", "pipeline folder"])
def test_load_diffusers_folder(diffusers_pipeline, vae, where):
    root, model = diffusers_pipeline
    loaded = load_vae(root / "vae" if where == "vae folder" else root)
    cfg = loaded.config
    assert cfg.block_channels == CFG.block_channels and cfg.channel_multipliers == CFG.channel_multipliers
    assert (cfg.num_res_blocks, cfg.norm_groups, cfg.latent_channels) == (1, 4, 16)
    assert (cfg.norm_eps, cfg.temporal_compression, cfg.image_channels) == (1e-6, 4, 3)
    assert cfg.scaling_factor == 0.55  # read from config.json, not a default
    assert_same_weights(loaded, vae)
    z = latents(2, seed=5)
    with torch.no_grad():
        assert max_err(loaded.decode(z, clamp=False), model.decode(z).sample) < PARITY_ATOL


@pytest.mark.parametrize("option, value", [("use_quant_conv", True), ("use_post_quant_conv", True),
                                           ("invert_scale_latents", True), ("latents_mean", [0.0] * 16)])
def test_diffusers_unsupported_options_are_refused(diffusers_pipeline, tmp_path, option, value):
    folder = tmp_path / "vae"
    shutil.copytree(diffusers_pipeline[0] / "vae", folder)
    config = json.loads((folder / "config.json").read_text())
    config[option] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=option):
        load_vae(folder)


# ---------------------------------------------------------------------------------------------------------------
# 3. SAT 3d-vae.pt
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sat_state(vae):
    return engine_to_sat_vae_keys(vae.state_dict(), LEVELS)


def test_sat_key_helper_matches_sat_module_tree(sat_state):
    # The helper's renaming lands exactly on the keys and shapes SAT's constructors build, for the test model
    # and for Hallo3's own layout (3 blocks per level, 4 in the decoder).
    assert {k: tuple(v.shape) for k, v in sat_state.items()} == sat_vae_shapes(CFG)
    with torch.device("meta"):
        full = CogVideoXVae(VAE_HALLO3).state_dict()
    renamed = engine_to_sat_vae_keys(full, LEVELS)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == sat_vae_shapes(VAE_HALLO3)
    assert "decoder.up.0.block.3.nin_shortcut.weight" not in renamed  # up.0 is 128 -> 128: no shortcut
    assert renamed["decoder.up.3.block.0.norm1.conv_y.conv.weight"].shape == (512, 16, 1, 1, 1)


def test_sat_renaming_of_hallo3_layout_is_the_inverse():
    with torch.device("meta"):
        full = CogVideoXVae(VAE_HALLO3).state_dict()
    back = vae_format.sat_to_engine_keys({**engine_to_sat_vae_keys(full, LEVELS), **loss_junk()}, LEVELS)
    assert sorted(back) == sorted(full)
    assert all(back[k] is full[k] for k in full)  # each tensor went back to its own name


def test_load_sat_file_and_folders(tmp_path, vae, sat_state):
    state = {**sat_state, **loss_junk()}
    file = write_sat_vae(tmp_path / "plain" / SAT_FILE, state)
    write_sat_vae(tmp_path / "parent" / "vae" / SAT_FILE, state)
    for path in (file, tmp_path / "plain", tmp_path / "parent"):
        loaded = load_vae(path, config=CFG)
        assert loaded.config == CFG
        assert_same_weights(loaded, vae)
    assert load_vae(file, config=CFG, dtype="bf16").decoder.conv_in.conv.weight.dtype == torch.bfloat16
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=SAT_FILE):
        load_vae(tmp_path / "empty")
    with pytest.raises(WeightsError, match="neither a VAE preset"):
        load_vae(str(tmp_path / "missing"))


def test_sat_config_inference(tmp_path):
    # Groups are not stored in the file: inference assumes SAT's 32, so these widths are multiples of 32.
    cfg = VaeConfig(name="sat-infer", base_channels=32, channel_multipliers=(1, 2, 1, 2), num_res_blocks=2,
                    latent_channels=8, norm_groups=32)
    source = seeded_init_(CogVideoXVae(cfg), 5).eval()
    file = write_sat_vae(tmp_path / SAT_FILE, {**engine_to_sat_vae_keys(source.state_dict(), 4), **loss_junk()})
    loaded = load_vae(file)
    got = loaded.config
    assert (got.base_channels, got.channel_multipliers, got.num_res_blocks) == (32, (1, 2, 1, 2), 2)
    assert (got.latent_channels, got.image_channels) == (8, 3)
    # not stored in the file: Hallo3's values
    assert (got.norm_groups, got.norm_eps, got.temporal_compression, got.scaling_factor) == (32, 1e-6, 4, 0.7)
    assert_same_weights(loaded, source)


def test_sat_inference_with_incompatible_groups_fails_as_weights_error(tmp_path, vae, sat_state):
    # The test model's widths (8, 16, 16, 32) cannot take SAT's hard-coded 32 groups: without config= the
    # loader must say so as a WeightsError (as the diffusers path does), and config= loads it.
    file = write_sat_vae(tmp_path / SAT_FILE, sat_state)
    assert_same_weights(load_vae(file, config=CFG), vae)
    with pytest.raises(WeightsError, match="norm_groups"):
        load_vae(file)


def test_sat_missing_unexpected_and_misshaped_keys_are_named(tmp_path, sat_state):
    # SAT up.0 is diffusers' up_blocks.3 (the level applied last): the message names either spelling.
    missing_sat, missing_ours = ("decoder.up.0.block.1.norm2.conv_y.conv.weight",
                                 "decoder.up_blocks.3.resnets.1.norm2.conv_y.conv.weight")
    state = {k: v for k, v in sat_state.items() if k != missing_sat}
    with pytest.raises(WeightsError, match="missing") as err:
        load_vae(write_sat_vae(tmp_path / "missing" / SAT_FILE, state), config=CFG)
    assert missing_sat in str(err.value) or missing_ours in str(err.value)

    unexpected_sat, unexpected_ours = ("decoder.mid.block_1.temb_proj.weight",
                                       "decoder.mid_block.resnets.0.temb_proj.weight")
    state = {**sat_state, **loss_junk(), unexpected_sat: torch.zeros(32, 512)}
    with pytest.raises(WeightsError, match="unexpected") as err:
        load_vae(write_sat_vae(tmp_path / "unexpected" / SAT_FILE, state), config=CFG)
    assert unexpected_sat in str(err.value) or unexpected_ours in str(err.value)
    assert "loss." not in str(err.value)  # training losses are skipped, not reported

    state = {**sat_state, "encoder.down.1.downsample.conv.weight": torch.zeros(16, 16, 3, 3, 3)}
    with pytest.raises(WeightsError, match="shape") as err:
        load_vae(write_sat_vae(tmp_path / "shape" / SAT_FILE, state), config=CFG)
    assert "down" in str(err.value) and "(16, 16, 3, 3, 3)" in str(err.value)


@pytest.mark.parametrize("wrapper", ["state_dict", "module"])
def test_load_vae_from_whole_engine_sat_file(tmp_path, vae, sat_state, wrapper):
    g = torch.Generator().manual_seed(3)
    state = {f"first_stage_model.{k}": v for k, v in {**sat_state, **loss_junk()}.items()}
    state.update({"model.diffusion_model.time_embed.0.weight": torch.randn(8, 4, generator=g),
                  "model.diffusion_model.mixins.patch_embed.proj.weight": torch.randn(8, 16, 2, 2, generator=g),
                  "conditioner.embedders.0.transformer.shared.weight": torch.randn(10, 8, generator=g)})
    file = write_sat_vae(tmp_path / "engine.pt", state, wrapper=wrapper)
    loaded = load_vae(file, config=CFG)
    assert_same_weights(loaded, vae)


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    file = tmp_path / "evil" / SAT_FILE
    write_malicious_pickle(file)
    for path in (file, file.parent):
        with pytest.raises(WeightsError, match="refused to unpickle"):
            load_vae(path, config=CFG)
    assert not list(tmp_path.rglob("*.pwned"))


# ---------------------------------------------------------------------------------------------------------------
# 4. hallo-rt folders
# ---------------------------------------------------------------------------------------------------------------


def test_engine_folder_round_trip(tmp_path, vae):
    dit = load_dit("tiny")
    out = save_engine_format(tmp_path / "with_vae", dit, vae=vae)
    manifest = json.loads((out / "hallo_rt.json").read_text())
    assert len(manifest["vae_digest"]) == 64
    loaded = load_vae(out)
    assert loaded.config == vae.config  # every field, name included
    assert_same_weights(loaded, vae)

    save_engine_format(tmp_path / "without_vae", dit)
    with pytest.raises(WeightsError, match="no VAE"):
        load_vae(tmp_path / "without_vae")


# ---------------------------------------------------------------------------------------------------------------
# 5. streaming exactness
# ---------------------------------------------------------------------------------------------------------------


def _random_chunkings(total: int, count: int, seed: int) -> list[list[int]]:
    rng, out = random.Random(seed), []
    for _ in range(count):
        sizes, left = [], total
        while left:
            sizes.append(rng.randint(1, min(left, 5)))
            left -= sizes[-1]
        out.append(sizes)
    return out


CHUNKINGS_13 = {
    "singles": [1] * 13,
    "pairs": [2] * 6 + [1],
    "5+8": [5, 8],
    "whole": [13],
    "straddle-4-3-2-4": [4, 3, 2, 4],  # groups end at 3, 5, 7, 9, 11, 13; these chunks end at 4, 7, 9, 13
    "straddle-1-3-3-3-3": [1, 3, 3, 3, 3],
    **{f"random-{i}": sizes for i, sizes in enumerate(_random_chunkings(13, 3, seed=1234))},
}


@pytest.mark.parametrize("sizes", list(CHUNKINGS_13.values()), ids=list(CHUNKINGS_13))
def test_streaming_equals_whole_clip_decode(vae, clip13, sizes):
    z, whole = clip13
    streamed = stream_chunks(vae.stream_decoder(), z, sizes, Grouping(3, 2))
    assert streamed.shape == whole.shape == (1, 3, 49, 8 * LATENT_H, 8 * LATENT_W)
    assert max_err(streamed, whole) < PARITY_ATOL


def test_streaming_even_clip_batch2_unclamped(vae):
    z = latents(12, batch=2, seed=12)
    grouping = Grouping.for_clip(12)
    assert grouping.sizes(12) == [2] * 6
    whole = vae.decode(z, clamp=False)
    assert whole.shape == (2, 3, 48, 8 * LATENT_H, 8 * LATENT_W) and whole.abs().max() > 1.5
    for sizes in ([5, 7], [1, 3, 3, 1, 4]):
        streamed = stream_chunks(vae.stream_decoder(grouping, clamp=False), z, sizes, grouping)
        assert max_err(streamed, whole) < PARITY_ATOL


def test_flush_decodes_the_short_last_group(vae):
    # 12 frames with the default (3, 2) grouping leave one frame for flush(): groups 3, 2, 2, 2, 2, 1.
    z = latents(12, seed=44)
    streamed = stream_chunks(vae.stream_decoder(), z, [12], Grouping(3, 2))
    state, start, manual = CausalState(), 0, []
    for size in Grouping(3, 2).sizes(12):
        manual.append(vae.decode_group(z[:, :, start:start + size], state))
        start += size
    assert [m.shape[2] for m in manual] == [9, 8, 8, 8, 8, 4]
    assert torch.equal(streamed, torch.cat(manual, dim=2).clamp(-1, 1))


def test_stream_emits_nothing_until_a_group_completes(vae):
    z = latents(5, seed=55)
    stream = vae.stream_decoder()
    out = stream.decode(z[:, :, :2])
    assert out.shape == (1, 3, 0, 8 * LATENT_H, 8 * LATENT_W) and out.dtype == torch.float32
    assert stream.buffered_frames == 2
    first = stream.decode(z[:, :, 2:4])
    assert first.shape[2] == 9 and stream.buffered_frames == 1
    second = stream.decode(z[:, :, 4:5])
    assert second.shape[2] == 8 and stream.buffered_frames == 0
    tail = stream.flush()
    assert tail.shape == (1, 3, 0, 8 * LATENT_H, 8 * LATENT_W)
    assert torch.equal(torch.cat([first, second], dim=2), vae.decode(z))


def test_flush_starts_a_new_clip_and_reset_discards(vae):
    z, other = latents(5, seed=66), latents(5, seed=67)
    expected = vae.decode(z)
    stream = vae.stream_decoder()
    runs = []
    for _ in range(2):  # after flush() the same clip decodes to the same frames
        runs.append(torch.cat([stream.decode(z), stream.flush()], dim=2))
    assert torch.equal(runs[0], expected) and torch.equal(runs[1], expected)

    stream.decode(other[:, :, :4])  # one group decoded (caches filled), one frame buffered
    assert stream.buffered_frames == 1
    stream.reset()
    assert stream.buffered_frames == 0
    assert torch.equal(torch.cat([stream.decode(z), stream.flush()], dim=2), expected)
    stream.decode(other[:, :, :1])
    stream.reset()  # also forgets the clip's shape: another batch size is fine now
    assert stream.decode(latents(3, batch=2, seed=1)).shape == (2, 3, 9, 8 * LATENT_H, 8 * LATENT_W)


def test_stream_refuses_a_chunk_of_another_shape(vae):
    z = latents(5, seed=77)
    stream = vae.stream_decoder()
    stream.decode(z[:, :, :1])
    bad = {"batch": latents(1, batch=2), "height": latents(1, height=5), "width": latents(1, width=7)}
    for name, chunk in bad.items():
        with pytest.raises(InputError, match="differs"):
            stream.decode(chunk)
    with pytest.raises(InputError, match=r"\(B, 16, F, H, W\)"):
        stream.decode(torch.zeros(1, 8, 1, LATENT_H, LATENT_W))
    # the refused chunks left the clip as it was
    assert torch.equal(torch.cat([stream.decode(z[:, :, 1:]), stream.flush()], dim=2), vae.decode(z))


def test_grouping_sizes(vae):
    assert Grouping.for_clip(13).sizes(13) == [3, 2, 2, 2, 2, 2]
    assert Grouping.for_clip(12).sizes(12) == [2] * 6
    assert Grouping.for_clip(1).sizes(1) == [1] and Grouping.for_clip(2).sizes(2) == [2]
    assert Grouping(3, 2).sizes(4) == [3, 1]
    with pytest.raises(ValueError):
        Grouping(0, 2)
    with pytest.raises(ValueError, match="reference"):
        vae.stream_decoder("fastest")


# ---------------------------------------------------------------------------------------------------------------
# 6. single-frame grouping
# ---------------------------------------------------------------------------------------------------------------


def test_single_frame_grouping(vae, clip13):
    z, reference_frames = clip13
    single = stream_chunks(vae.stream_decoder("single"), z, [13], Grouping(1, 1))
    assert single.shape[2] == 1 + 4 * (13 - 1)

    state = CausalState()
    manual = torch.cat([vae.decode_group(z[:, :, i:i + 1], state) for i in range(13)], dim=2)
    assert torch.equal(single, manual.clamp(-1, 1))

    # grouping is part of the model: group norms see other frames, so single-frame decoding is another output
    assert max_err(single, reference_frames) > 1e-3

    by_threes = stream_chunks(vae.stream_decoder(Grouping(1, 1)), z, [3, 3, 3, 3, 1], Grouping(1, 1))
    assert torch.equal(by_threes, single)


# ---------------------------------------------------------------------------------------------------------------
# 7. memory bounded by the group
# ---------------------------------------------------------------------------------------------------------------


def _stream_peak(vae, z):
    """Largest module output (elements) while stream-decoding z, and the stream before flush()."""
    peak = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            peak[0] = max(peak[0], output.numel())

    handles = [m.register_forward_hook(hook) for m in vae.decoder.modules()]
    try:
        stream = vae.stream_decoder()
        for i in range(z.shape[2]):
            stream.decode(z[:, :, i:i + 1])
    finally:
        for handle in handles:
            handle.remove()
    return peak[0], stream


def test_streaming_memory_is_bounded_by_the_group(vae):
    peak5, stream5 = _stream_peak(vae, latents(5, seed=5))
    peak13, stream13 = _stream_peak(vae, latents(13, seed=13))
    assert peak5 == peak13
    # a whole-clip pass would hold at least one (B, widths[0], 49, H, W) activation at full resolution
    assert peak13 < CFG.block_channels[0] * 49 * 8 * LATENT_H * 8 * LATENT_W
    for stream in (stream5, stream13):
        caches = stream._state.caches
        assert caches and len(caches) == len(stream5._state.caches)
        for tensor in caches.values():
            assert tensor.shape[2] <= 2
            # its own storage, not a view keeping the whole padded group alive
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


# ---------------------------------------------------------------------------------------------------------------
# 8. input errors
# ---------------------------------------------------------------------------------------------------------------

FRAMES_SHAPE = r"\(B, 3, T, H, W\)"
BAD_FRAMES = {
    "4-D": torch.zeros(1, 3, 32, 48),
    "channels": torch.zeros(1, 4, 1, 32, 48),
    "height": torch.zeros(1, 3, 1, 36, 48),
    "width": torch.zeros(1, 3, 1, 32, 44),
    "no frames": torch.zeros(1, 3, 0, 32, 48),
    "no batch": torch.zeros(0, 3, 1, 32, 48),
    "not a tensor": [[0.0]],
}


@pytest.mark.parametrize("frames", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
@pytest.mark.parametrize("method", ["encode", "posterior"])
def test_bad_frames_raise_input_error(vae, frames, method):
    with pytest.raises(InputError, match=FRAMES_SHAPE):
        getattr(vae, method)(frames)


def test_frame_size_error_names_the_multiple(vae):
    with pytest.raises(InputError, match="multiples of 8"):
        vae.encode(BAD_FRAMES["height"])


LATENTS_SHAPE = r"\(B, (C|16), F, H, W\)"
BAD_LATENTS = {
    "4-D": torch.zeros(1, 16, 4, 6),
    "channels": torch.zeros(1, 8, 1, 4, 6),
    "no frames": torch.zeros(1, 16, 0, 4, 6),
    "no width": torch.zeros(1, 16, 1, 4, 0),
    "not a tensor": None,
}


@pytest.mark.parametrize("bad", list(BAD_LATENTS.values()), ids=list(BAD_LATENTS))
@pytest.mark.parametrize("route", ["decode", "stream", "group"])
def test_bad_latents_raise_input_error(vae, bad, route):
    call = {"decode": vae.decode, "stream": vae.stream_decoder().decode,
            "group": lambda x: vae.decode_group(x, CausalState())}[route]
    with pytest.raises(InputError, match=LATENTS_SHAPE):
        call(bad)


# ---------------------------------------------------------------------------------------------------------------
# 9. presets
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_preset_is_deterministic_and_runs_in_bf16():
    a, b = load_vae("tiny"), load_vae("tiny")
    assert a.config == VAE_TINY
    assert_same_weights(a, b)
    other = load_vae("tiny", seed=3).state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in a.state_dict().items())

    half = load_vae("tiny", dtype="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    z = latents(3, seed=9, height=2, width=3)
    full, low = a.decode(z, clamp=False), half.decode(z, clamp=False)
    assert low.dtype == torch.bfloat16 and low.shape == full.shape == (1, 3, 9, 16, 24)
    relative = ((low.float() - full).norm() / full.norm()).item()
    assert relative < 0.05


def test_hallo3_preset_config():
    cfg = get_vae_preset("hallo3")
    assert cfg is VAE_HALLO3
    assert cfg.block_channels == (128, 256, 256, 512)
    assert (cfg.num_res_blocks, cfg.norm_groups, cfg.scaling_factor) == (3, 32, 0.7)
    assert (cfg.latent_channels, cfg.spatial_compression, cfg.temporal_compression) == (16, 8, 4)
    assert dataclasses.replace(cfg, name="x").compute_hash() != cfg.compute_hash()
