"""Per-sample regression losses shared by teacher training, distillation and the workshop.

Every loss returns one value per sample (B,); weighting (TIRT) and reduction
are the caller's.
"""

from __future__ import annotations

from torch import Tensor


def mse_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """|pred - target|^2 averaged over all but the batch dim: (B, ...) -> (B,), in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
