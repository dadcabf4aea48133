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


def emptied(masks: dict[str, Tensor]) -> list[str]:
    """Names of the weights that keep no entry at all: a layer pruned away whole. One
    global threshold does this to layers whose weights are all small, such as the
    zero-initialised ones (each residual block's second convolution, the output
    convolution) of a teacher trained briefly."""
    return [name for name, mask in masks.items() if not bool(mask.any())]


def emptied_note(names: list[str], output: str = "conv_out.weight") -> str:
    """A one-line note for a student with layers pruned away whole ("" if none)."""
    if not names:
        return ""
    names = sorted(names, key=lambda name: name != output)  # the output layer first: it matters most
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    text = f"magnitude pruning removed every weight of {len(names)} layer(s) ({shown})"
    if output in names:
        text += ("; with the output convolution gone the student's output is its bias alone, "
                 "the same for every input and label, so its guidance gap is 0 (rho 0). The "
                 "teacher's zero-initialised layers have barely left 0: train the teacher longer, "
                 "or keep more weights (distill.prune_fraction)")
    return text


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))
