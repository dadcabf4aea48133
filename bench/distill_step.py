"""The DASH distillation step against the sum of its passes, timed alone.

A DASH step (docs/paper.md, method 1) is, at its core, two passes:
  * teacher: both branches in ONE batched no-grad forward of 2B rows;
  * student: both branches in ONE batched forward of 2B rows, and its backward.
Everything else (q_sample, three per-sample losses, TIRT weights, the
optimizer, clipping, EMA, drawing the batch) should cost little. Reported:

  ratio_objective = (DASH loss + backward) / (teacher pass + student pass)
  ratio_step      = (Trainer.train_step: batch, loss, backward, clip, AdamW, EMA) / same

Target: ratio_step <= 1.1. The four are timed in interleaved rounds (medians).
Uses the DASH objective of `dashlib.distill`
with random weights (timing does not depend on them) and random data of the
preset's shape (no dataset needed). On CUDA the passes run under the same
autocast as training, and the Trainer has put both models in channels-last.
Writes bench/results/distill_step.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import timeit_many, write

from dashlib.data import Split
from dashlib.device import autocast, resolve_device
from dashlib.diffusion import Diffusion
from dashlib.distill.methods import METHODS
from dashlib.distill.run import resolve_config
from dashlib.guidance import branches
from dashlib.presets import get_preset
from dashlib.runs import Run
from dashlib.runtime import amp_dtype
from dashlib.tirt import make_weighting, transfer
from dashlib.train import Trainer
from dashlib.unet import build_unet

TARGET = 1.1


def random_split(cfg, n: int = 512) -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return Split(x, torch.randint(0, cfg.num_classes, (n,), generator=g))


def measure(preset_name: str, batch: int, device: torch.device, repeat: int) -> dict[str, float]:
    preset = get_preset(preset_name, **{"distill.batch_size": batch})
    config = resolve_config(preset, "dash")
    diffusion = Diffusion(preset.diffusion)
    teacher = build_unet(preset.teacher, seed=0).to(device)
    student = build_unet(preset.student, seed=1)
    weighting = transfer(make_weighting("tirt", diffusion), diffusion)
    objective = METHODS.get("dash").from_config(student, teacher, weighting, diffusion, config, preset.sample)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(objective, random_split(preset.student), diffusion,
                          config, Run(Path(tmp)), {}, device, progress=False)
        dtype = amp_dtype(device, config.amp, preset.student.ch)
        batch_ = trainer.draw_batch()
        x_t = diffusion.q_sample(batch_.x0, batch_.t, batch_.eps)
        opt = trainer.optimizer

        def teacher_pass() -> None:
            with torch.no_grad(), autocast(device, dtype):
                branches(teacher, x_t, batch_.t, batch_.y)

        def student_pass() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                cond, uncond = branches(student, x_t, batch_.t, batch_.y)
            (cond.float().square().mean() + uncond.float().square().mean()).backward()

        def objective_step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss, _ = objective.loss(batch_)
            loss.backward()

        t = timeit_many({"teacher": teacher_pass, "student": student_pass,
                         "objective": objective_step, "step": trainer.train_step}, repeat=repeat)
        t_teacher, t_student, t_objective, t_step = (t[k] for k in ("teacher", "student",
                                                                    "objective", "step"))
    passes = t_teacher + t_student
    return {"teacher_pass_s": t_teacher, "student_pass_s": t_student, "passes_s": passes,
            "objective_s": t_objective, "step_s": t_step, "ratio_objective": t_objective / passes,
            "ratio_step": t_step / passes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", help="default: digits (CPU), digits cifar10 (CUDA)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    presets = args.presets or (["digits", "cifar10"] if device.type == "cuda" else ["digits"])
    rows = []
    for name in presets:
        r = measure(name, args.batch, device, args.repeat)
        rows.append({"preset": name, "batch": args.batch, **r})
        print(f"{name:8s} step/passes {r['ratio_step']:.3f}  objective/passes "
              f"{r['ratio_objective']:.3f}  (passes {r['passes_s'] * 1e3:.1f} ms)")
    write("distill_step", {"device": str(device), "target": TARGET, "rows": rows})


if __name__ == "__main__":
    main()
