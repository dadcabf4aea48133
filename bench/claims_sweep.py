"""The paper's claims as curves: budgets x distillation seeds x variants x resolutions.

Trains every student of the sweep (`dashlib.claims.sweep_plan`: at digits, 7
variants and the `dash-uniform` diagnostic x budgets 200/500/1000/2000 x seeds
0/1/2, and digits16 for
cond-only, DASH and DASH without TIRT at 500 and 2000), each from its
resolution's one teacher, evaluates each once (TAG, the first evaluation seed,
the preset's samples and DDIM steps), and writes per-budget verdicts.

Resumable: it rewrites the JSON after every (budget, seed) stage, smallest
budgets first; rerunning the same command reuses finished students and cached
evaluation cells and continues where it stopped. CPU and wall time add up
over the sessions.

  nice -n 19 python bench/claims_sweep.py --workers 2 --threads 1   # digits: hours on 2 cores
  python bench/claims_sweep.py --preset tiny                         # seconds
  python bench/claims_sweep.py --parts digits --budgets 200,500      # a slice
  python bench/claims_sweep.py --preset digits --set data.name=imagefolder --data-root pets \
      --out pets_claims.json                                         # your own images

Writes bench/results/claims_sweep.json (`--out` elsewhere) and, with
`--figures DIR`, F8 and the T8 tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from common import RESULTS, environment

from dashlib import claims, claims_report
from dashlib.threads import use_threads


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits", help="the sweep's preset (digits: + digits16)")
    ap.add_argument("--quick", action="store_true", help="two smallest budgets, two seeds (smoke test)")
    ap.add_argument("--parts", default="", help="comma-separated presets of the plan to run")
    ap.add_argument("--budgets", default="", help="comma-separated budgets (default: the plan's)")
    ap.add_argument("--seeds", default="", help="comma-separated distillation seeds")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: the plan's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted preset key for every part, as `dash reproduce --set` (repeatable; "
                         "distill.steps=N sets the budgets around N)")
    ap.add_argument("--data-root", default="", help="where the dataset lives (an image folder: "
                                                    "--set data.name=imagefolder)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-stages", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "claims_sweep.json"))
    ap.add_argument("--figures", default="", help="also write F8 and the T8 tables here")
    ap.add_argument("--readme", default="", help="fill the claims block of this README from the JSON")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing and leave --out as it is: write --figures and --readme from it "
                         "(a partial sweep)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """--set and --data-root as dotted preset keys, the root made absolute (`dash`'s rules)."""
    from dashlib.cliargs import parse_set
    from dashlib.io import absolute

    keys = parse_set(args.overrides)
    if args.data_root:
        keys["data.data_root"] = str(absolute(args.data_root))
    return keys


def plan(args: argparse.Namespace) -> list[claims.SweepPart]:
    parts = claims.sweep_plan(args.preset, args.quick, overrides(args))
    if args.parts:
        keep = args.parts.split(",")
        parts = [p for p in parts if p.preset in keep]
    changes = {}
    if args.budgets:
        changes["budgets"] = _ints(args.budgets)
    if args.seeds:
        changes["seeds"] = _ints(args.seeds)
    if args.variants:
        changes["variants"] = tuple(args.variants.split(","))
    return [dataclasses.replace(p, **changes) for p in parts]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    use_threads(args.threads)
    parts = plan(args)
    print(f"sweep: {[(p.preset, p.budgets, p.seeds, p.variants) for p in parts]}", file=sys.stderr)
    env = environment()

    def report(state: dict) -> None:
        state["environment"] = env
        done = len(state["cells"])
        print(f"[claims] {done} cells done, {len(state['missing'])} missing, "
              f"cpu {state['total_cpu_s']:.0f} s", file=sys.stderr, flush=True)

    if args.report_only:
        from dashlib.io import read_json

        state = read_json(args.out)
        made = state.get("git_commit")
        claims.refresh(state, parts)  # verdicts and what is missing against this plan, in memory
        state["git_commit"] = made or state["git_commit"]  # the commit that measured the cells
        if args.figures:
            for path in claims_report.save_all(state, args.figures, quick=args.quick):
                print(path)
        if args.readme:
            readme = Path(args.readme)
            readme.write_text(claims_report.fill_readme(readme.read_text(), state))
            print(readme)
        return 0
    state = claims.run_sweep(parts, args.out, workers=args.workers, device=args.device,
                             progress=not args.no_progress, max_stages=args.max_stages,
                             on_stage=report)
    if args.figures:
        for path in claims_report.save_all(state, args.figures, quick=args.quick):
            print(path)
    print(Path(args.out).resolve(), f"(runs in {os.environ.get('DASH_RUNS', 'runs')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
