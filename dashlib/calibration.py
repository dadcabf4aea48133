"""Guidance-gap calibration on matched inputs (docs/paper.md 'Setup', evaluation).

Teacher and student see the same held-out x_0, noise eps, timestep t and
label y. With delta = eps(x_t, t, y) - eps(x_t, t, null):

    rho     = E|delta_S| / E|delta_T|                (1 = gap magnitude kept, 0 = collapsed)
    cos     = E_i cos(delta_S,i, delta_T,i)           (direction agreement, per sample)
    gap_mse = E (delta_S - delta_T)^2
    cond_mse, uncond_mse = each branch's MSE against the teacher's

Reported overall and per timestep bin. A student without a null row
(single-head, cfg=False) has no gap: its gap metrics are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dashlib.data import Split
from dashlib.diffusion import Diffusion
from dashlib.guidance import branches

CALIB_BINS = 10


@dataclass(frozen=True)
class MatchedInputs:
    """x0, eps (N, C, H, W); t, y (N,): one fixed set shared by teacher and student."""

    x0: Tensor
    eps: Tensor
    t: Tensor
    y: Tensor

    def x_t(self, diffusion: Diffusion) -> Tensor:
        return diffusion.q_sample(self.x0, self.t, self.eps)


def matched_inputs(split: Split, diffusion: Diffusion, n: int,
                   generator: torch.Generator) -> MatchedInputs:
    """n held-out images with fresh noise and stratified timesteps.

    Timesteps are stratified (one draw per equal slice of [0, T)) so every
    timestep bin gets the same number of samples.
    """
    idx = torch.randint(0, len(split), (n,), generator=generator)
    offsets = torch.rand(n, generator=generator)
    t = ((torch.arange(n) + offsets) * diffusion.T / n).long().clamp(max=diffusion.T - 1)
    t = t[torch.randperm(n, generator=generator)]
    eps = torch.randn(split.x[idx].shape, generator=generator)
    return MatchedInputs(split.x[idx], eps, t, split.y[idx])


@torch.no_grad()
def branch_outputs(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor,
                   batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """(eps_cond, eps_uncond), each (N, C, H, W) on CPU, in chunks of `batch_size` rows.

    For a model without a null row both entries are its single output.
    """
    device = next(model.parameters()).device
    conds, unconds = [], []
    for s in range(0, len(y), batch_size):
        rows = slice(s, s + batch_size)
        xs, ts, ys = x_t[rows].to(device), t[rows].to(device), y[rows].to(device)
        if model.config.cfg:
            c, u = branches(model, xs, ts, ys)
        else:
            c = u = model(xs, ts, ys)
        conds.append(c.float().cpu())
        unconds.append(u.float().cpu())
    return torch.cat(conds), torch.cat(unconds)


#: Below this mean |delta_T| on the matched inputs the teacher has no guidance gap to speak
#: of (a teacher trained a step or two; fp32 rounds eps of order 1 at ~1e-7), and
#: rho = E|delta_S| / E|delta_T| divides by about zero: the tables show it as undefined.
MIN_TEACHER_GAP = 1e-6


def rho_undefined(calibrations: Iterable[Mapping[str, Any]], per_bin: bool = False) -> str | None:
    """Why rho is undefined for students scored against one teacher (their `calibration`
    dicts, `Calibrator.score`, or records holding its `teacher_gap_abs`), or None where the
    teacher's gap is large enough; `per_bin` judges each timestep bin's gap instead."""
    gaps = [g for c in calibrations for g in _teacher_gaps(c, per_bin)
            if isinstance(g, (int, float)) and math.isfinite(g)]
    if not gaps or min(gaps) >= MIN_TEACHER_GAP:
        return None
    where = "in a timestep bin of the matched inputs" if per_bin else "on the matched inputs"
    return (f"the teacher's guidance gap is about zero (E|delta_T| = {min(gaps):.1e} {where}, "
            f"below {MIN_TEACHER_GAP:g}), so rho = E|delta_S| / E|delta_T| is undefined there (– in "
            f"the tables, no point in the figures): train the teacher longer")


def _teacher_gaps(calibration: Mapping[str, Any], per_bin: bool) -> list[Any]:
    """E|delta_T| of a calibration dict: per timestep bin, or over all its inputs."""
    if per_bin:
        return list((calibration.get("per_bin") or {}).get("teacher_gap_abs") or [])
    return [calibration.get("teacher_gap_abs")]


def gap_metrics(cond_s: Tensor, uncond_s: Tensor, cond_t: Tensor, uncond_t: Tensor) -> dict[str, float]:
    """rho, cos, gap_mse, cond_mse, uncond_mse from branch outputs (N, ...).

    rho = E|delta_S| / E|delta_T| is NaN where E|delta_T| < `MIN_TEACHER_GAP` (a teacher
    with no guidance gap on these rows: the ratio would divide by about zero)."""
    delta_s, delta_t = (cond_s - uncond_s).flatten(1), (cond_t - uncond_t).flatten(1)
    cos = nn.functional.cosine_similarity(delta_s, delta_t, dim=1, eps=1e-12)
    gap_t = delta_t.abs().mean()
    teacher_gap = float(gap_t)
    return {
        "rho": float(delta_s.abs().mean() / gap_t) if teacher_gap >= MIN_TEACHER_GAP else math.nan,
        "cos": float(cos.mean()),
        "gap_mse": float((delta_s - delta_t).pow(2).mean()),
        "cond_mse": float((cond_s - cond_t).pow(2).mean()),
        "uncond_mse": float((uncond_s - uncond_t).pow(2).mean()),
        "teacher_gap_abs": teacher_gap,
        "student_gap_abs": float(delta_s.abs().mean()),
    }


class Calibrator:
    """Caches the teacher's branches on fixed matched inputs and scores students.

    `score(student)` returns the overall metrics plus a "per_bin" dict of
    lists (one value per timestep bin) and the bin edges.
    """

    def __init__(self, teacher: nn.Module, diffusion: Diffusion, inputs: MatchedInputs,
                 batch_size: int = 128, bins: int = CALIB_BINS) -> None:
        self.diffusion, self.inputs, self.batch_size, self.bins = diffusion, inputs, batch_size, bins
        self.x_t = inputs.x_t(diffusion)
        self.cond_t, self.uncond_t = branch_outputs(teacher, self.x_t, inputs.t, inputs.y, batch_size)
        self.bin = (inputs.t * bins // diffusion.T).clamp(max=bins - 1)

    def score(self, student: nn.Module) -> dict[str, Any]:
        """The student against the teacher on the matched inputs (module docstring): floats
        `rho`, `cos`, `gap_mse`, `cond_mse`, `uncond_mse`, ... over all N inputs, and
        `per_bin` (each metric per timestep bin, `bins` values) with `bin_edges` (bins + 1
        timesteps). The student's branches are (N, C, H, W) like the teacher's; it is
        scored in eval mode and left in the mode it had. The teacher itself scores rho = 1,
        cos = 1; a collapsed student (delta_S = 0) rho = 0; a single-head student (no null row)
        NaN for every gap metric (rho, cos, gap_mse, uncond_mse, student_gap_abs)."""
        was_training = student.training
        student.eval()
        cond_s, uncond_s = branch_outputs(student, self.x_t, self.inputs.t, self.inputs.y,
                                          self.batch_size)
        student.train(was_training)
        has_gap = bool(student.config.cfg)
        overall = self._metrics(cond_s, uncond_s, slice(None), has_gap)
        per_bin: dict[str, list[float]] = {k: [] for k in overall}
        for b in range(self.bins):
            m = self._metrics(cond_s, uncond_s, self.bin == b, has_gap)
            for k, v in m.items():
                per_bin[k].append(v)
        edges = [round(b * self.diffusion.T / self.bins) for b in range(self.bins + 1)]
        return {**overall, "per_bin": per_bin, "bin_edges": edges}

    def _metrics(self, cond_s: Tensor, uncond_s: Tensor, rows: slice | Tensor,
                 has_gap: bool) -> dict[str, float]:
        m = gap_metrics(cond_s[rows], uncond_s[rows], self.cond_t[rows], self.uncond_t[rows])
        if not has_gap:
            for k in ("rho", "cos", "gap_mse", "uncond_mse", "student_gap_abs"):
                m[k] = math.nan
        return m
