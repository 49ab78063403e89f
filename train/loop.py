"""What every training stage shares: seeding, the resumable checkpoint, the loss log and the step loop.

A stage is deterministic given its seed: the batch of step k and the noise it draws come from generators
seeded with (seed, k), never from state carried across steps, so a run resumed from the checkpoint of step
k continues exactly as the uninterrupted run would (same batches, same noise, same optimiser state).

Each stage writes into its own folder (`--out`):

    checkpoint.pt   model(s), optimiser and the step reached, written every `--save-every` steps and at the end
    losses.jsonl    one JSON line per logged step: {"step", "loss", ... terms, "lr", "seconds"}
    stage.json      the stage's settings (and, when done, its summary)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.jsonl"
SETTINGS = "stage.json"


class TrainingError(RuntimeError):
    """A stage cannot start or resume (missing input stage, settings changed under a checkpoint)."""


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A torch generator for step `step` of a stage seeded `seed`, independent of every other step."""
    mixed = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator for step `step` of a stage seeded `seed` (the batch it draws)."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def add_common_args(parser: argparse.ArgumentParser, steps: int, lr: float) -> None:
    parser.add_argument("--out", required=True, type=Path, help="the stage's folder (checkpoint, losses, settings)")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimiser steps in all (default {steps})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights, batches and noise")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    parser.add_argument("--log-every", type=int, default=10, help="log the loss every N steps (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then a cosine decay to 5% of it at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class Stage:
    """One stage's folder, models and optimiser; `run(step_fn)` is the resumable loop."""

    out: Path
    settings: dict
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    steps: int
    lr: float
    warmup: int = 50
    save_every: int = 100
    log_every: int = 10
    start_step: int = 0

    @classmethod
    def open(cls, args: argparse.Namespace, settings: dict, modules: dict[str, nn.Module],
             optimizer: torch.optim.Optimizer, warmup: int = 50) -> "Stage":
        """Create the folder, or resume from its checkpoint when the settings match (`--fresh` starts over)."""
        if args.threads:
            torch.set_num_threads(args.threads)
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        settings = {**settings, "steps": args.steps, "lr": args.lr, "seed": args.seed}
        stage = cls(out, settings, modules, optimizer, args.steps, args.lr, warmup, args.save_every, args.log_every)
        checkpoint = out / CHECKPOINT
        if checkpoint.is_file() and not args.fresh:
            stage._resume(checkpoint)
        else:
            (out / LOSSES).write_text("")
        (out / SETTINGS).write_text(json.dumps({"settings": stage.settings}, indent=2, sort_keys=True) + "\n")
        return stage

    def _resume(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        saved = {k: v for k, v in state["settings"].items() if k != "steps"}
        wanted = {k: v for k, v in self.settings.items() if k != "steps"}
        if saved != wanted:
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise TrainingError(f"{checkpoint} was written with other settings ({', '.join(changed)}); "
                                f"pass the same ones to resume, or --fresh to start over")
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step = int(state["step"])
        # drop log lines past the checkpoint: the resumed run writes them again, identically
        lines = (self.out / LOSSES).read_text().splitlines() if (self.out / LOSSES).is_file() else []
        kept = [line for line in lines if json.loads(line)["step"] <= self.start_step]
        (self.out / LOSSES).write_text("".join(line + "\n" for line in kept))
        print(f"resuming {self.out} at step {self.start_step}/{self.steps}", flush=True)

    def save(self, step: int) -> None:
        state = {"step": step, "settings": self.settings, "optimizer": self.optimizer.state_dict(),
                 "modules": {name: m.state_dict() for name, m in self.modules.items()}}
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)

    def run(self, step_fn: Callable[[int], dict[str, float]], desc: str) -> list[dict]:
        """Call `step_fn(step)` (forward, backward; returns the loss terms) for every remaining step, with the
        learning-rate schedule, gradient clipping at 1.0, the optimiser step, logging and checkpoints."""
        from tqdm.auto import tqdm

        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        log = (self.out / LOSSES).open("a")
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        bar = tqdm(total=self.steps, initial=self.start_step, desc=desc, unit="step", dynamic_ncols=True)
        try:
            for step in range(self.start_step, self.steps):
                lr = cosine_lr(step, self.steps, self.lr, self.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                terms = step_fn(step)
                if not all(math.isfinite(v) for v in terms.values()):
                    raise TrainingError(f"step {step}: non-finite loss {terms}; lower --lr or resume from "
                                        f"the last checkpoint")
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                self.optimizer.step()
                window.append(terms)
                bar.update(1)
                done = step + 1
                if done % self.log_every == 0 or done == self.steps:
                    mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    row = {"step": done, **{k: round(v, 6) for k, v in mean.items()}, "lr": lr,
                           "seconds": round(time.perf_counter() - started, 1)}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{mean['loss']:.4f}")
                    window = []
                if done % self.save_every == 0 or done == self.steps:
                    self.save(done)
        finally:
            bar.close()
            log.close()
        return read_losses(self.out)

    def finish(self, summary: dict) -> None:
        """Record the stage's summary next to its settings."""
        (self.out / SETTINGS).write_text(json.dumps({"settings": self.settings, "summary": summary}, indent=2,
                                                    sort_keys=True) + "\n")


def read_losses(folder: Path) -> list[dict]:
    path = Path(folder) / LOSSES
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_settings(folder: Path) -> dict:
    """The settings a stage folder was run with (its stage.json)."""
    return json.loads((Path(folder) / SETTINGS).read_text())["settings"]


def load_stage_modules(folder: Path, what: str) -> dict[str, dict]:
    """The module state dicts of a finished stage's checkpoint; TrainingError naming the command otherwise."""
    checkpoint = Path(folder) / CHECKPOINT
    if not checkpoint.is_file():
        raise TrainingError(f"no {what} checkpoint at {checkpoint}: run that stage first")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["step"] < state["settings"]["steps"]:
        raise TrainingError(f"{checkpoint} stopped at step {state['step']} of {state['settings']['steps']}: "
                            f"run its stage again to finish it (it resumes)")
    return state["modules"]


def batches(items: int, size: int) -> Iterator[range]:
    for start in range(0, items, size):
        yield range(start, min(start + size, items))
