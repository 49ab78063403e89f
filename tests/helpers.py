"""Test helpers: the small model's dimensions and config, random diffusers weights, random inputs."""

from __future__ import annotations

import torch

from hallo_rt.engine import DiTConfig

# Small dimensions with every module: 2 layers, 2 heads x 32, 3 latent frames of 6x8 latents (12 tokens).
SMALL = dict(num_layers=2, heads=2, head_dim=32, time_embed_dim=32, text_dim=48, text_len=8, in_channels=8,
             out_channels=4, latent_frames=3, latent_height=6, latent_width=8)
AUDIO = dict(audio_window=5, audio_layers=3, audio_dim=16, audio_hidden=32, audio_tokens=4, audio_token_dim=24)
FACE = dict(face_embed_dim=512, face_tokens=4, face_token_dim=40)


def small_config(hallo3: bool, **sat_eps) -> DiTConfig:
    """The DiTConfig of the small test model, SAT epsilons unless overridden."""
    s = SMALL
    return DiTConfig(
        name="small-test", num_layers=s["num_layers"], num_heads=s["heads"], head_dim=s["head_dim"],
        mlp_dim=4 * s["heads"] * s["head_dim"], time_embed_dim=s["time_embed_dim"], text_dim=s["text_dim"],
        text_len=s["text_len"], in_channels=s["in_channels"], out_channels=s["out_channels"],
        latent_frames=s["latent_frames"], latent_height=s["latent_height"], latent_width=s["latent_width"],
        face_cross_attention=hallo3, audio_cross_attention=hallo3,
        face_embed_dim=FACE["face_embed_dim"], face_tokens=FACE["face_tokens"], face_token_dim=FACE["face_token_dim"],
        audio_window=AUDIO["audio_window"], audio_layers=AUDIO["audio_layers"], audio_dim=AUDIO["audio_dim"],
        audio_hidden_dim=AUDIO["audio_hidden"], audio_tokens=AUDIO["audio_tokens"],
        audio_token_dim=AUDIO["audio_token_dim"], **sat_eps,
    )


def random_diffusers_model(seed: int):
    from diffusers import CogVideoXTransformer3DModel

    s = SMALL
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=s["heads"], attention_head_dim=s["head_dim"], in_channels=s["in_channels"],
        out_channels=s["out_channels"], time_embed_dim=s["time_embed_dim"], text_embed_dim=s["text_dim"],
        num_layers=s["num_layers"], sample_width=s["latent_width"], sample_height=s["latent_height"],
        sample_frames=(s["latent_frames"] - 1) * 4 + 1, patch_size=2, max_text_seq_length=s["text_len"],
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random, non-degenerate weights everywhere (diffusers zero-inits nothing we rely on)
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        model.patch_embed.pos_embedding.copy_(0.05 * torch.randn(model.patch_embed.pos_embedding.shape, generator=g))
    return model


def random_inputs(cfg: DiTConfig, batch: int, seed: int, frames: int | None = None):
    """(latents, timesteps, text, audio, face) with the model's shapes."""
    g = torch.Generator().manual_seed(seed)
    F = frames or cfg.latent_frames
    latents = torch.randn(batch, F, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=g)
    timesteps = torch.tensor([999, 37, 500, 1][:batch])
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    audio = torch.randn(batch, 4 * F - 3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim, generator=g)
    face = torch.randn(batch, cfg.face_embed_dim, generator=g)
    return latents, timesteps, text, audio, face
