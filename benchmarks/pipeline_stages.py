"""Per-stage cost of one offline clip (the main job's unit of work) for a preset, default `tiny`.

    .venv/bin/python benchmarks/pipeline_stages.py [--model tiny] [--steps 50] [--repeats 3] [--out FILE]

Stages, each timed on its own after one warm-up: audio features for the example speech, the reference
bank, the conditioning latent (VAE encode of 3 frames), the sampling loop (CFG), and the VAE decode of one
13-latent-frame clip with the reference grouping. Writes JSON with medians, machine and versions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hallo_rt.benchmarks.environment import emit, machine, versions

from hallo_rt import __version__
from hallo_rt.engine.chunks import ChunkedGenerator, ChunkSettings
from hallo_rt.engine.pipeline import load_pipeline
from hallo_rt.engine.reference_image import prepare_reference
from hallo_rt.engine.sampling import Conditioning, SamplerConfig, sample
from hallo_rt.runtime.media import read_audio, read_image


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    pipeline, extractor = load_pipeline(args.model)
    cfg, vae = pipeline.dit.config, pipeline.vae
    waveform = read_audio("examples/speech.wav")
    reference = prepare_reference(read_image("examples/portrait.jpg"), *pipeline.clip_size)
    g = torch.Generator().manual_seed(0)
    stages = {}
    stages["audio_features_s"], features = timed(lambda: extractor(waveform, clip_length=pipeline.clip_frames),
                                                 args.repeats)
    stream = ChunkedGenerator(pipeline, reference, torch.zeros(cfg.face_embed_dim),
                              torch.zeros(cfg.text_len, cfg.text_dim), ChunkSettings(chunk_latents=cfg.latent_frames))
    motion = stream.image[:, :, None].expand(-1, -1, 2, -1, -1)
    stages["conditioning_latent_s"], concat = timed(lambda: stream.conditioning_latent(motion), args.repeats)
    ref_latent = pipeline.encode(reference.face_image[:, :, None], g)
    stages["reference_bank_s"], bank = timed(lambda: pipeline.reference_net(ref_latent), args.repeats)
    cond = Conditioning(concat_latent=concat, text_embeds=torch.zeros(1, cfg.text_len, cfg.text_dim),
                        audio=features[None, :pipeline.clip_frames], face=torch.zeros(1, cfg.face_embed_dim),
                        ref_bank=bank)
    sampler = SamplerConfig(steps=args.steps)
    stages["sampling_s"], latents = timed(lambda: sample(pipeline.dit, cond, sampler, generator=g), args.repeats)
    z = latents.permute(0, 2, 1, 3, 4) * (1.0 / vae.config.scaling_factor)
    stages["vae_decode_s"], frames = timed(lambda: vae.decode(z), args.repeats)
    clip_s = sum(v for k, v in stages.items() if k != "audio_features_s")
    new_frames = pipeline.clip_frames - 2
    report = {
        "benchmark": "pipeline_stages", "hallo_rt": __version__, "model": args.model,
        "config_hash": cfg.compute_hash()[:16], "vae_config_hash": vae.config.compute_hash()[:16],
        "backend_used": "torch eager", "device": "cpu", "dtype": "fp32", "threads": torch.get_num_threads(),
        "steps": args.steps, "cfg_scale": sampler.cfg_scale, "clip": f"{pipeline.clip_frames} frames "
        f"{pipeline.clip_size[0]}x{pipeline.clip_size[1]}, {new_frames} new", "repeats": args.repeats,
        "stages_median": {k: round(v, 4) for k, v in stages.items()},
        "clip_s": round(clip_s, 4), "video_s_per_clip": new_frames / 25,
        "realtime_factor_per_clip": round(new_frames / 25 / clip_s, 4),
        "machine": machine(),
        "versions": versions(),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
