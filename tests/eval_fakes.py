"""Fabricated finished runs for the evaluation tests (no training)."""

from __future__ import annotations

import torch

from dashlib.artifacts import save_artifact
from dashlib.config import ModelConfig, Preset, to_dict
from dashlib.io import atomic_write_json
from dashlib.runs import Run, make_run
from dashlib.unet import build_unet, count_params


def fake_run(preset: Preset, kind: str = "teacher", method: str | None = None,
             model: ModelConfig | None = None, seed: int = 0, noise: float = 0.05) -> Run:
    """A run folder with final.pt + results.json holding a randomly initialised UNet.

    `noise` perturbs every weight (the zero-initialised output conv would
    otherwise make eps = 0 for every input).
    """
    model_cfg = model or (preset.teacher if kind == "teacher" else preset.student)
    payload = {"kind": kind, "preset": preset.name, "data": to_dict(preset.data),
               "model": to_dict(model_cfg), "diffusion": to_dict(preset.diffusion),
               "method": method, "seed": seed}
    name = kind if method is None else f"distill-{method}"
    run = make_run(preset.name, name, payload)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.config, payload)
    net = build_unet(model_cfg, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    extra = {"method": method} if method else None
    save_artifact(run, kind, payload, net, None, None, extra=extra)
    atomic_write_json(run.results, {"kind": kind, "method": method, "preset": preset.name,
                                    "params": count_params(net), "run": str(run.path)})
    return run
