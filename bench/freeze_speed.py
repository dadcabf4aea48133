"""A frozen TorchScript graph against the eager UNet for sampling, per model width:
the data behind `dashlib.runtime.FREEZE_CH` on this device.

One no-grad forward of 2 x batch rows (a CFG sampling step) of the teacher and
the student of each preset size, eager and through `dashlib.runtime.FrozenUNet`,
both in the layout the runtime's rules pick, timed in interleaved rounds (CPU
clock at one thread on CPU, where it leaves out time spent waiting for a core;
wall clock otherwise). The JSON also holds the largest output difference and
the seconds tracing and freezing took (paid once per model and input layout).
Writes bench/results/freeze_speed.json.

`--onednn-fusion` also times a third graph, traced and run with
`torch.jit.enable_onednn_fusion(True)` (oneDNN Graph fuses convolutions with the
element-wise operations around them), against the frozen one: a lever for the
small models' per-layer work that dash does not use (docs/scaling.md).
Writes bench/results/freeze_speed_onednn.json then.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from common import (
    MODEL_SIZES,
    interleaved_rounds,
    load_average,
    model_args,
    no_grad_call,
    ratio_stats,
    unet_inputs,
    write,
)

from dashlib.presets import get_preset
from dashlib.runtime import FrozenUNet, Runtime, to_channels_last
from dashlib.unet import build_unet


def model_pair(cfg, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(eager, frozen) of one model whose zero-initialised layers are perturbed, so the
    output (and the difference between the two) is not trivially zero."""
    model = build_unet(cfg, 0).to(device).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(device))
    to_channels_last(model, Runtime(), device)
    return model, FrozenUNet(model)


@contextlib.contextmanager
def onednn_fusion() -> Iterator[None]:
    """oneDNN Graph fusion on for TorchScript within the block (a process-wide flag)."""
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(False)


def fused_graph(model: torch.nn.Module, *args: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A traced, frozen graph of `model` run with oneDNN Graph fusion; the profiling
    executor fuses on its first calls, so three are made here."""
    with onednn_fusion(), torch.no_grad():
        graph = torch.jit.freeze(torch.jit.trace(model, args, check_trace=False))
        for _ in range(3):
            graph(*args)

    def run() -> torch.Tensor:
        with onednn_fusion(), torch.no_grad():
            return graph(*args)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(ap, ["tiny:student", "tiny:teacher", *MODEL_SIZES], repeat=9)
    ap.add_argument("--onednn-fusion", action="store_true",
                    help="also time a frozen graph run with oneDNN Graph fusion")
    args = ap.parse_args()
    name = "freeze_speed_onednn" if args.onednn_fusion else "freeze_speed"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
    load_start, rows = load_average(), []
    for spec in args.models:
        preset, role = spec.split(":")
        cfg = getattr(get_preset(preset), role)
        eager, frozen = model_pair(cfg, device)
        x, t, y = unet_inputs(cfg, 2 * args.batch, device)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = frozen(x, t, y)
            trace_s = time.perf_counter() - t0
            max_diff = (out - eager(x, t, y)).abs().max().item()

        calls = {"eager": no_grad_call(eager, x, t, y), "frozen": no_grad_call(frozen, x, t, y)}
        if args.onednn_fusion:
            calls["fused"] = fused_graph(eager, x, t, y)
        times = interleaved_rounds(calls, repeat=args.repeat, warmup=2)[clock]
        r = ratio_stats(times["frozen"], times["eager"])
        row = {"preset": preset, "role": role, "ch": cfg.ch, "rows": 2 * args.batch, "clock": clock,
               "frozen_over_eager": r, "trace_s": trace_s, "max_abs_diff": max_diff,
               "output_abs_max": out.abs().max().item(),
               "median_s": {n: statistics.median(v) for n, v in times.items()}}
        if args.onednn_fusion:
            row["fused_over_frozen"] = ratio_stats(times["fused"], times["frozen"])
            row["fused_max_abs_diff"] = (calls["fused"]() - out).abs().max().item()
        rows.append(row)
        fused = (f"  fused / frozen {row['fused_over_frozen']['median']:.3f} "
                 f"(max diff {row['fused_max_abs_diff']:.1e})" if args.onednn_fusion else "")
        print(f"{spec:18s} ch={cfg.ch:3d}: frozen / eager {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"
              f"  (trace {trace_s:.1f} s, max diff {max_diff:.1e})" + fused, flush=True)
        write(name, {"device": str(device), "threads": args.threads,
                     "load_average_start": load_start, "load_average_end": load_average(),
                     "rows": rows})


if __name__ == "__main__":
    main()
