"""Decoder training pairs from a denoiser's own outputs: (latents it draws for a chunk, the chunk's true frames).

The VAE's decoder is trained on the encoder's posterior means, but at run time it decodes what the denoiser
draws, whose small per-cell errors it renders as 8-pixel blocks and whose mouths come out fainter.
`train_vae --on-denoiser FOLDER` fine-tunes the decoder on pairs made here as well:

  * a training clip and a 2-latent chunk of it (the runtime's chunk) are picked at random;
  * the model in FOLDER draws that chunk from noise, conditioned as a stream conditions it (the true previous
    latent frame, anchored as the model was trained, or the portrait's first-chunk latent for a stream's first
    chunk; the chunk's streaming audio features; the portrait's reference bank), with DDIM at its step count;
  * the pair is those latents and the chunk's 8 rendered frames with their mouth boxes.

The motion latent is the true one, so head pose and blinks line up with the frames; only what the denoiser
makes of them differs. Deterministic given the seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .demo import CHUNK_LATENTS, CONTEXT_FRAMES
from .loop import load_stage_modules, stage_settings
from .stream_features import chunk_features


def drawing_model(folder: Path):
    """(model, DDIM steps, motion anchor) of a denoiser stage (steps 8) or a distill round (its student's)."""
    from .train_denoiser import DemoAvatar

    model = DemoAvatar()
    model.load_state_dict(load_stage_modules(folder, "denoiser")["model"])
    settings = stage_settings(folder)
    steps = int(settings.get("student_steps", 8))
    return model.eval().requires_grad_(False), steps, float(settings.get("motion_anchor", 0.0))


@torch.no_grad()
def denoised_pairs(folder: Path, data: dict, clip_files: list[Path], count: int, seed: int,
                   batch: int = 8) -> dict[str, torch.Tensor]:
    """`count` pairs: {"latents": (N, C, 2, h, w) unscaled (what the decoder takes), "frames": (N, 8, H, W, 3)
    uint8, "boxes": (N, 8, 4) int64, "picks": (N, 2) int64 (clip, first latent frame of the chunk)}.
    `data` is the denoiser's encoded clips (`train_denoiser.load_or_encode`) and `clip_files` their npz
    files, in the same order."""
    from ..engine.sampling import Conditioning, SamplerConfig, sample
    from .train_denoiser import ChunkExamples, padded

    model, steps, anchor = drawing_model(folder)
    examples = ChunkExamples(data, motion_anchor=anchor)
    rng, generator = np.random.default_rng([seed, 23]), torch.Generator().manual_seed(seed * 7919 + 23)
    n = CHUNK_LATENTS
    out: dict[str, list] = {"latents": [], "frames": [], "boxes": [], "picks": []}
    scale = data.get("scaling_factor")
    if scale is None:
        raise ValueError("the encoded clips carry no scaling_factor: re-encode them (delete encoded.pt)")
    with tqdm(total=count, desc="drawing decoder pairs", unit="chunk", dynamic_ncols=True) as bar:
        while bar.n < count:
            rows = min(batch, count - bar.n)
            picks, concats, audios, starts = [], [], [], []
            for _ in range(rows):
                c = int(rng.integers(0, len(data["latents"])))
                latents, audio = data["latents"][c], data["audio"][c]
                usable = min(latents.shape[0], (audio.size // 640 - 12) // 4)
                j = int(rng.integers(0, usable - n + 1))
                concat = torch.zeros(n, *latents.shape[1:])
                concat[0] = data["first"][c].float() if j == 0 else examples.anchored(latents[j - 1].float(), c)
                picks.append((c, j))
                concats.append(concat)
                audios.append(audio)
                starts.append(4 * j)
            features = chunk_features(model.audio, padded(audios, starts, 4 * n), starts, 4 * n,
                                      context=CONTEXT_FRAMES)
            refs = torch.stack([data["reference"][c].float() for c, _ in picks])[:, None]
            cond = Conditioning(torch.stack(concats), examples.text.expand(rows, -1, -1), audio=features,
                                face=examples.face.expand(rows, -1), ref_bank=model.reference_net(refs))
            drawn = sample(model.dit, cond, SamplerConfig(kind="ddim", steps=steps, cfg_scale=1.0),
                           generator=generator)  # (rows, n, C, h, w), scaled
            for (c, j), latents in zip(picks, drawn):
                clip = np.load(clip_files[c])
                out["latents"].append((latents / scale).permute(1, 0, 2, 3).half())
                out["frames"].append(torch.from_numpy(clip["frames"][4 * j:4 * j + 4 * n].copy()))
                out["boxes"].append(torch.from_numpy(clip["boxes"][4 * j:4 * j + 4 * n].astype(np.int64)))
                out["picks"].append(torch.tensor([c, j]))
            bar.update(rows)
    return {k: torch.stack(v) for k, v in out.items()}


def load_or_draw(args: argparse.Namespace, vae) -> dict[str, torch.Tensor]:
    """The pairs for `args` (on_denoiser, latents, clips, clip_count, pairs, seed), cached in args.out."""
    from .train_denoiser import load_or_encode

    cache = Path(args.out) / "denoised_pairs.pt"
    key = {"on_denoiser": str(args.on_denoiser), "pairs": args.pairs, "seed": args.seed,
           "clip_count": args.clip_count}
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        if saved.get("key") == key:
            return saved["pairs"]
    files = sorted(Path(args.clips).glob("clip_*.npz"))[: args.clip_count]
    Path(args.latents).mkdir(parents=True, exist_ok=True)
    data = load_or_encode(argparse.Namespace(out=args.latents, clips=args.clips, clip_count=args.clip_count,
                                             seed=args.seed), vae)
    pairs = denoised_pairs(args.on_denoiser, data, files, args.pairs, args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "pairs": pairs}, cache)
    return pairs


def pair_batch(pairs: dict[str, torch.Tensor], rng: np.random.Generator, batch: int, mouth_weight: float):
    """(latents (B, C, 2, h, w) float, frames (B, 3, 8, H, W) in [-1, 1], weights (B, 1, 8, H, W))."""
    picks = rng.integers(0, pairs["latents"].shape[0], batch)
    frames = pairs["frames"][picks]  # (B, 8, H, W, 3)
    weight = torch.ones(frames.shape[:4])
    for b, boxes in enumerate(pairs["boxes"][picks]):
        for t, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            weight[b, t, y0:y1, x0:x1] = mouth_weight
    x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return pairs["latents"][picks].float(), x, weight[:, None]
