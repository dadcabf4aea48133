import pytest
import torch

from dashlib.config import DiffusionConfig
from dashlib.diffusion import Diffusion
from dashlib.tirt import LOSS_BINS, WEIGHTINGS, drift_report, make_weighting, transfer


@pytest.fixture
def diffusion():
    return Diffusion(DiffusionConfig(T=1000))


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_weights_have_unit_batch_mean(name, diffusion):
    w = make_weighting(name, diffusion)
    with torch.no_grad():
        w.table.normal_()
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(0))
    weights = w.weights(t)
    assert weights.shape == (64,)
    assert abs(float(weights.detach().mean()) - 1) < 1e-5
    assert (weights >= 0).all()


def test_tirt_starts_at_min_snr_5(diffusion):
    w = make_weighting("tirt", diffusion)
    t = torch.tensor([0, 100, 500, 999])
    raw = torch.clamp(diffusion.snr[t].float(), max=5.0) * 0.5
    torch.testing.assert_close(w.weights(t), raw / raw.mean())


def test_tirt_table_learns_and_frozen_table_does_not(diffusion):
    for frozen in (False, True):
        w = make_weighting("tirt", diffusion)
        if frozen:
            w.freeze()
        params = [p for p in w.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=10.0) if params else None
        before = w.table.detach().clone()
        for _ in range(5):
            t = torch.randint(0, 1000, (64,))
            loss = w.reduce(t, torch.rand(64) + t / 1000)
            if opt:
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert torch.equal(w.table, before) == frozen


def test_transfer_copies_and_freezes(diffusion):
    w = make_weighting("tirt", diffusion)
    with torch.no_grad():
        w.table.normal_()
    copy = transfer(w, diffusion)
    assert copy.frozen and torch.equal(copy.table, w.table)
    assert copy.table.data_ptr() != w.table.data_ptr()


def test_tirt_descent_drifts_toward_easy_timesteps(diffusion):
    """With no regulariser, minimising the weighted loss moves weight to low-loss t."""
    w = make_weighting("tirt", diffusion)
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        t = torch.randint(0, 1000, (128,), generator=g)
        loss = 0.1 + 1.0 * (t < 500).float()  # low t hard, high t easy
        w.observe(t, loss)
        opt.zero_grad()
        w.reduce(t, loss).backward()
        opt.step()
    report = drift_report(w)
    assert report["drift"] > 0.05 and report["corr"] < 0


def _fit(name, diffusion, steps=600):
    """Descend a weighting on t in [0, 250) (where min(SNR, 5) = 5 throughout),
    with loss 1.1 on the hard half (t < 125) and 0.1 on the easy half."""
    w = make_weighting(name, diffusion)
    opt = torch.optim.Adam(w.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        t = torch.randint(0, 250, (128,), generator=g)
        loss = 0.1 + 1.0 * (t < 125).float()
        opt.zero_grad()
        w.reduce(t, loss).backward()
        opt.step()
    t = torch.tensor([10, 240])
    contribution = (w.raw(t, w.table[t]) * torch.tensor([1.1, 0.1])).detach()
    return float(contribution.max() / contribution.min())


def test_uncertainty_equalises_while_tirt_collapses_onto_easy_timesteps(diffusion):
    # EDM2 optimum exp(u_t) = base * E[L_t] makes every timestep's weighted loss equal;
    # unregularised TIRT instead keeps shifting weight to the easy half.
    assert _fit("uncertainty", diffusion) < 1.5
    assert _fit("tirt", diffusion) > 5.0


def test_drift_report_is_nan_until_every_bin_is_seen(diffusion):
    w = make_weighting("tirt", diffusion)
    assert torch.isnan(torch.tensor(drift_report(w)["drift"]))
    w.observe(torch.arange(0, 1000, 1000 // LOSS_BINS), torch.ones(LOSS_BINS))
    assert drift_report(w)["drift"] == pytest.approx(0.0)
