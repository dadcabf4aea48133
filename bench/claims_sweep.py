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
over the sessions. Cells of --out that the configuration no longer names (another
dataset, changed images, runs hashed anew) are refused unless --drop-stale.

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
from collections.abc import Callable
from pathlib import Path

from common import RESULTS, environment

from dashlib import claims, claims_report
from dashlib.cli import KNOWN_ERRORS
from dashlib.config import ConfigError
from dashlib.inception import SET_OPTIONS, check_weights
from dashlib.threads import use_threads


def _ints(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated ints of at least `minimum`."""

    def parse_ints(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole "
                                             f"numbers") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= {minimum}, comma-separated")
        return values

    return parse_ints


def _count(text: str) -> int:
    value = _ints(0)(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one whole number >= 0")
    return value[0]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits", help="the sweep's preset (digits: + digits16)")
    ap.add_argument("--quick", action="store_true", help="two smallest budgets, two seeds (smoke test)")
    ap.add_argument("--parts", default="", help="comma-separated presets of the plan to run")
    ap.add_argument("--budgets", type=_ints(1), help="comma-separated budgets (default: the plan's)")
    ap.add_argument("--seeds", type=_ints(0), help="comma-separated distillation seeds")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: the plan's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted preset key for every part, as `dash reproduce --set` (repeatable; "
                         "distill.steps=N sets the budgets around N)")
    ap.add_argument("--data-root", default="", help="where the dataset lives (an image folder: "
                                                    "--set data.name=imagefolder)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-stages", type=_count, default=None)
    ap.add_argument("--out", default=str(RESULTS / "claims_sweep.json"))
    ap.add_argument("--drop-stale", action="store_true",
                    help="drop the teachers and cells of --out that this configuration no longer names "
                         "(another dataset, changed images, runs hashed anew) instead of refusing")
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


def full_plan(args: argparse.Namespace) -> list[claims.SweepPart]:
    """The preset's whole plan, before --parts, --budgets, --seeds and --variants."""
    return claims.sweep_plan(args.preset, args.quick, overrides(args))


def plan(args: argparse.Namespace, whole: list[claims.SweepPart] | None = None) -> list[claims.SweepPart]:
    """The parts to run: `whole` (default `full_plan`) cut by --parts and changed by --budgets,
    --seeds and --variants."""
    parts = whole if whole is not None else full_plan(args)
    if args.parts:
        keep = [p for p in args.parts.split(",") if p.strip()]
        unknown = sorted(set(keep) - {p.preset for p in parts})
        if unknown or not keep:
            raise ConfigError(f"--parts {args.parts!r}: the {args.preset} plan's parts are "
                              f"{', '.join(p.preset for p in parts)}")
        parts = [p for p in parts if p.preset in keep]
    changes = {}
    if args.budgets:
        changes["budgets"] = args.budgets
    if args.seeds:
        changes["seeds"] = args.seeds
    if args.variants:
        changes["variants"] = tuple(args.variants.split(","))
    return [dataclasses.replace(p, **changes) for p in parts]


def check_stored(out: Path, args: argparse.Namespace, whole: list[claims.SweepPart]) -> None:
    """Refuse an --out that holds the sweep of another preset (its figures would show empty
    panels, a sweep would mix two grids in one file), or none for --report-only."""
    from dashlib.io import read_json

    if not out.is_file():
        if args.report_only:
            raise ConfigError(f"{out} does not exist: run the sweep first (without --report-only), or "
                              f"pass the --out of one that ran")
        return
    state = read_json(out)
    if not isinstance(state, dict) or state.get("benchmark") != "claims_sweep":
        raise ConfigError(f"{out} is not a claims sweep's JSON (no \"benchmark\": \"claims_sweep\"): "
                          f"pass --out FILE for a new sweep")
    stored = {str(p.get("preset")) for p in state.get("plan", [])} | set(state.get("teachers", {}))
    stored |= {str(c.get("preset")) for c in state.get("cells", {}).values()}
    planned = [p.preset for p in whole]
    if stored - set(planned):
        raise ConfigError(f"{out} holds a sweep of {', '.join(sorted(stored))}, and --preset "
                          f"{args.preset} plans {', '.join(planned)}: pass the --preset (and --set) it "
                          f"was run with, or --out FILE for a sweep of its own")


def shown_path(out: Path) -> str:
    """--out as the README names it: relative to the repository where it lies inside it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return out.resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(out)


def write_reports(state: dict, args: argparse.Namespace, quick: bool) -> None:
    if args.figures:
        for path in claims_report.save_all(state, args.figures, quick=quick):
            print(path)
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(claims_report.fill_readme(readme.read_text(), state, shown_path(Path(args.out))))
        print(readme)


def sweep(args: argparse.Namespace) -> int:
    use_threads(args.threads)
    whole = full_plan(args)
    parts = plan(args, whole)
    out = Path(args.out)
    check_stored(out, args, whole)
    print(f"sweep: {[(p.preset, p.budgets, p.seeds, p.variants) for p in parts]}", file=sys.stderr)
    if args.report_only:
        from dashlib.io import read_json

        state = read_json(out)
        claims.refresh(state, parts)  # verdicts and what is missing against this plan, in memory
        write_reports(state, args, quick=args.quick or bool(state.get("quick")))
        return 0
    if args.readme:  # checked before hours of training, not after
        claims_report.readme_span(Path(args.readme).read_text())
    for part in parts:  # so are the Inception-v3 weights, where the preset scores with them
        check_weights(part.base().eval, SET_OPTIONS)
    env = environment()

    def report(state: dict) -> None:
        state["environment"] = env
        state["quick"] = args.quick  # --report-only marks a smoke test's figures as one
        done = len(state["cells"])
        print(f"[claims] {done} cells done, {len(state['missing'])} missing, "
              f"cpu {state['total_cpu_s']:.0f} s", file=sys.stderr, flush=True)

    state = claims.run_sweep(parts, out, workers=args.workers, device=args.device,
                             progress=not args.no_progress, max_stages=args.max_stages,
                             on_stage=report, drop_stale=args.drop_stale, known=whole)
    write_reports(state, args, quick=args.quick)
    print(out.resolve(), f"(runs in {os.environ.get('DASH_RUNS', 'runs')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return sweep(args)
    except KNOWN_ERRORS as err:
        print(f"claims_sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("claims_sweep: interrupted; rerun the same command to continue (finished stages are "
              "kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
