"""A class-conditional 2D toy: each class is a mixture of Gaussians.

Mode j of class k sits on a circle of radius `radius` at angle
2 pi (j K + k) / (K M) (K classes, M modes per class), so the classes
interleave around the circle and a class-conditional model must tell
neighbouring modes apart: exactly what the guidance gap encodes. The data
live in [-1, 1]^2 like the images, so DDIM clips its x_0 estimate to
[-1, 1] exactly as the image pipeline does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dashlib.config import DiffusionConfig, Validated, fail, in_range, positive
from dashlib.params import check_params
from dashlib.registry import Registry


@dataclass(frozen=True)
class ToyConfig(Validated):
    """The toy problem, its models, the training/sampling budget, and the sizes of
    the diagnostics (`gap_points` noised points per rho/cos, `samples_per_class`)."""

    num_classes: int = 3
    modes_per_class: int = 2
    radius: float = 0.65
    mode_std: float = 0.08
    T: int = 200
    teacher_hidden: int = 128
    student_hidden: int = 48
    depth: int = 3
    teacher_steps: int = 4000
    student_steps: int = 2500
    batch_size: int = 256
    lr: float = 4e-3
    label_dropout: float = 0.15
    ddim_steps: int = 25
    gap_points: int = 2048
    samples_per_class: int = 200
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_classes", "modes_per_class", "radius", "mode_std", "teacher_hidden",
                     "student_hidden", "depth", "teacher_steps", "student_steps", "batch_size",
                     "lr", "ddim_steps", "gap_points", "samples_per_class"):
            positive(self, name)
        in_range(self, "label_dropout", 0.0, 1.0)
        if self.T < 2:
            fail(self, "T", self.T, "must be >= 2")

    @property
    def diffusion(self) -> DiffusionConfig:
        return DiffusionConfig(schedule="cosine", T=self.T)


TOY_BUDGETS: Registry[ToyConfig] = Registry("toy budget")
TOY_BUDGETS.add("laptop", ToyConfig())
TOY_BUDGETS.add("quick", ToyConfig(teacher_steps=1500, student_steps=1000))
TOY_BUDGETS.add("tiny", ToyConfig(teacher_steps=150, student_steps=100, batch_size=128,
                                  teacher_hidden=64, student_hidden=16, ddim_steps=8, T=50,
                                  gap_points=256, samples_per_class=30))


def toy_config_for(preset: str, quick: bool = False, **changes: Any) -> ToyConfig:
    """The `tiny` preset (tests, papermill smoke runs) gets the tiny budget, a
    `quick` reproduction a shorter one; every other case the laptop budget the
    workshop is written for. `changes` replace fields (e.g. seed=1)."""
    check_params(preset=preset, quick=quick)
    return dataclasses.replace(TOY_BUDGETS.get(toy_budget_name(preset, quick)), **changes)


def toy_budget_name(preset: str, quick: bool) -> str:
    """The `TOY_BUDGETS` entry for a preset and reproduction: tiny, quick or laptop."""
    return "tiny" if preset == "tiny" else "quick" if quick else "laptop"


def mode_centers(config: ToyConfig) -> Tensor:
    """(K, M, 2) centres: class k's modes, interleaved with the other classes' on a circle."""
    K, M = config.num_classes, config.modes_per_class
    j, k = torch.meshgrid(torch.arange(M), torch.arange(K), indexing="xy")
    angle = 2 * math.pi * (j * K + k).float() / (K * M)  # (K, M)
    return config.radius * torch.stack([angle.cos(), angle.sin()], dim=-1)


def sample_data(config: ToyConfig, n: int, generator: torch.Generator,
                y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x0 (n, 2), y (n,)): classes uniform (or the given y), then a mode, then Gaussian noise."""
    if y is None:
        y = torch.randint(0, config.num_classes, (n,), generator=generator)
    mode = torch.randint(0, config.modes_per_class, (n,), generator=generator)
    x0 = mode_centers(config)[y, mode] + config.mode_std * torch.randn(n, 2, generator=generator)
    return x0, y
