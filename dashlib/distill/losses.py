"""Per-sample distillation losses, each (B,): the caller weights (TIRT) and reduces.

Notation (docs/paper.md): eps_S / eps_T are student / teacher predictions, "cond"
the branch at label y, "uncond" the branch at the null label, delta = cond -
uncond the guidance gap, eps the true noise that made x_t.
"""

from __future__ import annotations

from torch import Tensor

from dashlib.guidance import cfg_combine
from dashlib.losses import mse_per_sample


def imitation(cond_s: Tensor, cond_t: Tensor) -> Tensor:
    """L_im = |eps_S(x_t,t,y) - eps_T(x_t,t,y)|^2."""
    return mse_per_sample(cond_s, cond_t)


def unconditional(uncond_s: Tensor, uncond_t: Tensor) -> Tensor:
    """L_un = |eps_S(x_t,t,null) - eps_T(x_t,t,null)|^2."""
    return mse_per_sample(uncond_s, uncond_t)


def anchor(cond_s: Tensor, eps: Tensor) -> Tensor:
    """L_an = |eps_S(x_t,t,y) - eps|^2 (ties the student to the data)."""
    return mse_per_sample(cond_s, eps)


def composite(cond_s: Tensor, uncond_s: Tensor, cond_t: Tensor, uncond_t: Tensor,
              w: Tensor | float) -> Tensor:
    """|guided_S(w) - guided_T(w)|^2 with guided = uncond + w (cond - uncond); w float or (B,)."""
    return mse_per_sample(cfg_combine(cond_s, uncond_s, w), cfg_combine(cond_t, uncond_t, w))


def gap(cond_s: Tensor, uncond_s: Tensor, cond_t: Tensor, uncond_t: Tensor) -> Tensor:
    """|delta_S - delta_T|^2, delta = cond - uncond."""
    return mse_per_sample(cond_s - uncond_s, cond_t - uncond_t)


def features(student_feats: list[Tensor], teacher_feats: list[Tensor]) -> Tensor:
    """FitNets hint loss: sum over layers l of |A_l(h_S,l) - h_T,l|^2 (already adapted)."""
    total = mse_per_sample(student_feats[0], teacher_feats[0])
    for s, t in zip(student_feats[1:], teacher_feats[1:], strict=True):  # a missing layer is a bug
        total = total + mse_per_sample(s, t)
    return total
