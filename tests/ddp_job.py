"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU),
through the CLI: the tiny teacher trained for 5 steps, two students distilled for
3 steps (DASH: frozen teacher and TIRT; FitNets: extra trainable adapters), then 7
samples drawn."""

import sys

from dashlib.cli import main

out = sys.argv[1]
cpu = ["--device", "cpu", "--no-progress"]
assert main(["train-teacher", "--preset", "tiny", "--steps", "5", *cpu]) == 0
for method in ("dash", "fitnets"):
    assert main(["distill", "--preset", "tiny", "--set", "train.steps=5", "--method", method,
                 "--steps", "3", *cpu]) == 0
assert main(["sample", "--preset", "tiny", "--set", "train.steps=5", "--set", "sample.batch_size=2",
             "--n", "7", "--steps", "4", "--w", "3", "--device", "cpu", "--out", out]) == 0
