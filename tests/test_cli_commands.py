"""The documented command-line paths the other CLI tests leave out: `distill --method all`,
the speed options, `train-classifier`, `sample --tag`, `efficiency --teacher-run/--student-run`,
`evaluate --download-weights` and `reproduce --seeds/--workers` (README, "Command line")."""

import json
from pathlib import Path

import pytest
import torch

from dashlib.cli import main


def _last_line(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_distill_method_all_queues_every_method_and_takes_every_speed_option(capsys, monkeypatch):
    import dashlib.distill.run as run_module
    from dashlib.distill import METHODS

    calls = []
    monkeypatch.setattr(run_module, "run_jobs", lambda jobs, *args: calls.append((jobs, args[-1])) or {})
    assert main(["distill", "--preset", "tiny", "--method", "all", "--no-progress", "--compile",
                 "--freeze", "on", "--loader-workers", "2", "--sample-amp", "bf16",
                 "--channels-last", "on"]) == 0
    (jobs, runtime), = calls
    assert sorted(m for _, m, _, _ in jobs) == sorted(METHODS.names())
    assert (runtime.compile, runtime.freeze, runtime.loader_workers, runtime.sample_amp,
            runtime.channels_last) == (True, "on", 2, "bf16", "on")


def test_train_classifier_trains_once_and_reports_its_accuracy(capsys):
    assert main(["train-classifier", "--preset", "tiny", "--steps", "5", "--no-progress"]) == 0
    results = _last_line(capsys)
    first = json.loads(results.read_text())
    assert 0 <= first["test_accuracy"] <= 1 and first["n_test"] > 0
    assert main(["train-classifier", "--preset", "tiny", "--steps", "5", "--no-progress"]) == 0
    assert _last_line(capsys) == results and json.loads(results.read_text()) == first  # reused


def test_sample_tag_and_efficiency_of_named_runs(capsys, tmp_path):
    assert main(["train-teacher", "--preset", "tiny", "--steps", "4", "--no-progress"]) == 0
    teacher = _last_line(capsys).parent
    common = ["--preset", "tiny", "--set", "train.steps=4"]
    assert main(["distill", *common, "--method", "dash", "--steps", "3", "--no-progress"]) == 0
    student = _last_line(capsys).parent
    assert main(["sample", *common, "--tag", "--n", "4", "--steps", "3", "--out", str(tmp_path)]) == 0
    teacher_samples = _last_line(capsys)
    saved = torch.load(teacher_samples, weights_only=True)
    assert saved["samples"].shape == (4, 1, 8, 8) and saved["sampler"]["guidance"] == "tag"
    # the student's samples, same settings, same folder: a file of their own
    assert main(["sample", "--run", str(student), "--tag", "--n", "4", "--steps", "3",
                 "--out", str(tmp_path)]) == 0
    assert _last_line(capsys) != teacher_samples and teacher_samples.is_file()
    out = tmp_path / "eff.json"
    assert main(["efficiency", "--preset", "tiny", "--teacher-run", str(teacher),
                 "--student-run", str(student), "--steps", "2", "--batch", "2", "--repeats", "1",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["teacher"]["source"] == str(teacher) and result["student"]["source"] == str(student)
    assert result["flops_ratio"] > 1 and result["speedup"] > 0
    err = capsys.readouterr().err
    assert "swapped" not in err and "note:" not in err
    # a teacher's run as the student: 1.00x, which the swapped-runs note would not explain
    assert main(["efficiency", "--preset", "tiny", "--student-run", str(teacher), "--steps", "2",
                 "--batch", "2", "--repeats", "0", "--out", str(out)]) == 0
    assert f"note: --student-run {teacher} is a teacher's run, not a student's" in capsys.readouterr().err
    assert main(["efficiency", "--preset", "tiny", "--teacher-run", str(student),
                 "--student-run", str(teacher), "--steps", "2", "--batch", "2", "--repeats", "0",
                 "--out", str(out)]) == 0
    assert "were --teacher-run and --student-run swapped?" in capsys.readouterr().err
    assert json.loads(out.read_text())["flops_ratio"] < 1


def test_evaluate_download_weights_reaches_the_evaluation_config(capsys, monkeypatch):
    import dashlib.evaluate as evaluate_module

    seen = {}

    def stop(runs, config, **_):
        seen["config"] = config
        raise SystemExit(0)

    assert main(["train-teacher", "--preset", "tiny", "--steps", "4", "--no-progress"]) == 0
    teacher = _last_line(capsys).parent
    monkeypatch.setattr(evaluate_module, "evaluate_runs", stop)
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(teacher), "--download-weights", "--extractor", "inception"])
    assert seen["config"].download_weights and seen["config"].feature_extractor == "inception"


def test_reproduce_passes_seeds_workers_and_threads_to_every_notebook(capsys, monkeypatch, tmp_path):
    import dashlib.reproduce as reproduce_module

    seen = []

    def run_notebook(source, target, parameters, progress=True):
        seen.append((source.stem, dict(parameters)))
        return target

    monkeypatch.setattr(reproduce_module, "run_notebook", run_notebook)
    assert main(["reproduce", "--preset", "tiny", "--seeds", "7", "8", "--workers", "1", "--threads", "1",
                 "--figures", str(tmp_path), "--only", "01_teacher", "03_evaluation", "--no-progress"]) == 0
    assert [name for name, _ in seen] == ["01_teacher", "03_evaluation"]
    for _, params in seen:
        assert params["overrides"]["eval.seeds"] == [7, 8]
        assert params["workers"] == 1 and params["threads"] == 1 and params["preset"] == "tiny"


def test_efficiency_refuses_a_teacher_and_student_made_for_other_images(capsys):
    assert main(["train-teacher", "--preset", "tiny", "--steps", "2", "--no-progress",
                 "--set", "data.image_size=16"]) == 0
    teacher = _last_line(capsys).parent
    # the student would be the tiny preset's 8x8 default architecture
    assert main(["efficiency", "--preset", "tiny", "--teacher-run", str(teacher), "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert "made for other images (image_size: teacher 16, student 8)" in err


def test_sample_of_a_run_uses_its_own_presets_sampler(capsys, tmp_path):
    assert main(["train-teacher", "--preset", "tiny", "--steps", "3", "--no-progress"]) == 0
    teacher = _last_line(capsys).parent
    assert main(["sample", "--run", str(teacher), "--n", "4", "--out", str(tmp_path)]) == 0  # no --preset
    saved = torch.load(_last_line(capsys), weights_only=True)
    from dashlib.presets import get_preset

    assert saved["sampler"]["steps"] == get_preset("tiny").sample.steps != get_preset("digits").sample.steps
