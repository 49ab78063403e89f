"""`apply_kernels`: the denoiser and reference network computed with the fused ops equal the plain model."""

import pytest
import torch
from helpers import random_inputs
from kernel_tolerances import MODEL_TOLERANCE_FP32

from hallo_rt.engine import load_dit, load_reference_net
from hallo_rt.kernels import KernelUnavailable, _triton
from hallo_rt.kernels.apply import FusedDiTBlock, apply_kernels


@pytest.fixture(scope="module")
def tiny():
    dit = load_dit("tiny")
    reference = load_reference_net("tiny")
    torch.manual_seed(0)
    with torch.no_grad():  # seeded init leaves some modulation/out layers at zero; make every path matter
        for p in list(dit.parameters()) + list(reference.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    return dit, reference


def _denoiser_inputs(dit, reference, frames=13, batch=1):
    cfg = dit.config
    latents, timesteps, text, audio, face = random_inputs(cfg, batch, seed=3, frames=frames)
    ref_latent = torch.randn(batch, 1, cfg.out_channels, cfg.latent_height, cfg.latent_width,
                             generator=torch.Generator().manual_seed(4))
    bank = reference(ref_latent)
    return (latents, timesteps, text, audio, face, bank), ref_latent


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_fused_denoiser_matches_plain_model(tiny, impl):
    """The issue's acceptance check: tiny DiT, all 13 frames, face + audio + reference bank, fp32."""
    dit, reference = tiny
    args, _ = _denoiser_inputs(dit, reference)
    fused = apply_kernels(dit, impl)
    assert all(isinstance(b, FusedDiTBlock) for b in fused.blocks)
    with torch.no_grad():
        want = dit(*args)
        got = fused(*args)
    torch.testing.assert_close(got, want, **MODEL_TOLERANCE_FP32)
    assert (want - dit(*args)).abs().max() == 0  # the plain model is untouched


def test_fused_reference_network_matches(tiny):
    dit, reference = tiny
    _, ref_latent = _denoiser_inputs(dit, reference, frames=2)
    fused = apply_kernels(reference, "triton")
    torch.testing.assert_close(fused(ref_latent), reference(ref_latent), **MODEL_TOLERANCE_FP32)


def test_weights_are_shared_not_copied(tiny):
    dit, _ = tiny
    fused = apply_kernels(dit, "reference")
    assert fused.state_dict().keys() == dit.state_dict().keys()
    for (name, a), (_, b) in zip(dit.state_dict().items(), fused.state_dict().items()):
        assert a.data_ptr() == b.data_ptr(), name
    again = apply_kernels(fused, "triton")  # re-applying swaps the ops, keeps the weights
    assert again.blocks[0].ops.impl == "triton" and fused.blocks[0].ops.impl == "reference"
    assert again.blocks[0].mlp is dit.blocks[0].mlp


def test_bad_impl_and_model_are_refused(tiny):
    dit, _ = tiny
    with pytest.raises(ValueError, match="choose one of"):
        apply_kernels(dit, "cuda")
    with pytest.raises(TypeError, match="HalloDiT or ReferenceNet"):
        apply_kernels(torch.nn.Linear(2, 2), "reference")


def test_triton_unavailable_says_what_is_missing(tiny, monkeypatch):
    dit, _ = tiny
    monkeypatch.setattr(_triton, "INTERPRET", False)
    with pytest.raises(KernelUnavailable, match="TRITON_INTERPRET=1.*Available here: impl='reference'"):
        apply_kernels(dit, "triton")
    monkeypatch.setattr(_triton, "triton", None)
    with pytest.raises(KernelUnavailable, match="Triton is not installed.*gpu"):
        apply_kernels(dit, "triton")
    assert apply_kernels(dit, "triton", check_runtime=False).blocks[0].ops.impl == "triton"  # export tracing


def test_cli_kernels_flag(monkeypatch, capsys):
    import json

    from hallo_rt.runtime.cli import main

    assert main(["denoise", "--kernels", "reference", "--steps", "1", "--cfg", "1", "--latent-frames", "2",
                 "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kernels"] == "reference" and summary["finite"]
    monkeypatch.setattr(_triton, "INTERPRET", False)
    assert main(["denoise", "--kernels", "triton", "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hallo-rt: error: --kernels triton:") and "Available here: impl='reference'" in err
