"""Where a UNet forward spends its time, teacher against student: what limits small models.

For each preset size, one no-grad forward of 2 x batch rows (a CFG sampling
step) of the teacher and of the student, profiled with torch.profiler over
`--iters` calls: self CPU time per operator family (convolution, group norm,
SiLU, attention, copies/cat/add, the rest), operator calls per forward, and the
convolutions' achieved GFLOP/s (FLOPs from torch.utils.flop_counter). If the
student were as efficient as the teacher, its time share per FLOP would match;
`conv_gflops_per_s` and `us_per_op` show why it is not. `conv_bound_speedup_over_flops`
is the speedup / FLOPs ratio the student would reach if every operator but the
convolutions took no time in both models (fusing GroupNorm, SiLU and the
additions away, at best): (teacher conv time / student conv time) / FLOPs ratio.
Below 0.8 it says no fusion can reach issue 17's goal; only faster narrow
convolutions can. Which ones: `conv_kinds` times every convolution of the forward
alone on the input it saw (eager, the model's layout, best of `--rounds`) and groups
them by kind (the image's in/out convolutions, 1x1, 3x3 by map size), with each
kind's milliseconds per forward, share of the convolution time and GFLOP/s.
Threads: `--threads`
(default 1, where profiler times are not blurred by threads waiting for each
other); each model is profiled `--rounds` times, alternating, and its fastest
round kept, since other load on a shared machine only adds time.
Writes bench/results/forward_profile.json.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from common import load_average, unet_inputs, write
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dashlib.presets import get_preset
from dashlib.runtime import Runtime, to_channels_last
from dashlib.unet import build_unet

FAMILIES = {  # operator name fragment -> family (first match wins)
    "convolution": "conv", "group_norm": "group_norm", "silu": "silu",
    "scaled_dot_product": "attention", "copy_": "copy/cat/add", "cat": "copy/cat/add",
    "add": "copy/cat/add", "addmm": "linear",
}


def family(op: str) -> str:
    return next((f for frag, f in FAMILIES.items() if frag in op), "other")


def model_and_inputs(cfg, rows: int, runtime: Runtime) -> tuple[nn.Module, tuple[Tensor, Tensor, Tensor]]:
    """The UNet in the layout the speed rules pick for sampling, and one batch of (x_t, t, y)."""
    model = to_channels_last(build_unet(cfg, 0).eval(), runtime, torch.device("cpu"), sampling=True)
    return model, unet_inputs(cfg, rows, torch.device("cpu"))


def profile_forward(cfg, rows: int, iters: int, runtime: Runtime) -> dict:
    model, (x, t, y) = model_and_inputs(cfg, rows, runtime)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x, t, y)
        conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
        for _ in range(2):
            model(x, t, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(x, t, y)
    us: dict[str, float] = defaultdict(float)
    calls = 0
    for e in prof.key_averages():
        if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
            us[family(e.key)] += e.self_cpu_time_total / iters
            calls += e.count / iters
    total = sum(us.values())
    return {"ms_per_forward": total / 1e3, "share": {k: v / total for k, v in sorted(us.items())},
            "aten_calls_per_forward": calls, "us_per_op": total / calls,
            "flops": counter.get_total_flops(),
            "conv_ms_per_forward": us["conv"] / 1e3,
            "conv_gflops_per_s": conv_flops / (us["conv"] * 1e-6) / 1e9}


def conv_kind(conv: nn.Conv2d, x: Tensor, image_channels: int) -> str:
    """A convolution's kind: "image in/out", "1x1", or "3x3 on HxW" (its input map;
    " stride 2" for a downsampling one)."""
    if image_channels in (conv.in_channels, conv.out_channels):
        return "image in/out"
    k = "x".join(map(str, conv.kernel_size))
    stride = "" if set(conv.stride) == {1} else f" stride {conv.stride[0]}"
    return k + stride if k == "1x1" else f"{k} on {x.shape[-2]}x{x.shape[-1]}{stride}"


def best_us(call: Callable[[], object], reps: int, rounds: int) -> float:
    """Fastest mean time of `reps` calls over `rounds` rounds, in microseconds."""
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def conv_kinds(model: nn.Module, inputs: tuple[Tensor, ...], image_channels: int,
               reps: int = 5, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Every Conv2d of one forward timed alone on the input it saw, grouped by
    `conv_kind`: {kind: {calls, ms_per_forward, share, gflop_per_forward, gflops_per_s}},
    slowest kind first.
    FLOPs per call: 2 x output elements x (C_in / groups) x kernel area."""
    seen: list[tuple[nn.Conv2d, Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(*inputs)
        for h in hooks:
            h.remove()
        kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "us": 0.0, "flops": 0.0})
        for conv, x in seen:
            out = conv(x)
            k = kinds[conv_kind(conv, x, image_channels)]
            k["calls"] += 1
            k["us"] += best_us(lambda conv=conv, x=x: conv(x), reps, rounds)
            k["flops"] += 2 * out.numel() * conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    total = sum(k["us"] for k in kinds.values())
    return {name: {"calls": k["calls"], "ms_per_forward": k["us"] / 1e3, "share": k["us"] / total,
                   "gflop_per_forward": k["flops"] / 1e9, "gflops_per_s": k["flops"] / k["us"] / 1e3}
            for name, k in sorted(kinds.items(), key=lambda kv: -kv[1]["us"])}


def ratios(teacher: dict, student: dict) -> dict:
    """Student speedup over the teacher: measured, and with only the convolutions timed."""
    flops_ratio = teacher["flops"] / student["flops"]
    time_ratio = teacher["ms_per_forward"] / student["ms_per_forward"]
    conv_ratio = teacher["conv_ms_per_forward"] / student["conv_ms_per_forward"]
    return {"flops_ratio": flops_ratio, "time_ratio": time_ratio,
            "speedup_over_flops": time_ratio / flops_ratio,
            "conv_bound_speedup_over_flops": conv_ratio / flops_ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["digits", "digits16", "cifar10"])
    ap.add_argument("--batch", type=int, default=64, help="samples; the forward has 2x rows (CFG)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                    help="layout (auto: the sampling speed rules' choice per width)")
    ap.add_argument("--name", default="forward_profile", help="JSON file name in bench/results")
    ap.add_argument("--rounds", type=int, default=3,
                    help="profiles per model, alternating; the fastest is kept (load only adds time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runtime = Runtime(channels_last=args.channels_last)
    load_start, rows = load_average(), []
    for name in args.presets:
        p = get_preset(name)
        r = {}
        for _ in range(args.rounds):  # alternating; keep each role's fastest round
            for role in ("teacher", "student"):
                new = profile_forward(getattr(p, role), 2 * args.batch, args.iters, runtime)
                if role not in r or new["ms_per_forward"] < r[role]["ms_per_forward"]:
                    r[role] = new
        for role in ("teacher", "student"):
            cfg = getattr(p, role)
            model, inputs = model_and_inputs(cfg, 2 * args.batch, runtime)
            r[role]["conv_kinds"] = conv_kinds(model, inputs, cfg.in_channels, rounds=args.rounds)
        ratio = ratios(r["teacher"], r["student"])
        rows.append({"preset": name, "rows": 2 * args.batch, **r, **ratio})
        print(f"{name}: teacher {r['teacher']['ms_per_forward']:.1f} ms, student "
              f"{r['student']['ms_per_forward']:.1f} ms (FLOPs ratio {ratio['flops_ratio']:.2f}); conv "
              f"GFLOP/s {r['teacher']['conv_gflops_per_s']:.0f} vs {r['student']['conv_gflops_per_s']:.0f}; "
              f"speedup / FLOPs {ratio['speedup_over_flops']:.2f}, convolutions alone "
              f"{ratio['conv_bound_speedup_over_flops']:.2f}",
              flush=True)
        for role in ("teacher", "student"):
            kinds = r[role]["conv_kinds"].items()
            print(f"  {role} convolutions: " + ", ".join(
                f"{kind} {k['share']:.0%} at {k['gflops_per_s']:.0f} GFLOP/s" for kind, k in kinds))
    write(args.name, {"device": "cpu", "threads": args.threads, "channels_last": args.channels_last,
                      "load_average_start": load_start, "load_average_end": load_average(), "rows": rows})


if __name__ == "__main__":
    main()
