"""Test-side factory for synthetic Hallo3 / CogVideoX SAT checkpoints.

* :func:`diffusers_to_sat_keys`  - diffusers ``CogVideoXTransformer3DModel`` state dict -> SAT key layout
  (the inverse of the mapping in ``scripts/convert_cogvideox_to_diffusers.py``, summarised in
  ``/work/shared/research/hallo-model-spec.md`` section 7.3), plus the SAT leftovers a real checkpoint carries.
* :func:`hallo3_extras`          - random tensors for every Hallo3-only key (face/audio cross-attention,
  ``audio_proj``, ``face_proj``), shapes as in ``hallo3/sgm/models/transformer.py``.
* :func:`write_sat_checkpoint`   - SAT/DeepSpeed on-disk layout: ``folder/latest`` + ``folder/{it}/mp_rank_00_model_states.pt``.
* :func:`write_malicious_pickle` - a torch pickle whose unpickling would run a shell command
  (for testing that loaders use ``weights_only=True``).

Pure torch + stdlib at import time; diffusers is only used by the ``__main__`` self-check.
Run ``python tests/checkpoint_factory.py`` for the diffusers <-> SAT parity check of ``sat_reference``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "diffusers_to_sat_keys",
    "hallo3_extras",
    "write_sat_checkpoint",
    "write_malicious_pickle",
]


# ---------------------------------------------------------------------------------------------
# diffusers -> SAT
# ---------------------------------------------------------------------------------------------

# non-layer keys: diffusers name -> SAT name (without prefix); ".weight"/".bias" suffixes carried over
_TOP_LEVEL = {
    "patch_embed.proj": "mixins.patch_embed.proj",
    "patch_embed.text_proj": "mixins.patch_embed.text_proj",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "norm_final": "transformer.final_layernorm",
    "norm_out.norm": "mixins.final_layer.norm_final",
    "norm_out.linear": "mixins.final_layer.adaLN_modulation.1",
    "proj_out": "mixins.final_layer.linear",
}

# per-layer renames: diffusers sub-name -> SAT name template ({i} = layer index)
_PER_LAYER = {
    "norm1.norm": "transformer.layers.{i}.input_layernorm",
    "norm2.norm": "transformer.layers.{i}.post_attention_layernorm",
    "attn1.to_out.0": "transformer.layers.{i}.attention.dense",
    "attn1.norm_q": "mixins.adaln_layer.query_layernorm_list.{i}",
    "attn1.norm_k": "mixins.adaln_layer.key_layernorm_list.{i}",
    "ff.net.0.proj": "transformer.layers.{i}.mlp.dense_h_to_4h",
    "ff.net.2": "transformer.layers.{i}.mlp.dense_4h_to_h",
}

_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")


def diffusers_to_sat_keys(dsd: dict[str, Tensor], prefix: str = "model.diffusion_model.") -> dict[str, Tensor]:
    """Map a diffusers CogVideoX transformer state dict to SAT names (prefix prepended to every key).

    * ``attn1.to_q/to_k/to_v`` -> ``attention.query_key_value`` (rows Q|K|V, concatenated on dim 0)
    * ``norm1.linear`` + ``norm2.linear`` (6 chunks each: shift, scale, gate, enc_shift, enc_scale, enc_gate)
      -> ``mixins.adaln_layer.adaLN_modulations.{i}.1`` with 12 chunks in SAT order
      [shift, scale, gate]_msa, [..]_mlp, text_[..]_msa, text_[..]_mlp
    * the remaining names per spec 7.3; ``patch_embed.pos_embedding`` -> ``mixins.pos_embed.pos_embedding``.
    * adds the SAT leftovers ``mixins.pos_embed.freqs_sin`` / ``freqs_cos`` (buffers) and
      ``transformer.position_embeddings.weight`` (64, D), which loaders must ignore.
    Unknown diffusers keys raise ``KeyError``.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    ada: dict[tuple[int, str], dict[str, Tensor]] = {}

    for name, t in dsd.items():
        t = t.detach().clone()
        if name == "patch_embed.pos_embedding":
            # diffusers registers this buffer in float64 (sincos init); a SAT checkpoint stores it like the weights
            ref_dtype = dsd["patch_embed.proj.weight"].dtype if "patch_embed.proj.weight" in dsd else t.dtype
            out[prefix + "mixins.pos_embed.pos_embedding"] = t.to(ref_dtype)
            continue
        m = _BLOCK_RE.match(name)
        if m is None:
            stem, _, suffix = name.rpartition(".")
            if stem not in _TOP_LEVEL or suffix not in ("weight", "bias"):
                raise KeyError(f"no SAT equivalent for diffusers key {name!r}")
            out[f"{prefix}{_TOP_LEVEL[stem]}.{suffix}"] = t
            continue
        i, sub, suffix = int(m.group(1)), m.group(2), m.group(3)
        if sub in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            qkv.setdefault((i, suffix), {})[sub[-1]] = t
        elif sub in ("norm1.linear", "norm2.linear"):
            ada.setdefault((i, suffix), {})[sub[:5]] = t
        elif sub in _PER_LAYER:
            out[f"{prefix}{_PER_LAYER[sub].format(i=i)}.{suffix}"] = t
        else:
            raise KeyError(f"no SAT equivalent for diffusers key {name!r}")

    for (i, suffix), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {i}: incomplete to_q/to_k/to_v {suffix}")
        out[f"{prefix}transformer.layers.{i}.attention.query_key_value.{suffix}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )

    for (i, suffix), parts in sorted(ada.items()):
        if set(parts) != {"norm1", "norm2"}:
            raise KeyError(f"layer {i}: incomplete norm1/norm2 .linear {suffix}")
        n1 = parts["norm1"].chunk(6, dim=0)  # shift, scale, gate, enc_shift, enc_scale, enc_gate  (attention)
        n2 = parts["norm2"].chunk(6, dim=0)  # same, for the MLP
        sat_chunks = [n1[0], n1[1], n1[2], n2[0], n2[1], n2[2], n1[3], n1[4], n1[5], n2[3], n2[4], n2[5]]
        out[f"{prefix}mixins.adaln_layer.adaLN_modulations.{i}.1.{suffix}"] = torch.cat(sat_chunks, dim=0)

    # --- SAT leftovers that a real checkpoint carries and a loader must ignore
    hidden = out[f"{prefix}transformer.layers.0.attention.query_key_value.weight"].shape[1]
    qln = out.get(f"{prefix}mixins.adaln_layer.query_layernorm_list.0.weight")
    head_dim = qln.shape[0] if qln is not None else 64
    pos = out.get(f"{prefix}mixins.pos_embed.pos_embedding")
    rows = pos.shape[1] if pos is not None else 64
    angles = torch.arange(rows, dtype=torch.float32)[:, None] * torch.linspace(1.0, 1e-3, head_dim)[None, :]
    out[prefix + "mixins.pos_embed.freqs_sin"] = angles.sin()
    out[prefix + "mixins.pos_embed.freqs_cos"] = angles.cos()
    g = torch.Generator().manual_seed(1234)
    out[prefix + "transformer.position_embeddings.weight"] = 0.02 * torch.randn(64, hidden, generator=g)
    return out


# ---------------------------------------------------------------------------------------------
# Hallo3 extras
# ---------------------------------------------------------------------------------------------


def _rand_linear(out: dict, key: str, fan_out: int, fan_in: int, g: torch.Generator) -> None:
    out[key + ".weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
    out[key + ".bias"] = 0.02 * torch.randn(fan_out, generator=g)


def _rand_ln(out: dict, key: str, dim: int, g: torch.Generator) -> None:
    out[key + ".weight"] = 1.0 + 0.1 * torch.randn(dim, generator=g)
    out[key + ".bias"] = 0.02 * torch.randn(dim, generator=g)


def hallo3_extras(
    num_layers: int,
    hidden: int,
    *,
    face_embed_dim: int = 512,
    face_tokens: int = 4,
    face_token_dim: int = 1024,
    audio_window: int = 5,
    audio_layers: int = 12,
    audio_dim: int = 768,
    audio_hidden: int = 512,
    audio_tokens: int = 32,
    audio_token_dim: int = 768,
    generator: torch.Generator,
    prefix: str = "model.diffusion_model.",
) -> dict[str, Tensor]:
    """Seeded random weights for every Hallo3-only key (shapes from hallo3/sgm/models/transformer.py).

    Per layer: face_input_layernorm, face_attn.{query, key_value, dense}, audio_input_layernorm,
    audio_attn.{query, key_value, dense} (CrossAttention: query D->D, key_value C->2D, dense D->D, all biased).
    Global: transformer.audio_proj.{proj1, proj2, proj3, conv1, norm}, transformer.face_proj.{proj, norm}.
    Linear/conv weights ~ N(0, 1/fan_in), biases 0.02*N(0,1), LayerNorm weights 1+0.1*N(0,1).
    NOTE: the defaults are the real sizes; conv1 is then (24576, 24576, 2) = 1.2 G parameters. Tests should pass
    small audio_tokens / audio_token_dim.
    """
    g = generator
    out: dict[str, Tensor] = {}
    for i in range(num_layers):
        lp = f"{prefix}transformer.layers.{i}."
        _rand_ln(out, lp + "face_input_layernorm", hidden, g)
        _rand_linear(out, lp + "face_attn.query", hidden, hidden, g)
        _rand_linear(out, lp + "face_attn.key_value", 2 * hidden, face_token_dim, g)
        _rand_linear(out, lp + "face_attn.dense", hidden, hidden, g)
        _rand_ln(out, lp + "audio_input_layernorm", hidden, g)
        _rand_linear(out, lp + "audio_attn.query", hidden, hidden, g)
        _rand_linear(out, lp + "audio_attn.key_value", 2 * hidden, audio_token_dim, g)
        _rand_linear(out, lp + "audio_attn.dense", hidden, hidden, g)

    ap = prefix + "transformer.audio_proj."
    in_dim = audio_window * audio_layers * audio_dim
    ctx = audio_tokens * audio_token_dim
    _rand_linear(out, ap + "proj1", audio_hidden, in_dim, g)
    _rand_linear(out, ap + "proj2", audio_hidden, audio_hidden, g)
    _rand_linear(out, ap + "proj3", ctx, audio_hidden, g)
    out[ap + "conv1.weight"] = torch.randn(ctx, ctx, 2, generator=g) / math.sqrt(2 * ctx)
    out[ap + "conv1.bias"] = 0.02 * torch.randn(ctx, generator=g)
    _rand_ln(out, ap + "norm", audio_token_dim, g)

    fp = prefix + "transformer.face_proj."
    _rand_linear(out, fp + "proj", face_tokens * face_token_dim, face_embed_dim, g)
    _rand_ln(out, fp + "norm", face_token_dim, g)
    return out


# ---------------------------------------------------------------------------------------------
# on-disk layout
# ---------------------------------------------------------------------------------------------


def write_sat_checkpoint(
    folder: Path, module_sd: dict[str, Tensor], iteration: int = 1, extra_top_level: dict | None = None
) -> Path:
    """SAT (DeepSpeed engine) layout: folder/latest = "<iteration>", folder/<iteration>/mp_rank_00_model_states.pt.

    The payload holds only tensors, ints, strings, None and lists, so ``torch.load(weights_only=True)`` accepts it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_text(str(iteration))
    sub = folder / str(iteration)
    sub.mkdir(parents=True, exist_ok=True)
    payload: dict = {
        "module": {k: v for k, v in module_sd.items()},
        "iteration": iteration,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "buffer_names": [],
        "optimizer": None,
        "lr_scheduler": None,
        "sparse_tensor_module_names": [],
        "skipped_steps": 0,
        "global_steps": iteration,
        "global_samples": iteration,
        "ds_version": "0.14.4",
    }
    if extra_top_level:
        payload.update(extra_top_level)
    path = sub / "mp_rank_00_model_states.pt"
    torch.save(payload, path)
    return path


class _ShellOnUnpickle:
    """Unpickling an instance calls os.system(cmd): what a weights_only loader must refuse."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def write_malicious_pickle(path: Path) -> None:
    """torch.save a checkpoint-looking dict that also carries an object whose unpickling runs
    ``echo pwned > <path>.pwned``. ``torch.load(path, weights_only=True)`` must raise; a full unpickle
    would create the ``.pwned`` file (the marker tests can check stays absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = str(path) + ".pwned"
    quoted = "'" + marker.replace("'", "'\\''") + "'"
    payload = {
        "module": {"model.diffusion_model.time_embed.0.weight": torch.zeros(2, 2)},
        "iteration": 1,
        "evil": _ShellOnUnpickle(f"echo pwned > {quoted}"),
    }
    torch.save(payload, path)


# ---------------------------------------------------------------------------------------------
# self-check: python tests/checkpoint_factory.py
# ---------------------------------------------------------------------------------------------


def _self_check() -> None:  # pragma: no cover - manual tool
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sat_reference as ref
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    heads, hd, F_lat, H, W, p, L, text_dim = 2, 32, 3, 8, 8, 2, 8, 48
    model = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=hd, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=text_dim, num_layers=2, max_text_seq_length=L, sample_frames=(F_lat - 1) * 4 + 1,
        sample_height=H, sample_width=W, patch_size=p, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True,
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name == "patch_embed.pos_embedding":
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1 and name.endswith("weight"):  # LayerNorm gains
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:  # biases
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
    B = 2
    x = torch.randn(B, F_lat, 8, H, W, generator=g)
    text = torch.randn(B, L, text_dim, generator=g)
    ts = torch.tensor([999.0, 37.0])
    rope = get_3d_rotary_pos_embed(
        embed_dim=hd, crops_coords=((0, 0), (H // p, W // p)), grid_size=(H // p, W // p), temporal_size=F_lat
    )
    with torch.no_grad():
        want = model(hidden_states=x, encoder_hidden_states=text, timestep=ts, image_rotary_emb=rope).sample
        sat = diffusers_to_sat_keys(model.state_dict())
        got = ref.sat_forward(sat, "model.diffusion_model.", x, ts, text, num_heads=heads, out_norm_eps=1e-5)
    err = (got - want).abs().max().item()
    print(f"diffusers parity: max|diff| = {err:.3e}  (output std {want.std().item():.3f})")
    assert err < 1e-4, err

    # RoPE table vs diffusers
    c, s = ref.sat_rope_table(hd, F_lat, H // p, W // p)
    print(f"rope table: cos {(c - rope[0]).abs().max().item():.1e} sin {(s - rope[1]).abs().max().item():.1e}")

    # extras: with zeroed cross-attention outputs, face/audio paths must be exact no-ops
    extras = hallo3_extras(2, heads * hd, audio_tokens=4, audio_token_dim=16, audio_dim=8, audio_layers=3,
                           audio_hidden=24, face_token_dim=16, generator=torch.Generator().manual_seed(2))
    full = {**sat, **extras}
    audio = torch.randn(B, (F_lat - 1) * 4 + 1, 5, 3, 8, generator=g)
    face = torch.randn(B, 512, generator=g)
    a = ref.sat_audio_proj(full, "model.diffusion_model.", audio)
    assert a.shape == (B, F_lat, 4, 16), a.shape
    zeroed = dict(full)
    for k in list(zeroed):
        if ".face_attn.dense." in k or ".audio_attn.dense." in k:
            zeroed[k] = torch.zeros_like(zeroed[k])
    with torch.no_grad():
        base = ref.sat_forward(sat, "model.diffusion_model.", x, ts, text, num_heads=heads)
        z = ref.sat_forward(zeroed, "model.diffusion_model.", x, ts, text, num_heads=heads, audio=audio, face=face)
        y = ref.sat_forward(full, "model.diffusion_model.", x, ts, text, num_heads=heads, audio=audio, face=face)
        bank = ref.sat_reference_bank(sat, "model.diffusion_model.", x[:, :1, :4], num_heads=heads, text_len=L,
                                      text_dim=text_dim)
        yb = ref.sat_forward(full, "model.diffusion_model.", x, ts, text, num_heads=heads, audio=audio, face=face,
                             bank=bank)
    print(f"zeroed cross-attn == no cross-attn: {(z - base).abs().max().item():.1e}; "
          f"extras change output by {(y - base).abs().max().item():.3f}; bank changes it by "
          f"{(yb - y).abs().max().item():.3f}; bank shapes {[tuple(b.shape) for b in bank]}")
    assert (z - base).abs().max().item() < 1e-5

    with tempfile.TemporaryDirectory() as d:
        pt = write_sat_checkpoint(Path(d) / "ckpt", full)
        loaded = torch.load(pt, map_location="cpu", weights_only=True)
        assert loaded["iteration"] == 1 and (Path(d) / "ckpt" / "latest").read_text() == "1"
        assert all(torch.equal(loaded["module"][k], full[k]) for k in full)
        bad = Path(d) / "evil.pt"
        write_malicious_pickle(bad)
        try:
            torch.load(bad, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            print(f"weights_only refused the malicious pickle: {type(e).__name__}")
        else:
            raise AssertionError("weights_only accepted the malicious pickle")
        assert not Path(str(bad) + ".pwned").exists()
    print("self-check OK")


if __name__ == "__main__":
    _self_check()
