"""Peak memory of a full evaluation on a 60,000-image dataset at the digits sizes.

A digits-size teacher is trained for a few steps on 60,000 synthetic 8x8 images (10 classes), then
`dash evaluate` scores it with the digits preset's evaluation (its samples, seeds and guidance
settings; classifier feature space; reference features capped by eval.max_reference, default
10,000). The resident memory of the whole process tree (the command and its worker processes) is
polled every 0.1 s. Goal: <= 2 GB. Writes bench/results/eval_memory.json.

    python bench/eval_memory.py [--images 60000] [--max-reference 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import environment, write

GOAL_BYTES = 2 * 2**30


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS over the process and its descendants, the largest single RSS)."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            continue
    return sum(sizes), max(sizes, default=0)


def run_polled(cmd: list[str], env: dict[str, str]) -> tuple[int, int, int, float, str]:
    """(exit status, peak tree RSS, peak single-process RSS, wall seconds, last stdout line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    ps, peak_sum, peak_one = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        total, one = tree_rss(ps) if ps.is_running() else (0, 0)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, one)
        time.sleep(0.1)
    out = proc.stdout.read().strip().splitlines() if proc.stdout else []
    return proc.returncode, peak_sum, peak_one, time.perf_counter() - start, out[-1] if out else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--max-reference", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dash-evalmem-"))
    env = {**os.environ, "DASH_RUNS": str(work / "runs"), "MPLBACKEND": "Agg"}
    data = ["--set", "data.name=synthetic", "--set", f"data.synthetic_size={args.images}",
            "--set", "data.synthetic_classes=10", "--set", "data.holdout_fraction=0.1"]
    dash = [sys.executable, "-m", "dashlib"]
    train = subprocess.run([*dash, "train-teacher", "--preset", "digits", *data, "--set", "train.steps=20",
                            "--no-progress"], env=env, stdout=subprocess.PIPE, text=True, check=True)
    run = Path(train.stdout.strip().splitlines()[-1]).parent
    evaluate = [*dash, "evaluate", "--run", str(run), "--no-progress",
                "--set", f"eval.max_reference={args.max_reference}"]
    status, peak_sum, peak_one, wall, last = run_polled(evaluate, env)
    result = {"images": args.images, "train_images": round(args.images * 0.9),
              "max_reference": args.max_reference, "exit_status": status,
              "peak_rss_tree_bytes": peak_sum, "peak_rss_tree_gib": round(peak_sum / 2**30, 3),
              "peak_rss_one_process_gib": round(peak_one / 2**30, 3), "wall_s": round(wall, 1),
              "goal_gib": GOAL_BYTES / 2**30, "meets_goal": status == 0 and peak_sum <= GOAL_BYTES,
              "results": last, "environment": environment()}
    path = write("eval_memory", result)
    print(f"eval memory: peak {peak_sum / 2**30:.2f} GiB over the process tree (largest process "
          f"{peak_one / 2**30:.2f} GiB), {wall:.0f} s, exit {status}; {path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
