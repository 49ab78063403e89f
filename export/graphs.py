"""The exported graphs: a module with plain tensor inputs/outputs per descriptor, cut from the engine.

    denoiser       one denoiser step on projected condition tokens (HalloDiT.denoise)
    conditioning   windowed audio features + face embedding -> audio and face tokens
    reference      the reference-bank network on the reference latent
    audio_encoder  one clip of normalised, padded 16 kHz audio -> wav2vec2 hidden states at 25 fps
    vae_encoder    frames -> posterior mean and log-variance
    vae_decoder    one latent group with the causal caches as explicit inputs/outputs (vae_graphs.py)

`graphs_for(...)` returns name -> (descriptor, module) for a loaded model; the modules share the engine's
weights and are what `export_onnx` traces and the torch backend runs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.config import DiTConfig, VaeConfig
from ..engine.dit import HalloDiT
from ..engine.reference import ReferenceNet
from .descriptors import GraphDescriptor, TensorSpec

SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps: Hallo3's audio pads to whole clips, so clips are exact


class DenoiserStep(nn.Module):
    def __init__(self, dit: HalloDiT):
        super().__init__()
        self.dit = dit

    def forward(self, latents, timestep, text_embeds, audio_tokens=None, face_tokens=None, ref_bank=None):
        return self.dit.denoise(latents, timestep, text_embeds, audio_tokens, face_tokens, ref_bank)


class Conditioning(nn.Module):
    def __init__(self, dit: HalloDiT):
        super().__init__()
        self.audio_proj, self.face_proj = dit.audio_proj, dit.face_proj

    def forward(self, audio_features, face):
        return self.audio_proj(audio_features), self.face_proj(face)


class ReferenceBank(nn.Module):
    def __init__(self, reference: ReferenceNet):
        super().__init__()
        self.reference = reference

    def forward(self, ref_latent):
        return self.reference(ref_latent)


class AudioEncoder(nn.Module):
    """wav2vec2 over the whole normalised, clip-padded waveform, as the offline pipeline runs it (attention
    spans every clip). The output frame count is not a function of the sample count (Hallo3 pads to whole
    clips by its own rule), so it comes in as the length of `frame_grid`, whose values are not read."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform, frame_grid):  # (B, samples), (B, frames)
        states = self.encoder(waveform, num_frames=frame_grid.shape[1])
        return torch.stack(states[1:], dim=2)  # (B, frames, layers, dim); Hallo3 drops states[0]


class VaeEncoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, frames):
        return self.vae.posterior(frames)


def _batch_dim(max_batch: int) -> tuple[str, tuple[int, int, int]]:
    return ("batch", (1, max_batch, max_batch))


def denoiser_descriptor(cfg: DiTConfig, precision: str = "fp32", frames: int | None = None,
                        max_batch: int = 2, bank: bool = True) -> GraphDescriptor:
    """One step over `frames` latent frames (default: the config's clip) for 1..max_batch (CFG) rows."""
    F = frames or cfg.latent_frames
    H, W, p = cfg.latent_height, cfg.latent_width, cfg.patch_size
    inputs = [TensorSpec("latents", ("batch", F, cfg.in_channels, H, W)),
              TensorSpec("timestep", ("batch",), "float32"),
              TensorSpec("text_embeds", ("batch", cfg.text_len, cfg.text_dim))]
    if cfg.audio_cross_attention:
        inputs.append(TensorSpec("audio_tokens", ("batch", F, cfg.audio_tokens, cfg.audio_token_dim)))
    if cfg.face_cross_attention:
        inputs.append(TensorSpec("face_tokens", ("batch", cfg.face_tokens, cfg.face_token_dim)))
    if bank:
        inputs.append(TensorSpec("ref_bank", (cfg.num_layers, 1, (H // p) * (W // p), cfg.hidden_dim)))
    return GraphDescriptor(
        "denoiser", tuple(inputs), (TensorSpec("v", ("batch", F, cfg.out_channels, H, W)),),
        (_batch_dim(max_batch),), precision, {"dit": cfg.to_dict(), "frames": F},
    )


def conditioning_descriptor(cfg: DiTConfig, precision: str = "fp32", frames: int | None = None,
                            max_batch: int = 2) -> GraphDescriptor:
    F = frames or cfg.latent_frames
    T = 4 * F - 3  # a clip from its first frame: 1 + 4 (F - 1) video frames of audio
    return GraphDescriptor(
        "conditioning",
        (TensorSpec("audio_features", ("batch", T, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)),
         TensorSpec("face", ("batch", cfg.face_embed_dim))),
        (TensorSpec("audio_tokens", ("batch", F, cfg.audio_tokens, cfg.audio_token_dim)),
         TensorSpec("face_tokens", ("batch", cfg.face_tokens, cfg.face_token_dim))),
        (_batch_dim(max_batch),), precision, {"dit": cfg.to_dict(), "frames": F},
    )


def reference_descriptor(cfg: DiTConfig, precision: str = "fp32") -> GraphDescriptor:
    H, W, p = cfg.latent_height, cfg.latent_width, cfg.patch_size
    return GraphDescriptor(
        "reference", (TensorSpec("ref_latent", (1, 1, cfg.out_channels, H, W)),),
        (TensorSpec("ref_bank", (cfg.num_layers, 1, (H // p) * (W // p), cfg.hidden_dim)),),
        (), precision, {"dit": cfg.to_dict()},
    )


def audio_encoder_descriptor(layers: int, dim: int, precision: str = "fp32", clip_frames: int = 49,
                             max_clips: int = 16) -> GraphDescriptor:
    """Normalised 16 kHz audio padded to whole clips (`AudioFeatureExtractor.prepare`) -> hidden states
    at 25 fps, up to `max_clips` clips of `clip_frames` frames."""
    samples = clip_frames * SAMPLES_PER_VIDEO_FRAME
    # down to 2 frames: a streaming session's first feature windows are a few frames long (streaming_features)
    return GraphDescriptor(
        "audio_encoder",
        (TensorSpec("waveform", (1, "samples")), TensorSpec("frame_grid", (1, "audio_frames"), "float32")),
        (TensorSpec("hidden_states", (1, "audio_frames", layers, dim)),),
        (("samples", (2 * SAMPLES_PER_VIDEO_FRAME, samples, max_clips * samples)),
         ("audio_frames", (2, clip_frames, max_clips * clip_frames))),
        precision, {"layers": layers, "dim": dim, "clip_frames": clip_frames},
    )


def vae_encoder_descriptor(vae: VaeConfig, height: int, width: int, precision: str = "fp32",
                           frames: int = 1) -> GraphDescriptor:
    """`height`, `width` in latent pixels; `frames` video frames: 1 for the reference image, 1 + motion
    frames (3 in Hallo3) for the conditioning latent. One graph per frame count: the causal encoder's
    temporal downsampling depends on it. Named `vae_encoder_t<frames>`."""
    s = vae.spatial_compression
    latent_frames = 1 + (frames - 1) // vae.temporal_compression
    out = (1, vae.latent_channels, latent_frames, height, width)
    return GraphDescriptor(
        f"vae_encoder_t{frames}", (TensorSpec("frames", (1, 3, frames, height * s, width * s)),),
        (TensorSpec("mean", out), TensorSpec("logvar", out)), (), precision,
        {"vae": vae.to_dict(), "frames": frames},
    )


def model_graphs(dit: HalloDiT, reference: ReferenceNet, vae: nn.Module, audio_encoder: nn.Module, *,
                 precision: str = "fp32", motion_frames: int = 2, vae_grouping: str = "reference",
                 kernels: str = "none") -> dict[str, tuple[GraphDescriptor, nn.Module]]:
    """Every graph the offline and streaming pipelines run, cut from loaded models (all in `precision`).

    kernels="plugin": the denoiser and reference network use the fused ops (`apply_kernels`), which export
    as TensorRT plugin nodes."""
    from .vae_graphs import vae_decoder_graphs

    if kernels == "plugin":
        from ..kernels import apply_kernels

        dit = apply_kernels(dit, "triton", check_runtime=False)
        reference = apply_kernels(reference, "triton", check_runtime=False)
    cfg = dit.config
    graphs = {
        "denoiser": (denoiser_descriptor(cfg, precision), DenoiserStep(dit)),
        "reference": (reference_descriptor(cfg, precision), ReferenceBank(reference)),
    }
    if cfg.audio_cross_attention and cfg.face_cross_attention:
        graphs["conditioning"] = (conditioning_descriptor(cfg, precision), Conditioning(dit))
    layers = audio_encoder.config.num_layers
    graphs["audio_encoder"] = (audio_encoder_descriptor(layers, audio_encoder.config.hidden_size, precision,
                                                        1 + (cfg.latent_frames - 1) * 4), AudioEncoder(audio_encoder))
    for frames in (1, 1 + motion_frames):
        d = vae_encoder_descriptor(vae.config, cfg.latent_height, cfg.latent_width, precision, frames)
        graphs[d.name] = (d, VaeEncoder(vae))
    graphs.update(vae_decoder_graphs(vae, cfg.latent_height, cfg.latent_width, vae_grouping, precision))
    return graphs
