"""The building blocks of the `dash` command line: the `COMMANDS` registry and its
`@command` decorator, and the options several subcommands share (`add_preset`,
`add_runtime`, `add_training`, `preset_from_args`, ...).

The subcommands (`dashlib.commands.*`) import this module and `dashlib.cli`
imports them, so the command line has no import circle.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dashlib.config import MAX_SEED, ConfigError
from dashlib.registry import Registry


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    distributed: bool = False  # may run under torchrun with several processes
    #: what a user interrupting it (Ctrl-C) can do next
    interrupted: str = "nothing of it was kept; rerun the command"
    #: what a user whose run ran out of memory can lower
    out_of_memory: str = ("lower the batch sizes (--set train.batch_size, distill.batch_size, "
                          "sample.batch_size) or the model size")


#: the `interrupted` advice of the commands that train from checkpoints
RESUME_ADVICE = "rerun with --resume to continue from the last checkpoint"


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            distributed: bool = False, interrupted: str | None = None,
            out_of_memory: str | None = None) -> Callable[..., Any]:
    def decorator(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        advice = {k: v for k, v in (("interrupted", interrupted), ("out_of_memory", out_of_memory))
                  if v is not None}
        COMMANDS.add(name, Command(help, add_arguments, run, distributed, **advice))
        return run

    return decorator


# --- shared options ------------------------------------------------------------

def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def seed_arg(text: str) -> int:
    """argparse type of --seed/--seeds: an integer in [0, 2**32 - 1]."""
    value = _int_arg(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range: seeds lie in [0, {MAX_SEED}]")
    return value


def workers_arg(text: str) -> int:
    """argparse type of --workers: a whole number of processes, at least 1."""
    value = _int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: at least 1 worker process is needed")
    return value


def count_arg(text: str) -> int:
    """argparse type of --steps and --n: a whole number, at least 1 (refused under the
    option's own name, not the config field it sets)."""
    value = _int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: give a whole number >= 1")
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set train.lr=3e-4 --set data.data_root=/data` -> {"train.lr": 3e-4, ...}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=3e-4), got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError as err:
            if raw.lstrip().startswith(("[", "{")):  # meant as JSON: a plain string would mislead
                raise ConfigError(f"--set {item!r}: the value starts as a JSON list or object but does "
                                  f"not parse ({err.msg} at character {err.pos}); e.g. "
                                  f"--set 'eval.seeds=[42, 123]'") from None
            out[key] = raw
    return out


def add_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="digits", help="preset name (default: digits)")
    add_overrides(p)
    add_data(p)


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set train.lr=3e-4 (repeatable)")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="where the dataset lives (relative to this directory); "
                                       "the same as --set data.data_root=DIR")
    p.add_argument("--download", action="store_true",
                   help="allow torchvision to download the dataset (--set data.download=true)")


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set, --data-root and --download as one dict of dotted overrides; a relative
    data root is made absolute against the caller's working directory."""
    from dashlib.io import absolute

    overrides = parse_set(getattr(args, "overrides", []))
    if getattr(args, "data_root", None):
        given = overrides.get("data.data_root")
        if given is not None and absolute(str(given)) != absolute(args.data_root):
            raise ConfigError(f"--data-root {args.data_root} and --set data.data_root={given} name two "
                              f"data roots; give one of them")
        overrides["data.data_root"] = args.data_root
    if getattr(args, "download", False):
        overrides["data.download"] = True
    if isinstance(overrides.get("data.data_root"), str):
        overrides["data.data_root"] = str(absolute(overrides["data.data_root"]))
    return overrides


def add_runtime(p: argparse.ArgumentParser, speed: bool = True) -> None:
    """--device and --no-progress; with `speed`, the speed options of `runtime_from_args` too
    (only for commands that pass them on: the others would ignore them silently)."""
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if not speed:
        return
    p.add_argument("--compile", action="store_true", help="torch.compile the UNets (slow start)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="NHWC memory layout (default auto: by the measured rule table in dashlib.runtime)")
    p.add_argument("--freeze", default="auto", choices=("auto", "on", "off"),
                   help="sample through a frozen TorchScript graph (default auto: by the measured rule "
                        "table in dashlib.runtime, small models on CPU)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="DataLoader workers gathering and pinning training batches (default 0)")
    p.add_argument("--sample-amp", default="none", choices=("none", "auto", "bf16", "fp16"),
                   help="autocast while sampling (default none: fp32; auto: bf16/fp16 on CUDA, bf16 on a CPU "
                        "with AMX or AVX-512 BF16 for models of base width >= 64)")


def runtime_from_args(args: argparse.Namespace) -> Any:
    """The speed options of `add_runtime` as a `dashlib.runtime.Runtime`."""
    from dashlib.runtime import Runtime

    return Runtime(compile=args.compile, channels_last=args.channels_last,
                   loader_workers=args.loader_workers, sample_amp=args.sample_amp,
                   freeze=args.freeze)


def add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=count_arg, help="training steps (default: the preset's)")
    p.add_argument("--seed", type=seed_arg, help="random seed (default: the preset's)")
    add_force_resume(p)


def add_force_resume(p: argparse.ArgumentParser,
                     resume_help: str = "continue an interrupted run exactly") -> None:
    """--force (start over) and --resume (continue) contradict each other: one at most."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="retrain even if a finished run exists")
    g.add_argument("--resume", action="store_true", help=resume_help)


def check_data_root(preset: str, overrides: dict[str, Any]) -> None:
    """Refuse a data root given for a dataset that reads no files (digits, synthetic),
    which would otherwise be ignored: most likely `data.name` was left out. An image folder
    without one is read from the preset's default root: a note names it, since --data-root
    was most likely forgotten."""
    from dashlib.data import is_user_folder
    from dashlib.presets import PRESETS

    if preset not in PRESETS:
        return
    name = overrides.get("data.name", PRESETS.get(preset).data.name)
    if "data.data_root" not in overrides:
        from dashlib.distributed import is_main

        if is_user_folder(name) and is_main():
            from dashlib.io import absolute

            print(f"dash: note: no --data-root given: reading the image folder "
                  f"{absolute(PRESETS.get(preset).data.data_root)}", file=sys.stderr)
        return
    if reads_no_files(name):
        from dashlib.data import DATASETS

        readers = [n for n in DATASETS.names() if DATASETS.get(n).reads_files]
        raise ConfigError(f"--data-root (data.data_root) is given, but the dataset {name!r} reads no files; "
                          f"name the data it holds with --set data.name=..., one of: {', '.join(readers)} "
                          f"(imagefolder: one sub-folder of images per class)")


def reads_no_files(name: object) -> bool:
    """Whether `name` is a registered dataset that reads no files (digits, synthetic)."""
    from dashlib.data import DATASETS

    return isinstance(name, str) and name in DATASETS and not DATASETS.get(name).reads_files


def preset_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    from dashlib.presets import get_preset

    overrides = data_overrides(args)
    check_data_root(args.preset, overrides)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return get_preset(args.preset, **overrides)


# --- entry point --------------------------------------------------------------
