"""Trained-model artifacts: `final.pt` in a run folder, saved and loaded safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dashlib.config import DiffusionConfig, ModelConfig, from_dict, to_dict
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.io import CheckpointError, atomic_torch_save, check_config_match, load_checkpoint
from dashlib.runs import Run
from dashlib.tirt import TimestepWeighting, make_weighting
from dashlib.unet import UNet


def save_artifact(run: Run, kind: str, payload: dict[str, Any], model: nn.Module,
                  weighting: TimestepWeighting | None, weighting_name: str | None,
                  extra: dict[str, Any] | None = None) -> None:
    """final.pt: the EMA weights, the model config, and the timestep weighting."""
    atomic_torch_save({
        "kind": kind, "config": payload, "model_config": to_dict(model.config),
        "model": model.state_dict(),
        "weighting": weighting.state_dict() if weighting is not None else {},
        "weighting_name": weighting_name or "", **(extra or {}),
    }, run.final)


@dataclass
class Artifact:
    """A trained model loaded from a run: the network, its weighting, its run config."""

    model: UNet
    weighting: TimestepWeighting | None
    diffusion: Diffusion
    config: dict[str, Any]
    run: Run
    extra: dict[str, Any]


#: What a checkpoint written before a ModelConfig field existed was built with.
LEGACY_MODEL_FIELDS = {"emb_silu": False}


def load_artifact(run: Run | str, expect: ModelConfig | None = None,
                  device: str | torch.device = "cpu") -> Artifact:
    """Load a finished run's final.pt (weights_only) and rebuild its model.

    With `expect`, a checkpoint for another architecture (size, classes,
    image size) is refused with an error naming each mismatch. `device` may be
    "auto" (CUDA when present).
    """
    run = run if isinstance(run, Run) else Run(Path(run))
    run.require_folder(CheckpointError)
    if not run.final.is_file():
        raise CheckpointError(f"{run.path} has no final.pt: the run has not finished "
                              f"(train it first, or --resume it)")
    ckpt = load_checkpoint(run.final)
    for key in ("model_config", "model", "config"):
        if key not in ckpt:
            raise CheckpointError(f"{run.final} is not a dash model artifact (no {key!r} entry)")
    stored = {**LEGACY_MODEL_FIELDS, **ckpt["model_config"]}
    if expect is not None:
        check_config_match(run.final, stored, to_dict(expect), what="model")
    cfg = from_dict(ModelConfig, stored)
    model = UNet(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{run.final}: weights do not fit the stored model config "
                              f"({str(err).splitlines()[0]})") from None
    diffusion = Diffusion(from_dict(DiffusionConfig, ckpt["config"]["diffusion"]))
    weighting = None
    if ckpt.get("weighting_name"):
        weighting = make_weighting(ckpt["weighting_name"], diffusion)
        weighting.load_state_dict(ckpt["weighting"])
    extra = {k: v for k, v in ckpt.items()
             if k not in ("kind", "config", "model_config", "model", "weighting", "weighting_name")}
    dev = resolve_device(device) if isinstance(device, str) else device
    return Artifact(model.to(dev).eval(), weighting, diffusion, ckpt["config"], run, extra)
