"""Draw the explorer's panels into one PNG with PIL (a few ms, no matplotlib figure).

One row per model, one column per quantity:

    x_t | eps_cond | eps_uncond | delta (heat map) | guided x0_hat | DDIM sample

Images (x_t, x0_hat, samples) map [-1, 1] to black..white; eps panels map
[-3, 3]; the gap delta = eps_cond - eps_uncond is drawn as a diverging heat
map (channel mean, red > 0 > blue) on ONE scale shared by every row, so a
collapsed student gap (delta_S ~ 0) looks washed out next to the teacher's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dashlib.explorer.probe import ModelView

COLUMNS = ("x_t", "eps_cond", "eps_uncond", "gap delta", "guided x0_hat", "DDIM sample")
NO_BRANCH = "no unconditional branch"
EPS_RANGE = 3.0


@dataclass(frozen=True)
class Layout:
    """Pixel sizes of the panel grid."""

    tile: int = 96
    pad: int = 8
    label_width: int = 150
    header: int = 34


@lru_cache(maxsize=4)
def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def gray_or_rgb(x: Tensor, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) values in [lo, hi] -> uint8 (H, W, 3); one channel is shown as gray."""
    a = ((x.detach().float().clamp(lo, hi) - lo) / (hi - lo) * 255).round().byte().numpy()
    a = a.transpose(1, 2, 0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[:, :, :3]


def heat(delta: Tensor, scale: float) -> np.ndarray:
    """Signed channel mean of delta (C, H, W) / scale -> RdBu_r colours, uint8 (H, W, 3)."""
    v = (delta.detach().float().mean(0) / max(scale, 1e-12)).clamp(-1, 1).numpy()
    rgba = colormaps["RdBu_r"]((v + 1) / 2)
    return (rgba[:, :, :3] * 255).round().astype(np.uint8)


def gap_scale(views: list[ModelView]) -> float:
    """The shared heat-map scale: the largest |channel-mean delta| of the first row with a gap."""
    for v in views:
        if v.delta is not None:
            return float(v.delta.float().mean(0).abs().max()) or 1e-6
    return 1.0


def tile_image(pixels: np.ndarray, layout: Layout) -> Image.Image:
    return Image.fromarray(pixels).resize((layout.tile, layout.tile), Image.Resampling.NEAREST)


def text_tile(text: str, layout: Layout) -> Image.Image:
    """A grey tile with a short message (e.g. 'no unconditional branch')."""
    img = Image.new("RGB", (layout.tile, layout.tile), (225, 225, 225))
    draw = ImageDraw.Draw(img)
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font()) > layout.tile - 8 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    y = layout.tile // 2 - 8 * len(lines)
    for line in lines:
        draw.text((4, y), line, fill=(90, 90, 90), font=font())
        y += 16
    return img


def fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def row_label(view: ModelView, teacher: bool) -> list[str]:
    s = view.stats
    lines = [view.name, f"w = {view.w:.2f}", f"|delta| = {fmt(s['student_gap_abs'])}"]
    if not teacher:
        lines.append(f"rho {fmt(s['rho'])}  cos {fmt(s['cos'])}")
    return lines


def row_tiles(view: ModelView, sample: Tensor | None, scale: float, layout: Layout) -> list[Image.Image]:
    """The six panels of one model."""
    missing = text_tile(NO_BRANCH, layout)
    return [
        tile_image(gray_or_rgb(view.x_t, -1, 1), layout),
        tile_image(gray_or_rgb(view.eps_cond, -EPS_RANGE, EPS_RANGE), layout),
        missing if view.eps_uncond is None
        else tile_image(gray_or_rgb(view.eps_uncond, -EPS_RANGE, EPS_RANGE), layout),
        missing if view.delta is None else tile_image(heat(view.delta, scale), layout),
        tile_image(gray_or_rgb(view.x0_guided, -1, 1), layout),
        text_tile("press Run DDIM", layout) if sample is None
        else tile_image(gray_or_rgb(sample, -1, 1), layout),
    ]


def render_panels(views: list[ModelView], samples: list[Tensor | None], title: str = "",
                  layout: Layout | None = None) -> Image.Image:
    """The full grid; views[0] is the teacher. samples[i] is row i's DDIM sample or None."""
    lay = layout or Layout()
    step = lay.tile + lay.pad
    width = lay.label_width + step * len(COLUMNS)
    height = lay.header + step * len(views) + 18
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    scale = gap_scale(views)
    for j, name in enumerate(COLUMNS):
        draw.text((lay.label_width + j * step, lay.header - 16), name, fill="black", font=font())
    draw.text((4, 4), title, fill="black", font=font())
    for i, (view, sample) in enumerate(zip(views, samples)):
        top = lay.header + i * step
        for k, line in enumerate(row_label(view, teacher=i == 0)):
            draw.text((4, top + 4 + 16 * k), line, fill="black", font=font())
        for j, tile in enumerate(row_tiles(view, sample, scale, lay)):
            img.paste(tile, (lay.label_width + j * step, top))
    legend = f"gap delta = eps_cond - eps_uncond: red > 0 > blue, one scale for all rows (+/-{scale:.2f})"
    draw.text((lay.label_width, height - 16), legend, fill="black", font=font())
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
