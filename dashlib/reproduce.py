"""Run every notebook in order, headless, with papermill.

Executed copies go under `runs/<preset>/notebooks[-quick]/`; figures and tables
under `figures/` (the digits preset), `figures/<preset>/` (any other) and a
`quick/` subfolder for --quick runs, so a quick run never overwrites the full
one. A failing cell stops the run with an error naming the notebook and cell.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dashlib.io import check_writable_dir
from dashlib.runs import runs_root

NOTEBOOKS = ("00_quickstart", "01_teacher", "02_distillation", "03_evaluation", "04_ablations",
             "05_guidance_gap", "06_explorer", "07_workshop")
DEFAULT_PRESET = "digits"


class ReproduceError(RuntimeError):
    """A notebook failed; the message names it and the cell."""


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (beside the dashlib package)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def figures_dir(preset: str, quick: bool, root: str | Path | None = None) -> Path:
    base = Path(root) if root else notebooks_dir().parent / "figures"
    if preset != DEFAULT_PRESET:
        base = base / preset
    return base / "quick" if quick else base


def run_notebook(source: Path, target: Path, parameters: Mapping[str, Any],
                 progress: bool = True) -> Path:
    """Execute one notebook with papermill; raise ReproduceError on a failing cell."""
    import papermill as pm

    target.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(source))
    # only what the notebook's parameters cell declares (the rest would only warn)
    parameters = {k: v for k, v in parameters.items() if k in declared}
    try:
        pm.execute_notebook(str(source), str(target), parameters=parameters,
                            cwd=str(source.parent), progress_bar=progress, kernel_name="python3",
                            log_output=False)
    except pm.PapermillExecutionError as err:
        raise ReproduceError(
            f"notebook {source.name} failed in cell {err.cell_index} (execution count "
            f"{err.exec_count}): {err.ename}: {err.evalue}. The executed copy with the full "
            f"traceback is {target}") from None
    return target


def reproduce(preset: str = DEFAULT_PRESET, quick: bool = False, only: Sequence[str] | None = None,
              figures: str | Path | None = None, device: str = "auto",
              progress: bool = True) -> list[Path]:
    """Run the notebooks in order (or `only` some of them); returns the executed copies."""
    if figures is not None:  # a file there would fail in the first notebook that saves a figure
        check_writable_dir(figures_dir(preset, quick, figures), "the figures folder (--figures)")
    names = list(only) if only else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ReproduceError(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    out_dir = runs_root().resolve() / preset / ("notebooks-quick" if quick else "notebooks")
    fig_dir = figures_dir(preset, quick, figures).resolve()
    params = {"preset": preset, "quick": quick, "figures_dir": str(fig_dir), "device": device,
              "runs_dir": str(runs_root().resolve())}
    done = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(names)}] {name}.ipynb ...", file=sys.stderr, flush=True)
        done.append(run_notebook(notebooks_dir() / f"{name}.ipynb", out_dir / f"{name}.ipynb",
                                 params, progress=progress))
        print(f"[{i}/{len(names)}] {name}.ipynb done in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    print(f"all {len(names)} notebooks done in {time.perf_counter() - start:.0f} s; figures in "
          f"{fig_dir}", file=sys.stderr)
    return done
