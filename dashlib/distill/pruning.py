"""Global magnitude pruning (the paper's `magnitude pruning` baseline)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dashlib.unet import count_params


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weight matrices/kernels of conv and linear layers (biases, norms and the
    class embedding stay dense: they are few and structurally important)."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out[f"{module_name}.weight"] = module.weight
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, keep_fraction: float) -> dict[str, Tensor]:
    """Zero the smallest-|w| prunable weights, one global threshold, so that the
    model keeps `keep_fraction` of ALL its parameters nonzero. Returns the masks."""
    weights = prunable(model)
    total = count_params(model)
    dense = total - sum(w.numel() for w in weights.values())
    keep = round(keep_fraction * total) - dense
    n_prunable = sum(w.numel() for w in weights.values())
    if keep <= 0 or keep > n_prunable:
        raise ValueError(f"cannot keep {keep_fraction:.3f} of {total:,} parameters: "
                         f"{dense:,} are not prunable")
    magnitudes = torch.cat([w.abs().flatten() for w in weights.values()])
    threshold = torch.kthvalue(magnitudes, n_prunable - keep + 1).values
    masks = {name: (w.abs() >= threshold) for name, w in weights.items()}
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))
