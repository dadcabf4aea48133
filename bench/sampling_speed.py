"""Student against teacher sampling speed, next to their FLOPs ratio.

One full DDIM run (`--steps`, default 50) with classifier-free guidance (TAG)
at batch 64 for the teacher and the student of each preset, the paper's
Table 4 setting (docs/paper.md: T4, 14.2 s vs 3.9 s, 1247.8G vs 216.3G FLOPs per
sample). FLOPs and the ratios come from `dashlib.efficiency` (the sampler run
on the meta device under torch.utils.flop_counter, 2 per multiply-add; a CFG
step is one forward of 2B rows). Unlike `dash efficiency`, the two models are
timed in interleaved rounds (medians), so load that drifts during a benchmark
on a shared machine biases neither.

  speedup = teacher latency / student latency
  flops_ratio = teacher FLOPs / student FLOPs
  speedup_over_flops = speedup / flops_ratio  (1.0: the student is as much faster
                                               as its FLOPs promise)

With `--sample-amp` the models run under autocast (`dashlib.runtime.amp_dtype`; default: fp32, as
`dash sample`); `--compile` adds torch.compile (its compile time, the first
call's, is reported); `--freeze` sets the frozen-graph rule (default auto:
`dashlib.runtime.FREEZE_CH`; the first call, which traces, is a warm-up
round). Each (thread count, preset) row also holds the per-round
speedup_over_flops (median, min, max, spread = (max - min) / median) and the
JSON the load average at start and end. Latencies are wall-clock medians; the
speedups use the process's CPU clock at one thread on CPU (it leaves out the
time spent waiting for a core on a shared machine; `clock` in each row says
which), the wall clock otherwise. On CPU the cifar sizes run
`--steps-cifar` DDIM steps (default 2: 50 steps of the teacher at 128 rows take
~20 minutes on 2 cores); the ratios are per UNet forward and do not depend on
the step count. Writes bench/results/sampling_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from common import RESULTS, interleaved_rounds, load_average, ratio_stats, write

from dashlib.config import SampleConfig
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.efficiency import compare as ratios
from dashlib.efficiency import sampling_flops
from dashlib.presets import get_preset
from dashlib.runtime import Runtime, inference_model
from dashlib.sampling import DDIMSampler, balanced_labels
from dashlib.unet import build_unet, count_params


def sampling_run(cfg, diffusion: Diffusion, sample: SampleConfig, batch: int, device: torch.device,
                 runtime: Runtime) -> Callable[[], object]:
    model = inference_model(build_unet(cfg, seed=0).to(device).eval(), runtime, device)
    sampler = DDIMSampler(diffusion, sample)
    y = balanced_labels(batch, cfg.num_classes)
    g = torch.Generator().manual_seed(0)
    return lambda: sampler.sample(model, y, g)


def first_call_s(fn: Callable[[], object]) -> float:
    """Seconds of the first call (with torch.compile: compiling plus one run)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name: str, batch: int, steps: int, device: torch.device, runtime: Runtime,
            repeat: int, cpu_clock: bool) -> dict[str, float]:
    preset = get_preset(name)
    diffusion = Diffusion(preset.diffusion)
    sample = SampleConfig(steps=steps, guidance="tag", batch_size=batch)
    cost: dict[str, dict[str, float]] = {}
    runs = {}
    for role in ("teacher", "student"):
        cfg = getattr(preset, role)
        model = build_unet(cfg, seed=0)
        cost[role] = {"params": count_params(model),
                      "flops": sampling_flops(model, diffusion, sample, batch)}
        runs[role] = sampling_run(cfg, diffusion, sample, batch, device, runtime)
    if runtime.compile:
        for role, run in runs.items():
            cost[role]["first_call_s"] = first_call_s(run)
    clocks = interleaved_rounds(runs, repeat=repeat, warmup=1)
    clock = "cpu" if cpu_clock else "wall"
    times = clocks[clock]
    for role in runs:
        cost[role]["latency_s"] = statistics.median(clocks["wall"][role])
        cost[role]["cpu_s"] = statistics.median(clocks["cpu"][role])
    out = {f"{role}_{k}": v for role, c in cost.items() for k, v in c.items()}
    out.update({f"{role}_flops_per_sample": c["flops"] / batch for role, c in cost.items()})
    key = "cpu_s" if cpu_clock else "latency_s"
    r = ratios(*({**cost[role], "latency_s": cost[role][key]} for role in ("teacher", "student")))
    per_round = ratio_stats(times["teacher"], times["student"])
    over = {k: (v / r["flops_ratio"] if k in ("median", "min", "max") else v)
            for k, v in per_round.items()}
    out.update(clock=clock, speedup=r["speedup"], flops_ratio=r["flops_ratio"],
               speedup_over_flops=r["speedup_over_flops_ratio"], speedup_over_flops_rounds=over)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "digits", "digits16", "cifar10"],
                    help="default: every preset size (cifar100 differs by 90 class rows only)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps-cifar", type=int, default=None,
                    help="DDIM steps for 32x32 presets (default: 2 on CPU, --steps on CUDA)")
    ap.add_argument("--threads", type=int, nargs="+", default=[0],
                    help="torch thread counts to run at (0: leave torch's default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both UNets")
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                    help="layout (default auto: dashlib.runtime's rule table)")
    ap.add_argument("--freeze", default="auto", choices=("auto", "on", "off"),
                    help="frozen TorchScript graphs (default auto: dashlib.runtime's rule table)")
    ap.add_argument("--sample-amp", default="none", choices=("none", "auto", "bf16", "fp16"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default="sampling_speed", help="JSON file name in bench/results")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the JSON (another run's presets or threads)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    runtime = Runtime(sample_amp=args.sample_amp, compile=args.compile,
                      channels_last=args.channels_last, freeze=args.freeze)
    presets = args.presets
    big_steps = args.steps_cifar or (args.steps if device.type == "cuda" else 2)
    load_start, rows = load_average(), []
    if args.append and (RESULTS / f"{args.name}.json").exists():
        rows = json.loads((RESULTS / f"{args.name}.json").read_text())["rows"]
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        for name in presets:
            steps = big_steps if get_preset(name).teacher.image_size >= 32 else args.steps
            cpu_clock = device.type == "cpu" and torch.get_num_threads() == 1
            r = compare(name, args.batch, steps, device, runtime, args.repeat, cpu_clock)
            rows.append({"preset": name, "threads": torch.get_num_threads(), "batch": args.batch,
                         "steps": steps, "sample_amp": args.sample_amp, "compile": args.compile,
                         "channels_last": args.channels_last, "freeze": args.freeze,
                         **r})
            o = r["speedup_over_flops_rounds"]
            print(f"{torch.get_num_threads()} thr {name:8s} teacher {r['teacher_latency_s']:.2f} s, "
                  f"student {r['student_latency_s']:.2f} s: speedup {r['speedup']:.2f}x vs FLOPs "
                  f"ratio {r['flops_ratio']:.2f}x; speedup/FLOPs {o['median']:.3f} "
                  f"[{o['min']:.3f}, {o['max']:.3f}]", flush=True)
            write(args.name, {"device": str(device), "load_average_start": load_start,
                              "load_average_end": load_average(), "rows": rows})


if __name__ == "__main__":
    main()
