"""Terminal progress for `dash reproduce`: a tqdm line fed from the run folders.

A notebook executed by papermill shows its own progress bars only inside the
executed copy, so the terminal would show nothing for minutes. `RunWatcher`
polls the runs folder instead: every training run whose `log.jsonl` changed
since the notebook started counts (its step against the total steps in its
`config.json`), and so does every evaluation cell written (`eval/cells/`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

POLL_S = 1.0
TAIL_BYTES = 4096


@dataclass(frozen=True)
class RunProgress:
    """One training run's position: `step` of `total`."""

    name: str
    step: int
    total: int
    mtime: float


def last_step(log: Path) -> int:
    """The `step` of the last complete line of a JSON-lines log (0 if none)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue
    return 0


def total_steps(config: dict[str, Any]) -> int:
    """Training steps a run's config.json asks for (teacher: train.steps, student: distill.steps)."""
    for section in ("distill", "train"):
        steps = config.get(section, {}).get("steps") if isinstance(config.get(section), dict) else None
        if isinstance(steps, int):
            return steps
    return 0


def scan(root: Path, since: float) -> tuple[list[RunProgress], int]:
    """(training runs whose log changed since `since`, evaluation cells written since `since`)."""
    runs = []
    for log in root.glob("*/*/log.jsonl"):
        try:
            mtime = log.stat().st_mtime
            if mtime < since:
                continue
            config = json.loads((log.parent / "config.json").read_text())
        except (OSError, ValueError):
            continue
        total = total_steps(config)
        step = total if (log.parent / "final.pt").is_file() else last_step(log)
        runs.append(RunProgress(log.parent.name, min(step, total), total, mtime))
    cells = 0
    for cell in root.glob("*/*/eval/cells/*.json"):
        try:
            cells += cell.stat().st_mtime >= since
        except OSError:
            continue
    return sorted(runs, key=lambda r: r.mtime), cells


class RunWatcher:
    """A background thread drawing one tqdm line for a notebook: training steps summed over
    the runs it trains, the newest run named, and evaluation cells done."""

    def __init__(self, root: Path, label: str, enabled: bool = True) -> None:
        self.root, self.label, self.enabled = root, label, enabled
        self.since = time.time() - 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._bar: tqdm | None = None

    def __enter__(self) -> RunWatcher:
        if self.enabled:
            self._bar = tqdm(total=0, desc=self.label, unit="step", dynamic_ncols=True, leave=False)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.update()

    def update(self) -> None:
        runs, cells = scan(self.root, self.since)
        bar = self._bar
        if bar is None or (not runs and not cells):
            return
        done, total = sum(r.step for r in runs), sum(r.total for r in runs)
        active = [r for r in runs if r.step < r.total]
        parts = [f"{len(runs)} run(s)"] if runs else []
        if active:
            parts.append(f"{active[-1].name} {active[-1].step}/{active[-1].total}")
        if cells:
            parts.append(f"{cells} eval cell(s)")
        # evaluation alone has no known total: count its cells instead of steps
        bar.total, bar.n = (max(total, 1), done) if runs else (None, cells)
        bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.refresh()
