"""Classifier-free guidance: the two branches, their mix, and the w(t) schedules.

eps_guided = eps_uncond + w * (eps_cond - eps_uncond)      (docs/paper.md, 'The problem')

w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1
guided (Ho & Salimans' w_HS = w - 1). The guidance gap is
delta = eps_cond - eps_uncond.

A guidance setting is one `Guidance` value: a constant w, or the TAG schedule
with its parameters. It is parsed once where a setting enters (config, CLI,
notebook parameters, evaluation cells) from a spec ("tag", a number, or a
number as text) and passed through to whatever samples or trains with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.config import (
    ConfigError,
    SampleConfig,
    Validated,
    fail,
    finite,
    guidance_spec_ok,
    number_label,
    one_of,
)
from dashlib.registry import Registry

GuidanceFn = Callable[["Guidance", Tensor, int], Tensor]


@dataclass(frozen=True)
class Schedule:
    """A w(t) schedule and the `SampleConfig` fields it reads (its parameters)."""

    fn: GuidanceFn
    params: tuple[str, ...]


GUIDANCE: Registry[Schedule] = Registry("guidance schedule")
#: Every schedule parameter; a Guidance holds the ones its schedule reads, the rest None.
PARAMS = ("w", "w_min", "w_max", "beta")


def schedule(name: str, *params: str) -> Callable[[GuidanceFn], GuidanceFn]:
    """Register a schedule under `name`, reading the parameters `params`."""
    def decorator(fn: GuidanceFn) -> GuidanceFn:
        GUIDANCE.add(name, Schedule(fn, params))
        return fn

    return decorator


@schedule("constant", "w")
def constant_scale(g: Guidance, t: Tensor, T: int) -> Tensor:
    """w(t) = w for every timestep; returns (B,) float."""
    return torch.full(t.shape, g.w, dtype=torch.float32, device=t.device)


@schedule("tag", "w_min", "w_max", "beta")
def tag_scale(g: Guidance, t: Tensor, T: int) -> Tensor:
    """TAG (docs/paper.md, method 4): w(t) = w_min + (w_max - w_min) sigmoid(beta (0.5 - t/T)).

    Guidance is weak at high noise (t near T) and strong near the data.
    """
    s = torch.sigmoid(g.beta * (0.5 - t.float() / T))
    return g.w_min + (g.w_max - g.w_min) * s


@dataclass(frozen=True)
class Guidance(Validated):
    """One guidance setting: `schedule` ("constant" or "tag") and the parameters it reads
    (constant: `w`; tag: `w_min`, `w_max`, `beta`); the others are None.

    Build it with `Guidance.parse(spec, base)` from "tag", a number or a number as
    text (TAG takes its parameters from the sampler config `base`), or with
    `Guidance.from_config(sample_config)`.
    """

    schedule: str
    w: float | None = None
    w_min: float | None = None
    w_max: float | None = None
    beta: float | None = None

    def validate(self) -> None:
        one_of(self, "schedule", GUIDANCE.names())
        used = GUIDANCE.get(self.schedule).params
        for name in PARAMS:
            value = getattr(self, name)
            if name not in used:
                if value is not None:
                    fail(self, name, value, f"must be None: the {self.schedule} schedule does not read it")
                continue
            if value is None:
                fail(self, name, value, f"the {self.schedule} schedule needs it")
            object.__setattr__(self, name, float(value))  # 3 and 3.0 are the same setting
            finite(self, name)

    @classmethod
    def parse(cls, spec: Guidance | str | float, base: SampleConfig) -> Guidance:
        """"tag" (TAG with `base`'s w_min, w_max, beta), a number or a number as text
        (constant w), or a Guidance (returned as is); anything else raises ConfigError."""
        if isinstance(spec, Guidance):
            return spec
        if not guidance_spec_ok(spec):
            raise ConfigError(_invalid(spec))
        if spec == "tag":
            return cls._from("tag", base)
        return cls("constant", w=float(spec))

    @classmethod
    def from_config(cls, config: SampleConfig) -> Guidance:
        """The guidance a sampler config selects (`config.guidance` and its parameters)."""
        return cls._from(config.guidance, config)

    @classmethod
    def _from(cls, name: str, config: SampleConfig) -> Guidance:
        return cls(name, **{p: getattr(config, p) for p in GUIDANCE.get(name).params})

    def in_config(self, base: SampleConfig) -> SampleConfig:
        """`base` with its guidance fields set to this setting (the inverse of `from_config`)."""
        params = {p: getattr(self, p) for p in GUIDANCE.get(self.schedule).params}
        return dataclasses.replace(base, guidance=self.schedule, **params)

    def scale(self, t: Tensor, T: int) -> Tensor:
        """The guidance scale w(t) (B,) float at timesteps t (B,) of T."""
        return GUIDANCE.get(self.schedule).fn(self, t, T)

    @property
    def constant(self) -> float | None:
        """The constant w, or None for a time-varying schedule."""
        return self.w if self.schedule == "constant" else None

    @property
    def label(self) -> str:
        """The spec text of results JSON, caches and tables: "tag", or the w ("3", "0", "2.5")."""
        return self.schedule if self.constant is None else number_label(self.constant)

    @property
    def title(self) -> str:
        """For figure and table captions: "TAG", or "w = 3"."""
        return self.schedule.upper() if self.constant is None else f"w = {self.label}"


def _invalid(spec: object) -> str:
    """Why `spec` is no guidance setting; a number names the SampleConfig field it would set."""
    try:
        w = None if isinstance(spec, bool) else float(spec)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        w = None
    if w is None:
        return f"guidance {spec!r} is invalid: give 'tag' or a finite number such as 3"
    return (f"SampleConfig.w = {w!r} is invalid: must be a finite number (|x| <= 3.4e38, float32's "
            f"range); guidance {spec!r} asks for it")


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, w: Tensor | float) -> Tensor:
    """eps_uncond + w (eps_cond - eps_uncond); w is a float or (B,)."""
    if isinstance(w, Tensor):
        w = w.to(eps_cond.dtype).view(-1, *([1] * (eps_cond.ndim - 1)))
    return eps_uncond + w * (eps_cond - eps_uncond)


def branches(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(eps_cond, eps_uncond), each (B, C, H, W), from ONE batched forward of 2B rows."""
    null = torch.full_like(y, model.null_label)
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    eps_cond, eps_uncond = out.chunk(2)
    return eps_cond, eps_uncond


def one_branch(w: Tensor | float | None) -> bool:
    """Whether the CFG mix at guidance w is one branch alone: a constant w of exactly 1
    is the conditional branch, 0 the unconditional one (`cfg_combine`), so a
    guided step there needs one row per sample, not two. A per-row w (a Tensor) or a
    time-varying schedule (None) needs both."""
    return isinstance(w, (int, float)) and not isinstance(w, bool) and float(w) in (0.0, 1.0)


def guided_eps(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor, w: Tensor | float) -> Tensor:
    """The guided prediction; a model without a null row (cfg=False) ignores w.
    Where the mix is `one_branch`, only that branch is evaluated: half the cost."""
    if not model.config.cfg:
        return model(x_t, t, y)
    if one_branch(w):
        return model(x_t, t, y if float(w) == 1.0 else torch.full_like(y, model.null_label))
    eps_cond, eps_uncond = branches(model, x_t, t, y)
    return cfg_combine(eps_cond, eps_uncond, w)
