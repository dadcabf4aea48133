"""Running a distillation: run folder, trainer, calibration log, results JSON.

`distill(preset, method)` trains (or reuses) one student from the preset's
frozen teacher (EMA weights); `distill_many` runs several, in parallel worker
processes. Every method gets the same data, step budget and optimiser.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from dashlib.artifacts import Artifact, load_artifact, save_artifact
from dashlib.calibration import Calibrator, matched_inputs
from dashlib.config import ConfigError, DistillConfig, Preset, to_dict
from dashlib.data import load_dataset
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.distill.methods import METHODS, DistillObjective
from dashlib.distill.targets import compute_targets, fits, load_targets, targets_path
from dashlib.distributed import barrier, is_main, on_main, rank_world
from dashlib.io import atomic_write_json, file_digest
from dashlib.registry import Registry
from dashlib.runs import Run, make_run, prepare, removed_if_unstarted, run_id, training_lock
from dashlib.runtime import Runtime
from dashlib.teacher import teacher_payload, train_teacher
from dashlib.threads import use_threads
from dashlib.tirt import WEIGHTINGS, TimestepWeighting, drift_report, make_weighting, transfer
from dashlib.train import Trainer, check_global_batch
from dashlib.unet import count_params, param_count
from dashlib.workers import die_with_parent

CALIB_SEED = 1234  # the matched inputs are the same for every method and seed


def resolve_config(preset: Preset, method: str | None = None, seed: int | None = None,
                   steps: int | None = None) -> DistillConfig:
    """The preset's DistillConfig with the method, seed and steps applied and
    `tirt="auto"` replaced by the method's default."""
    cfg = preset.distill
    changes: dict[str, Any] = {k: v for k, v in
                               {"method": method, "seed": seed, "steps": steps}.items() if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    cls = METHODS.get(cfg.method)
    cls.check(cfg)
    if cfg.tirt == "auto":
        cfg = dataclasses.replace(cfg, tirt=cls.default_tirt)
    return cfg


def distill_payload(preset: Preset, config: DistillConfig) -> dict[str, Any]:
    """Everything that determines a distillation run (hashed into its folder name)."""
    cls = METHODS.get(config.method)
    payload = {"kind": "distill", "preset": preset.name, "method": config.method,
               "teacher": run_id(teacher_payload(preset)),
               "student": to_dict(cls.architecture(preset, config)), "distill": to_dict(config),
               "data": to_dict(preset.data), "diffusion": to_dict(preset.diffusion),
               "sample": to_dict(preset.sample) if cls.reads_sampling_guidance else None}
    if learns_table(config, preset.train.weighting):
        # the table the student learns has had its own optimizer group, without weight decay,
        # since 2026-12-06 (`Objective.param_groups`); a run (or checkpoint) from before that
        # is not this run, even at weight_decay 0, where only the group layout changed
        payload["table_weight_decay"] = 0.0
    return payload


def distill_run(preset: Preset, method: str | None = None, seed: int | None = None,
                steps: int | None = None) -> Run:
    """The run folder of a distillation (whether or not it has been trained)."""
    config = resolve_config(preset, method, seed, steps)
    return make_run(preset.name, f"distill-{config.method}", distill_payload(preset, config))


@dataclass(frozen=True)
class TirtMode:
    """What a `DistillConfig.tirt` value gives the student: the name of its timestep
    weighting (`dashlib.tirt.WEIGHTINGS`) from the teacher's (None: the teacher kept no
    table), and whether the student takes a frozen copy of the teacher's table
    (TIRT Transfer) rather than a new one."""

    student_weighting: Callable[[str | None], str]
    copies_teacher: bool = False


def teachers_or_uniform(teacher: str | None) -> str:
    """The teacher's weighting, or uniform where the teacher kept no table."""
    return teacher or "uniform"


def fixed(name: str) -> Callable[[str | None], str]:
    """The weighting `name` whatever the teacher's."""
    return lambda teacher: name


#: `DistillConfig.tirt` values ("auto" is resolved to the method's `default_tirt` first).
TIRT_MODES: Registry[TirtMode] = Registry("distill.tirt mode")
TIRT_MODES.add("transfer", TirtMode(teachers_or_uniform, copies_teacher=True))
TIRT_MODES.add("uniform", TirtMode(fixed("uniform")))
TIRT_MODES.add("relearn", TirtMode(teachers_or_uniform))  # the teacher's weighting, learned anew from zero
TIRT_MODES.add("min-snr", TirtMode(fixed("min-snr")))
TIRT_MODES.add("uncertainty", TirtMode(fixed("uncertainty")))


def tirt_mode(config: DistillConfig) -> TirtMode:
    """The config's `TIRT_MODES` entry ("auto": its method's `default_tirt`)."""
    name = METHODS.get(config.method).default_tirt if config.tirt == "auto" else config.tirt
    return TIRT_MODES.get(name)


def student_weighting(config: DistillConfig, teacher: str | None) -> str:
    """The `WEIGHTINGS` name of the student's weighting, given the teacher's (None: none kept)."""
    return tirt_mode(config).student_weighting(teacher)


def learns_table(config: DistillConfig, teacher: str | None) -> bool:
    """Whether the student learns a weighting table of its own (`relearn` of a learnable
    teacher weighting, `uncertainty`): known from the preset, before anything is built."""
    if tirt_mode(config).copies_teacher:
        return False
    return WEIGHTINGS.get(student_weighting(config, teacher)).learnable


def teacher_weighting(teacher: Artifact) -> str | None:
    """The name of the weighting a trained teacher kept (None: it kept no table)."""
    return None if teacher.weighting is None else str(teacher.config["train"]["weighting"])


def make_weighting_for(config: DistillConfig, teacher: Artifact,
                       diffusion: Diffusion) -> TimestepWeighting:
    """TIRT Transfer (frozen copy of the teacher's), uniform, relearned from zero, or a
    named weighting of the student's own (fixed Min-SNR-5; uncertainty, learned from zero):
    `TIRT_MODES`."""
    if tirt_mode(config).copies_teacher and teacher.weighting is not None:
        return transfer(teacher.weighting, diffusion)
    return make_weighting(student_weighting(config, teacher_weighting(teacher)), diffusion)


def calibration_hook(calibrator: Calibrator, objective: DistillObjective) -> Any:
    def hook(step: int) -> dict[str, float]:
        m = calibrator.score(objective.model)
        return {k: m[k] for k in ("rho", "cos", "gap_mse", "cond_mse", "uncond_mse")}

    return hook


def distill(preset: Preset, method: str | None = None, seed: int | None = None,
            steps: int | None = None, force: bool = False, resume: bool = True,
            device: str = "auto", progress: bool = True, runtime: Runtime | None = None,
            targets: bool = True) -> Run:
    """Train (or reuse) one student; returns its finished run folder. Under torchrun
    every rank trains its share of each batch and rank 0 writes (dashlib.distributed).
    An interrupted run (and an interrupted teacher) is resumed; `resume=False` refuses an
    interrupted student instead, as a one-run `dash distill` does without --resume.

    With `targets` (default) a method that reads the teacher at the batch's own
    labels uses the precomputed teacher outputs (`dashlib.distill.targets`)
    when they fit in memory; the numbers it sees are the same either way up to float
    rounding (the table is computed in fp32 on the computing process's threads, the on-line
    teacher under the run's autocast, bf16 where the precision rule picks it)."""
    config = resolve_config(preset, method, seed, steps)
    payload = distill_payload(preset, config)
    run = make_run(preset.name, f"distill-{config.method}", payload)
    # an unfinished teacher (an interrupted run) continues rather than stopping the distillation
    teacher_folder = train_teacher(preset, device=device, progress=progress, runtime=runtime)
    teacher_weights = file_digest(teacher_folder.final)
    if run.finished and not force:
        trained_from = run.read_results().get("teacher_weights") if run.results.is_file() else None
        if trained_from not in (None, teacher_weights) and is_main():
            print(f"dash: note: {run.path} was distilled from other teacher weights than "
                  f"{teacher_folder.final} holds now (the teacher was retrained); it is reused as it "
                  f"is: pass --force to distil it again", file=sys.stderr)
        return run
    dev = resolve_device(device)
    teacher = load_artifact(teacher_folder, expect=preset.teacher, device=dev)
    data = load_dataset(preset.data)
    check_global_batch(config.batch_size, data.train.x.shape[1:], dev, "distill.batch_size")
    with training_lock(run, owner=is_main(), together=on_main):  # one process trains a folder at a time
        state = on_main(lambda: prepare(run, payload, force=force, resume=resume))
        # interrupted while the objective is built (the teacher targets take seconds and more),
        # the folder holds only config.json and goes, as it does before the Trainer's first checkpoint
        with removed_if_unstarted(run, owner=is_main()):
            objective, calibrator = build_objective(preset, config, teacher, data, targets, progress)
        diffusion = teacher.diffusion
        trainer = Trainer(objective, data.train, diffusion, config, run, payload, dev,
                          hooks={config.calib_every: calibration_hook(calibrator, objective)},
                          progress=progress, desc=f"{config.method}[{preset.name}]", runtime=runtime)
        last = trainer.fit(resume=state == "resume")
        wall = trainer.elapsed  # a resumed run's too: its earlier segments to the checkpoint
        student_ema = trainer.ema.shadow
        if is_main():  # rank 0 writes; every rank returns once the files exist
            save_artifact(run, "student", payload, student_ema, objective.weighting,
                          student_weighting(config, teacher_weighting(teacher)),
                          extra={"method": config.method, "teacher_run": str(teacher_folder.path)})
            write_results(run, preset, config, objective, calibrator.score(student_ema), last, wall,
                          teacher_params=count_params(teacher.model), precision=trainer.precision,
                          teacher_weights=teacher_weights)
    barrier()
    return run


def build_objective(preset: Preset, config: DistillConfig, teacher: Artifact, data: Any, targets: bool,
                    progress: bool) -> tuple[DistillObjective, Calibrator]:
    """The method's objective around a new student (with the precomputed teacher targets
    where it reads them and they fit, `targets`), and the calibrator of its gap."""
    diffusion = teacher.diffusion
    cls = METHODS.get(config.method)
    student = cls.build_student(preset, config, teacher.model)
    objective = cls.from_config(student, teacher.model, make_weighting_for(config, teacher, diffusion),
                                diffusion, config, preset.sample)
    if is_main():
        for note in objective.notes():
            print(f"dash: note: {config.method}[{preset.name}]: {note}", file=sys.stderr)
    if targets and cls.uses_targets and fits(preset, config):
        path = on_main(lambda: ensure_targets(preset, config, teacher.model, data, diffusion, progress))
        objective.targets = load_targets(path)
    calibrator = Calibrator(teacher.model, diffusion,
                            matched_inputs(data.test, diffusion, config.calib_samples,
                                           torch.Generator().manual_seed(CALIB_SEED)))
    return objective, calibrator


def ensure_targets(preset: Preset, config: DistillConfig, teacher: torch.nn.Module, data: Any,
                   diffusion: Diffusion, progress: bool) -> Path:
    """The precomputed teacher outputs for this run's batches (computed if missing)."""
    path = targets_path(preset, config)
    if not path.is_file():
        compute_targets(preset, config, teacher, data.train, diffusion, progress)
    return path


def write_results(run: Run, preset: Preset, config: DistillConfig, objective: DistillObjective,
                  calibration: dict[str, Any], last: dict[str, Any], wall: float,
                  teacher_params: int, precision: str = "float32",
                  teacher_weights: str | None = None) -> None:
    nonzero = objective.params_counted == "nonzero"
    params = count_params(objective.model, nonzero=nonzero)
    terms = list(objective.coefficients())
    atomic_write_json(run.results, {
        "kind": "student", "method": config.method, "preset": preset.name, "seed": config.seed,
        "steps": config.steps, "params": params, "params_counted": "nonzero" if nonzero else "all",
        "teacher_params": teacher_params, "compression_ratio": teacher_params / params,
        "rho": calibration["rho"], "cos": calibration["cos"], "gap_mse": calibration["gap_mse"],
        "cond_mse": calibration["cond_mse"], "uncond_mse": calibration["uncond_mse"],
        "calibration": calibration,
        "final_losses": {k: last.get(k) for k in ["loss", *terms]},
        "tirt": config.tirt, "null_init": config.null_init, "null_rows": config.null_rows,
        "tirt_drift": (drift_report(objective.weighting)
                       if learns_table(config, preset.train.weighting) else None),
        "wall_time_s": wall, "precision": precision, "run": str(run.path),
        "teacher_weights": teacher_weights, **objective.report()})


# --- many runs ---------------------------------------------------------------------

def _worker_init(parent: int) -> None:
    use_threads(1)
    die_with_parent(parent)  # a killed parent takes its workers along


def _distill_job(args: tuple[Preset, str, int | None, int | None, bool, str],
                 runtime: Runtime | None = None) -> str:
    preset, method, seed, steps, force, device = args
    return str(distill(preset, method, seed, steps, force=force, device=device,
                       progress=False, runtime=runtime).path)


def run_jobs(jobs: Sequence[tuple[Preset, str, int | None, int | None]], force: bool = False,
             device: str = "auto", workers: int = 1, progress: bool = True,
             runtime: Runtime | None = None) -> list[Run]:
    """Distil each (preset, method, seed, steps), in order; with workers > 1 in
    single-threaded worker processes (on a small CPU, two 1-thread processes
    beat one 2-thread one), a lone job left to train too, so that its weights do
    not depend on which other runs were done already (the thread count changes a
    run's rounding). Interrupted runs are resumed; finished ones reused. Every run
    trains with the speed options `runtime` (None: the defaults)."""
    for _, m, _, _ in jobs:
        METHODS.get(m)  # fail fast on a typo, before any training
    runs = [distill_run(*j).path for j in jobs]
    twice = sorted({str(r) for r in runs if runs.count(r) > 1})
    if twice:  # two processes would train one folder at once
        raise ConfigError(f"the same run is requested twice ({', '.join(twice)}): a method or seed "
                          f"is repeated; list each once")
    if workers > 1 and rank_world()[1] > 1:
        raise ConfigError("--workers > 1 starts its own processes; under torchrun the runs "
                          "already share the processes, so use --workers 1")
    for p in {j[0].name: j[0] for j in jobs}.values():
        train_teacher(p, device=device, progress=progress)
    todo = [(p, m, s, st, force, device) for p, m, s, st in jobs]
    pending = [j for j in todo if force or not distill_run(*j[:4]).finished]
    if workers > 1 and pending:
        run_pool(pending, workers, device, progress, runtime)
        todo = [(p, m, s, st, False, d) for p, m, s, st, _, d in todo]
    return [distill(p, m, s, st, force=f, device=d, progress=progress, runtime=runtime)
            for p, m, s, st, f, d in todo]


def _targets_job(args: tuple[Preset, DistillConfig, str]) -> None:
    preset, config, device = args
    precompute_targets([(preset, config)], device, progress=False)


def missing_targets(jobs: Sequence[tuple[Any, ...]]) -> dict[Path, list[tuple[Any, ...]]]:
    """The teacher-target tables that the (preset, method, seed, steps, ...) jobs would
    read and that are not on disk yet: {path: the jobs that read it}."""
    missing: dict[Path, list[tuple[Any, ...]]] = {}
    for job in jobs:
        preset, config = job[0], resolve_config(*job[:4])
        path = targets_path(preset, config)
        if METHODS.get(config.method).uses_targets and fits(preset, config) and not path.is_file():
            missing.setdefault(path, []).append(job)
    return missing


def run_pool(jobs: Sequence[tuple[Any, ...]], workers: int, device: str, progress: bool,
             runtime: Runtime | None = None) -> None:
    """Train the (preset, method, seed, steps, force, device) jobs in `workers` spawned
    single-threaded processes, costliest first (`longest_first`).

    The teacher targets the jobs share are computed once, as a job of the pool, while
    the jobs that read none train beside them (of the paper's methods: pruning, FitNets, scratch);
    the jobs that read them are queued once they are on disk. When every job reads
    them, they are computed here first, on all of this process's threads. A failed job
    cancels the jobs not started and raises its error."""
    from dashlib import bars

    missing = missing_targets(jobs)
    waiting = [job for readers in missing.values() for job in readers]
    if missing and len(waiting) == len(jobs):
        precompute_targets([(job[0], resolve_config(*job[:4])) for job in waiting], device, progress)
        missing, waiting = {}, []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(os.getpid(),)) as pool, \
            bars.bar(total=len(jobs), desc="distill", disable=not progress) as bar:
        tables = {pool.submit(_targets_job, (r[0][0], resolve_config(*r[0][:4]), device))
                  for r in missing.values()}
        running = tables | {pool.submit(_distill_job, j, runtime) for j in longest_first(
            [j for j in jobs if j not in waiting])}
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    bar.update(future not in tables)
                if tables and all(t.done() for t in tables):
                    tables = set()
                    running |= {pool.submit(_distill_job, j, runtime) for j in longest_first(waiting)}
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def job_cost(job: tuple[Any, ...]) -> float:
    """Relative cost of a (preset, method, seed, steps, ...) distillation job: steps x batch
    x (the method's `student_rows` x the student's parameters + its `teacher_rows` x the
    teacher's parameters / 3, a no-grad forward being about a third of a forward and
    backward). The teacher's rows count only where it runs on line, not where the
    precomputed targets stand in (`fits`); the magnitude-pruned student is teacher-sized."""
    preset, method, seed, steps = job[:4]
    config = resolve_config(preset, method, seed, steps)
    cls = METHODS.get(config.method)
    online = 0 if cls.uses_targets and fits(preset, config) else cls.teacher_rows
    per_sample = (cls.student_rows * param_count(cls.architecture(preset, config))
                  + online * param_count(preset.teacher) / 3)
    return config.steps * config.batch_size * per_sample


def longest_first(jobs: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The jobs, costliest first (`job_cost`; ties keep their order), so that parallel
    workers finish together instead of one waiting on a long job started last."""
    return sorted(jobs, key=job_cost, reverse=True)


def precompute_targets(jobs: Sequence[tuple[Preset, DistillConfig]], device: str,
                       progress: bool) -> None:
    """Compute, once each, the teacher targets the parallel jobs will share."""
    needed = {}
    for preset, config in jobs:
        if METHODS.get(config.method).uses_targets and fits(preset, config):
            needed.setdefault(targets_path(preset, config), (preset, config))
    for path, (preset, config) in needed.items():
        if path.is_file():  # checked first: loading the teacher is the costly part
            continue
        teacher = load_artifact(train_teacher(preset, device=device, progress=progress),
                                expect=preset.teacher, device=resolve_device(device))
        ensure_targets(preset, config, teacher.model, load_dataset(preset.data), teacher.diffusion,
                       progress)


def distill_many(preset: Preset, methods: Sequence[str], seeds: Sequence[int | None] = (None,),
                 steps: int | None = None, force: bool = False, device: str = "auto",
                 workers: int = 1, progress: bool = True,
                 runtime: Runtime | None = None) -> dict[tuple[str, int | None], Run]:
    """Distil every (method, seed) of one preset, with the speed options `runtime`;
    returns {(method, seed): run}."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers = {workers!r} is invalid: at least 1 worker process is needed")
    keys = [(m, s) for m in methods for s in seeds]
    runs = run_jobs([(preset, m, s, steps) for m, s in keys], force, device, workers, progress, runtime)
    return dict(zip(keys, runs))
