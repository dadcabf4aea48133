"""What digits16 costs against digits: per-step times, measured side by side, and an estimate.

Times, in interleaved rounds (medians; `common.timeit_many`), so load that
drifts during the run biases neither preset:

  * teacher training step (forward, backward, AdamW on a batch of 64);
  * student training step (the same for the student: scratch's step);
  * DASH step's passes (teacher: both branches of 64 rows, no grad; student:
    both branches, forward and backward);
  * one CFG sampling step of 64 samples, teacher and student (2 x 64 rows).

Each digits16 / digits ratio is reported; the *estimate* of a full digits16
reproduction multiplies the measured digits reproduction
(bench/results/reproduce_time.json) by the smallest and the largest ratio:
an interval, marked as an estimate, not a run. With `--classifier` it also
trains (or reuses, in $DASH_RUNS) the digits16 dataset classifier and records
its test accuracy.

  python bench/digits16_cost.py --threads 1 --classifier

Writes bench/results/digits16_cost.json.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import RESULTS, timeit_many, write

from dashlib.guidance import branches
from dashlib.presets import get_preset
from dashlib.threads import use_threads
from dashlib.unet import build_unet

PRESETS = ("digits", "digits16")


def steps_of(name: str, batch: int) -> dict[str, object]:
    """The four timed functions of one preset (random weights and inputs: time only)."""
    p = get_preset(name)
    g = torch.Generator().manual_seed(0)
    shape = (batch, p.teacher.in_channels, p.data.image_size, p.data.image_size)
    x, t = torch.randn(shape, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, p.teacher.num_classes, (batch,), generator=g)
    teacher, student = build_unet(p.teacher, seed=0), build_unet(p.student, seed=1)
    opts = {m: torch.optim.AdamW(net.parameters(), lr=1e-4) for m, net in
            (("teacher", teacher), ("student", student))}

    def train(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        (model(x, t, y) - x).square().mean().backward()
        opt.step()

    def dash() -> None:
        with torch.no_grad():
            branches(teacher, x, t, y)
        opts["student"].zero_grad(set_to_none=True)
        c, u = branches(student, x, t, y)
        (c.square().mean() + u.square().mean()).backward()

    @torch.no_grad()
    def sample(model: torch.nn.Module) -> None:
        branches(model, x, t, y)

    return {f"{name}/teacher_train": lambda: train(teacher, opts["teacher"]),
            f"{name}/student_train": lambda: train(student, opts["student"]),
            f"{name}/dash_step": dash,
            f"{name}/teacher_sample": lambda: sample(teacher),
            f"{name}/student_sample": lambda: sample(student)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--classifier", action="store_true")
    args = ap.parse_args()
    threads = use_threads(args.threads)
    fns = {k: v for name in PRESETS for k, v in steps_of(name, args.batch).items()}
    times = timeit_many(fns, repeat=args.repeat)
    parts = sorted({k.split("/")[1] for k in times})
    ratios = {part: times[f"digits16/{part}"] / times[f"digits/{part}"] for part in parts}
    repro = json.loads((RESULTS / "reproduce_time.json").read_text())
    base = repro["wall_min"]
    out = {"batch": args.batch, "threads": threads, "seconds": times, "ratio_digits16_over_digits": ratios,
           "digits_reproduction_min": base, "digits_reproduction_commit": repro["environment"]["git_commit"],
           "estimate_digits16_reproduction_min": [base * min(ratios.values()), base * max(ratios.values())],
           "estimate_note": "an estimate, not a run: the measured digits reproduction times the "
                            "smallest and largest per-step ratio"}
    if args.classifier:
        from dashlib.classifier import train_classifier

        p = get_preset("digits16")
        run = train_classifier(p.data, p.eval, device="cpu", progress=False)
        out["digits16_classifier_test_accuracy"] = run.read_results()["test_accuracy"]
        d = get_preset("digits")
        out["digits_classifier_test_accuracy"] = train_classifier(d.data, d.eval, device="cpu",
                                                                  progress=False).read_results()["test_accuracy"]
    write("digits16_cost", out)


if __name__ == "__main__":
    main()
