"""glibc's malloc tuned for PyTorch on CPU, decided once per process.

PyTorch allocates every activation of a forward and frees it again. glibc's
defaults hand blocks above its mmap threshold (128 KiB, rising to at most
32 MiB) fresh pages from the kernel and give freed memory at the top of the
heap back beyond its trim threshold, so each forward page-faults its
activations in again, zero-filled by the kernel. Measured here
(bench/allocator_speed.py, one 128-row CFG forward, one thread): about 1,100
page faults per forward of the digits student and 1.9 million per forward of
the cifar teacher, where a third of the time went to the kernel. With mmap
off and freed memory kept (`MALLOPT`), the same forwards fault a few dozen
times.

The cost: memory a process freed is kept for its next allocations instead of
going back to the system, so its resident size stays near its peak until it
exits. `DASH_MALLOC=system` keeps glibc's defaults; other C libraries (macOS,
musl) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator

# mallopt parameters (glibc's malloc.h) -> value: no mmap'd blocks, and freed memory
# at the heap's top kept up to 2 GiB (the largest value an int parameter takes).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MALLOPT: dict[int, int] = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
# The same settings as the environment variables glibc reads at start-up, so worker
# processes (spawned evaluation and distillation workers, notebook kernels) start tuned.
ENV: dict[str, str] = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
OPT_OUT = "DASH_MALLOC"
# glibc's own defaults for the same parameters (malloc.h, mallopt(3)).
SYSTEM_MALLOPT: dict[int, int] = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}

_applied: bool | None = None


def tune_allocator() -> bool:
    """Apply `MALLOPT` to this process and `ENV` to its future children; True if applied.

    Does nothing (False) unless the C library is glibc, when `DASH_MALLOC=system`,
    or when the user set glibc's MALLOC_* variables themselves.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.libc_ver()[0] != "glibc" or os.environ.get(OPT_OUT, "") == "system":
        return False
    if any(k in os.environ and os.environ[k] != v for k, v in ENV.items()):
        return False  # the user's own malloc settings win
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not all(libc.mallopt(param, value) == 1 for param, value in MALLOPT.items()):
        return False
    os.environ.update(ENV)
    _applied = True
    return True


def _tuned() -> bool:
    """Whether this process runs with `MALLOPT`: applied here, or inherited as `ENV` by a worker."""
    if _applied:
        return True
    return (_applied is None and platform.libc_ver()[0] == "glibc"
            and all(os.environ.get(k) == v for k, v in ENV.items()))


@contextlib.contextmanager
def system_heap() -> Iterator[None]:
    """glibc's default malloc for the block inside, then the tuning again.

    For work that allocates large buffers of changing sizes: the evaluation metrics'
    precision/recall holds N_ref x 1,024 distance blocks, and a heap that neither maps
    nor trims fragments under them (a 20,000-image reference peaked at 2.7 GB resident
    against 1.2 GB with glibc's defaults; 6 GB at 36,000). Large blocks are mapped and
    given back inside, and freed memory is trimmed on the way out. Nothing changes where
    the tuning is not in force (`DASH_MALLOC=system`, another C library)."""
    if not _tuned():
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    for param, value in SYSTEM_MALLOPT.items():
        libc.mallopt(param, value)
    try:
        yield
    finally:
        libc.malloc_trim(0)
        for param, value in MALLOPT.items():
            libc.mallopt(param, value)
