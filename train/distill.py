"""Stage 3: progressive distillation (Salimans & Ho, 2022) of the stage-2 denoiser to few DDIM steps, no CFG.

    python -m hallo_rt.train.distill --teacher runs/denoiser --out runs/distill --rounds 8:4,4:2

Each round halves the step count: a student (initialised from its teacher) learns to take in one
deterministic DDIM step of the K-step schedule what its teacher takes in two steps of the 2K-step schedule
(the trailing timesteps line up: 999, 874, 749, ... for 8; 999, 749, ... for 4). Both run the engine's own
sampler arithmetic (`engine.sampling`: SAT's zero-SNR schedules, x0 from v with the snapped alpha, the DDIM
update), so the student is what `SamplerConfig(kind="ddim", steps=K, cfg_scale=1)` then samples with. The
student's x0 is regressed onto the x0 that makes its one step land where the teacher's two did, weighted 4x
on the mouth cells. The reference network and audio encoder are the teacher's, frozen.

Rounds run one after the other in `--out/round_<2K>to<K>/` (each resumable); the last round's student is
the stage's result.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch

from ..engine.sampling import SamplerConfig, ddim_step, make_schedule
from .demo import CONTEXT_FRAMES
from .loop import (Stage, TrainingError, add_common_args, load_stage_modules, stage_settings, step_generator,
                   step_rng)
from .stream_features import chunk_features
from .train_denoiser import (MOTION_JITTER, ChunkExamples, DemoAvatar, OwnMotion, load_or_encode, load_vae,
                             own_motion, predict_v)


def parse_rounds(text: str) -> list[tuple[int, int]]:
    rounds = []
    for part in text.split(","):
        try:
            teacher, student = (int(v) for v in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"rounds are TEACHER:STUDENT step pairs like 8:4,4:2; got {part!r}")
        if teacher != 2 * student or student < 1:
            raise argparse.ArgumentTypeError(f"each round halves the steps (2K:K, K >= 1); got {part!r}")
        rounds.append((teacher, student))
    for (_, k), (t, _) in zip(rounds, rounds[1:]):
        if t != k:
            raise argparse.ArgumentTypeError(f"round {t}:... must follow a round ending at {t} steps; got {text!r}")
    return rounds


def x0_from_v(x, v, alpha: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The engine's x0 (GuidedDenoiser): alpha snapped to the 1000-step table, per sample."""
    snapped = table[(table[None] - alpha.view(-1, 1)).abs().argmin(dim=1)].view(-1, 1, 1, 1, 1)
    return snapped * x - (1 - snapped * snapped).clamp_min(0).sqrt() * v


def student_x0_target(x: torch.Tensor, x_end: torch.Tensor, a: float, a_next: float) -> torch.Tensor:
    """The x0 that makes one DDIM step from x (at alpha a) to alpha a_next land exactly on x_end: the DDIM
    update is x' = c x + (a_next - a c) x0 with c = sqrt((1 - a_next^2) / (1 - a^2)), solved for x0."""
    c = math.sqrt((1 - a_next * a_next) / (1 - a * a))
    return (x_end - c * x) / (a_next - a * c)


def distill_loss(student, teacher, examples: ChunkExamples, rng, generator, batch: int, k_steps: int,
                 own: OwnMotion | None = None) -> dict:
    s_sched = make_schedule(SamplerConfig(kind="ddim", steps=k_steps, cfg_scale=1.0))
    t_sched = make_schedule(SamplerConfig(kind="ddim", steps=2 * k_steps, cfg_scale=1.0))
    table = s_sched.table
    x0, concat, ref, audios, starts, n, weight = examples.draw(rng, batch, generator)
    if own is not None:
        own.apply(examples, concat, rng, generator)
    with torch.no_grad():
        features = chunk_features(teacher.audio, audios, starts, 4 * n, context=CONTEXT_FRAMES)
    i = torch.from_numpy(rng.integers(0, k_steps, batch))
    a_s, a_next = s_sched.alphas[i], s_sched.alphas[i + 1]
    sigma = (1 - a_s * a_s).clamp_min(0).sqrt()
    x = a_s.view(-1, 1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
    with torch.no_grad():  # the teacher's two DDIM steps, per sample (its alphas differ by step index)
        target = torch.empty_like(x)
        v1 = predict_v(teacher, x, concat, ref, features, t_sched.timesteps[2 * i], examples.text, examples.face)
        x0_1 = x0_from_v(x, v1, t_sched.alphas[2 * i], table)
        x_mid = torch.stack([ddim_step(x[b], x0_1[b], float(t_sched.alphas[2 * i[b]]),
                                       float(t_sched.alphas[2 * i[b] + 1])) for b in range(batch)])
        v2 = predict_v(teacher, x_mid, concat, ref, features, t_sched.timesteps[2 * i + 1], examples.text,
                       examples.face)
        x0_2 = x0_from_v(x_mid, v2, t_sched.alphas[2 * i + 1], table)
        for b in range(batch):
            j = int(2 * i[b] + 1)
            x_end = ddim_step(x_mid[b], x0_2[b], float(t_sched.alphas[j]), float(t_sched.alphas[j + 1]))
            target[b] = student_x0_target(x[b], x_end, float(a_s[b]), float(a_next[b]))
    v = predict_v(student, x, concat, ref, features, s_sched.timesteps[i], examples.text, examples.face)
    pred = x0_from_v(x, v.float(), a_s, table)
    loss = ((pred - target).pow(2) * weight).sum() / (weight.sum() * x0.shape[2])
    loss.backward()
    return {"loss": loss.item(), "step_index": float(i.float().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hallo_rt.train.distill", description=__doc__.split("\n\n")[0])
    add_common_args(parser, steps=300, lr=1e-4)
    parser.add_argument("--teacher", type=Path, default=Path("runs/denoiser"), help="stage 2's folder")
    parser.add_argument("--vae", type=Path, default=Path("runs/vae"), help="stage 1's folder")
    parser.add_argument("--clips", type=Path, default=Path("runs/clips"), help="the clip_cache folder")
    parser.add_argument("--clip-count", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=parse_rounds, default=parse_rounds("8:4,4:2"),
                        help="TEACHER:STUDENT step pairs, each halving (default 8:4,4:2); --steps is per round")
    args = parser.parse_args(argv)
    teacher = DemoAvatar(args.seed)
    teacher.load_state_dict(load_stage_modules(args.teacher, "denoiser")["model"])
    args.out.mkdir(parents=True, exist_ok=True)
    data_args = argparse.Namespace(out=args.teacher, clips=args.clips, clip_count=args.clip_count, seed=args.seed)
    data = load_or_encode(data_args, load_vae(args.vae))
    # the motion latents are noised, anchored, and a share of them drawn by a model, as the teacher saw them
    trained = stage_settings(args.teacher)
    jitter = float(trained.get("motion_jitter", MOTION_JITTER))
    anchor = float(trained.get("motion_anchor", 0.0))
    examples = ChunkExamples(data, motion_jitter=jitter, motion_anchor=anchor)
    own = own_motion(Path(trained["own_motion"]), trained["own_motion_share"]) if trained.get("own_motion") else None
    base = args.out
    for r, (t_steps, k_steps) in enumerate(args.rounds):
        teacher.eval().requires_grad_(False)
        student = copy.deepcopy(teacher)
        student.dit.requires_grad_(True)
        optimizer = torch.optim.AdamW(student.dit.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
        args.out = base / f"round_{t_steps}to{k_steps}"
        stage = Stage.open(args, {"stage": "distill", "teacher_steps": t_steps, "student_steps": k_steps,
                                  "round": r, "batch": args.batch, "clip_count": args.clip_count,
                                  "motion_jitter": jitter, "own_motion": trained.get("own_motion"),
                                  **({"motion_anchor": anchor} if anchor else {})},
                           {"model": student}, optimizer, warmup=20)

        def step(k: int, student=student, k_steps=k_steps, r=r) -> dict:
            return distill_loss(student, teacher, examples, step_rng(args.seed, k, 1 + r),
                                step_generator(args.seed, k, 1 + r), args.batch, k_steps, own)

        losses = stage.run(step, f"distill {t_steps}->{k_steps}")
        stage.finish({"final": losses[-1] if losses else None})
        teacher = student
    last = base / f"round_{args.rounds[-1][0]}to{args.rounds[-1][1]}"
    if not (last / "checkpoint.pt").is_file():
        raise TrainingError(f"distillation ended without {last}/checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
