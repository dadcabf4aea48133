import json

import pytest
import torch

from dashlib.config import override
from dashlib.io import load_checkpoint
from dashlib.runs import RunStateError
from dashlib.runtime import Runtime
from dashlib.teacher import DiffusionObjective, train_teacher
from dashlib.train import NonFiniteLossError


@pytest.fixture
def preset(tiny):
    # dropout > 0 so resuming must also restore the global RNG dropout draws from
    return override(tiny, **{"train.steps": 20, "train.ckpt_every": 5, "train.log_every": 1,
                             "teacher.dropout": 0.1})


def _weights(run):
    ckpt = load_checkpoint(run.final)
    return {**ckpt["model"], **{f"w.{k}": v for k, v in ckpt["weighting"].items()}}


def test_resume_after_a_stop_equals_an_uninterrupted_run(preset, monkeypatch, tmp_path, interrupted_at):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "straight"))
    straight = _weights(train_teacher(preset, progress=False))

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "stopped"))
    with interrupted_at(13):
        train_teacher(preset, progress=False)
    with pytest.raises(RunStateError, match="--resume"):
        train_teacher(preset, resume=False, progress=False)  # as `dash train-teacher` without --resume
    run = train_teacher(preset, progress=False)  # the library resumes by default

    resumed = _weights(run)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    steps = [json.loads(line)["step"] for line in run.log.read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_resuming_with_another_layout_keeps_the_optimizer_state_right(preset, monkeypatch, tmp_path,
                                                                     interrupted_at):
    """The layout is a speed option outside the run's identity, so a run may resume with
    another one; the optimizer's moments, loaded in the old layout, must follow the
    weights (fused AdamW pairs them element by element in memory order)."""
    preset = override(preset, **{"teacher.dropout": 0.0})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "straight"))
    nchw = Runtime(channels_last="off")
    straight = _weights(train_teacher(preset, progress=False, runtime=nchw))

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "moved"))
    with interrupted_at(13):
        train_teacher(preset, progress=False, runtime=Runtime(channels_last="on"))
    resumed = _weights(train_teacher(preset, resume=True, progress=False, runtime=nchw))
    for k in straight:  # the layouts round differently, nothing more
        gap = (straight[k] - resumed[k]).abs().max()
        assert gap <= 1e-5, (k, gap)


def test_finished_run_is_reused_and_force_retrains(preset):
    run = train_teacher(preset, progress=False)
    mtime = run.final.stat().st_mtime_ns
    assert train_teacher(preset, progress=False) == run
    assert run.final.stat().st_mtime_ns == mtime
    train_teacher(preset, force=True, progress=False)
    assert run.final.stat().st_mtime_ns != mtime


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(preset, monkeypatch):
    original = DiffusionObjective.loss
    calls = {"n": 0}

    def poisoned(self, batch, *over):
        calls["n"] += 1
        loss, logs = original(self, batch, *over)
        return (loss * float("nan"), logs) if calls["n"] == 8 else (loss, logs)

    monkeypatch.setattr(DiffusionObjective, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 8.*last good checkpoint \(step 5\)"):
        train_teacher(preset, progress=False)
    from dashlib.teacher import teacher_run

    run = teacher_run(preset)
    assert load_checkpoint(run.checkpoint)["step"] == 5
    assert not run.final.exists()


def test_teacher_loss_decreases(tiny):
    preset = override(tiny, **{"train.steps": 60, "train.log_every": 10})
    run = train_teacher(preset, progress=False)
    mse = [json.loads(line)["mse"] for line in run.log.read_text().splitlines()]
    assert mse[-1] < mse[0]
    results = run.read_results()
    assert results["steps"] == 60 and results["params"] > 0


def test_tirt_snapshots_are_logged_about_40_times_whatever_the_log_interval(tiny):
    """The TIRT hook fires every steps // 40 = 3 steps; with logs every 2 steps it must
    still fire on about 40 log lines (not only on the multiples of lcm(2, 3) = 6)."""
    preset = override(tiny, **{"train.steps": 120, "train.log_every": 2, "train.ckpt_every": 60})
    run = train_teacher(preset, progress=False)
    records = [json.loads(line, parse_constant=_not_json) for line in run.log.read_text().splitlines()]
    snaps = [r["step"] for r in records if "tirt_bins" in r]
    assert 36 <= len(snaps) <= 41, snaps
    assert snaps[-1] == 120
    # the drift is undefined until every timestep bin was seen: null in the log, not NaN
    drift = [r["tirt_drift"] for r in records if "tirt_bins" in r]
    assert drift[0] is None and drift[-1] is not None


def _not_json(token):
    raise AssertionError(f"log.jsonl holds {token}, which strict JSON readers refuse")


def test_a_run_stopped_after_its_last_checkpoint_resumes_with_its_last_losses(preset):
    from dashlib.runs import Run
    from dashlib.teacher import teacher_run

    run = train_teacher(preset, progress=False)
    results = json.loads(run.results.read_text())
    run.final.unlink()  # stopped between the last checkpoint and the final files
    run.results.unlink()
    resumed = train_teacher(preset, resume=True, progress=False)
    again = json.loads(resumed.results.read_text())
    assert isinstance(resumed, Run) and resumed.path == teacher_run(preset).path
    assert again["final_loss"] == results["final_loss"] is not None


def test_a_warmup_longer_than_the_run_is_pointed_out(tiny, capsys):
    preset = override(tiny, **{"train.steps": 4, "train.warmup_steps": 10, "train.lr": 1e-3})
    train_teacher(preset, progress=False)
    err = capsys.readouterr().err
    assert "TrainConfig.warmup_steps = 10 is more than its steps = 4" in err
    assert "rises to 0.0004 at most" in err and "--set train.warmup_steps=N" in err
    train_teacher(override(tiny, **{"train.steps": 4, "train.warmup_steps": 4}), progress=False)
    assert "warmup_steps" not in capsys.readouterr().err


def test_one_process_resuming_a_torchrun_checkpoint_says_it_will_not_replay(preset, interrupted_at, capsys):
    """A 2 -> 1 process resume restored rank 0's RNG in silence; 1 -> 2 said so."""
    from dashlib.teacher import teacher_run

    with interrupted_at(13):
        train_teacher(preset, progress=False)
    run = teacher_run(preset)
    ckpt = load_checkpoint(run.checkpoint)
    torch.save({**ckpt, "rank_rng": [{"cpu": torch.get_rng_state()}] * 2}, run.checkpoint)  # two ranks'
    capsys.readouterr()
    train_teacher(preset, progress=False)
    assert "written by a different number of processes" in capsys.readouterr().err


def test_a_resumed_runs_time_counts_its_earlier_segments(preset, interrupted_at):
    """wall_time_s (and the log's time) counted only the last segment after a resume."""
    from dashlib.teacher import teacher_run

    with interrupted_at(13):
        train_teacher(preset, progress=False)
    run = teacher_run(preset)
    ckpt = load_checkpoint(run.checkpoint)
    assert 0 < ckpt["train_time_s"] < 1000
    torch.save({**ckpt, "train_time_s": 1000.0}, run.checkpoint)  # as if the first segment took 1,000 s
    train_teacher(preset, progress=False)
    assert 1000 < run.read_results()["wall_time_s"] < 1100
    last = json.loads(run.log.read_text().splitlines()[-1])
    assert last["step"] == 20 and 1000 < last["time"] < 1100
