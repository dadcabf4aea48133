import pytest
import torch

from dashlib.config import ConfigError, SampleConfig
from dashlib.guidance import Guidance, branches, cfg_combine, guided_eps, one_branch


def _inputs(model, n=6):
    g = torch.Generator().manual_seed(3)
    cfg = model.config
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 100, (n,), generator=g)
    y = torch.arange(n) % cfg.num_classes
    return x, t, y


def test_w1_is_conditional_and_w0_is_unconditional(tiny_model):
    x, t, y = _inputs(tiny_model)
    with torch.no_grad():
        cond = tiny_model(x, t, y)
        uncond = tiny_model(x, t, torch.full_like(y, tiny_model.null_label))
        assert not torch.allclose(cond, uncond, atol=1e-4), "branches must differ for this test"
        torch.testing.assert_close(guided_eps(tiny_model, x, t, y, 1.0), cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided_eps(tiny_model, x, t, y, 0.0), uncond, atol=1e-5, rtol=1e-5)
        # the same holds through the two-branch mix (per-sample w skips the shortcut)
        c, u = branches(tiny_model, x, t, y)
        torch.testing.assert_close(cfg_combine(c, u, torch.ones(len(y))), cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cfg_combine(c, u, torch.zeros(len(y))), uncond, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("w", [0.0, 1.0, 0, 1, 0.5, 3.0, -1.0, torch.ones(6), True])
def test_a_guided_step_runs_the_rows_one_branch_says(tiny_model, w):
    x, t, y = _inputs(tiny_model)
    rows = []
    tiny_model.conv_in.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    with torch.no_grad():
        guided_eps(tiny_model, x, t, y, w)
    assert sum(rows) == (1 if one_branch(w) else 2) * len(y)
    assert one_branch(w) == (not isinstance(w, (bool, torch.Tensor)) and w in (0, 1))
    assert not one_branch(None)  # a time-varying schedule has no constant w


def test_guidance_extrapolates_along_the_gap(tiny_model):
    x, t, y = _inputs(tiny_model)
    with torch.no_grad():
        cond, uncond = branches(tiny_model, x, t, y)
        w3 = guided_eps(tiny_model, x, t, y, 3.0)
    torch.testing.assert_close(w3, uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_per_sample_w_broadcasts():
    cond, uncond = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    out = cfg_combine(cond, uncond, torch.tensor([0.0, 2.0]))
    assert out[0].eq(0).all() and out[1].eq(2).all()


def test_tag_schedule_matches_paper_formula():
    cfg = SampleConfig(guidance="tag", w_min=1.0, w_max=4.0, beta=5.0)
    t = torch.tensor([0, 500, 999])
    w = Guidance.from_config(cfg).scale(t, 1000)
    expected = 1 + 3 * torch.sigmoid(5 * (0.5 - t.float() / 1000))
    torch.testing.assert_close(w, expected)
    assert w[1] == 2.5 and w[0] > w[2]  # strong guidance near the data, weak at high noise


def test_constant_schedule():
    w = Guidance.from_config(SampleConfig(guidance="constant", w=2.5)).scale(torch.arange(5), 1000)
    assert torch.equal(w, torch.full((5,), 2.5))


# --- Guidance: one value, parsed once -------------------------------------------------------

BASE = SampleConfig(guidance="constant", w=2.0, w_min=0.5, w_max=6.0, beta=3.0)
T_ALL = torch.arange(1000)


def test_parse_tag_gives_the_tag_schedule_with_the_base_parameters():
    g = Guidance.parse("tag", BASE)
    assert g.schedule == "tag" and g.constant is None and g.label == "tag"
    expected = 0.5 + 5.5 * torch.sigmoid(3.0 * (0.5 - T_ALL.float() / 1000))
    torch.testing.assert_close(g.scale(T_ALL, 1000), expected)
    assert not torch.equal(g.scale(T_ALL, 1000), Guidance.parse("tag", SampleConfig()).scale(T_ALL, 1000))


@pytest.mark.parametrize("text, number", [("3", 3.0), ("0", 0), ("2.5", 2.5), ("-1", -1.0), ("1e-3", 0.001)])
def test_a_number_and_its_text_are_one_constant_setting(text, number):
    g = Guidance.parse(text, BASE)
    assert g == Guidance.parse(number, BASE) and g.schedule == "constant"
    assert g.constant == float(number)
    assert torch.equal(g.scale(T_ALL, 1000), torch.full((1000,), float(number)))


@pytest.mark.parametrize("spec", ["tag", "0", "1", "3", 2.5, -0.25, 1 / 3, 1e-7, 1234567.0, 3e38])
def test_label_round_trips(spec):
    g = Guidance.parse(spec, BASE)
    assert Guidance.parse(g.label, BASE) == g
    assert Guidance.from_config(g.in_config(BASE)) == g


def test_labels_are_the_texts_results_json_used():
    assert [Guidance.parse(s, BASE).label for s in (0, 1, 3.0, "2.5", "tag")] == ["0", "1", "3", "2.5", "tag"]


def test_from_config_and_in_config_agree_with_the_sampler_fields():
    tag = SampleConfig(guidance="tag", w=7.0, w_min=1.5, w_max=3.0, beta=2.0)
    assert Guidance.from_config(tag) == Guidance.parse("tag", tag)
    assert Guidance.from_config(BASE) == Guidance.parse(2.0, tag)
    assert Guidance.parse(5, tag).in_config(tag) == SampleConfig(guidance="constant", w=5.0, w_min=1.5,
                                                                  w_max=3.0, beta=2.0)


@pytest.mark.parametrize("spec", ["strong", "TAG", "", "nan", float("inf"), "-inf", "1e39", True, None, [3]])
def test_an_invalid_spec_raises_a_config_error_naming_it(spec):
    with pytest.raises(ConfigError) as err:
        Guidance.parse(spec, BASE)
    assert repr(spec) in str(err.value)


def test_a_guidance_holds_only_its_schedules_parameters():
    with pytest.raises(ConfigError, match="Guidance.w = None"):
        Guidance("constant")
    with pytest.raises(ConfigError, match="Guidance.beta"):
        Guidance("constant", w=1.0, beta=2.0)
    with pytest.raises(ConfigError, match="Guidance.schedule = 'cosine'"):
        Guidance("cosine", w=1.0)
