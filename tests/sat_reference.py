"""Independent functional reference of the Hallo3 denoiser, written against a SAT-layout state dict.

This module is TEST-SIDE ONLY. It is written from the original Hallo3 code (git mirror of
fudan-generative-vision/hallo3 @ e342dce) and is deliberately independent of the production
model in ``engine/``. It is plain, slow, fp32 PyTorch: explicit loops over layers,
``torch.nn.functional`` ops, SDPA for the attention kernel.

Where each piece comes from (paths relative to the hallo3 repository root):

* ``hallo3/sgm/modules/diffusionmodules/util.py`` ``timestep_embedding``      -> :func:`sat_timestep_embedding`
* ``hallo3/dit_video_concat.py`` ``Rotary3DPositionEmbeddingMixin.__init__``  -> :func:`sat_rope_table`
* ``hallo3/dit_video_concat.py`` ``rotate_half`` / ``Rotary3DPositionEmbeddingMixin.rotary``
* ``hallo3/dit_video_concat.py`` ``Rotary3DPositionEmbeddingMixin.attention_fn`` (RoPE placement)
* ``hallo3/dit_video_concat.py`` ``AdaLNMixin.attention_fn`` (per-layer QK-LayerNorm, wraps the RoPE hook)
* ``hallo3/dit_video_concat.py`` ``AdaLNMixin.layer_forward`` (block: adaLN, self-attn, face, audio, MLP)
* ``hallo3/dit_video_concat.py`` ``ImagePatchEmbeddingMixin.word_embedding_forward`` (patch + text embed)
* ``hallo3/dit_video_concat.py`` ``Rotary3DPositionEmbeddingMixin.position_embedding_forward`` (learned pos-emb)
* ``hallo3/dit_video_concat.py`` ``FinalLayerMixin.final_forward`` / ``unpatchify``
* ``hallo3/dit_video_concat.py`` ``DiffusionTransformer.forward`` / ``_build_modules`` (time embedding MLP)
* ``hallo3/ref_dit_video_concat.py`` ``AdaLNMixin.layer_forward`` (the ``layer.bank.append`` of the reference net)
* ``hallo3/sgm/models/transformer.py`` ``AudioProjModel``, ``FaceProjModel``, ``BaseTransformer.forward``
* ``hallo3/sgm/models/transformer_defaults.py`` ``attention_forward_default``,
  ``cross_attention_forward_default``, ``attention_fn_default``, ``mlp_forward_default``
* ``hallo3/diffusion_video.py`` ``SATVideoDiffusionEngine.sample`` L315-326 (how the ref net is called)

Numerics (see the notes next to each function):

* block LayerNorms (input / post_attention / face_input / audio_input / transformer.final_layernorm):
  eps ``norm_eps`` = 1e-5.  (``DiffusionTransformer`` passes ``partial(LayerNorm, eps=1e-6)`` as the
  layernorm factory, dit L720, but ``BaseTransformerLayer`` calls it as ``layernorm(hidden, eps=layernorm_epsilon)``,
  transformer.py L512/L536/L541/L561/L745, and the keyword overrides the partial: 1e-5.)
* QK-LayerNorm over head_dim: eps 1e-6 (dit L485-492).
* ``final_layer.norm_final``: ``nn.LayerNorm(eps=1e-6)`` (dit L402) -> ``out_norm_eps`` (default 1e-6).
* ``face_proj.norm`` / ``audio_proj.norm``: ``torch.nn.LayerNorm`` default eps 1e-5 (transformer.py L372, L433).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sat_timestep_embedding",
    "sat_rope_table",
    "sat_rotate_half",
    "sat_apply_rope",
    "sat_audio_proj",
    "sat_face_proj",
    "sat_forward",
    "sat_reference_bank",
]

_QK_LN_EPS = 1e-6  # AdaLNMixin.__init__: LayerNorm(hidden_size_head, eps=1e-6)
_PROJ_LN_EPS = 1e-5  # AudioProjModel.norm / FaceProjModel.norm: torch.nn.LayerNorm defaults


# ---------------------------------------------------------------------------------------------
# small helpers operating on state-dict entries
# ---------------------------------------------------------------------------------------------


def _linear(sd: dict, key: str, x: Tensor) -> Tensor:
    """nn.Linear / SAT Column/RowParallelLinear with world size 1: y = x W^T + b."""
    return F.linear(x, sd[key + ".weight"].float(), _opt(sd, key + ".bias"))


def _layer_norm(sd: dict, key: str, x: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dim; weight/bias optional (elementwise_affine=False would drop them)."""
    return F.layer_norm(x, (x.shape[-1],), _opt(sd, key + ".weight"), _opt(sd, key + ".bias"), eps)


def _opt(sd: dict, key: str) -> Tensor | None:
    t = sd.get(key)
    return None if t is None else t.float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """dit_video_concat.py ``modulate`` (3-D branch): x * (1 + scale) + shift, broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _split_heads(x: Tensor, head_dim: int) -> Tensor:
    """SelfAttention/CrossAttention._transpose_for_scores: (b, s, h*d) -> (b, h, s, d)."""
    b, s, _ = x.shape
    return x.view(b, s, -1, head_dim).permute(0, 2, 1, 3)


def _merge_heads(x: Tensor) -> Tensor:
    """attention_forward_default: (b, h, s, d) -> permute(0, 2, 1, 3) -> (b, s, h*d)."""
    b, h, s, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, s, h * d)


def _count_layers(sd: dict, prefix: str) -> int:
    n = 0
    while f"{prefix}transformer.layers.{n}.attention.query_key_value.weight" in sd:
        n += 1
    if n == 0:
        raise KeyError(f"no '{prefix}transformer.layers.0.attention.query_key_value.weight' in state dict")
    return n


# ---------------------------------------------------------------------------------------------
# timestep embedding  (sgm/modules/diffusionmodules/util.py: timestep_embedding, repeat_only=False)
# ---------------------------------------------------------------------------------------------


def sat_timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding, [cos | sin] order, max_period 10000; fp32 result of shape (N, dim)."""
    max_period = 10000
    half = dim // 2
    # freqs = exp(-ln(max_period) * arange(half) / half), computed in fp32
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# ---------------------------------------------------------------------------------------------
# 3D RoPE  (dit_video_concat.py: Rotary3DPositionEmbeddingMixin.__init__, rotate_half, rotary)
# ---------------------------------------------------------------------------------------------


def sat_rope_table(
    head_dim: int, frames: int, h_tokens: int, w_tokens: int, theta: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (frames*h_tokens*w_tokens, head_dim), fp32, rows in (t h w) order.

    head_dim is split t = hd/4, h = hd/8*3, w = hd/8*3; per axis the frequencies are
    1/theta^(arange(0, d, 2)/d) times integer positions arange(n); each frequency is repeated twice
    *interleaved* ("... n -> ... (n r)", r=2) and the axes are concatenated [t | h | w].
    """
    dim_t = head_dim // 4
    dim_h = head_dim // 8 * 3
    dim_w = head_dim // 8 * 3

    def axis(dim: int, n: int) -> Tensor:
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        pos = torch.arange(n, dtype=torch.float32)
        f = pos[:, None] * inv[None, :]  # einsum("..., f -> ... f")
        return f.repeat_interleave(2, dim=-1)  # "(n r)", r=2: f0 f0 f1 f1 ...

    ft = axis(dim_t, frames)[:, None, None, :].expand(frames, h_tokens, w_tokens, -1)
    fh = axis(dim_h, h_tokens)[None, :, None, :].expand(frames, h_tokens, w_tokens, -1)
    fw = axis(dim_w, w_tokens)[None, None, :, :].expand(frames, h_tokens, w_tokens, -1)
    freqs = torch.cat([ft, fh, fw], dim=-1).reshape(frames * h_tokens * w_tokens, -1).contiguous()
    return freqs.cos(), freqs.sin()


def sat_rotate_half(x: Tensor) -> Tensor:
    """rotate_half: adjacent pairs (x[2i], x[2i+1]) -> (-x[2i+1], x[2i])."""
    pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = pairs.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def sat_apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary3DPositionEmbeddingMixin.rotary: x (b, h, s, d); uses the first s rows of the table."""
    s = x.shape[2]
    c = cos[:s].to(x.dtype)[None, None]
    si = sin[:s].to(x.dtype)[None, None]
    return x * c + sat_rotate_half(x) * si


# ---------------------------------------------------------------------------------------------
# audio / face projections  (sgm/models/transformer.py: AudioProjModel, FaceProjModel)
# ---------------------------------------------------------------------------------------------


def sat_audio_proj(sd: dict, prefix: str, audio: Tensor) -> Tensor:
    """AudioProjModel.forward: (B, T, window, layers, dim) -> (B, F, tokens, token_dim).

    relu(proj1) -> relu(proj2) -> proj3, then twice the SAME conv1 (k=2, s=2) along frames, where an odd
    frame count keeps frame 0 untouched and convolves frames 1.. (causal-VAE-like 4x compression).
    Finally LayerNorm(token_dim).
    """
    p = prefix + "transformer.audio_proj."
    B, T = audio.shape[:2]
    a = audio.float().reshape(B * T, -1)  # "(bz f) w b c" -> view(bz*f, w*b*c)
    a = torch.relu(_linear(sd, p + "proj1", a))
    a = torch.relu(_linear(sd, p + "proj2", a))
    a = _linear(sd, p + "proj3", a)  # (B*T, tokens*token_dim)
    a = a.reshape(B, T, -1)  # "(bz f) m c -> bz f (m c)"
    conv_w, conv_b = sd[p + "conv1.weight"].float(), _opt(sd, p + "conv1.bias")
    for _ in range(2):
        a = a.permute(0, 2, 1)  # (B, C, f)
        if a.shape[-1] % 2 == 1:
            first, rest = a[..., :1], a[..., 1:]
            if rest.shape[-1] > 0:
                rest = F.conv1d(rest, conv_w, conv_b, stride=2)
            a = torch.cat([first, rest], dim=-1)
        else:
            a = F.conv1d(a, conv_w, conv_b, stride=2)
        a = a.permute(0, 2, 1)  # (B, f', C)
    token_dim = sd[p + "norm.weight"].shape[0]
    a = a.reshape(B, a.shape[1], -1, token_dim)  # "b f (m c) -> b f m c"
    return _layer_norm(sd, p + "norm", a, _PROJ_LN_EPS)


def sat_face_proj(sd: dict, prefix: str, face: Tensor) -> Tensor:
    """FaceProjModel.forward: (B, 512) -> proj -> reshape (B, tokens, dim) -> LayerNorm(dim)."""
    p = prefix + "transformer.face_proj."
    dim = sd[p + "norm.weight"].shape[0]
    f = _linear(sd, p + "proj", face.float().reshape(face.shape[0], -1))
    f = f.reshape(-1, f.shape[-1] // dim, dim)
    return _layer_norm(sd, p + "norm", f, _PROJ_LN_EPS)


# ---------------------------------------------------------------------------------------------
# attention pieces
# ---------------------------------------------------------------------------------------------


def _self_attention(
    sd: dict, lp: str, qln: str, kln: str, x: Tensor, *, head_dim: int, text_len: int, ref_len: int,
    cos: Tensor, sin: Tensor,
) -> Tensor:
    """attention_forward_default + AdaLNMixin.attention_fn + Rotary3DPositionEmbeddingMixin.attention_fn.

    x = [text | video | ref] tokens.  QKV rows are contiguous Q|K|V chunks (split_tensor_along_last_dim, stride 3,
    model-parallel size 1).  Hook order: QK-LayerNorm (AdaLN mixin, outer hook) then RoPE (rotary mixin, inner hook)
    on q and k of the video tokens only, rows [text_len : S - ref_len].  SDPA with scale 1/sqrt(head_dim), no mask.
    """
    qkv = _linear(sd, lp + "attention.query_key_value", x)
    q, k, v = qkv.chunk(3, dim=-1)
    q, k, v = _split_heads(q, head_dim), _split_heads(k, head_dim), _split_heads(v, head_dim)
    q = _layer_norm(sd, qln, q, _QK_LN_EPS)
    k = _layer_norm(sd, kln, k, _QK_LN_EPS)
    S = x.shape[1]
    end = S - ref_len  # explicit end index: avoids the x[a:-0] == empty trap when there is no bank
    q = torch.cat([q[:, :, :text_len], sat_apply_rope(q[:, :, text_len:end], cos, sin), q[:, :, end:]], dim=2)
    k = torch.cat([k[:, :, :text_len], sat_apply_rope(k[:, :, text_len:end], cos, sin), k[:, :, end:]], dim=2)
    o = F.scaled_dot_product_attention(q, k, v)
    return _linear(sd, lp + "attention.dense", _merge_heads(o))


def _cross_attention(
    sd: dict, ap: str, qln: str, kln: str, x: Tensor, ctx: Tensor, *, head_dim: int, cos: Tensor, sin: Tensor
) -> Tensor:
    """cross_attention_forward_default routed through the same attention_fn hook chain.

    x (B*F, N, D) = one latent frame's video tokens; ctx (B*F, M, C).  q = query(x); K|V = key_value(ctx)
    (first half K, second half V).  The SAME per-layer QK-LayerNorms of the self-attention are applied
    (AdaLNMixin.attention_fn ignores is_cross), then RoPE on q ONLY using rows [:N] of the table (frame-0
    positions, Rotary3DPositionEmbeddingMixin.attention_fn is_cross branch).  SDPA, then dense.
    """
    q = _split_heads(_linear(sd, ap + "query", x), head_dim)
    kv = _linear(sd, ap + "key_value", ctx)
    k, v = kv.chunk(2, dim=-1)
    k, v = _split_heads(k, head_dim), _split_heads(v, head_dim)
    q = _layer_norm(sd, qln, q, _QK_LN_EPS)
    k = _layer_norm(sd, kln, k, _QK_LN_EPS)
    q = sat_apply_rope(q, cos, sin)  # rotary() slices freqs[:seq_len] with seq_len = N
    o = F.scaled_dot_product_attention(q, k, v)
    return _linear(sd, ap + "dense", _merge_heads(o))


# ---------------------------------------------------------------------------------------------
# full forward
# ---------------------------------------------------------------------------------------------


def sat_forward(
    sd: dict,
    prefix: str,
    x: Tensor,
    timesteps: Tensor,
    text: Tensor,
    *,
    num_heads: int,
    patch_size: int = 2,
    audio: Tensor | None = None,
    face: Tensor | None = None,
    bank: list[Tensor] | None = None,
    capture_bank: list | None = None,
    norm_eps: float = 1e-5,
    out_norm_eps: float = 1e-6,
) -> Tensor:
    """DiffusionTransformer.forward of hallo3 (main net) / ref_dit_video_concat (reference net), fp32.

    x (B, F, C_in, H, W), channel concat already done by the caller; timesteps (B,); text (B, L, text_dim).
    audio: raw wav2vec features (B, T, window, layers, dim) or None (no audio cross-attention).
    face: (B, 512) or None (no face cross-attention).
    bank: per-layer (B, N_ref, D) reference tokens appended to the self-attention input, or None.
    capture_bank: if a list, each layer's modulated LN1 image-token output is appended (the ref-net bank).
    Returns (B, F, C_out, H, W).
    """
    P = prefix
    x = x.float()
    B, Fr, C, H, W = x.shape
    p = patch_size
    h_tok, w_tok = H // p, W // p
    N = h_tok * w_tok
    L = text.shape[1]

    num_layers = _count_layers(sd, P)
    D = sd[f"{P}transformer.layers.0.attention.query_key_value.weight"].shape[1]
    head_dim = D // num_heads
    model_channels = sd[f"{P}time_embed.0.weight"].shape[1]  # sinusoid dim == hidden_size
    if bank is not None and len(bank) != num_layers:
        raise ValueError(f"bank has {len(bank)} entries, model has {num_layers} layers")

    # --- time embedding: DiffusionTransformer.forward L858-859 / _build_modules L741-745
    t_emb = sat_timestep_embedding(timesteps.reshape(-1), model_channels).to(x.device)
    emb = _linear(sd, P + "time_embed.2", F.silu(_linear(sd, P + "time_embed.0", t_emb)))  # (B, time_dim)
    if emb.shape[0] != B:
        emb = emb.expand(B, -1)
    emb_act = F.silu(emb)  # every adaLN head starts with nn.SiLU()

    # --- patch embedding: ImagePatchEmbeddingMixin.word_embedding_forward
    img = F.conv2d(
        x.reshape(B * Fr, C, H, W), sd[P + "mixins.patch_embed.proj.weight"].float(),
        _opt(sd, P + "mixins.patch_embed.proj.bias"), stride=p,
    )  # ((b t), D, h, w)
    img = img.reshape(B, Fr, D, N).transpose(2, 3).reshape(B, Fr * N, D)  # "b t n d -> b (t n) d"
    txt = _linear(sd, P + "mixins.patch_embed.text_proj", text.float())
    hs = torch.cat([txt, img], dim=1)

    # --- learned absolute position embedding on [text | video]: position_embedding_forward
    pos_key = P + "mixins.pos_embed.pos_embedding"
    if pos_key in sd:
        hs = hs + sd[pos_key].float()[:, : L + Fr * N]

    # --- conditioning streams: BaseTransformer.forward L792-802
    audio_ctx = face_ctx = None
    if audio is not None:
        a = sat_audio_proj(sd, P, audio)  # (B, F', M, C)
        if a.shape[1] != Fr:
            raise ValueError(f"audio projection gives {a.shape[1]} frames, latent has {Fr}")
        audio_ctx = a.reshape(B * Fr, a.shape[2], a.shape[3])  # "b f m c -> (b f) m c"
    if face is not None:
        f = sat_face_proj(sd, P, face)  # (B, tokens, dim)
        face_ctx = f.unsqueeze(1).expand(B, Fr, *f.shape[1:]).reshape(B * Fr, *f.shape[1:])  # repeat per frame

    cos, sin = sat_rope_table(head_dim, Fr, h_tok, w_tok)
    cos, sin = cos.to(x.device), sin.to(x.device)

    # --- transformer layers: AdaLNMixin.layer_forward (dit_video_concat.py L496-611)
    for i in range(num_layers):
        lp = f"{P}transformer.layers.{i}."
        qln = f"{P}mixins.adaln_layer.query_layernorm_list.{i}"
        kln = f"{P}mixins.adaln_layer.key_layernorm_list.{i}"
        mods = _linear(sd, f"{P}mixins.adaln_layer.adaLN_modulations.{i}.1", emb_act).chunk(12, dim=1)
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         t_shift_msa, t_scale_msa, t_gate_msa, t_shift_mlp, t_scale_mlp, t_gate_mlp) = mods

        text_h = hs[:, :L]
        img_h = hs[:, L:]

        # self-attention input: LN1 + modulation (separate text/video modulation, shared LN weights)
        img_in = _modulate(_layer_norm(sd, lp + "input_layernorm", img_h, norm_eps), shift_msa, scale_msa)
        txt_in = _modulate(_layer_norm(sd, lp + "input_layernorm", text_h, norm_eps), t_shift_msa, t_scale_msa)
        if capture_bank is not None:
            # ref_dit_video_concat.py AdaLNMixin.layer_forward: layer.bank.append(img_attention_input.clone())
            capture_bank.append(img_in.clone())

        parts = [txt_in, img_in]
        ref_len = 0
        if bank is not None:
            ref = bank[i].float().to(x.device)
            if ref.shape[0] != B:
                ref = ref.expand(B, -1, -1)
            parts.append(ref)
            ref_len = ref.shape[1]
        attn_in = torch.cat(parts, dim=1)
        attn_out = _self_attention(
            sd, lp, qln, kln, attn_in, head_dim=head_dim, text_len=L, ref_len=ref_len, cos=cos, sin=sin
        )
        S = attn_in.shape[1]
        txt_out = attn_out[:, :L]
        img_out = attn_out[:, L : S - ref_len]  # ref-token outputs are discarded
        img_h = img_h + gate_msa.unsqueeze(1) * img_out
        text_h = text_h + t_gate_msa.unsqueeze(1) * txt_out

        # face cross-attention: per latent frame, plain residual (dit L564-574)
        if face_ctx is not None:
            fi = _layer_norm(sd, lp + "face_input_layernorm", img_h, norm_eps).reshape(B * Fr, N, D)
            fo = _cross_attention(sd, lp + "face_attn.", qln, kln, fi, face_ctx, head_dim=head_dim, cos=cos, sin=sin)
            img_h = img_h + fo.reshape(B, Fr * N, D)

        # audio cross-attention: per latent frame, plain residual (dit L576-587)
        if audio_ctx is not None:
            ai = _layer_norm(sd, lp + "audio_input_layernorm", img_h, norm_eps).reshape(B * Fr, N, D)
            ao = _cross_attention(sd, lp + "audio_attn.", qln, kln, ai, audio_ctx, head_dim=head_dim, cos=cos, sin=sin)
            img_h = img_h + ao.reshape(B, Fr * N, D)

        # MLP over [text | video] (ref tokens never reach it), GELU(tanh)
        img_m = _modulate(_layer_norm(sd, lp + "post_attention_layernorm", img_h, norm_eps), shift_mlp, scale_mlp)
        txt_m = _modulate(_layer_norm(sd, lp + "post_attention_layernorm", text_h, norm_eps), t_shift_mlp, t_scale_mlp)
        m = torch.cat([txt_m, img_m], dim=1)
        m = _linear(sd, lp + "mlp.dense_4h_to_h", F.gelu(_linear(sd, lp + "mlp.dense_h_to_4h", m), approximate="tanh"))
        img_h = img_h + gate_mlp.unsqueeze(1) * m[:, L:]
        text_h = text_h + t_gate_mlp.unsqueeze(1) * m[:, :L]
        hs = torch.cat([text_h, img_h], dim=1)

    # --- BaseTransformer.forward: final_layernorm over all tokens
    hs = _layer_norm(sd, P + "transformer.final_layernorm", hs, norm_eps)

    # --- FinalLayerMixin.final_forward
    v = hs[:, L:]
    shift, scale = _linear(sd, P + "mixins.final_layer.adaLN_modulation.1", emb_act).chunk(2, dim=1)
    v = _modulate(_layer_norm(sd, P + "mixins.final_layer.norm_final", v, out_norm_eps), shift, scale)
    v = _linear(sd, P + "mixins.final_layer.linear", v)  # (B, F*N, C_out*p*p)
    c_out = v.shape[-1] // (p * p)
    # unpatchify: "b (t h w) (c p q) -> b t c (h p) (w q)"
    v = v.reshape(B, Fr, h_tok, w_tok, c_out, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return v.reshape(B, Fr, c_out, h_tok * p, w_tok * p)


def sat_reference_bank(
    sd: dict,
    prefix: str,
    ref_latent: Tensor,
    *,
    num_heads: int,
    text_len: int,
    text_dim: int,
    patch_size: int = 2,
    norm_eps: float = 1e-5,
) -> list[Tensor]:
    """Run the identity reference net once and return its per-layer bank, each (B, N, D).

    diffusion_video.py L315-326: ref_model(ref_image, t=0, cond{concat: ref_image, crossattn: uc}) -> OpenAIWrapper
    concatenates on channels -> x = [ref_latent, ref_latent] (32 ch); the text is the zero unconditional embedding.
    The MLPs and final layer of the ref net also run (output discarded); they do not affect the bank.
    """
    B = ref_latent.shape[0]
    ref_latent = ref_latent.float()
    x = torch.cat([ref_latent, ref_latent], dim=2)
    t = torch.zeros(B, device=ref_latent.device)
    text = torch.zeros(B, text_len, text_dim, device=ref_latent.device)
    captured: list[Tensor] = []
    sat_forward(
        sd, prefix, x, t, text, num_heads=num_heads, patch_size=patch_size,
        capture_bank=captured, norm_eps=norm_eps,
    )
    return captured
