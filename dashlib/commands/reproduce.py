"""`dash reproduce`: every notebook, in order, headless."""

from __future__ import annotations

import argparse

from dashlib.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="digits", help="preset (default: digits)")
    p.add_argument("--quick", action="store_true",
                   help="reduced budgets (one seed, shorter training); outputs marked quick")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                   help="run only these notebooks, e.g. 01_teacher 02_distillation")
    p.add_argument("--figures", help="figures folder (default: figures/, per preset)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("reproduce", "run every notebook headless with papermill (figures and tables)", _args)
def cmd_reproduce(args: argparse.Namespace) -> int:
    from dashlib.presets import get_preset
    from dashlib.reproduce import figures_dir, reproduce

    get_preset(args.preset)  # a bad preset fails here, before any notebook starts
    reproduce(args.preset, quick=args.quick, only=args.only, figures=args.figures,
              device=args.device, progress=not args.no_progress)
    print(figures_dir(args.preset, args.quick, args.figures) / "README.md")
    return 0
