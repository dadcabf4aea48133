"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- decay_k * shadow + (1 - decay_k) * params, with
    decay_k = min(decay, (1 + k) / (10 + k)) so early averages are not
    dominated by the random initialisation (a common warm-up)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        k = self.num_updates
        decay = min(self.decay, (1 + k) / (10 + k))
        ema_p = list(self.shadow.parameters())
        p = [q.detach() for q in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1 - decay)
        for b_ema, b in zip(self.shadow.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, object]:
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.shadow.load_state_dict(state["shadow"])  # type: ignore[arg-type]
        self.num_updates = int(state["num_updates"])  # type: ignore[call-overload]
