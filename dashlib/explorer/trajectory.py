"""The explorer's "Run DDIM" button: one seeded DDIM trajectory per model, cached.

x_T is drawn from `torch.Generator().manual_seed(seed)`, so every model starts
from the same noise and the final samples differ only by the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.config import SampleConfig
from dashlib.diffusion import Diffusion
from dashlib.guidance import Guidance
from dashlib.sampling import DDIMSampler


def guidance_label(guidance: Guidance) -> str:
    """'TAG' or 'w=3' for a guidance setting."""
    return "TAG" if guidance.constant is None else f"w={guidance.constant:g}"


@dataclass(frozen=True)
class SampleKey:
    """One final sample: model, class, seed and the guidance it was drawn with."""

    name: str
    y: int
    seed: int
    guidance: Guidance
    steps: int


def final_sample(model: nn.Module, diffusion: Diffusion, config: SampleConfig, guidance: Guidance,
                 y: int, seed: int) -> Tensor:
    """The DDIM sample (C, H, W) in [-1, 1] for class y from x_T seeded by `seed`."""
    sampler = DDIMSampler(diffusion, config, guidance)
    device = next(model.parameters()).device
    samples, _ = sampler.sample_trajectory(model, torch.tensor([y], device=device),
                                           torch.Generator().manual_seed(seed))
    return samples[0]


class SampleCache:
    """Final samples of one sampler `config` keyed by `SampleKey`, so revisiting a setting
    shows its sample again."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        self._samples: dict[SampleKey, Tensor] = {}

    def key(self, name: str, guidance: Guidance, y: int, seed: int) -> SampleKey:
        return SampleKey(name, y, seed, guidance, self.config.steps)

    def lookup(self, name: str, guidance: Guidance, y: int, seed: int) -> Tensor | None:
        return self._samples.get(self.key(name, guidance, y, seed))

    def run(self, name: str, model: nn.Module, diffusion: Diffusion, guidance: Guidance,
            y: int, seed: int) -> Tensor:
        key = self.key(name, guidance, y, seed)
        if key not in self._samples:
            self._samples[key] = final_sample(model, diffusion, self.config, guidance, y, seed)
        return self._samples[key]
