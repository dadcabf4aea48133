"""Tiny MLP epsilon-models for the 2D toy, with a null class like the UNet.

eps_theta(x_t, t, y): (B, 2), (B,), (B,) -> (B, 2). The sinusoidal timestep
embedding and the class embedding (num_classes + 1 rows when `cfg`; row
`num_classes` is the null label) are added to every hidden layer, so the
model plugs into `dashlib.guidance.branches` and `DDIMSampler.denoise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.config import Validated, positive
from dashlib.unet import timestep_embedding


@dataclass(frozen=True)
class ToyModelConfig(Validated):
    hidden: int = 128
    depth: int = 3
    num_classes: int = 3
    cfg: bool = True

    def validate(self) -> None:
        for name in ("hidden", "depth", "num_classes"):
            positive(self, name)


class ToyMLP(nn.Module):
    """An MLP with (timestep + class) embeddings added before every hidden activation."""

    def __init__(self, config: ToyModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.time_mlp = nn.Sequential(nn.Linear(32, h), nn.SiLU(), nn.Linear(h, h))
        self.label_emb = nn.Embedding(config.num_classes + int(config.cfg), h)
        self.inp = nn.Linear(2, h)
        self.hidden = nn.ModuleList(nn.Linear(h, h) for _ in range(config.depth))
        self.out = nn.Linear(h, 2)

    @property
    def null_label(self) -> int:
        if not self.config.cfg:
            raise ValueError("this model has no null label (cfg=False)")
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, 32)) + self.label_emb(y)
        h = self.inp(x)
        for layer in self.hidden:
            h = layer(nn.functional.silu(h + emb))
        return self.out(nn.functional.silu(h))


def build_toy_mlp(config: ToyModelConfig, seed: int) -> ToyMLP:
    """A freshly initialised ToyMLP whose weights depend only on (config, seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyMLP(config)
