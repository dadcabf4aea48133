"""Budgets and stages of the reproduction, called by the notebooks.

A `Budget` holds every knob of one reproduction (steps, seeds, sample counts,
sweeps, workers) for a preset, full or `quick`; the stages train or reuse the
runs the notebooks need. Run folders are content-addressed, so a later
notebook calling the same stage reuses what an earlier one trained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashlib.artifacts import Artifact, load_artifact
from dashlib.config import ConfigError, Preset, override
from dashlib.distill import METHODS, distill_many
from dashlib.guidance import Guidance
from dashlib.io import absolute
from dashlib.params import check_params
from dashlib.presets import check, fit_to_data, get_preset, sized_for_data
from dashlib.report import Provenance
from dashlib.runs import Run
from dashlib.teacher import train_teacher

if TYPE_CHECKING:
    from dashlib.evaluate import EvalReport


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Budget:
    """Everything a reproduction spends, for one preset.

    Steps, seeds, sample counts and sweep grids live in `preset` (its
    `train`, `distill` and `eval` configs, with the quick overrides applied);
    `widths` are the student widths of the F7 compression sweep; `workers`
    the parallel single-threaded CPU processes for independent runs;
    `efficiency_*` the sampling run of Table 4 (the paper's 50 steps x 64);
    `grid_per_class` the samples per class in the sample grids (F1).
    Every field but `preset` and `quick` can be set like a preset key,
    e.g. `--set efficiency_batch=8`.
    """

    preset: Preset
    quick: bool
    methods: tuple[str, ...]
    widths: tuple[int, ...]
    workers: int
    device: str
    efficiency_steps: int = 50
    efficiency_batch: int = 64
    efficiency_repeats: int = 3
    grid_per_class: int = 6

    def __post_init__(self) -> None:
        minimum = {"efficiency_steps": 1, "efficiency_batch": 1, "efficiency_repeats": 0,
                   "grid_per_class": 1}
        for name, least in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"budget {name} = {value!r} is invalid: must be a whole number >= {least}")
        unknown = set(self.methods) - set(METHODS.names())
        if unknown:
            raise ConfigError(f"budget methods {sorted(unknown)} are unknown; choose from {METHODS.names()}")
        if "dash" not in self.methods:  # T4, F7, the explorer and the ablations measure its student
            raise ConfigError(f"budget methods {list(self.methods)} leave out dash, which the notebooks "
                              f"compare every other method with; add it")
        if not self.widths or not all(_whole(w) and w >= 1 for w in self.widths):
            raise ConfigError(f"budget widths = {self.widths!r} is invalid: positive whole numbers")
        if "fid" not in self.preset.eval.metrics:  # checked here: the notebooks fail only at the end
            raise ConfigError(f"eval.metrics = {list(self.preset.eval.metrics)} leaves out fid, which the "
                              f"notebooks' tables and figures (T1, T2, F3, F6, F7) compare; keep fid in "
                              f"(dash evaluate scores any subset)")
        from dashlib.evaluate import check_max_reference

        check_max_reference(self.preset.eval, self.preset.teacher.num_classes)
        T = self.preset.diffusion.T
        if self.efficiency_steps > T:
            raise ConfigError(f"budget efficiency_steps = {self.efficiency_steps} is more than the {T} "
                              f"diffusion timesteps (T4 samples with that many DDIM steps); "
                              f"--set efficiency_steps=N with N <= {T}")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.preset.eval.seeds

    @property
    def guidance(self) -> Guidance:
        """The guidance of T1, F1 and F6: the preset's sampler (TAG by default)."""
        return Guidance.from_config(self.preset.sample)

    @property
    def table_guidance(self) -> str:
        """`guidance` as its results label ("tag", "3"), the key of its evaluation rows."""
        return self.guidance.label

    @property
    def sweep_guidance(self) -> tuple[str, ...]:
        """The guidance sweep (F3) plus the tables' setting where the sweep lacks it (T1
        reads it from the same evaluation)."""
        return tuple(dict.fromkeys((*self.preset.eval.sweep_guidance, self.table_guidance)))

    @property
    def sweep_steps(self) -> tuple[int, ...]:
        """The DDIM step sweep (F7) plus the tables' step count where the sweep lacks it
        (F7's compression panel draws the teacher at that count)."""
        return tuple(sorted({*self.preset.eval.sweep_steps, self.preset.eval.ddim_steps}))

    def explored_methods(self, methods: str | Sequence[str] | None = None) -> tuple[str, ...]:
        """The explorer's students: `methods` as given (one name or several), or by default
        the budget's methods that are `explored` (cond-only and DASH; `--set methods=...`
        leaving cond-only out leaves it out here too)."""
        if methods is not None:
            return (methods,) if isinstance(methods, str) else tuple(methods)
        return tuple(m for m in self.methods if METHODS.get(m).explored)

    def provenance(self, notebook: str) -> Provenance:
        """What a figure of this budget was made from; for an image folder also the content
        fingerprint of the images read (`data_files`), which the figures index checks
        against the folder's latest (`dashlib.report`)."""
        from dashlib.config import to_dict
        from dashlib.data import data_identity

        p = self.preset
        files = data_identity(to_dict(p.data)).get("files")
        return Provenance(p.name, p.eval.seeds,
                          {"teacher": p.train.steps, "distill": p.distill.steps,
                           "ddim": p.eval.ddim_steps},
                          quick=self.quick, notebook=notebook,
                          extra={"eval_samples": p.eval.n_samples,
                                 **({"data_files": files} if files else {})})


#: --quick: fractions of the preset's own budget (never below `QUICK_MIN_STEPS` steps).
QUICK_TEACHER_FRACTION = 0.3
QUICK_DISTILL_FRACTION = 0.2
QUICK_SAMPLES_FRACTION = 0.5
QUICK_MIN_STEPS = 10


def compression_widths(p: Preset) -> tuple[int, ...]:
    """The F7 compression sweep: DASH students of half and three quarters the student's width."""
    ch = p.student.ch
    return tuple(sorted({max(1, ch // 2), max(1, 3 * ch // 4)}))


def quick_changes(p: Preset) -> dict[str, Any]:
    """The --quick budget of any preset, by rule: a fraction of its training steps and
    samples, its first evaluation seed, the first and middle entries of its step sweep
    (digits: 10 and 50 of 10-100), its table guidance settings as the guidance sweep,
    and one compression width."""
    def steps(n: int, fraction: float) -> int:
        return max(min(n, QUICK_MIN_STEPS), round(n * fraction))

    e = p.eval
    sweep = sorted(e.sweep_steps)
    return {"train.steps": steps(p.train.steps, QUICK_TEACHER_FRACTION),
            "distill.steps": steps(p.distill.steps, QUICK_DISTILL_FRACTION),
            "eval.n_samples": max(p.teacher.num_classes, round(e.n_samples * QUICK_SAMPLES_FRACTION)),
            "eval.seeds": e.seeds[:1],
            "eval.sweep_steps": tuple(dict.fromkeys((sweep[0], sweep[len(sweep) // 2]))),
            "eval.sweep_guidance": tuple(g for g in e.sweep_guidance if g in e.guidance) or e.guidance,
            "widths": compression_widths(p)[:1]}


REPOSITORY = Path(__file__).resolve().parent.parent


def resolve_data_root(overrides: dict[str, Any], base: Path) -> dict[str, Any]:
    """A relative data root is taken against `base` (the repository, for notebooks run by hand:
    `dash reproduce` passes it absolute, resolved against the caller's directory)."""
    root = overrides.get("data.data_root")
    if isinstance(root, str) and not Path(root).expanduser().is_absolute():
        return {**overrides, "data.data_root": str(absolute(base / Path(root)))}
    return overrides


def notebook_overrides(preset: str | Preset, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A notebook's `overrides` with its data root absolute: a relative one, and the preset's
    own (relative) default for a dataset read from files, taken against the repository, as
    the notebooks' `runs_dir = "../runs"` is (run by hand, a notebook's working directory is
    notebooks/). `dash reproduce` passes the root absolute already: unchanged then. An image
    folder missing there is refused with the base named."""
    from dashlib.data import DATASETS, DataNotFoundError

    given = dict(overrides or {})
    data = (preset if isinstance(preset, Preset) else get_preset(preset)).data
    name = given.get("data.name", data.name)
    source = DATASETS.get(name) if isinstance(name, str) and name in DATASETS else None
    root = given.get("data.data_root", data.data_root if source is not None and source.reads_files else None)
    if root is None:
        return resolve_data_root(given, REPOSITORY)
    out = resolve_data_root({**given, "data.data_root": root}, REPOSITORY)
    if source is not None and source.user_folder and out["data.data_root"] != str(root) \
            and not Path(out["data.data_root"]).exists():  # say which base a relative root was taken against
        raise DataNotFoundError(f"data.data_root {root!r} does not exist as {out['data.data_root']}: a "
                                f"notebook takes a relative data root against the repository ({REPOSITORY}), "
                                f"not its working directory; give the folder's absolute path")
    return out


def budget(preset: str | Preset, quick: bool = False, workers: int = 2, device: str = "auto",
           runs_dir: str | None = None, overrides: dict[str, Any] | None = None,
           threads: int | None = None, progress: bool | None = None, **changes: Any) -> Budget:
    """The budget of a reproduction; `runs_dir` (if given) becomes $DASH_RUNS.

    `overrides` are dotted preset keys, as `--set` ({"data.name": "imagefolder",
    "data.data_root": DIR, "train.steps": 500}); they apply on top of the quick
    rule. `threads` sets this process's CPU threads (`dashlib.threads`; default:
    the available cores, capped by OMP_NUM_THREADS); `workers` are separate
    single-threaded processes for independent runs. `progress` shows (True) or hides
    (False) this process's progress bars from now on (`dashlib.bars`; a headless `dash
    reproduce --no-progress` passes False); None, the default, leaves them as they are.
    `changes` override the budget itself: `methods`, `widths`, or dotted keys as `overrides`.
    """
    from dashlib.bars import show_bars
    from dashlib.threads import use_threads

    check_params(preset=preset, quick=quick, workers=workers, device=device, runs_dir=runs_dir,
                 overrides=overrides, threads=threads, progress=progress)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"budget workers = {workers!r} is invalid: must be an int >= 1 "
                          f"(parallel CPU processes; 1 disables parallelism)")
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"overrides = {overrides!r} is invalid: must be a dict of dotted preset keys, "
                          f"e.g. {{'train.steps': 500}}")
    use_threads(threads)
    if progress is not None:
        show_bars(progress)
    if runs_dir is not None:
        os.environ["DASH_RUNS"] = str(Path(runs_dir).resolve())
    overrides = notebook_overrides(preset, overrides)
    name = preset.name if isinstance(preset, Preset) else preset
    preset_keys = {k: v for k, v in overrides.items() if "." in k}
    base = preset if isinstance(preset, Preset) else get_preset(name, **preset_keys)
    knobs = {"widths": compression_widths(base), **(quick_changes(base) if quick else {}),
             **overrides, **changes}
    dotted = {k: knobs.pop(k) for k in list(knobs) if "." in k}
    fields = {f.name for f in dataclasses.fields(Budget)} - {"preset", "quick", "workers", "device"}
    unknown = set(knobs) - fields
    if unknown:
        raise ConfigError(f"unknown budget setting(s) {sorted(unknown)}: preset keys are dotted "
                          f"(e.g. train.steps); budget keys are {sorted(fields)}")
    p = check(fit_to_data(override(base, **sized_for_data(base, dotted))) if dotted else base)
    from dashlib.evaluate import check_n_samples, check_reference_size

    check_reference_size(p.data)  # else the evaluation stops only after every model trained
    check_n_samples(p.eval.n_samples, p.teacher.num_classes)
    return Budget(preset=p, quick=quick, methods=_as_tuple("methods", knobs.pop("methods", METHODS.names())),
                  widths=_as_tuple("widths", knobs.pop("widths")), workers=workers, device=device, **knobs)


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    """A budget list as given (`--set methods=["dash"]`), or one bare value (`widths=8`,
    `methods=dash`) as a list of one; never empty."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not items:
        raise ConfigError(f"budget {name} = {value!r} is invalid: give at least one")
    return items


def teacher(b: Budget, progress: bool = True) -> Artifact:
    """Train (or reuse) the teacher and load it."""
    # train_teacher resumes by default: an interrupted reproduction continues its teacher bit for bit
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
    from dashlib.unet import param_count

    t, s = param_count(b.preset.teacher), param_count(b.preset.student)
    return {"preset": b.preset.name, "dataset": b.preset.data.name,
            "image_size": b.preset.data.image_size, "num_classes": b.preset.teacher.num_classes,
            "teacher_params": t, "student_params": s, "compression_ratio": round(t / s, 2),
            "teacher_steps": b.preset.train.steps, "distill_steps": b.preset.distill.steps,
            "methods": list(b.methods), "eval_seeds": list(b.seeds),
            "eval_samples": b.preset.eval.n_samples, "eval_ddim_steps": b.preset.eval.ddim_steps,
            "quick": b.quick, "workers": b.workers}


def data_grid(b: Budget, per_class: int = 8) -> Any:
    """A PIL image of real training images, one row per class (`images.shown_classes`)."""
    import torch
    from PIL import Image

    from dashlib.data import load_dataset
    from dashlib.images import grid_image, shown_classes

    data = load_dataset(b.preset.data).train
    shown = shown_classes(b.preset.teacher.num_classes)
    idx = [(data.y == c).nonzero().flatten()[:per_class] for c in shown.tolist()]
    rows = torch.cat([torch.full((len(i),), r) for r, i in enumerate(idx)])
    grid = grid_image(data.x[torch.cat(idx)], rows, len(shown), scale=4)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def load_models(b: Budget, runs: dict[str, Run]) -> dict[str, Artifact]:
    """{"teacher": ..., method: student, ...} loaded on the CPU."""
    return {"teacher": teacher(b, progress=False),
            **{m: load_artifact(r) for m, r in runs.items()}}


def evaluate(b: Budget, runs: dict[str, Run], guidance: tuple[str, ...] | None = None,
             steps: tuple[int, ...] | None = None, progress: bool = True) -> Any:
    """Evaluate named runs (teacher and/or students) at `guidance` x `steps` x the
    budget's seeds; returns the `EvalReport` (cells are cached in the run folders)."""
    from dashlib.evaluate import evaluate_runs

    config = b.preset.eval if guidance is None else dataclasses.replace(b.preset.eval,
                                                                        guidance=tuple(guidance))
    # the budget's sampler (with its --set sample.* changes): a run stores none but a single-head
    # student's, which it was trained with from this same preset
    report = evaluate_runs(list(runs.values()), config, steps=steps, workers=b.workers,
                           device=b.device, progress=progress, sample=b.preset.sample)
    return named(report, runs)


def named(report: EvalReport, runs: dict[str, Run]) -> EvalReport:
    """The report with each row and summary entry once per name of its run, "method" set to
    that name: two names may share one folder (a variant that a --set makes equal to another,
    `--set distill.an=0`), which is evaluated once and reported under both."""
    from dashlib.evaluate import EvalReport
    from dashlib.io import absolute

    def per_name(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the report names each run by its absolute folder (`run_spec`), whatever `runs` say
        return [{**e, "method": name} for name, run in runs.items() for e in entries
                if e["run"] == str(absolute(run.path))]

    return EvalReport(per_name(report.rows), per_name(report.summary), report.meta)


def ablation_runs(b: Budget, progress: bool = True) -> dict[str, Run]:
    """Every ablation variant's run (PATH and leave-one-out), training what is missing."""
    return _distill_jobs(b, _ablation_jobs(b), progress)


def width_runs(b: Budget, progress: bool = True) -> dict[str, Run]:
    """DASH students of the budget's widths (plus the preset's own), for F7."""
    return _distill_jobs(b, _width_jobs(b), progress)


def ablation_and_width_runs(b: Budget, progress: bool = True) -> tuple[dict[str, Run], dict[str, Run]]:
    """(`ablation_runs`, `width_runs`) trained in one pool: the workers share one queue,
    where the five DASH variants alone would leave a worker idle for the last one and
    the two widths would start a second pool after it. The same runs either way."""
    ablation, widths = _ablation_jobs(b), _width_jobs(b)
    runs = _distill_jobs(b, ablation + widths, progress)
    return {n: runs[n] for n, _, _ in ablation}, {n: runs[n] for n, _, _ in widths}


def _ablation_jobs(b: Budget) -> list[tuple[str, Preset, str]]:
    from dashlib.ablation import VARIANTS

    return [(name, v.preset(b.preset), v.method) for name, v in VARIANTS.items()]


def _width_jobs(b: Budget) -> list[tuple[str, Preset, str]]:
    return [(f"ch{w}", width_preset(b, w), "dash") for w in sorted({*b.widths, b.preset.student.ch})]


def _distill_jobs(b: Budget, jobs: list[tuple[str, Preset, str]], progress: bool) -> dict[str, Run]:
    """Distil (name, preset, method) jobs, `workers` at a time, each distinct run once
    (the preset's own width is the ablation's full DASH); {name: run}."""
    from dashlib.distill.run import distill_run, run_jobs

    folders = {name: distill_run(p, m, None, None).path for name, p, m in jobs}
    distinct: dict[Path, tuple[Preset, str, None, None]] = {}
    for name, p, m in jobs:
        distinct.setdefault(folders[name], (p, m, None, None))
    runs = dict(zip(distinct, run_jobs(list(distinct.values()), device=b.device, workers=b.workers,
                                       progress=progress)))
    return {name: runs[folder] for name, folder in folders.items()}
