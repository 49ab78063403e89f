"""Hallo3's conditioning paths: face and audio projections, and per-latent-frame cross-attention.

References (hallo3 repository): `sgm/models/transformer.py` (`AudioProjModel`, `FaceProjModel`,
`CrossAttention`), `sgm/models/transformer_defaults.py` (`cross_attention_forward_default`),
`dit_video_concat.py` (`AdaLNMixin.layer_forward`, `Rotary3DPositionEmbeddingMixin.attention_fn`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig
from .rope import apply_rope


class FaceProjection(nn.Module):
    """Raw 512-d face embedding -> `face_tokens` tokens of `face_token_dim`, LayerNorm-ed."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.tokens = config.face_tokens
        self.token_dim = config.face_token_dim
        self.proj = nn.Linear(config.face_embed_dim, config.face_tokens * config.face_token_dim)
        self.norm = nn.LayerNorm(config.face_token_dim, eps=config.proj_norm_eps)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(face).unflatten(-1, (self.tokens, self.token_dim))  # (B, M, Dc)
        return self.norm(tokens)


class AudioProjection(nn.Module):
    """Windowed audio features (B, T_video, window, layers, dim) -> (B, F_latent, tokens, token_dim).

    An MLP per video frame, then one shared stride-2 temporal Conv1d applied twice (4 video frames -> 1
    latent frame). When the frame count is odd the first frame passes through unconvolved, mirroring the
    causal VAE that encodes video frame 0 alone: 49 -> 1 + 24 -> 1 + 12 = 13.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.tokens = config.audio_tokens
        self.token_dim = config.audio_token_dim
        in_dim = config.audio_window * config.audio_layers * config.audio_dim
        width = config.audio_tokens * config.audio_token_dim
        self.proj1 = nn.Linear(in_dim, config.audio_hidden_dim)
        self.proj2 = nn.Linear(config.audio_hidden_dim, config.audio_hidden_dim)
        self.proj3 = nn.Linear(config.audio_hidden_dim, width)
        self.conv = nn.Conv1d(width, width, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(config.audio_token_dim, eps=config.proj_norm_eps)

    @staticmethod
    def latent_frames_for(video_frames: int) -> int:
        """Latent frames the two temporal convolutions leave from `video_frames` audio frames."""
        frames = video_frames
        for _ in range(2):
            frames = 1 + (frames - 1) // 2 if frames % 2 else frames // 2
        return frames

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # 1. Per-frame MLP.
        x = audio.flatten(2)  # (B, T, window*layers*dim)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).transpose(1, 2)  # (B, tokens*token_dim, T)
        # 2. The same temporal conv twice, frame 0 passing through when the count is odd.
        for _ in range(2):
            if x.shape[-1] % 2:
                rest = x[..., 1:]
                rest = self.conv(rest) if rest.shape[-1] > 0 else rest
                x = torch.cat([x[..., :1], rest], dim=-1)
            else:
                x = self.conv(x)
        # 3. Tokens per latent frame, normalised.
        x = x.transpose(1, 2).unflatten(-1, (self.tokens, self.token_dim))  # (B, F, M, Dc)
        return self.norm(x)


class FrameCrossAttention(nn.Module):
    """Cross-attention from each latent frame's video tokens to that frame's condition tokens.

    Reference quirks, reproduced on purpose:
    - the block's self-attention QK-LayerNorms are applied to q and k (SAT routes cross-attention through
      the same `attention_fn` hook chain, so the per-layer norms fire here too);
    - RoPE rotates q only, with frame-0 positions for every frame (the rotary hook slices its table to the
      query length, 1 frame of tokens, and keys have no positions);
    - no gate and no adaLN: the block adds the output as a plain residual.
    """

    def __init__(self, config: DiTConfig, context_dim: int):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.key_value = nn.Linear(context_dim, 2 * config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        norm_q: nn.LayerNorm,
        norm_k: nn.LayerNorm,
        rope_frame0: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """x (B, F, N, D) video tokens per frame; context (B, F or 1, M, Dc). Returns (B, F, N, D)."""
        B, Fr, N, D = x.shape
        H, Dh = self.num_heads, self.head_dim
        # 1. Projections, split into heads.
        q = self.query(x).unflatten(-1, (H, Dh)).transpose(2, 3)  # (B, F, H, N, Dh)
        k, v = self.key_value(context).unflatten(-1, (2, H, Dh)).unbind(-3)  # (B, Fc, M, H, Dh) each
        k, v = k.transpose(2, 3), v.transpose(2, 3)  # (B, Fc, H, M, Dh)
        # 2. The self-attention's QK-LayerNorms, then RoPE on the query only.
        q, k = norm_q(q), norm_k(k)
        if rope_frame0 is not None:
            q = apply_rope(q, *rope_frame0)
        # 3. Attention within each frame; a shared context (face) broadcasts over frames.
        k = k.expand(B, Fr, H, k.shape[-2], Dh)
        v = v.expand(B, Fr, H, v.shape[-2], Dh)
        # Frames folded into the batch: 4-dim attention is what every backend (ONNX included) accepts.
        out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
        out = out.unflatten(0, (B, Fr))  # (B, F, H, N, Dh)
        return self.out(out.transpose(2, 3).flatten(-2))  # (B, F, N, D)
