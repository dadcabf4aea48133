"""FLOPs-based estimate of GPU hours for the cifar presets, on one GPU and on eight.

Counted (torch.utils.flop_counter on the meta device, 2 FLOPs per multiply-add
in convolutions, matmuls and attention; element-wise ops, the optimizer and
the EMA are not counted, they are a few percent at most):

* teacher training: forward + backward of the teacher at the preset's batch
  (64), times `train.steps` (391K);
* DASH distillation: the teacher's two branches (one no-grad forward of 2B
  rows) + the student's two branches (forward + backward of 2B rows), times
  `distill.steps` (234K);
* 50K-sample evaluation of one model: `eval.n_samples` x `eval.ddim_steps` CFG
  steps (a forward of 2 rows per sample), plus the Inception-v3 features of
  the 50K generated images at 299x299 for FID/IS (the training set's reference
  features are another 50K forwards, once per dataset).

Time = FLOPs / (GPUs x peak x utilisation x scaling efficiency)
     + sequential steps x a fixed per-step overhead.
The assumptions are flags, printed with the table and stored in the JSON:

* GPU: NVIDIA H100 SXM, 989 TFLOP/s dense BF16 tensor peak (training runs
  under bf16/fp16 autocast on GPU).
* Utilisation 0.10 of that peak. A 36M-parameter UNet at 32x32 and batch 64
  is far from saturating a large GPU (small convolutions, GroupNorm and other
  memory-bound element-wise work). Anchor: the paper's own T4 latency
  (docs/paper.md: 1247.8 GFLOPs/sample x 64 in 14.2 s) is 5.6 TFLOP/s, 8.6% of the
  T4's 65 TFLOP/s fp16 tensor peak; its student reaches 5.5%.
* A fixed overhead per sequential step that more GPUs do not shrink: kernel
  launches and Python in eager PyTorch (a training step of this UNet is
  ~1,500 kernels). 5 ms per training step, 2 ms per sampling step of a chunk
  (`--compile` / CUDA graphs would lower it).
* Eight GPUs: training keeps the paper's global batch of 64, i.e. 8 rows per
  GPU, so the step count is unchanged; smaller kernels and the partly
  exposed gradient all-reduce (its ring time is printed) give a compute
  scaling efficiency of 0.75 (assumed). Sampling shards independent samples
  (ceil(N / (8 x batch)) chunks per GPU): 0.95.

With `--measure` (meant for a GPU) the script also times real training steps
and sampling steps on the device at hand and extrapolates measured hours.
`--write-docs` puts the table into docs/scaling.md and README.md between the
`gpu-hours` markers. Writes bench/results/gpu_hours.json.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import torch
from common import count_flops, timeit, unet_flops, write

from dashlib.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu-hours:begin -->", "<!-- gpu-hours:end -->"
PAPER_T4 = {"peak_fp16_tflops": 65.0, "teacher_gflops_per_sample": 1247.8, "teacher_latency_s": 14.2,
            "student_gflops_per_sample": 216.3, "student_latency_s": 3.9, "batch": 64}


def inception_flops() -> int:
    """FLOPs of one Inception-v3 forward at 299x299 (torchvision's layout, as FID uses)."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.inception_v3(weights=None, aux_logits=False,
                                                init_weights=False).eval()
        x = torch.zeros(1, 3, 299, 299)
        return count_flops(lambda: model(x))


def phases(name: str) -> list[dict[str, Any]]:
    """FLOPs of each phase of one preset's pipeline."""
    p = get_preset(name)
    bt, bd = p.train.batch_size, p.distill.batch_size
    n, steps = p.eval.n_samples, p.eval.ddim_steps
    inception = n * inception_flops()
    return [
        {"phase": "teacher training", "kind": "train", "steps": p.train.steps,
         "flops": p.train.steps * unet_flops(p.teacher, bt, backward=True)},
        {"phase": "DASH distillation", "kind": "train", "steps": p.distill.steps,
         "flops": p.distill.steps * (unet_flops(p.teacher, 2 * bd)
                                     + unet_flops(p.student, 2 * bd, backward=True))},
        {"phase": f"eval {n:,} samples, teacher", "kind": "sample", "steps": steps,
         "samples": n, "batch": p.sample.batch_size,
         "flops": n * steps * unet_flops(p.teacher, 2) + inception},
        {"phase": f"eval {n:,} samples, student", "kind": "sample", "steps": steps,
         "samples": n, "batch": p.sample.batch_size,
         "flops": n * steps * unet_flops(p.student, 2) + inception},
    ]


def sequential_steps(row: dict[str, Any], gpus: int) -> int:
    """Steps one GPU runs one after another: training steps (the global batch is fixed),
    or DDIM steps over this GPU's chunks of samples."""
    if row["kind"] == "train":
        return int(row["steps"])
    return math.ceil(row["samples"] / (gpus * row["batch"])) * int(row["steps"])


def allreduce_ms(params: int, gpus: int, busbw_gbs: float) -> float:
    """Ring all-reduce of fp32 gradients: 2 (N-1)/N x bytes / bus bandwidth."""
    return 2 * (gpus - 1) / gpus * 4 * params / (busbw_gbs * 1e9) * 1e3


def estimate(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    sustained = a.peak_tflops * 1e12 * a.utilisation
    for r in rows:
        train = r["kind"] == "train"
        eff8 = a.train_efficiency if train else a.sample_efficiency
        overhead = (a.train_overhead_ms if train else a.sample_overhead_ms) / 1e3
        for gpus, eff in ((1, 1.0), (8, eff8)):
            seconds = r["flops"] / (gpus * sustained * eff) + sequential_steps(r, gpus) * overhead
            r[f"hours_{gpus}gpu"] = seconds / 3600
        r["gpu_hours_8gpu"] = 8 * r["hours_8gpu"]


# --- measured (on the device at hand) --------------------------------------------

def measure(name: str, rows: list[dict[str, Any]], device: torch.device, repeat: int) -> None:
    """Time real steps on `device` and extrapolate hours for each phase (one device)."""
    from distill_step import measure as dash_step
    from peak_memory import build

    from dashlib.config import SampleConfig
    from dashlib.diffusion import Diffusion
    from dashlib.sampling import DDIMSampler, balanced_labels
    from dashlib.unet import build_unet

    p = get_preset(name)
    teacher_step = build(name, "teacher_train", p.train.batch_size, device)  # two steps
    t_teacher = timeit(teacher_step, repeat=repeat, warmup=1) / 2
    t_dash = dash_step(name, p.distill.batch_size, device, repeat)["step_s"]
    b = p.sample.batch_size
    sampler = DDIMSampler(Diffusion(p.diffusion), SampleConfig(steps=2, guidance="tag", batch_size=b))
    per_step = {}
    for role in ("teacher", "student"):
        model = build_unet(getattr(p, role), seed=0).to(device).eval()
        y = balanced_labels(b, p.teacher.num_classes)
        per_step[role] = timeit(lambda m=model, y=y: sampler.sample(m, y, torch.Generator()),
                                repeat=repeat, warmup=1) / 2
    chunks = math.ceil(p.eval.n_samples / b)
    seconds = [p.train.steps * t_teacher, p.distill.steps * t_dash,
               chunks * p.eval.ddim_steps * per_step["teacher"],
               chunks * p.eval.ddim_steps * per_step["student"]]
    for r, s in zip(rows, seconds):
        r["measured_hours_1dev"] = s / 3600  # Inception features not included


# --- output -----------------------------------------------------------------------

def table(results: list[dict[str, Any]], a: argparse.Namespace, device: str) -> str:
    measured = any("measured_hours_1dev" in r for res in results for r in res["rows"])
    head = "| preset | phase | TFLOPs | 1 GPU (h) | 8 GPUs (h, wall) | 8 GPUs (GPU-h) |"
    head += f" measured, 1 {device} (h) |" if measured else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        for r in res["rows"]:
            cells = [res["preset"], r["phase"], f"{r['flops'] / 1e12:,.0f}", f"{r['hours_1gpu']:.3g}",
                     f"{r['hours_8gpu']:.3g}", f"{r['gpu_hours_8gpu']:.3g}"]
            if measured:
                cells.append(f"{r['measured_hours_1dev']:.3g}" if "measured_hours_1dev" in r else "-")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Assumptions: {a.gpu}, {a.peak_tflops:g} TFLOP/s dense BF16 peak, utilisation "
              f"{a.utilisation:g} ({a.peak_tflops * a.utilisation:.0f} TFLOP/s sustained), plus "
              f"{a.train_overhead_ms:g} ms per training step and {a.sample_overhead_ms:g} ms per "
              f"sampling step of a chunk (launch/Python overhead); eight GPUs at compute scaling "
              f"efficiency {a.train_efficiency:g} for training (global batch 64 = 8 rows "
              f"per GPU) and {a.sample_efficiency:g} for sampling. Ring all-reduce of the gradients "
              f"per step at {a.busbw_gbs:g} GB/s bus bandwidth: "
              + ", ".join(f"{res['preset']} teacher {res['allreduce_ms']['teacher']:.2f} ms, "
                          f"student {res['allreduce_ms']['student']:.2f} ms" for res in results)
              + ". Evaluation rows include the Inception-v3 features of the generated images. "
              "Generated by `bench/gpu_hours.py --write-docs`; estimates, not measurements"
              + ("; the measured column extrapolates timed steps on one device (sampling only, "
                 "no Inception)." if measured else ".")]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    for path in (ROOT / "docs" / "scaling.md", ROOT / "README.md"):
        doc = path.read_text()
        if BEGIN not in doc:
            continue
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), f"{BEGIN}\n{text}\n{END}", doc,
                     flags=re.S)
        path.write_text(new)
        print(f"updated {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cifar10", "cifar100"])
    ap.add_argument("--gpu", default="NVIDIA H100 SXM")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 peak, TFLOP/s")
    ap.add_argument("--utilisation", type=float, default=0.10)
    ap.add_argument("--train-efficiency", type=float, default=0.75, help="8-GPU scaling, training")
    ap.add_argument("--train-overhead-ms", type=float, default=5.0, help="fixed cost per training step")
    ap.add_argument("--sample-overhead-ms", type=float, default=2.0,
                    help="fixed cost per DDIM step of a chunk")
    ap.add_argument("--sample-efficiency", type=float, default=0.95, help="8-GPU scaling, sampling")
    ap.add_argument("--busbw-gbs", type=float, default=350.0, help="all-reduce bus bandwidth, GB/s")
    ap.add_argument("--measure", action="store_true", help="also time real steps on --device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args()
    from dashlib.device import resolve_device
    from dashlib.unet import UNet, count_params

    device = resolve_device(a.device)
    results = []
    for name in a.presets:
        p = get_preset(name)
        rows = phases(name)
        estimate(rows, a)
        if a.measure:
            measure(name, rows, device, a.repeat)
        with torch.device("meta"):
            params = {r: count_params(UNet(getattr(p, r))) for r in ("teacher", "student")}
        results.append({"preset": name, "rows": rows,
                        "allreduce_ms": {r: allreduce_ms(n, 8, a.busbw_gbs) for r, n in params.items()}})
    t4 = PAPER_T4
    anchor = {role: t4[f"{role}_gflops_per_sample"] * 1e9 * t4["batch"] / t4[f"{role}_latency_s"]
              / (t4["peak_fp16_tflops"] * 1e12) for role in ("teacher", "student")}
    text = table(results, a, str(device))
    print(text)
    assumptions = {k: getattr(a, k) for k in ("gpu", "peak_tflops", "utilisation", "train_efficiency",
                                               "sample_efficiency", "train_overhead_ms",
                                               "sample_overhead_ms", "busbw_gbs")}
    write("gpu_hours", {"assumptions": assumptions, "paper_t4_utilisation": anchor,
                        "measured_on": str(device) if a.measure else None, "presets": results,
                        "markdown": text})
    if a.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
