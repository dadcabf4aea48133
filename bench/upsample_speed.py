"""Nearest 2x upsampling in NCHW on CPU, at the shapes each preset's UNets upsample
(128 rows, a CFG sampling step): PyTorch's NCHW kernel against the two routes
`dashlib.unet.upsample_nearest` chooses between without gradients (`detour`: through
the channels-last kernel and back; `broadcast`: two broadcast copies) and what it
takes (`dash`, by `UPSAMPLE_BROADCAST_MIN_PIXELS`), with the channels-last kernel
alone for scale. Interleaved rounds, one thread, CPU clock. Writes
bench/results/upsample_speed.json (`--name`).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import interleaved_rounds, load_average, ratio_stats, write

from dashlib.presets import get_preset
from dashlib.unet import UNet, upsample_by_broadcast, upsample_nearest, upsample_via_nhwc


def upsample_inputs(cfg, rows: int) -> list[tuple[int, ...]]:
    """The input shapes of every Upsample of a UNet of config `cfg` (traced on meta)."""
    shapes: list[tuple[int, ...]] = []
    with torch.device("meta"):
        model = UNet(cfg)
        for m in model.modules():
            if type(m).__name__ == "Upsample":
                m.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
        x = torch.zeros(rows, cfg.in_channels, cfg.image_size, cfg.image_size)
        model(x, torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long))
    return sorted(set(shapes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["digits", "digits16", "cifar10"])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--name", default="upsample_speed", help="JSON file name in bench/results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start, rows, seen = load_average(), [], set()
    for name in args.presets:
        p = get_preset(name)
        for shape in upsample_inputs(p.teacher, args.rows) + upsample_inputs(p.student, args.rows):
            if shape in seen:
                continue
            seen.add(shape)
            x = torch.randn(shape)
            nhwc = x.contiguous(memory_format=torch.channels_last)
            ref = F.interpolate(x, scale_factor=2.0, mode="nearest")
            routes = (upsample_nearest, upsample_via_nhwc, upsample_by_broadcast)
            assert all(torch.equal(f(x), ref) for f in routes)
            fns = {"nchw_kernel": lambda x=x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
                   "dash": lambda x=x: upsample_nearest(x),
                   "detour": lambda x=x: upsample_via_nhwc(x),
                   "nhwc_kernel": lambda x=nhwc: F.interpolate(x, scale_factor=2.0, mode="nearest"),
                   "broadcast": lambda x=x: upsample_by_broadcast(x)}
            times = interleaved_rounds(fns, repeat=args.repeat)["cpu"]
            row = {"preset": name, "shape": list(shape),
                   "median_us": {k: 1e6 * sorted(v)[len(v) // 2] for k, v in times.items()},
                   **{f"{k}_over_nchw_kernel": ratio_stats(times[k], times["nchw_kernel"])
                      for k in ("dash", "detour", "broadcast")}}
            rows.append(row)
            r, us = row["dash_over_nchw_kernel"], row["median_us"]
            print(f"{name:9s} {str(shape):22s} NCHW kernel {us['nchw_kernel']:8.0f} us, dash "
                  f"{us['dash']:8.0f} us ({r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]; detour "
                  f"{us['detour']:.0f}, broadcast {us['broadcast']:.0f}), NHWC kernel "
                  f"{us['nhwc_kernel']:.0f} us", flush=True)
    write(args.name, {"device": "cpu", "threads": 1, "load_average_start": load_start,
                      "load_average_end": load_average(), "rows": rows})


if __name__ == "__main__":
    main()
