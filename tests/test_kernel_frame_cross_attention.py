"""Per-frame cross-attention: Triton (interpreter on CPU) vs the torch reference, and the reference vs the
model's FrameCrossAttention math."""

import pytest
import torch
from kernel_tolerances import assert_close

from hallo_rt.engine.rope import rope_table
from hallo_rt.kernels import frame_cross_attention as fca


def _inputs(B, Fr, N, H, Dh, M, Fc, dtype, prologue=True, seed=0, layout="projection"):
    g = torch.Generator().manual_seed(seed)
    D = H * Dh

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if layout == "projection":  # exactly how the model makes them: views of Linear outputs
        q = randn(B, Fr, N, D).unflatten(-1, (H, Dh))
        kv = randn(B, Fc, M, 2 * D).unflatten(-1, (2, H, Dh))
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
    else:  # strided everywhere: head-major storage, a padded width, transposes
        q = randn(B, Fr, H, N, Dh + 8)[..., :Dh].transpose(2, 3)
        k = randn(B, Fc, H, M, Dh).transpose(2, 3)
        v = randn(B, Fc, Dh, H, M).permute(0, 1, 4, 3, 2)
    norms = [None] * 4
    cos = sin = None
    if prologue:
        norms = [1 + 0.3 * randn(Dh), 0.1 * randn(Dh), 1 + 0.3 * randn(Dh), 0.1 * randn(Dh)]
        dims = (Dh // 4, Dh // 8 * 3, Dh // 8 * 3)
        cos, sin = rope_table(dims, 1, 1, N)  # frame-0 positions of an N-token frame
    return (q, k, v, *norms, cos, sin, 1e-5)


CASES = {
    # name: (B, F, N, H, Dh, M, Fc, prologue)
    "hallo3-audio-odd": (2, 3, 37, 2, 64, 32, 3, True),
    "hallo3-face-shared": (1, 4, 45, 2, 64, 4, 1, True),
    "one-token": (1, 2, 16, 1, 64, 1, 2, True),
    "hallo4-audio": (1, 2, 33, 1, 128, 128, 2, False),
    "no-rope-norm-only": (1, 2, 20, 2, 32, 7, 2, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["projection", "strided"])
def test_matches_reference(case, dtype, layout):
    B, Fr, N, H, Dh, M, Fc, prologue = CASES[case]
    args = _inputs(B, Fr, N, H, Dh, M, Fc, dtype, prologue, layout=layout)
    if case == "no-rope-norm-only":
        args = args[:7] + (None, None, args[9])
    got = fca.frame_cross_attention_triton(*args)
    assert got.shape == (B, Fr, N, H * Dh) and got.dtype == dtype and got.is_contiguous()
    assert_close(got, fca.frame_cross_attention_ref(*args))


@pytest.mark.slow
def test_hallo3_frame_geometry():
    """The issue's odd sizes: 13 latent frames of 1350 tokens (45 x 30), 32 audio tokens per frame."""
    args = _inputs(1, 13, 1350, 1, 64, 32, 13, torch.float32)
    assert_close(fca.frame_cross_attention_triton(*args), fca.frame_cross_attention_ref(*args))


def test_custom_op_is_the_launcher_exactly():
    args = _inputs(1, 2, 19, 2, 64, 5, 2, torch.float16)
    torch.testing.assert_close(torch.ops.hallo_rt.frame_cross_attention(*args),
                               fca.frame_cross_attention_triton(*args), atol=0, rtol=0)


def test_reference_is_the_model_math():
    """The reference equals engine FrameCrossAttention after its projections (same LayerNorms and RoPE)."""
    from hallo_rt.engine.conditioning import FrameCrossAttention
    from hallo_rt.engine.config import TINY

    torch.manual_seed(0)
    H, Dh, D = TINY.num_heads, TINY.head_dim, TINY.hidden_dim
    cross = FrameCrossAttention(TINY, 24)
    norm_q, norm_k = torch.nn.LayerNorm(Dh, eps=1e-5), torch.nn.LayerNorm(Dh, eps=1e-5)
    for p in (*norm_q.parameters(), *norm_k.parameters()):
        p.data.normal_()
    x, ctx = torch.randn(2, 3, 12, D), torch.randn(2, 3, 5, 24)
    cos, sin = rope_table(TINY.rope_dims, 1, 3, 4)
    with torch.no_grad():
        want = cross(x, ctx, norm_q, norm_k, (cos, sin))
        q = cross.query(x).unflatten(-1, (H, Dh))
        k, v = cross.key_value(ctx).unflatten(-1, (2, H, Dh)).unbind(-3)
        got = cross.out(fca.frame_cross_attention_ref(q, k, v, norm_q.weight, norm_q.bias, norm_k.weight,
                                                      norm_k.bias, cos, sin, 1e-5))
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: _inputs(1, 3, 10, 2, 24, 4, 3, torch.float16, prologue=False), "power of two"),
    (lambda a: (a[0], a[1][:, :2], a[2][:, :2]) + a[3:], "(B, 1 or F, M, H, Dh)"),
    (lambda a: a[:3] + (a[3], None) + a[5:], "q_weight and q_bias"),
    (lambda a: a[:7] + (a[7][:-1], a[8][:-1], a[9]), "frame-0 positions"),
    (lambda a: (a[0], a[1].float(), a[2]) + a[3:], "must be one of"),
    (lambda a: a[:7] + (a[7], None, a[9]), "cos and sin"),
])
def test_launcher_rejects_bad_inputs(mutate, message):
    args = mutate(_inputs(1, 3, 10, 2, 64, 4, 3, torch.float16))
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        fca.frame_cross_attention_triton(*args)
