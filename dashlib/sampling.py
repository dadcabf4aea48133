"""DDIM sampling with classifier-free guidance (Song et al. 2021, eq. 12).

One step from t to t_prev, with alpha_bar written a:

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                      (eq. 12, "predicted x0")
    sigma   = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)   (eq. 16)
    x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z

eta = 0 is the deterministic DDIM sampler; eta = 1 is DDPM-like. After the
last step (t_prev = -1) a_prev = 1, so the result is x0_hat.

Timestep spacing (`SampleConfig.spacing`):
* ``linspace`` (default): round(linspace(T-1, 0, steps)), so the first step
  starts at the last trained timestep, where x_T is closest to pure noise;
* ``leading``: DDIM's original uniform skip 0, T/steps, 2T/steps, ...
  (reversed), which starts at T - T/steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dashlib.config import ConfigError, SampleConfig
from dashlib.diffusion import Diffusion
from dashlib.guidance import Guidance, guided_eps
from dashlib.registry import Registry

SPACINGS: Registry[Callable[[int, int], Tensor]] = Registry("timestep spacing")


@SPACINGS.register("linspace")
def linspace_spacing(T: int, steps: int) -> Tensor:
    return torch.linspace(T - 1, 0, steps).round().long().unique_consecutive()


@SPACINGS.register("leading")
def leading_spacing(T: int, steps: int) -> Tensor:
    """The original DDIM spacing (`range(0, T, T // steps)`, diffusers' "leading"): the
    stride is rounded down, so where `steps` does not divide T sampling starts below the
    last trained timestep (T = 1000, 300 steps: at 897; 600 steps: at 599), the reason
    `linspace` is the default."""
    stride = max(T // steps, 1)
    return torch.arange(0, T, stride)[:steps].flip(0)


def ddim_timesteps(T: int, steps: int, spacing: str = "linspace") -> Tensor:
    """Descending timesteps (S,) int64 visited by the sampler."""
    if not 1 <= steps <= T:
        raise ConfigError(f"DDIM steps = {steps} is invalid: it must lie between 1 and the {T} "
                          f"diffusion timesteps; choose steps <= {T}")
    return SPACINGS.get(spacing)(T, steps)


class DDIMSampler:
    """Draws samples for class labels y, chunked into `config.batch_size` rows, guided by
    `guidance` (default: the one `config` selects, `Guidance.from_config(config)`).

    x_T is drawn for all samples at once, so with eta = 0 (deterministic DDIM) the chunk
    size changes a sample at most at float rounding (kernels may pick other paths for
    other batch sizes); with eta > 0 each step's noise is drawn chunk by chunk, so
    samples then depend on `batch_size` too (caches name it: `dashlib.generate`)."""

    def __init__(self, diffusion: Diffusion, config: SampleConfig, guidance: Guidance | None = None) -> None:
        self.diffusion = diffusion
        self.config = config
        self.guidance = guidance if guidance is not None else Guidance.from_config(config)
        self.timesteps = ddim_timesteps(diffusion.T, config.steps, config.spacing)
        a = diffusion.alpha_bar.float()
        self.a_t = a[self.timesteps]
        self.a_prev = torch.cat([a[self.timesteps[1:]], torch.ones(1)])
        eta = config.eta
        self.sigma = eta * ((1 - self.a_prev) / (1 - self.a_t) * (1 - self.a_t / self.a_prev)).sqrt()
        self.w = self.guidance.scale(self.timesteps, diffusion.T)

    def initial_noise(self, n: int, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
        """x_T (n, C, H, W), drawn for all samples at once so chunking never changes it."""
        return torch.randn((n, *shape), generator=generator)

    @torch.no_grad()
    def sample(self, model: nn.Module, y: Tensor, generator: torch.Generator) -> Tensor:
        """Samples (N, C, H, W) in [-1, 1] for labels y (N,)."""
        return self._run(model, y, generator, keep_trajectory=False)[0]

    @torch.no_grad()
    def sample_trajectory(self, model: nn.Module, y: Tensor,
                          generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(samples (N, C, H, W), trajectory (S + 1, N, C, H, W) from x_T to x_0)."""
        return self._run(model, y, generator, keep_trajectory=True)

    @torch.no_grad()
    def sample_from(self, model: nn.Module, x_T: Tensor, y: Tensor,
                    generator: torch.Generator) -> Tensor:
        """Samples (N, C, H, W) from given x_T (N, C, H, W) for labels y (N,); used to
        denoise one rank's share of noise drawn for all samples (dashlib.distributed)."""
        return self._chunks(model, x_T, y, generator, keep_trajectory=False)[0]

    def _run(self, model: nn.Module, y: Tensor, generator: torch.Generator,
             keep_trajectory: bool) -> tuple[Tensor, Tensor]:
        cfg = model.config
        x_T = self.initial_noise(len(y), (cfg.in_channels, cfg.image_size, cfg.image_size), generator)
        return self._chunks(model, x_T, y, generator, keep_trajectory)

    def _chunks(self, model: nn.Module, x_T: Tensor, y: Tensor, generator: torch.Generator,
                keep_trajectory: bool) -> tuple[Tensor, Tensor]:
        device = next(model.parameters()).device
        outs, trajs = [], []
        for start in range(0, len(y), self.config.batch_size):
            rows = slice(start, start + self.config.batch_size)
            x, traj = self.denoise(model, x_T[rows].to(device), y[rows].to(device), generator,
                                   keep_trajectory)
            outs.append(x.cpu())
            if keep_trajectory:
                trajs.append(torch.stack(traj).cpu())
        trajectory = torch.cat(trajs, dim=1) if keep_trajectory else torch.empty(0)
        return torch.cat(outs), trajectory

    def denoise(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator,
                keep_trajectory: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Run every DDIM step on one chunk; returns (x_0, [x_T, ..., x_0] or [])."""
        traj = [x] if keep_trajectory else []
        for i, t in enumerate(self.timesteps.tolist()):
            t_batch = torch.full((len(y),), t, dtype=torch.long, device=x.device)
            eps = guided_eps(model, x, t_batch, y, float(self.w[i]))
            x = self.step(x, eps, i, generator)
            if keep_trajectory:
                traj.append(x)
        return x, traj

    def step(self, x_t: Tensor, eps: Tensor, i: int, generator: torch.Generator) -> Tensor:
        """DDIM update from timesteps[i] to timesteps[i+1] (eq. 12)."""
        a_t, a_prev, sigma = float(self.a_t[i]), float(self.a_prev[i]), float(self.sigma[i])
        x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        if self.config.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        x_prev = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = torch.randn(x_t.shape, generator=generator).to(x_t.device)
            x_prev = x_prev + sigma * z
        return x_prev


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """n labels (n,) cycling through the classes: 0, 1, ..., K-1, 0, 1, ..."""
    return torch.arange(n) % num_classes
