"""Why does DASH with TIRT Transfer lose at small budgets? Measurements for three hypotheses.

Reads a claims sweep's results (bench/claims_sweep.py; its students and teacher
must still be in $DASH_RUNS) and measures, per preset (`dashlib.diagnosis`):

* H1, mass on the low-noise timesteps: the share of each weighting's profile
  on t >= T/2 (the teacher's transferred TIRT, Min-SNR-5, uniform), and each
  variant's conditional error against the teacher per timestep bin (low- and
  high-noise halves), from the students' calibration;
* H2, batch-mean normalisation: each weighting's effective sample size per
  batch (fraction of the batch) and the spread of the batch normaliser;
* H3, the L_un / L_im balance: DASH's and cond-only's L_im (and DASH's L_un)
  at each logged step of the smallest budget, mean over seeds.

Nothing is trained. Writes bench/results/small_budget_diagnosis.json.

  python bench/small_budget_diagnosis.py --sweep bench/results/claims_sweep.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import RESULTS, write

from dashlib import diagnosis
from dashlib.artifacts import load_artifact
from dashlib.io import read_json
from dashlib.runs import Run
from dashlib.tirt import make_weighting


def read_log(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_curves(runs: list[str], terms: tuple[str, ...]) -> dict[str, list[float]]:
    curves = [diagnosis.term_curves(read_log(Path(r) / "log.jsonl"), terms) for r in runs]
    steps = curves[0]["step"]
    out: dict[str, list[float]] = {"step": steps}
    for t in terms:
        out[t] = [statistics.fmean(c[t][i] for c in curves) for i in range(len(steps))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=str(RESULTS / "claims_sweep.json"))
    args = ap.parse_args()
    state = read_json(args.sweep)
    out: dict[str, dict] = {}
    for preset, teacher in state["teachers"].items():
        art = load_artifact(Run(Path(teacher["run"])))
        weights = {"transfer (teacher's TIRT)": art.weighting,
                   "min-snr": make_weighting("min-snr", art.diffusion),
                   "uniform": make_weighting("uniform", art.diffusion)}
        cells = [c for c in state["cells"].values() if c["preset"] == preset]
        per_bin = diagnosis.per_bin_error(cells)
        smallest = min(c["budget"] for c in cells) if cells else None

        def runs_of(variant: str, cells=cells, smallest=smallest) -> list[str]:
            return [c["run"] for c in cells if c["variant"] == variant and c["budget"] == smallest]

        balance = {}
        if runs_of("dash") and runs_of("cond-only"):
            balance = {"budget": smallest, "dash": mean_curves(runs_of("dash"), ("im", "un")),
                       "cond-only": mean_curves(runs_of("cond-only"), ("im",))}
            if runs_of("dash-uniform"):
                balance["dash-uniform"] = mean_curves(runs_of("dash-uniform"), ("im", "un"))
        out[preset] = {
            "weights": {k: diagnosis.weight_stats(w) for k, w in weights.items()},
            "teacher_tirt_table_abs_max": float(art.weighting.table.detach().abs().max()),
            "cond_mse_per_bin": per_bin,
            "cond_mse_halves": {k: diagnosis.halves(v) for k, v in per_bin.items()},
            "uncond_mse_halves": {k: diagnosis.halves(v) for k, v in
                                  diagnosis.per_bin_error(cells, "uncond_mse").items()},
            "term_balance": balance,
        }
    write("small_budget_diagnosis", {"sweep": str(Path(args.sweep).resolve()),
                                     "sweep_commit": state.get("git_commit"), "presets": out})


if __name__ == "__main__":
    main()
