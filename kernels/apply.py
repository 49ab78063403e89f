"""`apply_kernels(model, impl)`: the denoiser running the fused ops, weights shared with the plain model.

The model files stay pure PyTorch; this module knows their structure (engine.dit `DiTBlock`, `HalloDiT`,
engine.reference `ReferenceNet`) and swaps each block for a `FusedDiTBlock` that holds the very same
submodules (so parameter names, state_dict and weights digest are unchanged) and calls the ops:

    [text | video] -> ln_modulate -> qkv Linear -> qk_norm_rope -> joint_attention (+ bank buffer)
                   -> out Linear -> gated_residual
    video -> LayerNorm -> q Linear -> frame_cross_attention (face, then audio) -> out Linear -> + video
    [text | video] -> ln_modulate -> MLP (one GEMM over both streams) -> gated_residual

`impl="triton"` calls the torch custom ops (`torch.ops.hallo_rt.*`: Triton on CUDA, or on CPU under
TRITON_INTERPRET=1); `impl="reference"` calls each op's plain-torch reference through the same block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import frame_cross_attention, joint_attention, modulation, qk_norm_rope
from ._triton import IMPLS, require_triton


@dataclass(frozen=True)
class KernelOps:
    """The fused ops one block calls; built by `kernel_ops(impl)`."""

    impl: str
    ln_modulate: Callable
    gated_residual: Callable
    frame_cross_attention: Callable
    qk_norm_rope: Callable
    joint_attention: Callable


def kernel_ops(impl: str) -> KernelOps:
    if impl == "triton":
        ops = torch.ops.hallo_rt
        return KernelOps(impl, ops.ln_modulate, ops.gated_residual, ops.frame_cross_attention, ops.qk_norm_rope,
                         ops.joint_attention)
    if impl == "reference":
        return KernelOps(impl, modulation.ln_modulate_ref, modulation.gated_residual_ref,
                         frame_cross_attention.frame_cross_attention_ref, qk_norm_rope.qk_norm_rope_ref,
                         joint_attention.joint_attention_ref)
    raise ValueError(f"unknown kernel impl {impl!r}; choose one of {IMPLS}")


class FusedDiTBlock(nn.Module):
    """A `DiTBlock` computed with fused ops. Same children, same parameters, same call signature."""

    def __init__(self, block: nn.Module, ops: KernelOps):
        super().__init__()
        for name, child in block.named_children():
            setattr(self, name, child)
        for name in ("face_norm", "face_attn", "audio_norm", "audio_attn"):  # None without that module
            if getattr(block, name) is None:
                setattr(self, name, None)
        self.ops = ops
        self.num_heads, self.head_dim = block.attn.num_heads, block.attn.head_dim

    def _ln_modulate(self, norm: nn.LayerNorm, text, video, text_mod, video_mod):
        return self.ops.ln_modulate(text, video, norm.weight, norm.bias, *text_mod, *video_mod, norm.eps)

    def attention_input(self, text: torch.Tensor, video: torch.Tensor, emb: torch.Tensor):
        """As `DiTBlock.attention_input`: (modulated text, modulated video = the bank, modulation chunks)."""
        mods = self.modulation(F.silu(emb)).chunk(12, dim=1)
        joint = self._ln_modulate(self.norm1, text, video, mods[6:8], mods[0:2])  # (B, L+S, D)
        return joint[:, : text.shape[1]], joint[:, text.shape[1]:], mods

    def _self_attention(self, joint, text_len, rope, bank):
        attn, H, Dh = self.attn, self.num_heads, self.head_dim
        qkv = attn.qkv(joint).unflatten(-1, (3, H, Dh))  # (B, L+S, 3, H, Dh)
        cos, sin = rope if rope is not None else (None, None)
        q, k = self.ops.qk_norm_rope(qkv, attn.norm_q.weight, attn.norm_q.bias, attn.norm_k.weight,
                                     attn.norm_k.bias, cos, sin, text_len, attn.norm_q.eps)  # (B, H, L+S, Dh) x2
        v = qkv[:, :, 2].transpose(1, 2)  # (B, H, L+S, Dh), a strided view
        k_bank = v_bank = None
        if isinstance(bank, tuple):  # precomputed once per reference (ReferenceKV)
            k_bank, v_bank = bank
        elif bank is not None:  # the bank's K/V through this layer's projection, read from their own buffer
            D = H * Dh
            kv = F.linear(bank, attn.qkv.weight[D:], attn.qkv.bias[D:]).unflatten(-1, (2, H, Dh))  # (B, Nb, 2, H, Dh)
            k_bank = attn.norm_k(kv[:, :, 0]).transpose(1, 2)  # (B, H, Nb, Dh)
            v_bank = kv[:, :, 1].transpose(1, 2)
        return attn.out(self.ops.joint_attention(q, k, v, k_bank, v_bank))  # (B, L+S, D)

    def _cross_attention(self, norm, cross, video, tokens, frames, rope_frame0):
        H, Dh = self.num_heads, self.head_dim
        q = cross.query(norm(video).unflatten(1, (frames, -1))).unflatten(-1, (H, Dh))  # (B, F, N, H, Dh)
        k, v = cross.key_value(tokens).unflatten(-1, (2, H, Dh)).unbind(-3)  # (B, F or 1, M, H, Dh)
        cos, sin = rope_frame0 if rope_frame0 is not None else (None, None)
        nq, nk = self.attn.norm_q, self.attn.norm_k
        out = self.ops.frame_cross_attention(q, k, v, nq.weight, nq.bias, nk.weight, nk.bias, cos, sin, nq.eps)
        return cross.out(out).flatten(1, 2)  # (B, F*N, D)

    def forward(self, text, video, emb, frames, rope, rope_frame0, face_tokens, audio_tokens, bank, prepared=None):
        L = text.shape[1]
        # 1. Joint self-attention over [text | video | bank], gated residual.
        if prepared is None:
            mods = self.modulation(F.silu(emb)).chunk(12, dim=1)
            joint = self._ln_modulate(self.norm1, text, video, mods[6:8], mods[0:2])  # (B, L+S, D)
        else:
            text_in, video_in, mods = prepared
            joint = torch.cat([text_in, video_in], dim=1)
        attn = self._self_attention(joint, L, rope, bank)
        text, video = self.ops.gated_residual(text, video, attn, mods[8], mods[2])
        # 2. Face, then audio, cross-attention per latent frame: plain residuals.
        for norm, cross, tokens in ((self.face_norm, self.face_attn, face_tokens),
                                    (self.audio_norm, self.audio_attn, audio_tokens)):
            if cross is not None:
                video = video + self._cross_attention(norm, cross, video, tokens, frames, rope_frame0)
        # 3. MLP over [text | video] in one GEMM, separate modulation, gated residual.
        hidden = self._ln_modulate(self.norm2, text, video, mods[9:11], mods[3:5])
        return self.ops.gated_residual(text, video, self.mlp(hidden), mods[11], mods[5])


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object whose parameter/buffer/child tables are copies: same tensors, independent swaps."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    return clone


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def apply_kernels(model: nn.Module, impl: str = "triton", *, check_runtime: bool = True) -> nn.Module:
    """Return `model` (a `HalloDiT` or `ReferenceNet`) computing with the fused ops; `model` is unchanged and
    the two share their weights.

    impl: "triton" (torch custom ops: Triton kernels) or "reference" (the plain-torch references).
    check_runtime: False skips the check that Triton can run here, for export: the custom ops then only
        appear as graph nodes (ONNX/TensorRT export traces them with fake tensors).
    Raises KernelUnavailable when impl="triton" cannot run on the model's device, saying what is missing.
    """
    from ..engine.dit import HalloDiT
    from ..engine.reference import ReferenceNet

    ops = kernel_ops(impl)
    if impl == "triton" and check_runtime:
        require_triton(_model_device(model))
    if isinstance(model, ReferenceNet):
        fused = _shallow_copy(model)
        fused.backbone = apply_kernels(model.backbone, impl, check_runtime=False)
        return fused
    if not isinstance(model, HalloDiT):
        raise TypeError(f"apply_kernels takes a HalloDiT or ReferenceNet, got {type(model).__name__}")
    fused = _shallow_copy(model)
    # A FusedDiTBlock has the same children as the DiTBlock it came from, so re-applying works too.
    blocks = [FusedDiTBlock(block, ops) for block in model.blocks]
    fused.blocks = nn.ModuleList(blocks)
    return fused

