import torch

from dashlib.config import DiffusionConfig
from dashlib.diffusion import Diffusion


def test_cosine_alpha_bar_decreases_from_one_to_zero():
    d = Diffusion(DiffusionConfig(schedule="cosine", T=1000))
    ab = d.alpha_bar
    assert (ab[1:] < ab[:-1]).all()
    assert 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    torch.testing.assert_close(d.snr, ab / (1 - ab))


def test_linear_schedule_endpoints():
    d = Diffusion(DiffusionConfig(schedule="linear", T=1000))
    assert abs(float(d.betas[0]) - 1e-4) < 1e-12 and abs(float(d.betas[-1]) - 0.02) < 1e-12


def test_noising_inverts_through_eps_and_x0():
    d = Diffusion(DiffusionConfig(T=1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(8, 1, 4, 4, generator=g) * 2 - 1, torch.randn(8, 1, 4, 4, generator=g)
    t = torch.randint(0, 900, (8,), generator=g)
    x_t = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.x0_from_eps(x_t, t, eps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d.eps_from_x0(x_t, t, x0), eps, atol=1e-4, rtol=1e-4)


def test_uniform_timesteps_cover_range():
    d = Diffusion(DiffusionConfig(T=50))
    t = d.sample_t(5000, torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 49
