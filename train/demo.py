"""The demo avatar's architecture: the same topology as the `hallo3` and `tiny` presets (denoiser with the
reference bank and per-frame face / audio cross-attention, the 3D causal VAE, a wav2vec2-style audio encoder),
sized to train on a 2-core CPU and to stream at video rate there.

The configs live with the training recipe, not among the engine's presets: the engine loads the trained
model from its folder (`hallo_rt.json` carries these configs), and the name `demo` means that folder.
"""

from __future__ import annotations

import dataclasses

from ..engine.config import TINY, VAE_TINY
from ..engine.wav2vec2 import TINY_AUDIO

DATA_SEED = 0
"""Seed of the synthetic data set (people, sentences, voices) every stage trains on."""

TRAIN_IDENTITIES = 4096
"""Training people: identity indices [64, 64 + 4096) under DATA_SEED (0-63 are the held-out people)."""

VAE_DEMO = dataclasses.replace(VAE_TINY, name="demo", channel_multipliers=(1, 2, 4), scaling_factor=4.0)
"""The `tiny` VAE's widths with three levels instead of four (8-16-32): 128 x 128 frames -> 32 x 32 x 16
latents, 4x in time (both levels halve time). Four levels (8x in space, 48x compression) learned too slowly
on this machine: after 400 steps its reconstructions were still 8-pixel blocks without a visible mouth;
with 12x compression the mouth survives. `scaling_factor` 4.0 brings the trained VAE's latents (standard
deviation about 0.25 after 2500 steps) to unit variance for the denoiser: with CogVideoX's 0.7 the data
sat far below the noise's variance (about 1/20 in the first run) and a denoiser trained on it could not be
sampled in more than one step (its x0 error at mid-schedule timesteps exceeded the data's variance). The
scale is not a VAE training setting: the VAE stage does not record it."""

AUDIO_DEMO = dataclasses.replace(TINY_AUDIO, name="demo")
"""The `tiny` audio encoder's shape (7 CNN layers at 32 channels, 4 transformer layers 32 wide, 50 Hz),
trained from scratch with the denoiser: there are no wav2vec2 weights here."""

DIT_DEMO = dataclasses.replace(
    TINY,
    name="demo",
    num_layers=4,
    num_heads=4,
    head_dim=32,
    mlp_dim=512,
    time_embed_dim=128,
    latent_frames=4,  # learned positions for chunks of 1 to 4 latent frames
    latent_height=32,  # 128 px / 4 (VAE_DEMO's three levels)
    latent_width=32,
    patch_size=2,  # CogVideoX's 2 x 2 patches: 256 tokens per latent frame
    audio_hidden_dim=128,
)
"""128 wide, 4 layers; 256 video tokens per latent frame (32 x 32 latents, 2 x 2 patches). A token's patch
holds 2 x 2 x 16 = 64 latent values, fewer than the 128 the token carries. The first run used 4 x 4 patches
(256 values per 128-wide token, to keep 64 tokens per frame): the patch embedding then cannot carry the noise
through, so the v-prediction could not remove it, and its samples stayed grainy even with the true previous
latent as motion (a teacher-forced check gave lip-sync r = 0.12 there)."""

CHUNK_LATENTS = 2
"""The chunk the runtime streams with: 2 latent frames = 8 video frames = 320 ms."""

CONTEXT_FRAMES = 12
"""Audio context before a feature block's +-2 window: 480 ms (the runtime's default is 2 s, sized for
wav2vec2-base). The demo's encoder is trained with it, so its windows are 1 s of audio instead of 2.5 s."""

STREAM_DEFAULTS = {"steps": 2, "cfg": 1.0, "chunk_latents": CHUNK_LATENTS, "motion": "latent", "sampler": "ddim",
                   "context_frames": CONTEXT_FRAMES}
"""What the shipped (distilled) model streams with; written into its folder's `hallo_rt.json`."""
