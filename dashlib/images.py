"""Sample grids as PNG files: one row per class.

A figure's grid shows at most `GRID_MAX_CLASSES` rows: with more classes (CIFAR-100,
your own data) `shown_classes` picks that many, evenly spaced, so every row stays
legible in a paper-sized panel.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from dashlib.data import to_uint8
from dashlib.io import atomic_write_bytes

#: the most classes (rows) a figure's sample grid shows
GRID_MAX_CLASSES = 10


def shown_classes(num_classes: int, limit: int = GRID_MAX_CLASSES) -> Tensor:
    """The class ids (m,) a grid shows, ascending: every class up to `limit`, else `limit`
    evenly spaced ones, floor(i * K / limit) for i < limit."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if num_classes <= limit:
        return torch.arange(num_classes)
    return torch.arange(limit) * num_classes // limit


def grid_labels(shown: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """(labels (per_class * m,), rows (per_class * m,)) for a grid of the m classes `shown`
    (`shown_classes`): the class id to sample each image with, and the grid row (0..m-1)
    it goes in; they cycle through the shown classes like `balanced_labels`."""
    rows = torch.arange(per_class * len(shown)) % len(shown)
    return shown[rows], rows


def class_rows(samples: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Reorder (N, C, H, W) samples in [-1, 1] into class-major order, every sample kept.

    Returns (K * m, C, H, W) where m is the largest per-class count: a class with fewer
    samples (N not a multiple of K) is padded with blank (white, 1.0) tiles at its row's end.
    """
    per_class = [samples[labels == k] for k in range(num_classes)]
    if min(len(p) for p in per_class) == 0:
        raise ValueError("every class needs at least one sample to draw a per-class grid")
    m = max(len(p) for p in per_class)
    blank = samples.new_ones((1, *samples.shape[1:]))
    return torch.cat([torch.cat([p, blank.expand(m - len(p), *blank.shape[1:])]) for p in per_class])


def grid_image(samples: Tensor, labels: Tensor, num_classes: int, scale: int = 4) -> Tensor:
    """A uint8 (3, H', W') grid, one row per class, upscaled `scale`x (nearest)."""
    rows = class_rows(samples, labels, num_classes)
    per_row = len(rows) // num_classes
    big = F.interpolate(rows.float(), scale_factor=scale, mode="nearest") if scale > 1 else rows
    grid = make_grid(big, nrow=per_row, padding=scale, pad_value=1.0)
    if grid.shape[0] == 1:
        grid = grid.expand(3, -1, -1)
    return to_uint8(grid)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 (3, H, W) tensor as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def grid_scale(image_size: int) -> int:
    """How much `save_grid` enlarges each sample: 4x below 16 pixels (8x8 digits stay
    legible), 1x from there on (a 4x float copy of 1,000 128x128 colour samples is 3 GB)."""
    return 4 if image_size < 16 else 1


def save_grid(samples: Tensor, labels: Tensor, num_classes: int, path: str | Path,
              scale: int | None = None) -> Path:
    """`samples` (N, C, H, W) in [-1, 1] as a PNG grid, a row per class (`grid_image`),
    each enlarged `scale` times (default `grid_scale`)."""
    scale = grid_scale(samples.shape[-1]) if scale is None else scale
    return save_png(grid_image(samples, labels, num_classes, scale), path)
