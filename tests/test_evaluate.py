import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from eval_fakes import fake_run

from dashlib.artifacts import load_artifact
from dashlib.cli import main
from dashlib.config import ConfigError
from dashlib.evaluate import evaluate_runs, sample_images, sweep_guidance, sweep_steps


@pytest.fixture
def small_eval(tiny):
    return dataclasses.replace(tiny.eval, n_samples=16, seeds=(1, 2))


def _metrics(row):
    return {k: v for k, v in row.items() if k.startswith("classifier_") or k in ("fid", "accuracy")}


def test_rows_summary_and_single_head_reuse(tiny, small_eval):
    teacher = fake_run(tiny)
    single = fake_run(tiny, "student", "single-head", model=dataclasses.replace(tiny.student, cfg=False))
    report = evaluate_runs([teacher, single], small_eval, workers=1, device="cpu", progress=False)
    assert len(report.rows) == 2 * 3 * 2 and len(report.summary) == 2 * 3
    for row in report.rows:
        assert set(_metrics(row)) >= {"classifier_fid", "classifier_isc_mean", "classifier_kid_mean",
                                      "classifier_precision", "classifier_recall", "accuracy"}
        assert all(math.isfinite(v) for v in _metrics(row).values()), row
        assert 0 <= row["accuracy"] <= 1 and len(row["accuracy_per_class"]) == 4
        assert row["fid"] == row["classifier_fid"]  # the preset's primary feature space
    for entry in report.summary:
        assert entry["seeds"] == [1, 2] and math.isfinite(entry["classifier_fid_std"])
    by = {(r["name"], r["guidance"], r["seed"]): r for r in report.rows}
    t, s = teacher.path.name, single.path.name
    # the single-head student has no null branch: w is ignored, one sample set serves every w
    assert _metrics(by[s, "0", 1]) == _metrics(by[s, "tag", 1])
    assert not by[s, "0", 1]["guidance_applied"]
    assert report.meta["distinct_cells"] == 3 * 2 + 2
    # the teacher's branches differ, so w = 0 and w = 1 give different samples
    assert by[t, "0", 1]["classifier_fid"] != by[t, "1", 1]["classifier_fid"]
    assert by[t, "0", 1]["classifier_fid"] != by[t, "0", 2]["classifier_fid"]  # seeds matter
    clf = report.meta["classifiers"]
    assert len(clf) == 1 and 0 <= next(iter(clf.values()))["test_accuracy"] <= 1
    # every row and summary entry says how good its feature classifier is (dashlib.adequacy)
    acc = next(iter(clf.values()))["test_accuracy"]
    assert all(r["classifier_test_accuracy"] == acc for r in report.rows + report.summary)
    real = next(iter(clf.values()))["test_split_metrics"]["classifier"]
    assert 0 <= real["fid"] < min(r["fid"] for r in report.rows)  # held-out data beats untrained models


def test_cached_cells_are_reused(tiny, small_eval):
    teacher = fake_run(tiny)
    config = dataclasses.replace(small_eval, guidance=("tag",))
    first = evaluate_runs([teacher], config, workers=1, device="cpu", progress=False)
    again = evaluate_runs([teacher], config, workers=1, device="cpu", progress=False)
    assert first.meta["computed"] == 2 and again.meta["computed"] == 0
    assert [_metrics(r) for r in first.rows] == [_metrics(r) for r in again.rows]
    assert all(r["cached"] for r in again.rows)


def test_two_worker_processes_agree_with_one(tiny, small_eval):
    teacher = fake_run(tiny)
    student = fake_run(tiny, "student", "dash")
    config = dataclasses.replace(small_eval, guidance=("3",), keep_samples=False)
    parallel = evaluate_runs([teacher, student], config, workers=2, device="cpu", progress=False)
    for run in (teacher, student):
        for f in (run.path / "eval" / "cells").iterdir():
            f.unlink()
    serial = evaluate_runs([teacher, student], config, workers=1, device="cpu", progress=False)
    assert parallel.meta["workers"] == 2 and serial.meta["computed"] == 4
    assert len(parallel.rows) == len(serial.rows) == 4  # 2 runs x 2 seeds x 1 guidance
    for a, b in zip(parallel.rows, serial.rows):
        assert (a["name"], a["seed"]) == (b["name"], b["seed"])
        assert a["classifier_fid"] == pytest.approx(b["classifier_fid"], rel=1e-2, abs=1e-3)


def test_samples_are_balanced_and_seeded(tiny):
    artifact = load_artifact(fake_run(tiny))
    config = dataclasses.replace(tiny.sample, guidance="constant", w=2.0)
    a, labels = sample_images(artifact, config, 12, seed=5)
    b, _ = sample_images(artifact, config, 12, seed=5)
    c, _ = sample_images(artifact, config, 12, seed=6)
    assert a.dtype == torch.uint8 and a.shape == (12, 1, 8, 8)
    assert labels.bincount().tolist() == [3, 3, 3, 3]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_non_finite_samples_stop_the_cell_instead_of_scoring_as_black(tiny):
    from dashlib.errors import EvaluationError
    from dashlib.guidance import Guidance

    artifact = load_artifact(fake_run(tiny))
    config = dataclasses.replace(tiny.sample, clip_x0=False)
    with pytest.raises(EvaluationError, match="non-finite"):
        sample_images(artifact, config, 8, seed=0, guidance=Guidance("constant", w=3e38))


def test_a_reference_set_smaller_than_the_classes_is_refused():
    from dashlib.presets import get_preset

    eight = get_preset("tiny", **{"data.synthetic_classes": 8})
    config = dataclasses.replace(eight.eval, max_reference=6, n_samples=8)
    with pytest.raises(ConfigError, match="max_reference = 6 is too small.*at least 8"):
        evaluate_runs([fake_run(eight)], config, progress=False)


def test_sweeps_cover_their_grids(tiny):
    teacher = fake_run(tiny)
    config = dataclasses.replace(tiny.eval, n_samples=8, seeds=(0,))
    steps = sweep_steps([teacher], config, workers=1, device="cpu", progress=False)
    assert sorted(r["ddim_steps"] for r in steps.rows) == sorted(config.sweep_steps)
    assert {r["guidance"] for r in steps.rows} == {"tag"}
    scales = sweep_guidance([teacher], config, workers=1, device="cpu", progress=False)
    assert [r["guidance"] for r in scales.rows] == list(config.sweep_guidance)


def test_unfinished_run_and_too_few_samples_are_clear(tiny, tmp_path):
    with pytest.raises(Exception, match="no final.pt"):
        evaluate_runs([tmp_path / "nothing"], tiny.eval, progress=False)
    with pytest.raises(ConfigError, match="at least"):
        evaluate_runs([fake_run(tiny)], dataclasses.replace(tiny.eval, n_samples=3), progress=False)


def test_dash_evaluate_writes_json_and_prints_its_path_last(tiny, capsys):
    run = fake_run(tiny)
    code = main(["evaluate", "--run", str(run.path), "--n", "12", "--seeds", "7", "--w", "0", "2.5", "tag",
                 "--steps", "3", "--workers", "1", "--device", "cpu", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    path = Path(out[-1])
    assert path.is_file() and path.parent.parent == run.path
    data = json.loads(path.read_text())
    assert [r["guidance"] for r in data["rows"]] == ["0", "2.5", "tag"]
    assert {r["ddim_steps"] for r in data["rows"]} == {3} and {r["n"] for r in data["rows"]} == {12}
    assert data["meta"]["classifiers"]


def test_dash_evaluate_names_a_relative_run_by_its_absolute_folder(tiny, capsys, monkeypatch):
    """`--run runs/tiny/...` from the runs' parent: the results name the folder absolutely, so
    they read the same from anywhere."""
    run = fake_run(tiny)
    monkeypatch.chdir(run.path.parent)
    assert main(["evaluate", "--run", run.path.name, "--n", "12", "--seeds", "7", "--w", "1", "--steps", "2",
                 "--workers", "1", "--device", "cpu", "--no-progress"]) == 0
    data = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert {r["run"] for r in data["rows"]} == {str(run.path)} == {e["run"] for e in data["summary"]}


def test_evaluate_runs_names_a_relative_run_absolutely_and_counts_two_names_as_one(tiny, monkeypatch):
    run = fake_run(tiny)
    monkeypatch.chdir(run.path.parent)
    config = dataclasses.replace(tiny.eval, n_samples=12, seeds=(7,), guidance=("1",))
    report = evaluate_runs([run.path.name, run.path], config, steps=(2,), workers=1, device="cpu",
                           progress=False)
    assert {r["run"] for r in report.rows} == {str(run.path)} and len(report.rows) == 1


def test_the_pipelines_evaluation_finds_its_rows_in_a_relative_runs_folder(tiny, tmp_path, monkeypatch):
    """The notebooks' `pipeline.evaluate` names rows per run; with runs/ relative it used to
    match none (the report names runs absolutely) and leave the tables empty."""
    from dashlib.pipeline import budget, evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DASH_RUNS", "runs")
    teacher = fake_run(tiny)
    assert not teacher.path.is_absolute()
    b = budget("tiny", workers=1, device="cpu", overrides={"eval.n_samples": 12, "eval.seeds": [7]})
    report = evaluate(b, {"teacher": teacher}, guidance=("1",), steps=(2,), progress=False)
    assert len(report.rows) == 1 and len(report.summary) == 1
    assert report.rows[0]["method"] == "teacher" and report.rows[0]["run"] == str(tmp_path / teacher.path)


def test_dash_evaluate_without_inception_weights_is_one_error_line(tiny, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    run = fake_run(tiny)
    assert main(["evaluate", "--run", str(run.path), "--extractor", "inception", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dash: error: Inception-v3 weights") and "\n" not in err
    assert "--inception-weights" in err and not (run.path / "eval").exists()


def test_dash_evaluate_rejects_a_bad_scale(tiny, capsys):
    run = fake_run(tiny)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run.path), "--w", "strong"])
    assert exit_.value.code == 2 and "neither a number nor 'tag'" in capsys.readouterr().err


@pytest.mark.parametrize("change, field", [
    ({"seeds": (1, 1)}, "seeds"), ({"seeds": ()}, "seeds"), ({"guidance": ("x",)}, "guidance"),
    ({"sweep_guidance": ()}, "sweep_guidance"), ({"sweep_steps": (10, 0)}, "sweep_steps"),
    ({"classifier_lr": -1.0}, "classifier_lr"), ({"feature_extractor": "vgg"}, "feature_extractor"),
])
def test_eval_config_names_the_bad_field(tiny, change, field):
    with pytest.raises(ConfigError, match=rf"EvalConfig\.{field} = "):
        dataclasses.replace(tiny.eval, **change)


def test_cells_with_one_branch_are_costed_at_half_a_cfg_cell(tiny):
    from dashlib.evaluate import Task, cells, cost, run_spec

    teacher = fake_run(tiny)
    single = fake_run(tiny, "student", "single-head", model=dataclasses.replace(tiny.student, cfg=False))
    tasks = {(c.run.kind, c.guidance.label): Task(c, (), "", "", "", "cpu", False, 0, 0, ())
             for c in cells([run_spec(teacher), run_spec(single)], ["0", "1", "3", "tag"], [10], [0], 20)}
    cfg_cell = tasks["teacher", "3"]
    assert cost(tasks["teacher", "0"]) == cost(tasks["teacher", "1"]) == cost(cfg_cell) / 2
    assert cost(tasks["teacher", "tag"]) == cost(cfg_cell)
    one_head = {cost(t) for (kind, _), t in tasks.items() if kind != "teacher"}
    assert len(one_head) == 1  # no null branch: one row per sample at every setting


def test_a_setting_given_twice_is_one_cell_not_another_seed():
    from dashlib.evaluate import RunSpec, cells
    from dashlib.presets import get_preset

    p = get_preset("tiny")
    spec = RunSpec("r", "r", "teacher", "teacher", "tiny", dataclasses.asdict(p.data),
                   dataclasses.asdict(p.sample), "d", True, 2, 1, 1, p.diffusion.T)
    got = cells([spec], ["3", "3.0", "tag", 3.0], [4, 4, 5], [42, 42], 10)
    assert [(c.guidance.label, c.steps, c.seed) for c in got] == [
        ("3", 4, 42), ("3", 5, 42), ("tag", 4, 42), ("tag", 5, 42)]


def test_a_test_split_too_small_to_score_only_loses_the_real_data_floor(capsys):
    from dashlib.evaluate import real_floor
    from dashlib.presets import get_preset

    floor = real_floor(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), None, (), get_preset("tiny").eval, "cpu")
    assert floor == {} and "the test split holds 4 images, too few" in capsys.readouterr().err


def test_a_reproduction_evaluates_with_the_sampler_its_overrides_set(monkeypatch):
    from dashlib import evaluate, pipeline
    from dashlib.presets import get_preset

    seen = {}

    class Report:
        rows, summary, meta = [], [], {}

    def fake_evaluate_runs(runs, config, **kwargs):
        seen.update(kwargs)
        return Report()

    monkeypatch.setattr(evaluate, "evaluate_runs", fake_evaluate_runs)
    pipeline.evaluate(pipeline.budget("tiny", overrides={"sample.eta": 1.0}), {})
    assert seen["sample"].eta == 1.0
    pipeline.evaluate(pipeline.budget("tiny"), {})  # the preset's own: earlier cells are reused
    assert seen["sample"] == get_preset("tiny").sample


def test_a_run_trained_at_a_size_its_preset_models_cannot_take_can_still_be_evaluated():
    from dashlib.evaluate import evaluation_settings
    from dashlib.presets import get_preset

    odd = get_preset("digits", **{"data.image_size": 18, "teacher.ch_mult": [1, 2],
                                  "student.ch_mult": [1, 2]})  # 18 does not halve twice
    run = fake_run(odd)
    preset, sample = evaluation_settings(run, {"eval.n_samples": 20})
    assert preset.eval.n_samples == 20 and sample == get_preset("digits").sample
    evaluation_settings(run, {"data.download": True})  # where the data comes from: not the run's to fix
    with pytest.raises(ConfigError, match="data.name: the run .* fixes these"):
        evaluation_settings(run, {"data.name": "mnist"})


def test_preparing_a_feature_space_reads_its_dataset_once(tiny, small_eval, monkeypatch):
    import dashlib.evaluate as evaluate_module
    import dashlib.fidelity as fidelity_module
    from dashlib.evaluate import prepare_spaces, run_spec

    teacher = fake_run(tiny)
    spec = run_spec(teacher)
    prepare_spaces([spec], small_eval, torch.device("cpu"), progress=False)  # trains the classifier
    loads = []
    for module in (evaluate_module, fidelity_module):
        real = module.load_dataset
        monkeypatch.setattr(module, "load_dataset", lambda data, real=real: loads.append(data) or real(data))
    prepare_spaces([spec], small_eval, torch.device("cpu"), progress=False)
    assert len(loads) == 1


def test_evaluate_runs_refuses_a_dict_or_one_run_it_would_misread(tmp_path):
    """A dict of name -> Run (what the notebooks hold) used to be read by its keys, ending in
    "scratch has no final.pt"; one path would be read character by character."""
    from dashlib.presets import get_preset
    from dashlib.runs import Run

    config = get_preset("tiny").eval
    with pytest.raises(ConfigError, match=r"list\(runs.values\(\)\)"):
        evaluate_runs({"scratch": Run(tmp_path / "scratch-1")}, config)
    for one in (str(tmp_path), tmp_path, Run(tmp_path)):
        with pytest.raises(ConfigError, match="is one run: pass a list"):
            evaluate_runs(one, config)
