"""Channels-last (NHWC) against NCHW for a UNet forward, per model width: the data
behind `dashlib.runtime.CHANNELS_LAST_MIN_CH` on this device.

One no-grad forward of 2 x batch rows (a CFG sampling step) of the teacher and
the student of each preset size, in both layouts, prepared as sampling prepares
it (`inference_model`: frozen graphs where `--freeze` and its rule say so), timed in interleaved rounds
(CPU clock at one thread on CPU, where it leaves out time spent waiting for a
core; wall clock otherwise). For the training step, bench/train_step_speed.py
has the same lever ("channels_last_only"). Writes bench/results/layout_speed.json.
"""

from __future__ import annotations

import argparse

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
from dashlib.runtime import Runtime, inference_model
from dashlib.unet import build_unet


def forward(cfg, rows: int, layout: str, device: torch.device, freeze: str):
    runtime = Runtime(channels_last=layout, freeze=freeze)
    model = inference_model(build_unet(cfg, 0).to(device).eval(), runtime, device)
    return no_grad_call(model, *unet_inputs(cfg, rows, device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(ap, MODEL_SIZES, repeat=7)
    ap.add_argument("--freeze", default="auto", choices=("auto", "on", "off"),
                    help="frozen graphs as sampling uses them (default auto: dashlib.runtime.FREEZE_CH)")
    ap.add_argument("--name", default="layout_speed", help="JSON file name in bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "cpu" if device.type == "cpu" and args.threads == 1 else "wall"
    load_start, rows = load_average(), []
    for spec in args.models:
        preset, role = spec.split(":")
        cfg = getattr(get_preset(preset), role)
        runs = {layout: forward(cfg, 2 * args.batch, layout, device, args.freeze) for layout in ("off", "on")}
        times = interleaved_rounds(runs, repeat=args.repeat, warmup=1)[clock]
        r = ratio_stats(times["on"], times["off"])
        rows.append({"preset": preset, "role": role, "ch": cfg.ch, "rows": 2 * args.batch,
                     "clock": clock, "freeze": args.freeze, "nhwc_over_nchw": r})
        print(f"{spec:18s} ch={cfg.ch:3d}: NHWC / NCHW {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]",
              flush=True)
        write(args.name, {"device": str(device), "threads": args.threads,
                               "load_average_start": load_start, "load_average_end": load_average(),
                               "rows": rows})


if __name__ == "__main__":
    main()
