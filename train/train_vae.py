"""Stage 1: train the demo avatar's 3D causal VAE on synthetic faces.

    python -m hallo_rt.train.train_vae --out runs/vae

The VAE is `demo.VAE_DEMO` (the `tiny` topology with three levels, both temporal, widths 8-16-32) and
learns to reconstruct 8-frame sequences (two latent frames, decoded as one group: what a stream of 2-latent
chunks decodes) of training-split people with moving mouths, blinks and head sway. The loss is the L1 error of
the decoded posterior means, weighted 8x more inside the mouth box (the part lip sync is read from), a small
penalty on the means' size, and one that drives the posterior variance to zero. Whole 128 x 128 frames
(`--crop S` trains the first 75% of the steps on S x S crops, half of them around the mouth: faster steps,
but the group norms then see other statistics than whole frames give them). Resumes from `--out`'s
checkpoint; deterministic.

`--decoder-only --on-denoiser FOLDER` also trains the decoder, step for step, on what the denoiser in FOLDER
draws for chunks of the training clips, against their true frames (`denoised_pairs.py`): the decoder then
learns to render the denoiser's outputs, errors included, as clean faces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.vae import CausalState, CogVideoXVae
from .dataset import HELDOUT_IDENTITIES, identity_for_index
from .demo import DATA_SEED, TRAIN_IDENTITIES, VAE_DEMO
from .faces import MouthState, Pose, mouth_box, random_poses, render
from .denoised_pairs import load_or_draw, pair_batch
from .loop import Stage, add_common_args, load_stage_modules, step_rng

SEQUENCE_FRAMES = 8
MOUTH_WEIGHT = 8.0
KL_WEIGHT = 1e-6
VARIANCE_WEIGHT = 0.05


def random_mouth(rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like opening and width tracks: a few random key values, linearly joined, some held closed."""
    keys = np.linspace(0, frames - 1, int(rng.integers(2, 5)))
    opening = np.interp(np.arange(frames), keys, rng.uniform(-0.3, 1.0, keys.size)).clip(0.0, 1.0)
    width = np.interp(np.arange(frames), keys, rng.uniform(0.15, 0.85, keys.size))
    return opening, width


def render_sequence(seed: int, index: int, frames: int = SEQUENCE_FRAMES, size: int = 128):
    """Sequence `index` of the VAE's pool: (frames, size, size, 3) uint8 and its (frames, 4) mouth boxes."""
    rng = np.random.default_rng([seed, 11, index])
    identity = identity_for_index(seed, HELDOUT_IDENTITIES + int(rng.integers(TRAIN_IDENTITIES)))
    opening, width = random_mouth(rng, frames)
    start = int(rng.integers(0, 100))
    poses = random_poses(rng, start + frames, motion_px=2.5 * size / 128)[start:]
    if rng.random() < 0.25:  # more blinks than 8 frames of natural timing would show
        lid = np.sin(np.linspace(0, np.pi, frames)) * rng.uniform(0.5, 1.0)
        poses = [Pose(p.dx, p.dy, p.rotation, float(max(p.blink, b))) for p, b in zip(poses, lid)]
    video = np.stack([render(identity, MouthState(float(o), float(w)), p, size)
                      for o, w, p in zip(opening, width, poses)])
    boxes = np.array([mouth_box(identity, p, size) for p in poses], np.int64)
    return video, boxes


def build_pool(seed: int, sequences: int) -> tuple[np.ndarray, np.ndarray]:
    videos, boxes = [], []
    for i in tqdm(range(sequences), desc="rendering VAE sequences", unit="seq", dynamic_ncols=True):
        v, b = render_sequence(seed, i)
        videos.append(v)
        boxes.append(b)
    return np.stack(videos), np.stack(boxes)


def make_batch(pool, boxes, rng: np.random.Generator, batch: int, crop: int | None, mouth_weight=MOUTH_WEIGHT):
    """(frames (B, 3, T, S, S) in [-1, 1], loss weights (B, 1, T, S, S)) from the pool."""
    picks = rng.integers(0, pool.shape[0], batch)
    size = pool.shape[2]
    frames, weights = [], []
    for i in picks:
        video, box = pool[i], boxes[i]
        weight = np.ones(video.shape[:3], np.float32)
        for t, (x0, y0, x1, y1) in enumerate(box):
            weight[t, y0:y1, x0:x1] = mouth_weight
        if crop is not None:
            if rng.random() < 0.5:  # around the mouth
                cx, cy = (box[:, 0].min() + box[:, 2].max()) // 2, (box[:, 1].min() + box[:, 3].max()) // 2
                x = int(np.clip(cx - crop // 2 + rng.integers(-12, 13), 0, size - crop))
                y = int(np.clip(cy - crop // 2 + rng.integers(-12, 13), 0, size - crop))
            else:
                x, y = (int(v) for v in rng.integers(0, size - crop + 1, 2))
            video, weight = video[:, y:y + crop, x:x + crop], weight[:, y:y + crop, x:x + crop]
        frames.append(video)
        weights.append(weight)
    x = torch.from_numpy(np.stack(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    w = torch.from_numpy(np.stack(weights))[:, None]
    return x, w


def vae_loss(vae: CogVideoXVae, x: torch.Tensor, w: torch.Tensor, decoder_only: bool = False) -> dict:
    with torch.set_grad_enabled(not decoder_only):
        moments = vae.encoder(x)
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    # the decoder learns from the posterior means (noise of the initial unit variance drowns the few latent
    # values that carry the mouth), while the variance is driven towards zero: posterior samples, which the
    # runtime draws for its conditioning latents, then equal the means to within a fraction of a percent
    y = vae.decoder(mean, CausalState())
    l1 = ((y - x).abs() * w).sum() / (w.sum() * 3)
    kl = 0.5 * mean.pow(2).mean()
    variance = logvar.exp().mean()
    loss = l1 + KL_WEIGHT * kl * mean[0].numel() + VARIANCE_WEIGHT * variance
    loss.backward()
    return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "posterior_var": variance.item(),
            "latent_std": mean.detach().std().item()}


def pair_loss(vae: CogVideoXVae, latents: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> dict:
    """The decoder's weighted L1 error on denoised latents against the chunk's true frames (backpropagated)."""
    y = vae.decoder(latents, CausalState())
    l1 = ((y - x).abs() * w).sum() / (w.sum() * 3)
    l1.backward()
    return {"pair_l1": l1.item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.train_vae", description=__doc__.split("\n\n")[0])
    add_common_args(parser, steps=2500, lr=1.5e-3)
    parser.add_argument("--pool", type=int, default=1200, help="rendered 8-frame sequences (default 1200)")
    parser.add_argument("--crop", type=int, default=0,
                        help="train the first 75%% of steps on crops of this size (default 0: whole frames)")
    parser.add_argument("--mouth-weight", type=float, default=MOUTH_WEIGHT,
                        help=f"loss weight inside the mouth box (default {MOUTH_WEIGHT:g})")
    parser.add_argument("--init", type=Path, default=None, help="start from a finished VAE stage's weights")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train the decoder alone (with --init): the encoder, so the latents a denoiser was "
                             "trained on, stay exactly as they are")
    parser.add_argument("--on-denoiser", type=Path, default=None,
                        help="with --decoder-only: also train on what this denoiser stage or distill round draws "
                             "(see denoised_pairs.py)")
    parser.add_argument("--latents", type=Path, default=Path("runs/denoiser"),
                        help="the denoiser stage folder whose encoded.pt holds the training clips' latents "
                             "(encoded there if missing; default runs/denoiser)")
    parser.add_argument("--clips", type=Path, default=Path("runs/clips"), help="the clip_cache folder")
    parser.add_argument("--clip-count", type=int, default=320, help="training clips used (default 320)")
    parser.add_argument("--pairs", type=int, default=800, help="denoised chunks drawn once (default 800)")
    args = parser.parse_args(argv)
    if args.on_denoiser is not None and not args.decoder_only:
        parser.error("--on-denoiser needs --decoder-only (the encoder, so the denoiser's latents, must stay)")
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if args.decoder_only and args.init is None:
        parser.error("--decoder-only needs --init (a trained encoder to keep)")
    if args.mouth_weight < 1:
        parser.error("--mouth-weight must be >= 1")
    torch.manual_seed(args.seed)
    vae = CogVideoXVae(VAE_DEMO)
    if args.init is not None:
        vae.load_state_dict(load_stage_modules(args.init, "VAE")["vae"])
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
    trained = vae.decoder if args.decoder_only else vae
    optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    # the latent scale is the denoiser's concern (its data's variance), not this stage's: leaving it out lets a
    # VAE trained under one scale be resumed after the scale changes
    architecture = {k: v for k, v in VAE_DEMO.to_dict().items() if k != "scaling_factor"}
    extra = {}  # only when set, so stages written before these options existed still resume
    if args.init is not None:
        extra = {"init": str(args.init), "decoder_only": args.decoder_only}
    if args.mouth_weight != MOUTH_WEIGHT:
        extra["mouth_weight"] = args.mouth_weight
    if args.on_denoiser is not None:
        extra.update(on_denoiser=str(args.on_denoiser), pairs=args.pairs, clip_count=args.clip_count)
    stage = Stage.open(args, {"stage": "vae", "vae": architecture, "pool": args.pool, "crop": args.crop,
                              "data_seed": DATA_SEED, **extra}, {"vae": vae}, optimizer)
    pool, boxes = build_pool(DATA_SEED, args.pool)
    pairs = load_or_draw(args, vae) if args.on_denoiser is not None else None
    crop_steps = int(0.75 * args.steps) if args.crop else 0

    def step(k: int) -> dict:
        rng = step_rng(args.seed, k)
        crop = args.crop if k < crop_steps else None
        x, w = make_batch(pool, boxes, rng, 4 if crop else 2, crop, args.mouth_weight)
        out = vae_loss(vae, x, w, args.decoder_only)
        if pairs is not None:  # gradients add up: the reconstruction loss plus the denoised pairs' loss
            out.update(pair_loss(vae, *pair_batch(pairs, rng, 2, args.mouth_weight)))
        return out

    losses = stage.run(step, "VAE")
    stage.finish({"final": losses[-1] if losses else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
