"""Budgets and stages of the reproduction, called by the notebooks.

A `Budget` holds every knob of one reproduction (steps, seeds, sample counts,
sweeps, workers) for a preset, full or `quick`; the stages train or reuse the
runs the notebooks need. Run folders are content-addressed, so a later
notebook calling the same stage reuses what an earlier one trained.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashlib.artifacts import Artifact, load_artifact
from dashlib.config import Preset, override
from dashlib.distill import METHODS, distill_many
from dashlib.presets import get_preset
from dashlib.report import Provenance
from dashlib.runs import Run
from dashlib.teacher import train_teacher


@dataclass(frozen=True)
class Budget:
    """Everything a reproduction spends, for one preset.

    `guidance` is the F3 sweep; `table_guidance` the setting of T1/F1/F6
    (the release's TAG by default); `widths` the DASH student widths of the
    F7 compression sweep; `ddim_sweep` the F7 step counts.
    """

    preset: Preset
    quick: bool
    methods: tuple[str, ...]
    eval_seeds: tuple[int, ...]
    guidance: tuple[str, ...]
    table_guidance: str
    eval_n: int
    eval_steps: int
    ddim_sweep: tuple[int, ...]
    widths: tuple[int, ...]
    workers: int
    device: str

    def provenance(self, notebook: str) -> Provenance:
        return Provenance(self.preset.name, self.eval_seeds,
                          {"teacher": self.preset.train.steps, "distill": self.preset.distill.steps,
                           "ddim": self.eval_steps},
                          quick=self.quick, notebook=notebook,
                          extra={"eval_samples": self.eval_n})


# Per preset: (full, quick) overrides of the defaults below.
_BUDGETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": ({"widths": (2, 4), "ddim_sweep": (2, 5)},
             {"widths": (2, 4), "ddim_sweep": (2, 5), "eval_seeds": (42,)}),
    "digits": ({"widths": (8, 12, 24), "ddim_sweep": (10, 20, 50, 100)},
               {"widths": (8, 24), "ddim_sweep": (10, 50), "eval_seeds": (42,),
                "preset": {"train.steps": 1200, "distill.steps": 300}}),
    "digits16": ({"widths": (8, 24), "ddim_sweep": (10, 20, 50)},
                 {"widths": (8,), "ddim_sweep": (10, 50), "eval_seeds": (42,),
                  "preset": {"train.steps": 1200, "distill.steps": 300}}),
}


def budget(preset: str | Preset, quick: bool = False, workers: int = 2, device: str = "auto",
           runs_dir: str | None = None, **changes: Any) -> Budget:
    """The budget of a reproduction; `runs_dir` (if given) becomes $DASH_RUNS."""
    if runs_dir is not None:
        os.environ["DASH_RUNS"] = str(Path(runs_dir).resolve())
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    full, fast = _BUDGETS.get(p.name, ({"widths": (32, 96), "ddim_sweep": (10, 20, 50, 100)},
                                       {"widths": (32,), "ddim_sweep": (10, 50),
                                        "eval_seeds": (42,)}))
    knobs = {**(fast if quick else full), **changes}
    preset_changes = knobs.pop("preset", {})
    p = override(p, **preset_changes) if preset_changes else p
    ev = p.eval
    return Budget(
        preset=p, quick=quick, methods=tuple(knobs.pop("methods", METHODS.names())),
        eval_seeds=tuple(knobs.pop("eval_seeds", ev.seeds)),
        guidance=tuple(knobs.pop("guidance", ev.sweep_guidance if hasattr(ev, "sweep_guidance")
                                 else ev.guidance)),
        table_guidance=knobs.pop("table_guidance", p.sample.guidance if p.sample.guidance == "tag"
                                 else f"{p.sample.w:g}"),
        eval_n=int(knobs.pop("eval_n", ev.n_samples)), eval_steps=int(knobs.pop("eval_steps", ev.ddim_steps)),
        ddim_sweep=tuple(knobs.pop("ddim_sweep")), widths=tuple(knobs.pop("widths")),
        workers=workers, device=device, **knobs)


def teacher(b: Budget, progress: bool = True) -> Artifact:
    """Train (or reuse) the teacher and load it."""
    return load_artifact(train_teacher(b.preset, device=b.device, progress=progress),
                         expect=b.preset.teacher)


def students(b: Budget, progress: bool = True) -> dict[str, Run]:
    """Every method's student (training what is missing, `workers` at a time)."""
    runs = distill_many(b.preset, b.methods, steps=None, device=b.device, workers=b.workers,
                        progress=progress)
    return {method: run for (method, _), run in runs.items()}


def width_preset(b: Budget, ch: int) -> Preset:
    """The preset with a student of width `ch` (same family: 1 res block, the
    teacher's multipliers; GroupNorm groups reduced to divide the width)."""
    import math

    groups = math.gcd(ch, b.preset.student.norm_groups)
    student = dataclasses.replace(b.preset.student, ch=ch, norm_groups=groups)
    return dataclasses.replace(b.preset, student=student)


def describe(b: Budget) -> dict[str, Any]:
    """The preset's sizes and this budget's knobs, for a notebook's first look."""
    from dashlib.unet import UNet, count_params

    t, s = count_params(UNet(b.preset.teacher)), count_params(UNet(b.preset.student))
    return {"preset": b.preset.name, "dataset": b.preset.data.name,
            "image_size": b.preset.data.image_size, "num_classes": b.preset.teacher.num_classes,
            "teacher_params": t, "student_params": s, "compression_ratio": round(t / s, 2),
            "teacher_steps": b.preset.train.steps, "distill_steps": b.preset.distill.steps,
            "methods": list(b.methods), "eval_seeds": list(b.eval_seeds), "eval_samples": b.eval_n,
            "eval_ddim_steps": b.eval_steps, "quick": b.quick, "workers": b.workers}


def data_grid(b: Budget, per_class: int = 8) -> Any:
    """A PIL image of real training images, one row per class."""
    import torch
    from PIL import Image

    from dashlib.data import load_dataset
    from dashlib.images import grid_image

    data = load_dataset(b.preset.data).train
    k = b.preset.teacher.num_classes
    idx = torch.cat([(data.y == c).nonzero().flatten()[:per_class] for c in range(k)])
    grid = grid_image(data.x[idx], data.y[idx], k, scale=4)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def load_models(b: Budget, runs: dict[str, Run]) -> dict[str, Artifact]:
    """{"teacher": ..., method: student, ...} loaded on the CPU."""
    return {"teacher": teacher(b, progress=False),
            **{m: load_artifact(r) for m, r in runs.items()}}
