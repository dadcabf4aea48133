import ast
import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import pytest
import torch

from dashlib.config import ConfigError
from dashlib.diffusion import Diffusion
from dashlib.guidance import branches
from dashlib.workshop import (
    STUDENT_LOSSES,
    TOY_BUDGETS,
    ToyConfig,
    ToyModelConfig,
    build_toy_mlp,
    build_workshop,
    class_accuracy,
    gap_at,
    loss_terms,
    mode_centers,
    on_mode,
    plot_fields,
    plot_samples,
    sample_data,
    sample_toy,
    save_figure,
    toy_config_for,
)
from dashlib.workshop.train import draw_batch, student_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = TOY_BUDGETS.get("tiny")


@pytest.fixture(scope="module")
def shop():
    return build_workshop(TINY, progress=False)


def test_modes_interleave_on_a_circle_inside_the_unit_square():
    cfg = ToyConfig(num_classes=3, modes_per_class=2)
    c = mode_centers(cfg)
    assert c.shape == (3, 2, 2)
    torch.testing.assert_close(c.norm(dim=-1), torch.full((3, 2), cfg.radius))
    angles = torch.atan2(c[..., 1], c[..., 0]).flatten()
    classes = torch.arange(3).repeat_interleave(2)
    ring = classes[angles.argsort()]
    assert all(ring[i] != ring[(i + 1) % 6] for i in range(6)), "neighbouring modes must differ in class"
    x, _ = sample_data(cfg, 4000, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 1.0, "the toy data must live in [-1, 1]^2 like the images"


def test_data_are_seeded_and_near_their_own_class_modes():
    x, y = sample_data(TINY, 500, torch.Generator().manual_seed(1))
    x2, y2 = sample_data(TINY, 500, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert set(y.tolist()) == set(range(TINY.num_classes))
    assert class_accuracy(x, y, TINY) == 1.0
    assert on_mode(x, y, TINY, k_std=5.0) == 1.0
    wrong = (y + 1) % TINY.num_classes
    assert class_accuracy(x, wrong, TINY) == 0.0 and on_mode(x, wrong, TINY) == 0.0


def test_config_validation_and_budget_choice():
    with pytest.raises(ConfigError, match="ToyConfig.T"):
        ToyConfig(T=1)
    with pytest.raises(ConfigError, match="mode_std"):
        ToyConfig(mode_std=0.0)
    assert toy_config_for("tiny") == TINY
    assert toy_config_for("digits") == TOY_BUDGETS.get("laptop")
    assert toy_config_for("tiny", seed=3).seed == 3


def test_mlp_has_two_branches_and_seeded_init():
    cfg = ToyModelConfig(hidden=16, depth=2, num_classes=3)
    a, b = build_toy_mlp(cfg, 0), build_toy_mlp(cfg, 0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x, t, y = torch.randn(5, 2), torch.randint(0, 50, (5,)), torch.tensor([0, 1, 2, 0, 1])
    cond, uncond = branches(a, x, t, y)
    assert cond.shape == uncond.shape == (5, 2) and a.null_label == 3
    assert not torch.allclose(cond, uncond)
    single = build_toy_mlp(dataclasses.replace(cfg, cfg=False), 0)
    with pytest.raises(ValueError, match="no null label"):
        single.null_label  # noqa: B018


def _null_row_grad(weights):
    diffusion = Diffusion(TINY.diffusion)
    cfg = ToyModelConfig(hidden=16, depth=2, num_classes=TINY.num_classes)
    teacher, student = build_toy_mlp(cfg, 0), build_toy_mlp(cfg, 1)
    batch = draw_batch(TINY, diffusion, torch.Generator().manual_seed(0))
    student_loss(student, teacher, diffusion, batch, weights).backward()
    return student.label_emb.weight.grad[student.null_label].abs().sum()


def test_output_level_never_touches_the_null_branch_and_dash_does():
    assert _null_row_grad(STUDENT_LOSSES.get("output-level")) == 0
    assert _null_row_grad(STUDENT_LOSSES.get("dash-no-uncond")) == 0
    assert _null_row_grad(STUDENT_LOSSES.get("dash")) > 0
    dash = STUDENT_LOSSES.get("dash")
    assert (dash.im, dash.un, dash.an) == (1.0, 1.0, 0.1)


def test_the_toy_losses_are_per_sample_and_the_caller_reduces():
    """As the library's losses: each term (B,), the objective their weighted batch means."""
    from dashlib.workshop.train import student_terms, teacher_loss

    diffusion = Diffusion(TINY.diffusion)
    cfg = ToyModelConfig(hidden=16, depth=2, num_classes=TINY.num_classes)
    teacher, student = build_toy_mlp(cfg, 0), build_toy_mlp(cfg, 1)
    batch = draw_batch(TINY, diffusion, torch.Generator().manual_seed(0))
    assert teacher_loss(teacher, diffusion, batch, 0.1).shape == (TINY.batch_size,)
    terms = student_terms(student, teacher, diffusion, batch)
    assert {k: v.shape for k, v in terms.items()} == {k: (TINY.batch_size,) for k in ("im", "un", "an")}
    dash = STUDENT_LOSSES.get("dash")
    expected = dash.im * terms["im"].mean() + dash.un * terms["un"].mean() + dash.an * terms["an"].mean()
    assert torch.equal(student_loss(student, teacher, diffusion, batch, dash), expected)
    # the imitation term itself, written out: the conditional outputs' squared error per sample
    with torch.no_grad():  # two separate forwards, not `branches`' batched pair
        x_t = diffusion.q_sample(batch.x0, batch.t, batch.eps)
        cond_s, cond_t = student(x_t, batch.t, batch.y), teacher(x_t, batch.t, batch.y)
    torch.testing.assert_close(terms["im"].detach(), ((cond_s - cond_t) ** 2).flatten(1).mean(1))


def test_a_student_identical_to_the_teacher_has_no_imitation_loss():
    diffusion = Diffusion(TINY.diffusion)
    cfg = ToyModelConfig(hidden=16, depth=2, num_classes=TINY.num_classes)
    teacher = build_toy_mlp(cfg, 0)
    batch = draw_batch(TINY, diffusion, torch.Generator().manual_seed(0))
    loss = student_loss(build_toy_mlp(cfg, 0), teacher, diffusion, batch, STUDENT_LOSSES.get("output-level"))
    assert float(loss.detach()) == 0.0
    stats = gap_at(teacher, teacher, diffusion, TINY, t=10, n=64)
    assert stats["rho"] == pytest.approx(1.0) and stats["cos"] == pytest.approx(1.0)
    half = gap_at(_HalfGap(teacher), teacher, diffusion, TINY, t=10, n=64)
    assert half["rho"] == pytest.approx(0.5) and half["cos"] == pytest.approx(1.0)
    assert half["uncond_mse"] == 0 and half["cond_mse"] > 0


class _HalfGap(torch.nn.Module):
    """The teacher with half its guidance gap: eps_u + (eps_c - eps_u) / 2 on class rows."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.null_label = teacher, teacher.null_label

    def forward(self, x, t, y):
        cond = self.teacher(x, t, y)
        uncond = self.teacher(x, t, torch.full_like(y, self.null_label))
        is_null = (y == self.null_label).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(is_null, uncond, uncond + 0.5 * (cond - uncond))


def test_training_learns_and_dash_supervises_the_unconditional_branch(shop):
    for name, losses in shop.losses.items():
        assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses), name
    terms = loss_terms(shop)
    assert terms["dash"]["L_un"] < terms["output-level"]["L_un"]
    assert set(shop.models) == {"teacher", "output-level", "dash"}


def test_sampling_is_seeded_clipped_and_guidance_changes_it(shop):
    y = torch.arange(12) % TINY.num_classes
    a = sample_toy(shop.teacher, shop.diffusion, TINY, y, 3.0, torch.Generator().manual_seed(0))
    b = sample_toy(shop.teacher, shop.diffusion, TINY, y, 3.0, torch.Generator().manual_seed(0))
    c = sample_toy(shop.teacher, shop.diffusion, TINY, y, 0.0, torch.Generator().manual_seed(0))
    tag = sample_toy(shop.teacher, shop.diffusion, TINY, y, "tag", torch.Generator().manual_seed(0))
    assert a.shape == (12, 2) and torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, tag)
    assert a.abs().max() <= 1.0 + 1e-6


def test_figures_have_a_row_per_model_and_save_as_png(shop, tmp_path):
    matplotlib.use("Agg")
    fig = plot_fields(shop, t=10, y=0, n=5)
    assert len(fig.axes) == 3 * len(shop.models)
    path = save_figure(fig, tmp_path, "W1_test.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_samples(shop, guidance=[0, "tag"], n_per_class=5)
    assert len(fig.axes) == 2 * len(shop.models)


def _cells(name):
    return json.loads((ROOT / "notebooks" / name).read_text())["cells"]


@pytest.mark.parametrize("name", ["06_explorer.ipynb", "07_workshop.ipynb"])
def test_notebook_follows_the_conventions(name):
    cells = _cells(name)
    assert cells[0]["cell_type"] == "markdown"
    code = [c for c in cells if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], "one parameters cell, the first code cell"
    for stmt in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(stmt, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(stmt.value)  # literals only
    assert 'preset = "' in "".join(tagged[0]["source"])
    for c in code:
        tree = ast.parse("".join(c["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, "no logic lives only in a notebook: define functions in dashlib"
    for c in code:
        assert c.get("outputs") == [] and c.get("execution_count") is None, "commit without outputs"


def test_workshop_solutions_are_hidden_by_default():
    cells = _cells("07_workshop.ipynb")
    solutions = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    assert len(solutions) >= 3
    for c in solutions:
        assert c["cell_type"] == "code"
        assert c["metadata"]["jupyter"] == {"source_hidden": True, "outputs_hidden": True}
    exercises = [c for c in cells if c["cell_type"] == "markdown" and "**Exercise" in "".join(c["source"])]
    assert len(exercises) == len(solutions)


def test_build_workshop_shows_one_progress_bar_over_all_training(capsys):
    config = dataclasses.replace(TINY, teacher_steps=4, student_steps=3)
    shop = build_workshop(config, students=["output-level", "dash"], progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "workshop" in err  # 4 teacher + 2 x 3 student steps
    build_workshop(config, students=["dash"], progress=False)
    assert capsys.readouterr().err == ""
    shop.add_student("again", "dash")
    assert "3/3" in capsys.readouterr().err


def test_w0_has_a_class_legend_beside_the_axes():
    from dashlib.workshop import plot_data

    matplotlib.use("Agg")
    fig = plot_data(TINY, n=60)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"class {k}" for k in range(TINY.num_classes)]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_w_figures_get_sidecars_and_index_entries(tmp_path):
    from dashlib.workshop import W_FIGURES, plot_data, workshop_provenance

    matplotlib.use("Agg")
    prov = workshop_provenance("tiny", False, TINY)
    path = save_figure(plot_data(TINY, n=30), tmp_path, "W0_workshop_data", prov)
    assert path == tmp_path / "W0_workshop_data.png" and (tmp_path / "W0_workshop_data.pdf").exists()
    record = json.loads((tmp_path / "W0_workshop_data.json").read_text())
    assert record["kind"] == "figure" and record["notebook"] == "07_workshop"
    assert record["seeds"] == [TINY.seed] and record["steps"]["teacher"] == TINY.teacher_steps
    assert record["title"] == W_FIGURES["W0_workshop_data"][0]
    assert "W0_workshop_data" in (tmp_path / "README.md").read_text()
    assert set(W_FIGURES) == {"W0_workshop_data", "W1_workshop_fields", "W2_workshop_samples",
                              "W3_workshop_gap_profile"}
    notebook = "".join("".join(c["source"]) for c in _cells("07_workshop.ipynb"))
    assert all(f'"{name}", made_from)' in notebook for name in W_FIGURES)


def test_solutions_run_only_with_run_solutions():
    cells = _cells("07_workshop.ipynb")
    params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    assert "run_solutions = False" in "".join(params["source"])
    for c in cells:
        if "solution" in c["metadata"].get("tags", []):
            body = ast.parse("".join(c["source"])).body
            assert len(body) == 1 and isinstance(body[0], ast.If)
            assert ast.unparse(body[0].test) == "run_solutions" and not body[0].orelse


def test_the_notebook_with_solutions_runs_on_tiny(tmp_path):
    """Every code cell of 07 in-process (no kernel) with run_solutions = True."""
    matplotlib.use("Agg")
    cells = [c for c in _cells("07_workshop.ipynb") if c["cell_type"] == "code"]
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)  # noqa: S102 (the notebook's own cells)
    namespace.update(preset="tiny", figures_dir=str(tmp_path), run_solutions=True)
    for c in cells[1:]:
        exec("".join(c["source"]), namespace)  # noqa: S102
    assert "dash-no-uncond" in namespace["shop"].models
    assert {p.name for p in tmp_path.glob("W*.json")} == {f"{n}.json" for n in
                                                          ("W0_workshop_data", "W1_workshop_fields",
                                                           "W2_workshop_samples",
                                                           "W3_workshop_gap_profile")}


def test_the_data_plot_takes_more_classes_than_its_palette():
    from dashlib.workshop.plots import class_colour, plot_data
    from dashlib.workshop.toy import toy_config_for

    fig = plot_data(toy_config_for("tiny", num_classes=12), n=120)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    assert labels == [f"class {k}" for k in range(12)]  # every class in the legend
    colours = [tuple(h.get_facecolor()[0][:3]) for h in handles]
    assert colours[10] == pytest.approx(class_colour(0)) and colours[11] == pytest.approx(class_colour(1))
    assert len(set(colours[:10])) == 10  # the palette repeats only after 10 classes


def test_the_notebooks_parameter_counts_are_the_workshop_budgets():
    """The introduction names the teacher's and a student's sizes at the laptop budget."""
    import re

    import nbformat

    from dashlib.reproduce import notebooks_dir
    from dashlib.workshop.mlp import ToyModelConfig, build_toy_mlp

    intro = nbformat.read(notebooks_dir() / "07_workshop.ipynb", as_version=4).cells[0].source
    config = toy_config_for("digits")
    counts = [sum(p.numel() for p in build_toy_mlp(ToyModelConfig(hidden, config.depth, config.num_classes),
                                                   seed=0).parameters())
              for hidden in (config.teacher_hidden, config.student_hidden)]
    said = re.search(r"about (\d+)x smaller at the workshop budget\s*\(([\d,]+) against ([\d,]+)", intro)
    assert said, intro
    assert [int(said.group(i).replace(",", "")) for i in (2, 3)] == counts
    assert round(counts[0] / counts[1]) == int(said.group(1))
