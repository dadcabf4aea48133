"""The `dash` command line: one registered subcommand per job.

Subcommands live in `dashlib.commands.*` and register themselves with
`@command` (`dashlib.cliargs`, with the shared options); this module is the
entry point. Every
command prints progress to stderr and, as its last line on stdout, the
path of what it wrote. Known failures (bad config, missing data, unsafe or
mismatched checkpoint, unfinished run, non-finite loss, missing Inception
weights) print one `dash: error: ...` line and exit with status 2.

Commands registered with `distributed=True` also run under
`torchrun --nproc_per_node N -m dashlib -- COMMAND ...` (docs/scaling.md);
the others refuse to.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import typing
from collections.abc import Sequence
from typing import Any

from dashlib.cliargs import COMMANDS, data_overrides  # noqa: F401  (data_overrides: re-exported)
from dashlib.config import ConfigError
from dashlib.data import DataNotFoundError
from dashlib.device import is_out_of_memory
from dashlib.distributed import peer_lost, session
from dashlib.errors import EvaluationError
from dashlib.inception import InceptionWeightsError
from dashlib.io import CheckpointError, CorruptFileError, OutputPathError
from dashlib.registry import UnknownNameError
from dashlib.reproduce import ReproduceError
from dashlib.runs import RunStateError
from dashlib.threads import use_threads
from dashlib.train import NonFiniteLossError

KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataNotFoundError, CheckpointError, RunStateError, NonFiniteLossError,
    UnknownNameError, InceptionWeightsError, FileNotFoundError, ReproduceError, OutputPathError,
    CorruptFileError, EvaluationError, PermissionError,  # its message names the file
)


#: Option values that are negative numbers, including -inf/-nan and exponents ("-1e-3"),
#: so `--w -inf` reaches the value checks instead of reading as an unknown option.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class DashArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as the same single `dash: error:` line (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse's own pattern knows only "-1" and "-.5"; no dash option looks like a number
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> typing.NoReturn:
        print(f"dash: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def package_version() -> str:
    """The installed distribution's version; the source tree's `__version__` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dashlib")
    except PackageNotFoundError:
        import dashlib

        return dashlib.__version__


def build_parser() -> argparse.ArgumentParser:
    import dashlib.commands  # noqa: F401  (registers every subcommand)

    parser = DashArgumentParser(
        prog="dash", description="DASH: dual-branch score distillation, reproduced.")
    parser.add_argument("--version", action="version", version=f"dash {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        cmd = COMMANDS.get(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("--threads", type=int, default=None,
                       help="CPU threads (default: the cores this process may use, capped by "
                            "OMP_NUM_THREADS when set)")
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m dashlib -- sample --run X` (docs/scaling.md)
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        use_threads(args.threads)
        with session(args.command, COMMANDS.get(args.command).distributed,
                     getattr(args, "device", "auto")):
            return int(args.func(args))
    except KNOWN_ERRORS as err:
        print(f"dash: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch reports running out of memory as a RuntimeError
        if peer_lost(err):  # a gloo traceback named no cause and no remedy
            print(f"dash: error: another process of this torchrun job stopped "
                  f"({str(err).splitlines()[0][:200]}); {COMMANDS.get(args.command).interrupted}",
                  file=sys.stderr)
            return 2
        if not is_out_of_memory(err):
            raise
        print(f"dash: error: out of memory ({str(err).splitlines()[0][:200]}); "
              f"{COMMANDS.get(args.command).out_of_memory}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from dashlib.reproduce import silence_interrupt_noise

        silence_interrupt_noise()  # papermill's and asyncio's reports of a kernel stopped under them
        print(f"dash: interrupted; {COMMANDS.get(args.command).interrupted}", file=sys.stderr)
        return 130


def console() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `dash info ... | head`: the reader left, which is no error of dash's
        # the interpreter would flush stdout again at exit and fail the same way: point it at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    sys.exit(code)


if __name__ == "__main__":
    console()
