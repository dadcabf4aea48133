"""Draw the explorer's panels into one PNG with PIL (a few ms, no matplotlib figure).

One row per model, one column per quantity:

    x_t | eps_cond | eps_uncond | delta (heat map) | guided x0_hat | DDIM sample | |delta| vs t

Images (x_t, x0_hat, samples) map [-1, 1] to black..white; eps panels map
[-2, 2] (two standard deviations of unit-variance noise, so most pixels keep
their contrast); the gap delta = eps_cond - eps_uncond is drawn as a diverging
heat map (channel mean, red > 0 > blue) on ONE scale shared by every row, so a
collapsed student gap (delta_S ~ 0) looks washed out next to the teacher's. By
default that scale is also fixed across t (the teacher's peak over the profile's
timesteps), so moving t shows where the gap is large. The last column plots the
row's E|delta| against t (the teacher's in grey) with a dot at the current t:
below the grey line is collapse, above it explosion.
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

COLUMNS = ("x_t", "eps_cond", "eps_uncond", "gap delta", "guided x0_hat", "DDIM sample",
           "|delta| vs t")
NO_BRANCH = "no unconditional branch"
EPS_RANGE = 2.0  # eps ~ N(0, 1): +/-2 std keeps 95% of pixels unclipped and visibly grey
TEACHER_LINE = (150, 150, 150)
MODEL_LINE = (200, 40, 40)
NOW_LINE = (240, 160, 40)


@dataclass(frozen=True)
class Layout:
    """Pixel sizes of the panel grid."""

    tile: int = 96
    pad: int = 8
    label_width: int = 150
    header: int = 34
    profile_width: int = 150


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
    """Three significant figures ("0.00312", "1.00", "12.3"); "-" for NaN."""
    if math.isnan(value):
        return "-"
    return f"{value:#.3g}".rstrip(".") if abs(value) < 1000 else f"{value:.0f}"


def row_label(view: ModelView) -> list[str]:
    """Name, w, E|delta| and rho/cos against the teacher (the teacher's own row: 1.00)."""
    s = view.stats
    return [view.name, f"w = {fmt(view.w)}", f"|delta| = {fmt(s['student_gap_abs'])}",
            f"rho {fmt(s['rho'])}  cos {fmt(s['cos'])}"]


@dataclass(frozen=True)
class Profile:
    """One row's |delta|-against-t curve: `values` at `timesteps`, the teacher's
    `reference`, the current `t` and `now` (the row's E|delta| there), all on [0, ymax]."""

    timesteps: tuple[int, ...]
    values: tuple[float, ...]
    reference: tuple[float, ...]
    t: int
    now: float
    ymax: float


def profile_tile(p: Profile, layout: Layout) -> Image.Image:
    """A sparkline: the teacher's E|delta|(t) in grey, the row's in red, a dot at the current t."""
    w, h, margin, bottom = layout.profile_width, layout.tile, 4, 14
    img = Image.new("RGB", (w, h), (248, 248, 248))
    draw = ImageDraw.Draw(img)
    t_max = max(p.timesteps[-1], 1)

    def xy(t: float, v: float) -> tuple[float, float]:
        frac = min(max(v / p.ymax, 0.0), 1.0) if p.ymax > 0 else 0.0
        return margin + (w - 2 * margin) * t / t_max, h - bottom - (h - bottom - margin) * frac

    def curve(values: tuple[float, ...], fill: tuple[int, int, int], width: int) -> None:
        points = [xy(t, v) for t, v in zip(p.timesteps, values) if not math.isnan(v)]
        if len(points) > 1:
            draw.line(points, fill=fill, width=width)

    draw.line([xy(0, 0), xy(t_max, 0)], fill=(200, 200, 200))
    x_now = xy(p.t, 0)[0]
    draw.line([(x_now, margin), (x_now, h - bottom)], fill=NOW_LINE, width=1)
    curve(p.reference, TEACHER_LINE, 2)
    curve(p.values, MODEL_LINE, 2)
    if not math.isnan(p.now):
        cx, cy = xy(p.t, p.now)
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=MODEL_LINE)
    draw.text((margin, h - bottom + 1), "t=0", fill=(90, 90, 90), font=font(10))
    draw.text((w - margin - 34, h - bottom + 1), f"{t_max}", fill=(90, 90, 90), font=font(10))
    return img


def row_tiles(view: ModelView, sample: Tensor | None, scale: float, layout: Layout,
              profile: Profile | None = None) -> list[Image.Image]:
    """The panels of one model (the profile only when `profile` is given)."""
    missing = text_tile(NO_BRANCH, layout)
    tiles = [
        tile_image(gray_or_rgb(view.x_t, -1, 1), layout),
        tile_image(gray_or_rgb(view.eps_cond, -EPS_RANGE, EPS_RANGE), layout),
        missing if view.eps_uncond is None
        else tile_image(gray_or_rgb(view.eps_uncond, -EPS_RANGE, EPS_RANGE), layout),
        missing if view.delta is None else tile_image(heat(view.delta, scale), layout),
        tile_image(gray_or_rgb(view.x0_guided, -1, 1), layout),
        text_tile("press Run DDIM", layout) if sample is None
        else tile_image(gray_or_rgb(sample, -1, 1), layout),
    ]
    if profile is not None:
        tiles.append(missing if view.delta is None else profile_tile(profile, layout))
    return tiles


def render_panels(views: list[ModelView], samples: list[Tensor | None], title: str = "",
                  layout: Layout | None = None, scale: float | None = None,
                  profiles: list[Profile] | None = None) -> Image.Image:
    """The full grid; views[0] is the teacher. samples[i] is row i's DDIM sample or None.

    `scale`: the gap heat map's +/- range (default: the teacher's peak at this t);
    `profiles[i]`: row i's |delta|-against-t curve (the last column, when given).
    """
    lay = layout or Layout()
    step = lay.tile + lay.pad
    columns = COLUMNS if profiles is not None else COLUMNS[:-1]
    width = lay.label_width + step * (len(COLUMNS) - 1) + (lay.profile_width if profiles else 0)
    height = lay.header + step * len(views) + 34
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    per_t = scale is None
    scale = gap_scale(views) if scale is None else scale
    for j, name in enumerate(columns):
        draw.text((lay.label_width + j * step, lay.header - 16), name, fill="black", font=font())
    draw.text((4, 4), title, fill="black", font=font())
    for i, (view, sample) in enumerate(zip(views, samples)):
        top = lay.header + i * step
        for k, line in enumerate(row_label(view)):
            draw.text((4, top + 4 + 16 * k), line, fill="black", font=font())
        profile = profiles[i] if profiles is not None else None
        for j, tile in enumerate(row_tiles(view, sample, scale, lay, profile)):
            img.paste(tile, (lay.label_width + j * step, top))
    how = "the teacher's peak at this t" if per_t else "fixed across t"
    legend = (f"gap delta = eps_cond - eps_uncond: red > 0 > blue, one scale for all rows, "
              f"{how} (+/-{fmt(scale)})")
    draw.text((lay.label_width, height - 32), legend, fill="black", font=font())
    if profiles is not None:
        draw.text((lay.label_width, height - 16), "|delta| vs t: grey = teacher, red = this row, "
                  "dot = current t; below grey = collapse, above = explosion", fill="black",
                  font=font())
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
