"""The paper's claims as curves: students over distillation budgets x seeds x resolutions.

A *sweep* is a list of `SweepPart`s (one per resolution: a preset, its budgets,
seeds and variants). One *cell* is one student: a `Variant` (a distillation
method plus DistillConfig changes, e.g. DASH with Min-SNR weights instead of
TIRT Transfer) trained for `budget` steps with distillation seed `seed` from
the part's one teacher, then evaluated once (TAG, the preset's samples and
DDIM steps, the first evaluation seed; `sweep_eval`).

`run_sweep` trains and evaluates stage by stage (one budget x seed of one part
at a time, smallest budgets first) and rewrites the results JSON after every
stage, so a partial sweep is already useful and an interrupted one continues
where it stopped: run folders are content-addressed (finished students are
reused, interrupted ones resumed) and evaluation cells are cached.

`verdicts` turns the cells into per-budget verdicts: a comparison *holds* at a
budget only where the difference of the seed means exceeds the seed spread
(the sum of both sides' sample standard deviations, ddof = 1), is *refuted*
where the opposite difference does, and is *within spread* otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashlib.adequacy import report_accuracy
from dashlib.config import ConfigError, EvalConfig, Preset, override
from dashlib.distill.methods import check_variant
from dashlib.io import absolute, atomic_write_json, read_json
from dashlib.presets import get_preset
from dashlib.registry import Registry

# --- what is trained ----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A distillation method with DistillConfig changes (`{"tirt": "min-snr"}`)."""

    method: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        check_variant(f"claims variant of {self.method!r} with {dict(self.changes)}", self.method,
                      self.changes)

    def preset(self, base: Preset, budget: int, seed: int) -> Preset:
        """The part's preset with this variant's distillation settings, budget and seed."""
        changes = {f"distill.{k}": v for k, v in self.changes.items()}
        return override(base, **changes, **{"distill.steps": budget, "distill.seed": seed})


VARIANTS: Registry[Variant] = Registry("claims variant")
VARIANTS.add("scratch", Variant("scratch", description="the student trained on data alone"))
VARIANTS.add("cond-only", Variant("cond-only", description="conditional output only"))
VARIANTS.add("gap-match", Variant("gap-match", description="conditional output + the gap"))
VARIANTS.add("dash", Variant("dash", description="DASH (TIRT Transfer, the paper's)"))
VARIANTS.add("dash-no-tirt", Variant("dash", {"tirt": "min-snr"},
                                     "DASH without TIRT: the fixed Min-SNR-5 weights"))
VARIANTS.add("dash-relearned-tirt", Variant("dash", {"tirt": "relearn"},
                                            "DASH with lambda_t relearned by the student"))
VARIANTS.add("dash-principled", Variant("dash", {"tirt": "uncertainty"},
                                        "DASH with the principled (EDM2 uncertainty) weighting"))
VARIANTS.add("dash-uniform", Variant("dash", {"tirt": "uniform"},
                                     "DASH with w_t = 1 (diagnostic: no timestep weighting)"))

#: The variants of the issue's digits sweep.
CLAIM_VARIANTS = ("scratch", "cond-only", "gap-match", "dash", "dash-no-tirt",
                  "dash-relearned-tirt", "dash-principled")
#: The small-budget diagnosis (docs/choices.md): DASH with w_t = 1, at every digits budget.
DIAGNOSTIC_VARIANTS = ("dash-uniform",)


@dataclass(frozen=True)
class SweepPart:
    """One resolution of the sweep: a preset (with dotted overrides) and its grid."""

    preset: str
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("budgets", "seeds"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"sweep {name} = {values!r} is invalid: a non-empty tuple of ints")
        if min(self.budgets) < 1:
            raise ConfigError(f"sweep budgets = {self.budgets!r} is invalid: steps must be >= 1")
        for v in self.variants:
            VARIANTS.get(v)
        if not self.variants:
            raise ConfigError("a sweep part needs at least one variant")

    def base(self) -> Preset:
        return get_preset(self.preset, **dict(self.overrides))

    def stages(self) -> list[tuple[int, int]]:
        """(budget, seed) in the order they are run: smallest budgets first."""
        return [(b, s) for b in sorted(self.budgets) for s in self.seeds]


def rule_budgets(steps: int) -> tuple[int, ...]:
    """0.2x, 0.5x, 1x and 2x a distillation budget (each at least 1 step)."""
    return tuple(sorted({max(1, round(steps * f)) for f in (0.2, 0.5, 1.0, 2.0)}))


def _rule_part(preset: str, quick: bool) -> SweepPart:
    """Any other preset: `rule_budgets` of its distillation steps, seeds 0-2."""
    budgets = rule_budgets(get_preset(preset).distill.steps)
    return SweepPart(preset, budgets[:2] if quick else budgets, (0, 1) if quick else (0, 1, 2),
                     CLAIM_VARIANTS)


#: Keys the sweep sets per cell (`Variant.preset`): a --set of one would make variants alike
#: (`distill.tirt=min-snr` turns "dash" into "dash-no-tirt") or be overwritten.
SWEPT_KEYS = ("distill.method", "distill.seed", "distill.tirt")


def sweep_plan(preset: str, quick: bool = False,
               overrides: Mapping[str, Any] | None = None) -> list[SweepPart]:
    """The issue's grid: digits (7 variants, plus the `dash-uniform` diagnostic, x budgets
    200-2000 x seeds 0-2) and digits16
    (cond-only, DASH, DASH without TIRT at 500 and 2000); `tiny` the same shape in seconds.
    `quick` keeps the two smallest budgets and two seeds (a smoke test, not the claims);
    `overrides` (dotted preset keys, as `--set`) apply to every part. A `distill.steps`
    override sets every part's budgets to `rule_budgets` of it; a `data.image_size` one
    keeps the first part only (the others are the plan's other resolutions)."""
    overrides = dict(overrides or {})
    budget_keys = sorted(k for k in overrides if "." not in k)
    if budget_keys:
        raise ConfigError(f"{', '.join(budget_keys)}: the reproduction's budget keys do not reach the claims "
                          f"sweep, whose students are its own variants ({', '.join(CLAIM_VARIANTS)}); leave "
                          f"them out for 08_claims (bench/claims_sweep.py's --variants chooses variants)")
    swept = sorted(k for k in overrides if k in SWEPT_KEYS)
    if swept:
        raise ConfigError(f"{', '.join(swept)}: the claims sweep sets these itself for each variant, "
                          f"seed and budget; leave them out (`--set distill.steps=N` scales the "
                          f"budgets; bench/claims_sweep.py's --budgets, --seeds and --variants choose "
                          f"a grid of your own)")
    parts = _plan(preset, quick)
    if "data.image_size" in overrides:
        parts = parts[:1]
    if "distill.steps" in overrides:
        steps = overrides.pop("distill.steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"distill.steps = {steps!r} is invalid: the sweep's middle budget, an int >= 1")
        budgets = rule_budgets(steps)
        parts = [dataclasses.replace(p, budgets=budgets[:2] if quick else budgets) for p in parts]
    if overrides:
        parts = [dataclasses.replace(p, overrides={**p.overrides, **overrides}) for p in parts]
    return parts


def check_plan(preset: str, quick: bool = False, overrides: Mapping[str, Any] | None = None) -> None:
    """Plan the sweep and build every part's preset, so that a key it refuses, or a preset key
    a part cannot take, fails before anything runs (`dash reproduce --only 08_claims`)."""
    for part in sweep_plan(preset, quick, overrides):
        part.base()


#: The sweeps planned by hand, per preset (the committed digits one, and the tests' tiny
#: one); every other preset's follows `_rule_part`.
PLANS: dict[str, tuple[SweepPart, ...]] = {
    "digits": (SweepPart("digits", (200, 500, 1000, 2000), (0, 1, 2), CLAIM_VARIANTS + DIAGNOSTIC_VARIANTS),
               SweepPart("digits16", (500, 2000), (0, 1, 2), ("cond-only", "dash", "dash-no-tirt"))),
    "tiny": (SweepPart("tiny", (2, 4), (0, 1), CLAIM_VARIANTS),),
}


def _plan(preset: str, quick: bool) -> list[SweepPart]:
    if preset not in PLANS:
        return [_rule_part(preset, quick)]
    parts = list(PLANS[preset])
    if quick:
        parts = [dataclasses.replace(p, budgets=tuple(sorted(p.budgets))[:2], seeds=p.seeds[:2])
                 for p in parts]
    return parts


def state_path(preset: str, quick: bool, overrides: Mapping[str, Any] | None = None) -> Path:
    """Where a notebook keeps its sweep's resumable state:
    runs/<label>/claims_sweep[-quick].json, the label of `dashlib.labels.output_label`."""
    from dashlib.labels import output_label
    from dashlib.runs import runs_root

    name = f"claims_sweep{'-quick' if quick else ''}.json"
    return runs_root() / output_label(preset, overrides or {}) / name


def sweep_eval(p: Preset) -> EvalConfig:
    """The sweep's evaluation: TAG only, the first evaluation seed, the preset's samples
    and DDIM steps (digits: 500 samples x 20 steps)."""
    return dataclasses.replace(p.eval, guidance=("tag",), seeds=p.eval.seeds[:1])


# --- running -----------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cell_key(preset: str, variant: str, budget: int, seed: int) -> str:
    return f"{preset}/{variant}/{budget}/{seed}"


def _student_record(run: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    res = run.read_results()
    cal = res.get("calibration", {})
    return {"run": str(absolute(run.path)), "fid": row.get("fid"), "accuracy": row.get("accuracy"),
            "rho": res["rho"], "cos": res["cos"], "gap_mse": res["gap_mse"],
            "cond_mse": res["cond_mse"], "uncond_mse": res["uncond_mse"],
            "teacher_gap_abs": cal.get("teacher_gap_abs"),
            "per_bin": cal.get("per_bin"), "final_losses": res.get("final_losses"),
            "tirt": res.get("tirt"), "tirt_drift": res.get("tirt_drift"),
            "wall_time_s": res.get("wall_time_s"),
            "classifier_test_accuracy": row.get("classifier_test_accuracy")}


def run_stage(part: SweepPart, budget: int, seed: int, workers: int, device: str,
              progress: bool) -> dict[str, dict[str, Any]]:
    """Train (or reuse) and evaluate every variant of one (budget, seed); {cell key: record}."""
    from dashlib.distill.run import run_jobs
    from dashlib.evaluate import evaluate_runs

    base = part.base()
    jobs = [(VARIANTS.get(v).preset(base, budget, seed), VARIANTS.get(v).method, None, None)
            for v in part.variants]
    runs = run_jobs(jobs, device=device, workers=workers, progress=progress)
    report = evaluate_runs(runs, sweep_eval(base), workers=workers, device=device, progress=progress,
                           sample=base.sample)
    by_run = {r["run"]: r for r in report.summary}  # absolute folders (`run_spec`)
    clf = report_accuracy(report)
    out = {}
    for v, run in zip(part.variants, runs):
        s = by_run[str(absolute(run.path))]
        row = {"fid": s.get("fid_mean"), "accuracy": s.get("accuracy_mean"),
               "classifier_test_accuracy": clf}
        out[cell_key(part.preset, v, budget, seed)] = {
            "preset": part.preset, "variant": v, "method": VARIANTS.get(v).method,
            "changes": dict(VARIANTS.get(v).changes), "budget": budget, "seed": seed,
            **_student_record(run, row)}
    return out


def teacher_record(part: SweepPart, workers: int, device: str, progress: bool) -> dict[str, Any]:
    """The part's teacher at the sweep's evaluation (the reference line of F8)."""
    from dashlib.evaluate import evaluate_runs
    from dashlib.teacher import train_teacher

    base = part.base()
    run = train_teacher(base, device=device, progress=progress)
    report = evaluate_runs([run], sweep_eval(base), workers=workers, device=device, progress=progress,
                           sample=base.sample)
    s = report.summary[0]
    return {"preset": part.preset, "run": str(absolute(run.path)), "fid": s.get("fid_mean"),
            "accuracy": s.get("accuracy_mean"), "steps": base.train.steps,
            "wall_time_s": run.read_results().get("wall_time_s"),
            "classifier_test_accuracy": report_accuracy(report)}


def planned_cells(parts: Sequence[SweepPart]) -> list[str]:
    return [cell_key(p.preset, v, b, s) for p in parts for b, s in p.stages() for v in p.variants]


def run_sweep(parts: Sequence[SweepPart], out: str | Path, workers: int = 1, device: str = "auto",
              progress: bool = True, max_stages: int | None = None,
              on_stage: Callable[[dict[str, Any]], None] | None = None,
              drop_stale: bool = True, known: Sequence[SweepPart] = ()) -> dict[str, Any]:
    """Run the sweep stage by stage, rewriting `out` (JSON) after each; returns its content.

    Cells already in `out` that are of the run their variant's configuration names now
    (`_current`) are not re-run or re-evaluated; CPU and wall time accumulate over the
    sessions that did work (an interrupted one is saved with the time it spent). Stale
    records (another dataset, changed images, a run hashed anew) are dropped with a note,
    or, with `drop_stale=False`, refused (`StaleSweepError`) before anything runs. `known`
    adds parts whose records are judged the same way but not run (the rest of a plan of which
    `parts` is a slice). `max_stages` stops after that many stages that did work (tests).
    """
    from dashlib.report import git_commit

    out = Path(out)
    state = _load(out, [*known, *parts], drop_stale)
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": 0.0, "cpu_s": 0.0,
               "workers": workers, "device": device}
    t0, c0 = time.perf_counter(), cpu_seconds()
    done_stages = 0
    begun = False  # whether this session has started any work: only then is it a session

    def save() -> None:
        if begun:
            if session not in state["sessions"]:
                state["sessions"].append(session)
            session.update(wall_s=time.perf_counter() - t0, cpu_s=cpu_seconds() - c0)
            state["git_commit"] = git_commit()  # the commit that measured the newest cells
        refresh(state, parts)
        if on_stage is not None:  # may add keys (the bench's environment) before the write
            on_stage(state)
        atomic_write_json(out, state)

    try:
        for part in parts:
            if part.preset not in state["teachers"]:
                begun = True
                state["teachers"][part.preset] = teacher_record(part, workers, device, progress)
                save()
            for budget, seed in part.stages():
                keys = [cell_key(part.preset, v, budget, seed) for v in part.variants]
                if all(k in state["cells"] for k in keys):
                    continue
                if max_stages is not None and done_stages >= max_stages:
                    refresh(state, parts)  # what is missing, for the caller's reports
                    return state
                begun = True
                state["cells"].update(run_stage(part, budget, seed, workers, device, progress))
                done_stages += 1
                save()
    except BaseException:
        if begun:  # interrupted: keep the time this session spent since its last stage
            save()
        raise
    save()
    return state


class StaleSweepError(ConfigError):
    """A sweep's state holds records its configuration no longer names (`run_sweep(drop_stale=False)`)."""


def _load(out: Path, parts: Sequence[SweepPart], drop_stale: bool = True) -> dict[str, Any]:
    """The state in `out`, less what the plan's configuration no longer names (`_current`):
    a teacher or cell of another dataset (an image folder of the same name: the same state
    file), of images since added, or of a run since hashed anew. Where nothing of an old
    state is left, its sessions go too: their time was spent on another sweep. Dropped
    records are named in a note on stderr, or refused where `drop_stale` is False."""
    state: dict[str, Any] = {"benchmark": "claims_sweep", "sessions": [], "teachers": {}, "cells": {}}
    if not out.is_file():
        return state
    old = read_json(out)
    bases = {p.preset: p.base() for p in parts}  # a part given twice has one base
    teachers, cells = old.get("teachers", {}), old.get("cells", {})
    state["teachers"] = {k: t for k, t in teachers.items() if _current(t, bases, None)}
    state["cells"] = {k: c for k, c in cells.items() if _current(c, bases, c)}
    stale = [(k, r["run"]) for records, kept in ((teachers, state["teachers"]), (cells, state["cells"]))
             for k, r in records.items() if k not in kept]
    if stale:
        what = (f"{out}: {len(stale)} of its {len(teachers) + len(cells)} teachers and cells are not of "
                f"the runs this configuration names now (another dataset or image folder of the same "
                f"name, images since changed, or runs hashed anew; first: {stale[0][0]} in "
                f"{stale[0][1]})")
        if not drop_stale:
            raise StaleSweepError(f"{what}; they would be dropped with their time. Pass --out FILE for a "
                                  f"sweep of its own, or --drop-stale to drop them")
        print(f"note: {what}; they are dropped, and measured again where this plan has them",
              file=sys.stderr)
    kept = state["teachers"] or state["cells"]
    if kept or not (cells or teachers):
        state["sessions"] = list(old.get("sessions", []))
        if old.get("git_commit"):
            state["git_commit"] = old["git_commit"]
    return state


def _current(record: Mapping[str, Any], bases: Mapping[str, Preset], cell: Mapping[str, Any] | None) -> bool:
    """Whether a teacher record (`cell` None) or a cell is of the run its preset's configuration
    (`bases`) names now: its folder has that run's name (kind and configuration hash), wherever
    the runs folder is now and whether or not it is still there (the record holds the numbers);
    a record of a preset outside the plan only needs its folder."""
    from dashlib.distill.run import distill_run
    from dashlib.teacher import teacher_run

    folder = Path(record["run"])
    base = bases.get(record.get("preset", ""))
    if base is None:
        return folder.exists()
    if cell is None:
        current = teacher_run(base).path
    else:
        if cell.get("variant") not in VARIANTS.names():
            return False
        variant = VARIANTS.get(cell["variant"])
        current = distill_run(variant.preset(base, cell["budget"], cell["seed"]), variant.method).path
    return folder.name == current.name


def refresh(state: dict[str, Any], parts: Sequence[SweepPart]) -> None:
    """Totals, the plan and what of it is missing, and the per-budget verdicts (in place)."""
    from dashlib.report import git_commit

    planned = planned_cells(parts)
    state["plan"] = [{**dataclasses.asdict(p), "overrides": dict(p.overrides),
                      "eval": {"guidance": list(sweep_eval(p.base()).guidance),
                               "seeds": list(sweep_eval(p.base()).seeds),
                               "n_samples": p.base().eval.n_samples,
                               "ddim_steps": p.base().eval.ddim_steps}} for p in parts]
    state["missing"] = [k for k in planned if k not in state["cells"]]
    state["complete"] = not state["missing"]
    state["total_cpu_s"] = sum(s["cpu_s"] for s in state["sessions"])
    state["total_wall_s"] = sum(s["wall_s"] for s in state["sessions"])
    state.setdefault("git_commit", git_commit())  # run_sweep sets it where it measured cells
    state["summary"] = summarize(state["cells"].values())
    state["verdicts"] = verdicts(state["summary"], {p.preset: set(p.variants) for p in parts})


# --- summaries and verdicts -------------------------------------------------------------

METRICS = ("fid", "accuracy", "rho", "cos", "cond_mse", "uncond_mse")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(cells: Any) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (preset, variant, budget)."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["preset"], c["variant"], c["budget"]), []).append(c)
    out = []
    for (preset, variant, budget), group in sorted(groups.items()):
        entry: dict[str, Any] = {"preset": preset, "variant": variant, "budget": budget,
                                 "seeds": sorted(c["seed"] for c in group)}
        for m in METRICS:
            values = [float(c[m]) for c in group if c.get(m) is not None and math.isfinite(c[m])]
            entry[f"{m}_mean"], entry[f"{m}_std"] = _mean_std(values)
        out.append(entry)
    return out


@dataclass(frozen=True)
class Comparison:
    """`a` beats `b` on `metric` (lower is better unless `higher_better`; "gap_error"
    is |log rho|, the distance of the gap ratio from 1)."""

    name: str
    claim: str
    a: str
    b: str
    metric: str
    higher_better: bool = False


COMPARISONS = (
    Comparison("C2: DASH beats scratch (FID)", "C2", "dash", "scratch", "fid"),
    Comparison("C2: DASH beats scratch (accuracy)", "C2", "dash", "scratch", "accuracy", True),
    Comparison("C3: DASH keeps the gap better than cond-only (abs log rho)", "C3", "dash", "cond-only",
               "gap_error"),
    Comparison("DASH beats cond-only (FID)", "C3", "dash", "cond-only", "fid"),
    Comparison("DASH beats gap-match (FID)", "C3", "dash", "gap-match", "fid"),
    Comparison("C5: TIRT Transfer beats Min-SNR weights (FID)", "C5", "dash", "dash-no-tirt", "fid"),
    Comparison("C5: TIRT Transfer beats relearned TIRT (FID)", "C5", "dash", "dash-relearned-tirt",
               "fid"),
    Comparison("principled weighting beats TIRT Transfer (FID)", "C5", "dash-principled", "dash", "fid"),
    Comparison("diagnostic: DASH with w_t = 1 beats TIRT Transfer (FID)", "C5", "dash-uniform", "dash",
               "fid"),
)


def _metric(entry: Mapping[str, Any], metric: str) -> tuple[float | None, float | None]:
    """(mean, std) of a summary entry's metric; gap_error = |log rho| from the seeds' rho."""
    if metric == "gap_error":
        rho, std = entry.get("rho_mean"), entry.get("rho_std")
        if rho is None or rho <= 0:
            return None, None
        # delta method: std of |log rho| ~ std(rho) / rho
        return abs(math.log(rho)), (None if std is None else std / rho)
    return entry.get(f"{metric}_mean"), entry.get(f"{metric}_std")


def verdict(a: tuple[float | None, float | None], b: tuple[float | None, float | None],
            higher_better: bool) -> dict[str, Any]:
    """"holds" / "refuted" / "within spread" / "no spread (one seed)" / "missing".

    The margin is a's advantage over b (positive: a is better); the spread is
    the sum of both sides' seed standard deviations."""
    (ma, sa), (mb, sb) = a, b
    if ma is None or mb is None:
        return {"verdict": "missing", "margin": None, "spread": None}
    margin = (ma - mb) if higher_better else (mb - ma)
    if sa is None or sb is None:
        return {"verdict": "no spread (one seed)", "margin": margin, "spread": None}
    spread = sa + sb
    word = "holds" if margin > spread else "refuted" if -margin > spread else "within spread"
    return {"verdict": word, "margin": margin, "spread": spread}


def verdicts(summary: Sequence[Mapping[str, Any]],
             planned: Mapping[str, set[str]] | None = None) -> list[dict[str, Any]]:
    """Every comparison at every (preset, budget) where either side was run; with
    `planned` (preset -> the variants its plan runs), only comparisons whose two
    sides are both in that preset's plan (the others would read "missing" forever)."""
    index = {(e["preset"], e["variant"], e["budget"]): e for e in summary}
    keys = sorted({(e["preset"], e["budget"]) for e in summary})
    out = []
    for preset, budget in keys:
        for c in COMPARISONS:
            ea, eb = index.get((preset, c.a, budget)), index.get((preset, c.b, budget))
            if ea is None and eb is None:
                continue
            if planned is not None and not {c.a, c.b} <= planned.get(preset, set()):
                continue
            v = verdict(_metric(ea or {}, c.metric), _metric(eb or {}, c.metric), c.higher_better)
            out.append({"preset": preset, "budget": budget, "comparison": c.name, "claim": c.claim,
                        "a": c.a, "b": c.b, "metric": c.metric, **v,
                        "seeds": sorted(set((ea or {}).get("seeds", [])) & set((eb or {}).get("seeds", [])))})
    return out
