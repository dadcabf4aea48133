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

With `--sample-amp` the models run under autocast on CUDA (default: fp32, as
`dash sample`). Writes bench/results/sampling_speed.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import timeit_many, write

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


def compare(name: str, batch: int, steps: int, device: torch.device, runtime: Runtime,
            repeat: int) -> dict[str, float]:
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
    for role, seconds in timeit_many(runs, repeat=repeat, warmup=1).items():
        cost[role]["latency_s"] = seconds
    out = {f"{role}_{k}": v for role, c in cost.items() for k, v in c.items()}
    out.update({f"{role}_flops_per_sample": c["flops"] / batch for role, c in cost.items()})
    r = ratios(cost["teacher"], cost["student"])
    out.update(speedup=r["speedup"], flops_ratio=r["flops_ratio"],
               speedup_over_flops=r["speedup_over_flops_ratio"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", help="default: digits (CPU), digits cifar10 (CUDA)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample-amp", default="none", choices=("none", "auto", "bf16", "fp16"))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    runtime = Runtime(sample_amp=args.sample_amp)
    presets = args.presets or (["digits", "cifar10"] if device.type == "cuda" else ["digits"])
    rows = []
    for name in presets:
        r = compare(name, args.batch, args.steps, device, runtime, args.repeat)
        rows.append({"preset": name, "batch": args.batch, "steps": args.steps,
                     "sample_amp": args.sample_amp, **r})
        print(f"{name:8s} teacher {r['teacher_latency_s']:.2f} s, student "
              f"{r['student_latency_s']:.2f} s: speedup {r['speedup']:.2f}x vs FLOPs ratio "
              f"{r['flops_ratio']:.2f}x")
    write("sampling_speed", {"device": str(device), "rows": rows})


if __name__ == "__main__":
    main()
