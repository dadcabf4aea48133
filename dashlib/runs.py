"""Run folders: `runs/<preset>/<kind>-<hash of the config>/`.

A run folder holds `config.json`, `checkpoint.pt` (latest resumable state),
`log.jsonl`, and once finished `final.pt` (the artifact) and `results.json`.
A finished run is reused instead of retrained unless `force=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashlib.io import _jsonable, atomic_write_json, make_dir, read_json_object, runs_root


class RunStateError(RuntimeError):
    """A run folder is in a state the requested action cannot proceed from."""


def remove_stale_temps(run: Run) -> list[Path]:
    """Delete the temporary files atomic writes left in `run` when killed mid-save
    (`.checkpoint.pt.<random>.tmp`: as large as a checkpoint). Only one process writes
    a run folder, so any such file is stale once that process saves or resumes."""
    stale = sorted(run.path.glob(".*.tmp")) if run.path.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def config_hash(payload: Mapping[str, Any]) -> str:
    text = json.dumps(_jsonable(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Run:
    """Paths of one run folder."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def final(self) -> Path:
        return self.path / "final.pt"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def finished(self) -> bool:
        return self.final.is_file() and self.results.is_file()

    @property
    def why_not_a_folder(self) -> str | None:
        """Why this is no run folder to read (None: a folder): the message for a path that
        does not exist, or for a file inside a run folder given in its place."""
        if self.path.is_dir():
            return None
        if self.path.is_file():
            return (f"{self.path} is a file, not a run folder; pass the run folder that holds it "
                    f"({self.path.parent})")
        return (f"run folder {self.path} does not exist; pass a run's folder, as the training "
                f"command printed it (runs/<preset>/<kind>-<hash>)")

    def require_folder(self, error: type[Exception] = RunStateError) -> Run:
        """This run, or `error` with `why_not_a_folder` where the path is no run folder."""
        if self.why_not_a_folder:
            raise error(self.why_not_a_folder)
        return self

    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise RunStateError(f"{self.path} is not a dash run folder (no config.json)")
        return read_json_object(self.config)

    def read_results(self) -> dict[str, Any]:
        if not self.results.is_file():
            raise RunStateError(f"{self.path} has not finished (no results.json); "
                                f"run it to completion first (or --resume it)")
        return read_json_object(self.results)


@contextmanager
def training_lock(run: Run, owner: bool = True,
                  together: Callable[[Callable[[], None]], None] | None = None) -> Iterator[None]:
    """Hold `run`'s lock file (`.<folder>.lock` beside it) while this process prepares,
    trains and saves it: a second process that would train the same folder (another
    terminal's `dash distill` resuming the teacher this one trains) is refused instead of
    writing into it. A lock whose process has gone (killed) is taken over. `owner`: this
    process writes the folder (rank 0 under torchrun). `together` runs the taking on every
    process so that a refusal reaches them all (`distributed.on_main`; without it the other
    ranks waited a minute for rank 0, then failed with a traceback)."""
    lock = run.path.parent / f".{run.path.name}.lock"

    def take() -> None:
        if owner:
            make_dir(lock.parent, "the run folder, under $DASH_RUNS or ./runs")
            _take(lock, run)

    (together or _call)(take)
    try:
        yield
    finally:
        if owner:
            lock.unlink(missing_ok=True)


def _call(fn: Callable[[], None]) -> None:
    """`training_lock`'s default `together`: one process, so just run it."""
    fn()


def _take(lock: Path, run: Run) -> None:
    for _ in range(2):  # a stale lock is removed once, then taken
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise RunStateError(f"{run.path} is being trained by {holder} now; wait for it to "
                                    f"finish (a rerun then reuses the run) or stop it (if nothing "
                                    f"trains it, delete {lock})") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise RunStateError(f"cannot take the lock {lock} of {run.path}; delete it if nothing trains the run")


#: seconds within which an unreadable lock counts as one being written, not a stale one
LOCK_WRITE_GRACE_S = 10.0


def _holder(lock: Path) -> str | None:
    """Who holds `lock` ("process 123", "process 123 on host h"), or None if nobody does."""
    try:
        pid_text, host = lock.read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):  # empty or partial: its writer may be between open and write
        try:
            fresh = time.time() - lock.stat().st_mtime < LOCK_WRITE_GRACE_S
        except OSError:
            return None
        return "another process (its lock is being written)" if fresh else None
    if host != socket.gethostname() or os.name == "nt":  # liveness unknowable (on Windows
        return f"process {pid} on host {host}"            # os.kill would end the process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"process {pid}"


@contextmanager
def removed_if_unstarted(run: Run, owner: bool = True) -> Iterator[None]:
    """If the block fails (or is interrupted) while `run` holds nothing to resume (no
    checkpoint.pt, no final.pt: only config.json and a log), delete its folder, so a run
    that died before its first checkpoint leaves nothing half-made. `owner`: this process
    writes the folder (rank 0 under torchrun)."""
    try:
        yield
    except BaseException:
        if owner and _unstarted(run):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _unstarted(run: Run) -> bool:
    """The folder holds only what a fresh run writes before its first checkpoint."""
    if not run.path.is_dir():
        return False
    names = {p.name for p in run.path.iterdir() if not p.name.endswith(".tmp")}
    return names <= {run.config.name, run.log.name}


def map_data(payload: Any, fn: Callable[[Mapping[str, Any]], Any]) -> Any:
    """`payload` with `fn` applied to every nested "data" dict (a run's, its teacher's)."""
    if not isinstance(payload, Mapping):
        return payload
    return {key: fn(value) if key == "data" and isinstance(value, Mapping) else map_data(value, fn)
            for key, value in payload.items()}


def portable(payload: Any) -> Any:
    """`payload` with the location fields of any nested "data" dict left out (what a
    checkpoint's stored config is compared by on resume: the run folder, found by
    `identity`, already vouches for the data's content wherever it lives now)."""
    from dashlib.data import LOCATION_FIELDS

    return map_data(payload, lambda data: {k: v for k, v in data.items() if k not in LOCATION_FIELDS})


def identity(payload: Any) -> Any:
    """`payload` with any nested "data" dict replaced by its `dashlib.data.data_identity`
    (no location fields; an image folder's content fingerprint), so a run is found again
    when the dataset moves or is given as another path, and never shared by two folders."""
    from dashlib.data import data_identity

    return map_data(payload, data_identity)


def run_id(payload: Mapping[str, Any]) -> str:
    """The hash that names a run folder: `config_hash` of the payload's `identity`."""
    return config_hash(identity(payload))


def make_run(preset: str, kind: str, payload: Mapping[str, Any], root: Path | None = None) -> Run:
    """The run folder for this preset, kind and configuration (not yet created)."""
    return Run((root or runs_root()) / preset / f"{kind}-{run_id(payload)}")


def prepare(run: Run, payload: Mapping[str, Any], force: bool, resume: bool) -> str:
    """Get a run folder ready; returns "reuse", "resume" or "fresh".

    * finished and not `force`: "reuse" (nothing to train);
    * `force`: the folder is cleared and training starts over;
    * a checkpoint exists: "resume" with `resume=True`, else an error that
      says to pass --resume or --force;
    * otherwise "fresh".
    """
    if force and run.path.exists():
        shutil.rmtree(run.path)
    if run.finished:
        return "reuse"
    if run.checkpoint.exists():
        if not resume:
            raise RunStateError(
                f"{run.path} holds an unfinished run; pass --resume to continue it "
                f"or --force to start over")
        remove_stale_temps(run)
        return "resume"
    make_dir(run.path, "the run folder, under $DASH_RUNS or ./runs")
    atomic_write_json(run.config, payload)
    return "fresh"
