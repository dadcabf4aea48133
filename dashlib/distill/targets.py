"""Offline teacher targets: the frozen teacher's branches on every batch, computed once.

Every distillation run with the same seed, batch size and step budget draws
the same batches (x_0, t, eps: the Trainer's generators depend only on the
seed), so the frozen teacher's two branches on them are the same for every
method and every student width. Computing them once and sharing them removes
the teacher's forward pass from each step (about 45% of a DASH step on the
digits CPU) without changing what any method sees.

The table holds (steps, B, C, H, W) for each branch; it is used when it fits
in `MAX_BYTES` (the digits preset: 33 MB), otherwise the teacher runs on line
(the paper-scale presets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dashlib import bars
from dashlib.batches import BatchStream
from dashlib.config import DistillConfig, Preset, to_dict
from dashlib.data import Split
from dashlib.diffusion import Diffusion
from dashlib.guidance import branches
from dashlib.io import atomic_torch_save, file_digest, load_checkpoint
from dashlib.runs import run_id, runs_root
from dashlib.teacher import teacher_payload, teacher_run
from dashlib.train import Batch

MAX_BYTES = 256 * 2**20
VERSION = 1


@dataclass(frozen=True)
class TeacherTargets:
    """eps_T(x_t, t, y) and eps_T(x_t, t, null) for every step's global batch."""

    cond: Tensor  # (steps, B, C, H, W)
    uncond: Tensor  # (steps, B, C, H, W)

    def branches(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(eps_cond, eps_uncond) of the teacher for this batch's rows (B_local, C, H, W)."""
        rows = slice(batch.offset, batch.offset + len(batch.y))
        device = batch.x0.device
        return self.cond[batch.step, rows].to(device), self.uncond[batch.step, rows].to(device)


def targets_payload(preset: Preset, config: DistillConfig) -> dict[str, Any]:
    """What the table depends on: the teacher (its run and its weights: a teacher retrained
    with --force keeps its run folder but may round differently) and the batch sequence."""
    final = teacher_run(preset).final
    return {"kind": "targets", "teacher": run_id(teacher_payload(preset)),
            "teacher_weights": file_digest(final) if final.is_file() else None,
            "data": to_dict(preset.data), "diffusion": to_dict(preset.diffusion),
            "seed": config.seed, "batch_size": config.batch_size, "steps": config.steps,
            "version": VERSION}


def targets_path(preset: Preset, config: DistillConfig) -> Path:
    return runs_root() / preset.name / f"targets-{run_id(targets_payload(preset, config))}.pt"


def table_bytes(preset: Preset, config: DistillConfig) -> int:
    m = preset.teacher
    return 2 * 4 * config.steps * config.batch_size * m.in_channels * m.image_size**2


def fits(preset: Preset, config: DistillConfig) -> bool:
    return table_bytes(preset, config) <= MAX_BYTES


@torch.no_grad()
def compute_targets(preset: Preset, config: DistillConfig, teacher: nn.Module, data: Split,
                    diffusion: Diffusion, progress: bool = True) -> Path:
    """Replay the run's batch sequence through the teacher and save the table."""
    device = next(teacher.parameters()).device
    stream = BatchStream(data, diffusion, config.batch_size,
                         torch.Generator().manual_seed(config.seed),
                         torch.Generator().manual_seed(config.seed + 1))
    shape = (config.steps, config.batch_size, *data.x.shape[1:])
    cond, uncond = torch.empty(shape), torch.empty(shape)
    teacher.eval()
    with stream:
        for step in bars.bar(range(config.steps), desc="teacher targets", disable=not progress,
                         mininterval=1.0):
            x0, y, t, eps, _, _ = stream.next()
            x_t = diffusion.q_sample(x0, t, eps).to(device)
            c, u = branches(teacher, x_t, t.to(device), y.to(device))
            cond[step], uncond[step] = c.float().cpu(), u.float().cpu()
    path = targets_path(preset, config)
    atomic_torch_save({"payload": targets_payload(preset, config), "cond": cond, "uncond": uncond},
                      path)
    return path


def load_targets(path: Path) -> TeacherTargets:
    ckpt = load_checkpoint(path)
    return TeacherTargets(ckpt["cond"], ckpt["uncond"])
