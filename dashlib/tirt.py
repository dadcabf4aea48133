"""Per-timestep loss weighting: TIRT (docs/paper.md, method 2) and alternatives.

Every weighting turns per-sample losses L_i (B,) at timesteps t_i (B,) into
one scalar (`reduce`) and reports its effective per-sample weights w_t
(`weights`, unit mean over the batch). They share a learnable table of one
value per timestep so a teacher's table can be transferred and frozen
(docs/paper.md, method 3: TIRT Transfer).

* ``tirt`` (faithful): w_t = min(SNR_t, 5) * sigmoid(lambda_t), normalised to
  mean 1 over the batch, lambda_t initialised to 0 (Min-SNR-5) and learned by
  minimising the weighted loss itself. Nothing regularises lambda_t, so
  gradient descent moves weight toward timesteps whose loss is small ("easy"
  ones): the weighted mean of losses is lowest when all weight sits on the
  easiest timestep. `drift_report` measures this.
* ``uncertainty`` (principled variant, EDM2: Karras et al. 2024, eq. 21): each
  timestep has a log-variance u_t and the objective is
  min(SNR_t, 5) * L / exp(u_t) + u_t. Its optimum, exp(u_t) = min(SNR_t, 5) E[L_t],
  equalises every timestep's contribution instead of collapsing onto the
  easiest one; the +u_t term is the regulariser TIRT lacks.
* ``min-snr``: the fixed Min-SNR-5 prior (TIRT with lambda_t frozen at 0).
* ``uniform``: w_t = 1.

Batch statistics (the mean that normalises w_t, the loss tracker's per-bin
sums) go through a `BatchReduce` the caller passes: by default this process's
rows (`LOCAL_ROWS`); the Trainer passes one that spans every rank's rows under
torchrun (`dashlib.distributed.GlobalBatch`). The maths here never knows
whether it runs distributed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn

from dashlib.diffusion import Diffusion
from dashlib.registry import Registry

SNR_GAMMA = 5.0
LOSS_BINS = 20


class BatchReduce(Protocol):
    """Which rows a batch statistic covers: `sum` (B, ...) -> (...) over the rows,
    `mean` (B,) -> () per row. The distributed one (dashlib.distributed.GlobalBatch)
    adds every rank's share and must stay differentiable."""

    def sum(self, x: Tensor) -> Tensor: ...

    def mean(self, x: Tensor) -> Tensor: ...


class LocalRows:
    """Batch statistics over the rows this process holds (one process, evaluation)."""

    def sum(self, x: Tensor) -> Tensor:
        return x.sum(0)

    def mean(self, x: Tensor) -> Tensor:
        return x.mean()


LOCAL_ROWS = LocalRows()


class TimestepWeighting(nn.Module):
    """Base class. `table` (T,) is the learnable per-timestep value.

    `loss_ema` (LOSS_BINS,) tracks the raw per-timestep-bin loss (a buffer,
    not learned) so drift toward easy timesteps can be measured.
    """

    learnable = True

    def __init__(self, diffusion: Diffusion) -> None:
        super().__init__()
        self.T = diffusion.T
        self.table = nn.Parameter(torch.zeros(diffusion.T), requires_grad=self.learnable)
        self.register_buffer("base", diffusion.snr.clamp(max=SNR_GAMMA).float())
        self.register_buffer("loss_ema", torch.zeros(LOSS_BINS))
        self.register_buffer("loss_seen", torch.zeros(LOSS_BINS))

    def raw(self, t: Tensor, table: Tensor) -> Tensor:
        """Unnormalised weights (B,) at timesteps t (B,) given table values (B,)."""
        raise NotImplementedError

    def weights(self, t: Tensor, over: BatchReduce = LOCAL_ROWS) -> Tensor:
        """w_t (B,), normalised to mean 1 over the batch `over` covers (docs/paper.md
        method 2): this process's rows, or the global batch under torchrun."""
        w = self.raw(t, self.table[t])
        return w / over.mean(w).clamp_min(1e-12)

    def reduce(self, t: Tensor, loss: Tensor, over: BatchReduce = LOCAL_ROWS) -> Tensor:
        """Scalar training objective from per-sample losses (B,); the weights are
        normalised `over` the batch, the final mean is over local rows (DDP averages
        the equal shares' gradients)."""
        return (self.weights(t, over) * loss).mean()

    def reduce_terms(self, t: Tensor, terms: Mapping[str, Tensor], coef: Mapping[str, float],
                     over: BatchReduce = LOCAL_ROWS) -> Tensor:
        """The objective of a weighted sum of per-sample loss terms (each (B,)),
        sum_k coef_k * terms_k. `reduce` is linear in the loss here, so each term is
        reduced on its own (the order distillation runs have always summed in). At least
        one coefficient must be nonzero (`weighted_terms`)."""
        return sum(coef[k] * self.reduce(t, terms[k], over) for k in weighted_terms(terms, coef))

    def freeze(self) -> TimestepWeighting:
        self.table.requires_grad_(False)
        return self

    @property
    def frozen(self) -> bool:
        return not self.table.requires_grad

    @torch.no_grad()
    def observe(self, t: Tensor, loss: Tensor, momentum: float = 0.98,
                over: BatchReduce = LOCAL_ROWS) -> None:
        """Track per-bin raw loss (B,) with an exponential moving average; the bin
        means pool the rows `over` covers, so every rank keeps the same buffer."""
        bins = bin_of(t.to(self.loss_ema.device), self.T)
        loss = loss.detach().float().to(self.loss_ema.device)
        total = torch.zeros_like(self.loss_ema).index_add_(0, bins, loss)
        count = torch.zeros_like(self.loss_ema).index_add_(0, bins, torch.ones_like(loss))
        # one row of local sums; `over` adds every rank's row (identity in one process)
        total, count = over.sum(torch.stack([total, count])[None])
        mean = total / count.clamp_min(1)
        present, seen = count > 0, self.loss_seen > 0
        blended = torch.where(seen, momentum * self.loss_ema + (1 - momentum) * mean, mean)
        self.loss_ema.copy_(torch.where(present, blended, self.loss_ema))
        self.loss_seen.add_(present.float())

    @torch.no_grad()
    def profile(self, prior: bool = False) -> Tensor:
        """Effective weight of every timestep (T,), normalised to mean 1 over t.

        `prior=True` gives the same weighting with its table at zero (the
        initial Min-SNR-5 weights for TIRT).
        """
        t = torch.arange(self.T, device=self.table.device)
        w = self.raw(t, torch.zeros_like(self.table) if prior else self.table)
        return w / w.mean().clamp_min(1e-12)


def bin_of(t: Tensor, T: int) -> Tensor:
    """Timestep bin index in [0, LOSS_BINS) for timesteps t (B,)."""
    return (t * LOSS_BINS // T).clamp(max=LOSS_BINS - 1)


def bin_mean(values: Tensor) -> Tensor:
    """Mean of a per-timestep profile (T,) within each bin -> (LOSS_BINS,)."""
    t = torch.arange(values.numel(), device=values.device)
    bins = bin_of(t, values.numel())
    total = torch.zeros(LOSS_BINS, dtype=torch.float64, device=values.device)
    count = torch.zeros_like(total)
    total.index_add_(0, bins, values.double())
    count.index_add_(0, bins, torch.ones_like(values, dtype=torch.float64))
    return total / count.clamp_min(1)


def weighted_terms(terms: Mapping[str, Tensor], coef: Mapping[str, float]) -> list[str]:
    """The names of `terms` whose coefficient is nonzero, in order; a `ValueError` if there
    are none: an objective of no terms has nothing to train (and would sum to the int 0)."""
    names = [k for k in terms if coef[k]]
    if not names:
        raise ValueError(f"every loss term's coefficient is 0 ({dict(coef)}): nothing to train; "
                         f"give at least one term a weight above 0")
    return names


WEIGHTINGS: Registry[type[TimestepWeighting]] = Registry("timestep weighting")


@WEIGHTINGS.register("tirt")
class TIRT(TimestepWeighting):
    """w_t = min(SNR_t, 5) * sigmoid(lambda_t); table = lambda_t (docs/paper.md)."""

    def raw(self, t: Tensor, table: Tensor) -> Tensor:
        return self.base[t] * torch.sigmoid(table)


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(TimestepWeighting):
    """EDM2-style learned uncertainty; table = u_t (log-variance).

    Objective mean_i[min(SNR, 5) L_i exp(-u_t) + u_t]; its effective weights
    min(SNR, 5) exp(-u_t) are what `weights` returns and what transfers.
    """

    def raw(self, t: Tensor, table: Tensor) -> Tensor:
        return self.base[t] * torch.exp(-table)

    def reduce(self, t: Tensor, loss: Tensor, over: BatchReduce = LOCAL_ROWS) -> Tensor:
        if self.frozen:
            return super().reduce(t, loss, over)
        u = self.table[t]
        return (self.base[t] * loss * torch.exp(-u) + u).mean()

    def reduce_terms(self, t: Tensor, terms: Mapping[str, Tensor], coef: Mapping[str, float],
                     over: BatchReduce = LOCAL_ROWS) -> Tensor:
        """Reduced once, on the weighted sum: `reduce` is not linear while u_t learns (its
        + u_t term), and reducing each term would add sum_k coef_k * u_t instead of u_t."""
        if self.frozen:
            return super().reduce_terms(t, terms, coef, over)
        return self.reduce(t, sum(coef[k] * terms[k] for k in weighted_terms(terms, coef)), over)


@WEIGHTINGS.register("min-snr")
class MinSNR(TimestepWeighting):
    """The Min-SNR-5 prior alone: TIRT with lambda_t frozen at 0."""

    learnable = False

    def raw(self, t: Tensor, table: Tensor) -> Tensor:
        return self.base[t] * torch.sigmoid(table)


@WEIGHTINGS.register("uniform")
class Uniform(TimestepWeighting):
    """w_t = 1 for every timestep."""

    learnable = False

    def raw(self, t: Tensor, table: Tensor) -> Tensor:
        return torch.ones_like(table)


def make_weighting(name: str, diffusion: Diffusion) -> TimestepWeighting:
    return WEIGHTINGS.get(name)(diffusion)


def transfer(source: TimestepWeighting, diffusion: Diffusion) -> TimestepWeighting:
    """TIRT Transfer (docs/paper.md method 3): a frozen copy of the teacher's table."""
    copy = type(source)(diffusion)
    copy.load_state_dict(source.state_dict())
    return copy.freeze()


@torch.no_grad()
def drift_report(weighting: TimestepWeighting) -> dict[str, float]:
    """How far the learned weights moved toward easy (low-loss) timesteps.

    Compares, per timestep bin, the current effective weight with the prior's
    (table at zero) against the tracked raw loss:

    * ``easy_mass`` / ``easy_mass_prior``: share of total weight on the half of
      the bins with the lowest loss, now and under the prior;
    * ``drift``: easy_mass - easy_mass_prior (> 0: weight moved toward easy
      timesteps);
    * ``corr``: Pearson correlation across bins between log(weight / prior)
      and the bin's loss (< 0: weight grew where the loss is low);
    * ``table_abs_max``: the largest |lambda_t|.
    """
    table_max = float(weighting.table.abs().max())
    if not bool((weighting.loss_seen > 0).all()):
        nan = math.nan
        return {"easy_mass": nan, "easy_mass_prior": nan, "drift": nan, "corr": nan,
                "table_abs_max": table_max}
    now, before = bin_mean(weighting.profile()), bin_mean(weighting.profile(prior=True))
    loss = weighting.loss_ema.double()
    easy = loss.argsort()[: LOSS_BINS // 2]
    easy_now = float(now[easy].sum() / now.sum())
    easy_before = float(before[easy].sum() / before.sum())
    ratio = (now.clamp_min(1e-12) / before.clamp_min(1e-12)).log()
    corr = torch.corrcoef(torch.stack([ratio, loss]))[0, 1] if ratio.std() > 0 else torch.tensor(0.0)
    return {
        "easy_mass": easy_now,
        "easy_mass_prior": easy_before,
        "drift": easy_now - easy_before,
        "corr": float(corr) if torch.isfinite(corr) else 0.0,
        "table_abs_max": table_max,
    }
