"""Parity of the joint-attention kernels with their references: `hallo_rt::qk_norm_rope` (QK-LayerNorm + RoPE
on the video rows) and `hallo_rt::joint_attention` (flash attention over [text | video | bank]).

On CPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1). Inputs are laid out as
the model makes them: q/k/v strided views of one QKV projection, the bank a view of its K/V projection. The
attention is tested in fp32 and fp16 only (the interpreter's bf16 `tl.dot` is wrong); qk_norm_rope has no dot
and is tested in bf16 too.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerances import assert_close

from hallo_rt.engine.rope import apply_rope, rope_table
from hallo_rt.kernels import joint_attention as ja
from hallo_rt.kernels import qk_norm_rope as qnr
from hallo_rt.kernels.registry import REGISTRY

TEXT = 226  # Hallo3's text tokens
EPS = 1e-5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qkv(B, S, H, D, dtype, seed=0):
    """The (B, S, 3, H, Dh) view of a QKV Linear output, as JointAttention makes it."""
    return torch.randn(B, S, 3 * H * D, generator=_gen(seed)).to(dtype).unflatten(-1, (3, H, D))


def _norm_params(D, dtype, seed=1):
    g = _gen(seed)
    w = 1 + 0.2 * torch.randn(2, D, generator=g)  # LayerNorm-like weights around 1
    b = 0.2 * torch.randn(2, D, generator=g)
    return w[0].to(dtype), b[0].to(dtype), w[1].to(dtype), b[1].to(dtype)


def _rope(D, frames, height, width):
    """CogVideoX 3D RoPE tables (R, Dh) fp32 for a frames x height x width video."""
    dims = (D // 4, 3 * D // 8, 3 * D // 8)
    return rope_table(dims, frames, height, width)


# ----------------------------------------------------------------------------------------------------
# qk_norm_rope


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,D,text,frames", [
    (2, 3, 64, TEXT, (3, 5, 7)),  # Hallo3 layout: 226 text tokens, then 105 video tokens
    (1, 2, 128, 0, (2, 3, 5)),  # Hallo4 head dim, video only
    (1, 2, 48, 5, (1, 3, 3)),  # head dim not a power of 2 (padded tile)
])
def test_qk_norm_rope_matches_reference(dtype, B, H, D, text, frames):
    cos, sin = _rope(D, *frames)
    qkv = _qkv(B, text + cos.shape[0], H, D, dtype)
    args = (qkv, *_norm_params(D, dtype), cos, sin, text, EPS)
    q, k = qnr.qk_norm_rope_triton(*args)
    q_ref, k_ref = qnr.qk_norm_rope_ref(*args)
    assert q.shape == k.shape == (B, H, qkv.shape[1], D) and q.is_contiguous() and k.is_contiguous()
    assert q.dtype == k.dtype == dtype
    assert_close(q, q_ref)
    assert_close(k, k_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_variants(dtype):
    """No q norm, k norm without bias, RoPE rows in the middle (rows after the table stay unrotated), no RoPE."""
    B, S, H, D = 2, 41, 2, 32
    qkv = _qkv(B, S, H, D, dtype, seed=3)
    cos, sin = _rope(D, 2, 3, 4)  # 24 rows
    _, _, kw, _ = _norm_params(D, dtype)
    cases = [
        (None, None, kw, None, cos, sin, 7),
        (kw, None, None, None, cos, sin, 0),
        (*_norm_params(D, dtype), None, None, 0),
        (None, None, None, None, None, None, 0),
    ]
    for q_w, q_b, k_w, k_b, c, s, start in cases:
        args = (qkv, q_w, q_b, k_w, k_b, c, s, start, EPS)
        for got, want in zip(qnr.qk_norm_rope_triton(*args), qnr.qk_norm_rope_ref(*args)):
            assert_close(got, want)
    # Without norm or rope both sides are plain copies, bit for bit.
    q, k = qnr.qk_norm_rope_triton(qkv, None, None, None, None, None, None, 0, EPS)
    assert torch.equal(q, qkv[:, :, 0].transpose(1, 2)) and torch.equal(k, qkv[:, :, 1].transpose(1, 2))
    # Rows outside [start, start + R) are the LayerNorm alone.
    q, _ = qnr.qk_norm_rope_triton(qkv, kw, None, None, None, cos, sin, 7, EPS)
    plain = F.layer_norm(qkv[:, :, 0].transpose(1, 2).float(), (D,), kw.float(), None, EPS)
    assert_close(q[:, :, :7], plain[:, :, :7], dtype)
    assert_close(q[:, :, 31:], plain[:, :, 31:], dtype)
    assert (q[:, :, 7:31].float() - plain[:, :, 7:31]).abs().max() > 0.1  # and the middle rows did rotate


@pytest.mark.parametrize("layout", ["batch_strided", "head_dim_strided"])
def test_qk_norm_rope_non_contiguous(layout):
    B, S, H, D = 2, 19, 2, 32
    g = _gen(4)
    if layout == "batch_strided":  # (S, B, ...) storage viewed batch-first
        qkv = torch.randn(S, B, 3, H, D, generator=g).transpose(0, 1)
    else:  # every other channel of a wider projection: Dh stride 2
        qkv = torch.randn(B, S, 3, H, 2 * D, generator=g)[..., ::2]
    cos, sin = _rope(D, 1, 3, 4)
    cos_strided = torch.stack([cos, sin], dim=1)  # (R, 2, Dh): cos and sin as views of one table
    args = (qkv, *_norm_params(D, torch.float32), cos_strided[:, 0], cos_strided[:, 1], 3, EPS)
    assert qnr._qk_norm_rope_launch(*args).constexprs["ALIGNED"] == (layout == "batch_strided")
    for got, want in zip(qnr.qk_norm_rope_triton(*args), qnr.qk_norm_rope_ref(*args)):
        assert_close(got, want)


def test_qk_norm_rope_custom_op_equals_launcher():
    cos, sin = _rope(64, 2, 3, 5)
    qkv = _qkv(1, 10 + cos.shape[0], 2, 64, torch.float16)
    args = (qkv, *_norm_params(64, torch.float16), cos, sin, 10, EPS)
    op_q, op_k = torch.ops.hallo_rt.qk_norm_rope(*args)
    q, k = qnr.qk_norm_rope_triton(*args)
    assert torch.equal(op_q, q) and torch.equal(op_k, k)
    # Without norm and rope the custom op still returns fresh tensors, never views of qkv.
    op_q, _ = torch.ops.hallo_rt.qk_norm_rope(qkv, None, None, None, None, None, None, 0, EPS)
    assert op_q.untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr()


def test_qk_norm_rope_reference_is_the_engine_math():
    """The reference restates engine.rope.apply_rope; it must equal the model's own code bit for bit."""
    B, H, D = 2, 2, 64
    cos, sin = _rope(D, 2, 3, 4)
    qkv = _qkv(B, 9 + cos.shape[0], H, D, torch.bfloat16)
    q_w, q_b, k_w, k_b = _norm_params(D, torch.bfloat16)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]  # as JointAttention.forward
    want = []
    for x, w, b in ((q, q_w, q_b), (k, k_w, k_b)):
        x = F.layer_norm(x, (D,), w, b, EPS)
        want.append(torch.cat([x[:, :, :9], apply_rope(x[:, :, 9:], cos, sin)], dim=2))
    got = qnr.qk_norm_rope_ref(qkv, q_w, q_b, k_w, k_b, cos, sin, 9, EPS)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_qk_norm_rope_errors():
    D = 32
    qkv = _qkv(1, 8, 2, D, torch.float32)
    w = torch.ones(D)
    cos, sin = torch.ones(4, D), torch.zeros(4, D)
    launch = qnr.qk_norm_rope_triton
    with pytest.raises(ValueError, match="must have 5 dims"):
        launch(qkv.flatten(-2), w, w, w, w, cos, sin, 0, EPS)
    with pytest.raises(ValueError, match=r"\(B, S, 3, H, Dh\)"):
        launch(qkv[:, :, :2], w, w, w, w, cos, sin, 0, EPS)
    with pytest.raises(ValueError, match=r"q_weight must be a contiguous \(32,\) vector"):
        launch(qkv, torch.ones(D + 1), w, w, w, cos, sin, 0, EPS)
    with pytest.raises(TypeError, match="k_bias must be one of"):
        launch(qkv, w, w, w, w.half(), cos, sin, 0, EPS)
    with pytest.raises(ValueError, match="q_bias given without q_weight"):
        launch(qkv, None, w, w, w, cos, sin, 0, EPS)
    with pytest.raises(ValueError, match="cos and sin must both be given"):
        launch(qkv, w, w, w, w, cos, None, 0, EPS)
    with pytest.raises(ValueError, match=r"must have shape \(R, 32\)"):
        launch(qkv, w, w, w, w, cos[:, :16], sin[:, :16], 0, EPS)
    with pytest.raises(TypeError, match="cos must be one of"):
        launch(qkv, w, w, w, w, cos.half(), sin, 0, EPS)
    with pytest.raises(ValueError, match=r"RoPE rows \[5, 9\) must lie within the 8 tokens"):
        launch(qkv, w, w, w, w, cos, sin, 5, EPS)
    with pytest.raises(ValueError, match="head dim must be even"):
        launch(_qkv(1, 8, 1, 5, torch.float32), None, None, None, None, cos[:, :5], sin[:, :5], 0, EPS)


# ----------------------------------------------------------------------------------------------------
# joint_attention


def _model_views(B, S, Nb, H, D, dtype, seed=0):
    """q, k, v and the bank's k, v as the model lays them out: strided views of the projections."""
    q, k, v = _qkv(B, S, H, D, dtype, seed).permute(2, 0, 3, 1, 4)  # 3 x (B, H, S, Dh) views
    if not Nb:
        return q, k, v, None, None
    kv = torch.randn(B, Nb, 2 * H * D, generator=_gen(seed + 1)).to(dtype).unflatten(-1, (2, H, D))
    k_bank, v_bank = kv.permute(2, 0, 3, 1, 4)  # 2 x (B, H, Nb, Dh) views
    return q, k, v, k_bank, v_bank


def _check_attention(args, **blocks):
    out = ja.joint_attention_triton(*args, **blocks)
    q = args[0]
    assert out.shape == (q.shape[0], q.shape[2], q.shape[1] * q.shape[3]) and out.is_contiguous()
    assert_close(out, ja.joint_attention_ref(*args))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("blocks", [{}, dict(block_m=32, block_n=16)])
def test_joint_attention_matches_reference(dtype, blocks):
    """226 text + 39 video tokens, a bank of 45: ragged query tiles, ragged main and bank key tiles."""
    _check_attention(_model_views(2, TEXT + 39, 45, 2, 64, dtype), **blocks)


# fp16 with the sm_90 tiles; fp32 with 64x64 tiles, since its small default tiles take ~14 s in the interpreter.
@pytest.mark.parametrize("dtype,blocks", [(torch.float16, {}), (torch.float32, {"block_m": 64, "block_n": 64})])
def test_joint_attention_hallo3_frame_sizes(dtype, blocks):
    """The issue's sizes: 226 text tokens + one 1350-token frame, a 1350-token bank (H=1, Dh=64)."""
    _check_attention(_model_views(1, TEXT + 1350, 1350, 1, 64, dtype, seed=5), **blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_joint_attention_no_bank_head_dim_128(dtype):
    _check_attention(_model_views(1, 150, 0, 2, 128, dtype, seed=6))
    _check_attention(_model_views(1, 37, 0, 1, 128, dtype, seed=7), block_m=16, block_n=16)


@pytest.mark.parametrize("Sk", [0, 3])
def test_joint_attention_bank_dominated_keys(Sk):
    """Few or no main keys: the softmax starts on the bank (Sk=0) or on a lone masked tail block (Sk=3)."""
    q = torch.randn(1, 2, 21, 64, generator=_gen(8))
    k, v = torch.randn(2, 1, 2, Sk, 64, generator=_gen(9))
    _, _, _, k_bank, v_bank = _model_views(1, 1, 70, 2, 64, torch.float32, seed=10)
    _check_attention((q, k, v, k_bank, v_bank))
    _check_attention((q[:, :, :1], k, v, k_bank, v_bank))  # a single query row


def test_joint_attention_unaligned_layouts():
    """Views the kernel cannot promise 16-byte rows for (odd storage offset, head-dim stride 2) take the
    unhinted path and still match."""
    B, H, S, Nb, D = 1, 2, 40, 9, 32
    flat = torch.randn(1 + B * H * S * D, generator=_gen(14))
    q = flat[1:].view(B, H, S, D)  # storage offset of one element: rows start 4 bytes off 16
    k, v = torch.randn(2, B, H, S, 2 * D, generator=_gen(15))[..., ::2]  # head-dim stride 2
    _, _, _, k_bank, v_bank = _model_views(B, 1, Nb, H, D, torch.float32, seed=16)
    assert not ja._joint_attention_launch(q, k, v, k_bank, v_bank).constexprs["ALIGNED"]
    _check_attention((q, k, v, k_bank, v_bank))


def test_joint_attention_custom_op_equals_launcher():
    args = _model_views(1, 70, 33, 2, 64, torch.float16, seed=11)
    assert torch.equal(torch.ops.hallo_rt.joint_attention(*args), ja.joint_attention_triton(*args))
    args = args[:3] + (None, None)
    assert torch.equal(torch.ops.hallo_rt.joint_attention(*args), ja.joint_attention_triton(*args))


def test_joint_attention_errors():
    q, k, v, kb, vb = _model_views(1, 8, 4, 2, 32, torch.float32)
    launch = ja.joint_attention_triton
    with pytest.raises(ValueError, match="q must have 4 dims"):
        launch(q[0], k, v, kb, vb)
    with pytest.raises(ValueError, match=r"head dim must be a power of 2 in \[16, 256\].*got 24"):
        launch(q[..., :24], k[..., :24], v[..., :24], kb[..., :24], vb[..., :24])
    with pytest.raises(ValueError, match="k and v must have shape"):
        launch(q, k, v[:, :, :5], kb, vb)
    with pytest.raises(ValueError, match="k_bank and v_bank must have shape"):
        launch(q, k, v, kb[:, :1], vb[:, :1])
    with pytest.raises(ValueError, match="k_bank and v_bank must both be given"):
        launch(q, k, v, kb, None)
    with pytest.raises(TypeError, match="v must be one of"):
        launch(q, k, v.half(), kb, vb)
    with pytest.raises(ValueError, match="at least one key"):
        launch(q, k[:, :, :0], v[:, :, :0], None, None)
    with pytest.raises(ValueError, match="block_n must be a power of 2"):
        launch(q, k, v, kb, vb, block_n=24)


# ----------------------------------------------------------------------------------------------------
# The two together, against JointAttention's math written out with torch ops.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qk_norm_rope_then_attention_is_joint_attention(dtype):
    B, L, H, Dh, Nb = 2, 11, 2, 32, 19
    D = H * Dh
    cos, sin = _rope(Dh, 2, 3, 4)  # 24 video tokens
    g = _gen(12)
    x = torch.randn(B, L + cos.shape[0], D, generator=g).to(dtype)  # modulated [text | video]
    bank = torch.randn(B, Nb, D, generator=g).to(dtype)
    weight = (torch.randn(3 * D, D, generator=g) / D**0.5).to(dtype)
    bias = (0.1 * torch.randn(3 * D, generator=g)).to(dtype)
    q_w, q_b, k_w, k_b = _norm_params(Dh, dtype, seed=13)

    # Reference: JointAttention.forward written out.
    q, k, v = F.linear(x, weight, bias).unflatten(-1, (3, H, Dh)).permute(2, 0, 3, 1, 4)
    q, k = F.layer_norm(q, (Dh,), q_w, q_b, EPS), F.layer_norm(k, (Dh,), k_w, k_b, EPS)
    q = torch.cat([q[:, :, :L], apply_rope(q[:, :, L:], cos, sin)], dim=2)
    k = torch.cat([k[:, :, :L], apply_rope(k[:, :, L:], cos, sin)], dim=2)
    k_ref, v_ref = F.linear(bank, weight[D:], bias[D:]).unflatten(-1, (2, H, Dh)).permute(2, 0, 3, 1, 4)
    k = torch.cat([k, F.layer_norm(k_ref, (Dh,), k_w, k_b, EPS)], dim=2)
    v = torch.cat([v, v_ref], dim=2)
    want = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # (B, L+S, D)

    # Fused: the two custom ops on views of the projections, no concatenation.
    qkv = F.linear(x, weight, bias).unflatten(-1, (3, H, Dh))  # (B, L+S, 3, H, Dh)
    q, k = torch.ops.hallo_rt.qk_norm_rope(qkv, q_w, q_b, k_w, k_b, cos, sin, L, EPS)
    kv = F.linear(bank, weight[D:], bias[D:]).unflatten(-1, (2, H, Dh))  # (B, Nb, 2, H, Dh)
    k_bank = F.layer_norm(kv[:, :, 0].transpose(1, 2), (Dh,), k_w, k_b, EPS)
    got = torch.ops.hallo_rt.joint_attention(q, k, qkv[:, :, 2].transpose(1, 2), k_bank, kv[:, :, 1].transpose(1, 2))
    assert_close(got, want)


# ----------------------------------------------------------------------------------------------------
# Registry: the model-size launches build on meta tensors with the documented work model.


def test_registry_launches():
    for name in ("qk_norm_rope", "joint_attention"):
        assert REGISTRY[name].overload is getattr(torch.ops.hallo_rt, name).default
    launches = dict(REGISTRY["joint_attention"].examples(torch.float16))
    B, H, Dh, S, Nb = 2, 48, 64, TEXT + 13 * 1350, 1350
    hallo3 = launches["hallo3"]
    assert hallo3.flops == 4 * B * H * S * (S + Nb) * Dh
    assert hallo3.grid == ((S + 127) // 128, B * H)
    assert hallo3.outputs[0].shape == (B, S, H * Dh)
    assert launches["hallo4"].outputs[0].shape == (1, 22 * 1560, 12 * 128)
    norm = dict(REGISTRY["qk_norm_rope"].examples(torch.bfloat16))
    assert norm["hallo3"].outputs[0].shape == (B, H, S, Dh) and norm["hallo3"].grid[1:] == (B * H, 2)
    for launch in list(launches.values()) + list(norm.values()):
        assert launch.constexprs["ALIGNED"]  # the model's layouts get the vectorised, pipelined build
        signature, _ = launch.signature()  # the argument list the AOT plugins compile against
        assert signature["EPS" if "EPS" in signature else "QK_SCALE"] == "constexpr"
