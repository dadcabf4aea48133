"""Multi-process training and sampling (two gloo processes on CPU) against one process.

Tolerance: 1e-5 (absolute) on every weight after 5 steps. Two processes
compute the same gradients up to floating-point reduction order (DDP sums two
half-batch gradients; one process sums all rows in one kernel), so weights
differ by about 1e-6. Getting the global batch wrong, e.g. normalising the
TIRT weights over each rank's rows only, moves weights by about 1e-2.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dashlib.cli import main
from dashlib.config import ConfigError
from dashlib.distill import distill
from dashlib.distributed import rank_rows, shard, shard_sizes
from dashlib.generate import sample_to_files
from dashlib.io import load_checkpoint
from dashlib.presets import get_preset
from dashlib.sampling import balanced_labels
from dashlib.teacher import train_teacher

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_cover_every_item_exactly_once_in_order(world):
    for n in range(0, 23):
        covered = [i for r in range(world) for i in range(n)[shard(n, r, world)]]
        assert covered == list(range(n))
        sizes = shard_sizes(n, world)
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_global_batch_must_split_evenly():
    assert [rank_rows(16, r, 4) for r in range(4)] == [slice(0, 4), slice(4, 8), slice(8, 12),
                                                       slice(12, 16)]
    with pytest.raises(ConfigError, match="batch size 15 is not divisible by the 2 processes"):
        rank_rows(15, 1, 2)


def test_a_batch_the_processes_cannot_share_is_refused_before_anything_is_written(tiny, tmp_path,
                                                                                  monkeypatch):
    """torchrun --nproc_per_node 3 with the tiny batch of 16 left an empty runs/tiny/ behind."""
    import dashlib.teacher
    import dashlib.train

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(dashlib.train, "rank_world", lambda: (0, 3))  # check_global_batch's view
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        dashlib.teacher.train_teacher(tiny, progress=False)
    assert not (tmp_path / "runs").exists()


def test_single_process_commands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info", "--preset", "tiny"]) == 2
    assert "without torchrun" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Run tests/ddp_job.py under torchrun with two gloo processes; returns its runs folder."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "DASH_RUNS": str(root / "runs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_job.py"), str(root / "samples")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _close(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=0, atol=TOL), (what, k, (a[k] - b[k]).abs().max())
        else:
            assert torch.equal(a[k], b[k]), (what, k)


def test_two_processes_train_like_one_with_the_same_global_batch(ddp):
    preset = get_preset("tiny", **{"train.steps": 5})
    assert preset.teacher.dropout == 0  # dropout draws per rank: equality needs dropout 0
    single = train_teacher(preset, progress=False, device="cpu")
    (multi,) = (ddp / "runs" / "tiny").glob("teacher-*")
    assert multi.name == single.path.name  # same configuration, same run folder name
    a, b = load_checkpoint(multi / "checkpoint.pt"), load_checkpoint(single.checkpoint)
    assert a["step"] == b["step"] == 5
    assert a["objective"]["weighting.table"].abs().max() > 1e-3  # TIRT's table did move
    _close(a["objective"], b["objective"], "weights")
    _close(a["ema"]["shadow"], b["ema"]["shadow"], "ema")
    logs = [[json.loads(line) for line in (p / "log.jsonl").read_text().splitlines()]
            for p in (multi, single.path)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    for r0, r1 in zip(*logs):
        assert r0["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r0["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-5)
    assert json.loads((multi / "results.json").read_text())["processes"] == 2
    assert "rank_rng" in a and len(a["rank_rng"]) == 2


@pytest.mark.parametrize("method", ["dash", "fitnets"])
def test_two_processes_distill_like_one(ddp, method):
    preset = get_preset("tiny", **{"train.steps": 5})
    single = distill(preset, method, steps=3, progress=False, device="cpu")
    (multi,) = (ddp / "runs" / "tiny").glob(f"distill-{method}-*")
    assert multi.name == single.path.name
    a, b = load_checkpoint(multi / "checkpoint.pt"), load_checkpoint(single.checkpoint)
    assert a["step"] == b["step"] == 3
    assert any(k.startswith("adapters.") for k in a["objective"]) == (method == "fitnets")
    _close(a["objective"], b["objective"], "weights")
    _close(a["ema"]["shadow"], b["ema"]["shadow"], "ema")
    r0, r1 = (json.loads((p / "results.json").read_text()) for p in (multi, single.path))
    assert r0["rho"] == pytest.approx(r1["rho"], rel=1e-4)


def test_two_processes_return_every_sample_exactly_once(ddp, tmp_path):
    preset = get_preset("tiny", **{"train.steps": 5, "sample.batch_size": 2, "sample.steps": 4})
    (multi,) = (ddp / "runs" / "tiny").glob("teacher-*")
    (got_path,) = (ddp / "samples").glob("*.pt")
    _, ref_path = sample_to_files(preset, run=multi, guidance=3.0, n=7, seed=0, out=tmp_path,
                                  device="cpu")
    got, ref = torch.load(got_path, weights_only=True), torch.load(ref_path, weights_only=True)
    assert torch.equal(got["labels"], balanced_labels(7, 4))
    assert got["samples"].shape == ref["samples"].shape == (7, 1, 8, 8)
    # row i is sample i: nearest to reference row i and to no other
    dist = torch.cdist(got["samples"].flatten(1), ref["samples"].flatten(1))
    assert dist.argmin(1).tolist() == list(range(7)) and dist.argmin(0).tolist() == list(range(7))
    assert torch.allclose(got["samples"], ref["samples"], rtol=0, atol=TOL)


def test_a_run_held_by_another_process_is_refused_on_every_rank_at_once(tmp_path, monkeypatch):
    """Rank 0 took the lock outside `on_main`: its refusal left rank 1 waiting a minute in a
    collective, then failing with a gloo traceback."""
    import time

    from dashlib.teacher import teacher_run

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    run = teacher_run(get_preset("tiny", **{"train.steps": 5}))
    run.path.parent.mkdir(parents=True)
    (run.path.parent / f".{run.path.name}.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
           "-m", "dashlib", "train-teacher", "--preset", "tiny", "--steps", "5", "--device", "cpu",
           "--no-progress"]
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    took, out = time.monotonic() - start, done.stdout + done.stderr
    assert done.returncode != 0 and out.count("is being trained by") == 2, out[-3000:]
    assert "monitoredBarrier" not in out and took < 55, (took, out[-3000:])


def test_the_ranks_stop_when_the_torchrun_launcher_is_killed(tmp_path, monkeypatch):
    """SIGKILL of torchrun left both ranks training to the end, unsupervised, holding the run."""
    import signal
    import time

    from dashlib.teacher import teacher_run

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    run = teacher_run(get_preset("tiny", **{"train.steps": 100_000}))
    lock = run.path.parent / f".{run.path.name}.lock"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
           "-m", "dashlib", "train-teacher", "--preset", "tiny", "--steps", "100000", "--device", "cpu",
           "--no-progress"]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lock.exists(), "rank 0 never started training"
        ranks = _children(launcher.pid)  # torchrun starts each rank in a session of its own
        assert len(ranks) == 2, ranks
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(map(_alive, ranks)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, ranks)), "ranks kept training after their launcher was killed"
    finally:  # whatever the outcome, no rank trains on after the test
        for pid in [launcher.pid, *ranks]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    """The pids whose parent is `parent` (/proc/<pid>/stat's fourth field)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[1]) == parent:
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; its reaper is gone with the launcher
        return f.read().split(") ")[-1][0] != "Z"
