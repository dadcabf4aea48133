"""The bench folder's own plumbing: which formatter summarises a result file, timing
another checkout, sorting convolutions by kind (bench/run_all.py, bench/reproduce_time.py,
bench/forward_profile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import claims_sweep  # noqa: E402
import distill_pool  # noqa: E402
import forward_profile  # noqa: E402
import reproduce_time  # noqa: E402
import run_all  # noqa: E402


@pytest.mark.parametrize(("name", "expected"), [
    ("sampling_speed", "sampling_speed"),
    ("sampling_speed_zen4_upsample", "sampling_speed"),
    ("freeze_speed", "freeze_speed"),
    ("freeze_speed_onednn", "freeze_speed_onednn"),  # the longer prefix wins
    ("reproduce_quick_time", "reproduce"),
    ("train_step_speed_zen4_digits_student", "train_step_speed"),
    ("distill_pool_zen4", "distill_pool"),
    ("distill_pool_zen4_ablations", "distill_pool"),
    ("summary", None),
    ("claims_sweep", None),
])
def test_a_result_file_is_summarised_by_its_family(name, expected):
    assert run_all.family(name) == expected


def test_the_summary_lists_a_result_written_under_a_new_name(tmp_path, monkeypatch):
    env = {"device": "cpu", "threads": 1, "date": "2026-12-06T00:00:00", "git_commit": "abc1234"}
    (tmp_path / "reproduce_time_somewhere_new.json").write_text(json.dumps(
        {"environment": env, "command": "make reproduce", "wall_min": 12.5, "returncode": 0,
         "checkout_commit": "a58642f"}))
    (tmp_path / "summary.json").write_text("{}")
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    summary, text = run_all.summarise()
    assert summary["reproduce_time_somewhere_new"]["wall_min"] == 12.5
    assert summary["reproduce_time_somewhere_new"]["commit"] == "a58642f"
    assert "in the checkout of a58642f: 12.5 min" in text
    assert "summary" not in summary


def test_a_pool_timing_is_summarised_per_run(tmp_path, monkeypatch):
    env = {"device": "cpu", "threads": 2, "date": "2026-12-06T00:00:00", "git_commit": "abc1234"}
    runs = [{"round": 0, "commit": "abc1234", "wall_s": 460.0, "sum_runs_s": 800.0, "pool_efficiency": 0.87},
            {"round": 0, "commit": "2e9ce66", "wall_s": 530.0, "sum_runs_s": 820.0, "pool_efficiency": 0.77,
             "weights_identical_to_this_checkout": True}]
    (tmp_path / "distill_pool.json").write_text(json.dumps({"environment": env, "workers": 2, "runs": runs}))
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    summary, text = run_all.summarise()
    assert summary["distill_pool"]["wall_s"] == {"0/abc1234": 460.0, "0/2e9ce66": 530.0}
    assert "| 0 | 2e9ce66 | 530 | 820 | 0.77 | True |" in text
    assert "Stage: distillation (notebook 02's training pool)" in text


def test_the_ablation_stage_starts_from_the_students_notebook_02_leaves():
    """bench/distill_pool.py --stage ablations prepares the students notebook 04 reuses:
    exactly the ablation runs that are notebook 02's runs, so it times the rest."""
    from dashlib import pipeline
    from dashlib.distill import METHODS
    from dashlib.distill.run import distill_run

    b = pipeline.budget("digits", workers=1, device="cpu")
    notebook_02 = {distill_run(b.preset, m, None, None).path: m for m in METHODS.names()}
    reused = {notebook_02[distill_run(p, m, None, None).path]
              for _, p, m in pipeline._ablation_jobs(b) + pipeline._width_jobs(b)
              if distill_run(p, m, None, None).path in notebook_02}
    assert reused == set(distill_pool.REUSED["ablations"])


def test_timing_another_checkout_imports_its_dashlib(tmp_path):
    other = tmp_path / "other"
    (other / "dashlib").mkdir(parents=True)
    (other / "dashlib" / "__init__.py").write_text("WHERE = 'other'\n")
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    env = {"PYTHONPATH": str(other), "PATH": "/usr/bin:/bin"}
    result = reproduce_time.timed(f"{sys.executable} -c 'import dashlib; print(dashlib.WHERE)'", env,
                                  other)
    assert result["returncode"] == 0 and result["output_tail"] == ["other"]
    assert reproduce_time.checkout_commit(other).startswith("unknown")  # no commit yet
    with pytest.raises(SystemExit, match="no dashlib"):
        reproduce_time.checkout_commit(tmp_path)


def test_the_convolutions_by_kind_add_up_to_the_forwards_convolutions():
    """bench/forward_profile.py's `conv_kinds` times each convolution of a forward once per
    call and counts its FLOPs: the kinds' calls and FLOPs add up to the forward's own."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dashlib.presets import get_preset
    from dashlib.runtime import Runtime

    cfg = get_preset("tiny").student
    model, inputs = forward_profile.model_and_inputs(cfg, 4, Runtime(channels_last="off"))
    kinds = forward_profile.conv_kinds(model, inputs, cfg.in_channels, reps=1, rounds=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert sum(k["calls"] for k in kinds.values()) == len(convs)
    assert kinds["image in/out"]["calls"] == 2
    assert sum(k["gflop_per_forward"] for k in kinds.values()) * 1e9 == pytest.approx(conv_flops)
    assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
    assert any(name.endswith("stride 2") for name in kinds)  # the downsampling convolutions


def test_the_claims_sweep_bench_takes_your_own_data(tmp_path, monkeypatch):
    """--set and --data-root reach every part of the plan (the notebook's keys and rules):
    a sweep of a grid of one's own on one's own images."""
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (60 * i, 200 if name == "cat" else 0, 90)).save(
                tmp_path / "pets" / name / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    args = claims_sweep.parse(["--preset", "tiny", "--set", "data.name=imagefolder", "--data-root", "pets",
                               "--set", "distill.steps=10", "--seeds", "3"])
    (part,) = claims_sweep.plan(args)
    assert part.overrides["data.data_root"] == str(tmp_path / "pets") and part.seeds == (3,)
    assert part.budgets == (2, 5, 10, 20) and part.base().data.name == "imagefolder"
    assert part.base().teacher.num_classes == 2
    from dashlib.config import ConfigError

    with pytest.raises(ConfigError, match="the claims sweep sets these itself"):
        claims_sweep.plan(claims_sweep.parse(["--preset", "tiny", "--set", "distill.tirt=uniform"]))


def test_a_report_from_the_sweeps_json_leaves_the_json_as_it_is(tmp_path):
    """--report-only used to rewrite --out (the committed JSON by default), stamping it with
    the current commit; it now only reads it."""
    import shutil

    state = tmp_path / "claims_sweep.json"
    shutil.copy(BENCH / "results" / "claims_sweep.json", state)
    before = state.read_bytes()
    figures = tmp_path / "figs"
    assert claims_sweep.main(["--report-only", "--out", str(state), "--figures", str(figures)]) == 0
    assert state.read_bytes() == before
    record = json.loads((figures / "F8_claims_budget.json").read_text())
    assert record["complete"] == json.loads(before)["complete"] and record["preset"] == "digits,digits16"


def test_a_rerun_that_would_drop_the_committed_cells_is_refused_and_leaves_them(tmp_path, monkeypatch,
                                                                                 capsys):
    """The committed sweep's runs are elsewhere and some were hashed by older code: a rerun used
    to drop those cells silently and overwrite the JSON; it now refuses until told to."""
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    state = tmp_path / "claims_sweep.json"
    committed = json.loads((BENCH / "results" / "claims_sweep.json").read_text())
    cell = next(iter(committed["cells"].values()))  # as if trained by code that hashed it otherwise
    cell["run"] = cell["run"].rsplit("-", 1)[0] + "-0000000000"
    state.write_text(json.dumps(committed))
    before = state.read_bytes()
    assert claims_sweep.main(["--out", str(state), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "claims_sweep: error: " in err and "--drop-stale" in err and "Traceback" not in err
    assert state.read_bytes() == before and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "tiny", "--parts", "bogus"], "the tiny plan's parts are tiny"),
    (["--preset", "tiny", "--report-only"], "does not exist: run the sweep first"),
    (["--preset", "digits", "--report-only", "--out", "TINY"], "holds a sweep of tiny"),
    (["--preset", "tiny", "--readme", "README_PLAIN"], "no claims block to fill"),
    (["--preset", "tiny", "--set", "distill.tirt=uniform"], "the claims sweep sets these itself"),
])
def test_bad_sweep_requests_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"benchmark": "claims_sweep", "plan": [{"preset": "tiny"}], "teachers": {},
                                "cells": {}, "sessions": []}))
    (tmp_path / "plain.md").write_text("# no markers\n")
    argv = [{"TINY": str(tiny), "README_PLAIN": str(tmp_path / "plain.md")}.get(a, a) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "new.json")]
    assert claims_sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new.json").exists()


@pytest.mark.parametrize("option", [["--budgets", "abc"], ["--budgets", "2.5"], ["--budgets", "0"],
                                    ["--seeds", "-1"], ["--max-stages", "-1"]])
def test_bad_sweep_numbers_are_refused_by_the_parser(option, capsys):
    with pytest.raises(SystemExit) as stop:
        claims_sweep.parse(["--preset", "tiny", *option])
    assert stop.value.code == 2 and option[1] in capsys.readouterr().err


def test_the_readme_block_names_the_json_it_summarises(tmp_path):
    from dashlib import claims_report

    state = {"plan": [], "cells": {}, "complete": True, "total_cpu_s": 60.0, "sessions": [{}],
             "git_commit": "abc", "missing": []}
    committed = claims_sweep.shown_path(BENCH / "results" / "claims_sweep.json")
    assert committed == "bench/results/claims_sweep.json"
    elsewhere = claims_sweep.shown_path(tmp_path / "mine.json")
    assert elsewhere == str(tmp_path / "mine.json")
    assert f"; {elsewhere})." in claims_report.readme_block(state, elsewhere)


def test_a_slice_of_the_plan_judges_the_other_parts_records_by_the_whole_plan(tmp_path, monkeypatch):
    """--parts digits16 used to judge the digits records as of no part (their folder had to
    exist): the committed teacher record, whose runs are elsewhere, was dropped."""
    from dashlib import claims

    seen = {}

    def run_sweep(parts, out, **kwargs):
        seen.update(parts=parts, known=kwargs["known"])
        return {"cells": {}, "missing": [], "total_cpu_s": 0.0}

    monkeypatch.setattr(claims, "run_sweep", run_sweep)
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    assert claims_sweep.main(["--parts", "digits16", "--out", str(tmp_path / "s.json"), "--no-progress"]) == 0
    assert [p.preset for p in seen["parts"]] == ["digits16"]
    assert [p.preset for p in seen["known"]] == ["digits", "digits16"]
    import json

    from dashlib.teacher import teacher_run

    committed = json.loads((BENCH / "results" / "claims_sweep.json").read_text())
    for part in seen["known"]:  # teachers of this configuration, in a runs folder that is gone
        if part.preset in committed["teachers"]:  # (a partial sweep may not have reached one yet)
            name = teacher_run(part.base()).path.name
            committed["teachers"][part.preset]["run"] = f"/elsewhere/{part.preset}/{name}"
    state = tmp_path / "committed.json"
    state.write_text(json.dumps(committed))
    whole = claims._load(state, seen["known"], drop_stale=True)
    assert "digits" in whole["teachers"] and set(whole["teachers"]) == set(committed["teachers"])


def test_a_stopped_sweep_still_fills_the_readme(tmp_path, monkeypatch):
    """--max-stages 0 on a resumed sweep returned before summarising, and --readme then failed."""
    from dashlib import claims_report

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    readme = tmp_path / "R.md"
    readme.write_text(f"x\n{claims_report.README_START}\n{claims_report.README_END}\n")
    argv = ["--preset", "tiny", "--variants", "dash", "--seeds", "0", "--budgets", "2", "--workers", "1",
            "--threads", "1", "--max-stages", "0", "--out", str(tmp_path / "s.json"), "--readme", str(readme),
            "--no-progress"]
    for _ in range(2):  # the first trains the teacher; the second resumes and stops at once
        assert claims_sweep.main(argv) == 0
        assert "missing cells: tiny 2 steps: 1 cells" in readme.read_text()
