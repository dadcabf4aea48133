import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dashlib.cli import main


def test_info_prints_the_documented_keys(capsys):
    assert main(["info", "--preset", "cifar10"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("teacher_params", "student_params", "compression_ratio", "image_size",
                "num_classes", "dataset"):
        assert key in info
    assert info["teacher_params"] == 35_751_939 and info["dataset"] == "cifar10"


def test_info_says_which_precision_training_gets_here(capsys, monkeypatch):
    from dashlib import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU rule, on any host
    for amx, wide in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(runtime, "cpu_bf16_fast", lambda amx=amx: amx)
        for preset, expected in (("cifar10", wide), ("digits", "float32")):
            assert main(["info", "--preset", preset]) == 0
            got = json.loads(capsys.readouterr().out)["training_precision"]
            assert got == {"device": "cpu", "teacher": expected, "student": expected}, (preset, amx)


def test_train_then_sample_writes_grid_and_tensor(capsys, tmp_path):
    assert main(["train-teacher", "--preset", "tiny", "--steps", "6", "--no-progress"]) == 0
    results = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(results.read_text())["steps"] == 6
    # sampling the default teacher needs the same preset overrides
    assert main(["sample", "--preset", "tiny", "--set", "train.steps=6", "--w", "3", "--n", "8",
                 "--steps", "4", "--out", str(tmp_path / "s")]) == 0
    tensor_path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    saved = torch.load(tensor_path, weights_only=True)
    assert saved["samples"].shape == (8, 1, 8, 8) and saved["labels"].tolist() == [0, 1, 2, 3] * 2
    assert tensor_path.with_suffix(".png").stat().st_size > 100


def test_sampling_without_a_teacher_says_how_to_train_one(capsys):
    assert main(["sample", "--preset", "tiny", "--tag"]) == 2
    assert "dash train-teacher --preset tiny" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(capsys):
    assert main(["info", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dash: error: unknown preset 'nope'") and "\n" not in err
    assert main(["train-teacher", "--preset", "tiny", "--set", "train.lr=-1"]) == 2
    assert "TrainConfig.lr = -1" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "dashlib", "info", "--preset", "tiny"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["dataset"] == "synthetic"


def test_version_prints_the_package_version(capsys):
    import dashlib

    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    else:
        raise AssertionError("--version must exit")
    out = capsys.readouterr().out.strip()
    assert out.startswith("dash ") and out.split()[1] == dashlib.__version__


def test_distill_takes_its_method_from_set_and_passes_speed_options_to_every_run(capsys, monkeypatch):
    import dashlib.distill.run as run_module

    calls = []
    def run_jobs(jobs, force=False, device="auto", workers=1, progress=True, runtime=None):
        calls.append((jobs, runtime))
        return []

    monkeypatch.setattr(run_module, "run_jobs", run_jobs)
    assert main(["distill", "--preset", "tiny", "--set", "distill.method=cond-only", "--seed", "1", "2",
                 "--channels-last", "off", "--no-progress"]) == 0
    (jobs, runtime), = calls
    assert [(m, s) for _, m, s, _ in jobs] == [("cond-only", 1), ("cond-only", 2)]
    assert runtime.channels_last == "off"


def test_samples_drawn_with_other_sampler_settings_do_not_overwrite_each_other(capsys, tmp_path):
    assert main(["train-teacher", "--preset", "tiny", "--steps", "6", "--no-progress"]) == 0
    paths = []
    for eta in ("0", "1"):
        assert main(["sample", "--preset", "tiny", "--set", "train.steps=6", "--w", "3", "--n", "4",
                     "--steps", "3", "--eta", eta, "--out", str(tmp_path)]) == 0
        paths.append(Path(capsys.readouterr().out.strip().splitlines()[-1]))
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
    assert torch.load(paths[1], weights_only=True)["sampler"]["eta"] == 1.0
    more = []  # a w that ":g" would round, and the batch size where eta > 0 draws noise per chunk
    for extra in (["--w", "2.5", "--eta", "0"], ["--w", "2.5000001", "--eta", "0"],
                  ["--w", "3", "--eta", "1", "--set", "sample.batch_size=2"]):
        assert main(["sample", "--preset", "tiny", "--set", "train.steps=6", "--n", "4", "--steps", "3",
                     "--out", str(tmp_path), *extra]) == 0
        more.append(Path(capsys.readouterr().out.strip().splitlines()[-1]))
    assert len({*paths, *more}) == 5 and "w2.5000001" in more[1].name
    # bf16 samples differ from fp32 ones: a file of their own beside the fp32 one
    assert main(["sample", "--preset", "tiny", "--set", "train.steps=6", "--w", "3", "--n", "4",
                 "--steps", "3", "--eta", "0", "--sample-amp", "bf16", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    bf16 = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert bf16 != paths[0] and torch.load(bf16, weights_only=True)["precision"] == "bfloat16"
    assert torch.load(paths[0], weights_only=True)["precision"] == "float32"


def test_evaluate_offers_no_speed_options_it_would_ignore_and_keeps_every_digit_of_w(capsys):
    import pytest

    from dashlib.commands.evaluate import _guidance

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", "nowhere", "--compile"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --compile" in capsys.readouterr().err
    assert _guidance("0.1234567") == "0.1234567" and _guidance("2.50") == "2.5" and _guidance("TAG") == "tag"


def test_too_few_evaluation_samples_for_the_classes_is_an_error_not_a_silent_raise():
    import pytest

    from dashlib.config import ConfigError
    from dashlib.presets import get_preset

    with pytest.raises(ConfigError, match="eval.n_samples = 7 is too small.*10 classes; ask for at least 10"):
        get_preset("digits", **{"eval.n_samples": 7})
    assert get_preset("digits", **{"eval.n_samples": 10}).eval.n_samples == 10
    with pytest.raises(ConfigError, match="teacher.in_channels = 3 does not match the data .1.*channels"):
        get_preset("digits", **{"teacher.in_channels": 3, "student.in_channels": 3})
    with pytest.raises(ConfigError, match="teacher.num_classes = 4 does not match the data .10."):
        get_preset("digits", **{"teacher.num_classes": 4, "student.num_classes": 4})
    assert get_preset("digits", **{"data.channels": 3}).teacher.in_channels == 3


def test_a_file_dash_may_not_read_is_a_one_line_error(capsys, monkeypatch):
    from dashlib.commands import core

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/pets/cat/001.png")

    monkeypatch.setattr(core, "preset_from_args", denied)
    assert main(["info", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dash: error: ") and "Permission denied: '/data/pets/cat/001.png'" in err


def test_an_interrupted_command_says_what_its_rerun_does(capsys, monkeypatch):
    """Ctrl-C: `--resume` is advised only by the commands that have it; the others say what
    a rerun keeps."""
    import argparse
    import dataclasses

    from dashlib.cli import build_parser
    from dashlib.cliargs import COMMANDS

    def interrupt(args):
        raise KeyboardInterrupt

    real = COMMANDS.get
    monkeypatch.setattr(COMMANDS, "get", lambda name: dataclasses.replace(real(name), run=interrupt))
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    advice = {}
    for name, argv in (("train-teacher", ["--preset", "tiny"]), ("distill", ["--preset", "tiny"]),
                       ("sample", ["--preset", "tiny"]), ("evaluate", ["--run", "x"]),
                       ("reproduce", ["--preset", "tiny"]), ("info", ["--preset", "tiny"])):
        assert main([name, *argv]) == 130
        err = capsys.readouterr().err
        has_resume = "--resume" in subcommands.choices[name]._option_string_actions
        assert err.startswith("dash: interrupted; ") and ("--resume" in err) == has_resume, (name, err)
        advice[name] = err
    assert "rerun the same command" in advice["reproduce"] and "kept" in advice["evaluate"]


@pytest.mark.parametrize("entry", ["pipeline", "distill", "explorer"])
def test_an_interrupted_reproduction_resumes_its_teacher_bit_for_bit(tiny, tmp_path, monkeypatch,
                                                                       interrupted_at, entry):
    """`dash reproduce` (pipeline.teacher), a distillation and the explorer continue an
    unfinished teacher, as the students' pool does, instead of stopping with "pass --resume"
    (which reproduce does not take)."""
    from dashlib import pipeline
    from dashlib.artifacts import load_artifact
    from dashlib.config import override
    from dashlib.distill import distill
    from dashlib.explorer.models import load_models
    from dashlib.teacher import teacher_run

    preset = override(tiny, **{"train.steps": 12, "train.ckpt_every": 4, "distill.steps": 2})
    resume = {"pipeline": lambda: pipeline.teacher(pipeline.budget(preset, workers=1, device="cpu"),
                                                   progress=False),
              "distill": lambda: distill(preset, "dash", progress=False),
              "explorer": lambda: load_models(preset, ["dash"])}[entry]
    finals = {}
    for name in ("straight", "interrupted"):
        monkeypatch.setenv("DASH_RUNS", str(tmp_path / name))
        if name == "interrupted":
            with interrupted_at(7):
                resume()
            assert teacher_run(preset).checkpoint.is_file() and not teacher_run(preset).finished
        resume()
        finals[name] = load_artifact(teacher_run(preset)).model.state_dict()
    assert all(torch.equal(finals["straight"][k], finals["interrupted"][k]) for k in finals["straight"])


def test_a_single_head_student_refuses_a_guidance_it_cannot_apply(capsys, tmp_path):
    """A single-head student has no unconditional branch: --w would name the file after a
    guidance the samples do not have."""
    assert main(["distill", "--preset", "tiny", "--method", "single-head", "--steps", "2",
                 "--no-progress"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
    assert main(["sample", "--run", str(run), "--w", "0", "--n", "4", "--out", str(tmp_path)]) == 2
    assert "single-head student" in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--n", "4", "--steps", "2", "--out", str(tmp_path)]) == 0


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`dash info ... | head -1`: the pipe closes before dash writes; it exits 141 quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "dashlib", "info", "--preset", "cifar100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_distill_says_when_it_trains_the_teacher_first(capsys):
    """A teacher trained with --steps N is another run than the preset's: distil without the
    same --set train.steps=N and the preset's teacher is trained, which the user is told."""
    assert main(["train-teacher", "--preset", "tiny", "--steps", "6", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["distill", "--preset", "tiny", "--method", "cond-only", "--steps", "2", "--set",
                 "train.steps=6", "--no-progress"]) == 0
    assert "no finished teacher" not in capsys.readouterr().err
    assert main(["distill", "--preset", "tiny", "--method", "cond-only", "--steps", "2",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "no finished teacher for these settings" in err and "--set train.steps=N" in err


def test_two_data_roots_are_an_error_and_one_root_named_twice_is_not(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["info", "--preset", "tiny", "--data-root", "a", "--set", "data.data_root=b"]) == 2
    assert "--data-root a and --set data.data_root=b name two data roots" in capsys.readouterr().err
    (tmp_path / "a" / "cat").mkdir(parents=True)
    (tmp_path / "a" / "dog").mkdir()
    images = ["--set", "data.name=imagefolder"]
    assert main(["info", "--preset", "tiny", *images, "--data-root", "a", "--set",
                 f"data.data_root={tmp_path / 'a'}"]) == 2  # the same root: on to its empty classes
    assert "two data roots" not in capsys.readouterr().err


def test_info_names_the_classes_of_a_cifar_root_it_is_given_and_refuses_a_missing_one(capsys, tmp_path):
    from dashlib.cifar import write_cifar_root

    assert main(["info", "--preset", "cifar10", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "cifar10 was not found under" in capsys.readouterr().err
    write_cifar_root(tmp_path / "data", "cifar10", per_batch=4)
    assert main(["info", "--preset", "cifar10", "--data-root", str(tmp_path / "data")]) == 0
    classes = json.loads(capsys.readouterr().out)["classes"]
    assert classes == [f"c{i}" for i in range(10)]  # the meta file's names
    assert main(["info", "--preset", "cifar10"]) == 0  # no root named: sizes only, offline
    assert "classes" not in json.loads(capsys.readouterr().out)


def test_a_reproduction_with_fewer_samples_than_the_metrics_need_stops_before_it_trains(capsys, tmp_path,
                                                                                     monkeypatch):
    """The tiny preset has 4 classes: 4 samples fit the classes, not the metrics' 5, and used to
    fail in notebook 03 after the teacher and students had trained."""
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    assert main(["reproduce", "--preset", "tiny", "--set", "eval.n_samples=4", "--figures",
                 str(tmp_path / "figs"), "--no-progress"]) == 2
    assert "the metrics need 5; ask for at least 5" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()
