"""Measurements behind the small-budget hypotheses (dashlib.diagnosis)."""

from __future__ import annotations

import pytest
import torch

from dashlib.config import DiffusionConfig
from dashlib.diagnosis import halves, per_bin_error, term_curves, weight_stats
from dashlib.diffusion import Diffusion
from dashlib.tirt import make_weighting


def test_uniform_weights_are_the_neutral_reference():
    d = Diffusion(DiffusionConfig(schedule="cosine", T=100))
    s = weight_stats(make_weighting("uniform", d), batches=50)
    assert s["high_noise_mass"] == pytest.approx(0.5)
    assert s["ess_fraction"] == pytest.approx(1.0) and s["normaliser_cv"] == pytest.approx(0.0)


def test_min_snr_moves_mass_off_the_noisy_half_and_shrinks_the_batch():
    d = Diffusion(DiffusionConfig(schedule="cosine", T=100))
    s = weight_stats(make_weighting("min-snr", d), batches=200)
    assert s["high_noise_mass"] < 0.25 and 0.2 < s["ess_fraction"] < 0.9 and s["normaliser_cv"] > 0
    w = make_weighting("tirt", d)
    with torch.no_grad():
        w.table[d.T // 2:] = 5.0  # TIRT that learned to favour the noisy half
    assert weight_stats(w, batches=50)["high_noise_mass"] > s["high_noise_mass"]


def test_per_bin_error_averages_seeds_per_variant_and_budget():
    cells = [{"variant": "dash", "budget": 10, "per_bin": {"cond_mse": [1.0, 3.0]}},
             {"variant": "dash", "budget": 10, "per_bin": {"cond_mse": [3.0, 5.0]}},
             {"variant": "cond-only", "budget": 10, "per_bin": None}]
    assert per_bin_error(cells) == {"dash@10": [2.0, 4.0]}
    assert halves([1.0, 2.0, 3.0, 5.0]) == {"low_noise": 1.5, "high_noise": 4.0}
    log = [{"step": 25, "im": 0.5, "un": 0.4}, {"step": 50, "loss": 1.0}, {"step": 75, "im": 0.3, "un": 0.2}]
    assert term_curves(log) == {"step": [25, 75], "im": [0.5, 0.3], "un": [0.4, 0.2]}
