"""Peak memory of training, distillation and sampling, per preset.

Scenarios (batch 64 unless --batch):
  * teacher_train: two Trainer steps of the teacher objective (TIRT, AdamW, EMA);
  * dash_distill: two Trainer steps of DASH (frozen teacher + student);
  * teacher_sample / student_sample: a 2-step CFG DDIM run (every step has the
    same footprint, so this is the peak of a 50-step run).

CUDA: torch.cuda.max_memory_allocated (weights, gradients, optimizer state and
activations). CPU (Linux): growth of the peak resident set over the resident
set before the scenario; models are built before measuring, so weights are
excluded there but optimizer state and the EMA copy (made inside) are not.
Each scenario runs in a fresh process after a warm-up of the same scenario at
the tiny preset, so one-time library set-up is not counted. Numbers from the
two methods are not comparable. Writes bench/results/peak_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import peak_memory, write
from distill_step import random_split

from dashlib.config import SampleConfig
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.distill.methods import METHODS
from dashlib.distill.run import resolve_config
from dashlib.presets import get_preset
from dashlib.runs import Run
from dashlib.sampling import DDIMSampler, balanced_labels
from dashlib.teacher import TeacherObjective
from dashlib.tirt import make_weighting, transfer
from dashlib.train import Trainer
from dashlib.unet import build_unet


def _train(objective, preset, loop_cfg, device: torch.device) -> Callable[[], None]:
    diffusion = Diffusion(preset.diffusion)
    tmp = tempfile.mkdtemp()

    def run() -> None:
        trainer = Trainer(objective, random_split(objective.model.config), diffusion,
                          loop_cfg, Run(Path(tmp)), {}, device,
                          progress=False)
        for _ in range(2):
            trainer.train_step()

    return run


def build(name: str, scenario: str, batch: int, device: torch.device) -> Callable[[], None]:
    """The measured function of one scenario (models built here, before measuring)."""
    preset = get_preset(name, **{"train.batch_size": batch, "distill.batch_size": batch})
    diffusion = Diffusion(preset.diffusion)
    if scenario == "teacher_train":
        objective = TeacherObjective(build_unet(preset.teacher, seed=0),
                                     make_weighting("tirt", diffusion), diffusion, preset.train)
        return _train(objective, preset, preset.train, device)
    teacher = build_unet(preset.teacher, seed=0).to(device).eval()
    if scenario == "dash_distill":
        config = resolve_config(preset, "dash")
        dash = METHODS.get("dash").from_config(build_unet(preset.student, seed=1), teacher,
                                   transfer(make_weighting("tirt", diffusion), diffusion),
                                   diffusion, config, preset.sample)
        return _train(dash, preset, config, device)
    model = teacher if scenario == "teacher_sample" else build_unet(preset.student, seed=1).to(device)
    sampler = DDIMSampler(diffusion, SampleConfig(steps=2, guidance="tag", batch_size=batch))
    y = balanced_labels(batch, preset.teacher.num_classes)
    return lambda: sampler.sample(model.eval(), y, torch.Generator().manual_seed(0))


SCENARIOS = ("teacher_train", "dash_distill", "teacher_sample", "student_sample")


def in_fresh_process(name: str, scenario: str, batch: int, device: str) -> dict:
    """One measurement in its own interpreter: nothing freed by an earlier scenario is
    reused, and no other scenario's models sit in memory."""
    cmd = [sys.executable, __file__, "--one", name, scenario, "--batch", str(batch),
           "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", help="default: digits (CPU), digits cifar10 (CUDA)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "SCENARIO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.one:
        # warm up on the tiny preset first: one-time library set-up (kernels, autograd
        # and optimizer code paths, ~200 MiB of RSS on CPU) is not the model's footprint
        build("tiny", args.one[1], 4, device)()
        print(json.dumps(peak_memory(build(*args.one, args.batch, device), device)))
        return
    presets = args.presets or (["digits", "cifar10"] if device.type == "cuda" else ["digits"])
    rows = []
    for name in presets:
        for scenario in SCENARIOS:
            r = in_fresh_process(name, scenario, args.batch, str(device))
            rows.append({"preset": name, "scenario": scenario, "batch": args.batch, **r})
            mib = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f} MiB"
            print(f"{name:8s} {scenario:15s} {mib}")
    write("peak_memory", {"device": str(device), "rows": rows})


if __name__ == "__main__":
    main()
