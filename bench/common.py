"""Helpers shared by the benchmarks: timing, environment facts, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dashlib.allocator import tune_allocator

RESULTS = Path(__file__).parent / "results"
# Benchmarks measure dash as its commands run it: with the allocator tuned (a no-op
# with DASH_MALLOC=system, which bench/allocator_speed.py uses for its baseline).
tune_allocator()


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_many(fns: dict[str, Callable[[], Any]], repeat: int = 5,
                warmup: int = 2) -> dict[str, float]:
    """Median wall time of each function, timed in interleaved rounds (the order rotates
    every round), so load that drifts during the run biases none of them: use it for
    ratios between functions."""
    wall = interleaved_rounds(fns, repeat, warmup)["wall"]
    return {n: statistics.median(t) for n, t in wall.items()}


def interleaved_rounds(fns: dict[str, Callable[[], Any]], repeat: int = 5,
                       warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Times of each function in `repeat` interleaved rounds (one call of each per round,
    the order rotating), so round i of every function saw about the same load.

    Two clocks: "wall" (perf_counter) and "cpu" (this process's CPU time, all threads).
    On a shared machine the CPU clock leaves out the time the process waited for a core,
    so at one thread its ratios are far steadier than wall-clock ones; with more threads
    it also counts threads spinning while they wait for each other.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in names},
                                                 "cpu": {n: [] for n in names}}
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            times["wall"][name].append(time.perf_counter() - t0)
            times["cpu"][name].append(time.process_time() - c0)
    return times


def ratio_stats(numer: list[float], denom: list[float]) -> dict[str, float]:
    """Per-round ratios numer[i] / denom[i]: median, min, max and spread
    ((max - min) / median), so readers see how much the load moved them."""
    r = sorted(a / b for a, b in zip(numer, denom, strict=True))
    med = statistics.median(r)
    return {"median": med, "min": r[0], "max": r[-1], "spread": (r[-1] - r[0]) / med,
            "rounds": len(r)}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def host_probe(repeat: int = 10) -> dict[str, Any]:
    """How fast this host runs the work `make reproduce` is made of, so that wall times
    taken on different hosts (which differ by 1.5x and more) can be compared: the
    median of `repeat` digits teacher and student training steps (batch 64, one
    thread, the runtime's rules, fresh weights), the teacher's step on two threads too
    (the teacher notebook trains on two: hosts differ in how well two threads share a
    step), and the load average beside them."""
    from train_throughput import throughput  # noqa: PLC0415 (a bench module: imports dashlib)

    from dashlib.presets import get_preset

    preset, cpu, threads = get_preset("digits"), torch.device("cpu"), torch.get_num_threads()
    out: dict[str, Any] = {}
    try:
        for n, role in ((1, "teacher"), (1, "student"), (2, "teacher")):
            torch.set_num_threads(n)
            suffix = "" if n == 1 else f"_{n}threads"
            out[f"digits_{role}_step{suffix}_s"] = round(throughput(getattr(preset, role), 64, cpu,
                                                                    repeat)["step_s"], 4)
    finally:
        torch.set_num_threads(threads)
    return {**out, "load_average": load_average(), "batch": 64}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "git_commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data},
                               indent=2) + "\n")
    print(path)
    return path


# --- FLOPs and memory --------------------------------------------------------

def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of fn() as torch.utils.flop_counter counts them: 2 per multiply-add in
    convolutions, matmuls and attention (element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def unet_flops(cfg, rows: int, backward: bool = False) -> int:
    """FLOPs of one UNet forward (and backward) on `rows` rows, counted on the meta
    device: no arithmetic is done, so the cifar teacher at batch 128 costs nothing."""
    from dashlib.unet import UNet

    with torch.device("meta"):
        model = UNet(cfg).requires_grad_(backward)
        x = torch.zeros(rows, cfg.in_channels, cfg.image_size, cfg.image_size)
        t = torch.zeros(rows, dtype=torch.long)
        y = torch.zeros(rows, dtype=torch.long)

        def run() -> None:
            out = model(x, t, y)
            if backward:
                out.square().mean().backward()

        return count_flops(run)


_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory while fn() runs.

    CUDA: torch.cuda.max_memory_allocated (tensors, weights included).
    CPU (Linux): growth of the peak resident set (VmHWM, reset by writing 5 to
    /proc/self/clear_refs) over the resident set before fn(): what fn() added,
    i.e. activations, gradients, optimizer state created inside, allocator slack.
    """
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync()
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)),
                "method": "cuda max_memory_allocated"}
    if not _STATUS.exists():
        return {"peak_bytes": None, "method": "unavailable (no /proc/self/status)"}
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return {"peak_bytes": (_status_kib("VmHWM") - before) * 1024,
            "method": "cpu VmHWM growth over VmRSS before"}


# --- one CFG forward per model size (freeze_speed.py, layout_speed.py) -------------------

MODEL_SIZES = ["digits:student", "digits:teacher", "digits16:student", "digits16:teacher",
               "cifar10:student", "cifar10:teacher"]


def model_args(ap: argparse.ArgumentParser, models: list[str], repeat: int) -> None:
    """The options every per-model forward bench takes."""
    ap.add_argument("--models", nargs="+", default=models, help="preset:role pairs")
    ap.add_argument("--batch", type=int, default=64, help="samples; the forward has 2x rows (CFG)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=repeat)
    ap.add_argument("--device", default="cpu")


def unet_inputs(cfg: Any, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Seeded (x_t, t, y) for `rows` rows of a UNet of config `cfg`, null labels included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = torch.randint(0, 1000, (rows,), generator=g).to(device)
    y = torch.randint(0, cfg.num_classes + 1, (rows,), generator=g).to(device)
    return x, t, y


def no_grad_call(model: torch.nn.Module, *args: torch.Tensor) -> Callable[[], None]:
    """model(*args) without gradients, as sampling calls it."""
    def run() -> None:
        with torch.no_grad():
            model(*args)

    return run
