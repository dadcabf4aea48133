"""Pool worker processes that do not outlive the process that started them.

A `dash` command or `bench/claims_sweep.py` stopped by SIGTERM or SIGKILL cannot shut
its process pools down: their spawned workers would wait on a queue nobody writes to,
idle but holding their memory, until someone kills them by hand. On Linux each worker
asks the kernel for SIGTERM when its parent exits (prctl PR_SET_PDEATHSIG); on other
systems nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

#: prctl's option number for "signal me when my parent exits" (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """Have this process receive SIGTERM when `parent`, the process that started it, exits.
    Returns whether the kernel took the request (False off Linux). A parent that is already
    gone (it exited before the request was made) ends this process at once."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        taken = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no C library to ask: the worker lives as before
        return False
    if os.getppid() != parent:  # orphaned before the request: no signal would ever come
        os._exit(1)
    return taken
