"""EDM preconditioning, training-noise sampling and the few-step sampler (Karras et al. 2022).

The world model denoises several modalities at once, each at its own noise level sigma (a clean
modality, sigma = 0, is a condition). Everything here therefore works on one tensor per modality
and a (B,) sigma per modality.

Why not ``diffusers`` schedulers: ``EDMEulerScheduler`` steps one sample tensor along one shared
sigma schedule and keeps its position in internal state. Here each modality has its own sigma
(some held at 0 as conditions) and several tensors are denoised jointly by one network call, so
the schedule (``karras_sigmas``) and the Euler steps are written out below (a few lines, the
same formulas as EDM's Algorithm 1 and diffusers' ``EDMEulerScheduler``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

# A clean (sigma = 0) modality is fed with this c_noise: below any sigma used in training or
# sampling, so the network can tell a condition from a nearly clean sample.
CLEAN_LOG_SIGMA = math.log(1e-4)


@dataclass(frozen=True)
class EDMParams:
    """EDM's sampling hyperparameters, shared by every modality (data are normalised to ``sigma_data``).

    ``sigma_data`` and ``sigma_max`` are the architecture's (what the network was trained for),
    ``sigma_min`` and ``rho`` the sampler's (``WorldModel.edm`` builds it from both configs).
    """

    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0


class TrainingSigma(Protocol):
    """The log-normal training sigma's parameters (``config.NoiseConfig`` has them)."""

    p_mean: float
    p_std: float


def expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return s.view(-1, *([1] * (like.dim() - 1)))


def precondition(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's c_skip, c_out, c_in and c_noise for sigmas (B,); sigma = 0 gives the identity D(x) = x."""
    sd2 = sigma_data**2
    s2 = sigma**2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + sd2)
    c_in = 1.0 / torch.sqrt(s2 + sd2)
    c_noise = torch.where(sigma > 0, torch.log(sigma.clamp_min(1e-20)), torch.full_like(sigma, CLEAN_LOG_SIGMA)) / 4.0
    return c_skip, c_out, c_in, c_noise


def sample_training_sigma(batch: int, p: TrainingSigma, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Log-normal training sigmas (B,): ln(sigma) ~ N(p_mean, p_std^2)."""
    z = torch.randn(batch, generator=generator, device=device)
    return torch.exp(p.p_mean + p.p_std * z)


def karras_sigmas(num_steps: int, p: EDMParams, device=None) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas of EDM's schedule, from sigma_max down to sigma_min, then 0.

    One step is a single jump from sigma_max to 0: the network's estimate of the clean sample
    given (almost) pure noise, i.e. the conditional mean -- the right thing for RL at 1 step.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if num_steps == 1:
        s = torch.full((1,), float(p.sigma_max), device=device)
    else:
        i = torch.arange(num_steps, device=device, dtype=torch.float64) / (num_steps - 1)
        lo, hi = p.sigma_min ** (1 / p.rho), p.sigma_max ** (1 / p.rho)
        s = ((hi + i * (lo - hi)) ** p.rho).float()
    return torch.cat([s, s.new_zeros(1)])


Denoiser = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def sample(
    denoise: Denoiser,
    noise: dict[str, torch.Tensor],
    num_steps: int,
    p: EDMParams,
) -> dict[str, torch.Tensor]:
    """Jointly denoise every tensor of ``noise`` (unit Gaussian, one per generated modality).

    ``denoise(x, sigma)`` maps noisy tensors and their (B,) sigmas to clean estimates D(x; sigma);
    conditions (clean modalities) are the caller's business (closed over in ``denoise``).
    Euler steps along ``karras_sigmas``.
    """
    any_x = next(iter(noise.values()))
    B = any_x.shape[0]
    sigmas = karras_sigmas(num_steps, p, device=any_x.device)
    x = {k: v * sigmas[0] for k, v in noise.items()}
    for i in range(num_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        sig = {k: s.expand(B) for k in x}
        d0 = denoise(x, sig)
        deriv = {k: (x[k] - d0[k]) / s for k in x}
        x = {k: x[k] + (s_next - s) * deriv[k] for k in x}
    return x
