import asyncio
import dataclasses
import io
import math

import pytest
import torch
from PIL import Image

from dashlib.artifacts import Artifact
from dashlib.data import load_dataset
from dashlib.diffusion import Diffusion
from dashlib.explorer import BranchCache, BranchExplorer, Debouncer, ProbeKey, make_probe
from dashlib.explorer.probe import Branches, branch_stats, model_view
from dashlib.explorer.render import COLUMNS, Layout
from dashlib.runs import Run
from dashlib.unet import build_unet


def _randomised(config, seed):
    model = build_unet(config, seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:  # zero-initialised output convs would make every eps 0
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _artifact(model, tiny, tmp_path):
    return Artifact(model, None, Diffusion(tiny.diffusion), {}, Run(tmp_path), {})


@pytest.fixture
def setup(tiny, tmp_path):
    data = load_dataset(tiny.data)
    teacher = _artifact(_randomised(tiny.teacher, 1), tiny, tmp_path)
    students = {
        "copy": _artifact(_randomised(tiny.teacher, 1), tiny, tmp_path),
        "other": _artifact(_randomised(tiny.student, 2), tiny, tmp_path),
        "single-head": _artifact(_randomised(dataclasses.replace(tiny.student, cfg=False), 3),
                                 tiny, tmp_path),
    }
    return teacher, students, data


def test_probe_renoises_the_same_images_as_t_moves(tiny):
    data, diffusion = load_dataset(tiny.data), Diffusion(tiny.diffusion)
    a = make_probe(data.test, diffusion, ProbeKey(y=2, t=10, seed=5), n=6)
    b = make_probe(data.test, diffusion, ProbeKey(y=2, t=80, seed=5), n=6)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.eps, b.eps)
    assert not torch.allclose(a.x_t, b.x_t)
    torch.testing.assert_close(b.x_t, diffusion.q_sample(b.x0, b.t, b.eps))
    in_class = data.test.x[data.test.y == 2]
    assert all((in_class == x).flatten(1).all(1).any() for x in a.x0)
    assert b.t.eq(80).all() and b.y.eq(2).all()
    c = make_probe(data.test, diffusion, ProbeKey(y=2, t=10, seed=6), n=6)
    assert not torch.equal(a.eps, c.eps)
    with pytest.raises(ValueError, match="outside"):
        make_probe(data.test, diffusion, ProbeKey(y=2, t=diffusion.T, seed=0), n=2)


def test_cache_hits_per_model_class_t_seed_and_evicts_oldest(tiny, setup):
    teacher, _, data = setup
    diffusion = teacher.diffusion
    cache = BranchCache(max_entries=2)
    p1 = make_probe(data.test, diffusion, ProbeKey(0, 10, 0), 4)
    p2 = make_probe(data.test, diffusion, ProbeKey(0, 11, 0), 4)
    p3 = make_probe(data.test, diffusion, ProbeKey(1, 10, 0), 4)
    first = cache.get("teacher", teacher.model, p1)
    assert cache.get("teacher", teacher.model, p1) is first
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get("teacher", teacher.model, p2)
    cache.get("teacher", teacher.model, p3)  # evicts p1
    assert len(cache) == 2 and cache.misses == 3
    assert cache.get("teacher", teacher.model, p1) is not first
    assert cache.misses == 4


def test_guided_prediction_and_single_head():
    cond, uncond = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    b = Branches(cond, uncond)
    torch.testing.assert_close(b.guided(1.0), cond)
    torch.testing.assert_close(b.guided(0.0), uncond)
    torch.testing.assert_close(b.guided(3.0), uncond + 3 * (cond - uncond))
    single = Branches(cond, None)
    assert single.delta is None and torch.equal(single.guided(5.0), cond)


def test_stats_of_teacher_against_itself_and_of_single_head():
    cond, uncond = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = Branches(cond, uncond)
    s = branch_stats(t, t)
    assert s["rho"] == pytest.approx(1.0) and s["cos"] == pytest.approx(1.0)
    assert s["gap_mse"] == 0
    half = branch_stats(Branches(uncond + 0.5 * (cond - uncond), uncond), t)
    assert half["rho"] == pytest.approx(0.5) and half["cos"] == pytest.approx(1.0)
    single = branch_stats(Branches(cond, None), t)
    assert math.isnan(single["rho"]) and math.isnan(single["cos"]) and single["cond_mse"] == 0


def test_true_noise_recovers_x0(tiny, setup):
    _, _, data = setup
    diffusion = Diffusion(tiny.diffusion)
    probe = make_probe(data.test, diffusion, ProbeKey(1, 40, 3), 4)
    oracle = Branches(probe.eps, probe.eps)
    view = model_view("oracle", oracle, oracle, probe, diffusion, w=4.0)
    torch.testing.assert_close(view.x0_guided, probe.x0[0].clamp(-1, 1), atol=1e-4, rtol=1e-4)
    assert view.delta.abs().max() == 0


def _tile_pixel(png, row, col, layout=None):
    layout = layout or Layout()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    step = layout.tile + layout.pad
    return img.getpixel((layout.label_width + col * step + 2, layout.header + row * step + 2))


def _tile(png, row, col, layout=None):
    layout = layout or Layout()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    step = layout.tile + layout.pad
    left, top = layout.label_width + col * step, layout.header + row * step
    return img.crop((left, top, left + layout.tile, top + layout.tile)).tobytes()


def test_explorer_redraws_on_every_control_and_caches(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=8, debounce_s=0.0)
    assert ex.state().students == ("copy", "other", "single-head")
    first = ex.image.value
    assert Image.open(io.BytesIO(first)).size[0] > 100
    ex.set(t=5)
    assert ex.image.value != first
    misses = ex.cache.misses
    ex.set(guidance="constant")
    ex.set(w=1.5)
    assert ex.cache.misses == misses, "changing guidance must not run the network again"
    ex.set(t=60)
    ex.set(t=5)
    assert ex.cache.misses == misses + 4  # t=60: one pass per model; t=5 again: all hits
    assert len(ex.timings) == 6


def test_explorer_marks_missing_branch_and_copy_has_rho_one(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=8, debounce_s=0.0)
    views = ex.views(ex.state())
    assert [v.name for v in views] == ["teacher", "copy", "other", "single-head"]
    assert views[1].stats["rho"] == pytest.approx(1.0) and views[1].stats["cos"] == pytest.approx(1.0)
    assert views[3].eps_uncond is None and views[3].delta is None
    assert "single-head (no unconditional branch)" in ex.stats.value
    grey = (225, 225, 225)
    uncond_col, gap_col = COLUMNS.index("eps_uncond"), COLUMNS.index("gap delta")
    assert _tile_pixel(ex.image.value, 3, uncond_col) == grey
    assert _tile_pixel(ex.image.value, 3, gap_col) == grey
    assert _tile_pixel(ex.image.value, 0, uncond_col) != grey
    ex.set(students=("single-head",))
    assert len(ex.views(ex.state())) == 2


def test_run_ddim_fills_the_sample_column_with_each_models_sample(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=4, debounce_s=0.0)
    col = COLUMNS.index("DDIM sample")
    pending = _tile(ex.image.value, 0, col)
    ex.run_ddim()
    state, config = ex.state(), ex.guidance(ex.state())
    got = {n: ex.samples.lookup(n, config, state.y, state.seed) for n in ex.rows(state)}
    assert all(s is not None and s.shape == (1, 8, 8) for s in got.values())
    torch.testing.assert_close(got["teacher"], got["copy"])  # same model, same x_T
    assert not torch.allclose(got["teacher"], got["other"])
    assert _tile(ex.image.value, 0, col) != pending
    ex.set(seed=1)  # a new seed has no sample yet
    assert ex.samples.lookup("teacher", config, state.y, 1) is None


def test_explorer_refuses_a_teacher_without_null_branch(tiny, setup, tmp_path):
    _, students, data = setup
    with pytest.raises(ValueError, match="unconditional"):
        BranchExplorer(students["single-head"], {}, data, teacher_sample())


def test_debouncer_calls_once_per_burst_in_a_loop_and_at_once_without():
    calls = []
    direct = Debouncer(lambda: calls.append("direct"), delay_s=0.05)
    direct.trigger()
    assert calls == ["direct"]

    async def burst():
        d = Debouncer(lambda: calls.append("loop"), delay_s=0.05)
        for _ in range(5):
            d.trigger()
            await asyncio.sleep(0.005)
        assert calls.count("loop") == 0
        await asyncio.sleep(0.15)
        return d.calls

    assert asyncio.run(burst()) == 1
    assert calls.count("loop") == 1


def teacher_sample():
    from dashlib.presets import get_preset

    return get_preset("tiny").sample


def _extreme_pixels(png, row, col):
    """How many pixels of a gap tile sit at either end of the RdBu_r scale (saturated)."""
    from matplotlib import colormaps

    ends = {tuple(round(255 * c) for c in colormaps["RdBu_r"](v)[:3]) for v in (0.0, 1.0)}
    pixels = _tile(png, row, col)
    return sum(1 for i in range(0, len(pixels), 3) if tuple(pixels[i:i + 3]) in ends)


def test_gap_scale_is_fixed_across_t_by_default_and_per_t_on_request(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=4, debounce_s=0.0)
    gap_col = COLUMNS.index("gap delta")
    fixed, per_t = [], []
    for t in ex.profile_t:
        ex.set(t=t, per_t_scale=False)
        fixed.append(_extreme_pixels(ex.image.value, 0, gap_col))
        ex.set(per_t_scale=True)
        per_t.append(_extreme_pixels(ex.image.value, 0, gap_col))
    assert all(n > 0 for n in per_t), "per-t: the teacher's peak at every t is saturated"
    assert min(fixed) == 0 and max(fixed) > 0, "fixed: only the t with the largest gap saturates"


def test_profile_column_follows_each_models_gap_over_t(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=4, debounce_s=0.0)
    state = ex.state()
    gaps = ex.profile(state)
    assert gaps.timesteps == ex.profile_t and gaps.timesteps[0] == 0
    assert gaps.timesteps[-1] == teacher.diffusion.T - 1
    assert gaps.gap_abs["copy"] == gaps.gap_abs["teacher"]
    assert gaps.gap_abs["other"] != gaps.gap_abs["teacher"]
    assert all(math.isnan(v) for v in gaps.gap_abs["single-head"])
    width = Image.open(io.BytesIO(ex.image.value)).size[0]
    layout = Layout()
    step = layout.tile + layout.pad
    assert width == layout.label_width + step * (len(COLUMNS) - 1) + layout.profile_width
    ex.set(t=gaps.timesteps[3], students=("copy",))
    assert ex.profile(ex.state()) is gaps, "one profile per (class, seed), whatever t or students"
    ex.set(y=1)
    assert ex.profile(ex.state()) is not gaps


def test_tag_disables_w_and_shows_w_of_t(setup):
    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=4, debounce_s=0.0,
                        guidance="tag")
    assert ex.controls["w"].disabled and "TAG: w(t" in ex.w_now.value
    ex.set(guidance="constant", w=2.5)
    assert not ex.controls["w"].disabled and "constant w = <b>2.50</b>" in ex.w_now.value
    ex.set(guidance="tag")
    assert ex.controls["w"].disabled


def test_labels_use_three_significant_figures_and_teacher_row_is_itself():
    from dashlib.explorer.render import fmt
    from dashlib.explorer.widget import stats_table

    assert [fmt(x) for x in (0.0031234, 1.0, 12.345, 0.0, 250.0)] == ["0.00312", "1.00", "12.3",
                                                                       "0.00", "250"]
    assert fmt(math.nan) == "-"
    cond, uncond = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    b = Branches(cond, uncond)
    view = model_view("teacher", b, b, _probe_like(cond), Diffusion(teacher_preset().diffusion), 3.0)
    table = stats_table([view], 4, 9)
    row = table.split("<tr><td>teacher</td>")[1].split("</tr>")[0]
    assert ">-<" not in row and ">1.00<" in row and ">0.00<" in row
    assert "over 4 held-out images" in table
    assert "over 4 noised draws of this class's 2 held-out image(s)" in stats_table([view], 4, 2)


def test_students_are_checkboxes_and_small_presets_get_a_banner(setup):
    from dashlib.explorer.models import small_model_notice
    from dashlib.presets import get_preset

    teacher, students, data = setup
    ex = BranchExplorer(teacher, students, data, teacher_sample(), n_stats=4, debounce_s=0.0,
                        notice="too small")
    boxes = [k for k in ex.controls if k.startswith("student:")]
    assert len(boxes) == 3
    ex.controls["student:other"].value = False
    assert ex.state().students == ("copy", "single-head")
    with pytest.raises(ValueError, match="unknown students"):
        ex.set(students=("nobody",))
    assert "too small" in ex.banner.value
    assert small_model_notice(get_preset("tiny")) and not small_model_notice(get_preset("digits"))


def teacher_preset():
    from dashlib.presets import get_preset

    return get_preset("tiny")


def _probe_like(x):
    from dashlib.explorer.probe import Probe

    n = x.shape[0]
    return Probe(ProbeKey(0, 5, 0), x, x, x, torch.full((n,), 5), torch.zeros(n, dtype=torch.long))


def test_the_explorer_shows_the_budgets_own_students_by_default():
    from dashlib.pipeline import budget

    assert budget("tiny").explored_methods() == ("cond-only", "dash")
    assert budget("tiny", overrides={"methods": ["scratch", "dash"]}).explored_methods() == ("dash",)
    assert budget("tiny").explored_methods(["fitnets"]) == ("fitnets",)  # as asked


def test_a_student_of_other_data_is_refused_by_name_and_seeds_reach_the_documented_maximum(tiny, setup,
                                                                                            tmp_path):
    from dashlib.config import MAX_SEED
    from dashlib.explorer.models import check_fits
    from dashlib.params import ParameterError

    teacher, students, data = setup
    check_fits("copy", "runs/x", students["copy"], teacher)
    rgb = _artifact(_randomised(dataclasses.replace(tiny.student, in_channels=3), 4), tiny, tmp_path)
    with pytest.raises(ParameterError, match=r"student 'rgb' \(runs/y\) was trained for other data: "
                                             r"in_channels 3 \(the teacher's: 1\)"):
        check_fits("rgb", "runs/y", rgb, teacher)
    ex = BranchExplorer(teacher, {}, data, teacher_sample(), n_stats=4, debounce_s=0.0, seed=MAX_SEED)
    assert ex.controls["seed"].max == MAX_SEED and ex.state().seed == MAX_SEED


def test_the_title_names_the_class_as_its_folder_is_named(setup, monkeypatch):
    """PIL draws the title: matplotlib's "$" escape showed as a backslash there."""
    import os

    import dashlib.explorer.widget as widget

    teacher, students, data = setup
    ex = BranchExplorer(teacher, {}, data, teacher_sample(), n_stats=4, debounce_s=0.0)
    titles = []
    monkeypatch.setattr(widget, "render_panels", lambda views, samples, title, **kw: titles.append(title))
    monkeypatch.setattr(widget, "png_bytes", lambda fig: b"")
    ex.class_names = (os.fsdecode(b"caf\xe9 $1-$2"), *ex.class_names[1:])
    ex.set(y=0)
    ex.redraw()
    assert "class caf\\xe9 $1-$2, t = " in titles[-1], titles
