"""Noise schedule and parameterization of the embedded prior.

Cosine schedule (Nichol & Dhariwal 2021, "Improved DDPM", designed for 64x64 pixels) with T = 1000:
alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2, s = 0.008, betas clipped at 0.999.
It reaches almost pure noise at t = T - 1 (alpha_bar ~ 2e-9), so sampling from N(0, I) matches training.

The network predicts v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022). v stays well scaled at every
noise level, where epsilon prediction is degenerate near pure noise (eps ~ x_t tells nothing about x0) and
x0 prediction near clean images. SDS and DDIM want epsilon, which follows exactly from v and x_t:

    eps = sqrt(a) v + sqrt(1 - a) x_t,        x0 = sqrt(a) x_t - sqrt(1 - a) v.

Training uses the min-SNR-gamma loss weight (Hang et al. 2023, gamma = 5), which for v-prediction is
min(snr, gamma) / (snr + 1): it stops the nearly-clean timesteps from dominating and converges faster.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from dreamfusion.diffusion import epsilon_from_v


def cosine_alphas_cumprod(num_timesteps: int = 1000, offset: float = 0.008) -> Float[Tensor, " T"]:
    """alpha_bar_t for t = 0 .. T-1 (index t is the paper's step t + 1), float32, strictly decreasing in (0, 1)."""
    if num_timesteps < 2:
        raise ValueError(f"the schedule needs at least 2 timesteps, got {num_timesteps}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).to(torch.float32)


def _broadcast(alphas_cumprod: Float[Tensor, " T"], timesteps: Tensor, like: Tensor) -> Tensor:
    return alphas_cumprod.to(like.device)[timesteps].to(torch.float32)[:, None, None, None]


def v_target(
    clean: Float[Tensor, "B C H W"],
    noise: Float[Tensor, "B C H W"],
    alphas_cumprod: Float[Tensor, " T"],
    timesteps: Tensor,
) -> Float[Tensor, "B C H W"]:
    """v = sqrt(a) eps - sqrt(1 - a) x0, the training target."""
    a = _broadcast(alphas_cumprod, timesteps, clean)
    return (a.sqrt() * noise - (1 - a).sqrt() * clean).to(clean.dtype)


def v_to_epsilon(
    v: Float[Tensor, "B C H W"], noisy: Float[Tensor, "B C H W"], alphas_cumprod: Float[Tensor, " T"], timesteps: Tensor
) -> Float[Tensor, "B C H W"]:
    """Epsilon from v at the timesteps' alpha_bar, in float32."""
    return epsilon_from_v(v, noisy, _broadcast(alphas_cumprod, timesteps, noisy))


def min_snr_weight(alphas_cumprod: Float[Tensor, " T"], timesteps: Tensor, gamma: float = 5.0) -> Float[Tensor, " B"]:
    """min(snr, gamma) / (snr + 1): the min-SNR loss weight expressed for a v-prediction MSE."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / (snr + 1)
