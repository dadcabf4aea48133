"""GroupNorm in channels-last (NHWC) against NCHW, at the UNets' activation shapes.

Why the narrow students lose time in NHWC on small maps: per shape, one
`F.group_norm` on an NHWC tensor against the same values in NCHW, and the
chain a ResBlock runs (GroupNorm -> SiLU -> 3x3 conv with NHWC weights) with
the GroupNorm done on an NCHW copy instead (`.contiguous()`), the cheapest way
to use the NCHW kernel inside an NHWC model. Shapes: 128 rows (a CFG sampling
step at batch 64) at the digits widths and map sizes, the cifar sizes' maps,
and the cifar training batch (8 rows). No-grad forward, one thread, CPU clock,
interleaved rounds; ratios per round, median [min, max].

Then, per model (`--models`, default the digits and digits16 pairs), what the
whole UNet gains when every GroupNorm on at most `--max-ch` channels (default
16) and a map of at least 8x8 runs on an NCHW copy (not what dash does: the
outputs differ from the NHWC kernel's in the last bits, up to ~2e-6, so
adopting it would change every result at the bit level): the frozen sampling
forward (2 x `--batch` rows, as `dash sample` runs it) and a training forward
and backward (`--batch` rows), each against the same model unpatched.
Writes bench/results/groupnorm_layout.json.
"""

from __future__ import annotations

import argparse
import types

import torch
import torch.nn.functional as F
from common import interleaved_rounds, load_average, ratio_stats, unet_inputs, write
from torch import nn

from dashlib.presets import get_preset
from dashlib.runtime import FrozenUNet, Runtime, to_channels_last
from dashlib.unet import build_unet

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


def nchw_groupnorm(model: nn.Module, max_ch: int) -> nn.Module:
    """Patch every GroupNorm of `model` to normalise inputs of <= max_ch channels on maps
    of >= 8x8 in an NCHW copy."""
    def forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= max_ch and x.shape[-1] >= 8:
            x = x.contiguous()
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.forward = types.MethodType(forward, m)
    return model


def perturbed_unet(cfg, max_ch: int | None) -> nn.Module:
    """The UNet as dash lays it out, zero-initialised layers perturbed (a non-trivial
    output), GroupNorm patched by `nchw_groupnorm` unless max_ch is None."""
    model = build_unet(cfg, 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=g))
    to_channels_last(model, Runtime(), torch.device("cpu"))
    return model if max_ch is None else nchw_groupnorm(model, max_ch)


def model_calls(spec: str, batch: int, max_ch: int) -> tuple[dict, float]:
    """{sample_base, sample_nchw_gn, train_base, train_nchw_gn} calls of one model, and the
    largest difference between the patched and unpatched sampling outputs."""
    preset, role = spec.split(":")
    cfg = getattr(get_preset(preset), role)
    cpu = torch.device("cpu")
    calls, outputs = {}, {}
    for name, patch in (("base", None), ("nchw_gn", max_ch)):
        frozen, x, t, y = FrozenUNet(perturbed_unet(cfg, patch).eval()), *unet_inputs(cfg, 2 * batch, cpu)
        with torch.no_grad():
            outputs[name] = frozen(x, t, y)
        calls[f"sample_{name}"] = lambda f=frozen, a=(x, t, y): torch.no_grad()(f)(*a)
        model, batch_in = perturbed_unet(cfg, patch).train(), unet_inputs(cfg, batch, cpu)
        calls[f"train_{name}"] = lambda m=model, a=batch_in: m(*a).pow(2).mean().backward()
    return calls, (outputs["nchw_gn"] - outputs["base"]).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="groupnorm_layout", help="JSON file name in bench/results")
    ap.add_argument("--models", nargs="*", default=["digits:student", "digits:teacher",
                                                    "digits16:student", "digits16:teacher"])
    ap.add_argument("--max-ch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
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
        write(args.name, {"threads": args.threads, "load_average_start": load_start,
                          "load_average_end": load_average(), "rows": rows})
    models = []
    for spec in args.models:
        calls_, max_diff = model_calls(spec, args.batch, args.max_ch)
        times = interleaved_rounds(calls_, repeat=args.repeat, warmup=2)[clock]
        row = {"model": spec, "max_ch": args.max_ch, "batch": args.batch, "clock": clock,
               "sample_max_abs_diff": max_diff,
               **{f"{w}_nchw_gn_over_base": ratio_stats(times[f"{w}_nchw_gn"], times[f"{w}_base"])
                  for w in ("sample", "train")}}
        models.append(row)
        print(f"{spec:18s}: GroupNorm <= {args.max_ch} ch in NCHW / as dash runs it: sampling forward "
              f"{row['sample_nchw_gn_over_base']['median']:.2f}, training forward + backward "
              f"{row['train_nchw_gn_over_base']['median']:.2f} (max output diff {max_diff:.1e})", flush=True)
        write(args.name, {"threads": args.threads, "load_average_start": load_start,
                          "load_average_end": load_average(), "rows": rows, "models": models})


if __name__ == "__main__":
    main()
