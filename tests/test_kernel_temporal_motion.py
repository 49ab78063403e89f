"""Hallo4 temporal motion fold (frame-0 padding + LayerNorm + 4-frame fold): Triton vs the literal reference.

Under pytest on CPU the Triton path runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so
sizes are small; they include odd N and C, non-power-of-2 C, and the clip lengths 49 and 81.
"""

import pytest
import torch
import torch.nn.functional as F

from hallo_rt.kernels import REGISTRY, runs_triton
from hallo_rt.kernels import temporal_motion as tm

from kernel_tolerances import assert_close

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS = 1e-5


def _inputs(B, T, N, C, dtype, seed=0, affine=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, T, N, C, generator=g) * 2 + 0.5).to(dtype)  # (B, T, N, C), nonzero mean
    if not affine:
        return x, None, None
    weight = (1 + 0.5 * torch.randn(C, generator=g)).to(dtype)  # (C,)
    bias = (0.3 * torch.randn(C, generator=g)).to(dtype)  # (C,)
    return x, weight, bias


def _check(x, weight, bias, into_tokens):
    want = tm.temporal_motion_fold_ref(x, weight, bias, EPS, into_tokens)
    got = tm.temporal_motion_fold_triton(x, weight, bias, EPS, into_tokens)
    assert got.shape == want.shape and got.dtype == x.dtype and got.is_contiguous()
    assert_close(got, want)
    return got


def test_triton_path_is_what_runs():
    # Otherwise the custom-op tests below would compare the reference with itself.
    assert runs_triton(torch.device("cpu"))


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("T", [1, 5, 49, 81])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_odd_sizes(dtype, T, into_tokens):
    B, N, C = 2, 37, 48
    G = (T + 3) // 4
    got = _check(*_inputs(B, T, N, C, dtype, seed=T), into_tokens)
    assert got.shape == ((B, G, 4 * N, C) if into_tokens else (B, G, N, 4 * C))


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("N,C", [(5, 40), (3, 384), (1, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_non_power_of_2_width(dtype, N, C, into_tokens):
    _check(*_inputs(1, 9, N, C, dtype, seed=C), into_tokens)


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_no_affine(dtype, into_tokens):
    x, weight, bias = _inputs(2, 13, 7, 48, dtype, affine=False)
    assert weight is None and bias is None
    _check(x, None, None, into_tokens)


def _views(B, T, N, C, dtype):
    g = torch.Generator().manual_seed(7)
    base = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    return {
        # tokens-major storage: T and N swapped
        "transposed_tn": base(B, N, T, C).transpose(1, 2),
        # channel-major storage: stride of C is N, not 1
        "channels_first": base(B, T, C, N).transpose(2, 3),
        # every other channel of a wider tensor, and a frame window of a longer clip
        "sliced": base(B, T + 6, N, 2 * C)[:, 3:T + 3, :, ::2],
        # one frame's features broadcast in time (stride 0): every output slot must be the same row
        "expanded": base(B, 1, N, C).expand(B, T, N, C),
    }


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("layout", ["transposed_tn", "channels_first", "sliced", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parity_non_contiguous(dtype, layout, into_tokens):
    B, T, N, C = 2, 9, 11, 40
    x = _views(B, T, N, C, dtype)[layout]
    assert x.shape == (B, T, N, C) and not x.is_contiguous()
    weight, bias = _inputs(1, 1, 1, C, dtype, seed=3)[1:]
    got = _check(x, weight, bias, into_tokens)
    assert_close(got, tm.temporal_motion_fold_triton(x.contiguous(), weight, bias, EPS, into_tokens))


def test_empty_batch():
    x = torch.randn(0, 5, 3, 8)
    for into_tokens, shape in ((False, (0, 2, 3, 32)), (True, (0, 2, 12, 8))):
        assert tm.temporal_motion_fold_triton(x, None, None, EPS, into_tokens).shape == shape
        assert torch.ops.hallo_rt.temporal_motion_fold(x, None, None, EPS, into_tokens).shape == shape


# ----------------------------------------------------------------------------------------------------
# The frame mapping, pinned independently of the reference's pad/rearrange: every frame holds distinct
# random rows, so each output slot can be matched to exactly one source frame by its values.

# Group g, slots 0..3 -> video frame, written out by hand for T = 9 (G = 3).
EXPECTED_SOURCES_T9 = [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]


def _slot(out, g, j, N, C, into_tokens):
    """Output block of group g, slot j as (B, N, C)."""
    if into_tokens:
        return out[:, g, j * N:(j + 1) * N, :]  # "(four m)": slot-major tokens
    return out[:, g, :, j * C:(j + 1) * C]  # "(four c)": slot-major channels


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("impl", ["triton", "reference", "custom_op"])
def test_frame_mapping(impl, into_tokens):
    B, T, N, C = 2, 9, 5, 24
    x = torch.randn(B, T, N, C, generator=torch.Generator().manual_seed(11))  # (B, T, N, C)
    fn = {"triton": tm.temporal_motion_fold_triton, "reference": tm.temporal_motion_fold_ref,
          "custom_op": torch.ops.hallo_rt.temporal_motion_fold}[impl]
    out = fn(x, None, None, EPS, into_tokens)
    per_frame = F.layer_norm(x, (C,), eps=EPS)  # (B, T, N, C): what each frame's slot must hold
    sources = []
    for g in range(len(EXPECTED_SOURCES_T9)):
        row = []
        for j in range(4):
            block = _slot(out, g, j, N, C, into_tokens)
            errors = [(block - per_frame[:, t]).abs().max().item() for t in range(T)]
            best = min(range(T), key=errors.__getitem__)
            assert errors[best] < 1e-5, f"group {g} slot {j} matches no frame (closest {best}: {errors[best]})"
            row.append(best)
        sources.append(row)
    assert sources == EXPECTED_SOURCES_T9
    # and the general rule the docstring states, for a second clip length
    T = 13
    x = torch.randn(1, T, N, C, generator=torch.Generator().manual_seed(12))
    out, per_frame = fn(x, None, None, EPS, into_tokens), F.layer_norm(x, (C,), eps=EPS)
    for g in range((T + 3) // 4):
        for j in range(4):
            torch.testing.assert_close(_slot(out, g, j, N, C, into_tokens), per_frame[:, max(4 * g + j - 3, 0)],
                                       atol=1e-5, rtol=1e-5)


def test_affine_is_per_channel_within_each_slot():
    # Into channels the 4C output channels are 4 copies of the C LayerNorm channels: weight/bias must repeat
    # per slot, not stretch over 4C.
    B, T, N, C = 1, 5, 3, 16
    x, weight, bias = _inputs(B, T, N, C, torch.float32, seed=5)
    out = tm.temporal_motion_fold_triton(x, weight, bias, EPS, False)  # (B, 2, N, 4C)
    plain = tm.temporal_motion_fold_triton(x, None, None, EPS, False)
    torch.testing.assert_close(out, plain * weight.repeat(4) + bias.repeat(4), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Custom op: the same kernel as the direct launcher, exactly; its fake agrees with the real op.


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_custom_op_matches_launcher_exactly(dtype, into_tokens):
    x, weight, bias = _inputs(2, 9, 7, 40, dtype, seed=2)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous, to cover the stride plumbing too
    via_op = torch.ops.hallo_rt.temporal_motion_fold(x, weight, bias, EPS, into_tokens)
    direct = tm.temporal_motion_fold_triton(x, weight, bias, EPS, into_tokens)
    assert via_op.dtype == dtype and via_op.is_contiguous()
    assert torch.equal(via_op, direct)


@pytest.mark.parametrize("into_tokens", [False, True], ids=["channels", "tokens"])
def test_custom_op_opcheck(into_tokens):
    x, weight, bias = _inputs(1, 5, 3, 8, torch.float32)
    torch.library.opcheck(torch.ops.hallo_rt.temporal_motion_fold.default, (x, weight, bias, EPS, into_tokens))
    torch.library.opcheck(torch.ops.hallo_rt.temporal_motion_fold.default, (x, None, None, EPS, into_tokens))


# ----------------------------------------------------------------------------------------------------
# Errors: the message names the problem.


@pytest.mark.parametrize("T", [0, 2, 4, 48, 80])
def test_rejects_frame_counts_not_4k_plus_1(T):
    x, weight, bias = _inputs(1, T, 3, 8, torch.float32)
    for fn in (tm.temporal_motion_fold_triton, tm.temporal_motion_fold_ref, torch.ops.hallo_rt.temporal_motion_fold):
        with pytest.raises(ValueError, match=rf"T % 4 == 1.*got T={T}"):
            fn(x, weight, bias, EPS, False)


@pytest.mark.parametrize("fn", [tm.temporal_motion_fold_triton, tm.temporal_motion_fold], ids=["launcher", "op"])
def test_rejects_bad_weights(fn):
    x, weight, bias = _inputs(1, 5, 3, 8, torch.float16)
    with pytest.raises(ValueError, match=r"weight must be a contiguous \(8,\) vector.*got shape \(9,\)"):
        fn(x, torch.ones(9, dtype=x.dtype), bias, EPS, False)
    with pytest.raises(ValueError, match=r"bias must have 1 dims, got shape \(1, 8\)"):
        fn(x, weight, bias[None], EPS, False)
    with pytest.raises(ValueError, match="weight must be a contiguous"):
        fn(x, torch.ones(16, dtype=x.dtype)[::2], bias, EPS, False)
    with pytest.raises(ValueError, match="both be given or both be None"):
        fn(x, weight, None, EPS, True)
    with pytest.raises(TypeError, match=r"weight must be one of \['torch.float16'\], got torch.float32"):
        fn(x, weight.float(), bias, EPS, False)


def test_rejects_bad_x():
    with pytest.raises(ValueError, match=r"x must have 4 dims, got shape \(5, 3, 8\)"):
        tm.temporal_motion_fold_triton(torch.randn(5, 3, 8), None, None, EPS, False)
    with pytest.raises(TypeError, match="x must be one of"):
        tm.temporal_motion_fold_triton(torch.zeros(1, 5, 3, 8, dtype=torch.int32), None, None, EPS, False)


# ----------------------------------------------------------------------------------------------------
# Registry: model-size launches on meta tensors.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_registry_examples(dtype):
    op = REGISTRY["temporal_motion_fold"]
    assert op.overload is torch.ops.hallo_rt.temporal_motion_fold.default
    launches = dict(op.examples(dtype))
    expected = {  # label -> (x shape, out shape)
        "hallo4_pose_81f": ((1, 81, 1560, 384), (1, 21, 1560, 1536)),
        "hallo4_audio_81f": ((1, 81, 32, 1536), (1, 21, 128, 1536)),
        "hallo4_pose_49f": ((1, 49, 1560, 384), (1, 13, 1560, 1536)),
        "hallo4_audio_49f": ((1, 49, 32, 1536), (1, 13, 128, 1536)),
        "hallo3_pose_49f": ((2, 49, 1350, 768), (2, 13, 1350, 3072)),
        "hallo3_audio_49f": ((2, 49, 32, 768), (2, 13, 128, 768)),
    }
    assert set(launches) == set(expected)
    size = torch.empty((), dtype=dtype).element_size()
    for label, launch in launches.items():
        x_shape, out_shape = expected[label]
        (out,) = launch.outputs
        assert tuple(out.shape) == out_shape and out.dtype == dtype, label
        C = x_shape[-1]
        assert launch.bytes == size * (torch.Size(x_shape).numel() + 2 * C + out.numel()), label
        assert launch.flops == 7.0 * out.numel(), label
        rows = out.numel() // C
        block_r = launch.constexprs["BLOCK_R"]
        assert launch.grid == (-(-rows // block_r),) and launch.constexprs["BLOCK_C"] >= C, label
        assert launch.constexprs["INTO_TOKENS"] == ("audio" in label), label
        signature, _ = launch.signature()  # the AOT signature covers every kernel parameter
        assert signature["x_ptr"] == signature["out_ptr"] == "*" + {torch.float32: "fp32", torch.float16: "fp16",
                                                                    torch.bfloat16: "bf16"}[dtype]
