"""Core commands: info, train-teacher, sample."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashlib.cliargs import (
    RESUME_ADVICE,
    add_preset,
    add_runtime,
    add_training,
    command,
    count_arg,
    data_overrides,
    preset_from_args,
    runtime_from_args,
    seed_arg,
)

if TYPE_CHECKING:
    from dashlib.config import DataConfig, Preset


@command("info", "print a preset's sizes as JSON", add_preset,
         out_of_memory="lower the model size (--set teacher.ch / student.ch): info builds both models")
def cmd_info(args: argparse.Namespace) -> int:
    from dashlib.config import to_dict
    from dashlib.device import resolve_device
    from dashlib.runtime import amp_dtype, precision_name
    from dashlib.unet import param_count

    preset = preset_from_args(args)
    t, s = param_count(preset.teacher), param_count(preset.student)
    device = resolve_device("auto")

    def precision(amp: str, ch: int) -> str:
        return precision_name(amp_dtype(device, amp, ch))

    print(json.dumps({
        "preset": preset.name, "description": describe(preset), "dataset": preset.data.name,
        "image_size": preset.data.image_size, "channels": preset.teacher.in_channels,
        "num_classes": preset.teacher.num_classes, "teacher_params": t, "student_params": s,
        "compression_ratio": round(t / s, 3), "T": preset.diffusion.T,
        "schedule": preset.diffusion.schedule, "teacher_steps": preset.train.steps,
        "distill_steps": preset.distill.steps, "sampler": to_dict(preset.sample),
        # what train.amp / distill.amp come to on this machine (dashlib.runtime.amp_dtype)
        "training_precision": {"device": str(device),
                               "teacher": precision(preset.train.amp, preset.teacher.ch),
                               "student": precision(preset.distill.amp, preset.student.ch)},
        **folder_classes_info(preset.data, named_root="data.data_root" in data_overrides(args)),
    }, indent=2))  # ASCII escapes: a class folder's name may be bytes that are not UTF-8
    return 0


def describe(preset: Preset) -> str:
    """The preset's description, or what runs where its data were replaced by an image folder
    (the preset's text named its own data: "scikit-learn digits 8x8" for RGB photographs)."""
    from dashlib.data import is_user_folder

    if not is_user_folder(preset.data.name):
        return preset.description
    return (f"the {preset.name} preset's models and budgets on the image folder {preset.data.data_root} "
            f"({preset.data.image_size}x{preset.data.image_size}, {preset.teacher.in_channels} channel(s))")


def folder_classes_info(data: DataConfig, named_root: bool = False) -> dict[str, Any]:
    """An image folder's class names in label order (label i is the i-th folder name in sorted
    order, torchvision's rule: "10" comes before "2") and what it holds that is not read
    (`imagefolder.left_out`), as `dash info` shows them. Another dataset read from files
    (CIFAR, MNIST) shows its classes where a data root was `named_root` (so a root that
    holds no such data is an error here, not in the first command that trains); {} else."""
    from dashlib.data import DATASETS, class_names, is_user_folder
    from dashlib.imagefolder import left_out

    if is_user_folder(data.name):
        return {"classes": list(class_names(data)), "left_out": left_out(data.data_root)}
    if named_root and DATASETS.get(data.name).reads_files:
        return {"classes": list(class_names(data))}
    return {}


def _train_args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    add_training(p)
    add_runtime(p)


@command("train-teacher", "train (or reuse) the preset's teacher", _train_args, distributed=True,
         interrupted=RESUME_ADVICE,
         out_of_memory="lower --set train.batch_size or the model size (--set teacher.ch)")
def cmd_train_teacher(args: argparse.Namespace) -> int:
    from dashlib.teacher import train_teacher

    preset = preset_from_args(args, **{"train.steps": args.steps, "train.seed": args.seed})
    run = train_teacher(preset, force=args.force, resume=args.resume, device=args.device,
                        progress=not args.no_progress, runtime=runtime_from_args(args))
    results = run.read_results()
    print(f"teacher: {results['params']:,} params, {results['steps']} steps, "
          f"final loss {results['final_loss']:.4f}, {results['wall_time_s']:.0f} s", file=sys.stderr)
    print(run.results)
    return 0


def _sample_args(p: argparse.ArgumentParser) -> None:
    add_preset(p)
    p.add_argument("--run", help="run folder of the model to sample (default: the preset's teacher); "
                                 "without --preset, the run's own preset sets the sampler")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--w", type=float, help="constant guidance scale (1 = conditional, 0 = unconditional)")
    g.add_argument("--tag", action="store_true", help="time-varying TAG guidance (docs/paper.md)")
    p.add_argument("--steps", type=count_arg,
                   help="DDIM steps (default: the preset's sample.steps: 50 at digits and the cifar presets)")
    p.add_argument("--n", type=int, default=100, help="number of samples, balanced over classes")
    p.add_argument("--eta", type=float, help="DDIM eta (default 0: deterministic)")
    p.add_argument("--seed", type=seed_arg, default=0, help="sampling seed")
    p.add_argument("--out", help="output folder (default: <run>/samples)")
    add_runtime(p)
    p.set_defaults(preset=None)  # with --run: the run's own preset (its sampler), else digits


@command("sample", "draw class-balanced samples: PNG grid (a row per class) + tensor file",
         _sample_args, distributed=True,
         out_of_memory="lower --set sample.batch_size (rows per forward pass) or --n")
def cmd_sample(args: argparse.Namespace) -> int:
    from dashlib.evaluate import check_run_keys, run_preset
    from dashlib.generate import sample_to_files
    from dashlib.reproduce import DEFAULT_PRESET
    from dashlib.runs import Run

    if args.run:  # the run fixes its models, data and training: only the sampler may change
        # the folder first: a missing one is the error to see, not the keys it would refuse
        check_run_keys(Run(Path(args.run)).require_folder(), data_overrides(args), ("sample.",), "sampling")
    if args.preset is None:  # a run samples with its own preset's sampler (steps, batch, TAG's range)
        args.preset = run_preset(args.run) if args.run else DEFAULT_PRESET
    preset = preset_from_args(args, **{"sample.steps": args.steps, "sample.eta": args.eta})
    guidance = "tag" if args.tag else args.w
    png, tensor = sample_to_files(preset, run=args.run, guidance=guidance, n=args.n,
                                  seed=args.seed, out=args.out, device=args.device,
                                  runtime=runtime_from_args(args))
    print(f"wrote {png}", file=sys.stderr)
    print(tensor)
    return 0
