"""What the explorer looks at: matched inputs at one (class, t, seed) and each model's branches.

For a class y, a timestep t and a seed, a *probe* is n held-out images of
class y, x_0 (n, C, H, W), with noise eps (n, C, H, W), noised to

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps            (DDPM eq. 4)

x_0 and eps depend on (y, seed) only, so moving t re-noises the same images.
Teacher and students see the same x_t (matched inputs, as in calibration).
Row 0 is the image the explorer draws; all n rows give the rho/cos at t.

Per model the branches are eps_cond = eps(x_t, t, y), eps_uncond =
eps(x_t, t, null), the gap delta = eps_cond - eps_uncond, and the guided
prediction eps_uncond + w (eps_cond - eps_uncond) with its x_0 estimate
x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_guided) / sqrt(alpha_bar_t).
A single-head student (cfg=False) has no unconditional branch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.calibration import branch_outputs, gap_metrics
from dashlib.data import Split
from dashlib.diffusion import Diffusion
from dashlib.guidance import cfg_combine

GAP_STATS = ("rho", "cos", "gap_mse", "uncond_mse", "student_gap_abs")


@dataclass(frozen=True)
class ProbeKey:
    """Which inputs: class y, timestep t, seed."""

    y: int
    t: int
    seed: int


@dataclass(frozen=True)
class Probe:
    """x0, eps, x_t: (n, C, H, W); t, y: (n,) int64 (constant)."""

    key: ProbeKey
    x0: Tensor
    eps: Tensor
    x_t: Tensor
    t: Tensor
    y: Tensor


def make_probe(split: Split, diffusion: Diffusion, key: ProbeKey, n: int) -> Probe:
    """n held-out images of class key.y (drawn by key.seed) noised to timestep key.t."""
    if not 0 <= key.t < diffusion.T:
        raise ValueError(f"timestep t = {key.t} is outside [0, {diffusion.T - 1}]")
    pool = (split.y == key.y).nonzero().flatten()
    if len(pool) == 0:
        raise ValueError(f"the split has no images of class {key.y}")
    g = torch.Generator().manual_seed(key.seed)
    order = pool[torch.randperm(len(pool), generator=g)]
    idx = order[torch.arange(n) % len(order)]
    x0 = split.x[idx]
    eps = torch.randn(x0.shape, generator=g)
    t = torch.full((n,), key.t, dtype=torch.long)
    y = torch.full((n,), key.y, dtype=torch.long)
    return Probe(key, x0, eps, diffusion.q_sample(x0, t, eps), t, y)


@dataclass(frozen=True)
class Branches:
    """eps_cond (n, C, H, W) and eps_uncond (n, C, H, W), or None without a null branch."""

    eps_cond: Tensor
    eps_uncond: Tensor | None

    @property
    def delta(self) -> Tensor | None:
        """The guidance gap eps_cond - eps_uncond (n, C, H, W)."""
        return None if self.eps_uncond is None else self.eps_cond - self.eps_uncond

    def guided(self, w: float) -> Tensor:
        """eps_uncond + w delta (n, C, H, W); a single-head model ignores w."""
        if self.eps_uncond is None:
            return self.eps_cond
        return cfg_combine(self.eps_cond, self.eps_uncond, w)


def model_branches(model: nn.Module, probe: Probe) -> Branches:
    """Both branches in one batched forward (one pass for a single-head model)."""
    eps_cond, eps_uncond = branch_outputs(model, probe.x_t, probe.t, probe.y)
    return Branches(eps_cond, eps_uncond if model.config.cfg else None)


class BranchCache:
    """Least-recently-used cache of forward passes keyed by (model name, y, t, seed)."""

    def __init__(self, max_entries: int = 512) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, ProbeKey], Branches] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, name: str, model: nn.Module, probe: Probe) -> Branches:
        key = (name, probe.key)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        found = self._entries[key] = model_branches(model, probe)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._entries)


def branch_stats(student: Branches, teacher: Branches) -> dict[str, float]:
    """rho, cos, gap_mse, cond_mse, uncond_mse, teacher/student |delta| over the probe rows.

    The gap statistics are NaN for a model without an unconditional branch.
    """
    uncond = student.eps_uncond if student.eps_uncond is not None else student.eps_cond
    assert teacher.eps_uncond is not None, "the teacher must have both branches"
    stats = gap_metrics(student.eps_cond, uncond, teacher.eps_cond, teacher.eps_uncond)
    if student.eps_uncond is None:
        stats.update({k: math.nan for k in GAP_STATS})
    return stats


@dataclass(frozen=True)
class ModelView:
    """One model's panels for probe row 0, each (C, H, W); None where it has no null branch."""

    name: str
    x_t: Tensor
    eps_cond: Tensor
    eps_uncond: Tensor | None
    delta: Tensor | None
    x0_guided: Tensor
    w: float
    stats: dict[str, float]


def model_view(name: str, branches: Branches, teacher: Branches, probe: Probe,
               diffusion: Diffusion, w: float) -> ModelView:
    """The panels and statistics of one model at the probe, guided at scale w."""
    eps = branches.guided(w)[:1]
    x0_hat = diffusion.x0_from_eps(probe.x_t[:1], probe.t[:1], eps).clamp(-1, 1)
    delta = branches.delta
    return ModelView(
        name=name, x_t=probe.x_t[0], eps_cond=branches.eps_cond[0],
        eps_uncond=None if branches.eps_uncond is None else branches.eps_uncond[0],
        delta=None if delta is None else delta[0], x0_guided=x0_hat[0], w=w,
        stats=branch_stats(branches, teacher))


def profile_timesteps(T: int, k: int = 16) -> tuple[int, ...]:
    """k timesteps spread evenly over [0, T - 1] (the |delta|-against-t profile's grid)."""
    return tuple(sorted({round(i * (T - 1) / (k - 1)) for i in range(k)}))


@dataclass(frozen=True)
class GapProfile:
    """E|delta| over the first rows of the probe at each of `timesteps`, per model (NaN
    without a null branch), and `peak`: the teacher's largest |channel-mean delta| of
    row 0 over them, the heat map's scale fixed across t."""

    timesteps: tuple[int, ...]
    gap_abs: dict[str, tuple[float, ...]]
    peak: float


def model_gap_profile(model: nn.Module, probes: list[Probe], rows: int) -> Tensor | None:
    """delta (K, rows, C, H, W) at K probes (timesteps) in ONE batched forward; None
    for a model without a null branch."""
    if not model.config.cfg:
        return None
    x_t = torch.cat([p.x_t[:rows] for p in probes])
    t = torch.cat([p.t[:rows] for p in probes])
    y = torch.cat([p.y[:rows] for p in probes])
    cond, uncond = branch_outputs(model, x_t, t, y)
    return (cond - uncond).unflatten(0, (len(probes), -1))


def gap_profile(models: dict[str, nn.Module], split: Split, diffusion: Diffusion, y: int, seed: int,
                n: int, rows: int, timesteps: tuple[int, ...], teacher: str) -> GapProfile:
    """The |delta|-against-t profile of every model at class y and seed.

    The probes are the explorer's own (n rows, so row 0 is the image it draws); the
    profile uses their first `rows` rows, one forward per model for all timesteps.
    """
    probes = [make_probe(split, diffusion, ProbeKey(y, t, seed), n) for t in timesteps]
    gap_abs: dict[str, tuple[float, ...]] = {}
    peak = 1e-6
    for name, model in models.items():
        delta = model_gap_profile(model, probes, rows)
        if delta is None:
            gap_abs[name] = tuple(math.nan for _ in timesteps)
            continue
        gap_abs[name] = tuple(delta.abs().flatten(1).mean(1).tolist())
        if name == teacher:
            peak = max(peak, float(delta[:, 0].float().mean(1).abs().max()))
    return GapProfile(tuple(timesteps), gap_abs, peak)
