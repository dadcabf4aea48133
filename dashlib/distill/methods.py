"""Every distillation method the paper compares, as a registry of objectives.

Each method is an `Objective` whose `terms(batch, x_t)` returns named
per-sample losses (B,); the total is sum_k coef_k * mean_i(w_{t_i} L_k,i)
with w_t the method's timestep weighting (uniform for the baselines, the
teacher's frozen TIRT for DASH). The teacher is frozen and held outside the
module tree, so checkpoints contain only what is trained.

What decides whether an output-level student *collapses* or *explodes* is how
its null row starts (`DistillConfig.null_init`: random / zero / mean of the
class rows) and whether it ever sees the null label in training
(`DistillConfig.null_rows`, for the methods whose output term is conditional
only: `cond-only` and `fitnets`). Both are explicit config fields.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dashlib.config import ConfigError, DistillConfig, ModelConfig, Preset, SampleConfig, fail
from dashlib.diffusion import Diffusion
from dashlib.distill import losses
from dashlib.distill.pruning import apply_masks, emptied, emptied_note, magnitude_prune, prunable
from dashlib.distill.targets import TeacherTargets
from dashlib.guidance import Guidance, branches, cfg_combine
from dashlib.losses import mse_per_sample
from dashlib.registry import Registry, UnknownNameError
from dashlib.teacher import drop_labels
from dashlib.tirt import LOCAL_ROWS, BatchReduce, TimestepWeighting
from dashlib.train import Batch, Objective
from dashlib.unet import UNet, build_unet, count_params, feature_channels


class DistillObjective(Objective):
    """Base class: a trainable student, a frozen teacher, a timestep weighting, and the
    method's own hyperparameters (`defaults`, overridden by keyword, e.g.
    `DASH(student, teacher, weighting, diffusion, im=1.0, un=1.0, an=0.1)`).

    What a method is, the pipeline reads from these attributes, never from its name:
    `default_tirt` (the weighting of `DistillConfig.tirt="auto"`), `uses_teacher`,
    `uses_targets` (reads the teacher's branches at the batch's own labels, so the
    precomputed `TeacherTargets` can stand in), `has_uncond_branch` (the student keeps
    a null row), `reads_sampling_guidance` (the target depends on the preset's sampling
    guidance, which then belongs to the run's identity), `params_counted` ("all", or
    "nonzero" for a student that keeps the teacher's dense shapes), and what one sample
    of a batch costs: `student_rows` (rows through the student, forward and backward)
    and `teacher_rows` (no-grad rows through the teacher when it runs on line, none
    when the precomputed targets stand in); `explored` (the explorer, notebook 06, shows
    the method's student by default)."""

    default_tirt: ClassVar[str] = "uniform"
    uses_teacher: ClassVar[bool] = True
    uses_targets: ClassVar[bool] = False
    has_uncond_branch: ClassVar[bool] = True
    reads_sampling_guidance: ClassVar[bool] = False
    params_counted: ClassVar[str] = "all"
    explored: ClassVar[bool] = False
    student_rows: ClassVar[int] = 1
    teacher_rows: ClassVar[int] = 0
    #: The method's hyperparameters and their defaults; each is the `DistillConfig` field
    #: of the same name unless `hyperparameters` says otherwise.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, student: UNet, teacher: UNet, weighting: TimestepWeighting,
                 diffusion: Diffusion, **hyper: Any) -> None:
        super().__init__()
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no hyperparameter(s) {sorted(unknown)}; "
                            f"it takes {sorted(self.defaults)}")
        self.model, self.weighting, self.diffusion = student, weighting, diffusion
        self.hyper: dict[str, Any] = {**self.defaults, **hyper}
        self._frozen = [teacher.eval().requires_grad_(False)]  # a list: not a submodule
        self.targets: TeacherTargets | None = None  # precomputed teacher outputs, if available

    @classmethod
    def from_config(cls, student: UNet, teacher: UNet, weighting: TimestepWeighting,
                    diffusion: Diffusion, config: DistillConfig, sample: SampleConfig) -> DistillObjective:
        """The objective with its hyperparameters read from the run's configuration."""
        return cls(student, teacher, weighting, diffusion, **cls.hyperparameters(config, sample))

    @classmethod
    def hyperparameters(cls, config: DistillConfig, sample: SampleConfig) -> dict[str, Any]:
        """This method's hyperparameters as `config` sets them."""
        return {name: getattr(config, name) for name in cls.defaults}

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        """Weight of each named loss term in the total, given the hyperparameters."""
        return {}

    @classmethod
    def check(cls, config: DistillConfig) -> None:
        """Refuse a configuration this method cannot train (`ConfigError`)."""

    @property
    def teacher(self) -> UNet:
        return self._frozen[0]

    @classmethod
    def architecture(cls, preset: Preset, config: DistillConfig) -> ModelConfig:
        """The student's architecture: the preset's, with the configured null row."""
        return dataclasses.replace(preset.student, null_init=config.null_init)

    @classmethod
    def build_student(cls, preset: Preset, config: DistillConfig, teacher: UNet) -> UNet:
        """A freshly initialised student (seeded by `config.seed`)."""
        return build_unet(cls.architecture(preset, config), seed=config.seed)

    def coefficients(self) -> dict[str, float]:
        """Weight of each named term in the total loss."""
        return self.term_weights(self.hyper)

    def report(self) -> dict[str, Any]:
        """What this method adds to the run's results.json (nothing by default)."""
        return {}

    def notes(self) -> list[str]:
        """Warnings about this student for the user, one line each (none by default)."""
        return []

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, batch: Batch, over: BatchReduce = LOCAL_ROWS) -> tuple[Tensor, dict[str, Tensor]]:
        x_t = self.diffusion.q_sample(batch.x0, batch.t, batch.eps)
        terms = self.terms(batch, x_t)
        coef = self.coefficients()
        total = self.weighting.reduce_terms(batch.t, terms, coef, over)
        self.weighting.observe(batch.t, sum(coef[k] * v for k, v in terms.items()), over=over)
        return total, {k: v.detach().mean() for k, v in terms.items()}  # type: ignore[return-value]

    def _cached(self, batch: Batch) -> bool:
        """Whether this batch's teacher outputs come from the precomputed targets."""
        return self.targets is not None and batch.step >= 0

    @torch.no_grad()
    def teacher_branches(self, batch: Batch, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's two branches at the batch's labels: from the precomputed
        targets when present, else one batched no-grad forward."""
        if self._cached(batch):
            return self.targets.branches(batch)
        return branches(self.teacher, x_t, batch.t, batch.y)

    @torch.no_grad()
    def teacher_output(self, batch: Batch, x_t: Tensor, y: Tensor) -> Tensor:
        """eps_T(x_t, t, y) (B, C, H, W) for labels y that may hold null rows: picked
        from the cached branches when present, else one forward of B rows."""
        if self._cached(batch):
            cond, uncond = self.targets.branches(batch)
            is_null = (y == self.teacher.null_label).view(-1, *([1] * (cond.dim() - 1)))
            return torch.where(is_null, uncond, cond)
        return self.teacher(x_t, batch.t, y)

    def labels(self, batch: Batch) -> Tensor:
        """y, with null at rate `label_dropout` when `null_rows` is on (per sample)."""
        if not self.hyper["null_rows"]:
            return batch.y
        return drop_labels(batch.y, self.model.null_label, self.hyper["label_dropout"],
                           batch.u[:, 0], batch.u_batch[0], "sample")


#: Added to the run's seed for FitNets' adapters, so they do not share the student's draws.
ADAPTER_SEED_OFFSET = 1_000_003

#: Hyperparameters of the output-level methods that may feed null rows (`labels`).
NULL_ROWS = {"null_rows": False, "label_dropout": 0.1}


METHODS: Registry[type[DistillObjective]] = Registry("distillation method")


def check_variant(owner: str, method: str, changes: Mapping[str, Any]) -> None:
    """Refuse a variant (a method and `DistillConfig` changes) whose method is unknown, or
    whose changes name no `DistillConfig` field or give a value the field refuses: when
    its table is built, not in the middle of a sweep."""
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        what = "is not a DistillConfig field" if len(unknown) == 1 else "are not DistillConfig fields"
        raise ConfigError(f"{owner}: {', '.join(unknown)} {what}; choose from {', '.join(sorted(fields))}")
    try:
        config = dataclasses.replace(DistillConfig(method=method), **changes)
        METHODS.get(method).check(config)
    except (ConfigError, UnknownNameError) as err:
        raise ConfigError(f"{owner}: {err}") from None


# --- baselines -------------------------------------------------------------------

@METHODS.register("scratch")
class Scratch(DistillObjective):
    """No teacher: standard CFG training on data with label dropout,
    L = |eps_S(x_t, t, y') - eps|^2, y' = null with probability `distill.label_dropout`,
    the whole batch at once (the authors' mode, which every preset's teacher trains with;
    a teacher set to `train.label_dropout_mode=sample` does not change it)."""

    uses_teacher = False
    defaults = {"label_dropout": 0.1}

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"data": 1.0}

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        y = drop_labels(batch.y, self.model.null_label, self.hyper["label_dropout"], batch.u[:, 0],
                        batch.u_batch[0], "batch")
        return {"data": mse_per_sample(self.model(x_t, batch.t, y), batch.eps)}


@METHODS.register("cond-only")
class CondOnly(DistillObjective):
    """Output-level distillation of the conditional branch only:
    L = |eps_S(x_t, t, y) - eps_T(x_t, t, y)|^2. The null branch is never
    supervised (unless `null_rows`, which swaps y for null on some rows)."""

    teacher_rows = 1
    uses_targets = True
    explored = True  # the output-level student whose gap breaks
    defaults = NULL_ROWS

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"im": 1.0}

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        y = self.labels(batch)
        target = self.teacher_output(batch, x_t, y)
        return {"im": losses.imitation(self.model(x_t, batch.t, y), target)}


@METHODS.register("composite")
class Composite(DistillObjective):
    """The guided ("composite") output at one training scale w:
    L = |eps~_S - eps~_T|^2, eps~ = eps(null) + w (eps(y) - eps(null)), w = `w_train`.
    Only this mix of the branches is constrained; the gap itself is not."""

    student_rows = teacher_rows = 2
    uses_targets = True
    defaults = {"w_train": 4.0}

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"composite": 1.0}

    def guidance(self, batch: Batch) -> Tensor | float:
        return float(self.hyper["w_train"])

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        cond_t, uncond_t = self.teacher_branches(batch, x_t)
        cond_s, uncond_s = branches(self.model, x_t, batch.t, batch.y)
        w = self.guidance(batch)
        return {"composite": losses.composite(cond_s, uncond_s, cond_t, uncond_t, w)}


@METHODS.register("multi-w-composite")
class MultiWComposite(Composite):
    """Composite matching with w drawn per sample, w ~ U(w_range):
    L = |eps~_S(w_i) - eps~_T(w_i)|^2."""

    defaults = {"w_range": (1.0, 5.0)}

    def guidance(self, batch: Batch) -> Tensor:
        lo, hi = self.hyper["w_range"]
        return lo + (hi - lo) * batch.u[:, 1]


@METHODS.register("fitnets")
class FitNets(DistillObjective):
    """Feature-level distillation (Romero et al. 2015) plus the output term:
    L = |eps_S(x_t,t,y) - eps_T(x_t,t,y)|^2 + beta sum_l |A_l(h_S,l) - h_T,l|^2,
    h_l the output of every down-path level and of the middle block (conditional
    pass), A_l a learned 1x1 conv from student to teacher width, beta =
    `feature_weight`. The adapters start from `seed` (the run's), so a run is
    the same in every process."""

    teacher_rows = 1
    defaults = {**NULL_ROWS, "feature_weight": 1.0, "seed": 0}

    def __init__(self, student: UNet, teacher: UNet, *parts: Any, **hyper: Any) -> None:
        super().__init__(student, teacher, *parts, **hyper)
        # nn.Conv2d draws its initial weights from the global RNG, whose seed differs
        # between processes; a forked, seeded RNG makes them a function of the run's seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hyper["seed"] + ADAPTER_SEED_OFFSET)
            self.adapters = nn.ModuleList(
                nn.Conv2d(cs, ct, 1) for cs, ct in
                zip(feature_channels(student.config), feature_channels(teacher.config)))

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"im": 1.0, "feat": hyper["feature_weight"]}

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        y = self.labels(batch)
        with torch.no_grad():
            target, feats_t = self.teacher.forward_with_features(x_t, batch.t, y)
        out, feats_s = self.model.forward_with_features(x_t, batch.t, y)
        adapted = [a(f) for a, f in zip(self.adapters, feats_s)]
        return {"im": losses.imitation(out, target), "feat": losses.features(adapted, feats_t)}


@METHODS.register("gap-match")
class GapMatch(DistillObjective):
    """Match the teacher's gap directly, plus the conditional term:
    L = |eps_S(y) - eps_T(y)|^2 + |delta_S - delta_T|^2."""

    student_rows = teacher_rows = 2
    uses_targets = True

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"im": 1.0, "gap": 1.0}

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        cond_t, uncond_t = self.teacher_branches(batch, x_t)
        cond_s, uncond_s = branches(self.model, x_t, batch.t, batch.y)
        return {"im": losses.imitation(cond_s, cond_t),
                "gap": losses.gap(cond_s, uncond_s, cond_t, uncond_t)}


@METHODS.register("pruning")
class Pruning(Scratch):
    """Global magnitude pruning of the teacher to `prune_fraction` of its
    parameters (the paper: 8.95M of 35.75M), then fine-tuning within the same
    budget with the teacher's own data objective (CFG training with label
    dropout): L = |eps_P(x_t, t, y') - eps|^2, masks re-applied after every step.

    Why this objective: it is the standard prune-then-fine-tune recipe and keeps
    both branches trained, so the row measures what pruning alone does, without
    borrowing any distillation term the other rows compare. Unstructured
    sparsity saves no time on dense kernels: sampling costs the teacher's FLOPs.
    """

    uses_teacher = True
    params_counted = "nonzero"

    def __init__(self, student: UNet, *parts: Any, **hyper: Any) -> None:
        super().__init__(student, *parts, **hyper)
        # The pruned weights are exactly zero; the kept ones are not.
        self.masks = {name: w.detach() != 0 for name, w in prunable(student).items()}

    @classmethod
    def architecture(cls, preset: Preset, config: DistillConfig) -> ModelConfig:
        return preset.teacher

    @classmethod
    def build_student(cls, preset: Preset, config: DistillConfig, teacher: UNet) -> UNet:
        student = build_unet(teacher.config, seed=config.seed)
        student.load_state_dict(teacher.state_dict())
        magnitude_prune(student, config.prune_fraction)
        return student

    def after_step(self) -> None:
        apply_masks(self.model, self.masks)

    def report(self) -> dict[str, Any]:
        return {"emptied_layers": emptied(self.masks)}

    def notes(self) -> list[str]:
        note = emptied_note(emptied(self.masks))
        return [note] if note else []


@METHODS.register("single-head")
class SingleHead(DistillObjective):
    """A student without CFG (no null row) that predicts the teacher's guided
    output in one pass: L = |eps_S(x_t, t, y) - eps~_T(x_t, t, y; w(t))|^2 with
    w(t) the preset's sampling guidance (TAG by default). It is wider than the
    two-branch student, `single_head_fraction` of the teacher's parameters (the
    paper: 8.99M of 35.75M), since it runs one pass per step instead of two."""

    teacher_rows = 2
    uses_targets = True
    has_uncond_branch = False
    reads_sampling_guidance = True
    defaults = {"guidance": Guidance.from_config(SampleConfig())}

    @classmethod
    def hyperparameters(cls, config: DistillConfig, sample: SampleConfig) -> dict[str, Any]:
        return {"guidance": Guidance.from_config(sample)}

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"guided": 1.0}

    @classmethod
    def architecture(cls, preset: Preset, config: DistillConfig) -> ModelConfig:
        return single_head_config(preset, config.single_head_fraction)

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        cond_t, uncond_t = self.teacher_branches(batch, x_t)
        w = self.hyper["guidance"].scale(batch.t, self.diffusion.T)
        target = cfg_combine(cond_t, uncond_t, w)
        return {"guided": mse_per_sample(self.model(x_t, batch.t, batch.y), target)}


# --- DASH --------------------------------------------------------------------------

@METHODS.register("dash")
class DASH(DistillObjective):
    """Dual-branch supervision (docs/paper.md, method 1):
    L_DASH = im L_im + un L_un + an L_an, with
    L_im = |eps_S(y) - eps_T(y)|^2, L_un = |eps_S(null) - eps_T(null)|^2,
    L_an = |eps_S(y) - eps|^2, default weights 1, 1, 0.1, each weighted per
    timestep by the teacher's frozen TIRT (TIRT Transfer). One step: the
    teacher's two branches in one batched no-grad forward, the student's two
    branches in one batched forward/backward; no label dropout on the student."""

    student_rows = teacher_rows = 2
    default_tirt = "transfer"
    uses_targets = True
    explored = True
    defaults = {"im": 1.0, "un": 1.0, "an": 0.1}

    @classmethod
    def term_weights(cls, hyper: Mapping[str, Any]) -> dict[str, float]:
        return {"im": hyper["im"], "un": hyper["un"], "an": hyper["an"]}

    @classmethod
    def check(cls, config: DistillConfig) -> None:
        if not (config.im or config.un or config.an):
            fail(config, "im", config.im, "im, un and an are all 0, so DASH has no loss; "
                                          "give at least one term a positive weight")

    def terms(self, batch: Batch, x_t: Tensor) -> dict[str, Tensor]:
        cond_t, uncond_t = self.teacher_branches(batch, x_t)
        cond_s, uncond_s = branches(self.model, x_t, batch.t, batch.y)
        return {"im": losses.imitation(cond_s, cond_t),
                "un": losses.unconditional(uncond_s, uncond_t),
                "an": losses.anchor(cond_s, batch.eps)}


def single_head_config(preset: Preset, fraction: float) -> ModelConfig:
    """The student architecture, widened so its parameter count is closest to
    `fraction` of the teacher's, without a null row. Widths step by 2; GroupNorm
    gets its groups from `single_head_groups`."""
    return _widened(preset.teacher, preset.student, fraction)


@functools.lru_cache(maxsize=32)
def _widened(teacher: ModelConfig, student: ModelConfig, fraction: float) -> ModelConfig:
    """`single_head_config`'s search, once per process and sizes (every run payload of the
    single-head student asks for it, several times per notebook). The parameter count
    grows with the width, so a bisection finds the first width at or above the target
    and compares it with the one below (the smaller on a tie): a handful of models built
    on the meta device instead of one per width (0.2 s instead of 1.8 s at digits)."""
    widths = range(2, 4 * teacher.ch + 1, 2)

    def widened(ch: int) -> ModelConfig:
        return dataclasses.replace(student, ch=ch, cfg=SingleHead.has_uncond_branch,
                                   norm_groups=single_head_groups(ch, student.norm_groups))

    with torch.device("meta"):
        target = fraction * count_params(UNet(teacher))
        gap = functools.cache(lambda i: count_params(UNet(widened(widths[i]))) - target)
        lo, hi = 0, len(widths) - 1  # the first width whose count reaches the target, or the last
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if gap(mid) < 0 else (lo, mid)
        best = lo - 1 if lo > 0 and abs(gap(lo - 1)) <= abs(gap(lo)) else lo
    return widened(widths[best])


def single_head_groups(ch: int, groups: int) -> int:
    """GroupNorm groups for a widened student of base width `ch` whose own width has
    `groups`: gcd(ch, groups) where that leaves at least min(4, groups) groups, else the
    divisor of `ch` nearest `groups` (the larger on a tie). Without the fallback
    widths such as 78 at 32 groups (gcd 2) were skipped, and the cifar single-head
    student came out at 0.240 of the teacher instead of the paper's 0.251."""
    shared = math.gcd(ch, groups)
    if shared >= min(4, groups):
        return shared
    return min((d for d in range(1, ch + 1) if ch % d == 0), key=lambda d: (abs(d - groups), -d))


def counts_nonzero(name: str) -> bool:
    """Whether the model called `name` (a method, or "teacher") is sized by its nonzero
    parameters (`params_counted`): a pruned student keeps the teacher's dense shapes."""
    return name in METHODS and METHODS.get(name).params_counted == "nonzero"
