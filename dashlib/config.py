"""Frozen, validated configuration dataclasses.

Every config checks its own fields on construction and raises `ConfigError`
naming the class, the field, the bad value and what is allowed, so a typo in a
notebook's parameters cell or on the command line fails at once and readably.

This module imports nothing from dashlib: it is the bottom floor. Checks that
need another module (a name in a registry such as `DataConfig.name`, whether the
student is smaller than the teacher) are made once per preset by
`dashlib.presets.check`, with the same `ConfigError` messages.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

C = TypeVar("C")


#: Values that reach float32 tensors (guidance scales) must fit one.
FLOAT32_MAX = 3.4028234663852886e38
#: Seeds lie in [0, 2**32 - 1] (torch and numpy generators both take them; derived
#: seeds such as seed + 1 or seed + 7919 * step stay far inside torch's 64 bits).
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field and fix."""


def fail(obj: object, name: str, value: object, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"{type(obj).__name__}.{name} = {value!r} is invalid: {allowed}")


def _type_ok(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)  # type: ignore[arg-type]
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    """"int", "tuple[str, ...]" (a generic's arguments spelt out: what its items must be)."""
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


#: a JSON list of each item type, for the `--set` example of a tuple field
_LIST_EXAMPLES = {int: "[42, 123]", float: "[0.5, 1.0]", str: '["a", "b"]'}


def _example(hint: Any) -> str:
    """How to give a tuple field on the command line: " (a JSON list, e.g. ...)"; else ""."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple or not args or args[0] not in _LIST_EXAMPLES:
        return ""
    return f" (a JSON list, e.g. --set 'KEY={_LIST_EXAMPLES[args[0]]}', strings in double quotes)"


class Validated:
    """Mixin: type-check every field, then run the class's own `validate`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            # Lists from JSON or a notebook become tuples, ints become floats.
            if isinstance(value, list) and typing.get_origin(hints[f.name]) is tuple:
                object.__setattr__(self, f.name, tuple(value))
                value = getattr(self, f.name)
            if hints[f.name] is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                hint = hints[f.name]
                fail(self, f.name, value, f"must be of type {_describe(hint)}{_example(hint)}")
            if f.name.endswith("seed") or f.name.endswith("seeds"):
                seed_range(self, f.name)
        self.validate()

    def validate(self) -> None:
        """Range checks; overridden by each config."""


def positive(obj: object, name: str, strict: bool = True) -> None:
    value = getattr(obj, name)
    if isinstance(value, float) and not math.isfinite(value):
        fail(obj, name, value, "must be a finite number")
    if value < 0 or (strict and value == 0):
        fail(obj, name, value, "must be > 0" if strict else "must be >= 0")


def in_range(obj: object, name: str, lo: float, hi: float) -> None:
    value = getattr(obj, name)
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        fail(obj, name, value, f"must lie in [{lo}, {hi}]")


def one_of(obj: object, name: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    value = getattr(obj, name)
    if value not in allowed:
        fail(obj, name, value, f"choose one of: {', '.join(map(str, allowed))}")


def finite(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        fail(obj, name, value, "must be a finite number (|x| <= 3.4e38, float32's range)")


def seed_range(obj: object, name: str) -> None:
    """A seed field (int, or a tuple of them) must lie in [0, MAX_SEED]."""
    value = getattr(obj, name)
    for seed in value if isinstance(value, tuple) else (value,):
        if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            fail(obj, name, value, f"seeds must lie in [0, {MAX_SEED}] (2**32 - 1)")


@dataclass(frozen=True)
class ModelConfig(Validated):
    """A class-conditional ADM/DDPM-style UNet (see `dashlib.unet`).

    `cfg=True` adds the null class row (index `num_classes`) so one network
    has a conditional and an unconditional branch; `null_init` says how that
    row starts ("random" like every row, "zero", or "mean" of the class rows).
    `emb_silu=True` passes the timestep + class embedding through SiLU before each
    residual block's projection, as ADM and DDPM do; False projects it linearly, the
    layout of dash's runs before 2026-12-07 (a checkpoint without the key loads so).
    """

    image_size: int = 8
    in_channels: int = 1
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (4,)
    dropout: float = 0.1
    num_classes: int = 10
    norm_groups: int = 32
    cfg: bool = True
    null_init: str = "random"
    emb_silu: bool = True

    def validate(self) -> None:
        for name in ("image_size", "in_channels", "ch", "num_res_blocks", "num_classes", "norm_groups"):
            positive(self, name)
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            fail(self, "ch_mult", self.ch_mult, "must be a non-empty tuple of positive ints")
        down = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % down:
            fail(self, "image_size", self.image_size,
                 f"must be divisible by 2**(len(ch_mult)-1) = {down}")
        in_range(self, "dropout", 0.0, 1.0)
        resolutions = {self.image_size // 2**i for i in range(len(self.ch_mult))}
        for r in self.attn_resolutions:
            if r not in resolutions:
                fail(self, "attn_resolutions", self.attn_resolutions,
                     f"each must be one of the UNet's resolutions {sorted(resolutions)}")
        for m in set(self.ch_mult):
            if (self.ch * m) % self.norm_groups:
                fail(self, "norm_groups", self.norm_groups,
                     f"must divide every level's width ch*mult (here {self.ch}*{m})")
        one_of(self, "null_init", NULL_INIT_CHOICES)


@dataclass(frozen=True)
class DiffusionConfig(Validated):
    """Noise schedule and horizon; the model predicts epsilon."""

    schedule: str = "cosine"
    T: int = 1000

    def validate(self) -> None:
        if self.T < 2:
            fail(self, "T", self.T, "must be >= 2")


@dataclass(frozen=True)
class DataConfig(Validated):
    """Which dataset, where it lives, and the size images are served at.

    `name` is a registered dataset (`dashlib.data.DATASETS`): "digits",
    "synthetic", torchvision's "cifar10", "cifar100", "mnist", "fashion-mnist",
    or "imagefolder" (your own images under `data_root`, one folder per
    class). `channels` = 0 keeps the dataset's own channel count; 1 or 3
    converts (grey <-> RGB). `data_root` and `download` say where the files
    are, not what they are, so they are left out of run hashes.
    """

    name: str = "digits"
    image_size: int = 8
    data_root: str = "data"
    download: bool = False
    holdout_fraction: float = 0.2
    split_seed: int = 0
    synthetic_size: int = 512
    synthetic_classes: int = 4
    channels: int = 0

    def validate(self) -> None:
        positive(self, "image_size")
        in_range(self, "holdout_fraction", 0.01, 0.9)
        positive(self, "synthetic_size")
        if self.synthetic_classes < 2:
            fail(self, "synthetic_classes", self.synthetic_classes, "must be >= 2")
        one_of(self, "channels", (0, 1, 3))


#: `OptimConfig.amp` choices.
AMP_MODES = ("auto", "none", "bf16", "fp16")


@dataclass(frozen=True)
class OptimConfig(Validated):
    """One training loop, shared by the teacher (`TrainConfig`) and distillation
    (`DistillConfig`) and read by `dashlib.train.Trainer`: `steps` of AdamW(`lr`,
    `weight_decay`) on `batch_size` rows, linear warm-up over `warmup_steps` then cosine
    decay to `lr_min`, gradients clipped at `grad_clip`, an EMA of the weights
    (`ema_decay`), mixed precision `amp` ("auto": fp16/bf16 on CUDA, bf16 on CPUs with
    AMX or AVX-512 BF16 for UNets of base width >= 64, fp32 elsewhere:
    `dashlib.runtime.amp_dtype`), a checkpoint
    every `ckpt_every` and a log line every `log_every` steps, all randomness from `seed`.
    """

    section: ClassVar[str] = "train"  # its preset section (`--set train.*`; distill overrides)

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    lr_min: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    amp: str = "auto"
    ckpt_every: int = 200
    log_every: int = 25
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "lr", "ckpt_every", "log_every", "grad_clip"):
            positive(self, name)
        for name in ("lr_min", "weight_decay", "warmup_steps"):
            positive(self, name, strict=False)
        if self.lr_min > self.lr:
            fail(self, "lr_min", self.lr_min, f"must be <= lr ({self.lr})")
        in_range(self, "ema_decay", 0.0, 1.0)
        if self.ema_decay == 1.0:
            fail(self, "ema_decay", self.ema_decay, "must be < 1 (1 would never update the EMA)")
        one_of(self, "amp", AMP_MODES)


@dataclass(frozen=True)
class TrainConfig(OptimConfig):
    """The teacher's training (and `scratch`'s): docs/paper.md 'Setup'. Adds CFG label
    dropout and the timestep weighting (`weighting`: a `dashlib.tirt.WEIGHTINGS` name,
    checked by `presets.check`) to the shared loop."""

    label_dropout: float = 0.1
    label_dropout_mode: str = "batch"
    weighting: str = "tirt"
    tirt_lr: float | None = None

    def validate(self) -> None:
        super().validate()
        in_range(self, "label_dropout", 0.0, 1.0)
        one_of(self, "label_dropout_mode", ("batch", "sample"))
        if self.tirt_lr is not None:
            positive(self, "tirt_lr", strict=False)


@dataclass(frozen=True)
class SampleConfig(Validated):
    """DDIM with classifier-free guidance: constant `w` or the TAG schedule.

    `guidance="constant"` uses `w`; `guidance="tag"` uses
    w(t) = w_min + (w_max - w_min) * sigmoid(beta * (0.5 - t / T)).
    `batch_size` is the number of samples per chunk (the CFG forward sees
    twice as many rows).
    """

    steps: int = 50
    eta: float = 0.0
    guidance: str = "tag"
    w: float = 4.0
    w_min: float = 1.0
    w_max: float = 4.0
    beta: float = 5.0
    batch_size: int = 64
    clip_x0: bool = True
    spacing: str = "linspace"

    def validate(self) -> None:
        positive(self, "steps")
        in_range(self, "eta", 0.0, 1.0)
        for name in ("w", "w_min", "w_max", "beta"):
            finite(self, name)
        positive(self, "batch_size")


@dataclass(frozen=True)
class DistillConfig(OptimConfig):
    """One distillation run: the method and its knobs (see `dashlib.distill`).

    `im`, `un`, `an` weight DASH's imitation, unconditional and anchor terms;
    `tirt` is "transfer" (teacher's lambda_t, frozen), "uniform" (w_t = 1),
    "relearn" (the teacher's weighting learned again by the student from zero: lambda_t for
    TIRT; a weighting that learns nothing stays fixed), "min-snr" (the fixed
    Min-SNR-5 prior: TIRT without lambda_t), "uncertainty" (the principled
    EDM2 weighting, learned by the student from zero) or "auto" (the method's
    default: transfer for DASH, uniform for every baseline). `w_train` is the
    composite training scale (single-head students imitate the sampler's guidance,
    `sample.*`); `w_range` the multi-w range.
    `null_rows` feeds the null label to output-level students during training.
    `method` names a `dashlib.distill.METHODS` objective, which checks the knobs it
    reads (`presets.check`); the loop's fields are `OptimConfig`'s.
    """

    section: ClassVar[str] = "distill"  # its preset section (`--set distill.*`)
    lr: float = 1e-4
    weight_decay: float = 1e-3
    ema_decay: float = 0.999
    method: str = "dash"
    im: float = 1.0
    un: float = 1.0
    an: float = 0.1
    tirt: str = "auto"
    w_train: float = 4.0
    w_range: tuple[float, float] = (1.0, 5.0)
    feature_weight: float = 1.0
    prune_fraction: float = 8.95 / 35.75
    single_head_fraction: float = 8.99 / 35.75
    null_init: str = "random"
    null_rows: bool = False
    label_dropout: float = 0.1
    calib_every: int = 100
    calib_samples: int = 256

    def validate(self) -> None:
        super().validate()
        for name in ("calib_every", "calib_samples"):
            positive(self, name)
        for name in ("im", "un", "an", "feature_weight"):
            positive(self, name, strict=False)
        one_of(self, "tirt", TIRT_CHOICES)
        finite(self, "w_train")
        lo, hi = self.w_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            fail(self, "w_range", self.w_range, "must be two finite numbers (lo, hi) with lo <= hi")
        in_range(self, "prune_fraction", 0.01, 1.0)
        in_range(self, "single_head_fraction", 0.01, 1.0)
        one_of(self, "null_init", NULL_INIT_CHOICES)
        in_range(self, "label_dropout", 0.0, 1.0)


#: `ModelConfig.null_init` choices: how the null-label row starts (`dashlib.unet.NULL_INITS`).
NULL_INIT_CHOICES = ("random", "zero", "mean")

#: `DistillConfig.tirt` choices (see its docstring).
TIRT_CHOICES = ("auto", "transfer", "uniform", "relearn", "min-snr", "uncertainty")


def number_label(w: float) -> str:
    """The text of a constant w: "3", "0", "2.5" (`:g`), or the full repr where `:g` would round."""
    short = f"{w:g}"
    return short if float(short) == w else repr(w)


def guidance_key(spec: str) -> str | float:
    """What a guidance entry means: "tag", or its w as a float ("3" and "3.0" are one setting)."""
    return spec if spec == "tag" else float(spec)


def guidance_spec_ok(spec: object) -> bool:
    """Whether `spec` names a guidance setting: "tag", or a constant w given as a number
    or as its text ("3") that is finite and fits float32 (`dashlib.guidance.Guidance.parse`)."""
    if isinstance(spec, str) and spec == "tag":
        return True
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        return False
    try:
        w = float(spec)
    except (ValueError, OverflowError):
        return False
    return math.isfinite(w) and abs(w) <= FLOAT32_MAX


#: torch-fidelity's metric groups: FID, Inception Score, KID, precision/recall.
IMAGE_METRICS = ("fid", "isc", "kid", "prc")


@dataclass(frozen=True)
class EvalConfig(Validated):
    """Sample-quality evaluation (see `dashlib.evaluate` and docs/evaluation.md).

    One evaluation cell is (run, guidance, DDIM steps, seed): `n_samples`
    samples balanced over the classes. `guidance` entries are "tag" or a
    constant w, stored as its text ("0", "1", "3"; given as a number or as
    other text of it, 3.0 or "3.0", it is stored as "3"); `sweep_guidance` and
    `sweep_steps` are the grids of the guidance and step sweeps.

    `feature_extractor` is the primary FID/IS/KID/PRC feature space:
    "inception" (torch-fidelity's Inception-v3, the paper's) or "classifier"
    (dashlib's small CNN trained on the dataset, offline). The classifier is
    always trained, because it also judges guidance fidelity (its accuracy on
    the samples of each requested class). `classifier_*` set its training:
    `classifier_width` is the first conv width (features are 4x that).

    `inception_weights` is a local weights file; without one the file is
    looked up in torch-fidelity's cache and, only if `download_weights`,
    downloaded. `keep_samples` caches each cell's uint8 samples next to its
    metrics (cheap at 8x8, 150 MB per 50K-sample CIFAR cell).

    `max_reference` bounds the real images metrics compare against (a
    class-balanced subset of the train split drawn with `reference_seed`), so
    memory depends on configuration, not on the dataset's size: precision/recall
    holds an N_ref x N_ref distance matrix. `metrics` picks torch-fidelity's
    metric groups; a metric left out is reported as null ("-" in tables).
    """

    n_samples: int = 500
    seeds: tuple[int, ...] = (42, 123, 456)
    guidance: tuple[str, ...] = ("0", "1", "4", "tag")
    ddim_steps: int = 50
    sweep_guidance: tuple[str, ...] = ("0", "1", "2", "3", "4", "tag")
    sweep_steps: tuple[int, ...] = (10, 20, 50, 100)
    feature_extractor: str = "classifier"
    classifier_steps: int = 1500
    classifier_width: int = 32
    classifier_batch_size: int = 128
    classifier_lr: float = 2e-3
    classifier_seed: int = 0
    inception_weights: str | None = None
    download_weights: bool = False
    keep_samples: bool = True
    max_reference: int = 10_000
    reference_seed: int = 0
    metrics: tuple[str, ...] = ("fid", "isc", "kid", "prc")

    def __post_init__(self) -> None:
        # a constant w, given as a number (JSON `[0, 3]`, a notebook's `(0, 3)`) or as text
        # ("3.0"), is stored as the text its cells are named by ("3"), as `--w` stores it
        for name in ("guidance", "sweep_guidance"):
            specs = getattr(self, name)
            if isinstance(specs, (list, tuple)):
                object.__setattr__(self, name, tuple(
                    number_label(float(g)) if g != "tag" and guidance_spec_ok(g) else g for g in specs))
        super().__post_init__()

    def validate(self) -> None:
        for name in ("n_samples", "ddim_steps", "classifier_steps", "classifier_width",
                     "classifier_batch_size", "classifier_lr"):
            positive(self, name)
        if not self.seeds:
            fail(self, "seeds", self.seeds, "must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            fail(self, "seeds", self.seeds, "must not repeat a seed")
        for name in ("guidance", "sweep_guidance"):
            specs = getattr(self, name)
            if not specs or not all(guidance_spec_ok(g) for g in specs):
                fail(self, name, specs, "must be a non-empty tuple whose entries are 'tag' or a "
                                        "finite number such as '3'")
            if len({guidance_key(g) for g in specs}) != len(specs):
                fail(self, name, specs, "must not repeat a guidance setting (3 and 3.0 are one)")
        if not self.sweep_steps or any(s <= 0 for s in self.sweep_steps):
            fail(self, "sweep_steps", self.sweep_steps, "must be a non-empty tuple of positive ints")
        one_of(self, "feature_extractor", ("classifier", "inception"))
        if self.max_reference < 5:
            fail(self, "max_reference", self.max_reference, "must be >= 5 (precision/recall uses k = 3 "
                                                            "neighbours)")
        unknown = set(self.metrics) - set(IMAGE_METRICS)
        if unknown or len(set(self.metrics)) != len(self.metrics):
            fail(self, "metrics", self.metrics, f"must be distinct entries of {IMAGE_METRICS} "
                                                f"(an empty tuple turns every image metric off)")


@dataclass(frozen=True)
class Preset(Validated):
    """Everything a pipeline needs, at one scale."""

    name: str
    description: str
    data: DataConfig
    teacher: ModelConfig
    student: ModelConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        for model in ("teacher", "student"):
            m: ModelConfig = getattr(self, model)
            if m.image_size != self.data.image_size:
                fail(self, f"{model}.image_size", m.image_size,
                     f"must equal data.image_size ({self.data.image_size})")
            if m.num_classes != self.teacher.num_classes:
                fail(self, f"{model}.num_classes", m.num_classes,
                     f"must equal teacher.num_classes ({self.teacher.num_classes})")
            if m.in_channels != self.teacher.in_channels:
                fail(self, f"{model}.in_channels", m.in_channels, "must equal the teacher's")
        T = self.diffusion.T
        for name, steps in (("sample.steps", self.sample.steps),
                            ("eval.ddim_steps", self.eval.ddim_steps),
                            ("eval.sweep_steps", max(self.eval.sweep_steps))):
            if steps > T:
                fail(self, name, steps, f"DDIM cannot take more steps than the {T} diffusion "
                                        f"timesteps (diffusion.T); choose at most {T}")


def to_dict(cfg: object) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config."""
    return dataclasses.asdict(cfg)  # type: ignore[call-overload,no-any-return]


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a (nested) config dataclass; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; "
                          f"known fields are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value)  # type: ignore[arg-type]
        kwargs[key] = value
    return cls(**kwargs)


def override(cfg: C, **changes: Any) -> C:
    """`dataclasses.replace` with dotted keys for nested fields.

    >>> override(preset, **{"train.steps": 10})
    """
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    for key in list(flat) + list(nested):
        if key not in names:
            raise ConfigError(f"{type(cfg).__name__} has no field {key!r}; fields: {sorted(names)}")
    for head, sub in nested.items():
        group = getattr(cfg, head)
        if not dataclasses.is_dataclass(group):
            raise ConfigError(f"{type(cfg).__name__}.{head} is a single value, not a group of fields: "
                              f"its key takes no '.{next(iter(sub))}' after it")
        flat[head] = override(group, **sub)
    return dataclasses.replace(cfg, **flat)  # type: ignore[type-var]
