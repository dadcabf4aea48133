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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashlib.io import _jsonable, atomic_write_json, read_json


class RunStateError(RuntimeError):
    """A run folder is in a state the requested action cannot proceed from."""


def runs_root() -> Path:
    """`$DASH_RUNS` if set, else `runs/` in the working directory."""
    return Path(os.environ.get("DASH_RUNS", "runs"))


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

    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise RunStateError(f"{self.path} is not a dash run folder (no config.json)")
        return dict(read_json(self.config))

    def read_results(self) -> dict[str, Any]:
        if not self.results.is_file():
            raise RunStateError(f"{self.path} has not finished (no results.json); "
                                f"run it to completion first (or --resume it)")
        return dict(read_json(self.results))


#: DataConfig fields that say where the data is, not what it is: never part of a run's identity.
LOCATION_FIELDS = ("data_root", "download")


def identity(payload: Any) -> Any:
    """`payload` without the data's location fields (in any nested "data" dict), so
    a run is found again when the dataset moves or is given as another path."""
    if not isinstance(payload, Mapping):
        return payload
    out = {}
    for key, value in payload.items():
        if key == "data" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in LOCATION_FIELDS}
        out[key] = identity(value)
    return out


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
        return "resume"
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.config, payload)
    return "fresh"
