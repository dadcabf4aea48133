"""Classifier-free guidance: the two branches, their mix, and the w(t) schedules.

eps_guided = eps_uncond + w * (eps_cond - eps_uncond)      (docs/paper.md, 'The problem')

w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1
guided (Ho & Salimans' w_HS = w - 1). The guidance gap is
delta = eps_cond - eps_uncond.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dashlib.config import SampleConfig
from dashlib.registry import Registry

GuidanceFn = Callable[[SampleConfig, Tensor, int], Tensor]
GUIDANCE: Registry[GuidanceFn] = Registry("guidance schedule")


@GUIDANCE.register("constant")
def constant_scale(config: SampleConfig, t: Tensor, T: int) -> Tensor:
    """w(t) = w for every timestep; returns (B,) float."""
    return torch.full(t.shape, config.w, dtype=torch.float32, device=t.device)


@GUIDANCE.register("tag")
def tag_scale(config: SampleConfig, t: Tensor, T: int) -> Tensor:
    """TAG (docs/paper.md, method 4): w(t) = w_min + (w_max - w_min) sigmoid(beta (0.5 - t/T)).

    Guidance is weak at high noise (t near T) and strong near the data.
    """
    s = torch.sigmoid(config.beta * (0.5 - t.float() / T))
    return config.w_min + (config.w_max - config.w_min) * s


def guidance_scale(config: SampleConfig, t: Tensor, T: int) -> Tensor:
    """The guidance scale (B,) at timesteps t (B,) under `config.guidance`."""
    return GUIDANCE.get(config.guidance)(config, t, T)


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, w: Tensor | float) -> Tensor:
    """eps_uncond + w (eps_cond - eps_uncond); w is a float or (B,)."""
    if isinstance(w, Tensor):
        w = w.to(eps_cond.dtype).view(-1, *([1] * (eps_cond.ndim - 1)))
    return eps_uncond + w * (eps_cond - eps_uncond)


def branches(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(eps_cond, eps_uncond), each (B, C, H, W), from ONE batched forward of 2B rows."""
    null = torch.full_like(y, model.null_label)
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    eps_cond, eps_uncond = out.chunk(2)
    return eps_cond, eps_uncond


def guided_eps(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor, w: Tensor | float) -> Tensor:
    """The guided prediction; a model without a null row (cfg=False) ignores w.

    At a constant w of exactly 1 (or 0) the mix is the conditional (or
    unconditional) branch alone, so only that branch is evaluated: half the cost.
    """
    if not model.config.cfg:
        return model(x_t, t, y)
    if isinstance(w, float) and w in (0.0, 1.0):
        return model(x_t, t, y if w == 1.0 else torch.full_like(y, model.null_label))
    eps_cond, eps_uncond = branches(model, x_t, t, y)
    return cfg_combine(eps_cond, eps_uncond, w)
