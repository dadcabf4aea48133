"""`dash reproduce`: every notebook, in order, headless."""

from __future__ import annotations

import argparse

from dashlib.cliargs import add_preset, check_data_root, command, data_overrides, seed_arg, workers_arg


def _args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    p.add_argument("--seeds", type=seed_arg, nargs="+",
                   help="evaluation seeds (default: the preset's, 42 123 456; --quick: the first)")
    p.add_argument("--quick", action="store_true",
                   help="reduced budgets (one seed, shorter training); outputs marked quick")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                   help="run only these notebooks, e.g. 01_teacher 02_distillation")
    p.add_argument("--figures", help="figures folder (default: figures/, per preset)")
    p.add_argument("--workers", type=workers_arg, default=2,
                   help="parallel single-threaded processes for independent runs (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("reproduce", "run every notebook headless with papermill (figures and tables)", _args,
         interrupted="rerun the same command: finished runs and evaluation cells are reused, and "
                     "an unfinished teacher or student resumes from its last checkpoint")
def cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from dashlib.reproduce import figures_dir, reproduce, with_data_root

    overrides = data_overrides(args)
    check_data_root(args.preset, overrides)
    if args.seeds:
        overrides["eval.seeds"] = list(args.seeds)
    reproduce(args.preset, quick=args.quick, only=args.only, figures=args.figures, device=args.device,
              progress=not args.no_progress, overrides=overrides,
              threads=torch.get_num_threads(), workers=args.workers)  # as `main` set them: capped
    # the data root as reproduce() filled it in (an image folder's default root names the folder)
    figures = figures_dir(args.preset, args.quick, args.figures,
                          with_data_root(args.preset, overrides)).resolve()
    index = figures / "README.md"  # absent when --only ran no notebook that saves figures
    print(index if index.is_file() else figures)
    return 0
