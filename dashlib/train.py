"""The training loop shared by teacher training and every distillation method.

An `Objective` (an nn.Module owning what is trained) turns a `Batch` into a
scalar loss; the `Trainer` draws batches from explicit generators, runs
AdamW with a cosine learning rate, gradient clipping, an EMA of the model,
mixed precision on GPU only, a tqdm progress bar, a JSON-lines log, and
atomic checkpoints from which `resume=True` continues bit-for-bit on CPU
(all generator states, the global RNG used by dropout, optimizer and EMA are
saved). A non-finite loss stops with a clear message and keeps the last good
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dashlib import bars
from dashlib.batches import BatchStream
from dashlib.config import OptimConfig
from dashlib.data import Split
from dashlib.device import autocast, check_batch_fits
from dashlib.diffusion import Diffusion
from dashlib.distributed import (
    GlobalBatch,
    dropout_seed,
    gather_rng_states,
    mean_over_ranks,
    rank_rows,
    rank_world,
    restore_rng_state,
    wrap_objective,
)
from dashlib.ema import EMA
from dashlib.io import atomic_torch_save, check_config_match, json_line, load_checkpoint
from dashlib.runs import Run, portable, remove_stale_temps, removed_if_unstarted
from dashlib.runtime import (
    PRECISIONS,
    Runtime,
    adamw_options,
    amp_dtype,
    compile_unets,
    precision_name,
    runs_precision,
    to_channels_last,
)
from dashlib.tirt import LOCAL_ROWS, BatchReduce


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class Batch:
    """One training batch with all of its randomness drawn up front.

    x0 (B, C, H, W), y (B,), t (B,), eps (B, C, H, W); `u` (B, 4) uniforms
    for per-sample choices (label dropout, a random w, ...) and `u_batch` (4,)
    uniforms for batch-level choices, so an objective needs no generator of
    its own and a run is a pure function of the seed. `step` is the training
    step that drew it (-1 outside a loop) and `offset` the position of its
    first row in the global batch (non-zero for later ranks under DDP).
    """

    x0: Tensor
    y: Tensor
    t: Tensor
    eps: Tensor
    u: Tensor
    u_batch: Tensor
    step: int = -1
    offset: int = 0

    def to(self, device: torch.device) -> Batch:
        return Batch(*(v.to(device, non_blocking=True) for v in
                       (self.x0, self.y, self.t, self.eps, self.u, self.u_batch)),
                     step=self.step, offset=self.offset)

    def rows(self, rows: slice) -> Batch:
        """The rows of a global batch one process works on (u_batch is shared)."""
        return Batch(self.x0[rows], self.y[rows], self.t[rows], self.eps[rows], self.u[rows],
                     self.u_batch, step=self.step, offset=self.offset + (rows.start or 0))


class Objective(nn.Module):
    """What a loop trains. Subclasses set `model` (the EMA'd network)."""

    model: nn.Module

    def loss(self, batch: Batch, over: BatchReduce = LOCAL_ROWS) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss to minimise, named scalar tensors to log); batch statistics
        inside the loss (TIRT's normalisation) are taken `over` those rows."""
        raise NotImplementedError

    def forward(self, batch: Batch, over: BatchReduce = LOCAL_ROWS) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss; what DistributedDataParallel calls (it syncs gradients only via forward)."""
        return self.loss(batch, over)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: every trainable parameter at `lr` with `weight_decay`, except a
        learned timestep-weighting table (the `weighting` submodule's parameters: TIRT's
        lambda_t, the uncertainty weighting's u_t), in a group of its own at
        `table_lr(lr)` and without weight decay (docs/choices.md), which would pull
        lambda_t towards the prior and u_t towards 0 whatever the losses say."""
        weighting = getattr(self, "weighting", None)
        table = ([p for p in weighting.parameters() if p.requires_grad]
                 if isinstance(weighting, nn.Module) else [])
        in_table = {id(p) for p in table}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in in_table]
        groups = [{"params": params, "lr": lr, "weight_decay": weight_decay}]
        if table:
            groups.append({"params": table, "lr": self.table_lr(lr), "weight_decay": 0.0})
        return groups

    def table_lr(self, lr: float) -> float:
        """The learning rate of a learned weighting table; by default the network's."""
        return lr

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to re-apply a pruning mask)."""


Hook = Callable[[int], Mapping[str, float]]


def check_global_batch(batch_size: int, image_shape: Sequence[int], device: torch.device, what: str) -> None:
    """Refuse, before any file is written, a global batch that does not fit the device or
    that the torchrun processes cannot share evenly (`rank_rows`)."""
    check_batch_fits(batch_size, image_shape, device, what)
    rank_rows(batch_size, *rank_world())


def warmup_note(loop: OptimConfig) -> str:
    """What a warm-up longer than the run means: the learning rate never reaches `lr`."""
    name, section = type(loop).__name__, loop.section
    peak = loop.lr * loop.steps / loop.warmup_steps
    return (f"{name}.warmup_steps = {loop.warmup_steps} is more than its steps = {loop.steps}, so the "
            f"learning rate rises to {peak:.3g} at most, never to lr = {loop.lr:g}; lower warmup_steps "
            f"(--set {section}.warmup_steps=N) if that is not meant")


def cosine_lr(step: int, loop: OptimConfig) -> float:
    """Linear warm-up, then cosine decay from lr to lr_min over the run."""
    if step < loop.warmup_steps:
        return loop.lr * (step + 1) / loop.warmup_steps
    span = max(loop.steps - loop.warmup_steps, 1)
    progress = min((step - loop.warmup_steps) / span, 1.0)
    return loop.lr_min + 0.5 * (loop.lr - loop.lr_min) * (1 + math.cos(math.pi * progress))


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (AdamW's moments) its parameter's memory
    format. A loaded state keeps the layout it was saved in, which is not the
    parameters' when a resumed run's layout rule differs (its precision, its device);
    the fused kernels walk parameters and moments element by element in memory order."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def last_record(log: Path) -> dict[str, float]:
    """The last line of a run's log.jsonl ({} if there is none)."""
    lines = log.read_text().splitlines() if log.is_file() else []
    return json.loads(lines[-1]) if lines and lines[-1].strip() else {}


class Trainer:
    """Runs an Objective for `loop.steps` steps on a Split, checkpointing to a Run.

    Under torchrun (dashlib.distributed) the objective is wrapped in DDP, each
    rank trains on its rows of the global batch, and rank 0 writes the log and
    checkpoints; `runtime` holds speed options (channels-last, compile, loader workers).
    """

    def __init__(self, objective: Objective, data: Split, diffusion: Diffusion, loop: OptimConfig,
                 run: Run, payload: Mapping[str, Any], device: torch.device,
                 hooks: Mapping[int, Hook] | None = None, progress: bool = True,
                 desc: str = "train", runtime: Runtime | None = None) -> None:
        self.rank, self.world = rank_world()
        with removed_if_unstarted(run, owner=self.rank == 0):  # e.g. out of memory moving the model
            self.rows = rank_rows(loop.batch_size, self.rank, self.world)
            self.runtime = runtime or Runtime()
            self.data, self.diffusion, self.loop, self.run = data, diffusion, loop, run
            self.payload, self.device, self.progress, self.desc = dict(payload), device, progress, desc
            self.objective = objective.to(device)
            self.set_precision(amp_dtype(device, loop.amp, objective.model.config.ch))
            self.hooks = dict(hooks or {})
            if loop.warmup_steps > loop.steps and self.rank == 0:
                print(f"dash: note: {desc}: {warmup_note(loop)}", file=sys.stderr)
            groups = objective.param_groups(loop.lr, loop.weight_decay)
            for g in groups:
                g["base_lr"] = g["lr"]
            self.optimizer = torch.optim.AdamW(groups, lr=loop.lr, weight_decay=loop.weight_decay,
                                               **adamw_options(device))
            self.ema = EMA(objective.model, loop.ema_decay)
            compile_unets(self.objective, self.runtime)  # after the EMA's deepcopy
            self._forward: nn.Module | None = None  # wrapped at the first step (`forward`)
            # batch statistics in the step's loss span every rank's rows (identity in one process)
            self.global_batch = GlobalBatch(self.world)
            self.data_gen = torch.Generator().manual_seed(loop.seed)
            self.noise_gen = torch.Generator().manual_seed(loop.seed + 1)
            self.stream = BatchStream(data, diffusion, loop.batch_size, self.data_gen, self.noise_gen,
                                      self.runtime.loader_workers, pin_memory=device.type == "cuda")
            self.step = 0
            self.last_ckpt_step = 0
            # training seconds before this process's segment (to the checkpoint it resumed
            # from), so a resumed run's log and wall_time_s count the whole run
            self.time_before, self.segment_start = 0.0, time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds of training: the earlier segments' (to the checkpoint) and this one's."""
        return self.time_before + time.perf_counter() - self.segment_start

    @property
    def forward(self) -> nn.Module:
        """The objective, wrapped in DDP under torchrun. Wrapped at the first step, after
        a resume has laid the weights out for the checkpoint's precision: DDP sizes its
        gradient buckets by the parameters' strides when it is built."""
        if self._forward is None:
            self._forward = wrap_objective(self.objective, self.device)
        return self._forward

    @property
    def precision(self) -> str:
        """The forward's autocast dtype ("bfloat16", "float16") or "float32" (results JSON)."""
        return precision_name(self.dtype)

    def set_precision(self, dtype: torch.dtype | None) -> None:
        """Autocast the forward to `dtype` (None: fp32), with a GradScaler for fp16, and
        lay the weights out as the runtime's rules say for that precision."""
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        to_channels_last(self.objective, self.runtime, self.device, dtype)

    def resume_precision(self, saved: str | None) -> None:
        """Continue in the precision the checkpoint was trained in (`saved`; None for
        checkpoints older than this rule), which this machine's rule may not pick: the
        bf16 rule depends on the CPU, so a run moved between machines would otherwise
        change its arithmetic midway. Where this device cannot run it, say so."""
        if saved is None or saved == self.precision:
            return
        if runs_precision(self.device, saved):
            if self.rank == 0:
                print(f"dash: note: continuing in {saved}, the precision this run was trained in "
                      f"(on this machine a new run would train in {self.precision})", file=sys.stderr)
            self.set_precision(PRECISIONS[saved])
        elif self.rank == 0:
            print(f"dash: note: the checkpoint was trained in {saved}, which {self.device.type} cannot "
                  f"run here; continuing in {self.precision} (the run will not replay exactly)",
                  file=sys.stderr)

    # --- randomness -----------------------------------------------------
    def draw_batch(self) -> Batch:
        """The global batch (same on every process), then this process's rows."""
        return Batch(*self.stream.next(), step=self.step).rows(self.rows).to(self.device)

    # --- checkpoints ----------------------------------------------------
    def state(self) -> dict[str, Any]:
        data_state, noise_state = self.stream.states()
        return {
            "step": self.step,
            "config": self.payload,
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "scaler": self.scaler.state_dict(),
            "precision": self.precision,
            "data_gen": data_state,
            "noise_gen": noise_state,
            "train_time_s": self.elapsed,
            "torch_rng": torch.get_rng_state(),
            # one process only: under DDP each rank saves just its own GPU's state (rank_rng)
            "cuda_rng": torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and self.world == 1 else [],
        }

    def save_checkpoint(self) -> None:
        rank_rng = gather_rng_states(self.device)  # collective: every rank takes part
        if self.rank == 0:
            state = self.state() if rank_rng is None else {**self.state(), "rank_rng": rank_rng}
            atomic_torch_save(state, self.run.checkpoint)
            remove_stale_temps(self.run)  # a kill mid-save elsewhere left them; this save supersedes
        self.last_ckpt_step = self.step

    def load_checkpoint(self) -> None:
        ckpt = load_checkpoint(self.run.checkpoint)
        check_config_match(self.run.checkpoint, portable(ckpt["config"]), portable(self.payload))
        self.resume_precision(ckpt.get("precision"))  # may change the layout: before the states
        self.objective.load_state_dict(ckpt["objective"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        match_param_layout(self.optimizer)
        self.ema.load_state_dict(ckpt["ema"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.data_gen.set_state(ckpt["data_gen"])
        self.noise_gen.set_state(ckpt["noise_gen"])
        self.stream.reset()
        self.step = self.last_ckpt_step = int(ckpt["step"])
        self.time_before = float(ckpt.get("train_time_s", 0.0))  # checkpoints before 2026-12-07: 0
        if self.world > 1 or ckpt.get("rank_rng") is not None:  # a torchrun checkpoint, or now torchrun
            restore_rng_state(ckpt.get("rank_rng"), self.device, self.loop.seed, self.step)
        else:
            torch.set_rng_state(ckpt["torch_rng"])
            if ckpt["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        if self.rank == 0:
            self._trim_log()

    def _trim_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        if not self.run.log.exists():
            return
        keep = []
        for line in self.run.log.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line)
            except json.JSONDecodeError:
                break  # a line cut off by a kill: everything after it is stale
        self.run.log.write_text("".join(k + "\n" for k in keep))

    # --- the loop -------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to `loop.steps`; returns the last logged record.

        A fresh run that fails (or is interrupted) before its first checkpoint
        removes its folder: it holds nothing to resume, only a config and a log.
        """
        with removed_if_unstarted(self.run, owner=self.rank == 0):
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, float]:
        if resume:
            self.load_checkpoint()
        else:
            # dropout draws from the global RNG: one stream per rank (rank 0: seed + 2)
            torch.manual_seed(dropout_seed(self.loop.seed, self.rank))
            if self.rank == 0:
                self.run.log.unlink(missing_ok=True)
        self.objective.train()
        record: dict[str, float] = {}
        bar = bars.bar(total=self.loop.steps, initial=self.step, desc=self.desc,
                   disable=not self.progress or self.rank != 0, mininterval=1.0, dynamic_ncols=True)
        self.segment_start = time.perf_counter()
        log_path = self.run.log if self.rank == 0 else os.devnull
        with bar, self.stream, open(log_path, "a") as log:
            while self.step < self.loop.steps:
                logs = self.train_step()
                self.step += 1
                bar.update(1)
                if self.step % self.loop.log_every == 0 or self.step == self.loop.steps:
                    record = self._record(logs)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if self.rank == 0:
                        log.write(json_line(record))
                        log.flush()
                if self.step % self.loop.ckpt_every == 0 or self.step == self.loop.steps:
                    self.save_checkpoint()
        # resumed from the last step's checkpoint (stopped before the final files): no step
        # ran, so the last logged record is the run's last
        return record or last_record(self.run.log)

    def _record(self, logs: Mapping[str, Tensor]) -> dict[str, float]:
        record = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"], "time": self.elapsed}
        record.update({k: float(v) for k, v in mean_over_ranks(logs).items()})
        previous = max(self.step - self.loop.log_every, 0)
        for every, hook in self.hooks.items():
            # hooks run on log lines only: fire on the first one at or after each multiple
            # of `every`, so an interval that is no multiple of log_every still fires
            if self.step // every > previous // every or self.step == self.loop.steps:
                record.update(hook(self.step))
        return record

    def train_step(self) -> dict[str, Tensor]:
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * cosine_lr(self.step, self.loop) / self.loop.lr
        batch = self.draw_batch()
        with autocast(self.device, self.dtype):
            loss, logs = self.forward(batch, self.global_batch)
        checked = mean_over_ranks({"loss": loss})["loss"]  # every rank stops together
        if not torch.isfinite(checked):
            kept = (f"The last good checkpoint (step {self.last_ckpt_step}) is kept in "
                    f"{self.run.checkpoint}. Lower the learning rate or check the data, then "
                    f"continue with --resume or start over with --force."
                    if self.run.checkpoint.exists() else
                    "No checkpoint was saved yet, so nothing is kept. Lower the learning rate "
                    "or check the data, then rerun.")
            raise NonFiniteLossError(
                f"the loss became {float(checked)} at step {self.step + 1}; training stopped. {kept}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.loop.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step()
        self.ema.update(self.objective.model)
        return {"loss": loss.detach(), "grad_norm": grad_norm, **logs}
