import dataclasses

import pytest
import torch

from dashlib.config import SampleConfig
from dashlib.diffusion import Diffusion
from dashlib.guidance import Guidance
from dashlib.sampling import DDIMSampler, balanced_labels, ddim_timesteps


@pytest.fixture
def setup(tiny, tiny_model):
    return Diffusion(tiny.diffusion), tiny_model


def _sample(setup, seed, **kw):
    diffusion, model = setup
    cfg = SampleConfig(steps=6, guidance="constant", w=2.0, **kw)
    return DDIMSampler(diffusion, cfg).sample(model, balanced_labels(10, 4),
                                              torch.Generator().manual_seed(seed))


def test_eta0_is_deterministic_for_a_seed(setup):
    a, b = _sample(setup, 7), _sample(setup, 7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _sample(setup, 8))


def test_eta_positive_is_stochastic_but_seeded(setup):
    a, b = _sample(setup, 7, eta=1.0), _sample(setup, 7, eta=1.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _sample(setup, 7, eta=0.0))
    # from one x_T, the generator reaches the result only through the noise eta adds per step
    diffusion, model = setup
    x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = balanced_labels(10, 4)

    def from_x_T(eta: float, seed: int) -> torch.Tensor:
        cfg = SampleConfig(steps=6, guidance="constant", w=2.0, eta=eta)
        return DDIMSampler(diffusion, cfg).sample_from(model, x_T, y, torch.Generator().manual_seed(seed))

    assert not torch.allclose(from_x_T(1.0, 1), from_x_T(1.0, 2))
    assert torch.equal(from_x_T(0.0, 1), from_x_T(0.0, 2))


def test_chunking_does_not_change_samples(setup):
    # beyond float rounding: oneDNN picks its kernels by batch size, and their rounding
    # differences (1e-7) grow over the DDIM steps (up to 1.4e-5 here)
    torch.testing.assert_close(_sample(setup, 3, batch_size=3), _sample(setup, 3, batch_size=64),
                               rtol=1e-4, atol=1e-4)


def test_samples_are_in_range_and_shaped(setup):
    x = _sample(setup, 0)
    assert x.shape == (10, 1, 8, 8)
    assert x.min() >= -1 and x.max() <= 1


def test_trajectory_starts_at_noise_and_ends_at_sample(setup):
    diffusion, model = setup
    sampler = DDIMSampler(diffusion, SampleConfig(steps=4, guidance="tag"))
    y = balanced_labels(5, 4)
    final, traj = sampler.sample_trajectory(model, y, torch.Generator().manual_seed(1))
    assert traj.shape == (5, 5, 1, 8, 8)  # steps + 1 states
    assert torch.equal(traj[-1], final)
    x_T = sampler.initial_noise(5, (1, 8, 8), torch.Generator().manual_seed(1))
    assert torch.equal(traj[0], x_T)


def test_timesteps_descend_from_last_to_zero():
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert (ts[:-1] > ts[1:]).all()
    lead = ddim_timesteps(1000, 50, "leading")
    assert lead[0] == 980 and lead[-1] == 0


def test_more_steps_than_timesteps_is_refused():
    with pytest.raises(ValueError, match="steps <= 100"):
        ddim_timesteps(100, 101)


def test_single_step_returns_x0_prediction(setup):
    """With one step from t = T-1, the DDIM update is exactly the x0 prediction."""
    diffusion, model = setup
    sampler = DDIMSampler(diffusion, SampleConfig(steps=1, guidance="constant", w=1.0, clip_x0=False))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), diffusion.T - 1)
    y = torch.arange(4)
    with torch.no_grad():
        eps = model(x, t, y)
        out, _ = sampler.denoise(model, x, y, torch.Generator())
    torch.testing.assert_close(out, diffusion.x0_from_eps(x, t, eps), atol=1e-4, rtol=1e-4)


def test_the_sampler_follows_the_guidance_it_is_given(setup):
    diffusion, model = setup
    config = SampleConfig(steps=4, guidance="tag")
    y, seed = torch.arange(4) % 2, 5
    given = DDIMSampler(diffusion, config, Guidance.parse(3, config))
    assert torch.equal(given.w, torch.full((len(given.timesteps),), 3.0))
    same = DDIMSampler(diffusion, dataclasses.replace(config, guidance="constant", w=3.0))
    a = given.sample(model, y, torch.Generator().manual_seed(seed))
    b = same.sample(model, y, torch.Generator().manual_seed(seed))
    c = DDIMSampler(diffusion, config).sample(model, y, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b) and not torch.equal(a, c)
