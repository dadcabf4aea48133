"""Peak memory of a full evaluation on a 60,000-image dataset at the digits sizes.

A digits-size teacher is trained for a few steps on 60,000 synthetic 8x8 images (10 classes), then
`dash evaluate` scores it with the digits preset's evaluation (its samples, seeds and guidance
settings; classifier feature space; reference features capped by eval.max_reference, default
10,000). The memory of the whole process tree (the command and its worker processes) is polled
every 0.1 s: PSS summed over the processes (each shared page counted once, split between its
users: what the tree really holds) is judged against the goal, <= 2 GB; summed RSS (shared
libraries counted once per process: torch alone is ~0.6 GB of them) and the largest single
process are reported beside it. Writes bench/results/eval_memory.json.

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


def tree_memory(proc: psutil.Process) -> dict[str, int]:
    """Over the process and its descendants: summed RSS (counts shared library pages once per
    process), summed PSS (shared pages split between their users: the tree's real footprint)
    and the largest single RSS."""
    rss, pss = [], []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss.append(info.rss)
        pss.append(getattr(info, "pss", info.rss))
    return {"rss_sum": sum(rss), "pss_sum": sum(pss), "rss_max": max(rss, default=0)}


def run_polled(cmd: list[str], env: dict[str, str]) -> tuple[int, dict[str, int], float, str]:
    """(exit status, the peak of each `tree_memory` figure, wall seconds, last stdout line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), {"rss_sum": 0, "pss_sum": 0, "rss_max": 0}
    while proc.poll() is None:
        try:
            now = tree_memory(ps)
        except psutil.Error:
            break
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        time.sleep(0.1)
    proc.wait()
    out = proc.stdout.read().strip().splitlines() if proc.stdout else []
    return proc.returncode, peak, time.perf_counter() - start, out[-1] if out else ""


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
    status, peak, wall, last = run_polled(evaluate, env)
    gib = {k: round(v / 2**30, 3) for k, v in peak.items()}
    result = {"images": args.images, "train_images": round(args.images * 0.9),
              "max_reference": args.max_reference, "exit_status": status,
              "peak_pss_tree_gib": gib["pss_sum"], "peak_rss_tree_gib": gib["rss_sum"],
              "peak_rss_one_process_gib": gib["rss_max"], "wall_s": round(wall, 1),
              "goal_gib": GOAL_BYTES / 2**30,
              "meets_goal": status == 0 and peak["pss_sum"] <= GOAL_BYTES,
              "results": last, "environment": environment()}
    path = write("eval_memory", result)
    print(f"eval memory: peak {gib['pss_sum']:.2f} GiB PSS over the process tree ({gib['rss_sum']:.2f} GiB "
          f"summed RSS; largest process {gib['rss_max']:.2f} GiB RSS), {wall:.0f} s, exit {status}; {path}",
          file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
