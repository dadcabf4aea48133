"""`dash distill`: train students with any registered method."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dashlib.cliargs import (
    RESUME_ADVICE,
    add_force_resume,
    add_preset,
    add_runtime,
    command,
    count_arg,
    preset_from_args,
    runtime_from_args,
    seed_arg,
    workers_arg,
)

if TYPE_CHECKING:
    from dashlib.config import Preset


def _args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    p.add_argument("--method",
                   help="a method (scratch, cond-only, composite, multi-w-composite, fitnets, "
                        "gap-match, pruning, single-head, dash) or 'all' (default: the preset's "
                        "distill.method, dash unless --set changes it)")
    p.add_argument("--seed", type=seed_arg, nargs="+", help="seed(s) (default: the preset's)")
    p.add_argument("--steps", type=count_arg, help="distillation steps (default: the preset's)")
    p.add_argument("--workers", type=workers_arg, default=1,
                   help="parallel single-threaded worker processes for several runs (default 1)")
    add_force_resume(p, "continue an interrupted run exactly (several runs, from --method all, "
                        "several --seed or --workers, always continue interrupted ones)")
    add_runtime(p)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the calibration metrics of finished runs."""
    cols = ("method", "seed", "params", "rho", "cos", "gap_mse", "cond_mse", "uncond_mse")
    lines = ["  ".join(f"{c:>12s}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            text = f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)
            cells.append(f"{text:>12s}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


@command("distill", "distil the teacher into a student with one method (or all)", _args,
         distributed=True, interrupted=RESUME_ADVICE,
         out_of_memory="lower --set distill.batch_size or the model size (--set student.ch)")
def cmd_distill(args: argparse.Namespace) -> int:
    from dashlib.distill import METHODS, distill, distill_many

    preset = preset_from_args(args)
    method = args.method or preset.distill.method
    methods = METHODS.names() if method == "all" else [method]
    seeds = args.seed or [None]
    progress, runtime = not args.no_progress, runtime_from_args(args)
    note_untrained_teacher(preset)
    if len(methods) * len(seeds) == 1 and args.workers <= 1:
        runs = [distill(preset, methods[0], seeds[0], args.steps, force=args.force,
                        resume=args.resume, device=args.device, progress=progress, runtime=runtime)]
    else:
        runs = list(distill_many(preset, methods, seeds, args.steps, force=args.force,
                                 device=args.device, workers=args.workers,
                                 progress=progress, runtime=runtime).values())
    print(format_table([r.read_results() for r in runs]), file=sys.stderr)
    for run in runs:
        print(run.results)
    return 0


def note_untrained_teacher(preset: Preset) -> None:
    """Say so when distilling will train the preset's teacher first: a teacher trained with
    `dash train-teacher --steps N` (or --seed) is another run, reused only with the same
    `--set train.steps=N` (`train.seed`), and on digits the preset's own takes minutes."""
    from dashlib.distributed import is_main
    from dashlib.teacher import teacher_run

    run = teacher_run(preset)
    if run.finished or not is_main():
        return
    state = "continuing the interrupted" if run.checkpoint.exists() else "training the"
    print(f"dash: note: no finished teacher for these settings ({run.path}); {state} teacher first "
          f"({preset.train.steps} steps, seed {preset.train.seed}). A teacher trained with "
          f"train-teacher --steps N or --seed S is reused with --set train.steps=N or train.seed=S",
          file=sys.stderr)
