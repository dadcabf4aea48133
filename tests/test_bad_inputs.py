"""Table-driven bad input: each case fails with ONE clear `dash: error:` line that
names the fix, a non-zero exit, and leaves every existing file untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dashlib.cli import main

RUNS = "{runs}"  # replaced by the runs folder of the session's trained tiny teacher

CASES = [
    # (id, argv, phrase the message must contain)
    ("unknown preset", ["info", "--preset", "cifar"], "unknown preset 'cifar'; choose one of"),
    ("zero threads", ["info", "--preset", "tiny", "--threads", "0"], "threads = 0 is invalid"),
    ("missing image folder", ["info", "--preset", "tiny", "--set", "data.name=imagefolder",
                              "--data-root", "/nonexistent/pets"], "/nonexistent/pets does not exist"),
    ("bad channel count", ["info", "--preset", "tiny", "--set", "data.channels=2"],
     "DataConfig.channels = 2 is invalid"),
    ("no reference images", ["train-teacher", "--preset", "tiny", "--set", "eval.max_reference=0"],
     "EvalConfig.max_reference = 0 is invalid"),
    ("unknown metric", ["train-teacher", "--preset", "tiny", "--set", 'eval.metrics=["fid","lpips"]'],
     "EvalConfig.metrics"),
    ("unknown budget key", ["reproduce", "--preset", "tiny", "--set", "efficiency=3"],
     "unknown budget setting"),
    ("bad budget value", ["reproduce", "--preset", "tiny", "--set", "efficiency_batch=0"],
     "efficiency_batch = 0 is invalid"),
    ("reproduce bad data", ["reproduce", "--preset", "tiny", "--set", "data.name=imagefolder",
                            "--data-root", "/nonexistent/pets"], "/nonexistent/pets does not exist"),
    ("unknown dataset", ["train-teacher", "--preset", "tiny", "--set", "data.name=svhn"],
     "DataConfig.name = 'svhn' is invalid: choose one of"),
    ("unknown method", ["distill", "--preset", "tiny", "--method", "kd"],
     "unknown distillation method 'kd'; choose one of"),
    ("wrong type", ["train-teacher", "--preset", "tiny", "--set", "train.steps=ten"],
     "TrainConfig.steps = 'ten' is invalid: must be of type int"),
    ("float where int", ["train-teacher", "--preset", "tiny", "--set", "train.batch_size=1.5"],
     "TrainConfig.batch_size = 1.5 is invalid: must be of type int"),
    ("unknown field", ["train-teacher", "--preset", "tiny", "--set", "train.stepz=3"],
     "has no field 'stepz'"),
    ("malformed --set", ["train-teacher", "--preset", "tiny", "--set", "train.steps"],
     "--set expects KEY=VALUE"),
    ("steps above T", ["sample", "--preset", "tiny", "--steps", "101"],
     "choose at most 100"),
    ("eval steps above T", ["evaluate", "--run", RUNS + "/teacher", "--steps", "500"],
     "at most 100"),
    ("non-finite guidance", ["sample", "--preset", "tiny", "--w", "nan"],
     "SampleConfig.w = nan is invalid: must be a finite number"),
    ("infinite guidance in eval", ["evaluate", "--run", RUNS + "/teacher", "--w", "inf"],
     "finite number"),
    ("negative learning rate", ["train-teacher", "--preset", "tiny", "--set", "train.lr=-1e-3"],
     "TrainConfig.lr = -0.001 is invalid: must be > 0"),
    ("negative label dropout", ["train-teacher", "--preset", "tiny", "--set", "train.label_dropout=-0.1"],
     "must lie in [0.0, 1.0]"),
    ("EMA decay of one", ["distill", "--preset", "tiny", "--set", "distill.ema_decay=1.0"],
     "DistillConfig.ema_decay = 1.0 is invalid"),
    ("missing CIFAR root", ["train-teacher", "--preset", "cifar10",
                            "--set", "data.data_root=/nonexistent/cifar"],
     "/nonexistent/cifar"),
    ("missing Inception weights", ["evaluate", "--run", RUNS + "/teacher", "--extractor", "inception",
                                   "--inception-weights", "/nonexistent/pt_inception.pth"],
     "/nonexistent/pt_inception.pth"),
    ("corrupt checkpoint", ["sample", "--preset", "tiny", "--run", RUNS + "/corrupt"],
     "truncated or corrupt"),
    ("crafted pickle", ["sample", "--preset", "tiny", "--run", RUNS + "/pickled"],
     "refusing to load"),
    ("not a run folder", ["evaluate", "--run", "/nonexistent/run"], "/nonexistent/run"),
    ("student larger than teacher", ["info", "--preset", "tiny", "--set", "student.ch=8",
                                     "--set", "student.norm_groups=2"],
     "the student must be smaller than the teacher"),
    ("image size mismatch", ["train-teacher", "--preset", "tiny", "--set", "data.image_size=16",
                             "--set", "teacher.image_size=8"], "must equal data.image_size (16)"),
    ("image size the models cannot halve",
     ["train-teacher", "--preset", "tiny", "--set", "data.image_size=9"],
     "must be divisible by 2, e.g. 8 or 10"),
    ("too few samples for the grid", ["sample", "--preset", "tiny", "--n", "2"],
     "ask for at least 4 samples"),
    ("DASH with no loss terms", ["distill", "--preset", "tiny", "--set", "distill.im=0",
                                 "--set", "distill.un=0", "--set", "distill.an=0"], "no loss"),
    ("unknown notebook", ["reproduce", "--preset", "tiny", "--only", "99_missing"], "unknown notebook"),
    ("reproduce unknown preset", ["reproduce", "--preset", "imagenet"], "unknown preset 'imagenet'"),
    ("unfinished run without --resume", ["train-teacher", "--preset", "tiny", "--set", "train.steps=40"],
     "pass --resume to continue it or --force to start over"),
    # issue 13
    ("guidance beyond float32", ["sample", "--preset", "tiny", "--w", "1e308"], "float32"),
    ("negative infinite guidance", ["sample", "--preset", "tiny", "--w", "-inf"],
     "SampleConfig.w = -inf is invalid: must be a finite number"),
    ("batch larger than memory", ["train-teacher", "--preset", "tiny", "--set", "train.batch_size=1000000000",
                                  "--force"], "train.batch_size = 1000000000 cannot fit"),
    ("distill batch larger than memory", ["distill", "--preset", "tiny",
                                          "--set", "distill.batch_size=1000000000"], "cannot fit"),
    ("--out is a file", ["sample", "--preset", "tiny", "--out", RUNS + "/teacher/config.json"],
     "is a file, not a folder"),
    ("--out under /proc", ["sample", "--preset", "tiny", "--out", "/proc/x"], "cannot create /proc/x (the"),
    ("unknown device type", ["sample", "--preset", "tiny", "--device", "tpu"], "'tpu' is not a device name"),
    ("device torch knows, dash does not", ["sample", "--preset", "tiny", "--device", "meta"],
     "dash runs on cpu or cuda only"),
    ("missing GPU", ["sample", "--preset", "tiny", "--device", "cuda:99"], "'cuda:99' asked for"),
    ("seed beyond 64 bits", ["sample", "--preset", "tiny", "--seed", "99999999999999999999999"],
     "out of range"),
    ("negative seed", ["train-teacher", "--preset", "tiny", "--seed", "-1"], "out of range"),
    ("zero training steps", ["train-teacher", "--preset", "tiny", "--steps", "0"],
     "argument --steps: 0 is invalid: give a whole number >= 1"),
    ("zero evaluation samples", ["evaluate", "--run", RUNS + "/teacher", "--n", "0"],
     "argument --n: 0 is invalid: give a whole number >= 1"),
    ("seed beyond range in --set", ["train-teacher", "--preset", "tiny",
                                    "--set", "train.seed=99999999999999999999999"], "seeds must lie in"),
    ("garbage config.json", ["evaluate", "--run", RUNS + "/garbage"], "config.json is corrupt"),
    ("results.json not an object", ["evaluate", "--run", RUNS + "/listresults"],
     "results.json is corrupt: it holds a JSON list"),
    ("zero distill workers", ["distill", "--preset", "tiny", "--workers", "0"], "at least 1 worker"),
    ("negative eval workers", ["evaluate", "--run", RUNS + "/teacher", "--workers", "-2"],
     "at least 1 worker"),
    ("reproduce --figures is a file", ["reproduce", "--preset", "tiny", "--only", "00_quickstart",
                                       "--figures", RUNS + "/teacher/config.json"],
     "is a file, not a folder"),
    ("unknown command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("option without its value", ["info", "--preset"], "argument --preset: expected one argument"),
    ("more samples than memory", ["sample", "--preset", "tiny", "--n", "1000000000"],
     "--n = 1000000000 cannot fit"),
    ("more eval samples than memory", ["evaluate", "--run", RUNS + "/teacher", "--n", "1000000000"],
     "cannot fit"),
    ("Inception weights are a folder", ["evaluate", "--run", RUNS + "/teacher", "--extractor", "inception",
                                        "--inception-weights", RUNS], "is a folder, not the file"),
    ("empty Inception weights", ["evaluate", "--run", RUNS + "/teacher", "--extractor", "inception",
                                 "--inception-weights", RUNS + "/empty.pth"], "truncated or corrupt"),
    ("guidance beyond float32 via --set", ["sample", "--preset", "tiny", "--set", "sample.w=1e39"],
     "float32"),
    ("boolean seed", ["train-teacher", "--preset", "tiny", "--set", "train.seed=true"],
     "TrainConfig.seed = True is invalid: must be of type int"),
    ("same seed twice", ["distill", "--preset", "tiny", "--seed", "1", "1"],
     "the same run is requested twice"),
    ("--force with --resume", ["train-teacher", "--preset", "tiny", "--force", "--resume"],
     "argument --resume: not allowed with argument --force"),
    ("distill --force with --resume", ["distill", "--preset", "tiny", "--resume", "--force"],
     "not allowed with argument"),
    ("efficiency --out is a folder", ["efficiency", "--preset", "tiny", "--repeats", "0", "--out", RUNS],
     "it is a folder"),
    ("preset name in --set", ["info", "--preset", "tiny", "--set", "name=foo"],
     "a preset's name cannot be overridden"),
    ("key below a value", ["info", "--preset", "tiny", "--set", "train.steps.x=1"],
     "TrainConfig.steps is a single value, not a group of fields"),
    ("list items of the wrong type", ["info", "--preset", "tiny", "--set", 'eval.metrics=[1,"fid"]'],
     "must be of type tuple[str, ...]"),
    ("same guidance twice", ["evaluate", "--run", RUNS + "/teacher", "--w", "3", "3.0"],
     "must not repeat a guidance setting"),
    ("evaluate data root for built-in data", ["evaluate", "--run", RUNS + "/teacher", "--data-root", RUNS],
     "was trained on 'synthetic', which reads no files; leave --data-root out"),
    ("Inception weights for the classifier", ["evaluate", "--run", RUNS + "/teacher", "--extractor",
                                              "classifier", "--inception-weights", RUNS + "/empty.pth"],
     "add --extractor inception"),
    ("Inception weights set for the classifier", ["evaluate", "--run", RUNS + "/teacher", "--set",
                                                  "eval.inception_weights=" + RUNS + "/empty.pth"],
     "--set eval.inception_weights applies to the Inception features"),
    ("classifier on a bad device", ["train-classifier", "--preset", "tiny", "--device", "bogus"],
     "device 'bogus' is not a device name"),
    ("data root for built-in data", ["train-teacher", "--preset", "tiny", "--data-root", RUNS],
     "the dataset 'synthetic' reads no files"),
    ("reproduce data root for built-in data", ["reproduce", "--preset", "digits", "--data-root", RUNS,
                                               "--figures", RUNS + "/figs"],
     "the dataset 'digits' reads no files"),
    ("claims sweep with a budget key", ["reproduce", "--preset", "tiny", "--only", "00_quickstart",
                                        "08_claims", "--set", 'methods=["dash"]', "--figures",
                                        RUNS + "/figs"],
     "budget keys do not reach the claims sweep"),
    ("claims sweep with a key it sets", ["reproduce", "--preset", "tiny", "--only", "00_quickstart",
                                         "08_claims", "--set", "distill.tirt=uniform", "--figures",
                                         RUNS + "/figs"],
     "the claims sweep sets these itself"),
    ("reproduce bad device", ["reproduce", "--preset", "tiny", "--device", "bogus",
                              "--figures", RUNS + "/figs"],
     "device 'bogus' is not a device name"),
    ("bad device, finished run", ["train-teacher", "--preset", "tiny", "--device", "bogus"],
     "device 'bogus' is not a device name"),
    ("evaluate a missing run", ["evaluate", "--run", "/nonexistent/run"],
     "run folder /nonexistent/run does not exist"),
    ("evaluate with a training key", ["evaluate", "--run", RUNS + "/teacher", "--set", "train.steps=5"],
     "train.steps: the run"),
    ("evaluate a run's results.json", ["evaluate", "--run", RUNS + "/teacher/results.json"],
     "results.json is a file, not a run folder; pass the run folder that holds it"),
    ("sample a run's final.pt", ["sample", "--run", RUNS + "/teacher/final.pt"],
     "final.pt is a file, not a run folder; pass the run folder that holds it"),
    ("sample a run with a key it fixes", ["sample", "--run", RUNS + "/teacher", "--set", "diffusion.T=50"],
     "diffusion.T: the run"),
    ("sample a run with model keys", ["sample", "--run", RUNS + "/teacher", "--set", "teacher.ch=64",
                                      "--set", "train.steps=5"], "teacher.ch, train.steps: the run"),
    ("a list key given one value", ["info", "--preset", "tiny", "--set", "eval.seeds=42"],
     "(a JSON list, e.g. --set 'KEY=[42, 123]'"),
    ("a JSON list with a typo", ["info", "--preset", "tiny", "--set", "eval.seeds=[1,2"],
     "starts as a JSON list or object but does not parse"),
    ("reproduce --figures under /proc", ["reproduce", "--preset", "tiny", "--only", "01_teacher",
                                         "--figures", "/proc/figs"], "cannot create /proc/figs"),
    ("efficiency --out a folder", ["efficiency", "--preset", "tiny", "--out", RUNS + "/teacher"],
     "it is a folder; give a file name"),
    ("efficiency --out under a file", ["efficiency", "--preset", "tiny", "--out",
                                       RUNS + "/teacher/config.json/x.json"], "is a file, not a folder"),
    ("reproduce cifar without its files", ["reproduce", "--preset", "cifar10", "--data-root",
                                           "/nonexistent/cifar"], "cifar10 was not found under /nonexistent"),
    ("efficiency of a missing student run", ["efficiency", "--preset", "tiny", "--student-run",
                                             "/nonexistent/run", "--repeats", "0"],
     "run folder /nonexistent/run does not exist"),
]

#: (id, DASH_RUNS, argv, phrase): the runs folder itself is bad.
ENV_CASES = [
    ("DASH_RUNS is a file", RUNS + "/teacher/config.json", ["train-teacher", "--preset", "tiny"],
     "(DASH_RUNS) is a file, not a folder"),
    ("DASH_RUNS under /proc", "/proc/x", ["train-teacher", "--preset", "tiny"],
     "cannot create /proc/x/tiny"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file's hash and every folder (an empty run folder left behind counts too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A runs folder with a finished tiny teacher, an unfinished one, a corrupt
    and a malicious artifact."""
    import os
    import pickle
    import shutil

    from dashlib.config import override
    from dashlib.presets import get_preset
    from dashlib.teacher import teacher_run, train_teacher
    from dashlib.train import Trainer

    root = tmp_path_factory.mktemp("bad-inputs")
    old = os.environ.get("DASH_RUNS")
    os.environ["DASH_RUNS"] = str(root)
    try:
        tiny = get_preset("tiny")
        run = train_teacher(tiny, progress=False)
        shutil.copytree(run.path, root / "teacher")
        # an interrupted 40-step run: a checkpoint but no final.pt
        unfinished = override(tiny, **{"train.steps": 40})
        original = Trainer.train_step

        def stop(self):
            if self.step == 12:
                raise KeyboardInterrupt
            return original(self)

        Trainer.train_step = stop
        try:
            train_teacher(unfinished, progress=False)
        except KeyboardInterrupt:
            pass
        finally:
            Trainer.train_step = original
        assert teacher_run(unfinished).checkpoint.exists()
        for name, text in (("garbage", '{"preset": "ti'), ("listresults", "[1, 2]")):
            shutil.copytree(run.path, root / name)
            target = "config.json" if name == "garbage" else "results.json"
            (root / name / target).write_text(text)
            if name == "listresults":
                (root / name / "config.json").unlink()
        (root / "empty.pth").write_bytes(b"")
        for name, payload in (("corrupt", None), ("pickled", "evil")):
            folder = root / name
            shutil.copytree(run.path, folder)
            final = folder / "final.pt"
            if payload is None:
                final.write_bytes(final.read_bytes()[:300])
            else:
                with open(final, "wb") as f:
                    pickle.dump({"model": _Evil()}, f)
    finally:
        if old is None:
            os.environ.pop("DASH_RUNS", None)
        else:
            os.environ["DASH_RUNS"] = old
    return root


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("case, argv, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_touches_nothing(prepared, monkeypatch, capsys, case, argv, phrase):
    _fails_clearly(prepared, monkeypatch, capsys, case, str(prepared), argv, phrase)


@pytest.mark.parametrize("case, runs, argv, phrase", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_runs_folder_fails_clearly_and_touches_nothing(prepared, monkeypatch, capsys, case, runs, argv,
                                                           phrase):
    _fails_clearly(prepared, monkeypatch, capsys, case, runs.replace(RUNS, str(prepared)), argv, phrase)


def _fails_clearly(prepared, monkeypatch, capsys, case, runs, argv, phrase):
    monkeypatch.setenv("DASH_RUNS", runs)
    argv = [a.replace(RUNS, str(prepared)) for a in argv]
    before = _snapshot(prepared)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2, f"{case}: exited {code}, not 2 (README: 'exit status 2')"
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("dash: error:")]
    assert len(errors) == 1, f"{case}: expected one error line, got {lines}"
    assert phrase in errors[0], f"{case}: {errors[0]!r} lacks {phrase!r}"
    assert not errors[0].startswith("dash: error: dash"), f"{case}: two prefixes: {errors[0]!r}"
    assert "Traceback" not in captured.err and "this must never run" not in captured.out
    assert _snapshot(prepared) == before, f"{case}: files were changed or created"


def test_the_readme_counts_the_cases():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`tests/test_bad_inputs.py` ({len(CASES) + len(ENV_CASES)} cases)" in readme


@pytest.mark.parametrize("params, phrase", [
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"preset": "tiny", "workers": 0}, "workers"),
    ({"preset": "tiny", "quick": "no"}, "quick = 'no' is a str; it must be True or False"),
])
def test_bad_notebook_parameters_name_notebook_cell_and_fix(tmp_path, monkeypatch, params, phrase):
    from dashlib.reproduce import ReproduceError, notebooks_dir, run_notebook

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    with pytest.raises(ReproduceError) as err:
        run_notebook(notebooks_dir() / "00_quickstart.ipynb", tmp_path / "out.ipynb",
                     {"runs_dir": str(tmp_path / "runs"), **params}, progress=False)
    assert "00_quickstart.ipynb failed in cell" in str(err.value) and phrase in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("final.pt"))
