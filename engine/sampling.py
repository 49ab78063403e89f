"""Samplers: SAT's VP DPM-Solver++(2M) SDE and a deterministic DDIM, v-prediction, zero-terminal-SNR.

Everything here follows hallo3 `sgm/modules/diffusionmodules/`:
  - `discretizer.py` `ZeroSNRDDPMDiscretization`: scaled-linear betas, timesteps
    `linspace(999, 0, n, endpoint=False).astype(int)[::-1]` ("trailing"), and the zero-SNR rescale of
    sqrt(alpha_bar) computed over the *sub-sampled* timesteps (not the 1000-step table, unlike diffusers'
    CogVideoXDPMScheduler);
  - `denoiser.py` / `denoiser_scaling.py` `VideoScaling`: x0 = c_skip * x + c_out * v with c_skip = sqrt(a),
    c_out = -sqrt(1 - a), where sqrt(a) is snapped to the nearest entry of the 1000-step zero-SNR table;
    the network's timestep input is the integer timestep;
  - `sampling.py` `VPSDEDPMPP2MSampler` / `VideoDDIMSampler`, and classifier-free guidance on x0 with one
    batched forward [uncond | cond] (`guiders.py`: the released model's effective scale is a constant 3.5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from .dit import HalloDiT, ReferenceKV


@dataclass(frozen=True)
class SamplerConfig:
    """How to turn noise into latents."""

    kind: Literal["dpmpp2m_sde", "ddim"] = "dpmpp2m_sde"
    """`dpmpp2m_sde`: SAT's stochastic DPM-Solver++(2M) (the reference); `ddim`: deterministic DDIM."""

    steps: int = 50
    """Denoising steps, 1..num_train_timesteps, trailing spacing (50 = reference; distilled models: 1-4)."""

    cfg_scale: float = 3.5
    """Classifier-free guidance on x0; 1.0 runs the conditional branch only (half the compute)."""

    num_train_timesteps: int = 1000
    """Length of the training noise schedule."""

    beta_start: float = 0.00085
    """First beta of the scaled-linear schedule (betas = linspace(sqrt(start), sqrt(end), T)^2)."""

    beta_end: float = 0.012
    """Last beta of the scaled-linear schedule."""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps}, got {self.steps}")
        if self.kind not in ("dpmpp2m_sde", "ddim"):
            raise ValueError(f"unknown sampler {self.kind!r}; choose 'dpmpp2m_sde' or 'ddim'")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale}")

    def compute_hash(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Schedule:
    timesteps: torch.Tensor
    """(steps,) int64, high noise first: 999, 979, ..., 19 for 50 steps."""
    alphas: torch.Tensor
    """(steps + 1,) fp32 sqrt(alpha_bar) per step, then 1.0 (clean). alphas[0] = 0 (zero terminal SNR)."""
    table: torch.Tensor
    """(num_train_timesteps,) fp32 sqrt(alpha_bar) of the full zero-SNR table, index = timestep."""


def _alphas_cumprod(cfg: SamplerConfig) -> np.ndarray:
    betas = np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def _zero_snr_rescale(sqrt_alphas: torch.Tensor) -> torch.Tensor:
    """Shift and scale so the noisiest entry is exactly 0 and the cleanest is unchanged (ascending t)."""
    first, last = sqrt_alphas[0].clone(), sqrt_alphas[-1].clone()
    if first == last:  # a single timestep: it is the terminal one, SNR zero
        return torch.zeros_like(sqrt_alphas)
    return (sqrt_alphas - last) * (first / (first - last))


def make_schedule(cfg: SamplerConfig) -> Schedule:
    T = cfg.num_train_timesteps
    alphas_cumprod = _alphas_cumprod(cfg)
    steps_ascending = np.linspace(T - 1, 0, cfg.steps, endpoint=False).astype(int)[::-1].copy()
    # SAT converts to fp32 before the sqrt and the rescale; so do we, to match its numbers bit for bit.
    sub = _zero_snr_rescale(torch.tensor(alphas_cumprod[steps_ascending], dtype=torch.float32).sqrt())
    table = _zero_snr_rescale(torch.tensor(alphas_cumprod, dtype=torch.float32).sqrt())
    return Schedule(
        timesteps=torch.from_numpy(steps_ascending[::-1].copy()).long(),
        alphas=torch.cat([sub.flip(0), torch.ones(1)]),
        table=table,
    )


@dataclass
class Conditioning:
    """Everything the denoiser sees besides the noisy latents, for a batch of B."""

    concat_latent: torch.Tensor
    """(B, F, C_out, H, W) the conditioning latent (reference + motion frames), concatenated on channels."""
    text_embeds: torch.Tensor
    """(B, L, text_dim)."""
    audio: torch.Tensor | None = None
    """(B, T_video, window, layers, dim) raw windowed features, or None."""
    face: torch.Tensor | None = None
    """(B, face_embed_dim), or None."""
    ref_bank: torch.Tensor | ReferenceKV | None = None
    """(num_layers, B or 1, N_ref, D), its precomputed `ReferenceKV`, or None."""


class GuidedDenoiser:
    """x_t -> x0 for one step: the v-prediction network, SAT's scaling, and CFG in one batched forward.

    Unconditional branch = zero text embeddings + zero audio features (zeroed *before* the audio projection,
    as the reference does); face, conditioning latent and reference bank are shared by both branches.
    """

    def __init__(self, dit: HalloDiT, cond: Conditioning, cfg_scale: float, schedule: Schedule):
        self.dit, self.cfg_scale, self.table = dit, cfg_scale, schedule.table
        B = cond.concat_latent.shape[0]
        if cfg_scale == 1.0:
            self.concat, self.text, self.audio, self.face, self.bank = (
                cond.concat_latent, cond.text_embeds, cond.audio, cond.face, cond.ref_bank)
            return
        self.concat = torch.cat([cond.concat_latent] * 2)
        text = cond.text_embeds.expand(B, -1, -1)
        self.text = torch.cat([torch.zeros_like(text), text])
        self.audio = None  # no audio: both branches get the model's zero features
        if cond.audio is not None:
            audio = cond.audio.expand(B, *cond.audio.shape[1:])
            self.audio = torch.cat([torch.zeros_like(audio), audio])
        self.face = torch.cat([cond.face.expand(B, -1)] * 2) if cond.face is not None else None
        bank = cond.ref_bank
        bank_batch = None if bank is None else bank.batch if isinstance(bank, ReferenceKV) else bank.shape[1]
        if bank_batch in (None, 1, 2 * B):
            self.bank = bank  # batch 1 broadcasts over both branches; 2B was computed for them
        else:
            self.bank = bank.repeat(2) if isinstance(bank, ReferenceKV) else torch.cat([bank, bank], dim=1)

    def snap(self, alpha: float) -> float:
        """The 1000-step table entry nearest to `alpha` (SAT `DiscreteDenoiser.possibly_quantize_sigma`)."""
        return float(self.table[(self.table - alpha).abs().argmin()])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, alpha: float, timestep: int) -> torch.Tensor:
        dtype = self.dit.dtype
        guided = self.cfg_scale != 1.0
        x_in = torch.cat([x, x]) if guided else x
        latents = torch.cat([x_in.to(dtype), self.concat.to(dtype)], dim=2)
        t = torch.full((latents.shape[0],), timestep, device=x.device)
        v = self.dit(latents, t, self.text, self.audio, self.face, self.bank).float()
        a = self.snap(alpha)
        x0 = a * x_in.float() - math.sqrt(1.0 - a * a) * v
        if not guided:
            return x0
        x0_uncond, x0_cond = x0.chunk(2)
        return x0_uncond + self.cfg_scale * (x0_cond - x0_uncond)


def _log_snr(alpha: float) -> float:
    """lambda = log(sqrt(a^2 / (1 - a^2))), -inf at a = 0."""
    a2 = alpha * alpha
    return -math.inf if a2 == 0.0 else 0.5 * math.log(a2 / (1.0 - a2))


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=torch.float32, device=generator.device).to(like.device)


def dpmpp2m_sde_step(x, x0, old_x0, a_prev, a, a_next, generator, last: bool):
    """One SAT `VPSDEDPMPP2MSampler.sampler_step` update given the denoised x0.

    Like the reference it draws noise for the first-order update on every step and, from the second step
    on, draws again for the second-order update it actually uses, so a seeded run consumes its generator
    in the same order as SAT's.
    """
    if last:
        return x0
    lam, lam_next = _log_snr(a), _log_snr(a_next)
    h = lam_next - lam
    mult_x = math.sqrt((1 - a_next**2) / (1 - a**2)) * math.exp(-h)
    mult_d = math.expm1(-2 * h) * a_next
    mult_noise = math.sqrt(1 - a_next**2) * math.sqrt(-math.expm1(-2 * h))
    x_first = mult_x * x - mult_d * x0 + mult_noise * _randn(x, generator)
    if old_x0 is None:
        return x_first
    r = (lam - _log_snr(a_prev)) / h
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
    return mult_x * x - mult_d * d + mult_noise * _randn(x, generator)


def ddim_step(x, x0, a, a_next):
    """SAT `VideoDDIMSampler.sampler_step`: deterministic, eta = 0."""
    a_t = math.sqrt((1 - a_next**2) / (1 - a**2))
    return a_t * x + (a_next - a * a_t) * x0


def sample(
    dit: HalloDiT,
    cond: Conditioning,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    progress: bool | Callable[[int, int], None] = False,
    on_start: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Denoise from pure noise to clean latents (B, F, C_out, H, W), fp32.

    Random numbers come from `generator` in this order: the initial noise (unless `noise` is given), then
    the per-step noise of the stochastic sampler. `progress`: True for a progress bar, or a callback
    (step, steps) after each step; `on_start`: called once, right before the first step (so a caller can
    time the steps apart from the setup).
    """
    schedule = make_schedule(config)
    B, Fr, C, H, W = cond.concat_latent.shape
    if noise is None:
        if generator is None:
            raise ValueError("sample() needs a seeded generator or explicit noise")
        noise = torch.randn((B, Fr, C, H, W), generator=generator, dtype=torch.float32, device=generator.device)
    elif noise.shape != cond.concat_latent.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != conditioning latent shape {tuple(cond.concat_latent.shape)}")
    if config.kind == "dpmpp2m_sde" and generator is None:
        raise ValueError("the stochastic dpmpp2m_sde sampler needs a seeded generator")
    x = noise.to(cond.concat_latent.device, torch.float32)  # SAT: initial latent is randn, unscaled
    denoise = GuidedDenoiser(dit, cond, config.cfg_scale, schedule)
    alphas = schedule.alphas.tolist()
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="denoising", unit="step", leave=False)
    old_x0 = None
    if on_start is not None:
        on_start()
    for i in range(config.steps):
        x0 = denoise(x, alphas[i], int(schedule.timesteps[i]))
        last = i == config.steps - 1
        if config.kind == "ddim":
            x = ddim_step(x, x0, alphas[i], alphas[i + 1])
        else:
            a_prev = alphas[i - 1] if i > 0 else None
            x = dpmpp2m_sde_step(x, x0, old_x0, a_prev, alphas[i], alphas[i + 1], generator, last)
        old_x0 = x0
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(i + 1, config.steps)
    if bar is not None:
        bar.close()
    return x
