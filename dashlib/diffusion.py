"""Diffusion maths: noise schedules, forward noising, eps/x0 conversion, SNR.

Discrete time t in {0, ..., T-1}; `alpha_bar[t]` is the cumulative product of
(1 - beta) up to and including t, so x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps (DDPM, Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dashlib.config import DiffusionConfig
from dashlib.registry import Registry

SCHEDULES: Registry[Callable[[int], Tensor]] = Registry("noise schedule")


@SCHEDULES.register("cosine")
def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = f(t)/f(0),
    f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); betas clipped at 0.999."""

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


@SCHEDULES.register("linear")
def linear_betas(T: int) -> Tensor:
    """Ho et al. (2020): beta linear from 1e-4 to 0.02, rescaled to T steps."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


class Diffusion:
    """Precomputed schedule tensors (float64 on CPU, gathered per batch).

    Attributes: `betas`, `alpha_bar`, `snr` each of shape (T,).
    """

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.T = config.T
        self.betas = SCHEDULES.get(config.schedule)(config.T)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)

    def _gather(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] reshaped to broadcast against `like` (B, C, H, W)."""
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def alpha_bar_at(self, t: Tensor, like: Tensor) -> Tensor:
        return self._gather(self.alpha_bar, t, like)

    def snr_at(self, t: Tensor) -> Tensor:
        """SNR_t = alpha_bar_t / (1 - alpha_bar_t), shape (B,), float32."""
        return self.snr[t.cpu()].float().to(t.device)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Forward noising x_t (DDPM eq. 4); x0, eps: (B, C, H, W), t: (B,)."""
        ab = self.alpha_bar_at(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert the forward process given predicted noise (DDPM eq. 15)."""
        ab = self.alpha_bar_at(t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        ab = self.alpha_bar_at(t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        """Uniform timesteps (docs/paper.md: timesteps are 'drawn uniformly'), (n,) int64."""
        return torch.randint(0, self.T, (n,), generator=generator)
