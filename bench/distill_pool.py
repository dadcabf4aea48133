"""Wall time of one preset's distillation pool (notebook 02's training cell, or with
`--stage ablations` notebook 04's), for this checkout and, with --checkout, for others,
in alternating rounds on one machine.

Each run starts from a fresh runs folder holding only what the notebooks before the
stage leave there (prepared once, first, and copied in): for `distillation` the trained
teacher, so every student and the shared teacher targets are computed, as in a fresh
`make reproduce`, and every method's student is trained; for `ablations` the teacher,
the targets and the two students notebook 04 reuses (cond-only and DASH), and the
notebook's ablation variants and extra widths are trained (by one pool where the
checkout's `pipeline.ablation_and_width_runs` exists, else by its two pools, ablation
then widths). Students train in `--workers` single-threaded worker processes. What
the pool's scheduling costs is the gap between its wall time and the workers' busy time:
`pool_efficiency` = the students' own training times summed / (workers x wall time) (the
targets and process start-up count as waste).

  python bench/distill_pool.py                                  # this checkout, digits
  python bench/distill_pool.py --checkout /tmp/old --rounds 2   # against an older commit
  python bench/distill_pool.py --stage ablations --checkout /tmp/old --rounds 2 --name ablation_pool

Writes bench/results/distill_pool.json (or --name): per run, the commit, wall time, each
student the pool trained and its training time (its results.json `wall_time_s`; students
found already trained are not counted), their sum and the efficiency; and for checkouts
that trained the same students, whether their weights are bit-identical to this
checkout's. `prepare_s` is the time of the preparation (teacher and reused students).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(preset_name: str, workers: int, stage: str) -> None:
    """In a fresh process (its dashlib the checkout's): train the stage's students, print JSON."""
    from dashlib.io import runs_root
    from dashlib.presets import get_preset
    from dashlib.threads import use_threads

    use_threads(workers)
    there = {f.name for f in (runs_root() / get_preset(preset_name).name).glob("*")}
    start = time.perf_counter()
    folders = STAGES[stage](preset_name, workers)
    wall = time.perf_counter() - start
    folders = {name: f for name, f in folders.items() if f.name not in there}
    runs_s = {m: json.loads((f / "results.json").read_text())["wall_time_s"] for m, f in folders.items()}
    print(json.dumps({"wall_s": wall, "runs_s": runs_s, "folders": {m: f.name for m, f in folders.items()}}))


def distillation(preset_name: str, workers: int) -> dict[str, Path]:
    """Notebook 02's pool: every method's student; {method: run folder}."""
    from dashlib.distill import METHODS
    from dashlib.distill.run import distill_many
    from dashlib.presets import get_preset

    runs = distill_many(get_preset(preset_name), METHODS.names(), workers=workers, device="cpu",
                        progress=False)
    return {m: r.path for (m, _), r in runs.items()}


def ablations(preset_name: str, workers: int) -> dict[str, Path]:
    """Notebook 04's training: the ablation variants and the extra widths; {name: run folder}."""
    from dashlib import pipeline

    b = pipeline.budget(preset_name, workers=workers, device="cpu")
    if hasattr(pipeline, "ablation_and_width_runs"):
        variants, widths = pipeline.ablation_and_width_runs(b, progress=False)
    else:  # checkouts before 401c909: two pools, one after the other
        variants, widths = pipeline.ablation_runs(b, progress=False), pipeline.width_runs(b, progress=False)
    return {name: r.path for name, r in {**variants, **widths}.items()}


STAGES = {"distillation": distillation, "ablations": ablations}
# what a stage's runs folder holds before it starts, beyond the teacher: {stage: methods}
REUSED = {"distillation": (), "ablations": ("cond-only", "dash")}


def prepare(preset_name: str, stage: str, workers: int, root: Path) -> float:
    """Train the preset's teacher into `root` (two threads, in a fresh process), and the
    students the stage reuses (`workers` workers); seconds."""
    code = ("import sys; from dashlib.threads import use_threads; from dashlib.presets import get_preset; "
            "from dashlib.teacher import train_teacher; from dashlib.distill.run import distill_many; "
            "use_threads(2); p = get_preset(sys.argv[1]); train_teacher(p, device='cpu', progress=False); "
            "methods = sys.argv[3:]; methods and distill_many(p, methods, workers=int(sys.argv[2]), "
            "device='cpu', progress=False)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, preset_name, str(workers), *REUSED[stage]],
                   env={**os.environ, "DASH_RUNS": str(root)}, cwd=ROOT, check=True)
    return time.perf_counter() - start


def pool_run(checkout: Path, prepared: Path, preset_name: str, workers: int, keep: Path,
             stage: str) -> dict:
    """One fresh-folder pool run of `checkout`'s dashlib; its runs folder is kept under `keep`."""
    shutil.copytree(prepared, keep)
    env = {**os.environ, "DASH_RUNS": str(keep),
           "PYTHONPATH": os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--preset", preset_name,
                           "--workers", str(workers), "--stage", stage], env=env, cwd=checkout,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the pool of {checkout} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    busy = sum(result["runs_s"].values())
    return {"checkout": str(checkout), "commit": commit(checkout), **result, "sum_runs_s": busy,
            "pool_efficiency": busy / (workers * result["wall_s"])}


def commit(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() or "unknown"


def same_weights(a: Path, b: Path, folders: dict[str, str]) -> bool:
    """Whether the students in runs folders `a` and `b` (preset subfolders) are bit-identical."""
    import torch

    def load(root: Path, folder: str) -> dict:
        path = next(root.glob(f"*/{folder}/final.pt"))
        return torch.load(path, map_location="cpu", weights_only=False)["model"]

    for folder in folders.values():
        x, y = load(a, folder), load(b, folder)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage", choices=sorted(STAGES), default="distillation",
                    help="notebook 02's pool (distillation) or notebook 04's (ablations)")
    ap.add_argument("--checkout", type=Path, action="append", default=[],
                    help="another dash checkout to time in alternation with this one (repeatable)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--name", default="distill_pool")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.preset, args.workers, args.stage)
    sys.path.insert(0, str(ROOT))
    from common import environment, write

    checkouts = [ROOT, *(c.resolve() for c in args.checkout)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dash-pool-") as tmp:
        prepared = Path(tmp) / "prepared"
        prepare_s = prepare(args.preset, args.stage, args.workers, prepared)
        for r in range(args.rounds):
            order = checkouts if r % 2 == 0 else checkouts[::-1]  # alternate who goes first
            done = {}
            for checkout in order:
                keep = Path(tmp) / f"round{r}-{checkouts.index(checkout)}"
                done[keep] = {"round": r, **pool_run(checkout, prepared, args.preset, args.workers, keep,
                                                      args.stage)}
                row = done[keep]
                print(f"round {r} {row['commit']}: {row['wall_s']:.0f} s, students "
                      f"{row['sum_runs_s']:.0f} s, efficiency {row['pool_efficiency']:.2f}", flush=True)
            here = Path(tmp) / f"round{r}-0"
            for keep, row in done.items():
                if keep != here:
                    row["weights_identical_to_this_checkout"] = same_weights(keep, here, row["folders"])
            rows += done.values()
    write(args.name, {"environment": environment(), "preset": args.preset, "stage": args.stage,
                      "workers": args.workers,
                      "prepare_s": prepare_s, "runs": rows})


if __name__ == "__main__":
    main()
