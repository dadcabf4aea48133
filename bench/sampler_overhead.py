"""Sampler overhead: a 50-step CFG DDIM run on a batch, divided by 50 times one
batched forward (2B rows: both branches) of the same model on the same batch.

1.0 means the sampler adds nothing beyond the network; the target is <= 1.05.
Both are timed in interleaved rounds (medians), so drifting load biases neither.
Writes bench/results/sampler_overhead.json.
"""

from __future__ import annotations

import argparse

import torch
from common import timeit_many, write

from dashlib.config import SampleConfig
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.presets import get_preset
from dashlib.sampling import DDIMSampler
from dashlib.unet import UNet


def overhead(preset_name: str, role: str, batch: int, steps: int, device: torch.device,
             guidance: str) -> dict[str, float]:
    preset = get_preset(preset_name)
    cfg = getattr(preset, role)
    model = UNet(cfg).to(device).eval()
    diffusion = Diffusion(preset.diffusion)
    sample_cfg = SampleConfig(steps=steps, guidance=guidance, batch_size=batch)
    sampler = DDIMSampler(diffusion, sample_cfg)
    y = torch.arange(batch) % cfg.num_classes
    g = torch.Generator().manual_seed(0)
    x2 = torch.randn(2 * batch, cfg.in_channels, cfg.image_size, cfg.image_size).to(device)
    t2 = torch.full((2 * batch,), 500, device=device)
    y2 = torch.cat([y, torch.full_like(y, cfg.num_classes)]).to(device)

    @torch.no_grad()
    def forward() -> None:
        model(x2, t2, y2)

    def run() -> None:
        sampler.sample(model, y, g)

    repeat = 9  # medians of 9 interleaved rounds: a 9 ms student forward is noisy on a CPU

    def forwards() -> None:  # as many forwards as the run makes, timed the same way
        for _ in range(steps):
            forward()

    t = timeit_many({"forwards": forwards, "run": run}, repeat=repeat, warmup=1)
    t_fwd, t_run = t["forwards"] / steps, t["run"]
    return {"forward_s": t_fwd, "sampling_s": t_run, "overhead": t_run / (steps * t_fwd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["digits"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.presets:
        for role in ("teacher", "student"):
            for guidance in ("constant", "tag"):
                r = overhead(name, role, args.batch, args.steps, device, guidance)
                rows.append({"preset": name, "model": role, "guidance": guidance,
                             "batch": args.batch, "steps": args.steps, **r})
                print(f"{name:8s} {role:8s} {guidance:8s} overhead {r['overhead']:.3f}")
    write("sampler_overhead", {"device": str(device), "target": 1.05, "rows": rows})


if __name__ == "__main__":
    main()
