"""Sampling and gap diagnostics for the 2D toy, reusing the image pipeline's maths.

DDIM is `dashlib.sampling.DDIMSampler.denoise` on (N, 2) points (x_0 clipped
to [-1, 1] as for images: the toy's data live there too); the gap statistics are
`dashlib.calibration.gap_metrics` on matched noised data points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dashlib.calibration import gap_metrics
from dashlib.config import SampleConfig
from dashlib.diffusion import Diffusion
from dashlib.guidance import Guidance, branches
from dashlib.sampling import DDIMSampler
from dashlib.workshop.mlp import ToyMLP
from dashlib.workshop.toy import ToyConfig, mode_centers, sample_data
from dashlib.workshop.train import Workshop, draw_batch, student_terms


def toy_sample_config(config: ToyConfig) -> SampleConfig:
    """DDIM (eta 0), x_0 clipped to [-1, 1]; its TAG parameters are SampleConfig's defaults."""
    return SampleConfig(steps=config.ddim_steps, eta=0.0, clip_x0=True, batch_size=1 << 20)


@torch.no_grad()
def sample_toy(model: ToyMLP, diffusion: Diffusion, config: ToyConfig, y: Tensor,
               guidance: Guidance | str | float, generator: torch.Generator) -> Tensor:
    """Samples (N, 2) for labels y (N,), guided at constant w (a number), "tag" or a Guidance."""
    base = toy_sample_config(config)
    sampler = DDIMSampler(diffusion, base, Guidance.parse(guidance, base))
    x_T = torch.randn(len(y), 2, generator=generator)
    return sampler.denoise(model, x_T, y, generator)[0]


@torch.no_grad()
def field_on_grid(model: ToyMLP, points: Tensor, t: int, y: int) -> tuple[Tensor, Tensor]:
    """(eps_cond, eps_uncond), each (P, 2), at points (P, 2), timestep t and class y."""
    n = len(points)
    return branches(model, points, torch.full((n,), t), torch.full((n,), y))


@torch.no_grad()
def gap_at(student: ToyMLP, teacher: ToyMLP, diffusion: Diffusion, config: ToyConfig, t: int,
           n: int | None = None, seed: int = 0) -> dict[str, float]:
    """rho, cos, gap_mse, cond_mse, uncond_mse at timestep t on n (default
    `config.gap_points`) matched noised data points."""
    n = n or config.gap_points
    g = torch.Generator().manual_seed(seed)
    x0, y = sample_data(config, n, g)
    tt = torch.full((n,), t)
    x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
    cond_s, uncond_s = branches(student, x_t, tt, y)
    cond_t, uncond_t = branches(teacher, x_t, tt, y)
    return gap_metrics(cond_s, uncond_s, cond_t, uncond_t)


def gap_profile(student: ToyMLP, teacher: ToyMLP, diffusion: Diffusion, config: ToyConfig,
                timesteps: list[int], n: int | None = None, seed: int = 0) -> dict[str, list[float]]:
    """`gap_at` over several timesteps: {metric: [value per timestep]}."""
    rows = [gap_at(student, teacher, diffusion, config, t, n, seed) for t in timesteps]
    return {k: [r[k] for r in rows] for k in rows[0]}


def class_accuracy(samples: Tensor, y: Tensor, config: ToyConfig) -> float:
    """Fraction of samples (N, 2) whose nearest mode belongs to their own class y (N,)."""
    centers = mode_centers(config)  # (K, M, 2)
    d = torch.cdist(samples, centers.reshape(-1, 2))  # (N, K*M)
    nearest_class = d.argmin(1) // config.modes_per_class
    return float((nearest_class == y).float().mean())


def on_mode(samples: Tensor, y: Tensor, config: ToyConfig, k_std: float = 3.0) -> float:
    """Fraction of samples (N, 2) within k_std mode standard deviations of a mode of their class."""
    own = mode_centers(config)[y]  # (N, M, 2)
    d = (samples[:, None] - own).norm(dim=-1).min(1).values
    return float((d <= k_std * config.mode_std).float().mean())


@torch.no_grad()
def loss_terms(shop: Workshop, n_batches: int = 8, seed: int = 123) -> dict[str, dict[str, float]]:
    """L_im, L_un, L_an of every student on the same fresh batches: {student: {term: value}}.

    An output-level student is trained on L_im alone; this shows what that
    loss does not see.
    """
    out = {}
    for name, model in shop.models.items():
        if name == "teacher":
            continue
        g = torch.Generator().manual_seed(seed)
        sums = {"im": 0.0, "un": 0.0, "an": 0.0}
        for _ in range(n_batches):
            terms = student_terms(model, shop.teacher, shop.diffusion, draw_batch(shop.config,
                                                                                   shop.diffusion, g))
            for k, v in terms.items():
                sums[k] += float(v.mean()) / n_batches
        out[name] = {f"L_{k}": v for k, v in sums.items()}
    return out
