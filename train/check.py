"""Where lip sync is lost: the VAE's ceiling, the denoiser on true motion, the denoiser on its own outputs.

    python -m hallo_rt.train.check --vae runs/vae [--denoiser runs/denoiser] [--steps 8] [--clips 2]

On held-out clips, the mouth opening measured in three sets of frames is correlated with the ground truth
(Pearson r, pooled over the clips, as `benchmarks.lipsync` does):
  * `vae`: the clip encoded and decoded, 2 latent frames at a time (what any denoiser can reach at best);
  * `teacher_forced`: every 2-latent chunk sampled with the clip's true previous latent frame as its motion;
  * `rolled_out`: the same, each chunk on the previous chunk's own last latent frame (as a stream runs).
For the denoiser, it also reports each chunk's latent MSE against the clip's own latents (mean over clips):
flat when teacher-forced; growing chunk after chunk when rolled out means the stream drifts.
A low `vae` means train the VAE longer; `teacher_forced` far below `vae`, the denoiser does not draw the
mouth from the audio; `rolled_out` far below `teacher_forced`, its outputs drift from what it was trained on.
The chunks run the training-side modules with DDIM (`--steps`, no CFG) in the engine's arithmetic; each motion
latent is anchored toward the portrait as the denoiser was trained to stream (`--motion-anchor` overrides).
Prints a JSON report (also written with `--out FILE`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..engine.sampling import Conditioning, SamplerConfig, sample
from .demo import CONTEXT_FRAMES
from .loop import load_stage_modules, stage_settings
from .stream_features import chunk_features
from .train_denoiser import ChunkExamples, DemoAvatar, encode_frames, first_chunk_latent, load_vae

CHUNK = 2


def sample_chunk(model: DemoAvatar, steps: int, motion: torch.Tensor, reference: torch.Tensor, features,
                 generator: torch.Generator) -> torch.Tensor:
    """One chunk's CHUNK latent frames (F, C, h, w) from noise: the engine's sampler, DDIM without guidance."""
    blank = ChunkExamples({"latents": []})
    concat = torch.zeros(1, CHUNK, *motion.shape)
    concat[0, 0] = motion
    cond = Conditioning(concat, blank.text, audio=features, face=blank.face,
                        ref_bank=model.reference_net(reference[None, None]))
    return sample(model.dit, cond, SamplerConfig(kind="ddim", steps=steps, cfg_scale=1.0), generator=generator)[0]


def trained_anchor(folder: Path) -> float:
    """The motion_anchor a denoiser (or distill round) folder was trained with (0 when none)."""
    return float(stage_settings(folder).get("motion_anchor", 0.0))


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """(L, C, h, w) scaled latents -> (4L, H, W, 3) uint8, CHUNK latent frames per decode."""
    s = vae.config.scaling_factor
    pieces = [vae.decode(latents[i:i + CHUNK].permute(1, 0, 2, 3)[None] / s) for i in range(0, len(latents), CHUNK)]
    frames = torch.cat(pieces, dim=2)[0].permute(1, 2, 3, 0)
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@torch.no_grad()
def check(vae_folder: Path, denoiser_folder: Path | None, steps: int, clips: int, seconds: float,
          motion_noise: float = 0.0, motion_anchor: float = 0.0) -> dict:
    from ..benchmarks.lipsync import measured_openings, pearson
    from .clip_cache import dataset, reference_portrait

    vae = load_vae(vae_folder)
    s = vae.config.scaling_factor
    model = None
    if denoiser_folder is not None:
        model = DemoAvatar(0)
        model.load_state_dict(load_stage_modules(denoiser_folder, "denoiser")["model"])
        model.eval()
    data = dataset("heldout", clip_seconds=seconds)
    measured: dict[str, list] = {"vae": [], "teacher_forced": [], "rolled_out": []}
    truth: list[np.ndarray] = []
    errors: dict[str, list] = {"teacher_forced": [], "rolled_out": []}
    for c in range(clips):
        clip = data[c]
        latents = encode_frames(vae, clip.frames)
        outputs = {"vae": latents}
        if model is not None:
            portrait = torch.from_numpy(reference_portrait(clip.identity)).permute(2, 0, 1).float() / 127.5 - 1.0
            reference = vae.encode(portrait[None, :, None], sample=False)[0, :, 0] * s
            anchor = first_chunk_latent(vae, portrait, torch.Generator().manual_seed(c))
            audio = np.pad(clip.audio, (0, 16000))  # the lookahead past the clip's end is silence
            forced, rolled = [latents[:1]], [latents[:1]]
            for j in range(1, len(latents) - CHUNK + 1, CHUNK):
                features = chunk_features(model.audio, [audio], [4 * j], 4 * CHUNK, context=CONTEXT_FRAMES)
                g = torch.Generator().manual_seed(10_000 + j)
                noise = motion_noise * torch.randn(latents[j - 1].shape, generator=g)
                a = motion_anchor  # as LatentMotion carries a latent: anchored, then noised
                forced.append(sample_chunk(model, steps, (1 - a) * latents[j - 1] + a * anchor + noise, reference,
                                           features, torch.Generator().manual_seed(j)))
                rolled.append(sample_chunk(model, steps, (1 - a) * rolled[-1][-1] + a * anchor + noise, reference,
                                           features, torch.Generator().manual_seed(j)))
            outputs["teacher_forced"], outputs["rolled_out"] = torch.cat(forced), torch.cat(rolled)
            for k in ("teacher_forced", "rolled_out"):  # per chunk: how far the latents are from the clip's own
                errors[k].append([float((outputs[k][i:i + CHUNK] - latents[i:i + CHUNK]).pow(2).mean())
                                  for i in range(1, len(outputs[k]) - CHUNK + 1, CHUNK)])
        frames = {k: decode(vae, v[: len(v) // CHUNK * CHUNK]) for k, v in outputs.items()}
        count = min(len(f) for f in frames.values())
        truth.append(clip.opening[:count])
        for k, f in frames.items():
            measured[k].append(measured_openings(f[:count], clip.identity))
    pooled = np.concatenate(truth)
    report = {"vae": str(vae_folder), "denoiser": str(denoiser_folder) if denoiser_folder else None,
              "steps": steps, "motion_noise": motion_noise, "motion_anchor": motion_anchor,
              "clips": clips, "seconds": seconds, "frames": int(pooled.size)}
    for k, m in measured.items():
        if m:
            report[f"lipsync_r_{k}"] = pearson(np.concatenate(m), pooled)
    for k, e in errors.items():
        if e:  # the mean over clips of each chunk's latent MSE: flat when teacher-forced, growing when drifting
            report[f"latent_mse_by_chunk_{k}"] = [round(float(v), 4) for v in np.mean(e, axis=0)]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", type=Path, default=Path("runs/vae"), help="stage 1's folder")
    parser.add_argument("--denoiser", type=Path, default=None, help="stage 2's (or a distill round's) folder")
    parser.add_argument("--steps", type=int, default=8, help="DDIM steps per chunk (default 8)")
    parser.add_argument("--clips", type=int, default=2, help="held-out clips (default 2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per clip (default 3)")
    parser.add_argument("--motion-noise", type=float, default=0.0,
                        help="std of the noise added to each chunk's motion latent (default 0)")
    parser.add_argument("--motion-anchor", type=float, default=None,
                        help="blend of each motion latent toward the portrait's (ChunkSettings.motion_anchor; "
                             "default: what the denoiser was trained with)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.clips < 1 or args.seconds < 1:
        parser.error("--steps and --clips must be >= 1 and --seconds >= 1")
    anchor = args.motion_anchor
    if anchor is None:
        anchor = trained_anchor(args.denoiser) if args.denoiser is not None else 0.0
    if not 0 <= anchor < 1:
        parser.error("--motion-anchor must be in [0, 1)")
    report = check(args.vae, args.denoiser, args.steps, args.clips, args.seconds, args.motion_noise, anchor)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
