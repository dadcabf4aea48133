"""The paper path end to end on CPU: `dash reproduce --preset cifar10` through every notebook at the
paper's model sizes (35.75M teacher, 6.08M student) on a CIFAR-10-format root of random images, with
a few steps and samples everywhere (SMOKE) and the offline classifier feature space (no Inception
weights here). It proves the CIFAR path runs; its numbers mean nothing. Writes
bench/results/smoke_paper.json (wall time, exit status, load) and is what `make smoke-paper` runs.

    python bench/smoke_paper.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, write

from dashlib.cifar import write_cifar_root

#: A few steps and samples at every stage; `--set KEY=VALUE` pairs of `dash reproduce`.
SMOKE = {
    "train.steps": 2, "train.batch_size": 4, "train.log_every": 1,
    "distill.steps": 2, "distill.batch_size": 4, "distill.log_every": 1, "distill.calib_every": 2,
    "distill.calib_samples": 8,
    "sample.steps": 2, "sample.batch_size": 10,
    "eval.n_samples": 10, "eval.seeds": [42], "eval.ddim_steps": 2, "eval.sweep_steps": [1, 2],
    "eval.guidance": ["1", "tag"], "eval.sweep_guidance": ["1", "tag"], "eval.classifier_steps": 5,
    "eval.classifier_batch_size": 16, "eval.max_reference": 100, "eval.feature_extractor": "classifier",
    "efficiency_steps": 2, "efficiency_batch": 2, "efficiency_repeats": 1, "grid_per_class": 1,
    "widths": [32],
}


def command(root: Path, figures: Path, preset: str = "cifar10") -> list[str]:
    sets = [a for k, v in SMOKE.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return [sys.executable, "-m", "dashlib", "reproduce", "--preset", preset, "--data-root", str(root),
            "--figures", str(figures), "--no-progress", *sets]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the runs, figures and data here (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dash-smoke-"))
    root = write_cifar_root(work / "data", "cifar10", per_batch=40)
    env = {**os.environ, "DASH_RUNS": str(work / "runs"), "MPLBACKEND": "Agg"}
    cmd = command(root, work / "figures")
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - start
    path = write("smoke_paper", {"wall_s": round(wall, 1), "exit_status": proc.returncode,
                                 "load_before": load_before, "load_after": os.getloadavg(),
                                 "command": " ".join(cmd[1:]), "environment": environment()})
    print(f"smoke-paper: exit {proc.returncode} in {wall / 60:.1f} min; {path}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
