"""The identity reference network: the backbone run once at t=0 on the reference latent.

Its output is the *bank*: for every layer, the modulated LN1 output of its image tokens (the input its
self-attention would project to Q/K/V). The denoiser appends the bank to its own attention input at
every layer. Reference: hallo3 `ref_dit_video_concat.py` `AdaLNMixin.layer_forward` (`layer.bank.append`)
and `diffusion_video.py` L315-326 (t=0, zero text, concat = the reference latent itself).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import DiTConfig
from .dit import HalloDiT
from .validation import check_dit_inputs


def reference_config(config: DiTConfig) -> DiTConfig:
    """The reference network's config: the denoiser's backbone without face and audio modules."""
    return dataclasses.replace(config, face_cross_attention=False, audio_cross_attention=False)


class ReferenceNet(nn.Module):
    """Computes the per-layer reference bank, (num_layers, B, N_ref, D), once per video or stream.

    The reference also runs every layer's MLP and the final layer and discards their outputs; the bank of
    layer i depends only on layers < i, so the last layer's attention/MLP and the output head are skipped.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        if config.face_cross_attention or config.audio_cross_attention:
            raise ValueError("the reference network has no face/audio modules; build it from reference_config(...)")
        self.config = config
        self.backbone = HalloDiT(config)

    def forward(self, ref_latent: torch.Tensor, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ref_latent (B, 1, C_out, H, W): the scaled VAE latent of the face-masked reference image.

        The input is [ref_latent, ref_latent] on channels at timestep 0 with zero text embeddings, as in
        the reference. Returns the bank (num_layers, B, N, D). Gradients flow only in training mode (the
        demo avatar's recipe trains it); in eval mode, as loaded for inference, no graph is kept.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.training):
            return self._bank(ref_latent, text_embeds)

    def _bank(self, ref_latent: torch.Tensor, text_embeds: torch.Tensor | None) -> torch.Tensor:
        net, cfg = self.backbone, self.config
        if ref_latent.ndim != 5 or ref_latent.shape[2] * 2 != cfg.in_channels:
            raise ValueError(
                f"ref_latent must be (B, F, {cfg.in_channels // 2}, H, W), got {tuple(ref_latent.shape)}"
            )
        B = ref_latent.shape[0]
        if text_embeds is None:
            text_embeds = ref_latent.new_zeros(B, cfg.text_len, cfg.text_dim)
        latents = torch.cat([ref_latent, ref_latent], dim=2)
        timestep = torch.zeros(B, device=ref_latent.device)
        timestep, text_embeds, _, _ = check_dit_inputs(net, latents, timestep, text_embeds, None, None, None)
        emb, text, video, rope = net.prepare(latents, timestep, text_embeds)
        banks = []
        for i, block in enumerate(net.blocks):
            prepared = block.attention_input(text, video, emb)
            banks.append(prepared[1])  # the modulated LN1 image tokens
            if i + 1 < len(net.blocks):
                text, video = block(text, video, emb, latents.shape[1], rope, None, None, None, None, prepared)
        return torch.stack(banks)
