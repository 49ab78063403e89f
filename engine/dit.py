"""The Hallo3 denoiser: a CogVideoX expert DiT with face/audio cross-attention and a reference bank.

Pure PyTorch. Read it top to bottom: embeddings, one block, the model. The per-layer structure follows
hallo3 `dit_video_concat.py` `AdaLNMixin.layer_forward`:

    video += gate_msa * SelfAttn([text | video | bank])       (separate adaLN for text and video tokens)
    video += FaceCrossAttn(LN_face(video))                    (per latent frame, no gate)
    video += AudioCrossAttn(LN_audio(video))                  (per latent frame, no gate)
    x     += gate_mlp * MLP(adaLN(LN2(x)))                    (text and video, separate modulation)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import AudioProjection, FaceProjection, FrameCrossAttention
from .config import DiTConfig
from .rope import apply_rope, rope_table
from .validation import check_dit_inputs


def timestep_sinusoid(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] sinusoidal embedding in fp32 (SAT `timestep_embedding`; diffusers flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, D) modulation broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedding(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.hidden_dim, config.time_embed_dim)
        self.linear_2 = nn.Linear(config.time_embed_dim, config.time_embed_dim)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoid)))


class PatchEmbed(nn.Module):
    """Per-frame 2x2 patches -> tokens in (t, h, w) order; the text projection lives here too."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_dim, kernel_size=p, stride=p)
        self.text_proj = nn.Linear(config.text_dim, config.hidden_dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        B, Fr = latents.shape[:2]
        x = self.proj(latents.flatten(0, 1))  # (B*F, D, h, w)
        return x.flatten(2).transpose(1, 2).unflatten(0, (B, Fr)).flatten(1, 2)  # (B, F*h*w, D)


@dataclass(frozen=True)
class ReferenceKV:
    """The reference bank in the form every layer's attention consumes it: per layer, the bank tokens'
    keys (through the layer's K projection and QK-LayerNorm) and values, each (B or 1, H, N_ref, Dh).

    They depend only on the reference image, so a session computes them once (`HalloDiT.reference_kv`)
    instead of projecting the bank at every layer of every step."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def layer(self, index: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s (keys, values), broadcast to `batch` when computed for batch 1."""
        k, v = self.keys[index], self.values[index]
        if k.shape[0] == batch:
            return k, v
        return k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])

    def repeat(self, times: int) -> "ReferenceKV":
        """Batch repeated `times` over (for the two branches of classifier-free guidance)."""
        return ReferenceKV(tuple(torch.cat([k] * times) for k in self.keys),
                           tuple(torch.cat([v] * times) for v in self.values))


BankInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
"""A layer's bank: raw tokens (B, N_ref, D), or their precomputed (keys, values), or None."""


class JointAttention(nn.Module):
    """Full self-attention over [text | video | reference bank] with QK-LayerNorm; RoPE on video only.

    Bank tokens only provide keys and values: the reference computes their queries too and then
    discards those outputs, which changes nothing in the text and video rows.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        D = config.hidden_dim
        self.qkv = nn.Linear(D, 3 * D)  # rows: Q | K | V
        self.norm_q = nn.LayerNorm(config.head_dim, eps=config.qk_norm_eps)
        self.norm_k = nn.LayerNorm(config.head_dim, eps=config.qk_norm_eps)
        self.out = nn.Linear(D, D)

    def bank_kv(self, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank tokens (B, N_ref, D) -> this layer's (keys, values), each (B, H, N_ref, Dh); no RoPE."""
        H, Dh = self.num_heads, self.head_dim
        D = H * Dh
        kv = F.linear(bank, self.qkv.weight[D:], self.qkv.bias[D:])  # (B, N_ref, 2D)
        k_ref, v_ref = kv.unflatten(-1, (2, H, Dh)).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N_ref, Dh)
        return self.norm_k(k_ref), v_ref

    def forward(
        self, x: torch.Tensor, text_len: int, rope: tuple[torch.Tensor, torch.Tensor] | None,
        bank: BankInput,
    ) -> torch.Tensor:
        """x (B, L+S, D) modulated [text | video]; bank (B, N_ref, D) or its `bank_kv`. Returns (B, L+S, D)."""
        H, Dh = self.num_heads, self.head_dim
        # 1. Q, K, V for text and video tokens, QK-LayerNorm per head.
        q, k, v = self.qkv(x).unflatten(-1, (3, H, Dh)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L+S, Dh)
        q, k = self.norm_q(q), self.norm_k(k)
        # 2. RoPE on the video tokens only.
        if rope is not None:
            q = torch.cat([q[:, :, :text_len], apply_rope(q[:, :, text_len:], *rope)], dim=2)
            k = torch.cat([k[:, :, :text_len], apply_rope(k[:, :, text_len:], *rope)], dim=2)
        # 3. Reference-bank keys and values through this layer's K/V projection, no RoPE.
        if bank is not None:
            k_ref, v_ref = bank if isinstance(bank, tuple) else self.bank_kv(bank)
            k = torch.cat([k, k_ref], dim=2)
            v = torch.cat([v, v_ref], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L+S, Dh)
        return self.out(out.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_dim, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """One CogVideoX expert block plus Hallo3's face and audio cross-attention."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        D = config.hidden_dim
        # SAT chunk order: [shift, scale, gate] x (video msa, video mlp, text msa, text mlp).
        self.modulation = nn.Linear(config.time_embed_dim, 12 * D)
        self.norm1 = nn.LayerNorm(D, eps=config.norm_eps)
        self.attn = JointAttention(config)
        self.face_norm = self.face_attn = None
        if config.face_cross_attention:
            self.face_norm = nn.LayerNorm(D, eps=config.norm_eps)
            self.face_attn = FrameCrossAttention(config, config.face_token_dim)
        self.audio_norm = self.audio_attn = None
        if config.audio_cross_attention:
            self.audio_norm = nn.LayerNorm(D, eps=config.norm_eps)
            self.audio_attn = FrameCrossAttention(config, config.audio_token_dim)
        self.norm2 = nn.LayerNorm(D, eps=config.norm_eps)
        self.mlp = MLP(config)

    def attention_input(self, text: torch.Tensor, video: torch.Tensor, emb: torch.Tensor):
        """Modulated LN1 outputs (text, video) and the modulation chunks; the video part is the bank."""
        mods = self.modulation(F.silu(emb)).chunk(12, dim=1)
        text_in = modulate(self.norm1(text), mods[6], mods[7])
        video_in = modulate(self.norm1(video), mods[0], mods[1])
        return text_in, video_in, mods

    def forward(
        self,
        text: torch.Tensor,  # (B, L, D)
        video: torch.Tensor,  # (B, F*N, D)
        emb: torch.Tensor,  # (B, time_embed_dim)
        frames: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        rope_frame0: tuple[torch.Tensor, torch.Tensor] | None,
        face_tokens: torch.Tensor | None,  # (B, 1, M, Dc)
        audio_tokens: torch.Tensor | None,  # (B, F, M, Dc)
        bank: BankInput,  # (B, N_ref, D) or its (keys, values)
        prepared: tuple | None = None,  # attention_input(text, video, emb), when the caller already has it
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L = text.shape[1]
        # 1. Joint self-attention, gated residual with separate text/video gates.
        text_in, video_in, mods = prepared or self.attention_input(text, video, emb)
        (_, _, gate_msa, shift_mlp, scale_mlp, gate_mlp, _, _, text_gate_msa,
         text_shift_mlp, text_scale_mlp, text_gate_mlp) = mods
        attn = self.attn(torch.cat([text_in, video_in], dim=1), L, rope, bank)  # (B, L+S, D)
        text = text + text_gate_msa[:, None] * attn[:, :L]
        video = video + gate_msa[:, None] * attn[:, L:]
        # 2. Face, then audio, cross-attention per latent frame: plain residuals.
        for norm, cross, tokens in ((self.face_norm, self.face_attn, face_tokens),
                                    (self.audio_norm, self.audio_attn, audio_tokens)):
            if cross is not None:
                per_frame = norm(video).unflatten(1, (frames, -1))  # (B, F, N, D)
                out = cross(per_frame, tokens, self.attn.norm_q, self.attn.norm_k, rope_frame0)
                video = video + out.flatten(1, 2)
        # 3. MLP over text and video, separate modulation, gated residual.
        text = text + text_gate_mlp[:, None] * self.mlp(modulate(self.norm2(text), text_shift_mlp, text_scale_mlp))
        video = video + gate_mlp[:, None] * self.mlp(modulate(self.norm2(video), shift_mlp, scale_mlp))
        return text, video


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        D, p = config.hidden_dim, config.patch_size
        self.norm = nn.LayerNorm(D, eps=config.out_norm_eps)
        self.modulation = nn.Linear(config.time_embed_dim, 2 * D)  # chunks: shift, scale
        self.linear = nn.Linear(D, p * p * config.out_channels)

    def forward(self, video: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(emb)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(video), shift, scale))


class HalloDiT(nn.Module):
    """The denoiser. `forward(latents, timestep, text_embeds, audio, face, ref_bank)` -> v-prediction.

    With `face_cross_attention` and `audio_cross_attention` off and no bank it is exactly CogVideoX.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        D = config.hidden_dim
        self.patch_embed = PatchEmbed(config)
        self.pos_embedding = None
        if config.learned_pos_embed:
            num = config.text_len + config.latent_frames * config.tokens_per_frame
            self.pos_embedding = nn.Parameter(torch.zeros(1, num, D))
        self.time_embed = TimestepEmbedding(config)
        self.face_proj = FaceProjection(config) if config.face_cross_attention else None
        self.audio_proj = AudioProjection(config) if config.audio_cross_attention else None
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.num_layers)])
        self.norm_final = nn.LayerNorm(D, eps=config.norm_eps)
        self.final_layer = FinalLayer(config)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    def rope(self, frames: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames, h, w, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_table(self.config.rope_dims, frames, h, w, self.config.rope_theta)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def embed(self, latents: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch + text projection + learned positional embedding -> (text (B, L, D), video (B, F*N, D))."""
        text = self.patch_embed.text_proj(text_embeds)
        video = self.patch_embed(latents)
        if self.pos_embedding is not None:
            L, S = text.shape[1], video.shape[1]
            pos = self.pos_embedding[:, : L + S].to(video.dtype)  # SAT slices the table to the sequence
            text, video = text + pos[:, :L], video + pos[:, L:]
        return text, video

    def prepare(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor):
        """Validated inputs -> (timestep embedding (B, T), text (B, L, D), video (B, F*N, D), RoPE tables)."""
        emb = self.time_embed(timestep_sinusoid(timestep, self.config.hidden_dim).to(latents.dtype))
        text, video = self.embed(latents, text_embeds)
        p = self.config.patch_size
        rope = self.rope(latents.shape[1], latents.shape[3] // p, latents.shape[4] // p, latents.device)
        return emb, text, video, rope

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        text_embeds: torch.Tensor,
        audio: torch.Tensor | None = None,
        face: torch.Tensor | None = None,
        ref_bank: "torch.Tensor | ReferenceKV | None" = None,
    ) -> torch.Tensor:
        """Predict v for one denoising step.

        latents: (B, F, C_in, H, W) noisy latents with the conditioning latent concatenated on channels.
        timestep: scalar or (B,), the integer DDPM timestep (0..999).
        text_embeds: (B, L_text, text_dim) raw text-encoder outputs.
        audio: (B, T_video, window, layers, dim) raw windowed audio features; None = zero features
            (the unconditional branch's input). T_video = 4F-3 (a clip starting at frame 0) or 4F.
        face: (B, face_embed_dim) raw face embedding; None = zeros (what the reference uses without a face).
        ref_bank: (num_layers, B or 1, N_ref, D) from `ReferenceNet`, or its `reference_kv`; None = no
            reference tokens.
        Returns (B, F, C_out, H, W).
        """
        timestep, text_embeds, audio, face = check_dit_inputs(
            self, latents, timestep, text_embeds, audio, face, ref_bank
        )
        audio_tokens, face_tokens = self.condition_tokens(audio, face)
        return self.denoise(latents, timestep, text_embeds, audio_tokens, face_tokens, ref_bank)

    @torch.no_grad()
    def reference_kv(self, ref_bank: torch.Tensor, batch: int | None = None) -> ReferenceKV:
        """The bank (num_layers, B or 1, N_ref, D) as every layer's attention consumes it (`ReferenceKV`).

        `batch`: the denoiser batch it will serve (2 with classifier-free guidance); the projection then
        runs on the bank broadcast to that batch, as `denoise` does with a raw bank, so the result is bit
        for bit the same (a batch-1 GEMM rounds differently from a broadcast one in bf16)."""
        bank = ref_bank.to(self.dtype)
        if batch is not None:
            bank = bank.expand(bank.shape[0], batch, *bank.shape[2:])
        pairs = [block.attn.bank_kv(bank[i]) for i, block in enumerate(self.blocks)]
        return ReferenceKV(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    def condition_tokens(
        self, audio: torch.Tensor | None, face: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Projected condition tokens, computed once for every layer: audio (B, F, M, Dc), face (B, M, Dc).
        Inputs as `forward` takes them after validation (zeros, not None, when the module exists)."""
        audio_tokens = self.audio_proj(audio) if self.audio_proj is not None else None
        face_tokens = self.face_proj(face) if self.face_proj is not None else None
        return audio_tokens, face_tokens

    def denoise(
        self,
        latents: torch.Tensor,  # (B, F, C_in, H, W)
        timestep: torch.Tensor,  # (B,)
        text_embeds: torch.Tensor,  # (B, L, text_dim)
        audio_tokens: torch.Tensor | None,  # (B, F, M, Dc) from `condition_tokens`
        face_tokens: torch.Tensor | None,  # (B, M, Dc)
        ref_bank: "torch.Tensor | ReferenceKV | None",  # (num_layers, B or 1, N_ref, D) or its reference_kv
    ) -> torch.Tensor:
        """The transformer on projected condition tokens: what `forward` runs after `condition_tokens`
        (and the exported denoiser step graph). Returns (B, F, C_out, H, W)."""
        cfg = self.config
        B, Fr, _, H, W = latents.shape
        p = cfg.patch_size
        h, w = H // p, W // p
        # 1-2. Timestep embedding and tokens.
        emb, text, video, rope = self.prepare(latents, timestep, text_embeds)
        rope_frame0 = (rope[0][: h * w], rope[1][: h * w])
        face_tokens = face_tokens[:, None] if face_tokens is not None else None  # (B, 1, M, Dc): all frames
        # 3. Blocks.
        for i, block in enumerate(self.blocks):
            if isinstance(ref_bank, ReferenceKV):
                bank = ref_bank.layer(i, B)
            else:
                bank = ref_bank[i].expand(B, -1, -1) if ref_bank is not None else None
            text, video = block(text, video, emb, Fr, rope, rope_frame0, face_tokens, audio_tokens, bank)
        # 4. Final norm, modulated output layer, unpatchify.
        out = self.final_layer(self.norm_final(video), emb)  # (B, F*h*w, C_out*p*p)
        out = out.reshape(B, Fr, h, w, cfg.out_channels, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Fr, cfg.out_channels, H, W)
