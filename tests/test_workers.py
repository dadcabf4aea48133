"""Pool workers die with the process that started them (`dashlib.workers`): a `dash` command
or sweep killed by SIGKILL used to leave its idle workers behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from dashlib.distill.run import _worker_init
from dashlib.evaluate import _init_worker

if __name__ == "__main__":
    pools = [ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(os.getpid(),)),
             ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(1, os.getpid()))]
    print(" ".join(str(pool.submit(os.getpid).result()) for pool in pools), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper that may never come in a container."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_distillation_and_evaluation_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "pools.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)  # no chance to shut its pools down
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        for pid in workers if "workers" in locals() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_asking_for_the_signal_is_accepted_here():
    """In a child of its own: the request would otherwise outlive the test in pytest's process."""
    code = "import os; from dashlib.workers import die_with_parent; print(die_with_parent(os.getppid()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(sys.platform.startswith("linux"))
