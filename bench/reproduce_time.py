"""Wall time of the whole reproduction, end to end: `make reproduce` by default.

This trains the digits teacher, every student and seed, evaluates them and
runs every notebook: about 45 minutes on a laptop CPU, so it is NOT part of
`bench/run_all.py`. Run it on a quiet machine; reuse of finished runs would
make the time meaningless, so by default it points DASH_RUNS at a fresh
temporary folder (pass --keep-runs to use the normal runs/ folder).

  python bench/reproduce_time.py                        # make reproduce
  python bench/reproduce_time.py --command "dash reproduce --preset digits --quick"
  python bench/reproduce_time.py --checkout /tmp/old --command ".venv/bin/python -m dashlib reproduce"

`--checkout DIR` times another checkout of dash (an older commit, say, for a
baseline on this machine, since hosts differ by 1.5x and more): the command
runs in DIR with DIR first on PYTHONPATH, so DIR's dashlib is imported, by the
command and by the notebook kernels it starts, even from this checkout's venv
(whose editable install otherwise points here); the JSON records DIR's commit.
A relative program path in the command is taken from this checkout.

Writes bench/results/reproduce_time.json: command, wall time, exit status,
each notebook's time (`notebook_s`), its slowest cells (`cell_s`: papermill's
per-cell durations, with each cell's code), the last lines of its
output, the machine, and `host_probe` before and after the run (`common.host_probe`:
the digits teacher's and student's training step on one thread and the teacher's on
two, so that times taken on hosts of different speeds, or on one host that slowed
during the run, compare).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from common import host_probe, write

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"\] (\S+)\.ipynb done in (\d+(?:\.\d+)?) s")


def timed(command: str, env: dict[str, str], cwd: Path = ROOT) -> dict[str, object]:
    args = shlex.split(command)
    if cwd != ROOT and "/" in args[0] and not Path(args[0]).is_absolute():
        args[0] = str(ROOT / args[0])  # this checkout's venv, run in the other one
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = (done.stdout + done.stderr).replace("\r", "\n").splitlines()
    # "[2/8] 01_teacher.ipynb done in 226 s": where the time went, per notebook
    stages = {m.group(1): float(m.group(2)) for m in map(STAGE.search, lines) if m}
    return {"command": command, "wall_s": wall, "wall_min": wall / 60, "returncode": done.returncode,
            "notebook_s": stages, "output_tail": lines[-20:]}


def cell_times(runs: Path, top: int = 6) -> dict[str, list[dict[str, object]]]:
    """The slowest code cells of each executed notebook under `runs` (papermill
    writes each cell's duration into its metadata)."""
    out = {}
    for nb in sorted(runs.glob("*/notebooks*/*.ipynb")):
        cells = []
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
            if cell["cell_type"] == "code" and seconds is not None and seconds >= 1:
                lines = [x.strip() for x in "".join(cell["source"]).splitlines() if x.strip()]
                code = [x for x in lines if not x.startswith(("#", "from ", "import "))]
                cells.append({"cell": i, "s": round(seconds, 1), "code": "; ".join(code)[:160]})
        out[nb.stem] = sorted(cells, key=lambda c: -c["s"])[:top]
    return out


def checkout_commit(path: Path) -> str:
    """The commit checked out in `path` (short hash), for the record."""
    if not (path / "dashlib").is_dir():
        raise SystemExit(f"--checkout {path}: no dashlib/ there; give the root of a dash checkout")
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (no git commit there)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command", default="make reproduce")
    ap.add_argument("--keep-runs", action="store_true", help="use the normal runs/ folder")
    ap.add_argument("--name", default="reproduce_time", help="results file name (without .json)")
    ap.add_argument("--checkout", type=Path, default=None,
                    help="time this other dash checkout (run in it, its dashlib imported first)")
    args = ap.parse_args()
    env, cwd = dict(os.environ), ROOT
    checkout = {}
    if args.checkout is not None:
        cwd = args.checkout.resolve()
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [env.get("PYTHONPATH")])])
        checkout = {"checkout": str(cwd), "checkout_commit": checkout_commit(cwd)}
    with tempfile.TemporaryDirectory(prefix="dash-reproduce-") as tmp:
        if not args.keep_runs:
            env["DASH_RUNS"] = tmp
        before = host_probe()
        result = timed(args.command, env, cwd)
        result["cell_s"] = cell_times(Path(env.get("DASH_RUNS", cwd / "runs")))
        result["host_probe"] = {"before": before, "after": host_probe()}
    print(f"{args.command}: {result['wall_min']:.1f} min, exit {result['returncode']}")
    write(args.name, {"fresh_runs": not args.keep_runs, **checkout, **result})
    if result["returncode"]:
        raise SystemExit(result["returncode"])


if __name__ == "__main__":
    main()
