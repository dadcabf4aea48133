"""The paper figures keep their legends off the data and their markers apart."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dashlib import plots  # noqa: E402

METHODS = ["teacher", "scratch", "cond-only", "fitnets", "dash"]


def _legends_outside_every_axes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the figure should have a legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers an axes"


def test_f2_legend_is_outside_the_axes():
    edges = [0, 250, 500, 750, 1000]
    cal = {m: {"bin_edges": edges, "per_bin": {"rho": [1.0 - 0.1 * i] * 4, "cos": [0.9] * 4}}
           for i, m in enumerate(METHODS)}
    fig = plots.gap_calibration(cal)
    _legends_outside_every_axes(fig)
    assert len(fig.axes[1].get_legend().get_texts()) == len(METHODS) + 1  # + teacher line


def test_f3_legend_outside_tag_stars_apart_and_chance_in_the_legend():
    rows = [{"method": m, "guidance": g, "seed": s, "fid": 1.0, "accuracy": 0.9}
            for m in METHODS for g in ("0", "1", "3", "tag") for s in (1, 2)]
    fig = plots.guidance_sweep(rows, chance=0.1)
    _legends_outside_every_axes(fig)
    for ax in fig.axes[:2]:
        stars = [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == len(METHODS) and len(set(stars)) == len(METHODS), stars
        assert max(stars) - min(stars) < 1.0, "TAG stars must stay in the TAG column"
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any(label.startswith("chance") for label in labels)
    assert not any(t.get_text() == "chance" for t in fig.axes[1].texts)


@pytest.mark.parametrize("steps", [5, 40])
def test_f5_legend_is_outside_the_axes(steps):
    logs = {m: [{"step": s, "im": 1.0 / (s + 1), "rho": 0.5, "cos": 0.5} for s in range(steps)]
            for m in METHODS if m != "teacher"}
    fig = plots.distillation_dynamics(logs)
    _legends_outside_every_axes(fig)


@pytest.mark.parametrize("k", [1, 3, 10, 11, 100, 1000])
def test_sample_grids_show_at_most_ten_distinct_classes_in_order(k):
    import torch

    from dashlib.images import GRID_MAX_CLASSES, grid_image, grid_labels, shown_classes

    shown = shown_classes(k)
    assert len(shown) == min(k, GRID_MAX_CLASSES) and len(set(shown.tolist())) == len(shown)
    assert shown[0] == 0 and shown.max() < k and bool((shown.diff() > 0).all())
    labels, rows = grid_labels(shown, per_class=3)
    assert torch.equal(labels, shown[rows]) and len(labels) == 3 * len(shown)
    if k <= GRID_MAX_CLASSES:  # the grids of small label sets are unchanged: balanced labels
        assert torch.equal(labels, torch.arange(3 * k) % k)
    # a grid of the shown classes has one row per shown class, whatever k is
    x = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4) / k
    grid = grid_image(x, rows, len(shown), scale=1)
    assert grid.shape[1] == len(shown) * 4 + (len(shown) + 1) * 1


def test_a_sweep_of_tag_alone_still_names_every_method_in_the_legend():
    rows = [{"method": m, "guidance": "tag", "seed": s, "fid": 1.0 + s, "accuracy": 0.9}
            for m in ("teacher", "dash") for s in (0, 1)]
    fig = plots.guidance_sweep(rows, chance=0.1)
    labels = [t.get_text() for legend in fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]
              for t in legend.get_texts()]
    assert {"teacher", "dash"} <= set(labels), labels


def test_f4_says_so_when_the_teacher_was_not_trained_with_tirt():
    fig = plots.tirt_curriculum([], [1.0] * 4, [1.0] * 4, 100, weighting="uniform")
    assert "not TIRT" in fig.axes[0].get_title()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "prior: min(SNR, 5), frozen" not in labels and "uniform at step 0" in labels


@pytest.mark.parametrize("lo, hi", [(12.2, 12.85), (0.17, 24.9)])
def test_f3_log_axis_reads_in_plain_numbers(lo, hi):
    """Less than a decade of FID (a small dataset's) labels minor ticks, which matplotlib
    writes as 1.25x10^1; the figure writes 12.5."""
    rows = [{"method": m, "guidance": g, "seed": 0, "fid": fid, "accuracy": 0.5}
            for m, (a, b) in zip(METHODS, [(lo, hi)] * len(METHODS)) for g, fid in (("0", a), ("tag", b))]
    fig = plots.guidance_sweep(rows)
    fig.canvas.draw()
    axis = fig.axes[0].yaxis
    ticks = [*axis.get_majorticklabels(), *axis.get_minorticklabels()]
    labels = [t.get_text() for t in ticks if t.get_text()]
    assert labels and all(float(label) > 0 for label in labels), labels


def test_a_sample_grid_keeps_every_sample_when_classes_get_unequal_counts():
    import torch

    from dashlib.images import class_rows, grid_image
    from dashlib.sampling import balanced_labels

    labels = balanced_labels(10, 3)  # 4, 3, 3 samples
    x = (labels.float() / 3 - 0.5).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    rows = class_rows(x, labels, 3)
    assert rows.shape == (12, 1, 2, 2)  # 3 rows of 4: nothing dropped
    for k in range(3):
        row = rows[4 * k:4 * k + 4]
        shown = row[: (labels == k).sum()]
        assert torch.equal(shown, x[labels == k]) and torch.all(row[len(shown):] == 1.0)  # blank tiles
    grid = grid_image(x, labels, 3, scale=1)
    assert grid.shape[1:] == (3 * 2 + 4, 4 * 2 + 5)


def test_sample_grids_label_their_rows_with_the_class_names_on_each_rows_first_panel():
    import torch

    grids = {m: torch.zeros(3, 3 * 10 + 4, 20, dtype=torch.uint8) for m in ("teacher", "dash", "cond-only")}
    fig = plots.sample_grids(grids, row_names=["cat", "dog", "a very long class name"])
    first, *others = fig.axes[:3]
    assert [t.get_text() for t in first.get_yticklabels()] == ["cat", "dog", "a very long…"]
    ticks = first.get_yticks()
    assert len(ticks) == 3 and all(0 < a < b for a, b in zip(ticks, ticks[1:]))
    assert all(not ax.get_yticklabels() for ax in others)
    plain = plots.sample_grids(grids)
    assert not plain.axes[0].get_yticklabels()
    import io
    import os

    import matplotlib.pyplot as plt

    latin1 = plots.sample_grids(grids, row_names=[os.fsdecode(b"caf\xe9"), "b", "c"])  # a folder's bytes
    assert latin1.axes[0].get_yticklabels()[0].get_text() == "caf\\xe9"
    latin1.savefig(io.BytesIO(), format="png")  # matplotlib could not draw the surrogate escape
    plt.close(latin1)
    money = plots.sample_grids(grids, row_names=["$10_$20", "$$", "$1-$2"])  # folder names, not maths
    money.savefig(io.BytesIO(), format="png")  # "$10_$20" failed to parse as mathtext
    drawn = [t.get_text() for t in money.axes[0].get_yticklabels()]
    assert drawn == ["\\$10_\\$20", "\\$\\$", "\\$1-\\$2"]  # escaped: drawn as written
    plt.close(money)

    plt.close(fig)
    plt.close(plain)


def test_a_run_of_one_logged_step_still_shows_its_loss_and_an_empty_drift_says_why():
    """distill.steps=1 drew F5's one loss point as a line of no length; train.steps=1 left F4's
    drift panel blank under an empty legend box."""
    logs = {"dash": [{"step": 1, "im": 0.5, "rho": 0.5, "cos": 0.5}]}
    (line,) = plots.distillation_dynamics(logs).axes[0].get_lines()
    assert line.get_marker() == "o"
    fig = plots.tirt_curriculum([], [1.0] * 4, [1.0] * 4, 100, weighting="uniform")
    drift = fig.axes[1]
    assert drift.get_legend() is None and any("no drift measured" in t.get_text() for t in drift.texts)
    plt.close("all")


def test_gap_heatmaps_take_fractions_of_t_so_a_short_schedule_shows_distinct_timesteps(tiny_model):
    """Fixed timesteps (100, 400, 700) all became t = 99 on the tiny preset's T = 100."""
    from dashlib.artifacts import Artifact
    from dashlib.diffusion import Diffusion
    from dashlib.paper import gap_heatmaps
    from dashlib.pipeline import budget
    from dashlib.runs import Run

    b = budget("tiny", threads=1)
    art = Artifact(tiny_model, None, Diffusion(b.preset.diffusion), {}, Run("x"), {})
    fig = gap_heatmaps(b, {"teacher": art})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["t = 10", "t = 40", "t = 70"]
    assert "(class " in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="fractions of T"):
        gap_heatmaps(b, {"teacher": art}, t_fractions=(100,))
    import io
    import os

    name = plots.label(os.fsdecode(b"caf\xe9 $1-$2"))  # a Latin-1 folder name: set_text refused it
    assert name == "caf\\xe9 \\$1-\\$2"
    fig.suptitle(name)
    fig.savefig(io.BytesIO(), format="png")


def test_f7_labels_only_the_step_counts_run_even_within_one_decade():
    rows = [{"method": m, "ddim_steps": s, "fid": 1.0 / s} for m in ("teacher", "dash") for s in (2, 5)]
    fig = plots.steps_and_compression(rows, [{"compression_ratio": 5.0, "fid": 0.3, "label": "ch16"}])
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "5"]
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]  # no "3x10^0"
    plt.close(fig)


def test_class_names_draw_without_missing_glyphs():
    """A class folder named 中文 drew as empty boxes (DejaVu Sans has no CJK): a character no
    installed font draws is written as \\uNNNN, the rest as written."""
    import warnings

    name = "中文 é $1"
    text = plots.label(name)
    assert "é" in text and r"\$1" in text
    fig, ax = plt.subplots()
    ax.set_title(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    assert not [w for w in caught if "missing from font" in str(w.message)]
    drawable = plots._drawable()
    for c in "中文":
        assert (c in text) == (ord(c) in drawable) and (f"\\u{ord(c):04x}" in text) != (c in text)
