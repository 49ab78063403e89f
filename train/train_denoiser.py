"""Stage 2: train the demo avatar's denoiser, reference network and audio encoder for streaming.

    python -m hallo_rt.train.train_denoiser --vae runs/vae --clips runs/clips --out runs/denoiser

The training clips (`clip_cache`, rendered once) are encoded with the stage-1 VAE into latents, 8 frames
(two latent frames) at a time, as the VAE was trained. A training example is one chunk of a stream, exactly
as `engine.chunks.LatentMotion` conditions it at run time:
  * the chunk's target latents: 2 latent frames most of the time (the runtime's chunk), else 1 or 3;
  * the conditioning latent: for a stream's first chunk, the reference portrait encoded with two
    pixel-dropout copies of itself (`ChunkedGenerator.conditioning_latent`); later, the previous latent
    frame (jittered with a little noise, so the model tolerates its own imperfect outputs; with --motion-anchor
    blended toward the first-chunk latent, as `ChunkSettings.motion_anchor` does at run time) then zeros;
  * the reference bank of the portrait's latent, through the reference network;
  * the chunk's audio features computed as the streaming runtime computes them (`stream_features`), through
    the audio encoder trained here from scratch; zero face and text inputs (the demo has neither).
The loss is Hallo3's v-prediction objective on the zero-terminal-SNR schedule, weighted 12x on the latent
cells covering the mouth, plus a training-only head that reads each frame's ground-truth mouth opening off
its audio features (so the audio encoder learns loudness-like features before the denoiser looks for them;
it is not shipped). Resumes from `--out`'s checkpoint; deterministic given `--seed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine.dit import HalloDiT
from ..engine.reference import ReferenceNet, reference_config
from ..engine.sampling import SamplerConfig, make_schedule
from ..engine.vae import CogVideoXVae
from ..engine.wav2vec2 import Wav2Vec2Model
from ..engine.weights.common import seeded_init_
from .demo import AUDIO_DEMO, CHUNK_LATENTS, CONTEXT_FRAMES, DIT_DEMO, VAE_DEMO
from .loop import (Stage, TrainingError, add_common_args, load_stage_modules, stage_settings, step_generator,
                   step_rng)
from .stream_features import chunk_features, needed_samples

MOUTH_WEIGHT = 12.0
OPENING_WEIGHT = 1.0
MASK_RATE = 0.1  # ChunkSettings.mask_rate: pixel dropout of the first chunk's motion frames
CHUNK_CHOICES = (1, 2, 3)
CHUNK_PROBS = (0.2, 0.6, 0.2)
FIRST_CHUNK_SHARE = 0.25
MOTION_JITTER = 0.25


class DemoAvatar(nn.Module):
    """The trainable parts: denoiser, reference network and audio encoder."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.dit = seeded_init_(HalloDiT(DIT_DEMO), seed)
        self.reference_net = seeded_init_(ReferenceNet(reference_config(DIT_DEMO)), seed + 1)
        self.audio = seeded_init_(Wav2Vec2Model(AUDIO_DEMO), seed + 2)
        # training only (never shipped): reads the mouth opening off each frame's audio features, so the audio
        # encoder learns loudness-like features early, before the denoiser has learned to look for them
        width = DIT_DEMO.audio_window * DIT_DEMO.audio_layers * DIT_DEMO.audio_dim
        self.opening_head = seeded_init_(nn.Linear(width, 1), seed + 3)


def load_vae(folder: Path) -> CogVideoXVae:
    vae = CogVideoXVae(VAE_DEMO)
    vae.load_state_dict(load_stage_modules(folder, "VAE")["vae"])
    return vae.eval().requires_grad_(False)


def mouth_cells(boxes: np.ndarray, latent_size: int, scale: int) -> np.ndarray:
    """(L, h, w) float32 in {0, 1}: the latent cells any of a latent frame's 4 mouth boxes touches (+1 cell)."""
    frames = boxes.shape[0] // 4 * 4
    cells = np.zeros((frames // 4, latent_size, latent_size), np.float32)
    for t in range(frames):
        x0, y0, x1, y1 = boxes[t]
        cells[t // 4, max(y0 // scale - 1, 0):y1 // scale + 2, max(x0 // scale - 1, 0):x1 // scale + 2] = 1.0
    return cells


@torch.no_grad()
def encode_frames(vae: CogVideoXVae, frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> scaled posterior-mean latents (L, C, h, w), 8 frames (two latent frames) at a
    time, as the VAE was trained; a last partial group of frames is dropped."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, T, H, W)
    usable = video.shape[1] // 8 * 8
    pieces = video[:, :usable].unflatten(1, (usable // 8, 8)).permute(1, 0, 2, 3, 4)  # (n, 3, 8, H, W)
    latents = torch.cat([vae.encode(p, sample=False) for p in pieces.split(8)])  # (n, C, 2, h, w)
    return latents.permute(0, 2, 1, 3, 4).flatten(0, 1) * vae.config.scaling_factor


def first_chunk_latent(vae: CogVideoXVae, portrait: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(C, h, w): a stream's first conditioning latent frame as `ChunkedGenerator` encodes it, from a portrait
    (3, H, W) in [-1, 1]: the portrait and two pixel-dropout copies of it, a posterior sample, scaled. It is
    also what `LatentMotion` anchors the carried latents toward."""
    image = portrait[None, :, None]  # (1, 3, 1, H, W)
    keep = (torch.rand(portrait.shape[-2:], generator=generator) > MASK_RATE).float()
    latent = vae.encode(torch.cat([image, image * keep, image * keep], dim=2), generator=generator)
    return latent[0, :, 0] * vae.config.scaling_factor


@torch.no_grad()
def encode_clips(vae: CogVideoXVae, clip_files: list[Path], seed: int) -> dict:
    """Latents of every clip (8 frames at a time, posterior means, scaled), its portrait's reference latent
    and first-chunk conditioning latent (posterior samples, as the runtime draws them), audio, mouth cells."""
    s = vae.config.scaling_factor
    out = {"latents": [], "reference": [], "first": [], "audio": [], "mouth": [], "opening": []}
    for i, path in enumerate(tqdm(clip_files, desc="encoding clips", unit="clip", dynamic_ncols=True)):
        data = np.load(path)
        latents = encode_frames(vae, data["frames"]).half()  # (L, C, h, w)
        g = torch.Generator().manual_seed(seed * 100003 + i)
        portrait = torch.from_numpy(data["reference"]).permute(2, 0, 1).float()[None, :, None] / 127.5 - 1.0
        reference = vae.encode(portrait, generator=g) * s  # (1, C, 1, h, w)
        first = first_chunk_latent(vae, portrait[0, :, 0], g)  # the same generator, after the reference
        out["latents"].append(latents)
        out["reference"].append(reference[0, :, 0].half())
        out["first"].append(first.half())
        out["audio"].append(data["audio"])
        out["mouth"].append(torch.from_numpy(mouth_cells(data["boxes"], latents.shape[-1],
                                                          vae.config.spatial_compression)))
        out["opening"].append(data["opening"])
    return out


def load_or_encode(args, vae: CogVideoXVae) -> dict:
    cache = args.out / "encoded.pt"
    files = sorted(Path(args.clips).glob("clip_*.npz"))[: args.clip_count]
    if len(files) < args.clip_count:
        raise TrainingError(f"{args.clips} holds {len(files)} clips, {args.clip_count} wanted: run "
                            f"python -m hallo_rt.train.clip_cache --out {args.clips} --clips {args.clip_count}")
    scale = vae.config.scaling_factor
    if cache.is_file():
        data = torch.load(cache, weights_only=False)
        if data.get("files") == [f.name for f in files]:
            # latents are stored scaled: a cache made with another scaling factor is rescaled, not re-encoded
            ratio = scale / data.get("scaling_factor", 0.7)
            if ratio != 1.0:
                for key in ("latents", "reference", "first"):
                    data[key] = [(t.float() * ratio).half() for t in data[key]]
                data["scaling_factor"] = scale
            return data
    data = encode_clips(vae, files, args.seed)
    data["files"], data["scaling_factor"] = [f.name for f in files], scale
    torch.save(data, cache)
    return data


def padded(audios: list[np.ndarray], starts: list[int], frames: int) -> list[np.ndarray]:
    """Each clip's audio with silence past its end, long enough for `frames` features from every start."""
    need = max(needed_samples(s + frames) for s in starts)
    return [np.pad(a, (0, max(0, need - a.size))) for a in audios]


class ChunkExamples:
    """Draws a batch of stream chunks (see the module docstring) for a step, from the step's own generator."""

    def __init__(self, data: dict, config=DIT_DEMO, motion_jitter: float = MOTION_JITTER,
                 motion_anchor: float = 0.0) -> None:
        self.data, self.config, self.motion_jitter, self.motion_anchor = data, config, motion_jitter, motion_anchor
        self.text = torch.zeros(1, config.text_len, config.text_dim)
        self.face = torch.zeros(1, config.face_embed_dim)

    def draw(self, rng: np.random.Generator, batch: int, generator: torch.Generator, first_share=FIRST_CHUNK_SHARE):
        d = self.data
        first = rng.random() < first_share
        n = int(rng.choice((2,))) if first else int(rng.choice(CHUNK_CHOICES, p=CHUNK_PROBS))
        clips = rng.integers(0, len(d["latents"]), batch)
        targets, concats, refs, audios, starts, weights, openings = [], [], [], [], [], [], []
        for c in clips:
            latents, audio = d["latents"][c].float(), d["audio"][c]
            usable = min(latents.shape[0], (audio.size // 640 - 12) // 4)  # lookahead must exist
            j = 0 if first else int(rng.integers(1, usable - n + 1))
            target = latents[j:j + n]
            concat = torch.zeros_like(target)
            if first:
                concat[0] = d["first"][c].float()
            else:
                jitter = self.motion_jitter * float(rng.random())
                noise = jitter * torch.randn(latents[j - 1].shape, generator=generator)
                concat[0] = self.anchored(latents[j - 1] + noise, int(c))
            targets.append(target)
            concats.append(concat)
            refs.append(d["reference"][c].float())
            audios.append(audio)
            starts.append(4 * j)
            weights.append(1.0 + (MOUTH_WEIGHT - 1.0) * d["mouth"][c][j:j + n])
            openings.append(torch.from_numpy(np.asarray(d["opening"][c][4 * j:4 * j + 4 * n], np.float32)))
        self.picks = [(int(c), s // 4) for c, s in zip(clips, starts)]  # (clip, first target latent j)
        self.first = first
        audios = padded(audios, starts, 4 * n)
        self.openings = torch.stack(openings)  # (B, 4n): the chunk's ground-truth mouth opening per frame
        return (torch.stack(targets), torch.stack(concats), torch.stack(refs)[:, None], audios, starts, n,
                torch.stack(weights)[:, :, None])

    def anchored(self, motion: torch.Tensor, clip: int) -> torch.Tensor:
        """A later chunk's motion latent as `LatentMotion` carries it with `ChunkSettings.motion_anchor`:
        blended toward the clip's first-chunk conditioning latent (the portrait's)."""
        a = self.motion_anchor
        return motion if a == 0 else (1.0 - a) * motion + a * self.data["first"][clip].float()


class OwnMotion:
    """Motion latents the model draws itself, as a stream feeds them back (in the spirit of self-forcing).

    A denoiser trained only on true previous latents copies the small errors of its own, chunk after chunk,
    until the face turns to blocks. Here, for a share of the later chunks, a frozen sampler model (the current
    distilled student, with its step count) draws the two latent frames before the target the way a stream
    does: one chunk from noise, conditioned on the true latent before it, with its audio. Its last frame, with
    the same jitter the true one would have had, becomes the target chunk's motion latent."""

    def __init__(self, sampler: DemoAvatar, steps: int, share: float) -> None:
        self.sampler, self.steps, self.share = sampler.eval().requires_grad_(False), steps, share

    @torch.no_grad()
    def apply(self, examples: ChunkExamples, concat: torch.Tensor, rng: np.random.Generator,
              generator: torch.Generator) -> int:
        """Replaces concat[b, 0] for the picked rows in place; returns how many were replaced."""
        from ..engine.sampling import Conditioning, sample

        if examples.first:
            return 0
        d, chunk = examples.data, CHUNK_LATENTS
        rows = [b for b, (c, j) in enumerate(examples.picks) if j > chunk and rng.random() < self.share]
        if not rows:
            return 0
        picks = [examples.picks[b] for b in rows]
        motion = torch.zeros(len(rows), chunk, *concat.shape[2:])
        motion[:, 0] = torch.stack([examples.anchored(d["latents"][c][j - chunk - 1].float(), c) for c, j in picks])
        starts = [4 * (j - chunk) for _, j in picks]
        audios = padded([d["audio"][c] for c, _ in picks], starts, 4 * chunk)
        features = chunk_features(self.sampler.audio, audios, starts, 4 * chunk, context=CONTEXT_FRAMES)
        refs = torch.stack([d["reference"][c].float() for c, _ in picks])[:, None]
        n = len(rows)
        cond = Conditioning(motion, examples.text.expand(n, -1, -1), audio=features,
                            face=examples.face.expand(n, -1), ref_bank=self.sampler.reference_net(refs))
        drawn = sample(self.sampler.dit, cond, SamplerConfig(kind="ddim", steps=self.steps, cfg_scale=1.0),
                       generator=generator)[:, -1]
        for i, (b, (c, j)) in enumerate(zip(rows, picks)):
            # concat[b, 0] is anchored(true + jitter): keep the jitter, swap the true latent for the drawn one
            concat[b, 0] = concat[b, 0] + (1.0 - examples.motion_anchor) * (drawn[i] - d["latents"][c][j - 1].float())
        return len(rows)


def own_motion(folder: Path, share: float) -> OwnMotion:
    """OwnMotion drawing with the distilled student in `folder` (a distill round), at its step count."""
    sampler = DemoAvatar()
    sampler.load_state_dict(load_stage_modules(folder, "distilled")["model"])
    settings = stage_settings(folder)
    return OwnMotion(sampler, int(settings["student_steps"]), share)


def predict_v(model: DemoAvatar, x_t, concat, ref, audio_features, timesteps, text, face):
    bank = model.reference_net(ref)
    B = x_t.shape[0]
    return model.dit(torch.cat([x_t, concat], dim=2), timesteps, text.expand(B, -1, -1), audio_features,
                     face.expand(B, -1), bank)


def v_loss(model: DemoAvatar, examples: ChunkExamples, rng, generator, batch: int, table: torch.Tensor,
           own: OwnMotion | None = None) -> dict:
    x0, concat, ref, audios, starts, n, weight = examples.draw(rng, batch, generator)
    own_rows = own.apply(examples, concat, rng, generator) if own is not None else 0
    features = chunk_features(model.audio, audios, starts, 4 * n, context=CONTEXT_FRAMES)
    t = torch.from_numpy(rng.integers(0, 1000, batch))
    a = table[t].view(-1, 1, 1, 1, 1)
    sigma = (1 - a * a).clamp_min(0).sqrt()
    eps = torch.randn(x0.shape, generator=generator)
    x_t = a * x0 + sigma * eps
    v = a * eps - sigma * x0
    pred = predict_v(model, x_t, concat, ref, features, t, examples.text, examples.face)
    err = (pred.float() - v).pow(2) * weight
    v_loss_value = err.sum() / (weight.sum() * x0.shape[2])
    opening = model.opening_head(features.flatten(2))[..., 0]  # (B, 4n)
    opening_loss = (opening - examples.openings).pow(2).mean()
    loss = v_loss_value + OPENING_WEIGHT * opening_loss
    loss.backward()
    x0_err = ((a * x_t - sigma * pred.detach() - x0).pow(2) * weight).sum() / (weight.sum() * x0.shape[2])
    return {"loss": loss.item(), "v_loss": v_loss_value.item(), "opening_mse": opening_loss.item(),
            "x0_mse": x0_err.item(), "chunk": float(n), **({"own_motion": float(own_rows)} if own else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.train_denoiser",
                                     description=__doc__.split("\n\n")[0])
    add_common_args(parser, steps=4000, lr=6e-4)
    parser.add_argument("--vae", type=Path, default=Path("runs/vae"), help="stage 1's folder")
    parser.add_argument("--clips", type=Path, default=Path("runs/clips"), help="the clip_cache folder")
    parser.add_argument("--clip-count", type=int, default=320, help="training clips used (default 320)")
    parser.add_argument("--batch", type=int, default=8, help="chunks per step (default 8)")
    parser.add_argument("--motion-jitter", type=float, default=MOTION_JITTER,
                        help="noise added to the previous latent frame, std drawn uniformly in [0, this] "
                             f"(default {MOTION_JITTER})")
    parser.add_argument("--motion-anchor", type=float, default=0.0,
                        help="blend every later chunk's motion latent this far toward the portrait's first-chunk "
                             "latent, as ChunkSettings.motion_anchor does at run time; bounds a stream's drift "
                             "(default 0)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from a finished denoiser stage's weights (fine-tuning) instead of seeded ones")
    parser.add_argument("--own-motion", type=Path, default=None,
                        help="a distilled stage folder whose model draws the motion latents of a share of the "
                             "chunks (see OwnMotion); its DDIM steps are read from the folder")
    parser.add_argument("--own-motion-share", type=float, default=0.5,
                        help="share of the later chunks conditioned on drawn motion (default 0.5)")
    args = parser.parse_args(argv)
    if args.motion_jitter < 0:
        parser.error("--motion-jitter must be >= 0")
    if not 0 <= args.motion_anchor < 1:
        parser.error("--motion-anchor must be in [0, 1)")
    if not 0 < args.own_motion_share <= 1:
        parser.error("--own-motion-share must be in (0, 1]")
    model = DemoAvatar(args.seed)
    if args.init is not None:
        model.load_state_dict(load_stage_modules(args.init, "denoiser")["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    stage = Stage.open(args, {"stage": "denoiser", "dit": DIT_DEMO.to_dict(), "audio": AUDIO_DEMO.to_dict(),
                              "clip_count": args.clip_count, "batch": args.batch, "context_frames": CONTEXT_FRAMES,
                              "mouth_weight": MOUTH_WEIGHT, "opening_weight": OPENING_WEIGHT,
                              "motion_jitter": args.motion_jitter, "init": str(args.init) if args.init else None,
                              **({"own_motion": str(args.own_motion), "own_motion_share": args.own_motion_share}
                                 if args.own_motion else {}),
                              **({"motion_anchor": args.motion_anchor} if args.motion_anchor else {})},
                       {"model": model}, optimizer, warmup=100)
    data = load_or_encode(args, load_vae(args.vae))
    examples = ChunkExamples(data, motion_jitter=args.motion_jitter, motion_anchor=args.motion_anchor)
    table = make_schedule(SamplerConfig(steps=1)).table
    own = own_motion(args.own_motion, args.own_motion_share) if args.own_motion is not None else None

    def step(k: int) -> dict:
        return v_loss(model, examples, step_rng(args.seed, k), step_generator(args.seed, k), args.batch, table, own)

    losses = stage.run(step, "denoiser")
    stage.finish({"final": losses[-1] if losses else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
