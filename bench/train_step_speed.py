"""One training step of dash's default path against the old configuration.

The baseline is a plain ADM training step (q_sample, epsilon MSE, backward,
gradient clipping, AdamW) built from dash's own modules in the configuration
dash had before issue 17, which measured at parity with the authors' released
UNet (dash / authors 0.96 student, 0.99 teacher): NCHW weights, attention fed
transposed (non-contiguous) q/k/v, and the for-loop AdamW. It is compared
with the same step under the current defaults (`Runtime()` and
`dashlib.runtime.adamw_options`: contiguous attention, channels-last, fused
AdamW and the preset's `train.amp` (cifar: "fp16") under `amp_dtype`, which on
CPU autocasts to bf16 where the CPU has bf16 instructions (AMX or AVX-512 BF16), from
base width 64: the rule
tables decide each lever). Three
variants show what each lever contributes: channels-last only, fused AdamW only,
and the default path kept in fp32 (`default_fp32`).

All variants start from the same weights and batch and are timed in
interleaved rounds in one process at each thread count; the JSON holds the
per-round ratios (median, min, max, spread) and the load average before and
after, since absolute times on a shared machine mean little. Both the wall clock
and the process's CPU clock are recorded; `ratio_to_old` (the headline) uses
the CPU clock at one thread on CPU, where it leaves out the time spent waiting
for a core on a shared machine, and the wall clock otherwise.
Writes bench/results/train_step_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import interleaved_rounds, load_average, ratio_stats, write
from torch import Tensor, nn

from dashlib.device import autocast
from dashlib.diffusion import Diffusion
from dashlib.presets import get_preset
from dashlib.runtime import Runtime, adamw_options, amp_dtype, cpu_bf16_fast, to_channels_last
from dashlib.unet import AttnBlock, build_unet, count_params


def transposed_attention(self: AttnBlock, x: Tensor) -> Tensor:
    """AttnBlock.forward as it was before issue 17: strided q/k/v (the math kernel)."""
    b, c, h, w = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
    )[:, 0]
    return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def with_old_attention(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, AttnBlock):
            m.forward = types.MethodType(transposed_attention, m)
    return model


VARIANTS: dict[str, dict[str, bool]] = {
    # channels_last: True forces NHWC (the lever alone); None leaves it to the rules
    "old": {"old_attention": True, "channels_last": False, "fused": False},
    "channels_last_only": {"old_attention": True, "channels_last": True, "fused": False},
    "fused_only": {"old_attention": True, "channels_last": False, "fused": True},
    "default_fp32": {"old_attention": False, "channels_last": None, "fused": True, "amp": "none"},
    "default": {"old_attention": False, "channels_last": None, "fused": True, "amp": "preset"},
}
# With --bf16: the default path with bf16 autocast forced, whatever the rule says (the
# measurement behind dashlib.runtime.CPU_BF16_MIN_CH at the widths the rule leaves in fp32),
# and the old configuration (NCHW, transposed attention) with bf16 forced, the setting of
# issue 17's "bf16 autocast was slower" on an AMD EPYC; and the default path in bf16 in
# each layout (the measurement behind dashlib.runtime.CPU_BF16_CHANNELS_LAST).
BF16 = {"default_bf16": {"old_attention": False, "channels_last": None, "fused": True, "amp": "bf16"},
        "default_bf16_nchw": {"old_attention": False, "channels_last": False, "fused": True, "amp": "bf16"},
        "default_bf16_nhwc": {"old_attention": False, "channels_last": True, "fused": True, "amp": "bf16"},
        "old_bf16": {"old_attention": True, "channels_last": False, "fused": False, "amp": "bf16"}}
# With --compile: the default path with the UNet compiled (torch.compile, inductor).
COMPILED = {"compiled": {"old_attention": False, "channels_last": None, "fused": True, "amp": "preset",
                         "compiled": True}}


def train_step(cfg, diffusion: Diffusion, batch: int, device: torch.device, old_attention: bool,
               channels_last: bool | None, fused: bool, amp: str = "none",
               compiled: bool = False) -> Callable[[], None]:
    model = build_unet(cfg, seed=0).to(device).train()
    if old_attention:
        with_old_attention(model)
    dtype = amp_dtype(device, amp, cfg.ch)
    layout = "auto" if channels_last is None else ("on" if channels_last else "off")
    to_channels_last(model, Runtime(channels_last=layout), device, dtype)  # as the Trainer does
    if compiled:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0,
                            **(adamw_options(device) if fused else {}))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)
    t = diffusion.sample_t(batch, g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    x_t = diffusion.q_sample(x0, t, eps)

    def step() -> None:
        with autocast(device, dtype):  # as dashlib.train.Trainer: the forward and loss only
            loss = (model(x_t, t, y).float() - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def first_call_s(step: Callable[[], None]) -> float:
    """Wall seconds of the first step (with torch.compile: compiling forward and backward)."""
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def compare(preset: str, role: str, batch: int, device: torch.device, repeat: int,
            cpu_clock: bool, compiled: bool = False, bf16: bool = False) -> dict:
    p = get_preset(preset)
    cfg, diffusion = getattr(p, role), Diffusion(p.diffusion)
    chosen = {**VARIANTS, **(BF16 if bf16 else {}), **(COMPILED if compiled else {})}
    variants = {name: {**v, "amp": p.train.amp} if v.get("amp") == "preset" else v  # cifar: "fp16"
                for name, v in chosen.items()}
    steps = {name: train_step(cfg, diffusion, batch, device, **v) for name, v in variants.items()}
    row = {"preset": preset, "role": role, "params": count_params(build_unet(cfg, 0)), "batch": batch,
           "amp": str(amp_dtype(device, p.train.amp, cfg.ch))}
    if compiled:
        row["compile_first_step_s"] = first_call_s(steps["compiled"])
    clocks = interleaved_rounds(steps, repeat=repeat, warmup=1)
    for clock, times in clocks.items():
        row[f"median_step_s_{clock}"] = {n: statistics.median(t) for n, t in times.items()}
        row[f"ratio_to_old_{clock}"] = {n: ratio_stats(times[n], times["old"])
                                        for n in variants if n != "old"}
    row["ratio_to_old"] = row["ratio_to_old_cpu" if cpu_clock else "ratio_to_old_wall"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["cifar10:student", "cifar10:teacher"],
                    help="preset:role pairs (default: the cifar sizes, 6.08M and 35.75M)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="train_step_speed", help="JSON file name in bench/results")
    ap.add_argument("--compile", action="store_true",
                    help="add the default path with the UNet torch.compile'd (first step's time reported)")
    ap.add_argument("--bf16", action="store_true",
                    help="add the default path and the old one with bf16 autocast forced "
                         "(default_bf16, old_bf16)")
    args = ap.parse_args()
    device = torch.device(args.device)
    load_start, rows = load_average(), []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for spec in args.models:
            preset, role = spec.split(":")
            cpu_clock = device.type == "cpu" and threads == 1
            row = {"threads": threads, "clock": "cpu" if cpu_clock else "wall",
                   **compare(preset, role, args.batch, device, args.repeat, cpu_clock, args.compile,
                             args.bf16)}
            rows.append(row)
            write(args.name, {"device": str(device), "cpu": cpu_model(), "cpu_bf16_fast": cpu_bf16_fast(),
                              "load_average_start": load_start,
                              "load_average_end": load_average(), "rows": rows})
            r = {n: v["median"] for n, v in row["ratio_to_old"].items()}
            d = row["ratio_to_old"]["default"]
            print(f"{row['clock']} clock {threads} thr {preset}:{role} default/old {d['median']:.3f} "
                  f"[{d['min']:.3f}, {d['max']:.3f}]  cl {r['channels_last_only']:.3f}"
                  f"  fused {r['fused_only']:.3f}  fp32 {r['default_fp32']:.3f}  amp {row['amp']}"
                  + (f"  forced bf16 {r['default_bf16']:.3f} (nchw {r['default_bf16_nchw']:.3f},"
                     f" nhwc {r['default_bf16_nhwc']:.3f})"
                     f"  old in bf16 {r['old_bf16']:.3f}"
                     if args.bf16 else "")
                  + (f"  compiled {r['compiled']:.3f} (first step {row['compile_first_step_s']:.0f} s)"
                     if args.compile else ""), flush=True)


if __name__ == "__main__":
    main()
