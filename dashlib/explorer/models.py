"""Obtain the explorer's models: the preset's teacher and distilled students."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dashlib.artifacts import Artifact, load_artifact
from dashlib.config import MAX_SEED, Preset
from dashlib.data import load_dataset
from dashlib.explorer.widget import BranchExplorer
from dashlib.params import ParameterError, check_params
from dashlib.presets import get_preset
from dashlib.runs import runs_root
from dashlib.teacher import train_teacher


def default_runs_dir(path: str | Path | None) -> Path:
    """Use `path` as the runs root unless $DASH_RUNS is already set; returns the root in use.

    Notebooks run in notebooks/, so they pass "../runs" to share the project's runs.
    """
    if path is not None:
        os.environ.setdefault("DASH_RUNS", str(path))
    return runs_root()


def load_models(preset: Preset, methods: Sequence[str] = (),
                student_runs: Mapping[str, str | Path] | None = None, device: str = "cpu",
                progress: bool = False) -> tuple[Artifact, dict[str, Artifact]]:
    """(teacher, {name: student}): train or reuse the teacher and each method's student.

    `methods` go through `dashlib.distill.distill` (train or reuse);
    `student_runs` maps a display name to an existing run folder with final.pt.
    """
    teacher = load_artifact(train_teacher(preset, device=device, progress=progress), device=device)
    students: dict[str, Artifact] = {}
    if methods:
        from dashlib.distill import distill

        for method in methods:
            run = distill(preset, method, device=device, progress=progress)
            students[method] = load_artifact(run, device=device)
    for name, folder in (student_runs or {}).items():
        students[name] = load_artifact(folder, device=device)
    return teacher, students


# Below these budgets the explorer's models show little of the paper's effect.
MEANINGFUL_TEACHER_STEPS = 500
MEANINGFUL_DISTILL_STEPS = 150


def small_model_notice(preset: Preset) -> str:
    """A warning when the preset's models are too small or too briefly trained for the
    explorer's picture to mean much (e.g. `tiny`, a smoke test); "" otherwise."""
    if preset.train.steps >= MEANINGFUL_TEACHER_STEPS and preset.distill.steps >= MEANINGFUL_DISTILL_STEPS:
        return ""
    return (f"preset {preset.name!r}: the teacher trained {preset.train.steps} steps and the students "
            f"{preset.distill.steps}; models this small or this briefly trained are a smoke test, "
            f"and every student may look collapsed (DASH included). Use the 'digits' preset "
            f"(or larger) to see the effect the notebook describes.")


def check_options(p: Preset, options: Mapping[str, Any]) -> None:
    """The explorer's first state must be one its controls can show (checked before loading)."""
    k, y = p.teacher.num_classes, options.get("y", 0)
    if not 0 <= y < k:
        raise ParameterError(f"label (y) = {y} is not a class of preset {p.name!r}: choose 0 ... {k - 1}")
    if options.get("guidance", "tag") not in ("tag", "constant"):
        raise ParameterError(f"guidance = {options['guidance']!r} is invalid: choose \"tag\" or \"constant\"")
    if options.get("n_stats", 16) < 1:
        raise ParameterError(f"n_stats = {options['n_stats']} is invalid: at least 1 held-out image")
    if not 0 <= options.get("seed", 0) <= MAX_SEED:
        raise ParameterError(f"seed = {options['seed']} is invalid: seeds lie in [0, {MAX_SEED}]")


def open_explorer(preset: str | Preset, methods: Sequence[str] = (),
                  student_runs: Mapping[str, str | Path] | None = None, device: str = "cpu",
                  progress: bool = True, t_fraction: float = 0.5,
                  **options: Any) -> BranchExplorer:
    """A `BranchExplorer` for a preset's teacher and students, first shown at timestep
    round(t_fraction (T - 1)); `options` go to the explorer. Models trained on first use
    show a progress bar (`progress`); small presets get a warning banner."""
    check_params(preset=preset, methods=methods, student_runs=student_runs, device=device,
                 t_fraction=t_fraction, **options)
    if not 0.0 <= t_fraction <= 1.0:
        raise ParameterError(f"t_fraction = {t_fraction} must lie in [0, 1]")
    p = get_preset(preset) if isinstance(preset, str) else preset
    check_options(p, options)
    teacher, students = load_models(p, methods, student_runs, device, progress)
    t = round(t_fraction * (p.diffusion.T - 1))
    options.setdefault("notice", small_model_notice(p))
    return BranchExplorer(teacher, students, load_dataset(p.data), p.sample,
                          title=f"[{p.name}]", t=t, **options)
