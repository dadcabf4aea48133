"""The DASH ablation (claims C4, C5): which component buys the gain.

Variants are DASH runs with parts switched off (or the `cond-only` baseline,
which is DASH's imitation term alone with uniform weighting). The additive
path cond-only -> +L_un -> +L_an -> +TIRT Transfer (= DASH) splits the total
gain into one share per component:

    share_k = (Q(previous) - Q(with k)) / (Q(cond-only) - Q(DASH)) * 100%

for a quality score Q where lower is better (classifier FID), computed per
evaluation seed so the spread over seeds is visible. Leave-one-out variants
(DASH without L_un, without L_an, TIRT relearned) are reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dashlib.config import Preset, override
from dashlib.distill.methods import check_variant


@dataclass(frozen=True)
class Variant:
    """A named distillation run: a method plus DistillConfig overrides."""

    name: str
    method: str
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_variant(f"ablation variant {self.name!r}", self.method, self.changes)

    def preset(self, preset: Preset) -> Preset:
        return override(preset, **{f"distill.{k}": v for k, v in self.changes.items()})


# The additive path, in order; each adds one component to the previous.
PATH = (
    Variant("cond-only", "cond-only"),
    Variant("+L_un", "dash", {"im": 1.0, "un": 1.0, "an": 0.0, "tirt": "uniform"}),
    Variant("+L_an", "dash", {"im": 1.0, "un": 1.0, "an": 0.1, "tirt": "uniform"}),
    Variant("+TIRT (DASH)", "dash"),
)
COMPONENTS = ("L_un", "L_an", "TIRT Transfer")

LEAVE_ONE_OUT = (
    Variant("DASH - L_un", "dash", {"un": 0.0}),
    Variant("DASH - L_an", "dash", {"an": 0.0}),
    Variant("DASH, TIRT relearned", "dash", {"tirt": "relearn"}),
)

VARIANTS = {v.name: v for v in PATH + LEAVE_ONE_OUT}


def gain_shares(quality: Mapping[str, float]) -> dict[str, float]:
    """Each component's share (%) of the total gain along PATH, from one seed's
    quality scores {variant name: Q} (lower is better). NaN where there is no gain (DASH no
    better than cond-only on this seed): shares of a loss would read as shares of a gain."""
    q = [quality[v.name] for v in PATH]
    total = q[0] - q[-1]
    if not total > 0:  # zero, a loss, or NaN
        return {c: float("nan") for c in COMPONENTS}
    return {c: (q[i] - q[i + 1]) / total * 100 for i, c in enumerate(COMPONENTS)}


def shares_over_seeds(quality: Mapping[str, Mapping[int, float]]) -> dict[str, list[float]]:
    """{component: [share for each seed]} from {variant: {seed: Q}}."""
    seeds = sorted(set.intersection(*(set(quality[v.name]) for v in PATH)))
    per_seed = [gain_shares({v.name: quality[v.name][s] for v in PATH}) for s in seeds]
    return {c: [p[c] for p in per_seed] for c in COMPONENTS}


def variant_rows(results: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Table rows (T2) in the order given, from {variant: merged metrics}."""
    return [{"variant": n, **results[n]} for n in names if n in results]
