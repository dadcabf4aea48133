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
        check_fits(name, folder, students[name], teacher)
    return teacher, students


def check_fits(name: str, folder: str | Path, student: Artifact, teacher: Artifact) -> None:
    """A student run given by folder must read the teacher's images, classes and timesteps
    (a run of other data failed inside a convolution)."""
    s, t = student.model.config, teacher.model.config
    wrong = [f"{key} {getattr(s, key)} (the teacher's: {getattr(t, key)})"
             for key in ("in_channels", "image_size", "num_classes") if getattr(s, key) != getattr(t, key)]
    if student.diffusion.T != teacher.diffusion.T:
        wrong.append(f"T {student.diffusion.T} (the teacher's: {teacher.diffusion.T})")
    if wrong:
        raise ParameterError(f"student {name!r} ({folder}) was trained for other data: {', '.join(wrong)}; "
                             f"give a run distilled from this preset's teacher")


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
        from dashlib.data import class_names

        names = class_names(p.data)
        raise ParameterError(f"label (y) = {y} is not a class of this data: choose 0 ({names[0]!r}) ... "
                             f"{k - 1} ({names[-1]!r})")
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
                 t_fraction=t_fraction, **options)  # t_fraction's range too
    p = get_preset(preset) if isinstance(preset, str) else preset
    check_options(p, options)
    teacher, students = load_models(p, methods, student_runs, device, progress)
    t = round(t_fraction * (p.diffusion.T - 1))
    options.setdefault("notice", small_model_notice(p))
    return BranchExplorer(teacher, students, load_dataset(p.data), p.sample,
                          title=f"[{p.name}]", t=t, **options)
