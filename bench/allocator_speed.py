"""glibc's malloc tuned (dashlib.allocator) against its defaults: the data behind
`dashlib.allocator.MALLOPT`.

Each round runs two fresh processes, one with `DASH_MALLOC=system` (glibc's
defaults) and one tuned, in alternating order; each builds one model, warms up,
then times `--forwards` 128-row CFG forwards (sampling) or `--steps` training
steps (forward, backward, AdamW) at one thread, recording CPU time (user +
system) per call and minor page faults per call. The ratio tuned / system is
taken per round; the JSON holds median [min, max] over rounds.
Writes bench/results/allocator_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from common import load_average, write

CHILD = r"""
import json, resource, sys
from dashlib.allocator import tune_allocator
applied = tune_allocator()
import torch
from dashlib.presets import get_preset
from dashlib.runtime import Runtime, adamw_options, to_channels_last
from dashlib.unet import build_unet
torch.set_num_threads(1)
preset, role, mode, rows, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg = getattr(get_preset(preset), role)
model = to_channels_last(build_unet(cfg, 0), Runtime(), torch.device("cpu"))
g = torch.Generator().manual_seed(0)
x = torch.randn(rows, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
t, y = torch.randint(0, 1000, (rows,), generator=g), torch.randint(0, cfg.num_classes, (rows,), generator=g)
if mode == "train":
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_options(torch.device("cpu")))
    def call():
        loss = (model(x, t, y) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
else:
    model.eval()
    def call():
        with torch.no_grad():
            model(x, t, y)
call()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(calls):
    call()
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / calls
print(json.dumps({"applied": applied, "cpu_s": cpu, "sys_s": (r1.ru_stime - r0.ru_stime) / calls,
                  "faults": (r1.ru_minflt - r0.ru_minflt) / calls}))
"""


def child(spec: list[str], system: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(OMP_NUM_THREADS="1", **({"DASH_MALLOC": "system"} if system else {}))
    if not system:
        env.pop("DASH_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", CHILD, *spec], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+",
                    default=["digits:student:sample:128:30", "digits:teacher:sample:128:10",
                             "digits16:student:sample:128:10", "digits16:teacher:sample:128:4",
                             "cifar10:student:sample:128:2", "cifar10:teacher:sample:128:1",
                             "digits:student:train:64:20", "cifar10:student:train:8:3"],
                    help="preset:role:mode:rows:calls (mode sample or train)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load_start, rows = load_average(), []
    for case in args.cases:
        preset, role, mode, n_rows, calls = case.split(":")
        spec = [preset, role, mode, n_rows, calls]
        pairs = []
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {system: child(spec, system) for system in order}
            pairs.append((got[False], got[True]))
        ratios = sorted(t["cpu_s"] / s["cpu_s"] for t, s in pairs)
        row = {"preset": preset, "role": role, "mode": mode, "rows": int(n_rows), "calls": int(calls),
               "tuned_over_system": {"median": statistics.median(ratios), "min": ratios[0],
                                     "max": ratios[-1]},
               "system_cpu_s": statistics.median(s["cpu_s"] for _, s in pairs),
               "tuned_cpu_s": statistics.median(t["cpu_s"] for t, _ in pairs),
               "system_sys_s": statistics.median(s["sys_s"] for _, s in pairs),
               "system_faults": statistics.median(s["faults"] for _, s in pairs),
               "tuned_faults": statistics.median(t["faults"] for t, _ in pairs),
               "applied": all(t["applied"] and not s["applied"] for t, s in pairs)}
        rows.append(row)
        r = row["tuned_over_system"]
        print(f"{case:32s} tuned / system {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]  "
              f"faults per call {row['system_faults']:.0f} -> {row['tuned_faults']:.0f}", flush=True)
        write("allocator_speed", {"device": "cpu", "threads": 1, "load_average_start": load_start,
                                  "load_average_end": load_average(), "rows": rows})


if __name__ == "__main__":
    main()
