"""Why DASH with TIRT Transfer can lose at small budgets: measurements for each hypothesis.

* H1, *mass on the low-noise timesteps*: the transferred weights (Min-SNR-5 x
  sigmoid(lambda_t)) put almost no weight on high-noise timesteps (SNR_t << 1),
  where the class decision and the guidance gap are made, so a short run
  under-fits them. Measured by `weight_stats` (the share of the weight profile
  on t >= T/2) and `per_bin_error` (the student's conditional error against the
  teacher per timestep bin, from the calibration, by variant).
* H2, *batch-mean normalisation*: w_t / mean_batch(w) with weights this
  uneven leaves few effective samples per batch, so the gradient is noisier.
  Measured by `weight_stats`: the effective sample size (sum w)^2 / sum w^2 of a
  batch, as a fraction of the batch, and the spread of the normaliser.
* H3, *L_un / L_im balance early on*: DASH spends the same steps on two
  branches, so its conditional branch (L_im) may trail cond-only's early.
  Measured by `term_curves` from the run logs (L_im of DASH and of cond-only
  at the same steps).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from dashlib.tirt import TimestepWeighting


@torch.no_grad()
def weight_stats(weighting: TimestepWeighting, batch: int = 64, batches: int = 2000,
                 generator: torch.Generator | None = None) -> dict[str, float]:
    """H1 and H2 for one weighting, with t ~ U{0..T-1} as in training.

    `high_noise_mass`: share of the profile's weight on t >= T/2 (0.5 under w_t = 1);
    `ess_fraction`: mean over batches of (sum w)^2 / (B sum w^2) (1 under w_t = 1);
    `normaliser_cv`: coefficient of variation of the batch mean of the raw weights.
    `generator` draws the timesteps; without one, a generator seeded 0 (the figures' draw)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    T = weighting.T
    profile = weighting.profile()
    t = torch.randint(0, T, (batches, batch), generator=g)
    raw = weighting.raw(t.flatten(), weighting.table[t.flatten()]).view(batches, batch).double()
    ess = raw.sum(1).square() / (batch * raw.square().sum(1)).clamp_min(1e-30)
    means = raw.mean(1)
    return {"high_noise_mass": float(profile[T // 2:].sum() / profile.sum()),
            "ess_fraction": float(ess.mean()),
            "normaliser_cv": float(means.std() / means.mean().clamp_min(1e-30))}


def per_bin_error(cells: Iterable[Mapping[str, Any]], key: str = "cond_mse") -> dict[str, Any]:
    """{(variant, budget): per-bin mean over seeds of the calibration's `key`} as
    {"variant@budget": [bins...]}; bin 0 is the lowest noise."""
    groups: dict[str, list[list[float]]] = {}
    for c in cells:
        bins = (c.get("per_bin") or {}).get(key)
        if bins:
            groups.setdefault(f"{c['variant']}@{c['budget']}", []).append(list(bins))
    return {k: [statistics.fmean(col) for col in zip(*v)] for k, v in sorted(groups.items())}


def halves(bins: Sequence[float]) -> dict[str, float]:
    """Mean of the low-noise and high-noise halves of a per-bin profile."""
    n = len(bins) // 2
    return {"low_noise": statistics.fmean(bins[:n]), "high_noise": statistics.fmean(bins[n:])}


def term_curves(log: Sequence[Mapping[str, Any]], terms: Sequence[str] = ("im", "un")) -> dict[str, Any]:
    """{"step": [...], term: [...]} from a run's log lines (training-loss terms, batch means)."""
    lines = [r for r in log if all(t in r for t in terms)]
    return {"step": [r["step"] for r in lines], **{t: [float(r[t]) for r in lines] for t in terms}}
