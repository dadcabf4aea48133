"""Collapse or explosion? How an output-level student's unconditional branch is defined.

docs/paper.md says output-level distillation leaves the student's unconditional
branch unsupervised, so its gap delta_S collapses (rho -> 0). Whether that
happens depends on two choices the paper does not state (docs/choices.md):

  * `distill.null_init`: the student's null embedding row starts random, zero,
    or as the mean of its class rows;
  * `distill.null_rows`: whether output-level training ever feeds the null
    label (per-sample at the label-dropout rate, target = the teacher's
    unconditional output for `cond-only`, i.e. the student sees null rows).

This runs `cond-only` (and, for reference, `dash`) on the chosen preset for
every combination, same teacher, seed and step budget, and records the
calibration of each EMA student on the held-out matched inputs: rho, cos,
gap MSE and both branch MSEs. Each run is a normal cached distillation run,
so a second call only reads the results.

  python bench/null_study.py                     # digits, ~12 min on 2 cores
  python bench/null_study.py --preset tiny       # seconds

Writes bench/results/null_study.json (and prints a Markdown table).
"""

from __future__ import annotations

import argparse
import itertools
import json

from common import write

from dashlib.distill.run import distill
from dashlib.presets import get_preset

KEYS = ("rho", "cos", "gap_mse", "cond_mse", "uncond_mse")


def one(preset_name: str, method: str, null_init: str, null_rows: bool, seed: int,
        steps: int | None) -> dict[str, object]:
    preset = get_preset(preset_name, **{"distill.null_init": null_init, "distill.null_rows": null_rows})
    # an interrupted run is refused, not resumed: the study reports clean runs' own time
    run = distill(preset, method=method, seed=seed, steps=steps, resume=False, progress=False)
    result = json.loads(run.results.read_text())
    return {"method": method, "null_init": null_init, "null_rows": null_rows, "seed": seed,
            "steps": result["steps"], **{k: result[k] for k in KEYS},
            "final_loss": result["final_losses"]["loss"], "wall_time_s": result["wall_time_s"],
            "run": result["run"]}


def _three(value: object) -> str:
    """Three decimals, or "–" for a rho left undefined (null: a teacher without a gap)."""
    return "–" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| method | null_init | null_rows | rho | cos | gap MSE | cond MSE | uncond MSE |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['null_init']} | {r['null_rows']} | {_three(r['rho'])} | "
                     f"{r['cos']:.3f} | {r['gap_mse']:.4f} | {r['cond_mse']:.4f} | {r['uncond_mse']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (preset default)")
    ap.add_argument("--methods", nargs="+", default=["cond-only", "dash"])
    args = ap.parse_args()
    rows = []
    for method, null_init, null_rows in itertools.product(args.methods, ("random", "zero", "mean"),
                                                           (False, True)):
        if method == "dash" and null_rows:
            continue  # DASH supervises the null branch on every row already; the flag is moot
        rows.append(one(args.preset, method, null_init, null_rows, args.seed, args.steps))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    write("null_study", {"preset": args.preset, "seed": args.seed, "rows": rows, "table": table(rows)})


if __name__ == "__main__":
    main()
