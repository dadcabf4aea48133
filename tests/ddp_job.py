"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU):
the tiny teacher trained for 5 steps, then 7 samples drawn, both through the CLI."""

import sys

from dashlib.cli import main

out = sys.argv[1]
assert main(["train-teacher", "--preset", "tiny", "--steps", "5", "--device", "cpu",
             "--no-progress"]) == 0
assert main(["sample", "--preset", "tiny", "--set", "train.steps=5", "--set", "sample.batch_size=2",
             "--n", "7", "--steps", "4", "--w", "3", "--device", "cpu", "--out", out]) == 0
