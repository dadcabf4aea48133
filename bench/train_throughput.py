"""Training throughput (images/s) of teacher and student at the digits and cifar sizes.

One step = forward, backward and AdamW update on a batch of 64, as in training.
The step runs as training does: the runtime's rules for channels-last and the
AdamW kernel (dashlib.runtime), and on CUDA autocast at the preset's
`train.amp` (bf16 when supported for "auto"); `--compile` adds torch.compile.
Writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse

import torch
from common import timeit, write

from dashlib.device import autocast, resolve_device
from dashlib.presets import get_preset
from dashlib.runtime import Runtime, adamw_options, amp_dtype, compile_unets, to_channels_last
from dashlib.unet import UNet, count_params


def throughput(cfg, batch: int, device: torch.device, repeat: int, amp: str = "none",
               runtime: Runtime | None = None) -> dict[str, float]:
    runtime = runtime or Runtime()
    dtype = amp_dtype(device, amp, cfg.ch)
    model = to_channels_last(UNet(cfg).to(device), runtime, device, dtype)  # as the Trainer does
    compile_unets(model, runtime)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_options(device))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)

    def step() -> None:
        with autocast(device, dtype):
            loss = (model(x, t, y).float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timeit(step, repeat=repeat, warmup=2)
    return {"params": count_params(model), "step_s": seconds, "images_per_s": batch / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["tiny", "digits", "cifar10"],
                    help="default: tiny digits cifar10 (cifar100 differs by 90 class rows only)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    runtime = Runtime(compile=args.compile)
    rows = []
    for name in args.presets:
        preset = get_preset(name)
        repeat = 3 if preset.data.image_size >= 32 and device.type == "cpu" else 10
        for role in ("teacher", "student"):
            cfg = getattr(preset, role)
            r = throughput(cfg, args.batch, device, repeat, preset.train.amp, runtime)
            rows.append({"preset": name, "model": role, "batch": args.batch,
                         "amp": str(amp_dtype(device, preset.train.amp, cfg.ch)),
                         "compile": args.compile, **r})
            print(f"{name:8s} {role:8s} {r['params'] / 1e6:6.2f}M params "
                  f"{r['images_per_s']:8.1f} img/s")
    write("train_throughput", {"device": str(device), "rows": rows})


if __name__ == "__main__":
    main()
