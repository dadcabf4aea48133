"""Teacher training: epsilon-prediction with label dropout and TIRT learned jointly.

Per sample (docs/paper.md, 'Setup' and method 2):

    y' = null if dropped else y          (batch-level dropout by default, as the authors did)
    L_i = |eps_theta(x_t, t, y') - eps|^2   averaged over pixels
    loss = mean_i w_{t_i} L_i            (w_t from the selected weighting, e.g. TIRT)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dashlib.artifacts import save_artifact
from dashlib.config import Preset, to_dict
from dashlib.data import load_dataset
from dashlib.device import resolve_device
from dashlib.diffusion import Diffusion
from dashlib.distributed import barrier, is_main, on_main
from dashlib.io import atomic_write_json
from dashlib.losses import mse_per_sample
from dashlib.runs import Run, make_run, prepare, training_lock
from dashlib.runtime import Runtime
from dashlib.tirt import LOCAL_ROWS, BatchReduce, TimestepWeighting, bin_mean, drift_report, make_weighting
from dashlib.train import Batch, Objective, Trainer, check_global_batch
from dashlib.unet import UNet, build_unet, count_params


def drop_labels(y: Tensor, null: int, p: float, u: Tensor, u_batch: Tensor, mode: str) -> Tensor:
    """Label dropout: "batch" switches the whole batch to null with prob. p
    (the authors' choice), "sample" each row independently."""
    drop = (u_batch < p).expand_as(y) if mode == "batch" else u < p
    return torch.where(drop, torch.full_like(y, null), y)


class DiffusionObjective(Objective):
    """Standard CFG training on data (the teacher, and the `scratch` student)."""

    def __init__(self, model: UNet, weighting: TimestepWeighting, diffusion: Diffusion,
                 label_dropout: float, dropout_mode: str) -> None:
        super().__init__()
        self.model, self.weighting, self.diffusion = model, weighting, diffusion
        self.label_dropout, self.dropout_mode = label_dropout, dropout_mode

    def loss(self, batch: Batch, over: BatchReduce = LOCAL_ROWS) -> tuple[Tensor, dict[str, Tensor]]:
        y = drop_labels(batch.y, self.model.null_label, self.label_dropout, batch.u[:, 0],
                        batch.u_batch[0], self.dropout_mode)
        x_t = self.diffusion.q_sample(batch.x0, batch.t, batch.eps)
        per_sample = mse_per_sample(self.model(x_t, batch.t, y), batch.eps)
        self.weighting.observe(batch.t, per_sample, over=over)
        return self.weighting.reduce(batch.t, per_sample, over), {"mse": per_sample.detach().mean()}


def teacher_payload(preset: Preset) -> dict[str, Any]:
    """Everything that determines a teacher run (its hash keys the run folder)."""
    return {"kind": "teacher", "preset": preset.name, "data": to_dict(preset.data),
            "model": to_dict(preset.teacher), "diffusion": to_dict(preset.diffusion),
            "train": to_dict(preset.train)}


def teacher_run(preset: Preset) -> Run:
    return make_run(preset.name, "teacher", teacher_payload(preset))


def tirt_hook(weighting: TimestepWeighting) -> Any:
    """Logs the binned effective weights and the drift measurement."""

    def hook(step: int) -> dict[str, Any]:
        drift = drift_report(weighting)
        return {"tirt_bins": bin_mean(weighting.profile()).tolist(),
                "loss_bins": weighting.loss_ema.tolist(),
                **{f"tirt_{k}": v for k, v in drift.items()}}

    return hook


def train_teacher(preset: Preset, force: bool = False, resume: bool = True,
                  device: str = "auto", progress: bool = True, runtime: Runtime | None = None) -> Run:
    """Train (or reuse) the preset's teacher; returns its finished run folder.

    An interrupted run is resumed from its last checkpoint (`resume`, default; a lock file
    keeps a second process out, `dashlib.runs.training_lock`); `resume=False` refuses one
    instead, as `dash train-teacher` does without --resume.

    Under torchrun every rank trains its share of each batch; rank 0 alone
    prepares the folder and writes files (dashlib.distributed)."""
    payload = teacher_payload(preset)
    run = teacher_run(preset)
    dev = resolve_device(device)  # checked even when the run is reused: a typo is an error either way
    if run.finished and not force:
        return run
    data = load_dataset(preset.data)  # a missing dataset fails here, before anything is written
    check_global_batch(preset.train.batch_size, data.train.x.shape[1:], dev, "train.batch_size")
    diffusion = Diffusion(preset.diffusion)
    model = build_unet(preset.teacher, seed=preset.train.seed)  # too large a model fails before any file
    weighting = make_weighting(preset.train.weighting, diffusion)
    objective = TeacherObjective(model, weighting, diffusion, preset.train)
    loop = preset.train
    with training_lock(run, owner=is_main(), together=on_main):  # one process trains a folder at a time
        state = on_main(lambda: prepare(run, payload, force=force, resume=resume))
        trainer = Trainer(objective, data.train, diffusion, loop, run, payload, dev,
                          hooks={max(loop.steps // 40, 1): tirt_hook(weighting)}, progress=progress,
                          desc=f"teacher[{preset.name}]", runtime=runtime)
        last = trainer.fit(resume=state == "resume")
        wall = trainer.elapsed  # a resumed run's too: its earlier segments to the checkpoint
        if is_main():  # rank 0 writes; every rank returns once the files exist
            save_artifact(run, "teacher", payload, trainer.ema.shadow, weighting, preset.train.weighting)
            atomic_write_json(run.results, {
                "kind": "teacher", "preset": preset.name, "steps": loop.steps, "seed": loop.seed,
                "params": count_params(model), "final_loss": last.get("loss"),
                "final_mse": last.get("mse"), "wall_time_s": wall, "tirt_drift": drift_report(weighting),
                "device": str(dev), "precision": trainer.precision, "processes": trainer.world,
                "run": str(run.path)})
    barrier()
    return run


class TeacherObjective(DiffusionObjective):
    """The teacher's objective, with TIRT's lambda_t at its own learning rate."""

    def __init__(self, model: UNet, weighting: TimestepWeighting, diffusion: Diffusion,
                 train: Any) -> None:
        super().__init__(model, weighting, diffusion, train.label_dropout, train.label_dropout_mode)
        self.tirt_lr = train.tirt_lr

    def table_lr(self, lr: float) -> float:
        return self.tirt_lr if self.tirt_lr is not None else lr
