"""The paper-style figures, from plain data (dicts and lists of rows).

Each function returns a matplotlib Figure; `dashlib.report.save_figure`
writes it with provenance. Methods keep one colour across every figure.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from torch import Tensor

from dashlib.io import printable

ORDER = ["teacher", "scratch", "cond-only", "composite", "multi-w-composite", "fitnets",
         "gap-match", "pruning", "single-head", "dash"]


#: Fonts of wide coverage that the figures fall back to, where one is installed, for the
#: glyphs of user text (class folder names) that the default fonts lack: CJK, Hangul, ...
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans",
                  "WenQuanYi Zen Hei", "Droid Sans Fallback", "Arial Unicode MS", "Microsoft YaHei",
                  "PingFang SC", "Hiragino Sans", "Malgun Gothic", "Noto Sans")


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    families = plt.rcParams["font.sans-serif"]
    plt.rcParams["font.sans-serif"] = [*families, *(f for f in _installed(FALLBACK_FONTS)
                                                    if f not in families)]


def _installed(families: Sequence[str]) -> list[str]:
    from matplotlib import font_manager

    found = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in families if f in found]


@functools.lru_cache(maxsize=1)
def _drawable() -> frozenset[int]:
    """The code points some installed font of the figures' sans-serif list can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    style()
    paths = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    points: set[int] = set()
    for family in plt.rcParams["font.sans-serif"]:
        if family in paths:
            points.update(FT2Font(paths[family]).get_charmap())
    return frozenset(points)


COLOURS = {"teacher": "#000000", "scratch": "#7f7f7f", "cond-only": "#1f77b4",
           "composite": "#2ca02c", "multi-w-composite": "#98df8a", "fitnets": "#9467bd",
           "gap-match": "#ff7f0e", "pruning": "#8c564b", "single-head": "#e377c2",
           "dash": "#d62728"}


def colour(name: str) -> Any:
    """A fixed colour per method (DASH red, the teacher black) across every figure."""
    if name in COLOURS:
        return COLOURS[name]
    palette = sns.color_palette("tab10", 10)
    return palette[sum(map(ord, name)) % 10]


def ordered(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _lw(name: str) -> float:
    return 2.6 if name in ("dash", "teacher") else 1.5


def legend_beside(ax: Any, handles: Sequence[Any] | None = None,
                  labels: Sequence[str] | None = None, **kwargs: Any) -> Any:
    """A legend to the right of `ax`, outside the axes, so it never hides data."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                     borderaxespad=0.0, fontsize=8, **kwargs)


class _PlainLogFormatter(matplotlib.ticker.LogFormatterSciNotation):
    """Labels the ticks matplotlib's log formatter would label, as plain numbers ("12.5",
    "0.2") rather than "1.25x10^1": a log axis spanning less than a decade (a small
    dataset's FID) otherwise reads in scientific notation."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not super().__call__(x, pos):
            return ""
        return f"{x:.12g}" if x >= 1 else f"{x:.3g}"  # 1000, not 1e+03; 1e-06 below 1e-4


def plain_log_ticks(axis: Any) -> None:
    """Give a log-scaled `axis` (ax.yaxis / ax.xaxis) plain-number tick labels, keeping
    which ticks are labelled."""
    for get, put in ((axis.get_major_formatter, axis.set_major_formatter),
                     (axis.get_minor_formatter, axis.set_minor_formatter)):
        old = get()
        if isinstance(old, matplotlib.ticker.LogFormatter):
            put(_PlainLogFormatter(base=old._base, labelOnlyBase=old.labelOnlyBase,
                                   minor_thresholds=old.minor_thresholds, linthresh=old._linthresh))


# --- F1 ------------------------------------------------------------------------------

def sample_grids(grids: Mapping[str, Tensor], subtitle: str = "",
                 row_names: Sequence[str] | None = None) -> Figure:
    """One panel per model; each grid (3, H, W) uint8 has a row per class. `row_names` (one
    per row, top first) label the rows of each figure row's first panel."""
    style()
    names = ordered(list(grids))
    if row_names is not None and not row_names:
        raise ValueError("row_names is empty: give one name per grid row, or None")
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.3 * rows), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        grid = grids[name]
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name, color=colour(name), fontweight="bold" if name == "dash" else None)
        ax.set_xticks([])
        ax.set_yticks([])
        if row_names and i % cols == 0:  # rows are equally tall: their centres split the height
            height = grid.shape[1] / len(row_names)
            ax.set_yticks([(r + 0.5) * height for r in range(len(row_names))],
                          [_short(n) for n in row_names], fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Samples: same seeds and classes for every model (one row per class)"
                 + (f"\n{subtitle}" if subtitle else ""))
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 12) -> str:
    """A class name cut to `width` characters for an axis label (`label`)."""
    name = printable(name)
    return literal(name if len(name) <= width else name[:width - 1] + "…")


def label(name: str) -> str:
    """A class folder's name as matplotlib draws it as written: bytes that are not UTF-8
    as \\xNN (`io.printable`), characters no installed font draws as \\uNNNN (an empty
    box says nothing; `FALLBACK_FONTS` draw CJK where installed), "$" escaped (`literal`)."""
    drawable = _drawable()
    text = "".join(c if c.isspace() or ord(c) in drawable else f"\\u{ord(c):04x}"
                   for c in printable(name))
    return literal(text)


def literal(text: str) -> str:
    """`text` drawn as written: matplotlib reads a pair of "$" as mathematics ("$10_$20"
    failed to parse, "$1-$2" lost its signs), so user text such as a class folder's name
    has them escaped."""
    return text.replace("$", r"\$")


# --- F2 ------------------------------------------------------------------------------

def gap_calibration(calibrations: Mapping[str, Mapping[str, Any]]) -> Figure:
    """rho(t) and cos(t) per method from `Calibrator.score` results."""
    style()
    fig, (ax_rho, ax_cos) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in ordered(list(calibrations)):
        cal = calibrations[name]
        edges = np.asarray(cal["bin_edges"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        for ax, key in ((ax_rho, "rho"), (ax_cos, "cos")):
            values = np.asarray(cal["per_bin"][key], dtype=float)
            if np.all(np.isnan(values)):
                continue
            ax.plot(centres, values, marker="o", ms=3, lw=_lw(name), color=colour(name), label=name)
    ax_rho.axhline(1.0, color="black", ls="--", lw=1, label="teacher (rho = 1)")
    ax_cos.axhline(1.0, color="black", ls="--", lw=1)
    ax_rho.set(xlabel="timestep t (bin centre)", ylabel="rho = E|δ_S| / E|δ_T| (log scale)",
               title="Gap magnitude kept (1 = teacher's)")
    ax_cos.set(xlabel="timestep t (bin centre)", ylabel="cos(δ_S, δ_T)",
               title="Gap direction agreement")
    ax_rho.set_yscale("log", base=2)  # 2x too large and 2x too small sit equally far from 1
    ax_rho.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_cos.set_ylim(-0.1, 1.05)
    legend_beside(ax_cos, *ax_rho.get_legend_handles_labels())
    fig.suptitle("Guidance-gap calibration across timesteps (held-out matched inputs)")
    fig.tight_layout()
    return fig


# --- F3 ------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _by_method_guidance(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[r["method"]][str(r["guidance"])].append(r.get(key))
    return out


def guidance_sweep(rows: Sequence[Mapping[str, Any]], quality: str = "fid",
                   fidelity: str = "accuracy", quality_label: str = "classifier FID",
                   chance: float | None = None) -> Figure:
    """Quality (log scale) and guidance fidelity against w per method; TAG drawn at
    the right. `rows` hold method, guidance ("0", "1", ..., "tag"), seed and metrics.
    A model without a null branch (single-head) ignores w: its curves are flat."""
    style()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    panels = ((axes[0], quality, f"{quality_label} (log scale, lower is better)"),
              (axes[1], fidelity, "accuracy on samples of the asked class"))
    for ax, key, label in panels:
        table = _by_method_guidance(rows, key)
        numeric = sorted({float(g) for m in table.values() for g in m if g != "tag"})
        tag_x = (max(numeric) + 1.0) if numeric else 0.0
        names = ordered(list(table))
        for i, name in enumerate(names):
            # each constant w's own label, not one rebuilt from w (a label need not be f"{w:g}")
            points = sorted((float(g), g) for g in table[name] if g != "tag")
            xs = [x for x, _ in points]
            stats = [mean_std(table[name][g]) for _, g in points]
            if xs:
                ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                            ms=4, lw=_lw(name), capsize=2, color=colour(name), label=name)
            if "tag" in table[name]:
                m, s = mean_std(table[name]["tag"])
                # spread the TAG stars sideways so methods with equal values stay visible
                dx = 0.5 * (i - (len(names) - 1) / 2) / max(len(names), 1)
                ax.errorbar([tag_x + dx], [m], yerr=[s], marker="*", ms=9, color=colour(name),
                            capsize=2, ls="none", alpha=0.9,
                            label=None if xs else name)  # the legend's entry when there is no line
        has_tag = any("tag" in m for m in table.values())
        ax.set_xticks(numeric + ([tag_x] if has_tag else []),
                      [f"{t:g}" for t in numeric] + (["TAG"] if has_tag else []))
        ax.set(xlabel="guidance scale w (★ = TAG schedule)", ylabel=label)
    axes[0].set_yscale("log")
    plain_log_ticks(axes[0].yaxis)
    axes[1].set_ylim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    if chance is not None:  # named in the legend: a text label on the line hid the data
        line = axes[1].axhline(chance, color="grey", ls=":", lw=1)
        handles, labels = [*handles, line], [*labels, f"chance ({chance:.2g})"]
    legend_beside(axes[1], handles, labels)
    fig.suptitle("Sample quality (left) and guidance fidelity (right) against guidance scale, "
                 "mean ± std over seeds")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


# --- F4 ------------------------------------------------------------------------------

def tirt_curriculum(records: Sequence[Mapping[str, Any]], prior: Sequence[float],
                    final: Sequence[float], T: int, weighting: str = "tirt") -> Figure:
    """The teacher's effective TIRT weights over training (binned), the Min-SNR-5
    prior, and the drift measurement; `records` are log lines with `tirt_bins`.
    `weighting` names the teacher's weighting where it is not TIRT (`train.weighting`)."""
    style()
    snaps = [r for r in records if r.get("tirt_bins")]
    fig, (ax_w, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = len(snaps[0]["tirt_bins"]) if snaps else len(prior)
    centres = (np.arange(bins) + 0.5) * T / bins
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(snaps):
        ax_w.plot(centres, r["tirt_bins"], color=cmap(i / max(len(snaps) - 1, 1)), lw=1,
                  alpha=0.8, label=f"step {r['step']}" if i in (0, len(snaps) - 1) else None)
    tirt = weighting == "tirt"
    ax_w.plot(np.linspace(0, T, len(prior)), prior, color="black", ls="--", lw=1.5,
              label="prior: min(SNR, 5), frozen" if tirt else f"{weighting} at step 0")
    ax_w.plot(np.linspace(0, T, len(final)), final, color="crimson", lw=2,
              label="final (transferred)" if tirt else f"{weighting}, final")
    ax_w.set(xlabel="timestep t", ylabel="effective weight w_t (mean 1)",
             title="TIRT weights over training" if tirt else f"the teacher's {weighting} weights (not TIRT)")
    ax_w.legend(fontsize=8)
    drift = [r for r in snaps if r.get("tirt_drift") is not None]
    ax_c = ax_d.twinx()
    ax_c.grid(False)
    if drift:
        steps = [r["step"] for r in drift]
        ax_d.plot(steps, [r["tirt_drift"] for r in drift], marker="o", ms=3, color="C0",
                  label="drift: easy-half weight share − prior's (left)")
        ax_c.plot(steps, [r["tirt_corr"] for r in drift], marker="s", ms=3, color="C1",
                  label="corr(log w/prior, loss) over bins (right)")
    ax_d.axhline(0, color="black", lw=1)
    ax_d.set(xlabel="training step", ylabel="drift (share of weight)",
             title="Drift toward easy (low-loss) timesteps")
    ax_c.set(ylabel="correlation", ylim=(-1.05, 1.05))
    handles = ax_d.get_legend_handles_labels()[0] + ax_c.get_legend_handles_labels()[0]
    if handles:
        ax_d.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    else:  # too short a run to have measured any (a teacher of a step or two)
        ax_d.text(0.5, 0.5, "no drift measured: the teacher's log holds\nno TIRT snapshot with a drift",
                  transform=ax_d.transAxes, ha="center", va="center", fontsize=9)
    fig.suptitle("TIRT curriculum of the teacher")
    fig.tight_layout()
    return fig


# --- F5 ------------------------------------------------------------------------------

OUTPUT_TERM = {"scratch": "data", "cond-only": "im", "composite": "composite",
               "multi-w-composite": "composite", "fitnets": "im", "gap-match": "im",
               "pruning": "data", "single-head": "guided", "dash": "im"}


def distillation_dynamics(logs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Output-level loss, rho and cos over training for each method (claim C6)."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in ordered(list(logs)):
        recs = logs[name]
        term = OUTPUT_TERM.get(name, "loss")
        xs = [r["step"] for r in recs if term in r]
        axes[0].plot(xs, [r[term] for r in recs if term in r], lw=_lw(name), color=colour(name),
                     label=f"{name} ({term})", marker="o" if len(xs) == 1 else None, ms=3)  # one step: a dot
        cal = [r for r in recs if r.get("rho") is not None]
        for ax, key in ((axes[1], "rho"), (axes[2], "cos")):
            ax.plot([r["step"] for r in cal], [r[key] for r in cal], marker="o", ms=3, lw=_lw(name),
                    color=colour(name), label=name)
    axes[0].set(yscale="log", xlabel="step", ylabel="output-level loss (per-pixel MSE)",
                title="Training loss")
    plain_log_ticks(axes[0].yaxis)
    axes[1].set(xlabel="step", ylabel="rho", title="Gap magnitude (1 = teacher's)")
    axes[2].set(xlabel="step", ylabel="cos(δ_S, δ_T)", title="Gap direction")
    axes[1].axhline(1, color="black", ls="--", lw=1)
    legend_beside(axes[2], *axes[0].get_legend_handles_labels(), title="method (loss term)")
    fig.suptitle("Distillation dynamics: a low loss can hide a broken gap")
    fig.tight_layout()
    return fig


# --- F6 ------------------------------------------------------------------------------

def ablation_shares(shares: Mapping[str, Sequence[float]]) -> Figure:
    """Each component's share of the total gain (%), mean ± std over seeds, with
    the per-seed values as dots."""
    style()
    names = list(shares)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seeds = max((len(v) for v in shares.values()), default=0)
    gained = sum(not all(math.isnan(shares[n][i]) for n in names) for i in range(seeds))
    ax.axhline(60, color="crimson", ls="--", lw=1, label="paper's C4 threshold (60%)")
    ax.set(ylabel="share of the total FID gain (%)",
           title="Which DASH component buys the gain (cond-only → DASH)\n"
                 + (f"bars: mean ± std, dots: one per evaluation seed ({seeds - gained} of {seeds} "
                    f"without a gain left out)" if gained < seeds else
                    "bars: mean ± std, dots: one per evaluation seed"))
    if not gained:  # DASH no better than cond-only anywhere: no gain to share out
        ax.set_xticks(range(len(names)), names)
        ax.set(xlim=(-0.5, len(names) - 0.5), ylim=(0, 100))
        ax.text(0.5, 0.3, "DASH did not improve the FID on cond-only at any seed:\nno gain to share out",
                transform=ax.transAxes, ha="center", va="center", fontsize=10)
    else:
        means = [mean_std(shares[n])[0] for n in names]
        stds = [mean_std(shares[n])[1] for n in names]
        bars = ax.bar(names, means, yerr=stds, capsize=4,
                      color=[colour("dash") if "un" in n.lower() else "#999999" for n in names])
        for i, n in enumerate(names):
            ax.scatter([i] * len(shares[n]), shares[n], color="black", s=12, zorder=3)
        for bar, m in zip(bars, means):
            ax.annotate(f"{m:.0f}%", (bar.get_x() + bar.get_width() / 2, m), ha="center",
                        va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- F7 ------------------------------------------------------------------------------

def steps_and_compression(step_rows: Sequence[Mapping[str, Any]],
                          width_rows: Sequence[Mapping[str, Any]], quality: str = "fid",
                          quality_label: str = "classifier FID",
                          reference: float | None = None) -> Figure:
    """Quality against DDIM steps (per model) and against compression ratio;
    `reference` (the teacher's quality) is drawn as a dashed line."""
    style()
    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_model: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in step_rows:
        by_model[r["method"]][int(r["ddim_steps"])].append(r[quality])
    for name in ordered(list(by_model)):
        xs = sorted(by_model[name])
        stats = [mean_std(by_model[name][x]) for x in xs]
        ax_s.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", lw=_lw(name),
                      capsize=2, color=colour(name), label=name)
    ax_s.set(xscale="log", xlabel="DDIM steps", ylabel=quality_label, title="Quality vs sampling steps")
    ax_s.set_xticks(sorted({int(r["ddim_steps"]) for r in step_rows}) or [10],
                    [str(s) for s in sorted({int(r["ddim_steps"]) for r in step_rows})] or ["10"])
    ax_s.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2 and 5 steps drew "3x10^0"
    ax_s.legend(fontsize=8)
    by_ratio: dict[float, list] = defaultdict(list)
    labels: dict[float, str] = {}
    for r in width_rows:
        by_ratio[float(r["compression_ratio"])].append(r[quality])
        labels[float(r["compression_ratio"])] = str(r.get("label", ""))
    xs = sorted(by_ratio)
    stats = [mean_std(by_ratio[x]) for x in xs]
    ax_c.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                  color=colour("dash"), lw=2, capsize=2, label="DASH students")
    for x, s in zip(xs, stats):
        ax_c.annotate(labels[x], (x, s[0]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    if reference is not None:
        ax_c.axhline(reference, color=colour("teacher"), ls="--", lw=1, label="teacher")
    ax_c.set(xlabel="compression ratio (teacher params / student params)", ylabel=quality_label,
             title="Quality vs compression (student width sweep)")
    ax_c.legend(fontsize=8)
    fig.suptitle("Quality against sampling steps and compression")
    fig.tight_layout()
    return fig
