"""The exported graphs: a module with plain tensor inputs/outputs per descriptor, cut from the engine.

    denoiser       one denoiser step on projected condition tokens (HalloDiT.denoise)
    conditioning   windowed audio features + face embedding -> audio and face tokens
    reference      the reference-bank network on the reference latent
    audio_encoder  one clip of normalised, padded 16 kHz audio -> wav2vec2 hidden states at 25 fps
    vae_encoder    frames -> posterior mean and log-variance
    vae_decoder    one latent group with the causal caches as explicit inputs/outputs (vae_graphs.py)

`model_graphs(...)` returns name -> (descriptor, module) for a loaded model; the modules share the engine's
weights and are what `export_onnx` traces and the torch backend runs. By default it cuts the graphs of the
offline pipeline (the config's clip, the reference decode grouping); with `chunk_latents` and `motion` it cuts
the graphs one streaming session needs (engine/chunks.py):

    motion   denoiser   conditioning (audio frames)        VAE decoder groups
    pixel    F frames   4F - 3 (every chunk is a clip)     Grouping.for_clip(F) = (3, 2), the reference's
    latent   F frames   first chunk 4F - 3 (odd F) or 4F,  Grouping(F, F): F, then F with caches
                        then 4F

Names are stable per (graph, frames, grouping): the clip's graphs keep their plain names (`denoiser`,
`conditioning`, `vae_decoder_first`, ...); other lengths add `_f<F>` (denoiser), `_f<F>_t<T>` (conditioning)
and `_g<first>x<then>` (decoder groups of a non-reference grouping), so one cache or manifest can hold several.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..engine.chunks import ChunkSettings
from ..engine.conditioning import AudioProjection
from ..engine.config import DiTConfig, VaeConfig
from ..engine.dit import HalloDiT
from ..engine.reference import ReferenceNet
from ..engine.vae import REFERENCE_GROUPING, Grouping, resolve_grouping
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
    """One step over `frames` latent frames (default: the config's clip) for 1..max_batch (CFG) rows. Named
    `denoiser` for the clip, `denoiser_f<frames>` otherwise."""
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
    name = "denoiser" if F == cfg.latent_frames else f"denoiser_f{F}"
    return GraphDescriptor(
        name, tuple(inputs), (TensorSpec("v", ("batch", F, cfg.out_channels, H, W)),),
        (_batch_dim(max_batch),), precision, {"dit": cfg.to_dict(), "frames": F},
    )


def conditioning_descriptor(cfg: DiTConfig, precision: str = "fp32", frames: int | None = None,
                            max_batch: int = 2, audio_frames: int | None = None) -> GraphDescriptor:
    """Audio features of `audio_frames` video frames (default 4F - 3: a clip from its first frame) + the face
    embedding -> tokens for `frames` latent frames (default: the config's clip). One graph per audio length:
    the projection keeps an odd count's first frame apart while tracing. Named `conditioning` for the clip,
    `conditioning_f<frames>_t<audio_frames>` otherwise."""
    F = frames or cfg.latent_frames
    T = audio_frames or 4 * F - 3
    if AudioProjection.latent_frames_for(T) != F:
        raise ValueError(f"{T} audio frames project to {AudioProjection.latent_frames_for(T)} latent frames, "
                         f"not {F}; use 4F - 3 or 4F")
    clip = F == cfg.latent_frames and T == 4 * F - 3
    return GraphDescriptor(
        "conditioning" if clip else f"conditioning_f{F}_t{T}",
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


def chunk_audio_frames(chunk_latents: int, motion: str) -> tuple[int, ...]:
    """Audio feature frames the conditioning graph takes in a session's chunks (engine/chunks.py): a pixel
    chunk is a clip of 4F - 3 frames; a latent chunk takes its new frames, 4F - 3 first when F is odd (the
    causal VAE decodes the stream's first latent frame to one video frame), then 4F."""
    F = chunk_latents
    if motion == "pixel":
        return (4 * F - 3,)
    return tuple(sorted({4 * F - 3 if F % 2 else 4 * F, 4 * F}))


def chunk_decoder_grouping(chunk_latents: int, motion: str) -> Grouping:
    """How a session's VAE groups latent frames: pixel chunks decode as whole clips (`CogVideoXVae.decode`);
    latent motion runs one stream decoder with a group per chunk (`LatentMotion`)."""
    return Grouping.for_clip(chunk_latents) if motion == "pixel" else Grouping(chunk_latents, chunk_latents)


def _decoder_graphs(vae: nn.Module, cfg: DiTConfig, grouping: Grouping, precision: str) -> dict:
    """The decoder group graphs; outside the reference grouping their names carry `_g<first>x<then>`, since
    vae_graphs names a group by position and size only (a first group of 3 is in (3, 2) and in (3, 3))."""
    from .vae_graphs import vae_decoder_graphs

    graphs = vae_decoder_graphs(vae, cfg.latent_height, cfg.latent_width, grouping, precision)
    if grouping == REFERENCE_GROUPING:
        return graphs
    suffix = f"_g{grouping.first}x{grouping.then}"
    return {name + suffix: (dataclasses.replace(d, name=d.name + suffix), module)
            for name, (d, module) in graphs.items()}


def model_graphs(dit: HalloDiT, reference: ReferenceNet, vae: nn.Module, audio_encoder: nn.Module, *,
                 precision: str = "fp32", motion_frames: int = 2, vae_grouping: Grouping | str = "reference",
                 kernels: str = "none", chunk_latents: int | None = None,
                 motion: str = "pixel") -> dict[str, tuple[GraphDescriptor, nn.Module]]:
    """The graphs a pipeline runs, cut from loaded models (all in `precision`).

    chunk_latents=None: the offline pipeline's (the config's clip, decoded with `vae_grouping`). Otherwise
    the graphs of a streaming session with `chunk_latents`-latent chunks, `motion` ("pixel" | "latent") and
    `motion_frames` (see the module docstring); for the clip length with pixel motion they are the offline
    set, names and descriptors alike. kernels="plugin": the denoiser and reference network use the fused ops
    (`apply_kernels`), which export as TensorRT plugin nodes."""
    cfg = dit.config
    if chunk_latents is None:
        frames, audio_frames, grouping = cfg.latent_frames, (cfg.video_frames,), resolve_grouping(vae_grouping)
    else:
        if resolve_grouping(vae_grouping) != REFERENCE_GROUPING:
            raise ValueError("vae_grouping applies to the offline (clip) graphs; a session's decoder grouping "
                             "follows from chunk_latents and motion")
        ChunkSettings(chunk_latents=chunk_latents, motion=motion, motion_frames=motion_frames)  # validates
        frames, audio_frames = chunk_latents, chunk_audio_frames(chunk_latents, motion)
        grouping = chunk_decoder_grouping(chunk_latents, motion)
    if kernels == "plugin":
        from ..kernels import apply_kernels

        dit = apply_kernels(dit, "triton", check_runtime=False)
        reference = apply_kernels(reference, "triton", check_runtime=False)
    denoiser = denoiser_descriptor(cfg, precision, frames=frames)
    graphs = {
        denoiser.name: (denoiser, DenoiserStep(dit)),
        "reference": (reference_descriptor(cfg, precision), ReferenceBank(reference)),
    }
    if cfg.audio_cross_attention and cfg.face_cross_attention:
        for count in audio_frames:
            d = conditioning_descriptor(cfg, precision, frames=frames, audio_frames=count)
            graphs[d.name] = (d, Conditioning(dit))
    layers = audio_encoder.config.num_layers
    graphs["audio_encoder"] = (audio_encoder_descriptor(layers, audio_encoder.config.hidden_size, precision,
                                                        cfg.video_frames), AudioEncoder(audio_encoder))
    for count in (1, 1 + motion_frames):
        d = vae_encoder_descriptor(vae.config, cfg.latent_height, cfg.latent_width, precision, count)
        graphs[d.name] = (d, VaeEncoder(vae))
    graphs.update(_decoder_graphs(vae, cfg, grouping, precision))
    return graphs
