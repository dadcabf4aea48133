"""Crash safety with real processes: SIGKILL mid-training, then --resume."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dashlib.io import CheckpointError, atomic_torch_save, atomic_write, load_checkpoint

STEPS, CKPT = 40, 5


def _dash(args, runs, **kw):
    env = {**os.environ, "DASH_RUNS": str(runs), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dashlib", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return Path(out.strip().splitlines()[-1])


def _kill_when_logged(proc, log_glob, runs, step):
    """SIGKILL the process once its log shows `step` (or later)."""
    deadline = time.time() + 90
    while time.time() < deadline:
        for log in Path(runs).glob(log_glob):
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            try:
                if lines and json.loads(lines[-1])["step"] >= step:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return json.loads(lines[-1])["step"]
            except json.JSONDecodeError:
                pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the run never reached the step to kill it at")


def _final_state(results_path):
    ckpt = load_checkpoint(results_path.parent / "final.pt")
    return {**ckpt["model"], **{f"w.{k}": v for k, v in ckpt["weighting"].items()}}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


@pytest.mark.parametrize("kind, kill_step", [("teacher", 17), ("distill", 23)])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, kind, kill_step):
    common = ["--preset", "tiny", "--set", "teacher.dropout=0.1"]
    if kind == "teacher":
        args = ["train-teacher", *common, "--set", f"train.steps={STEPS}",
                "--set", f"train.ckpt_every={CKPT}", "--set", "train.log_every=1"]
        log_glob = "tiny/teacher-*/log.jsonl"
    else:
        args = ["distill", *common, "--method", "dash", "--set", f"distill.steps={STEPS}",
                "--set", f"distill.ckpt_every={CKPT}", "--set", "distill.log_every=1",
                "--set", "distill.calib_every=10"]
        log_glob = "tiny/distill-dash-*/log.jsonl"
        for runs in ("straight", "killed"):  # the teacher first, so the kill lands in distillation
            _finish(_dash(["train-teacher", *common], tmp_path / runs))

    straight = _final_state(_finish(_dash(args, tmp_path / "straight")))

    proc = _dash(args, tmp_path / "killed")
    killed_at = _kill_when_logged(proc, log_glob, tmp_path / "killed", kill_step)
    run_dir = next((tmp_path / "killed").glob(log_glob)).parent
    saved = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert killed_at - saved <= CKPT, "more than one checkpoint interval of work was lost"
    assert not (run_dir / "final.pt").exists()

    refused = _dash(args, tmp_path / "killed")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--resume" in err

    resumed = _final_state(_finish(_dash([*args, "--resume"], tmp_path / "killed")))
    _assert_same(straight, resumed)
    steps = [json.loads(ln)["step"] for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1)), "the log must hold every step exactly once"


WRITER = r"""
import sys, torch
from dashlib.io import atomic_torch_save
path = sys.argv[1]
big = {"w": torch.randn(2_000_000), "step": 0}
i = 0
while True:
    i += 1
    big["step"] = i
    atomic_torch_save(big, path)
    if i == 1:
        print("saved", flush=True)
"""


def test_sigkill_while_saving_never_leaves_a_broken_checkpoint(tmp_path):
    target = tmp_path / "ckpt.pt"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    seen = []
    for delay in (0.0, 0.013, 0.029, 0.047, 0.071, 0.101):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(delay)  # the writer is now in the middle of some later save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(load_checkpoint(target)["step"])  # must always load
    assert max(seen) > 1, "the kills should land after several saves"
    # a kill mid-write may leave a temp file (.ckpt.pt.*.tmp), nothing else beside the target
    others = {p.name for p in tmp_path.iterdir()} - {"ckpt.pt", "writer.py"}
    assert all(n.startswith(".ckpt.pt.") and n.endswith(".tmp") for n in others), others


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('{"v": 1}')

    def half_then_crash(f):
        f.write(b'{"v": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_writes_get_the_permissions_a_plain_write_gets(tmp_path):
    """Figures and results are shared files: not mkstemp's private 0600."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write(tmp_path / "atomic.txt", lambda f: f.write(b"x"))
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "final.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="refusing to load.*arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_called_unreadable_not_unsafe(tmp_path):
    from dashlib.io import UnreadableCheckpointError

    path = tmp_path / "final.pt"
    path.write_text("garbage")
    with pytest.raises(UnreadableCheckpointError, match="not a pickle stream"):
        load_checkpoint(path)
    marker = tmp_path / "pwned"
    for protocol in (0, 1, 4):  # a crafted pickle of any protocol is called unsafe, and never runs
        path.write_bytes(pickle.dumps({"model": _Exploit(marker)}, protocol=protocol))
        with pytest.raises(CheckpointError, match="arbitrary code") as refused:
            load_checkpoint(path)
        assert not isinstance(refused.value, UnreadableCheckpointError)  # caches must not discard it
    assert not marker.exists()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


# --- the fidelity cache and the Inception weights are never unpickled unsafely ---------------

@pytest.fixture
def fidelity_space(tiny):
    from dashlib.classifier import train_classifier
    from dashlib.fidelity import make_extractor, reference_set

    clf = train_classifier(tiny.data, tiny.eval, device="cpu", progress=False)
    return make_extractor("classifier", clf), reference_set(tiny.data)


def _stealth(path, marker):
    """Keep a cache file's real tensors and add one entry whose unpickling runs `touch marker`."""
    real = torch.load(path, weights_only=True) if path.is_file() else {"mu": torch.zeros(3)}
    torch.save({**real, "extra": _Exploit(marker)}, path)


def test_a_planted_fidelity_cache_payload_is_refused_and_never_runs(fidelity_space, tmp_path):
    from dashlib.fidelity import fidelity_metrics, reference_cache_file

    extractor, ref = fidelity_space
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    images = ref.images[:20]
    clean = fidelity_metrics(images, ref, extractor, cache_root=cache)
    # the attack: torch-fidelity's own file names for this reference, real statistics kept
    for suffix in ("features-features", "features-logits", "stat-fid-features"):
        _stealth(cache / f"{ref.name}-{extractor.cache_id}-dash-classifier-{suffix}.pt", marker)
    assert fidelity_metrics(images, ref, extractor, cache_root=cache) == clean  # never opened
    assert not marker.exists()
    # dash's own cache file with the payload added: refused, one clear error, nothing runs
    _stealth(reference_cache_file(ref, extractor, cache), marker)
    with pytest.raises(CheckpointError, match="refusing to load the fidelity cache file"):
        fidelity_metrics(images, ref, extractor, cache_root=cache)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign"])
def test_an_unreadable_fidelity_cache_is_recomputed_with_one_warning(fidelity_space, tmp_path, capsys,
                                                                     damage):
    from dashlib.fidelity import fidelity_metrics, reference_cache_file

    extractor, ref = fidelity_space
    cache = tmp_path / "cache"
    clean = fidelity_metrics(ref.images[:20], ref, extractor, cache_root=cache)
    path = reference_cache_file(ref, extractor, cache)
    good = path.read_bytes()
    if damage == "foreign":
        torch.save({"w": torch.zeros(2)}, path)
    else:
        path.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    capsys.readouterr()
    assert fidelity_metrics(ref.images[:20], ref, extractor, cache_root=cache) == clean
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("dash: warning:") and str(path) in err[0], err
    torch.load(path, weights_only=True)  # rewritten whole


def _random_inception_file(path):
    """A file shaped like torch-fidelity's Inception-v3 weights (random values, no download)."""
    import io

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Blank(FeatureExtractorInceptionV3):
        def load_state_dict(self, state, *args, **kwargs):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.save(Blank("blank", ["2048"], feature_extractor_weights_path=empty).state_dict(), path)


def test_inception_weights_are_checked_once_and_never_reopened_by_torch_fidelity(tmp_path, monkeypatch):
    from dashlib.fidelity import feature_extractor, make_extractor
    from dashlib.inception import InceptionWeightsError

    weights = tmp_path / "pt_inception.pth"
    _random_inception_file(weights)
    extractor = make_extractor("inception", None, str(weights))
    unsafe = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        if kwargs.get("weights_only") is False and not hasattr(f, "read"):
            unsafe.append(f)  # an unsafe load of a file (torch-fidelity's own code path)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fe = feature_extractor(extractor, cuda=False)
    assert unsafe == []
    torch.testing.assert_close(fe.fc.weight, real_load(weights, weights_only=True)["fc.weight"])
    # the file is swapped after dash checked it: refused, not loaded
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Exploit(tmp_path / "pwned")}, f)
    evil.replace(weights)
    with pytest.raises(InceptionWeightsError, match="changed since dash checked it"):
        feature_extractor(extractor, cuda=False)
    assert not (tmp_path / "pwned").exists()


def _declared(text):
    import re

    names = re.findall(r'"([A-Za-z0-9_.\-]+)\s*(?:[<>=!~;\[]|")', text)
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}


def test_every_package_dashlib_imports_is_declared():
    """pyproject.toml and environment.yml name every distribution dashlib imports directly."""
    import ast
    import importlib.metadata
    import re

    root = Path(__file__).resolve().parent.parent
    modules = set()
    for path in (root / "dashlib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = importlib.metadata.packages_distributions()
    needed = {re.sub(r"[-_.]+", "-", dists[m][0]).lower() for m in modules
              if m not in sys.stdlib_module_names and m != "dashlib" and m in dists}
    assert {"pillow", "ipython", "torch", "torch-fidelity"} <= needed
    for spec in ("pyproject.toml", "environment.yml"):
        missing = needed - _declared((root / spec).read_text())
        assert not missing, f"{spec} does not declare {sorted(missing)}"


# --- interrupted and failing runs leave nothing stale -------------------------------------------

def test_a_fresh_run_that_dies_before_its_first_checkpoint_leaves_no_folder(tiny, interrupted_at):
    from dashlib.teacher import teacher_run, train_teacher

    oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")
    with interrupted_at(1, oom):
        train_teacher(tiny, progress=False)
    assert not teacher_run(tiny).path.exists()


def test_a_run_that_runs_out_of_memory_while_setting_up_leaves_no_folder(tiny, monkeypatch):
    from dashlib.teacher import teacher_run, train_teacher

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(torch.optim, "AdamW", oom)
    with pytest.raises(torch.OutOfMemoryError):
        train_teacher(tiny, progress=False)
    assert not teacher_run(tiny).path.exists()


def test_a_student_interrupted_while_its_teacher_targets_are_computed_leaves_no_folder(tiny, monkeypatch):
    """The targets (and the rest of the objective) are built after the folder is prepared and
    before the Trainer's first checkpoint: Ctrl-C there once left a folder of config.json alone."""
    from dashlib.distill import distill
    from dashlib.distill.run import distill_run
    from dashlib.teacher import train_teacher

    train_teacher(tiny, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dashlib.distill.run.compute_targets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny, "dash", progress=False)
    run = distill_run(tiny, "dash")
    assert not run.path.exists()


def test_a_failing_run_never_deletes_a_folder_holding_more_than_a_fresh_run(tmp_path):
    from dashlib.runs import Run, removed_if_unstarted

    run = Run(tmp_path / "mine")
    run.path.mkdir()
    (run.path / "config.json").write_text("{}")
    (run.path / "notes.txt").write_text("precious")
    with pytest.raises(RuntimeError), removed_if_unstarted(run):
        raise RuntimeError("boom")
    assert (run.path / "notes.txt").exists()


def test_out_of_memory_is_one_error_line(monkeypatch, capsys):
    import dashlib.presets
    from dashlib.cli import main

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(dashlib.presets, "get_preset", oom)
    for argv, advice in ((["info", "--preset", "tiny"], "lower the model size"),  # no batch in info
                         (["train-teacher", "--preset", "tiny"], "lower --set train.batch_size"),
                         (["sample", "--preset", "tiny"], "lower --set sample.batch_size"),
                         (["efficiency", "--preset", "tiny"], "lower --batch")):
        assert main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("dash: error: out of memory") and advice in err[0]

    def bug(*args, **kwargs):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(dashlib.presets, "get_preset", bug)
    with pytest.raises(RuntimeError, match="genuine bug"):  # not swallowed
        main(["info", "--preset", "tiny"])

    def peer_gone(*args, **kwargs):  # what a rank sees in a collective when another was killed
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                           "peer [127.0.0.1]:6342\nException raised from recvLoop")

    monkeypatch.setattr(dashlib.presets, "get_preset", peer_gone)
    with pytest.raises(RuntimeError, match="Connection closed"):  # one process: no job to blame
        main(["info", "--preset", "tiny"])
    import dashlib.distributed as distributed

    monkeypatch.setattr(distributed, "launched", lambda: True)  # a rank of a torchrun job
    monkeypatch.setattr(distributed, "init_distributed", lambda device="auto": distributed.DistInfo())
    assert main(["train-teacher", "--preset", "tiny"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "another process of this torchrun job stopped" in err[0] and "--resume" in err[0]


def test_stale_checkpoint_temp_files_go_on_resume_and_on_the_next_save(tiny, interrupted_at):
    from dashlib.config import override
    from dashlib.runs import prepare
    from dashlib.teacher import teacher_payload, teacher_run, train_teacher

    preset = override(tiny, **{"train.steps": 20, "train.ckpt_every": 5})
    run = teacher_run(preset)
    # the next save: a fresh folder that already holds a killed save's temp file
    run.path.mkdir(parents=True)
    stale = run.path / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    with interrupted_at(7):
        train_teacher(preset, progress=False)
    assert run.checkpoint.is_file() and not stale.exists()
    # resume: a kill mid-save left another one
    stale.write_bytes(b"\0" * 1000)
    other = run.path / ".final.pt.x9.tmp"
    other.write_bytes(b"\0")
    assert prepare(run, teacher_payload(preset), force=False, resume=True) == "resume"
    assert not stale.exists() and not other.exists()
    assert run.checkpoint.is_file()


def test_cuda_on_a_host_without_it_is_a_config_error(monkeypatch):
    from dashlib.config import ConfigError
    from dashlib.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("value, expected",
                         [("-1", -1.0), ("-0.5", -0.5), ("-1e-3", -1e-3), ("-2E+1", -20.0)])
def test_negative_numbers_are_option_values(value, expected):
    from dashlib.cli import build_parser

    assert build_parser().parse_args(["sample", "--w", value]).w == expected
    parsed = build_parser().parse_args(["evaluate", "--run", "r", "--w", value, "tag"])
    assert parsed.w == [f"{expected:g}", "tag"]


def test_negative_infinity_reaches_the_finiteness_check():
    import math

    from dashlib.cli import build_parser

    assert math.isinf(build_parser().parse_args(["sample", "--w", "-inf"]).w)


# --- notebook parameters are checked by type --------------------------------------------------

def test_one_switch_hides_every_progress_bar_and_budget_leaves_it_unless_asked():
    from dashlib import bars
    from dashlib.pipeline import budget

    try:
        bars.show_bars(False)
        assert bars.bar(total=3).disable and bars.bar(total=3, auto=True).disable
        budget("tiny")  # progress None: a user's own switch stays as it is
        assert bars.bar(total=3).disable
        budget("tiny", progress=True)
        assert not bars.bar(total=3).disable and bars.bar(total=3, disable=True).disable
    finally:
        bars.show_bars(True)


@pytest.mark.parametrize("params, phrase", [
    ({"quick": "no"}, "quick = 'no' is a str; it must be True or False"),
    ({"quick": 1}, "quick = 1 is a int"),
    ({"device": 3}, "device = 3 is a int"),
    ({"workers": True}, "workers = True is a bool"),
    ({"preset": 7}, "preset = 7"),
    ({"runs_dir": 5}, "runs_dir = 5"),
    ({"progress": "no"}, "progress = 'no' is a str; it must be True or False"),
])
def test_budget_refuses_mistyped_notebook_parameters(params, phrase):
    from dashlib.params import ParameterError
    from dashlib.pipeline import budget

    with pytest.raises(ParameterError, match=phrase.replace("(", r"\(")):
        budget(**{"preset": "tiny", **params})


@pytest.mark.parametrize("params, phrase", [
    ({"device": 3}, "device = 3"),
    ({"methods": "dash"}, "methods = 'dash' is a str"),
    ({"methods": [1]}, "must list method names"),
    ({"student_runs": {"a": 1}}, "student_runs"),
    ({"t_fraction": "half"}, "t_fraction = 'half'"),
    ({"t_fraction": 1.2}, r"t_fraction = 1.2 is out of range"),
    ({"seed": 1.5}, "seed = 1.5 is a float"),
    ({"y": "0"}, "y = '0' is a str"),
    ({"n_stats": None}, "n_stats = None"),
    ({"y": 99}, r"label \(y\) = 99 is not a class"),
    ({"guidance": "cfg"}, "guidance = 'cfg' is invalid"),
    ({"n_stats": 0}, "n_stats = 0 is invalid"),
    ({"seed": -1}, "seed = -1 is invalid"),
])
def test_the_explorer_refuses_mistyped_parameters_before_loading_anything(params, phrase, monkeypatch):
    import dashlib.explorer.models as models
    from dashlib.params import ParameterError

    monkeypatch.setattr(models, "load_models", lambda *a, **k: pytest.fail("loaded models"))
    with pytest.raises(ParameterError, match=phrase):
        models.open_explorer("tiny", **params)


def test_the_workshop_refuses_mistyped_parameters():
    from dashlib.params import ParameterError, check_params
    from dashlib.workshop.toy import toy_config_for

    with pytest.raises(ParameterError, match="quick = 'no'"):
        toy_config_for("digits", quick="no")
    with pytest.raises(ParameterError, match="guidance_scales"):
        check_params(guidance_scales=[0, "3"])
    assert toy_config_for("digits", quick=True) != toy_config_for("digits", quick=False)
    # each of these trained the models first and then failed, or ran in silence with a wrong value
    for values, phrase in (({"field_t_fraction": 1.5}, "field_t_fraction = 1.5 is out of range"),
                           ({"field_t_fraction": -0.2}, "field_t_fraction = -0.2 is out of range"),
                           ({"guidance_scales": []}, "guidance_scales = \\[\\] is empty"),
                           ({"run_solutions": "False"}, "run_solutions = 'False' is a str")):
        with pytest.raises(ParameterError, match=phrase):
            check_params(**values)
    check_params(field_t_fraction=1, t_fraction=0.0, guidance_scales=["tag"], run_solutions=False)
    from dashlib.reproduce import notebook_figures_dir

    for folder in (None, "figs"):  # the workshop's first call: its toy budget reads only the name
        with pytest.raises(ParameterError, match="preset = 'tinyy' is not a preset: choose one of .*tiny"):
            notebook_figures_dir(folder, "tinyy", False)


def test_stale_fidelity_cache_temps_are_swept_fresh_ones_kept(tmp_path):
    import os
    import time

    from dashlib.fidelity import STALE_TEMP_AGE_S, remove_stale_cache_temps

    old, fresh, kept = (tmp_path / ".ref.pt.a.tmp", tmp_path / ".ref.pt.b.tmp", tmp_path / "ref.pt")
    for p in (old, fresh, kept):
        p.write_bytes(b"x")
    long_ago = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(old, (long_ago, long_ago))
    assert remove_stale_cache_temps(tmp_path) == [old]
    assert not old.exists() and fresh.exists() and kept.exists()


def test_a_run_another_live_process_trains_is_refused_and_a_dead_ones_lock_taken_over(tiny, tmp_path,
                                                                                       monkeypatch):
    """Teachers resume by themselves inside pipelines, so a second process (another terminal's
    `dash distill`) must not train the folder the first one is training."""
    import socket

    from dashlib.runs import RunStateError
    from dashlib.teacher import teacher_run, train_teacher

    monkeypatch.setenv("DASH_RUNS", str(tmp_path))
    run = teacher_run(tiny)
    lock = run.path.parent / f".{run.path.name}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process: pytest's parent
    with pytest.raises(RunStateError, match=f"being trained by process {os.getppid()}"):
        train_teacher(tiny, resume=True, progress=False)
    assert not run.path.exists() and lock.is_file()  # nothing written, the holder's lock kept
    lock.write_text("")  # a lock just created, its holder's pid not written yet
    with pytest.raises(RunStateError, match="its lock is being written"):
        train_teacher(tiny, resume=True, progress=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(f"{gone.pid} {socket.gethostname()}\n")  # a killed run's lock: its process is gone
    assert train_teacher(tiny, resume=True, progress=False).finished
    assert not lock.exists()  # released after training
