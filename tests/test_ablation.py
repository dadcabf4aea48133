"""F6's arithmetic: each DASH component's share of the FID gain along the ablation path."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from dashlib import plots  # noqa: E402
from dashlib.ablation import COMPONENTS, PATH, gain_shares, shares_over_seeds  # noqa: E402


def _path(*fids: float) -> dict[str, float]:
    return {v.name: f for v, f in zip(PATH, fids, strict=True)}


def test_shares_of_a_gain_add_up_to_a_hundred_and_follow_each_step():
    shares = gain_shares(_path(4.0, 3.0, 2.5, 2.0))  # cond-only 4.0 -> DASH 2.0
    assert list(shares) == list(COMPONENTS)
    assert math.isclose(sum(shares.values()), 100) and math.isclose(shares[COMPONENTS[0]], 50)


def test_no_gain_or_a_loss_has_no_shares():
    """A loss divided through read as a gain: TIRT "bought 129%" of a DASH worse than cond-only."""
    assert all(math.isnan(v) for v in gain_shares(_path(3.5, 3.5, 3.5, 3.5)).values())
    assert all(math.isnan(v) for v in gain_shares(_path(51.80, 51.90, 51.95, 51.84)).values())


def test_the_figure_says_so_where_no_seed_has_a_gain_and_counts_the_seeds_left_out():
    """All-NaN shares used to crash notebook 04 in the legend's placement."""
    none = plots.ablation_shares(shares_over_seeds({v.name: {0: 3.5, 1: 3.5} for v in PATH}))
    texts = [t.get_text() for t in none.axes[0].texts]
    assert any("no gain to share out" in t for t in texts)
    assert "2 of 2 without a gain" in none.axes[0].get_title()
    plt.close(none)
    some = shares_over_seeds({v.name: {0: 4.0 - i, 1: 4.0 + i} for i, v in enumerate(PATH)})
    fig = plots.ablation_shares(some)
    assert "1 of 2 without a gain left out" in fig.axes[0].get_title()
    assert [round(p.get_height()) for p in fig.axes[0].patches] == [33, 33, 33]
    plt.close(fig)
