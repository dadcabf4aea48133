"""Explorer redraw latency: seconds per control change of `BranchExplorer` on a CPU.

Loads the preset's finished teacher and students (never trains: it refuses
unfinished runs, so pointing $DASH_RUNS at shared runs stays read-only), then
times redraws after moving the timestep to unseen values (cache misses: one
forward pass of n_stats x 2 rows per model), revisiting timesteps (cache
hits), changing guidance (no forward pass), changing the class, and the
"Run DDIM" button. Target: <= 1 s per slider change on digits.
Writes bench/results/explorer_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import write

from dashlib import pipeline
from dashlib.artifacts import load_artifact
from dashlib.data import load_dataset
from dashlib.distill import distill_run
from dashlib.explorer import BranchExplorer
from dashlib.presets import get_preset
from dashlib.teacher import teacher_run


def finished(run):  # noqa: ANN001, ANN201
    if not run.final.is_file():
        raise SystemExit(f"{run.path} is not trained; train it first (this benchmark never trains)")
    return load_artifact(run)


def times_ms(ex: BranchExplorer, changes: list[dict]) -> list[float]:
    out = []
    for change in changes:
        ex.set(**change)
        out.append(1000 * ex.timings[-1])
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "max_ms": max(ms), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--quick", action="store_true",
                        help="the quick reproduction's models (same architectures, shorter training)")
    parser.add_argument("--methods", nargs="*", default=["cond-only", "dash"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = pipeline.budget(args.preset, quick=True).preset if args.quick else get_preset(args.preset)
    teacher = finished(teacher_run(preset))
    students = {m: finished(distill_run(preset, m)) for m in args.methods}
    start = time.perf_counter()
    ex = BranchExplorer(teacher, students, load_dataset(preset.data), preset.sample, debounce_s=0.0)
    first_ms = 1000 * (time.perf_counter() - start)
    T = preset.diffusion.T
    new_t = [{"t": int(t)} for t in torch.linspace(T - 1, 0, 12).long()]
    results = {
        "preset": args.preset, "quick": args.quick, "methods": args.methods, "n_stats": ex.n_stats,
        "first_draw_ms": first_ms,
        "slider_new_t": summary(times_ms(ex, new_t)),
        "slider_revisit_t": summary(times_ms(ex, new_t[::-1])),
        "guidance_change": summary(times_ms(ex, [{"guidance": "constant"}, {"w": 1.0}, {"w": 0.0},
                                                 {"w": 6.0}, {"guidance": "tag"}])),
        "class_change": summary(times_ms(ex, [{"y": k} for k in range(1, 6)])),
    }
    start = time.perf_counter()
    ex.run_ddim()
    results["run_ddim_s"] = time.perf_counter() - start
    results["ddim_steps"] = preset.sample.steps
    write("explorer_latency", results)
    for key, value in results.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
