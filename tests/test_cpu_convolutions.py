"""The CPU route for small causal 3D convolutions: same outputs as Conv3d (to float rounding), taken only where
PyTorch would use `slow_conv3d`, invisible to graph capture, and the VAE decodes the same frames with it."""

from __future__ import annotations

import copy

import pytest
import torch

from hallo_rt.engine.config import VaeConfig
from hallo_rt.engine.cpu_convolutions import StackedTimeConv3d, small_cpu_convolutions, takes_slow_path
from hallo_rt.engine.vae import CogVideoXVae, Grouping
from hallo_rt.engine.weights.common import seeded_init_


def _pair(cin, cout, k):
    torch.manual_seed(cin * 100 + cout + k)
    plain = torch.nn.Conv3d(cin, cout, k, padding=(0, k // 2, k // 2))
    routed = StackedTimeConv3d(cin, cout, k, padding=(0, k // 2, k // 2))
    routed.load_state_dict(plain.state_dict())
    return plain, routed


@pytest.mark.parametrize("cin,cout,k,frames,size", [(8, 8, 3, 14, 64), (16, 8, 3, 5, 20), (8, 4, 1, 12, 32),
                                                     (3, 8, 3, 3, 17)])
def test_matches_conv3d_where_rerouted(cin, cout, k, frames, size):
    plain, routed = _pair(cin, cout, k)
    x = torch.randn(1, cin, frames, size, size + 3)
    assert takes_slow_path(x, plain)
    with torch.no_grad():
        expected, got = plain(x), routed(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # reassociated sums: fp32 rounding only


def test_large_inputs_and_batches_keep_pytorchs_route():
    plain, routed = _pair(32, 32, 3)
    big = torch.randn(1, 32, 8, 128, 128)  # B*C*T*H = 32768 > 20480: oneDNN already
    batch = torch.randn(2, 8, 4, 16, 16)
    assert not takes_slow_path(big, plain) and not takes_slow_path(batch, plain)
    with torch.no_grad():
        assert torch.equal(routed(big), plain(big))
    assert not takes_slow_path(torch.randn(1, 8, 4, 16, 16, dtype=torch.float64), plain)


def test_export_sees_the_plain_convolution():
    _, routed = _pair(8, 8, 3)
    program = torch.export.export(routed, (torch.randn(1, 8, 6, 16, 16),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("conv3d" in t or "convolution" in t for t in targets), targets
    assert not any("conv2d" in t or "unfold" in t for t in targets), targets


def test_vae_streams_the_same_frames_with_the_route():
    cfg = VaeConfig(name="t", base_channels=8, channel_multipliers=(1, 2, 4, 8), num_res_blocks=1, norm_groups=4)
    vae = seeded_init_(CogVideoXVae(cfg), 3).eval()
    fast = small_cpu_convolutions(copy.deepcopy(vae))
    assert fast.state_dict().keys() == vae.state_dict().keys()
    assert sum(isinstance(m, StackedTimeConv3d) for m in fast.modules()) > 10
    latents = torch.randn(1, 16, 7, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = []
        for model in (vae, fast):
            decoder = model.stream_decoder(Grouping(3, 2))
            outs.append(torch.cat([decoder.decode(latents[:, :, :4]), decoder.decode(latents[:, :, 4:]),
                                   decoder.flush()], dim=2))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    assert small_cpu_convolutions(fast) is fast  # idempotent
