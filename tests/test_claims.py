"""The claims sweep (dashlib.claims): grid, variants, verdicts, resumable runs."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from dashlib import claims, claims_report
from dashlib.config import ConfigError, DistillConfig
from dashlib.diffusion import Diffusion
from dashlib.distill.run import make_weighting_for
from dashlib.presets import get_preset
from dashlib.tirt import MinSNR, UncertaintyWeighting


def test_verdict_needs_the_margin_to_exceed_the_spread():
    lower = False
    assert claims.verdict((1.0, 0.1), (2.0, 0.1), lower)["verdict"] == "holds"
    assert claims.verdict((2.0, 0.1), (1.0, 0.1), lower)["verdict"] == "refuted"
    # a margin of 1.0 against a spread of 0.6 + 0.6: not decided
    within = claims.verdict((1.0, 0.6), (2.0, 0.6), lower)
    assert within["verdict"] == "within spread" and within["margin"] == pytest.approx(1.0)
    assert within["spread"] == pytest.approx(1.2)
    # higher is better (accuracy): the sign flips
    assert claims.verdict((0.9, 0.01), (0.5, 0.01), True)["verdict"] == "holds"
    assert claims.verdict((0.9, None), (0.5, 0.01), True)["verdict"] == "no spread (one seed)"
    assert claims.verdict((None, None), (0.5, 0.01), True)["verdict"] == "missing"


def test_gap_error_is_the_distance_of_rho_from_one():
    near, far = {"rho_mean": 0.95, "rho_std": 0.01}, {"rho_mean": 3.0, "rho_std": 0.01}
    assert claims._metric(near, "gap_error")[0] < claims._metric(far, "gap_error")[0]
    collapsed = {"rho_mean": 1 / 3.0, "rho_std": 0.01}  # as far below 1 as `far` is above
    assert claims._metric(collapsed, "gap_error")[0] == pytest.approx(claims._metric(far, "gap_error")[0])


def test_verdicts_per_budget_from_cells():
    cells = [{"preset": "p", "variant": v, "budget": b, "seed": s, "fid": f + 0.01 * s, "accuracy": 0.5,
              "rho": 1.0, "cos": 1.0, "cond_mse": 0.0, "uncond_mse": 0.0}
             for b, (dash, scratch) in {10: (1.0, 2.0), 20: (2.0, 1.0)}.items()
             for v, f in (("dash", dash), ("scratch", scratch)) for s in (0, 1, 2)]
    out = claims.verdicts(claims.summarize(cells))
    c2 = {v["budget"]: v["verdict"] for v in out if v["comparison"] == "C2: DASH beats scratch (FID)"}
    assert c2 == {10: "holds", 20: "refuted"}
    missing = [v for v in out if v["comparison"].startswith("DASH beats cond-only")]
    assert missing and all(v["verdict"] == "missing" for v in missing)
    # a comparison whose side is not in the preset's plan is left out, not "missing"
    planned = claims.verdicts(claims.summarize(cells), {"p": {"dash", "scratch"}})
    names = {v["comparison"] for v in planned}
    assert "C2: DASH beats scratch (FID)" in names
    assert not any(n.startswith("DASH beats cond-only") for n in names)


def test_sweep_plan_is_the_issue_grid():
    digits, digits16 = claims.sweep_plan("digits")
    assert digits.budgets == (200, 500, 1000, 2000) and digits.seeds == (0, 1, 2)
    assert set(digits.variants) == {"scratch", "cond-only", "gap-match", "dash", "dash-no-tirt",
                                    "dash-relearned-tirt", "dash-principled", "dash-uniform"}
    assert digits16.preset == "digits16" and digits16.budgets == (500, 2000)
    assert set(digits16.variants) == {"cond-only", "dash", "dash-no-tirt"}
    quick = claims.sweep_plan("digits", quick=True)[0]
    assert quick.budgets == (200, 500) and quick.seeds == (0, 1)
    (tiny,) = claims.sweep_plan("tiny", overrides={"distill.lr": 1e-3})
    assert max(tiny.budgets) <= 10 and tiny.base().distill.lr == 1e-3
    assert tiny.stages()[0][0] == min(tiny.budgets)  # smallest budgets first


def test_bad_grids_are_refused():
    with pytest.raises(ConfigError, match="budgets"):
        claims.SweepPart("tiny", (), (0,), ("dash",))
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        claims.SweepPart("tiny", (0,), (0,), ("dash",))
    with pytest.raises(KeyError, match="nope"):
        claims.SweepPart("tiny", (2,), (0,), ("nope",))


def test_variants_set_the_students_weighting():
    base = get_preset("tiny")
    p = claims.VARIANTS.get("dash-no-tirt").preset(base, budget=7, seed=3)
    assert (p.distill.tirt, p.distill.steps, p.distill.seed) == ("min-snr", 7, 3)
    assert p.teacher == base.teacher and p.train == base.train  # one teacher for every variant
    diffusion = Diffusion(base.diffusion)

    class Teacher:  # only what make_weighting_for reads
        weighting = object()
        config = {"train": {"weighting": "tirt"}}

    w = make_weighting_for(DistillConfig(tirt="min-snr"), Teacher(), diffusion)
    assert isinstance(w, MinSNR) and w.frozen
    u = make_weighting_for(DistillConfig(tirt="uncertainty"), Teacher(), diffusion)
    assert isinstance(u, UncertaintyWeighting) and not u.frozen
    with pytest.raises(ConfigError):
        DistillConfig(tirt="minsnr")


def test_sweep_is_resumable_and_reuses_finished_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    part = claims.SweepPart("tiny", (2,), (0, 1), ("dash", "dash-no-tirt"))
    out = tmp_path / "sweep.json"
    first = claims.run_sweep([part], out, workers=1, device="cpu", progress=False, max_stages=1)
    assert len(first["cells"]) == 2 and len(first["missing"]) == 2 and not first["complete"]
    finals = {k: (c["run"], os.stat(c["run"] + "/final.pt").st_mtime_ns)
              for k, c in first["cells"].items()}
    second = claims.run_sweep([part], out, workers=1, device="cpu", progress=False)
    assert second["complete"] and len(second["cells"]) == 4 and len(second["sessions"]) == 2
    for k, (run, mtime) in finals.items():  # not retrained
        assert os.stat(run + "/final.pt").st_mtime_ns == mtime
        assert second["cells"][k]["fid"] == first["cells"][k]["fid"]
    assert second["total_cpu_s"] >= first["total_cpu_s"] > 0
    for c in second["cells"].values():
        assert math.isfinite(c["fid"]) and 0 <= c["accuracy"] <= 1 and c["rho"] > 0
        assert 0 < c["classifier_test_accuracy"] <= 1
    # different seeds really are different students
    runs = {c["run"] for c in second["cells"].values()}
    assert len(runs) == 4
    rows = claims_report.verdict_rows(second)
    # two seeds on each side: every cell is a verdict with its margin and spread
    cell = r"(holds|refuted|within spread) \([+-]\d+\.\d{3} vs \d+\.\d{3}\)"
    assert rows and all(re.fullmatch(cell, r["2"]) for r in rows), rows
    # a cell whose run is no longer the one its variant's configuration names (the run was
    # hashed anew by a fix) is trained again, not reported from the old folder
    stale_key = next(iter(finals))
    state = json.loads(out.read_text())
    state["cells"][stale_key]["run"] = str(tmp_path)  # exists, but is not the variant's run
    out.write_text(json.dumps(state))
    third = claims.run_sweep([part], out, workers=1, device="cpu", progress=False)
    assert third["cells"][stale_key]["run"] == finals[stale_key][0]


def test_a_state_of_other_data_is_not_read_as_this_sweeps(tmp_path, monkeypatch):
    """Two image folders of one name share a state file (runs/<preset>-<name>/): the other
    folder's teacher and cells, at budgets this plan runs or not, are dropped with the
    time its sessions spent; this data's cells at a budget of an earlier plan are kept."""
    from dashlib.distill.run import distill_run
    from dashlib.teacher import teacher_run

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    part = claims.SweepPart("tiny", (2,), (0,), ("dash",))
    base = part.base()
    teacher = teacher_run(base).path
    student = distill_run(claims.VARIANTS.get("dash").preset(base, 4, 0), "dash").path
    other = tmp_path / "runs" / "tiny" / "distill-dash-0ther"
    for folder in (teacher, student, other):
        folder.mkdir(parents=True)
    cell = {"preset": "tiny", "variant": "dash", "budget": 4, "seed": 0}
    out = tmp_path / "sweep.json"

    def load(teacher_folder: Path, cell_folder: Path) -> dict:
        out.write_text(json.dumps({"sessions": [{"cpu_s": 5.0, "wall_s": 6.0}],
                                   "teachers": {"tiny": {"preset": "tiny", "run": str(teacher_folder)}},
                                   "cells": {"tiny/dash/4/0": {**cell, "run": str(cell_folder)}}}))
        return claims._load(out, [part])

    foreign = load(other, other)
    assert foreign["teachers"] == {} and foreign["cells"] == {} and foreign["sessions"] == []
    own = load(teacher, student)
    assert list(own["cells"]) == ["tiny/dash/4/0"] and "tiny" in own["teachers"]
    assert own["sessions"] == [{"cpu_s": 5.0, "wall_s": 6.0}]
    mixed = load(teacher, other)  # this data's teacher, a cell of another: the cell goes
    assert mixed["cells"] == {} and "tiny" in mixed["teachers"] and len(mixed["sessions"]) == 1


def test_a_sweep_whose_runs_live_elsewhere_now_keeps_its_cells_and_adds_no_session(tmp_path, monkeypatch):
    """The record holds the numbers: a state read beside another runs folder (a fresh clone,
    another DASH_RUNS) is the same sweep where its runs' names are this configuration's."""
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "first"))
    part = claims.SweepPart("tiny", (2,), (0,), ("dash",))
    out = tmp_path / "sweep.json"
    first = claims.run_sweep([part], out, workers=1, device="cpu", progress=False)
    assert first["complete"] and len(first["sessions"]) == 1
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "second"))
    again = claims.run_sweep([part], out, workers=1, device="cpu", progress=False)
    assert again["cells"] == first["cells"] and again["teachers"] == first["teachers"]
    assert again["sessions"] == first["sessions"] and again["git_commit"] == first["git_commit"]
    assert not (tmp_path / "second").exists()  # nothing trained again


def test_a_sweep_in_a_relative_runs_folder_finds_its_evaluations(tmp_path, monkeypatch):
    """The evaluation names runs absolutely; the sweep used to look them up by runs/... (KeyError)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DASH_RUNS", "runs")
    state = claims.run_sweep([claims.SweepPart("tiny", (2,), (0,), ("dash",))], tmp_path / "sweep.json",
                             workers=1, device="cpu", progress=False)
    (cell,) = state["cells"].values()
    assert state["complete"] and math.isfinite(cell["fid"])
    assert cell["run"].startswith(str(tmp_path / "runs")) and state["teachers"]["tiny"]["run"].startswith("/")


def test_an_interrupted_session_keeps_the_time_it_spent(tmp_path, monkeypatch):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    part = claims.SweepPart("tiny", (2,), (0,), ("dash",))
    out = tmp_path / "sweep.json"

    def stopped(*args, **kwargs):  # half a second of work on the stage, then Ctrl-C
        start = time.process_time()
        while time.process_time() - start < 0.5:
            pass
        raise KeyboardInterrupt

    saved = []
    monkeypatch.setattr(claims, "run_stage", stopped)
    with pytest.raises(KeyboardInterrupt):
        claims.run_sweep([part], out, workers=1, device="cpu", progress=False,
                         on_stage=lambda state: saved.append(state["sessions"][0]["cpu_s"]))
    state = json.loads(out.read_text())
    assert "tiny" in state["teachers"] and state["cells"] == {} and len(state["sessions"]) == 1
    assert state["sessions"][0]["cpu_s"] >= saved[0] + 0.45  # the stage's time, after the teacher's save
    assert state["missing"] == ["tiny/dash/2/0"]


def test_stale_records_are_refused_where_the_caller_asks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    part = claims.SweepPart("tiny", (2,), (0,), ("dash",))
    out = tmp_path / "sweep.json"
    cell = {"preset": "tiny", "variant": "dash", "budget": 2, "seed": 0, "run": str(tmp_path / "distill-x")}
    out.write_text(json.dumps({"sessions": [], "teachers": {}, "cells": {"tiny/dash/2/0": cell}}))
    with pytest.raises(claims.StaleSweepError, match="--drop-stale"):
        claims._load(out, [part], drop_stale=False)
    assert claims._load(out, [part])["cells"] == {}
    assert "1 of its 1 teachers and cells" in capsys.readouterr().err


def test_a_weak_classifier_is_flagged_in_the_figures_index(tmp_path):
    from dashlib.adequacy import ADEQUATE_ACCURACY, warning
    from dashlib.report import Provenance, save_table

    assert warning(ADEQUATE_ACCURACY) is None and warning(None) is None
    assert "0.770" in warning(0.77)
    import re

    from dashlib.presets import get_preset

    key = re.search(r"--set (\S+)=N", warning(0.77)).group(1)  # a key --set takes (it once named none)
    assert get_preset("tiny", **{key: 7}).eval.classifier_steps == 7
    good = Provenance("p", (0,), {}, extra={"classifier_test_accuracy": 0.99})
    save_table([{"a": 1}], ["a"], tmp_path, "T_good", "t", [], good)
    assert "Warning" not in (tmp_path / "README.md").read_text()
    weak = Provenance("p", (0,), {}, extra={"classifier_test_accuracy": 0.77})
    save_table([{"a": 1}], ["a"], tmp_path, "T_weak", "t", [], weak)
    index = (tmp_path / "README.md").read_text()
    assert "only 0.770 test accuracy" in index and "smoke test" not in index
    quick = Provenance("p", (0,), {}, quick=True)
    save_table([{"a": 1}], ["a"], tmp_path, "T_quick", "t", [], quick)
    assert "smoke test" in (tmp_path / "README.md").read_text()


def test_readme_block_is_replaced_between_its_markers():
    cells = {f"p/{v}/10/{s}": {"preset": "p", "variant": v, "budget": 10, "seed": s, "run": "x",
                               "fid": f + 0.01 * s, "accuracy": 0.5, "rho": 1.0, "cos": 1.0,
                               "cond_mse": 0.0, "uncond_mse": 0.0}
             for v, f in (("dash", 1.0), ("scratch", 2.0)) for s in (0, 1)}
    summary = claims.summarize(cells.values())
    state = {"plan": [{"preset": "p"}], "cells": cells, "summary": summary,
             "verdicts": claims.verdicts(summary), "complete": False, "missing": ["p/dash/20/0"],
             "total_cpu_s": 120.0, "sessions": [{}], "git_commit": "abc"}
    text = f"before\n{claims_report.README_START}\nOLDTEXT\n{claims_report.README_END}\nafter\n"
    out = claims_report.fill_readme(text, state)
    assert out.startswith("before\n") and out.endswith("\nafter\n") and "OLDTEXT" not in out
    assert "| C2: DASH beats scratch (FID) | holds (+1.000 vs 0.014) |" in out
    assert "**partial**" in out and "p 20 steps: 1 cells" in out
    assert claims_report.fill_readme(out, state) == out  # idempotent


def test_a_distillation_budget_set_by_hand_is_swept_around_at_every_preset():
    for preset in ("digits16", "tiny", "digits"):
        parts = claims.sweep_plan(preset, overrides={"distill.steps": 10})
        assert all(p.budgets == (2, 5, 10, 20) for p in parts), preset
        assert all("distill.steps" not in p.overrides for p in parts)
    (quick,) = claims.sweep_plan("digits16", quick=True, overrides={"distill.steps": 10})
    assert quick.budgets == (2, 5) and quick.seeds == (0, 1)
    with pytest.raises(ConfigError, match="distill.steps = 0"):
        claims.sweep_plan("tiny", overrides={"distill.steps": 0})


def test_keys_the_sweep_sets_per_variant_are_refused_and_a_new_size_is_one_part():
    changed = {f"distill.{k}" for v in claims.VARIANTS for k in claims.VARIANTS.get(v).changes}
    assert changed <= set(claims.SWEPT_KEYS)
    with pytest.raises(ConfigError, match="distill.tirt: the claims sweep sets these itself"):
        claims.sweep_plan("digits", overrides={"distill.tirt": "min-snr"})
    (only,) = claims.sweep_plan("digits", overrides={"data.image_size": 16})
    assert only.preset == "digits" and only.base().teacher.image_size == 16


def test_the_sweep_evaluates_with_the_sampler_its_overrides_set(monkeypatch):
    from dashlib import evaluate

    seen = []

    class Report:
        summary = [{"fid_mean": 1.0, "accuracy_mean": 0.5}]

    def fake_evaluate_runs(runs, config, **kwargs):
        seen.append(kwargs.get("sample"))
        return Report()

    monkeypatch.setattr(evaluate, "evaluate_runs", fake_evaluate_runs)
    monkeypatch.setattr(claims, "report_accuracy", lambda report: 0.9)
    monkeypatch.setattr("dashlib.teacher.train_teacher", lambda base, **kw: _FakeRun())
    (part,) = claims.sweep_plan("tiny", overrides={"sample.eta": 1.0})
    claims.teacher_record(part, workers=1, device="cpu", progress=False)
    assert seen[0] is not None and seen[0].eta == 1.0


class _FakeRun:
    path = "teacher"

    @staticmethod
    def read_results():
        return {"wall_time_s": 1.0}


def test_a_variant_table_with_a_typo_fails_when_it_is_built_not_mid_sweep():
    """Ablation and claims variants check their method, DistillConfig changes and the
    method's own rules at once, and say which variant is wrong."""
    from dashlib.ablation import Variant as AblationVariant

    with pytest.raises(ConfigError, match="'DASH - L_u'.*tirr is not a DistillConfig field"):
        AblationVariant("DASH - L_u", "dash", {"tirr": "uniform"})
    with pytest.raises(ConfigError, match="'dash' with .*DistillConfig.tirt = 'unifrom' is invalid"):
        claims.Variant("dash", {"tirt": "unifrom"})
    with pytest.raises(ConfigError, match="'negative': DistillConfig.an = -1"):
        AblationVariant("negative", "dash", {"an": -1})
    with pytest.raises(ConfigError, match="'nothing': .*im, un and an are all 0"):
        AblationVariant("nothing", "dash", {"im": 0.0, "un": 0.0, "an": 0.0})  # DASH's own check
    with pytest.raises(ConfigError, match="variant of 'dsah'.*unknown distillation method 'dsah'"):
        claims.Variant("dsah")
    assert claims.Variant("dash", {"tirt": "min-snr"}).changes == {"tirt": "min-snr"}


def test_the_sidecar_names_the_budgets_and_seeds_its_tables_show():
    """A slice run before (`--budgets 2`) stays in the tables beside this plan's (`--budgets 4`):
    the provenance lists what is shown, not only what this plan ran."""
    entry = {"preset": "tiny", "variant": "dash"}
    state = {"plan": [{"preset": "tiny", "budgets": [4], "seeds": [0, 1], "eval": {}}],
             "summary": [{**entry, "budget": 2, "seeds": [0, 1]}, {**entry, "budget": 4, "seeds": [0, 1]}],
             "complete": True, "missing": [], "total_cpu_s": 1.0, "cells": {}, "teachers": {}}
    prov = claims_report.provenance(state, quick=False)
    assert prov.steps == {"tiny_budgets": "2,4"} and prov.seeds == (0, 1)
    state["summary"] = []  # nothing done yet: the plan
    assert claims_report.provenance(state, quick=False).steps == {"tiny_budgets": "4"}
    assert "rho_undefined" not in prov.extra
    state["cells"] = {"tiny/dash/4/0": {"teacher_gap_abs": 4e-9, "rho": None}}  # a teacher with no gap
    assert "4.0e-09" in claims_report.provenance(state, quick=False).extra["rho_undefined"]
