"""Training the toy teacher and students in seconds (uniform timestep weights, no TIRT).

Teacher (CFG training, label dropout p per sample):

    L = E |eps_theta(x_t, t, y') - eps|^2,   y' = null with probability p, else y

Student, for (x_0, y), eps, t, x_t (docs/paper.md, method 1):

    L = im |eps_S(x_t,t,y) - eps_T(x_t,t,y)|^2          imitation        L_im
      + un |eps_S(x_t,t,null) - eps_T(x_t,t,null)|^2    unconditional    L_un
      + an |eps_S(x_t,t,y) - eps|^2                     anchor           L_an

DASH is (1, 1, 0.1); an output-level student gets only the imitation term
(1, 0, 0), so its unconditional branch is never supervised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dashlib.diffusion import Diffusion
from dashlib.distill.losses import anchor, imitation, unconditional
from dashlib.guidance import branches
from dashlib.losses import mse_per_sample
from dashlib.registry import Registry
from dashlib.workshop.mlp import ToyMLP, ToyModelConfig, build_toy_mlp
from dashlib.workshop.toy import ToyConfig, sample_data


@dataclass(frozen=True)
class StudentLoss:
    """Weights of the imitation, unconditional and anchor terms."""

    im: float
    un: float
    an: float


STUDENT_LOSSES: Registry[StudentLoss] = Registry("toy student loss")
STUDENT_LOSSES.add("output-level", StudentLoss(im=1.0, un=0.0, an=0.0))
STUDENT_LOSSES.add("dash", StudentLoss(im=1.0, un=1.0, an=0.1))
STUDENT_LOSSES.add("dash-no-uncond", StudentLoss(im=1.0, un=0.0, an=0.1))


@dataclass(frozen=True)
class ToyBatch:
    """x0, eps (B, 2); y, t (B,) int64; u (B,) uniforms for label dropout; all drawn up front."""

    x0: Tensor
    y: Tensor
    t: Tensor
    eps: Tensor
    u: Tensor


def draw_batch(config: ToyConfig, diffusion: Diffusion, generator: torch.Generator) -> ToyBatch:
    x0, y = sample_data(config, config.batch_size, generator)
    t = diffusion.sample_t(config.batch_size, generator)
    eps = torch.randn(x0.shape, generator=generator)
    return ToyBatch(x0, y, t, eps, torch.rand(config.batch_size, generator=generator))


def teacher_loss(model: ToyMLP, diffusion: Diffusion, batch: ToyBatch, p_drop: float) -> Tensor:
    """CFG training, per sample (B,): |eps_theta(x_t, t, y') - eps|^2, y' = null with
    probability `p_drop` per sample."""
    y = torch.where(batch.u < p_drop, torch.full_like(batch.y, model.null_label), batch.y)
    x_t = diffusion.q_sample(batch.x0, batch.t, batch.eps)
    return mse_per_sample(model(x_t, batch.t, y), batch.eps)


def student_terms(student: ToyMLP, teacher: ToyMLP, diffusion: Diffusion,
                  batch: ToyBatch) -> dict[str, Tensor]:
    """DASH's L_im, L_un, L_an per sample, each (B,) (`dashlib.distill.losses`, the same
    terms the real students train on); both student branches from one batched forward."""
    x_t = diffusion.q_sample(batch.x0, batch.t, batch.eps)
    with torch.no_grad():
        cond_t, uncond_t = branches(teacher, x_t, batch.t, batch.y)
    cond_s, uncond_s = branches(student, x_t, batch.t, batch.y)
    return {"im": imitation(cond_s, cond_t), "un": unconditional(uncond_s, uncond_t),
            "an": anchor(cond_s, batch.eps)}


def student_loss(student: ToyMLP, teacher: ToyMLP, diffusion: Diffusion, batch: ToyBatch,
                 weights: StudentLoss) -> Tensor:
    """The scalar objective: each term's batch mean, weighted (uniformly over timesteps)."""
    terms = {k: v.mean() for k, v in student_terms(student, teacher, diffusion, batch).items()}
    return weights.im * terms["im"] + weights.un * terms["un"] + weights.an * terms["an"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny MLPs train fastest on one CPU thread (no threading overhead per small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(params: Iterable[nn.Parameter], loss_fn: Callable[[ToyBatch], Tensor], config: ToyConfig,
        diffusion: Diffusion, steps: int, generator: torch.Generator,
        on_step: Callable[[], object] | None = None) -> list[float]:
    """Adam with a cosine decay to lr/10; returns the loss of every step. `on_step` is
    called after each step (a progress bar's update)."""
    opt = torch.optim.Adam(list(params), lr=config.lr)
    losses: list[float] = []
    with one_thread():
        _steps(opt, loss_fn, config, diffusion, steps, generator, losses, on_step)
    return losses


def _steps(opt: torch.optim.Optimizer, loss_fn: Callable[[ToyBatch], Tensor], config: ToyConfig,
           diffusion: Diffusion, steps: int, generator: torch.Generator, losses: list[float],
           on_step: Callable[[], object] | None) -> None:
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        loss = loss_fn(draw_batch(config, diffusion, generator))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step()


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar (a widget in Jupyter, text elsewhere); disabled it draws nothing."""
    from dashlib import bars

    return bars.bar(total=total, desc=desc, disable=not enabled, unit="step", auto=True)


def train_toy_teacher(config: ToyConfig, diffusion: Diffusion,
                      on_step: Callable[[], object] | None = None) -> tuple[ToyMLP, list[float]]:
    model = build_toy_mlp(ToyModelConfig(config.teacher_hidden, config.depth, config.num_classes),
                          seed=config.seed)
    g = torch.Generator().manual_seed(config.seed)
    losses = fit(model.parameters(), lambda b: teacher_loss(model, diffusion, b, config.label_dropout).mean(),
                 config, diffusion, config.teacher_steps, g, on_step)
    return model.eval(), losses


def train_toy_student(config: ToyConfig, diffusion: Diffusion, teacher: ToyMLP,
                      loss: str | StudentLoss,
                      on_step: Callable[[], object] | None = None) -> tuple[ToyMLP, list[float]]:
    """A student of width `student_hidden` trained on the named (or given) loss weights."""
    weights = STUDENT_LOSSES.get(loss) if isinstance(loss, str) else loss
    model = build_toy_mlp(ToyModelConfig(config.student_hidden, config.depth, config.num_classes),
                          seed=config.seed + 1)
    g = torch.Generator().manual_seed(config.seed + 1)
    losses = fit(model.parameters(), lambda b: student_loss(model, teacher, diffusion, b, weights),
                 config, diffusion, config.student_steps, g, on_step)
    return model.eval(), losses


@dataclass
class Workshop:
    """The trained toy models: `models` is {"teacher": ..., student name: ...}."""

    config: ToyConfig
    diffusion: Diffusion
    models: dict[str, ToyMLP]
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def teacher(self) -> ToyMLP:
        return self.models["teacher"]

    def add_student(self, name: str, loss: str | StudentLoss, progress: bool = True,
                    on_step: Callable[[], object] | None = None) -> ToyMLP:
        """Train one more student (a progress bar unless `progress=False` or `on_step` is given)."""
        start = time.perf_counter()
        if on_step is None:
            with progress_bar(self.config.student_steps, name, progress) as bar:
                model, losses = train_toy_student(self.config, self.diffusion, self.teacher, loss,
                                                  bar.update)
        else:
            model, losses = train_toy_student(self.config, self.diffusion, self.teacher, loss, on_step)
        self.models[name], self.losses[name] = model, losses
        self.seconds[name] = time.perf_counter() - start
        return model


def build_workshop(config: ToyConfig, students: Iterable[str] = ("output-level", "dash"),
                   progress: bool = True) -> Workshop:
    """Train the teacher, then one student per named loss, under one progress bar."""
    names = list(students)
    diffusion = Diffusion(config.diffusion)
    total = config.teacher_steps + len(names) * config.student_steps
    with progress_bar(total, "workshop: teacher + students", progress) as bar:
        start = time.perf_counter()
        teacher, losses = train_toy_teacher(config, diffusion, bar.update)
        shop = Workshop(config, diffusion, {"teacher": teacher}, {"teacher": losses},
                        {"teacher": time.perf_counter() - start})
        for name in names:
            bar.set_description(f"workshop: student {name}")
            shop.add_student(name, name, on_step=bar.update)
    return shop
