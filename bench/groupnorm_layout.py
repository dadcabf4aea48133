"""GroupNorm in channels-last (NHWC) against NCHW, at the UNets' activation shapes.

Why the narrow students lose time in NHWC on small maps: per shape, one
`F.group_norm` on an NHWC tensor against the same values in NCHW, and the
chain a ResBlock runs (GroupNorm -> SiLU -> 3x3 conv with NHWC weights) with
the GroupNorm done on an NCHW copy instead (`.contiguous()`), the cheapest way
to use the NCHW kernel inside an NHWC model. Shapes: 128 rows (a CFG sampling
step at batch 64) at the digits widths and map sizes, the cifar sizes' maps,
and the cifar training batch (8 rows). No-grad forward, one thread, CPU clock,
interleaved rounds; ratios per round, median [min, max].
Writes bench/results/groupnorm_layout.json.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import interleaved_rounds, load_average, ratio_stats, write
from torch import nn

# (rows, channels, map size, groups): digits (norm_groups 8) and cifar (32) activations
SHAPES = [(128, 16, 8, 8), (128, 32, 8, 8), (128, 48, 8, 8), (128, 32, 4, 8), (128, 32, 2, 8),
          (128, 64, 32, 32), (128, 128, 16, 32), (8, 64, 32, 32), (8, 128, 32, 32), (8, 256, 16, 32)]


def calls(rows: int, c: int, size: int, groups: int, calls_per_round: int) -> dict:
    x = torch.randn(rows, c, size, size).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(c), torch.randn(c)
    conv = nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)

    def repeat(fn):
        def run() -> None:
            with torch.no_grad():
                for _ in range(calls_per_round):
                    fn()
        return run

    return {
        "gn_nhwc": repeat(lambda: F.group_norm(x, groups, w, b)),
        "gn_nchw": repeat(lambda: F.group_norm(x.contiguous(), groups, w, b)),
        "chain_nhwc": repeat(lambda: conv(F.silu(F.group_norm(x, groups, w, b)))),
        "chain_nchw_gn": repeat(lambda: conv(F.silu(F.group_norm(x.contiguous(), groups, w, b)))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = "cpu" if args.threads == 1 else "wall"
    load_start, rows = load_average(), []
    for n, c, size, groups in SHAPES:
        per_round = max(1, 2_000_000 // (n * c * size * size))  # ~2M elements a round
        times = interleaved_rounds(calls(n, c, size, groups, per_round), repeat=args.repeat, warmup=1)[clock]
        gn = ratio_stats(times["gn_nhwc"], times["gn_nchw"])
        chain = ratio_stats(times["chain_nchw_gn"], times["chain_nhwc"])
        us = {k: min(v) / per_round * 1e6 for k, v in times.items()}
        rows.append({"shape": [n, c, size, size], "groups": groups, "clock": clock, "us": us,
                     "gn_nhwc_over_nchw": gn, "chain_nchw_gn_over_nhwc": chain})
        print(f"{n:4d}x{c:3d}x{size:2d}x{size:2d}: GroupNorm NHWC {us['gn_nhwc']:7.0f} us, NCHW (with the "
              f"copy) {us['gn_nchw']:7.0f} us: {gn['median']:.2f}x; chain with NCHW GroupNorm / NHWC "
              f"{chain['median']:.2f}", flush=True)
        write("groupnorm_layout", {"threads": args.threads, "load_average_start": load_start,
                                   "load_average_end": load_average(), "rows": rows})


if __name__ == "__main__":
    main()
