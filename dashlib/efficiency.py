"""Teacher vs student sampling cost: the paper's Table 4 analogue (docs/paper.md, 'Results').

For one full DDIM run of `steps` steps (50) with classifier-free guidance at
batch B (64), per model:

* ``params`` and ``params_nonzero`` (a pruned student keeps the teacher's dense shapes);
* ``flops``: counted by `torch.utils.flop_counter.FlopCounterMode` (2 per
  multiply-add in convolutions, matmuls and attention) with the model and the
  sampler on the meta device, so nothing is computed and any size is cheap.
  ``flops_per_sample`` = flops / B is the paper's unit (its 1247.8G / 216.3G
  are the cifar teacher / student here to 0.5%).
  A CFG step is one forward of 2B rows; a model without a null branch
  (single-head) runs B rows;
* ``latency_s``: the median wall time of `repeats` full sampling runs (the model
  prepared as `dash sample` prepares it: `dashlib.runtime.inference_model`) after
  one warm-up run, CUDA-synchronised on GPU, on the device at hand;
* ``peak_memory_bytes``: on CUDA, `torch.cuda.max_memory_allocated` over one
  run (weights included); on CPU (Linux), the growth of the peak resident set
  (VmHWM, reset through /proc/self/clear_refs) over one run in a fresh
  process after the model is built: activations plus allocator slack, weights
  excluded. `peak_memory_method` says which.

`compare` reports the speedup (teacher latency / student latency) next to
the FLOPs ratio; `speedup_over_flops_ratio` = 1 means the student is as much
faster as its FLOPs promise (the authors' release: 3.64x speed from 5.77x
FLOPs on a T4, i.e. 0.63).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dashlib.config import DiffusionConfig, ModelConfig, Preset, SampleConfig, from_dict, to_dict
from dashlib.diffusion import Diffusion
from dashlib.runtime import Runtime, inference_model
from dashlib.sampling import DDIMSampler, balanced_labels
from dashlib.unet import UNet, build_unet, count_params

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _inputs(model: UNet, batch: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    x = torch.zeros(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    return x, balanced_labels(batch, cfg.num_classes).to(device)


def forward_flops(model: UNet, batch: int) -> int:
    """FLOPs of the forward one sampling step makes at batch `batch`: 2B rows with CFG, else B."""
    meta = copy.deepcopy(model).to("meta").eval()
    rows = 2 * batch if model.config.cfg else batch
    x, _ = _inputs(meta, rows, "meta")
    t = torch.zeros(rows, dtype=torch.long, device="meta")
    y = torch.zeros(rows, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x, t, y)
    return int(counter.get_total_flops())


def sampling_flops(model: UNet, diffusion: Diffusion, config: SampleConfig, batch: int) -> int:
    """FLOPs of one full DDIM sampling run (all `config.steps` steps) at batch `batch`."""
    meta = copy.deepcopy(model).to("meta").eval()
    sampler = DDIMSampler(diffusion, config)
    x, y = _inputs(meta, batch, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        sampler.denoise(meta, x, y, torch.Generator())
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample_once(model: nn.Module, sampler: DDIMSampler, batch: int, device: torch.device) -> None:
    x, y = _inputs(model, batch, device)  # type: ignore[arg-type]
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        sampler.denoise(model, x, y, torch.Generator().manual_seed(0))


def latencies(model: UNet, diffusion: Diffusion, config: SampleConfig, batch: int,
              device: torch.device, repeats: int, runtime: Runtime | None = None) -> list[float]:
    """Wall times (s) of `repeats` full sampling runs after one warm-up run, with the
    model prepared as `dash sample` prepares it (`runtime`'s layout, compiling or
    freezing; the warm-up run pays for tracing or compiling)."""
    model = inference_model(model.to(device).eval(), runtime or Runtime(), device)
    sampler = DDIMSampler(diffusion, config)
    _sample_once(model, sampler, batch, device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        _sample_once(model, sampler, batch, device)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {PROC_STATUS}")


def _rss_growth_child(model_cfg: dict[str, Any], diffusion_cfg: dict[str, Any],
                      sample_cfg: dict[str, Any], batch: int, threads: int) -> int:
    """In a fresh process: peak-RSS growth (bytes) over one sampling run."""
    torch.set_num_threads(threads)
    model = build_unet(from_dict(ModelConfig, model_cfg), seed=0).eval()
    sampler = DDIMSampler(Diffusion(from_dict(DiffusionConfig, diffusion_cfg)),
                          from_dict(SampleConfig, sample_cfg))
    PROC_CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmHWM")
    _sample_once(model, sampler, batch, torch.device("cpu"))
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory(model: UNet, diffusion: Diffusion, config: SampleConfig, batch: int,
                device: torch.device) -> tuple[int | None, str]:
    """(bytes, method) of one sampling run's peak memory; see the module docstring."""
    if device.type == "cuda":
        model = model.to(device).eval()
        sampler = DDIMSampler(diffusion, config)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _sample_once(model, sampler, batch, device)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), "cuda.max_memory_allocated"
    if not (PROC_STATUS.is_file() and PROC_CLEAR_REFS.exists()):
        return None, "unavailable (CPU peak memory needs Linux /proc)"
    with get_context("spawn").Pool(1) as pool:
        grown = pool.apply(_rss_growth_child, (to_dict(model.config), to_dict(diffusion.config),
                                               to_dict(config), batch, torch.get_num_threads()))
    return int(grown), "cpu_peak_rss_growth"


def model_cost(model: UNet, diffusion: Diffusion, config: SampleConfig, batch: int,
               device: torch.device, repeats: int, runtime: Runtime | None = None) -> dict[str, Any]:
    """Params, FLOPs (one step and the whole run), latency and peak memory of one model.

    `repeats = 0` skips the timed parts (latency, memory): FLOPs of paper-size
    models are cheap to count on any machine, running them on a CPU is not.
    """
    out: dict[str, Any] = {
        "params": count_params(model), "params_nonzero": count_params(model, nonzero=True),
        "cfg": bool(model.config.cfg), "rows_per_step": (2 if model.config.cfg else 1) * batch,
        "flops_per_step": forward_flops(model, batch),
        "flops": sampling_flops(model, diffusion, config, batch)}
    out["flops_per_sample"] = out["flops"] / batch
    if repeats > 0:
        times = latencies(model, diffusion, config, batch, device, repeats, runtime)
        memory, method = peak_memory(model, diffusion, config, batch, device)
        out.update(latency_s=statistics.median(times), latencies_s=times, peak_memory_bytes=memory,
                   peak_memory_method=method)
    return out


def compare(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """Ratios teacher / student: params, FLOPs, speedup, and speedup / FLOPs ratio."""
    out: dict[str, Any] = {"param_ratio": teacher["params"] / student["params"],
                           "flops_ratio": teacher["flops"] / student["flops"]}
    if "latency_s" in teacher and "latency_s" in student:
        out["speedup"] = teacher["latency_s"] / student["latency_s"]
        out["speedup_over_flops_ratio"] = out["speedup"] / out["flops_ratio"]
        if teacher.get("peak_memory_bytes") and student.get("peak_memory_bytes"):
            out["memory_ratio"] = teacher["peak_memory_bytes"] / student["peak_memory_bytes"]
    return out


def efficiency(preset: Preset, teacher: UNet, student: UNet, device: torch.device, steps: int = 50,
               batch: int = 64, repeats: int = 3, runtime: Runtime | None = None) -> dict[str, Any]:
    """Teacher vs student at the preset's sampler (DDIM, CFG) with `steps` steps at `batch`,
    each sampled with `runtime`'s speed options (default: dash's rules)."""
    config = dataclasses.replace(preset.sample, steps=steps)
    diffusion = Diffusion(preset.diffusion)
    t_cost = model_cost(teacher, diffusion, config, batch, device, repeats, runtime)
    s_cost = model_cost(student, diffusion, config, batch, device, repeats, runtime)
    return {"preset": preset.name, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "steps": steps, "batch": batch, "repeats": repeats,
            "guidance": config.guidance, "teacher": t_cost, "student": s_cost, **compare(t_cost, s_cost)}
