import copy
import threading

import pytest
import torch

from dashlib.config import DiffusionConfig
from dashlib.diffusion import Diffusion
from dashlib.distributed import GlobalBatch
from dashlib.tirt import LOCAL_ROWS, LOSS_BINS, WEIGHTINGS, drift_report, make_weighting, transfer


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
    t = torch.arange(0, 1000, 1000 // LOSS_BINS)
    w.observe(t[:-1], torch.ones(LOSS_BINS - 1))  # every bin but the last
    assert torch.isnan(torch.tensor(drift_report(w)["drift"]))
    w.observe(t[-1:], torch.ones(1))
    assert drift_report(w)["drift"] == pytest.approx(0.0)  # the table is still zero: no drift


class ThreadRanks:
    """`world` threads standing in for torchrun's ranks; `sum_ranks` is their
    all-reduce: every rank's tensor added in rank order, the same sum on every rank."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=30)
        self.slots = [None] * world
        self.local = threading.local()

    def sum_ranks(self, x):
        self.slots[self.local.rank] = x.detach().clone()
        self.barrier.wait()
        total = self.slots[0].clone()
        for other in self.slots[1:]:
            total = total + other
        self.barrier.wait()  # no rank refills its slot before every rank has read them all
        return total

    def run(self, fn):
        """fn(rank) on every rank at once; the results in rank order."""
        results, errors = [None] * self.world, []

        def target(rank):
            self.local.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as err:  # surfaced below, after the other rank is released
                errors.append(err)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return results


def _step(w, t, loss, over):
    """One training step's use of a weighting: weights, objective (and its table
    gradient when learned), the loss tracker; batch statistics taken `over`."""
    weights = w.weights(t, over).detach()
    objective = w.reduce(t, loss, over)
    if objective.requires_grad:
        objective.backward()
    w.observe(t, loss, over=over)
    return weights, objective.detach(), w.table.grad


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_two_ranks_reduce_like_one_process_on_the_whole_batch(name, frozen, diffusion):
    """A batch split over two ranks whose GlobalBatch all-reduce adds the halves gives
    the one-process weights, loss (mean of the equal shares), table gradient (DDP's
    average) and loss tracker. Normalising each rank's rows alone fails: the halves
    hold low and high t, whose raw weights min(SNR, 5) sigmoid(lambda) differ ~30x."""
    g = torch.Generator().manual_seed(0)
    one = make_weighting(name, diffusion)
    with torch.no_grad():
        one.table.normal_(generator=g)
    if frozen:
        one.freeze()
    half = 8
    t = torch.cat([torch.randint(0, 100, (half,), generator=g),
                   torch.randint(600, 1000, (half,), generator=g)])
    loss = torch.rand(2 * half, generator=g) + 0.5
    replicas = [copy.deepcopy(one) for _ in range(2)]
    ranks = ThreadRanks(2)
    rows = [slice(r * half, (r + 1) * half) for r in range(2)]
    split = ranks.run(lambda r: _step(replicas[r], t[rows[r]], loss[rows[r]],
                                      GlobalBatch(2, ranks.sum_ranks)))
    weights, objective, grad = _step(one, t, loss, LOCAL_ROWS)

    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(torch.cat([s[0] for s in split]), weights, **close)
    torch.testing.assert_close((split[0][1] + split[1][1]) / 2, objective, **close)
    assert (grad is None) == (not one.table.requires_grad)
    if grad is not None:
        assert grad.abs().max() > 0
        torch.testing.assert_close((split[0][2] + split[1][2]) / 2, grad, **close)
    for name_ in ("loss_ema", "loss_seen"):
        a, b, ref = (getattr(w, name_) for w in (*replicas, one))
        assert torch.equal(a, b)  # every rank keeps the same tracker
        torch.testing.assert_close(a, ref, **close)
    assert int((one.loss_seen > 0).sum()) >= 4  # the tracker saw several bins


def test_one_rank_global_batch_is_the_local_reduction():
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(GlobalBatch(1).sum(x), LOCAL_ROWS.sum(x))
    assert torch.equal(GlobalBatch(1).mean(x[:, 0]), LOCAL_ROWS.mean(x[:, 0]))


def test_a_learning_uncertainty_weighting_counts_its_regulariser_once_over_several_terms(diffusion):
    t = torch.tensor([10, 200, 500, 900])
    terms = {"im": torch.tensor([0.5, 1.0, 2.0, 0.1]), "gap": torch.tensor([0.2, 0.3, 0.1, 0.4])}
    coef = {"im": 1.0, "gap": 1.1}
    u = make_weighting("uncertainty", diffusion)
    with torch.no_grad():
        u.table.fill_(0.3)
    once = u.reduce(t, terms["im"] + 1.1 * terms["gap"])
    assert torch.allclose(u.reduce_terms(t, terms, coef), once)
    per_term = u.reduce(t, terms["im"]) + 1.1 * u.reduce(t, terms["gap"])
    assert not torch.allclose(per_term, once)  # u_t counted 2.1 times: the old objective
    for name in ("tirt", "min-snr", "uniform"):  # linear: per term, as runs always summed
        w = make_weighting(name, diffusion)
        expected = w.reduce(t, terms["im"]) + 1.1 * w.reduce(t, terms["gap"])
        assert torch.equal(w.reduce_terms(t, terms, coef), expected)
        closed = (w.weights(t) * (terms["im"] + 1.1 * terms["gap"])).mean()  # the objective, written out
        assert torch.allclose(w.reduce_terms(t, terms, coef), closed)
    closed = (u.base[t] * (terms["im"] + 1.1 * terms["gap"]) * torch.exp(-0.3 * torch.ones(4)) + 0.3).mean()
    assert torch.allclose(u.reduce_terms(t, terms, coef), closed)  # u_t added once, not 2.1 times


def test_an_objective_whose_every_term_weighs_zero_is_refused_not_summed_to_an_int(diffusion):
    t = torch.tensor([10, 200])
    terms = {"im": torch.tensor([0.5, 1.0]), "un": torch.tensor([0.2, 0.3])}
    for name in ("tirt", "uniform", "uncertainty"):
        w = make_weighting(name, diffusion)
        with pytest.raises(ValueError, match="every loss term's coefficient is 0"):
            w.reduce_terms(t, terms, {"im": 0.0, "un": 0})
        one = w.reduce_terms(t, terms, {"im": 0.0, "un": 2.0})
        assert isinstance(one, torch.Tensor) and torch.equal(one, w.reduce_terms(t, {"un": terms["un"]},
                                                                                  {"un": 2.0}))
