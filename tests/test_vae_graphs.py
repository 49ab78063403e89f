"""The stateless VAE decoder chunk graphs (export/vae_graphs.py): descriptors, torch exactness against
`CogVideoXVae.decode` / `StreamingVaeDecoder`, and ONNX Runtime streaming against the torch streaming decoder.

Tolerances: the chunk modules run the very ops `decode_group` runs, so torch is asserted bit-exact (max abs 0).
ONNX Runtime CPU vs torch in fp32: 1e-4 (the issue's per-graph bound); measured 5.1e-6 (reference grouping, 5 latent
frames) and 4.6e-6 (single-frame grouping, 3 latent frames).
"""

from __future__ import annotations

import pytest
import torch
from hallo_rt.engine import load_vae
from hallo_rt.engine.config import VAE_HALLO3
from hallo_rt.engine.vae import REFERENCE_GROUPING, SINGLE_FRAME_GROUPING, Grouping
from hallo_rt.engine.validation import InputError
from hallo_rt.export.vae_graphs import (
    ChunkedVaeDecoder,
    VaeDecoderChunk,
    cache_input_name,
    cache_output_name,
    cache_slots,
    vae_decoder_descriptors,
    vae_decoder_graphs,
)

LATENT_H, LATENT_W = 4, 6  # 32 x 48 pixels
ORT_ATOL = 1e-4


@pytest.fixture(scope="module")
def vae():
    return load_vae("tiny")


def latents(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, frames, LATENT_H, LATENT_W, generator=g)


def torch_runner(descriptor, module):
    """The descriptor call convention over a chunk module: inputs by name in, outputs by name out."""
    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        descriptor.check_inputs(inputs)
        with torch.no_grad():
            outputs = module(*(inputs[name] for name in descriptor.input_names))
        return dict(zip(descriptor.output_names, outputs))
    return run


def torch_decoder(vae, grouping: Grouping, short_groups: bool = False) -> ChunkedVaeDecoder:
    graphs = vae_decoder_graphs(vae, LATENT_H, LATENT_W, grouping, short_groups=short_groups)
    return ChunkedVaeDecoder({n: (d, torch_runner(d, m)) for n, (d, m) in graphs.items()}, grouping)


def stream(decoder, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """Feed `z` in chunks of `chunk` latent frames, then flush; everything emitted."""
    parts = [decoder.decode(z[:, :, i:i + chunk]) for i in range(0, z.shape[2], chunk)]
    return torch.cat([*parts, decoder.flush()], dim=2)


# ----------------------------------------------------------------------------------------------------
# Descriptors.


def test_descriptors_shapes_names_and_slots(vae):
    descriptors = vae_decoder_descriptors(vae.config, LATENT_H, LATENT_W, REFERENCE_GROUPING)
    assert sorted(descriptors) == ["vae_decoder_first", "vae_decoder_next"]
    first, nxt = descriptors["vae_decoder_first"], descriptors["vae_decoder_next"]
    slots = len(cache_slots(vae))
    # conv_in, 2 mid blocks, 4 levels x 2 blocks, conv_out; each block has two 3-frame convs
    assert slots == 1 + 2 * 2 + 4 * 2 * 2 + 1
    assert first.input_names == ["latents"]
    assert nxt.input_names == ["latents"] + [cache_input_name(i) for i in range(slots)]
    assert first.output_names == nxt.output_names == ["frames"] + [cache_output_name(i) for i in range(slots)]
    assert first.shape(first.inputs[0]) == (1, 16, 3, LATENT_H, LATENT_W)
    assert first.shape(first.outputs[0]) == (1, 3, 9, 32, 48)  # odd first group: 1 + 4 (3 - 1)
    assert nxt.shape(nxt.outputs[0]) == (1, 3, 8, 32, 48)
    # the caches a group returns are the caches the next group takes, and match the module's outputs
    assert [s.shape for s in first.outputs[1:]] == [s.shape for s in nxt.inputs[1:]] == [s.shape
                                                                                         for s in nxt.outputs[1:]]
    with torch.no_grad():
        out = VaeDecoderChunk(vae, start=True)(latents(3))
    assert [tuple(t.shape) for t in out] == [s.shape for s in first.outputs]
    assert first.config["cache_modules"][0] == "decoder.conv_in" and len(first.config["cache_modules"]) == slots
    assert first.compute_hash() != nxt.compute_hash()

    single = vae_decoder_descriptors(vae.config, LATENT_H, LATENT_W, SINGLE_FRAME_GROUPING, short_groups=True)
    assert sorted(single) == ["vae_decoder_first", "vae_decoder_next"]  # no size is shorter than 1
    assert single["vae_decoder_first"].shape(single["vae_decoder_first"].outputs[0])[2] == 1
    assert single["vae_decoder_next"].shape(single["vae_decoder_next"].outputs[0])[2] == 4
    short = vae_decoder_descriptors(vae.config, LATENT_H, LATENT_W, REFERENCE_GROUPING, short_groups=True)
    assert sorted(short) == ["vae_decoder_first", "vae_decoder_first_1", "vae_decoder_first_2",
                             "vae_decoder_next", "vae_decoder_next_1"]
    assert short["vae_decoder_first_2"].shape(short["vae_decoder_first_2"].outputs[0])[2] == 8  # even: 4n


def test_hallo3_descriptor_from_meta_shapes():
    """The real VAE's shapes come from a meta-device run: nothing is allocated."""
    nxt = vae_decoder_descriptors(VAE_HALLO3, 60, 90, precision="bf16")["vae_decoder_next"]
    assert len(nxt.inputs) == 1 + 38  # 1 + 2*2 + 4 levels x 4 blocks x 2 + 1 caches
    assert nxt.shape(nxt.outputs[0]) == (1, 3, 8, 480, 720)
    assert nxt.shape(nxt.inputs[-1]) == (1, 128, 2, 480, 720)  # conv_out's input: the last level, full size
    assert nxt.dtype(nxt.inputs[1]) == torch.bfloat16


# ----------------------------------------------------------------------------------------------------
# Torch: bit-exact against the engine.


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
def test_chunk_modules_equal_decode_reference_grouping(vae, frames):
    z = latents(frames)
    grouping = Grouping.for_clip(frames)
    graphs = vae_decoder_graphs(vae, LATENT_H, LATENT_W, grouping)
    first, nxt = graphs["vae_decoder_first"][1], graphs["vae_decoder_next"][1]
    outputs, caches, done = [], None, 0
    with torch.no_grad():
        for size in grouping.sizes(frames):
            group = z[:, :, done:done + size]
            frames_out, *caches = first(group) if caches is None else nxt(group, *caches)
            outputs.append(frames_out)
            done += size
    expected = vae.decode(z)
    got = torch.cat(outputs, dim=2)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() == 0.0
    assert got.abs().max() <= 1.0  # clamped as decode clamps


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
def test_chunked_decoder_equals_streaming_single_frame_grouping(vae, frames):
    z = latents(frames, seed=1)
    expected = stream(vae.stream_decoder(SINGLE_FRAME_GROUPING), z, chunk=frames)
    got = stream(torch_decoder(vae, SINGLE_FRAME_GROUPING), z, chunk=2)
    assert got.shape == expected.shape == (1, 3, 1 + 4 * (frames - 1), 32, 48)
    assert (got - expected).abs().max().item() == 0.0


def test_chunked_decoder_reference_grouping_any_chunking(vae):
    z = latents(5, seed=2)
    expected = vae.decode(z)
    decoder = torch_decoder(vae, REFERENCE_GROUPING)
    assert decoder.decode(z[:, :, :2]).shape[2] == 0 and decoder.buffered_frames == 2
    rest = decoder.decode(z[:, :, 2:])  # completes both groups
    assert decoder.buffered_frames == 0
    got = torch.cat([rest, decoder.flush()], dim=2)
    assert (got - expected).abs().max().item() == 0.0
    # a second clip through the same decoder starts afresh (the flush reset the caches)
    assert (stream(decoder, z, chunk=1) - expected).abs().max().item() == 0.0
    assert decoder.flush().shape == (1, 3, 0, 32, 48)


def test_short_groups(vae):
    """A fixed (3, 2) grouping on 2 or 4 frames needs a short first or last group: an error naming the graph
    without them, the streaming decoder's exact output with them."""
    decoder = torch_decoder(vae, REFERENCE_GROUPING)
    with pytest.raises(ValueError, match="vae_decoder_first_2"):
        stream(decoder, latents(2), chunk=1)
    assert decoder.buffered_frames == 0  # the failed flush still ended the clip
    z = latents(4, seed=3)
    expected = stream(vae.stream_decoder(REFERENCE_GROUPING), z, chunk=4)
    got = stream(torch_decoder(vae, REFERENCE_GROUPING, short_groups=True), z, chunk=1)
    assert got.shape == expected.shape == (1, 3, 9 + 4, 32, 48)  # groups of 3 and 1
    assert (got - expected).abs().max().item() == 0.0


def test_chunked_decoder_errors(vae):
    graphs = vae_decoder_graphs(vae, LATENT_H, LATENT_W, REFERENCE_GROUPING)
    runners = {n: (d, torch_runner(d, m)) for n, (d, m) in graphs.items()}
    with pytest.raises(ValueError, match=r"needs graphs \['vae_decoder_next'\]"):
        ChunkedVaeDecoder({"vae_decoder_first": runners["vae_decoder_first"]}, REFERENCE_GROUPING)
    with pytest.raises(ValueError, match="vae_decoder_first"):  # the graphs are for (3, 2), not (1, 1)
        ChunkedVaeDecoder(runners, SINGLE_FRAME_GROUPING)
    other = vae_decoder_descriptors(vae.config, LATENT_H, 8, REFERENCE_GROUPING)["vae_decoder_next"]
    with pytest.raises(ValueError, match=r"graphs \['vae_decoder_next'\] differ"):
        ChunkedVaeDecoder({**runners, "vae_decoder_next": (other, runners["vae_decoder_next"][1])})
    decoder = ChunkedVaeDecoder(runners, "reference")
    with pytest.raises(InputError, match=r"\(1, 16, 'n', 4, 6\)"):
        decoder.decode(torch.randn(1, 16, 1, 4, 8))
    with pytest.raises(ValueError, match="loaded in fp32"):  # no silent cast to the asked precision
        vae_decoder_graphs(vae, LATENT_H, LATENT_W, REFERENCE_GROUPING, "bf16")
    with pytest.raises(InputError, match="takes 0 caches"):
        VaeDecoderChunk(vae, start=True)(latents(1), latents(1))


# ----------------------------------------------------------------------------------------------------
# ONNX Runtime: the streaming decoder through exported graphs equals the torch streaming decoder.


def ort_runner(descriptor, path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert [i.name for i in session.get_inputs()] == descriptor.input_names
    assert [o.name for o in session.get_outputs()] == descriptor.output_names

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        descriptor.check_inputs(inputs)
        outputs = session.run(descriptor.output_names, {k: v.numpy() for k, v in inputs.items()})
        return {name: torch.from_numpy(array) for name, array in zip(descriptor.output_names, outputs)}
    return run


@pytest.fixture(scope="module")
def onnx_graphs(vae, tmp_path_factory):
    """Both groupings' first and next graphs exported once: grouping -> name -> (descriptor, path)."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("vae_onnx")
    exported = {}
    for grouping in (REFERENCE_GROUPING, SINGLE_FRAME_GROUPING):
        for name, (descriptor, module) in vae_decoder_graphs(vae, LATENT_H, LATENT_W, grouping).items():
            path = root / f"{grouping.first}_{grouping.then}" / f"{name}.onnx"
            path.parent.mkdir(exist_ok=True)
            torch.onnx.export(module, tuple(descriptor.sample_inputs().values()), str(path), dynamo=True,
                              opset_version=20, input_names=descriptor.input_names,
                              output_names=descriptor.output_names, external_data=False, verbose=False)
            onnx.checker.check_model(str(path))
            exported.setdefault(grouping, {})[name] = (descriptor, path)
    return exported


@pytest.mark.parametrize("grouping, frames", [(REFERENCE_GROUPING, 5), (SINGLE_FRAME_GROUPING, 3)])
def test_onnxruntime_streaming_equals_torch_streaming(vae, onnx_graphs, grouping, frames):
    runners = {name: (d, ort_runner(d, path)) for name, (d, path) in onnx_graphs[grouping].items()}
    z = latents(frames, seed=4)
    expected = stream(vae.stream_decoder(grouping), z, chunk=frames)
    got = stream(ChunkedVaeDecoder(runners, grouping), z, chunk=1)
    assert got.shape == expected.shape
    err = (got - expected).abs().max().item()
    print(f"ORT vs torch streaming, {frames} latent frames, grouping {grouping}: max abs {err:.3g}")
    assert err <= ORT_ATOL, err
