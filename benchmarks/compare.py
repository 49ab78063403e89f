"""Side by side, same weights and machine (issue 7): the engine against diffusers, and against the reference
offline loop, with the speed-up broken down rung by rung.

    .venv/bin/python -m hallo_rt.benchmarks.compare [--model tiny] [--what dit vae gemm ladder]
        [--impls eager compile] [--ladder-backend cpu_convolutions] [--threads N] [--out FILE]

- `dit_vs_diffusers`: one denoiser step of our backbone (face/audio off, so diffusers'
  `CogVideoXTransformer3DModel` computes the same function) against diffusers eager, same weights; plus our
  full Hallo3 step (audio, face, cached reference K/V) for information. `speedup_vs_diffusers_dit`.
- `vae_vs_diffusers`: our VAE decode of a whole clip as the engine runs it (`small_cpu_convolutions`)
  against `AutoencoderKLCogVideoX.decode`; plus the streaming decoder the sessions run.
  `speedup_vs_diffusers_vae`.
- `reference_offline_loop` and `speedup_ladder`: Hallo3's offline loop, then one change at a time up to the
  streaming session, timed as wall seconds per second of video.

Timings are medians over repeats after untimed warm-up calls, the calls of the implementations compared
interleaved (a, b, a, b, ...) so that a change in the machine's load weighs on each alike; torch.compile's
compile time is reported on its own, never inside a median. Every function returns a JSON-able dict with
`backend_used`, `config_hash` and its parameters.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from hallo_rt.benchmarks.gemm import step_inputs, time_interleaved
from hallo_rt.engine.config import DiTConfig, VaeConfig
from hallo_rt.engine.dit import HalloDiT
from hallo_rt.engine.vae import CogVideoXVae, Grouping

DIT_IMPLS = ("eager", "compile")
"""Our step's implementations: torch eager, and torch.compile (inductor; C++/OpenMP code on CPU)."""

LADDER_BACKENDS = ("cpu_convolutions", "cpu_convolutions+compile")
"""Rung (f): the VAE's small convolutions on oneDNN's 2D route (`engine.cpu_convolutions`), optionally
with the denoiser's transformer (`HalloDiT.denoise`) through torch.compile as well."""

FPS = 25  # Hallo3's video rate
SAMPLES_PER_FRAME = 16000 // FPS  # 16 kHz audio


# --- the denoiser against diffusers -----------------------------------------------------------------------

def to_diffusers(dit: HalloDiT):
    """A diffusers CogVideoXTransformer3DModel holding the same weights as a backbone-only HalloDiT."""
    from diffusers import CogVideoXTransformer3DModel

    c = dit.config
    model = CogVideoXTransformer3DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.head_dim, in_channels=c.in_channels,
        out_channels=c.out_channels, time_embed_dim=c.time_embed_dim, text_embed_dim=c.text_dim,
        num_layers=c.num_layers, sample_width=c.latent_width, sample_height=c.latent_height,
        sample_frames=c.video_frames, patch_size=c.patch_size, max_text_seq_length=c.text_len,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=c.learned_pos_embed,
        norm_eps=c.norm_eps,
    ).eval()
    ours = dit.state_dict()
    state = {
        "patch_embed.proj.weight": ours["patch_embed.proj.weight"],
        "patch_embed.proj.bias": ours["patch_embed.proj.bias"],
        "patch_embed.text_proj.weight": ours["patch_embed.text_proj.weight"],
        "patch_embed.text_proj.bias": ours["patch_embed.text_proj.bias"],
        "time_embedding.linear_1.weight": ours["time_embed.linear_1.weight"],
        "time_embedding.linear_1.bias": ours["time_embed.linear_1.bias"],
        "time_embedding.linear_2.weight": ours["time_embed.linear_2.weight"],
        "time_embedding.linear_2.bias": ours["time_embed.linear_2.bias"],
        "norm_final.weight": ours["norm_final.weight"], "norm_final.bias": ours["norm_final.bias"],
        "norm_out.norm.weight": ours["final_layer.norm.weight"], "norm_out.norm.bias": ours["final_layer.norm.bias"],
        "norm_out.linear.weight": ours["final_layer.modulation.weight"],
        "norm_out.linear.bias": ours["final_layer.modulation.bias"],
        "proj_out.weight": ours["final_layer.linear.weight"], "proj_out.bias": ours["final_layer.linear.bias"],
    }
    if c.learned_pos_embed:
        state["patch_embed.pos_embedding"] = ours["pos_embedding"]
    for i in range(c.num_layers):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = ours[f"{b}attn.qkv.{kind}"].chunk(3)
            state.update({f"{d}attn1.to_q.{kind}": q, f"{d}attn1.to_k.{kind}": k, f"{d}attn1.to_v.{kind}": v})
            mods = ours[f"{b}modulation.{kind}"].chunk(4)  # [msa, mlp, text msa, text mlp]
            state[f"{d}norm1.linear.{kind}"] = torch.cat([mods[0], mods[2]])
            state[f"{d}norm2.linear.{kind}"] = torch.cat([mods[1], mods[3]])
            for src, dst in (("norm1", "norm1.norm"), ("norm2", "norm2.norm"), ("attn.norm_q", "attn1.norm_q"),
                             ("attn.norm_k", "attn1.norm_k"), ("attn.out", "attn1.to_out.0"),
                             ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")):
                state[f"{d}{dst}.{kind}"] = ours[f"{b}{src}.{kind}"]
    model.load_state_dict(state, strict=True)
    return model


def backbone_config(config: DiTConfig, frames: int) -> DiTConfig:
    """The backbone diffusers can compute: face/audio off, a clip of `frames` latents (diffusers recomputes
    sinusoidal positions for any other clip length, so its learned table must be built for this one), and
    diffusers' output-norm epsilon (its `norm_eps`, where SAT uses 1e-6)."""
    return dataclasses.replace(config, name=f"{config.name}-backbone-f{frames}", latent_frames=frames,
                               face_cross_attention=False, audio_cross_attention=False,
                               out_norm_eps=config.norm_eps)


def _compiled(module, example: tuple, kwargs: dict | None = None) -> tuple[object, float]:
    """(torch.compile(module), seconds its first call took: the compile, reported apart from any median)."""
    compiled = torch.compile(module, dynamic=False)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(*example, **(kwargs or {}))
    return compiled, time.perf_counter() - start


def _check_dit_args(config: DiTConfig, frames: int, batch: int, impls: tuple, repeats: int, warmup: int):
    if not isinstance(config, DiTConfig):
        raise TypeError(f"config must be a DiTConfig, got {type(config).__name__}")
    if not isinstance(frames, int) or not 1 <= frames <= config.latent_frames:
        raise ValueError(f"frames must be an integer in 1..{config.latent_frames}, got {frames!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    unknown = [i for i in impls if i not in DIT_IMPLS]
    if not impls or unknown:
        raise ValueError(f"unknown impl(s) {unknown or list(impls)}; choose from {', '.join(DIT_IMPLS)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")


def dit_vs_diffusers(config: DiTConfig, frames: int, batch: int, impls: tuple[str, ...] = DIT_IMPLS,
                     repeats: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """One denoiser step of `config` at `frames` latent frames and `batch`: our backbone per impl and
    diffusers eager on the same weights and inputs (max abs difference recorded), and our full Hallo3 step
    per impl. `speedup_vs_diffusers_dit` = diffusers' median / the fastest of our backbone medians."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from hallo_rt.engine.weights.common import seeded_init_

    impls = tuple(impls)
    _check_dit_args(config, frames, batch, impls, repeats, warmup)
    cfg = backbone_config(config, frames)
    backbone = seeded_init_(HalloDiT(cfg), seed).eval().requires_grad_(False)
    theirs = to_diffusers(backbone)
    g = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn(batch, frames, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=g)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.full((batch,), 500)
    h, w = cfg.latent_height // cfg.patch_size, cfg.latent_width // cfg.patch_size
    rotary = get_3d_rotary_pos_embed(cfg.head_dim, ((0, 0), (h, w)), (h, w), frames)
    full = seeded_init_(HalloDiT(config), seed).eval().requires_grad_(False)
    args, kwargs = step_inputs(config, frames, batch, seed + 2)
    bank = torch.randn(config.num_layers, 1, config.tokens_per_frame, config.hidden_dim, generator=g)
    kwargs["ref_bank"] = full.reference_kv(bank, batch=batch)  # cached once per stream, as sessions do

    calls = {"diffusers": lambda: theirs(latents, text, t, image_rotary_emb=rotary, return_dict=False)}
    diffs, compile_s = {}, {}
    with torch.inference_mode():
        expected = calls["diffusers"]()[0]
    for impl in impls:
        step, step_full = backbone, full
        if impl == "compile":
            step, compile_s["backbone"] = _compiled(backbone, (latents, t, text))
            step_full, compile_s["hallo3_step"] = _compiled(full, args, kwargs)
        with torch.inference_mode():
            diffs[impl] = float((step(latents, t, text) - expected).abs().max())
        calls[impl] = lambda step=step: step(latents, t, text)
        calls[f"hallo3:{impl}"] = lambda step=step_full: step(*args, **kwargs)
    with torch.inference_mode():
        timings = time_interleaved(calls, repeats, warmup)
    diffusers_t = timings["diffusers"]
    ours = {impl: timings[impl] for impl in impls}
    hallo3 = {impl: timings[f"hallo3:{impl}"] for impl in impls}
    fastest = min(impls, key=lambda i: ours[i]["median_s"])
    return {
        "benchmark": "dit_vs_diffusers", "model": config.name, "frames": frames, "batch": batch,
        "tokens_per_step": cfg.text_len + frames * cfg.tokens_per_frame,
        "config_hash": config.compute_hash(), "backbone_config_hash": cfg.compute_hash(),
        "backend_used": _impl_name(fastest), "impl_used": fastest, "device": "cpu", "dtype": "fp32",
        "threads": torch.get_num_threads(),
        "engine_backbone_step": ours, "diffusers_backbone_step": diffusers_t,
        "engine_hallo3_step_with_face_audio_cached_kv": hallo3,
        "max_abs_diff_vs_diffusers": diffs, "compile_s": compile_s or None,
        "inductor_fx_graph_cache": _fx_graph_cache() if compile_s else None,
        "speedup_vs_diffusers_dit": diffusers_t["median_s"] / ours[fastest]["median_s"],
        "speedup_by_impl": {i: diffusers_t["median_s"] / ours[i]["median_s"] for i in impls},
        "parameters": {"frames": frames, "batch": batch, "impls": list(impls), "repeats": repeats,
                       "warmup": warmup, "seed": seed},
    }


def _fx_graph_cache() -> bool:
    """Whether inductor's on-disk FX graph cache was on: a warm cache makes a repeated compile much faster."""
    import torch._inductor.config as inductor_config

    return bool(inductor_config.fx_graph_cache)


def _impl_name(impl: str) -> str:
    return {"eager": "torch eager (CPU)", "compile": "torch.compile (inductor, CPU C++/OpenMP)"}[impl]


# --- the VAE against diffusers ----------------------------------------------------------------------------

def to_diffusers_vae(vae: CogVideoXVae):
    """diffusers' AutoencoderKLCogVideoX holding the same weights (our parameter names are diffusers')."""
    from diffusers import AutoencoderKLCogVideoX

    c = vae.config
    model = AutoencoderKLCogVideoX(
        in_channels=c.image_channels, out_channels=c.image_channels, block_out_channels=c.block_channels,
        layers_per_block=c.num_res_blocks, latent_channels=c.latent_channels, norm_num_groups=c.norm_groups,
        norm_eps=c.norm_eps, temporal_compression_ratio=c.temporal_compression, scaling_factor=c.scaling_factor,
    ).eval()
    model.load_state_dict(vae.state_dict(), strict=True)
    return model


def plain_convolutions(vae: CogVideoXVae) -> CogVideoXVae:
    """A copy of `vae` on plain Conv3d everywhere (`small_cpu_convolutions` undone), as the reference runs it;
    same parameter values."""
    from hallo_rt.engine.cpu_convolutions import plain_convolutions as plain

    return plain(copy.deepcopy(vae))


def vae_vs_diffusers(vae_config: VaeConfig, latent_frames: int = 13, latent_size: tuple[int, int] = (16, 16),
                     repeats: int = 3, warmup: int = 1, seed: int = 0) -> dict:
    """Decode of one clip of `latent_frames` latents (latent_size = (h, w); `tiny`: 16 x 16 = 128 px):
    ours as the engine runs it (`CogVideoXVae.decode` after `small_cpu_convolutions`), diffusers'
    `AutoencoderKLCogVideoX.decode` on the same weights and latents, and our `StreamingVaeDecoder` with
    Grouping(3, 3) fed 3-latent chunks (what a stream runs; another grouping, so other numbers)."""
    from hallo_rt.engine.cpu_convolutions import small_cpu_convolutions
    from hallo_rt.engine.weights.common import seeded_init_

    if not isinstance(vae_config, VaeConfig):
        raise TypeError(f"vae_config must be a VaeConfig, got {type(vae_config).__name__}")
    if not isinstance(latent_frames, int) or latent_frames < 1:
        raise ValueError(f"latent_frames must be a positive integer, got {latent_frames!r}")
    if len(latent_size) != 2 or min(latent_size) < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need latent_size (h, w) >= 1, repeats >= 1, warmup >= 0; got {latent_size}, "
                         f"{repeats}, {warmup}")
    vae = small_cpu_convolutions(seeded_init_(CogVideoXVae(vae_config), seed).eval().requires_grad_(False))
    theirs = to_diffusers_vae(vae)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(1, vae_config.latent_channels, latent_frames, *latent_size, generator=g)

    def stream_decode() -> torch.Tensor:
        decoder = vae.stream_decoder(Grouping(3, 3))
        chunks = [decoder.decode(z[:, :, i:i + 3]) for i in range(0, latent_frames, 3)]
        return torch.cat(chunks + [decoder.flush()], dim=2)

    with torch.inference_mode():
        expected = theirs.decode(z).sample
        max_diff = float((vae.decode(z, clamp=False) - expected).abs().max())
        timings = time_interleaved({"diffusers": lambda: theirs.decode(z), "ours": lambda: vae.decode(z),
                                    "stream": stream_decode}, repeats, warmup)
        diffusers_t, ours, stream = timings["diffusers"], timings["ours"], timings["stream"]
        frames = stream_decode().shape[2]
    video_frames, step = expected.shape[2], vae_config.spatial_compression
    return {
        "benchmark": "vae_vs_diffusers", "vae": vae_config.name, "latent_frames": latent_frames,
        "latent_size": list(latent_size), "video_frames": video_frames,
        "frame_size": [latent_size[0] * step, latent_size[1] * step],
        "config_hash": vae_config.compute_hash(), "device": "cpu", "dtype": "fp32", "threads": torch.get_num_threads(),
        "backend_used": "torch eager, small_cpu_convolutions (oneDNN 2D route for small 3D convolutions)",
        "engine_decode": ours, "diffusers_decode": diffusers_t, "max_abs_diff_vs_diffusers": max_diff,
        "speedup_vs_diffusers_vae": diffusers_t["median_s"] / ours["median_s"],
        "engine_ms_per_frame": ours["median_s"] * 1e3 / video_frames,
        "diffusers_ms_per_frame": diffusers_t["median_s"] * 1e3 / video_frames,
        "engine_stream_decode_grouping_3_3": {**stream, "frames": frames,
                                              "ms_per_frame": stream["median_s"] * 1e3 / frames},
        "parameters": {"latent_frames": latent_frames, "latent_size": list(latent_size), "repeats": repeats,
                       "warmup": warmup, "seed": seed},
    }


# --- the reference offline loop ---------------------------------------------------------------------------

def _inputs(pipeline, image, audio, face_embedding, text_embeds):
    """(waveform, prepared reference, face (1, F), text (1, L, D), video frame count) from user inputs."""
    from hallo_rt.engine.audio_features import video_frame_count
    from hallo_rt.engine.reference_image import prepare_reference

    if isinstance(image, (str, Path)):
        from hallo_rt.runtime.media import read_image

        image = read_image(image)
    waveform = torch.as_tensor(np.asarray(audio, dtype=np.float32)) if not torch.is_tensor(audio) else audio
    if waveform.ndim != 1 or waveform.numel() == 0:
        raise ValueError(f"audio must be non-empty 1-D 16 kHz mono samples, got shape {tuple(waveform.shape)}")
    cfg, dit = pipeline.dit.config, pipeline.dit
    face = torch.zeros(cfg.face_embed_dim) if face_embedding is None else torch.as_tensor(face_embedding)
    text = torch.zeros(cfg.text_len, cfg.text_dim) if text_embeds is None else torch.as_tensor(text_embeds)
    reference = prepare_reference(np.asarray(image), *pipeline.clip_size)
    return (waveform, reference, face.reshape(1, -1).to(dit.device, dit.dtype),
            text.reshape(1, cfg.text_len, cfg.text_dim).to(dit.device, dit.dtype), video_frame_count(waveform.numel()))


def _conditioning_latent(pipeline, image: torch.Tensor, motion: torch.Tensor, mask_rate: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Hallo3 `sample_video.py` L256-263 / L413-419: one random H x W pixel-dropout map over the motion
    frames, [reference, masked motion] VAE-encoded (a posterior sample) to one latent frame, then zero
    latent frames to the clip length. (1, F, C, h, w)."""
    height, width = motion.shape[-2:]
    keep = torch.rand((height, width), generator=generator).to(motion.dtype) > mask_rate
    first = pipeline.encode(torch.cat([image[:, :, None], motion * keep.to(motion)], dim=2), generator)
    zeros = first.new_zeros(1, pipeline.dit.config.latent_frames - first.shape[1], *first.shape[2:])
    return torch.cat([first, zeros], dim=1)


def reference_offline_loop(pipeline, extractor, image, audio, *, face_embedding=None, text_embeds=None,
                           steps: int = 50, cfg_scale: float = 3.5, sampler: str = "dpmpp2m_sde",
                           motion_frames: int = 2, mask_rate: float = 0.1, seed: int = 0,
                           keep_frames: bool = False) -> dict:
    """Hallo3's offline loop (`sample_video.py` L347-427, spec section 1.6), strictly sequential: audio
    features padded to whole 49-frame clips; per clip, the reference network run again on the reference
    latent (`diffusion_video.py` L315-326) and its raw bank given to the denoiser, which projects the bank's
    K/V in every layer at every step; `steps` steps of `sampler` with CFG `cfg_scale`; the whole clip decoded
    with the reference grouping; its last `motion_frames` frames, pixel-masked and re-encoded with the
    reference image, condition the next clip. Frames are trimmed to the audio, as `Hallo3Pipeline.generate`
    does (clips whose frames would all be trimmed are not generated).

    image: (H, W, 3) uint8 or a path; audio: 16 kHz mono float samples. Random numbers come from one
    generator seeded with `seed`, in Hallo3's order. Returns timings (wall, per stage) and, with
    keep_frames, the uint8 video (T, H, W, 3) under "video" (a tensor: pop it before writing JSON)."""
    from hallo_rt.engine.chunks import pad_frames
    from hallo_rt.engine.pipeline import clip_count, to_uint8
    from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample

    sampler_cfg = SamplerConfig(kind=sampler, steps=steps, cfg_scale=cfg_scale)
    start = time.perf_counter()
    waveform, reference, face, text, length = _inputs(pipeline, image, audio, face_embedding, text_embeds)
    dit, vae, m = pipeline.dit, pipeline.vae, motion_frames
    stages = dict.fromkeys(("audio_features", "conditioning", "reference_net", "sampling", "decode"), 0.0)
    with _timed(stages, "audio_features"):
        features = extractor(waveform, clip_length=pipeline.clip_frames).to(dit.device, dit.dtype)
    new = pipeline.clip_frames - m
    clips = clip_count(length, pipeline.clip_frames, m)
    generator = torch.Generator().manual_seed(seed)
    video, emitted = [], 0
    with torch.inference_mode():
        # 1. the first clip's motion frames are the reference image itself; then the reference latent
        with _timed(stages, "conditioning"):
            image_px = reference.image.to(vae.device, vae.dtype)
            concat = _conditioning_latent(pipeline, image_px, image_px[:, :, None].expand(-1, -1, m, -1, -1),
                                          mask_rate, generator)
            ref_latent = pipeline.encode(reference.face_image.to(image_px)[:, :, None], generator)
        prefix = features.new_zeros(m, *features.shape[1:])  # zeros before the first clip (L350)
        for clip in range(clips):
            # 2. the reference network, again for every clip; its raw bank goes to the denoiser
            with _timed(stages, "reference_net"):
                bank = pipeline.reference_net(ref_latent.to(dit.device))
            clip_audio = torch.cat([prefix, pad_frames(features[clip * new:(clip + 1) * new], new)])
            prefix = clip_audio[-m:]
            cond = Conditioning(concat_latent=concat.to(dit.device), text_embeds=text, audio=clip_audio[None],
                                face=face, ref_bank=bank)
            with _timed(stages, "sampling"):
                latents = sample(dit, cond, sampler_cfg, generator=generator)
            # 3. whole-clip decode (reference grouping); the last frames, to [0, 1] and back, are the motion
            with _timed(stages, "decode"):
                pixels = vae.decode(latents.permute(0, 2, 1, 3, 4) * (1.0 / vae.config.scaling_factor))[0]
            frames = pixels[:, m:][:, :length - emitted]
            emitted += frames.shape[1]
            video.append(to_uint8(frames, reference.crop))
            if clip + 1 < clips:
                with _timed(stages, "conditioning"):
                    motion = ((pixels[:, -m:].float() + 1.0) / 2.0).clamp(0.0, 1.0)[None].to(vae.dtype) * 2 - 1
                    concat = _conditioning_latent(pipeline, image_px, motion, mask_rate, generator)
    wall = time.perf_counter() - start
    result = {
        "loop": "reference_offline", "frames": emitted, "video_s": emitted / FPS, "wall_s": wall,
        "s_per_video_s": wall / (emitted / FPS), "clips": clips, "stages_s": stages,
        "backend_used": _pipeline_backend(pipeline), "config_hash": dit.config.compute_hash(),
        "vae_config_hash": vae.config.compute_hash(),
        "parameters": {"steps": steps, "cfg_scale": cfg_scale, "sampler": sampler, "motion_frames": m,
                       "mask_rate": mask_rate, "seed": seed, "clip_frames": pipeline.clip_frames,
                       "bank": "reference network per clip, raw bank (K/V projected every layer and step)"},
    }
    if keep_frames:
        result["video"] = torch.cat(video)
    return result


@contextmanager
def _timed(stages: dict, name: str):
    """Add the wall time of the `with` body to stages[name]."""
    start = time.perf_counter()
    yield
    stages[name] += time.perf_counter() - start


def _pipeline_backend(pipeline) -> str:
    from hallo_rt.engine.cpu_convolutions import StackedTimeConv3d

    vae_route = ("small_cpu_convolutions" if any(isinstance(m, StackedTimeConv3d) for m in pipeline.vae.modules())
                 else "plain Conv3d")
    dit_route = "torch.compile(denoise)" if "denoise" in vars(pipeline.dit) else "eager"
    return f"torch on {pipeline.dit.device}: denoiser {dit_route}, VAE {vae_route}"


# --- the speed-up ladder ----------------------------------------------------------------------------------

def chunked_loop(pipeline, extractor, image, audio, settings, sampler, *, seed: int = 0,
                 face_embedding=None, text_embeds=None) -> dict:
    """`engine.chunks.ChunkedGenerator` as it is (reference K/V once per stream), run strictly sequentially:
    each chunk denoised, then decoded, then the next. Same inputs and timing as `reference_offline_loop`."""
    from hallo_rt.engine.chunks import ChunkedGenerator, pad_frames
    from hallo_rt.engine.pipeline import to_uint8

    start = time.perf_counter()
    waveform, reference, face, text, length = _inputs(pipeline, image, audio, face_embedding, text_embeds)
    features = extractor(waveform, clip_length=pipeline.clip_frames)
    generator = torch.Generator().manual_seed(seed)
    stream = ChunkedGenerator(pipeline, reference, face, text, settings, sampler, generator)
    stages = {"denoise": 0.0, "decode": 0.0}
    emitted, offset = 0, 0
    while emitted < length:
        new = stream.new_frames()
        chunk = features[offset:offset + new] if offset < features.shape[0] else features[-1:]
        offset += new
        with _timed(stages, "denoise"):
            latents = stream.denoise(pad_frames(chunk, new))
        with _timed(stages, "decode"):
            frames = stream.decode(latents)[:, :length - emitted]
        emitted += frames.shape[1]
        to_uint8(frames, reference.crop)
    wall = time.perf_counter() - start
    return {"frames": emitted, "video_s": emitted / FPS, "wall_s": wall, "s_per_video_s": wall / (emitted / FPS),
            "chunks": stream.chunks_denoised, "stages_s": stages, "backend_used": _pipeline_backend(pipeline),
            "config_hash": pipeline.dit.config.compute_hash(),
            "parameters": {"chunk": dataclasses.asdict(settings), "steps": sampler.steps,
                           "cfg_scale": sampler.cfg_scale, "sampler": sampler.kind, "seed": seed}}


def _backend_pipeline(pipeline, backend: str):
    """The pipeline of rung (f): the VAE on `small_cpu_convolutions`; with "+compile" also the
    denoiser's transformer through torch.compile, on a shallow copy so the other rungs stay eager."""
    from hallo_rt.engine.cpu_convolutions import small_cpu_convolutions
    from hallo_rt.engine.pipeline import Hallo3Pipeline

    if pipeline.dit.device.type != "cpu":
        raise ValueError(f"the ladder's backends are CPU routes; the pipeline is on {pipeline.dit.device}")
    dit = pipeline.dit
    if backend.endswith("+compile"):
        dit = copy.copy(pipeline.dit)  # shares parameters and submodules
        dit.denoise = torch.compile(dit.denoise, dynamic=False)  # chunks share one shape: one compile
    return Hallo3Pipeline(dit, pipeline.reference_net, small_cpu_convolutions(copy.deepcopy(pipeline.vae)))


def _stream_rung(pipeline, extractor, image, waveform, seed: int, overrides: dict) -> dict:
    """Rung (g): the streaming session (`stream_bench.run_stream`), timed from opening the session."""
    from hallo_rt.benchmarks.stream_bench import run_stream
    from hallo_rt.runtime.api import Engine

    engine = Engine.from_pipeline(pipeline, extractor, {"backend": "torch", "device": str(pipeline.dit.device)})
    start = time.perf_counter()
    result = run_stream(engine, waveform.numpy(), image=np.asarray(image), seed=seed, **overrides)
    wall = time.perf_counter() - start
    result.pop("raw", None)
    return {"frames": result.get("frames"), "video_s": result["video_s"], "wall_s": wall,
            "s_per_video_s": wall / result["video_s"], "session": {k: result.get(k) for k in (
                "wall_s", "rtf", "ttff_s", "steady_fps")},
            "backend_used": _pipeline_backend(pipeline), "config_hash": pipeline.dit.config.compute_hash(),
            "parameters": {**overrides, "seed": seed}}


def speedup_ladder(pipeline, extractor, image, audio, *, clips: int = 2, reference_steps: int = 50,
                   few_steps: int = 4, cfg_scale: float = 3.5, chunk_latents: int = 3, seed: int = 0,
                   backend: str = "cpu_convolutions", stream: bool = True, progress: bool = False) -> dict:
    """From Hallo3's offline loop to the streaming session, one change per rung, each timed as wall
    seconds per second of video on the same weights, audio (trimmed to cover `clips` 49-frame clips) and
    image: (a) reference; (b) `few_steps` steps, CFG kept; (c) CFG off; (d) caching: `ChunkedGenerator`
    (reference K/V once per stream), 13-latent clips; (e) `chunk_latents`-latent chunks with latent motion,
    sequential; (f) `backend` (see LADDER_BACKENDS); (g) pipelining: the streaming session (`stream_bench.
    run_stream`) with whole-file features; (h) the same session with its streaming audio features, i.e. the
    engine as it streams live ((g) and (h) are skipped with stream=False or when run_stream is not there).
    Rungs (a)-(e) run the VAE on plain Conv3d, as the reference does. Returns each rung's s/s of video, its
    factor over the previous rung and the total."""
    from hallo_rt.engine.chunks import ChunkSettings
    from hallo_rt.engine.pipeline import Hallo3Pipeline
    from hallo_rt.engine.sampling import SamplerConfig

    if not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips must be a positive integer, got {clips!r}")
    if backend not in LADDER_BACKENDS:
        raise ValueError(f"unknown ladder backend {backend!r}; choose from {', '.join(LADDER_BACKENDS)}")
    ChunkSettings(chunk_latents=chunk_latents, motion="latent")  # bad chunk lengths fail before any work
    waveform, *_ = _inputs(pipeline, image, audio, None, None)
    samples = clips * (pipeline.clip_frames - 2) * SAMPLES_PER_FRAME
    waveform = waveform[:samples]
    plain = Hallo3Pipeline(pipeline.dit, pipeline.reference_net, plain_convolutions(pipeline.vae))
    fast = _backend_pipeline(pipeline, backend)
    few = SamplerConfig(steps=few_steps, cfg_scale=1.0)
    streaming = ChunkSettings(chunk_latents=chunk_latents, motion="latent")
    clip_settings = ChunkSettings(chunk_latents=pipeline.dit.config.latent_frames, motion="pixel")
    inputs = (extractor, image, waveform)
    compile_s = None
    if backend.endswith("+compile"):  # compile outside the timed rung: one untimed chunk
        clock = time.perf_counter()
        chunked_loop(fast, extractor, image, waveform[:4 * chunk_latents * SAMPLES_PER_FRAME], streaming, few)
        compile_s = time.perf_counter() - clock
    plan = [
        ("reference", "Hallo3 offline loop", lambda: reference_offline_loop(
            plain, *inputs, steps=reference_steps, cfg_scale=cfg_scale, seed=seed)),
        ("few_steps", f"{few_steps} steps, CFG kept", lambda: reference_offline_loop(
            plain, *inputs, steps=few_steps, cfg_scale=cfg_scale, seed=seed)),
        ("no_cfg", "CFG off (one branch)", lambda: reference_offline_loop(
            plain, *inputs, steps=few_steps, cfg_scale=1.0, seed=seed)),
        ("caching", "reference K/V once per stream", lambda: chunked_loop(
            plain, *inputs, clip_settings, few, seed=seed)),
        ("streaming_chunks", f"{chunk_latents}-latent chunks, latent motion, sequential", lambda: chunked_loop(
            plain, *inputs, streaming, few, seed=seed)),
        ("backend", backend, lambda: chunked_loop(fast, *inputs, streaming, few, seed=seed)),
    ]
    overrides = {"steps": few_steps, "cfg": 1.0, "chunk_latents": chunk_latents, "motion": "latent"}
    rungs, previous = [], None
    for name, change, run in plan:
        rungs.append(_rung(name, change, run(), previous, progress))
        previous = rungs[-1]["s_per_video_s"]
    stream_note = "stream=False"
    if stream:
        try:
            from hallo_rt.benchmarks.stream_bench import run_stream  # noqa: F401 - availability check
        except ImportError as err:
            stream_note = f"skipped: {err}"
        else:
            stream_note = None
            # the session with whole-file features first (only the pipelining changes), then with its
            # streaming features (bounded windows every few frames: the cost of not knowing the future)
            rungs.append(_rung("pipelining", "streaming session, stages overlapped (whole-file features)",
                               _stream_rung(fast, extractor, image, waveform, seed,
                                            {**overrides, "offline_features": True}), previous, progress))
            previous = rungs[-1]["s_per_video_s"]
            rungs.append(_rung("streaming_features", "audio features from bounded streaming windows",
                               _stream_rung(fast, extractor, image, waveform, seed, overrides), previous, progress))
    first, last = rungs[0]["s_per_video_s"], rungs[-1]["s_per_video_s"]
    return {
        "benchmark": "speedup_ladder", "model": pipeline.dit.config.name,
        "config_hash": pipeline.dit.config.compute_hash(), "vae_config_hash": pipeline.vae.config.compute_hash(),
        "backend_used": _pipeline_backend(fast), "device": str(pipeline.dit.device),
        "threads": torch.get_num_threads(), "audio_s": waveform.numel() / 16000,
        "rungs": rungs, "total_speedup": first / last, "pipelining": stream_note or "measured",
        "compile_s": compile_s,
        "parameters": {"clips": clips, "reference_steps": reference_steps, "few_steps": few_steps,
                       "cfg_scale": cfg_scale, "chunk_latents": chunk_latents, "seed": seed, "backend": backend},
    }


def _rung(name: str, change: str, result: dict, previous: float | None, progress: bool) -> dict:
    rung = {"rung": name, "change": change, "s_per_video_s": result["s_per_video_s"],
            "factor_over_previous": None if previous is None else previous / result["s_per_video_s"],
            **{k: v for k, v in result.items() if k not in ("s_per_video_s", "video")}}
    if progress:
        print(f"ladder: {name:<17} {rung['s_per_video_s']:8.3f} s per s of video ({change})", file=sys.stderr)
    return rung


# --- command line -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from hallo_rt.benchmarks.environment import emit, machine, versions
    from hallo_rt.benchmarks.gemm import denoiser_gemm_fraction, engine_fraction, measure_gemm_peak, midsize_config
    from hallo_rt.engine.config import get_preset, get_vae_preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="preset name")
    parser.add_argument("--what", nargs="+", default=["dit", "vae", "gemm", "ladder"],
                        choices=["dit", "vae", "gemm", "ladder"])
    parser.add_argument("--impls", nargs="+", default=list(DIT_IMPLS), choices=DIT_IMPLS)
    parser.add_argument("--gemm-impls", nargs="+", default=["eager", "onednn"], choices=["eager", "onednn", "compile"])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per DiT step measurement")
    parser.add_argument("--ladder-backend", default="cpu_convolutions", choices=LADDER_BACKENDS)
    parser.add_argument("--audio", default=None, help="speech file (default: stream_bench's synthetic speech)")
    parser.add_argument("--image", default=None, help="portrait (default: stream_bench's synthetic portrait)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import diffusers

    report: dict = {"benchmark": "side_by_side", "model": args.model, "device": "cpu", "machine": machine(),
                    "versions": versions(diffusers=diffusers.__version__),
                    "command": "python -m hallo_rt.benchmarks.compare " + " ".join(argv)}
    config = get_preset(args.model)
    report["config_hash"] = config.compute_hash()
    if "dit" in args.what:
        runs = {f"F{f}_B{b}": dit_vs_diffusers(config, f, b, tuple(args.impls), repeats=args.repeats)
                for f, b in ((3, 1), (config.latent_frames, 2))}
        report["dit"] = runs
        report["speedup_vs_diffusers_dit"] = runs["F3_B1"]["speedup_vs_diffusers_dit"]
        report["backend_used"] = runs["F3_B1"]["backend_used"]
    if "vae" in args.what:
        vae = vae_vs_diffusers(get_vae_preset(args.model), 13, (config.latent_height, config.latent_width))
        report["vae"], report["speedup_vs_diffusers_vae"] = vae, vae["speedup_vs_diffusers_vae"]
    if "gemm" in args.what:
        peak = measure_gemm_peak()
        steps = {i: denoiser_gemm_fraction(midsize_config(), peak, impl=i) for i in args.gemm_impls}
        fraction = engine_fraction(steps)
        report["gemm"] = {"config": "mid", "config_description": midsize_config.__doc__.split("\n\n")[0],
                          "gemm_peak": peak, "steps": steps, **fraction}
        report["gemm_peak_fraction"] = fraction["gemm_peak_fraction"]
    if "ladder" in args.what:
        report["ladder"] = _ladder_from_args(args)
    emit(report, args.out)
    return 0


def _ladder_from_args(args) -> dict:
    from hallo_rt.benchmarks.stream_bench import synthetic_portrait, synthetic_speech
    from hallo_rt.engine.pipeline import load_pipeline
    from hallo_rt.runtime.media import read_audio, read_image

    pipeline, extractor = load_pipeline(args.model)
    audio = synthetic_speech(4.0) if args.audio is None else read_audio(args.audio)
    image = synthetic_portrait() if args.image is None else read_image(args.image)
    return speedup_ladder(pipeline, extractor, image, audio, backend=args.ladder_backend, progress=True)


if __name__ == "__main__":
    raise SystemExit(main())
