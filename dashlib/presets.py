"""Presets: the same pipeline at four scales.

* ``tiny``: synthetic 8x8 data, few-thousand-parameter models; seconds (tests).
* ``digits``: the embedded default. scikit-learn's bundled 8x8 digits (no
  download), a teacher and a 5.8x smaller student of the paper's UNet family;
  trains on a laptop CPU in minutes. ``digits16`` is the same at 16x16.
* ``cifar10`` / ``cifar100``: the paper's settings (docs/paper.md 'Setup') exactly.

Choices the paper leaves open, and what dash picks (documented in the README):
the student keeps dropout 0.1; the EMA warms up as min(decay, (1+k)/(10+k));
DDIM uses `linspace` spacing from T-1 to 0; digits uses smaller EMA decays and
a larger learning rate because it trains for thousands, not 100Ks, of steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dashlib.config import (
    ConfigError,
    DataConfig,
    DiffusionConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    Preset,
    SampleConfig,
    TrainConfig,
    Validated,
    fail,
    one_of,
    override,
)
from dashlib.data import DATASETS, dataset_info
from dashlib.diffusion import SCHEDULES
from dashlib.distill.methods import METHODS
from dashlib.guidance import GUIDANCE
from dashlib.registry import Registry, UnknownNameError
from dashlib.sampling import SPACINGS
from dashlib.tirt import WEIGHTINGS
from dashlib.unet import param_count

PRESETS: Registry[Preset] = Registry("preset")


def _cifar(name: str, num_classes: int) -> Preset:
    teacher = ModelConfig(image_size=32, in_channels=3, ch=128, ch_mult=(1, 2, 2, 2),
                          num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                          num_classes=num_classes, norm_groups=32)
    return Preset(
        name=name,
        description=f"docs/paper.md settings on {name.upper()} 32x32 (GPU scale)",
        data=DataConfig(name=name, image_size=32, data_root="data"),
        teacher=teacher,
        student=dataclasses.replace(teacher, ch=64, num_res_blocks=1),
        diffusion=DiffusionConfig(schedule="cosine", T=1000),
        train=TrainConfig(steps=391_000, batch_size=64, lr=2e-4, lr_min=1e-6, ema_decay=0.9999,
                          grad_clip=1.0, label_dropout=0.1, label_dropout_mode="batch",
                          weighting="tirt", amp="fp16", ckpt_every=5000, log_every=500),
        distill=DistillConfig(steps=234_000, batch_size=64, lr=1e-4, lr_min=1e-6,
                              weight_decay=1e-3, ema_decay=0.999, grad_clip=1.0, amp="fp16",
                              calib_every=5000, calib_samples=1024, ckpt_every=5000,
                              log_every=500),
        sample=SampleConfig(steps=50, eta=0.0, guidance="tag", w=4.0, w_min=1.0, w_max=4.0,
                            beta=5.0, batch_size=256),
        eval=EvalConfig(n_samples=50_000, seeds=(42, 123, 456), guidance=("0", "1", "4", "tag"),
                        ddim_steps=50, feature_extractor="inception", classifier_steps=10_000,
                        classifier_width=32, classifier_batch_size=128, keep_samples=False,
                        max_reference=50_000),  # the paper's reference: the whole training set
    )


PRESETS.add("cifar10", _cifar("cifar10", 10))
PRESETS.add("cifar100", _cifar("cifar100", 100))

_DIGITS_TEACHER = ModelConfig(image_size=8, in_channels=1, ch=32, ch_mult=(1, 2, 2),
                              num_res_blocks=2, attn_resolutions=(4,), dropout=0.1,
                              num_classes=10, norm_groups=8)

PRESETS.add("digits", Preset(
    name="digits",
    description="scikit-learn digits 8x8 (bundled, no download); laptop CPU",
    data=DataConfig(name="digits", image_size=8, holdout_fraction=0.2, split_seed=0),
    teacher=_DIGITS_TEACHER,
    student=dataclasses.replace(_DIGITS_TEACHER, ch=16, num_res_blocks=1),
    diffusion=DiffusionConfig(schedule="cosine", T=1000),
    train=TrainConfig(steps=2500, batch_size=64, lr=1e-3, lr_min=1e-5, warmup_steps=100,
                      ema_decay=0.995, grad_clip=1.0, label_dropout=0.1,
                      label_dropout_mode="batch", weighting="tirt", ckpt_every=250, log_every=25),
    distill=DistillConfig(steps=1000, batch_size=64, lr=1e-3, lr_min=1e-5, weight_decay=1e-3,
                          ema_decay=0.99, grad_clip=1.0, calib_every=100, calib_samples=256,
                          ckpt_every=250, log_every=25),
    sample=SampleConfig(steps=50, eta=0.0, guidance="tag", w=4.0, batch_size=64),
    # Evaluation budget (docs/evaluation.md): teacher + 9 students x 4 guidance settings x 3
    # seeds must take <= 15 min on 2 CPU cores. 500 samples x 20 DDIM steps costs ~10 min in one
    # process at the quiet-machine speeds (teacher 1900, student 5100 UNet rows/s; CFG = 2 rows
    # per sample-step), ~5 min in two; the paper's 50K / 50 steps stay in the cifar presets.
    eval=EvalConfig(n_samples=500, seeds=(42, 123, 456), guidance=("0", "1", "4", "tag"),
                    ddim_steps=20, feature_extractor="classifier", classifier_steps=600,
                    classifier_width=16, classifier_batch_size=64),
))

PRESETS.add("digits16", override(
    PRESETS.get("digits"), name="digits16",
    description="scikit-learn digits upsampled to 16x16; laptop CPU (slower than digits)",
    **{"data.image_size": 16},
    teacher=dataclasses.replace(_DIGITS_TEACHER, image_size=16, ch_mult=(1, 2, 2, 2),
                                attn_resolutions=(8,)),
    student=dataclasses.replace(_DIGITS_TEACHER, image_size=16, ch_mult=(1, 2, 2, 2),
                                attn_resolutions=(8,), ch=16, num_res_blocks=1),
))

_TINY_TEACHER = ModelConfig(image_size=8, in_channels=1, ch=4, ch_mult=(1, 2), num_res_blocks=2,
                            attn_resolutions=(4,), dropout=0.0, num_classes=4, norm_groups=2)

PRESETS.add("tiny", Preset(
    name="tiny",
    description="synthetic 8x8 data and few-thousand-parameter models; seconds (tests)",
    data=DataConfig(name="synthetic", image_size=8, synthetic_size=256, holdout_fraction=0.25),
    teacher=_TINY_TEACHER,
    student=dataclasses.replace(_TINY_TEACHER, ch=2, num_res_blocks=1, norm_groups=1),
    diffusion=DiffusionConfig(schedule="cosine", T=100),
    train=TrainConfig(steps=20, batch_size=16, lr=2e-3, lr_min=1e-4, ema_decay=0.9,
                      ckpt_every=10, log_every=5),
    distill=DistillConfig(steps=10, batch_size=16, lr=2e-3, lr_min=1e-4, ema_decay=0.9,
                          calib_every=5, calib_samples=32, ckpt_every=5, log_every=5),
    sample=SampleConfig(steps=5, eta=0.0, guidance="tag", w=3.0, batch_size=32),
    eval=EvalConfig(n_samples=32, seeds=(42, 123), guidance=("0", "1", "tag"), ddim_steps=5,
                    sweep_guidance=("0", "3", "tag"), sweep_steps=(2, 5), classifier_steps=60,
                    classifier_width=8, classifier_batch_size=32),
))


#: (section of the preset, field, registry): every config field that names a registry entry.
NAMED_FIELDS: tuple[tuple[str, str, Registry[Any]], ...] = (
    ("data", "name", DATASETS),
    ("diffusion", "schedule", SCHEDULES),
    ("train", "weighting", WEIGHTINGS),
    ("sample", "guidance", GUIDANCE),
    ("sample", "spacing", SPACINGS),
    ("distill", "method", METHODS),
)


def check(preset: Preset) -> Preset:
    """`preset` itself, once the checks the configs cannot make alone have passed: every
    registry name (`NAMED_FIELDS`), the distillation method's own knobs
    (`DistillObjective.check`) and a student smaller than the teacher. Raises
    `ConfigError` naming the field, as the configs' own checks do."""
    for section, name, registry in NAMED_FIELDS:
        config: Validated = getattr(preset, section)
        one_of(config, name, registry.names())
    METHODS.get(preset.distill.method).check(preset.distill)
    _check_student_smaller(preset)
    return preset


def _check_student_smaller(preset: Preset) -> None:
    t, s = param_count(preset.teacher), param_count(preset.student)
    if s >= t:
        fail(preset, "student", f"{s:,} parameters",
             f"the student must be smaller than the teacher ({t:,} parameters); "
             f"lower student.ch or student.num_res_blocks")


def get_preset(name: str, /, **overrides: Any) -> Preset:
    """A registered preset, with dotted-key overrides ("train.steps": 10), fitted to its
    data and checked (`check`). Its name is its identity (run folders, figures): not an
    override."""
    try:
        preset = PRESETS.get(name)
    except UnknownNameError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS.names())}") from None
    if "name" in overrides:
        raise ConfigError(f"a preset's name cannot be overridden (name={overrides['name']!r}); "
                          f"choose the preset with --preset, one of: {', '.join(PRESETS.names())}")
    if not overrides:
        return check(preset)
    fitted = check(fit_to_data(override(preset, **sized_for_data(preset, overrides))))
    check_fitted(fitted, overrides)
    return fitted


def check_fitted(fitted: Preset, overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that `fit_to_data` had to replace: the data decide them."""
    asked = overrides.get("eval.n_samples")
    if asked is not None and fitted.eval.n_samples != asked:  # raised to one sample per class
        raise ConfigError(f"eval.n_samples = {asked} is too small: samples are balanced over the "
                          f"{fitted.teacher.num_classes} classes; ask for at least {fitted.eval.n_samples}")
    for model in ("teacher", "student"):
        for field, how in (("num_classes", "the dataset's class count"),
                           ("in_channels", "the data's channels; --set data.channels=1|3 converts "
                                           "the images")):
            key, value = f"{model}.{field}", getattr(getattr(fitted, model), field)
            if key in overrides and overrides[key] != value:
                raise ConfigError(f"{key} = {overrides[key]!r} does not match the data ({value}): it "
                                  f"follows {how}")


def resized(config: ModelConfig, size: int, name: str,
            ch_mult: tuple[int, ...] | None = None) -> ModelConfig:
    """The same UNet for size x size images: attention stays at the same depths
    (digits' attention at 4 of 8 becomes 16 of 32). `ch_mult` (default: the model's)
    gives the levels the new size must halve through; `name` is the model's, for the error."""
    ch_mult = tuple(ch_mult or config.ch_mult)
    down = 2 ** (len(ch_mult) - 1)
    if size % down:
        fits = sorted({max(down, size // down * down), (size // down + 1) * down})
        raise ConfigError(f"data.image_size = {size} does not fit the {name}'s {len(ch_mult)} "
                          f"resolution levels (ch_mult {ch_mult}): it must be divisible by {down}, "
                          f"e.g. {' or '.join(map(str, fits))}; or set {name}.ch_mult too")
    depths = [round(math.log2(config.image_size / r)) for r in config.attn_resolutions]
    return dataclasses.replace(config, image_size=size, ch_mult=ch_mult,
                               attn_resolutions=tuple(size // 2**d for d in depths))


def sized_for_data(preset: Preset, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` plus, when they change `data.image_size` but not a model's
    `image_size`, that model `resized` to it (attention at the preset model's depths,
    unless `attn_resolutions` is given; levels from the overrides' `ch_mult` if given,
    checked at the new size, not the old). So `--set data.image_size=32` is all it
    takes to run a preset's models on larger images."""
    out = dict(overrides)
    size = out.get("data.image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return out  # absent, or invalid: DataConfig's own check names it
    for model in ("teacher", "student"):
        config = getattr(preset, model)
        if f"{model}.image_size" in out or config.image_size == size:
            continue
        ch_mult = out.get(f"{model}.ch_mult")
        valid = isinstance(ch_mult, (list, tuple)) and ch_mult and all(isinstance(c, int) for c in ch_mult)
        fitted = resized(config, size, model, tuple(ch_mult) if valid else None)
        out[f"{model}.image_size"] = size
        out.setdefault(f"{model}.attn_resolutions", fitted.attn_resolutions)
    return out


def fit_to_data(preset: Preset) -> Preset:
    """The preset with both models sized for its dataset's classes and channels, and
    evaluation drawing at least one sample per class.

    A no-op for the registered presets; it is what lets any dataset run at any
    preset's model sizes (`--set data.name=imagefolder --data-root DIR`).
    """
    info = dataset_info(preset.data)
    changes: dict[str, Any] = {}
    for model in ("teacher", "student"):
        config = getattr(preset, model)
        if config.num_classes != info.num_classes:
            changes[f"{model}.num_classes"] = info.num_classes
        if config.in_channels != info.channels:
            changes[f"{model}.in_channels"] = info.channels
    if preset.eval.n_samples < info.num_classes:
        changes["eval.n_samples"] = info.num_classes
    return override(preset, **changes) if changes else preset
