"""Workshop figures: vector fields of the two branches and the gap, and sample clouds.

Fields are drawn as -eps (the direction denoising moves a point, toward the
data) on a grid, one row per model, with ONE arrow scale per column shared by
every row, so a student whose gap is too small or too large is visible at a
glance. Sample clouds: one row per model, one column per guidance scale.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from dashlib import report
from dashlib.guidance import Guidance
from dashlib.io import atomic_write_bytes
from dashlib.report import Provenance
from dashlib.workshop.analysis import (
    class_accuracy,
    field_on_grid,
    gap_at,
    gap_profile,
    on_mode,
    sample_toy,
    toy_sample_config,
)
from dashlib.workshop.toy import ToyConfig, mode_centers, sample_data, toy_budget_name
from dashlib.workshop.train import Workshop

COLORS = plt.get_cmap("tab10").colors


def class_colour(k: int) -> tuple[float, float, float]:
    """Class k's colour: tab10's, repeating after 10 classes."""
    return COLORS[k % len(COLORS)]


def grid_points(extent: float, n: int) -> Tensor:
    """(n * n, 2) points on a square grid over [-extent, extent]^2."""
    axis = torch.linspace(-extent, extent, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1)


def draw_modes(ax: plt.Axes, config: ToyConfig, highlight: int | None = None) -> None:
    """Each class's mode centres as rings (the highlighted class filled)."""
    centers = mode_centers(config)
    for k in range(config.num_classes):
        c = centers[k]
        ax.scatter(c[:, 0], c[:, 1], s=140, facecolors=class_colour(k) if k == highlight else "none",
                   edgecolors=class_colour(k), linewidths=2, alpha=0.5, zorder=1)


def style(ax: plt.Axes, extent: float) -> None:
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_fields(shop: Workshop, t: int, y: int, extent: float = 1.05, n: int = 15) -> Figure:
    """Rows: models; columns: -eps_cond, -eps_uncond, -delta at timestep t for class y."""
    points = grid_points(extent, n)
    fields = {name: field_on_grid(m, points, t, y) for name, m in shop.models.items()}
    cols = ["-eps_cond", "-eps_uncond", "-delta = guidance push"]
    fig, axes = plt.subplots(len(fields), 3, figsize=(10, 3.3 * len(fields)), squeeze=False)
    cell = 2 * extent / (n - 1)
    teacher_cond, teacher_uncond = fields["teacher"]
    teacher = [teacher_cond, teacher_uncond, teacher_cond - teacher_uncond]
    scales = [float(v.norm(dim=1).max()) / cell or 1.0 for v in teacher]
    for i, (name, (cond, uncond)) in enumerate(fields.items()):
        stats = gap_at(shop.models[name], shop.teacher, shop.diffusion, shop.config, t)
        for j, vec in enumerate([cond, uncond, cond - uncond]):
            ax = axes[i, j]
            draw_modes(ax, shop.config, highlight=y)
            ax.quiver(points[:, 0], points[:, 1], -vec[:, 0], -vec[:, 1], angles="xy",
                      scale_units="xy", scale=scales[j], width=0.006, color="k", zorder=2)
            style(ax, extent)
            if i == 0:
                ax.set_title(cols[j])
        label = name if name == "teacher" else f"{name}\nrho {_two(stats['rho'])}, cos {_two(stats['cos'])}"
        axes[i, 0].set_ylabel(label)
    fig.suptitle(f"branches at t = {t} of {shop.config.T} for class {y} (filled rings); "
                 f"one arrow scale per column")
    fig.tight_layout()
    return fig


def plot_samples(shop: Workshop, guidance: Sequence[Guidance | str | float] = (0, 1, 3, "tag"),
                 n_per_class: int | None = None, seed: int = 0) -> Figure:
    """Rows: models; columns: guidance (constant w or "tag"); colour = requested class.

    `n_per_class` defaults to `config.samples_per_class`. Each title gives the
    fraction of samples nearest a mode of their own class ("class") and the
    fraction within 3 standard deviations of one ("on a mode").
    """
    k = shop.config.num_classes
    y = torch.arange((n_per_class or shop.config.samples_per_class) * k) % k
    extent = 1.05
    fig, axes = plt.subplots(len(shop.models), len(guidance),
                             figsize=(2.8 * len(guidance), 2.9 * len(shop.models)), squeeze=False)
    base = toy_sample_config(shop.config)
    settings = [Guidance.parse(g, base) for g in guidance]
    for i, (name, model) in enumerate(shop.models.items()):
        for j, g in enumerate(settings):
            x = sample_toy(model, shop.diffusion, shop.config, y, g, torch.Generator().manual_seed(seed))
            ax = axes[i, j]
            draw_modes(ax, shop.config)
            ax.scatter(x[:, 0], x[:, 1], s=3, c=[class_colour(c) for c in y.tolist()], zorder=2)
            style(ax, extent)
            acc, hit = class_accuracy(x, y, shop.config), on_mode(x, y, shop.config)
            ax.set_title(f"{g.title}: class {acc:.0%}, on a mode {hit:.0%}", fontsize=9)
        axes[i, 0].set_ylabel(name)
    fig.suptitle("DDIM samples, coloured by the class asked for")
    fig.tight_layout()
    return fig


def plot_data(config: ToyConfig, n: int = 1500, seed: int = 0) -> Figure:
    """The training data, coloured by class, with a class legend beside the axes."""
    x, y = sample_data(config, n, torch.Generator().manual_seed(seed))
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for k in range(config.num_classes):
        pts = x[y == k]
        ax.scatter(pts[:, 0], pts[:, 1], s=3, color=class_colour(k), label=f"class {k}")
    style(ax, 1.05)
    ax.set_title(f"{config.num_classes} classes x {config.modes_per_class} modes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, markerscale=4,
              fontsize=9)
    fig.tight_layout()
    return fig


def plot_gap_profiles(shop: Workshop, timesteps: Sequence[int]) -> Figure:
    """rho and cos against the teacher over timesteps, one line per student."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, model in shop.models.items():
        if name == "teacher":
            continue
        prof = gap_profile(model, shop.teacher, shop.diffusion, shop.config, list(timesteps))
        axes[0].plot(timesteps, prof["rho"], marker="o", label=name)
        axes[1].plot(timesteps, prof["cos"], marker="o", label=name)
    axes[0].axhline(1.0, color="gray", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_title("rho = E|delta_S| / E|delta_T| (1 = kept)")
    axes[1].set_title("cos(delta_S, delta_T)")
    for ax in axes:
        ax.set_xlabel("timestep t")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# Title and paper claims of each workshop figure, for its sidecar and figures/README.md.
W_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "W0_workshop_data": ("Workshop toy data: classes of interleaved Gaussian modes", ()),
    "W1_workshop_fields": ("Workshop: -eps_cond, -eps_uncond and -delta vector fields, teacher "
                           "and students, one arrow scale per column", ("C3",)),
    "W2_workshop_samples": ("Workshop: DDIM samples of every model under several guidance scales",
                            ("C3",)),
    "W3_workshop_gap_profile": ("Workshop: rho and cos of each student's gap against the teacher "
                                "over timesteps", ("C3",)),
}


def workshop_provenance(preset: str, quick: bool, config: ToyConfig) -> Provenance:
    """What the workshop figures were made from: the toy budget's steps and seed."""
    budget = toy_budget_name(preset, quick)
    return Provenance(preset, (config.seed,),
                      {"teacher": config.teacher_steps, "student": config.student_steps,
                       "ddim": config.ddim_steps},
                      quick=quick, notebook="07_workshop",
                      extra={"toy_budget": budget, "T": config.T, "own_data": "the workshop's toy data",
                             "samples_per_class": config.samples_per_class})


def save_figure(fig: Figure, folder: str | Path, name: str,
                provenance: Provenance | None = None) -> Path:
    """Write `fig` as folder/<name>.png; with `provenance` (a W figure) also the PDF and
    the JSON sidecar, and refresh the folder's README.md index (`dashlib.report`)."""
    stem = name.removesuffix(".png")
    if provenance is not None:
        title, claims = W_FIGURES.get(stem, (stem, ()))
        return report.save_figure(fig, folder, stem, title, list(claims), provenance)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(Path(folder) / f"{stem}.png", buf.getvalue())


def _two(value: float) -> str:
    """Two decimals, or "–" where the value is undefined (rho against a teacher without a gap)."""
    return "–" if value != value else f"{value:.2f}"
