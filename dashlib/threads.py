"""How many CPU threads dash uses, decided once per process.

torch's default (one thread per core, OpenMP threads that spin while they
wait) thrashes when the cores are busy: on a loaded 2-core machine teacher
training ran ~20x slower with 2 threads than with 1. So every command takes
`--threads N`, and the default is the cores this process may run on, capped
by `OMP_NUM_THREADS` when that is set.
"""

from __future__ import annotations

import os
import sys

from dashlib.allocator import tune_allocator
from dashlib.config import ConfigError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The available cores, capped by a valid `OMP_NUM_THREADS`."""
    cores = available_cores()
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return cores
    return max(1, min(cores, cap))


def check_threads(threads: object) -> int:
    """`threads` as a positive int, or a `ConfigError` saying what is allowed."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads = {threads!r} is invalid: must be a whole number >= 1 "
                          f"(this machine offers {available_cores()} cores)")
    return threads


def capped_threads(threads: int) -> int:
    """`threads`, or the available cores where it asks for more (with a note on stderr):
    more threads than cores made training ~20x slower, and 1,000 on 2 cores never finished
    a step."""
    cores = available_cores()
    if threads <= cores:
        return threads
    print(f"dash: note: threads = {threads} is more than the {cores} cores this process may run "
          f"on; using {cores}", file=sys.stderr)
    return cores


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (and OMP_NUM_THREADS for child processes); returns the count.

    Also tunes glibc's allocator for this process and its children
    (`dashlib.allocator`): every entry point that sets threads wants both.
    """
    import torch

    tune_allocator()
    n = default_threads() if threads is None else capped_threads(check_threads(threads))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
