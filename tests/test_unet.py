import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dashlib.presets import get_preset
from dashlib.unet import UPSAMPLE_BROADCAST_MIN_PIXELS, UNet, count_params, feature_channels, upsample_nearest


@pytest.mark.parametrize("name, teacher_m, student_m", [
    ("cifar10", 35.75, 6.08), ("cifar100", 35.75, 6.08)])
def test_cifar_parameter_counts_match_paper(name, teacher_m, student_m):
    preset = get_preset(name)
    t, s = count_params(UNet(preset.teacher)), count_params(UNet(preset.student))
    assert abs(t / 1e6 - teacher_m) / teacher_m < 0.005
    assert abs(s / 1e6 - student_m) / student_m < 0.005


@pytest.mark.parametrize("name", ["digits", "digits16"])
def test_digits_compression_is_paper_like(name):
    preset = get_preset(name)
    ratio = count_params(UNet(preset.teacher)) / count_params(UNet(preset.student))
    assert abs(ratio - 5.9) <= 0.2


def test_forward_shapes_and_features(tiny):
    model = UNet(tiny.teacher)
    x = torch.randn(3, 1, 8, 8)
    eps, feats = model.forward_with_features(x, torch.tensor([0, 5, 99]), torch.tensor([0, 1, 4]))
    assert eps.shape == x.shape
    assert [f.shape[1] for f in feats] == feature_channels(tiny.teacher)


@pytest.mark.parametrize("init", ["zero", "mean"])
def test_null_row_initialisation(tiny, init):
    model = UNet(dataclasses.replace(tiny.teacher, null_init=init))
    w = model.label_emb.weight
    expected = torch.zeros_like(w[-1]) if init == "zero" else w[:-1].mean(0)
    torch.testing.assert_close(w[-1], expected)


def test_every_null_init_choice_has_an_initialiser_and_random_keeps_the_draw(tiny):
    from dashlib.config import NULL_INIT_CHOICES
    from dashlib.unet import NULL_INITS

    assert tuple(NULL_INITS) == NULL_INIT_CHOICES
    torch.manual_seed(0)
    random = UNet(dataclasses.replace(tiny.teacher, null_init="random")).label_emb.weight.detach()
    torch.manual_seed(0)
    zero = UNet(dataclasses.replace(tiny.teacher, null_init="zero")).label_emb.weight.detach()
    assert torch.equal(random[:-1], zero[:-1])  # the class rows are drawn alike
    assert zero[-1].abs().sum() == 0
    # the random row is a draw like the class rows: not zero, not their mean, of their spread
    assert not torch.allclose(random[-1], random[:-1].mean(0))
    assert 0.5 < float(random[-1].std() / random[:-1].std()) < 2.0


def test_single_head_model_has_no_null_row(tiny):
    model = UNet(dataclasses.replace(tiny.teacher, cfg=False))
    assert model.label_emb.num_embeddings == tiny.teacher.num_classes
    with pytest.raises(ValueError, match="no null label"):
        _ = model.null_label


@pytest.mark.parametrize("side", [1, 4, 8, 16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsample_is_nearest_interpolation_bit_for_bit_in_the_same_layout(side, layout):
    """Both routes (below and above UPSAMPLE_BROADCAST_MIN_PIXELS) and the native kernel
    give F.interpolate's values exactly, laid out as the input."""
    g = torch.Generator().manual_seed(side)
    x = torch.randn(3, 5, side, side, generator=g).to(memory_format=layout)
    with torch.no_grad():
        out = upsample_nearest(x)
    assert torch.equal(out, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert out.shape == (3, 5, 2 * side, 2 * side)
    assert out.is_contiguous(memory_format=layout)
    assert (side * side >= UPSAMPLE_BROADCAST_MIN_PIXELS) == (side >= 8)  # both routes covered


@pytest.mark.parametrize("side", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("route", ["upsample_via_nhwc", "upsample_by_broadcast"])
def test_each_upsample_route_is_nearest_interpolation_of_an_nchw_tensor(side, route):
    """Each route alone, at every size (not only where `upsample_nearest` sends it), on
    an odd channel count: F.interpolate's values, bit for bit, in NCHW."""
    from dashlib import unet

    x = torch.randn(2, 7, side, side, generator=torch.Generator().manual_seed(side))
    out = getattr(unet, route)(x)
    assert torch.equal(out, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert out.is_contiguous() and out.shape == (2, 7, 2 * side, 2 * side)


def test_upsample_nearest_takes_the_route_its_rule_names(monkeypatch):
    from dashlib import unet

    taken = []
    for route in ("upsample_via_nhwc", "upsample_by_broadcast"):
        real = getattr(unet, route)
        monkeypatch.setattr(unet, route, lambda x, r=route, f=real: taken.append(r) or f(x))
    with torch.no_grad():
        for side in (2, 4, 8, 16):
            upsample_nearest(torch.randn(1, 3, side, side))
        upsample_nearest(torch.randn(1, 3, 8, 8).to(memory_format=torch.channels_last))  # native
    small = [side for side in (2, 4, 8, 16) if side * side < UPSAMPLE_BROADCAST_MIN_PIXELS]
    assert taken == ["upsample_via_nhwc"] * len(small) + ["upsample_by_broadcast"] * (4 - len(small))


def test_upsample_keeps_the_native_gradient():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    upsample_nearest(x).square().sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    F.interpolate(ref, scale_factor=2.0, mode="nearest").square().sum().backward()
    assert torch.equal(x.grad, ref.grad)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_param_count_counts_a_built_unet_and_draws_no_random_numbers(tiny, role):
    from dashlib.unet import param_count

    config = getattr(tiny, role)
    state = torch.random.get_rng_state()
    assert param_count(config) == count_params(UNet(config))
    torch.random.set_rng_state(state)
    param_count.cache_clear()
    param_count(config)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("emb_silu", [True, False])
def test_every_block_reads_the_embedding_through_silu_as_in_adm(tiny, emb_silu):
    """ADM's ResBlock projects SiLU(emb) (emb_layers = SiLU, Linear), so the class's
    effect on a block depends on t; without it the class shifts every block alike at
    every t. emb_silu=False keeps dash's earlier linear layout."""
    model = UNet(dataclasses.replace(tiny.teacher, emb_silu=emb_silu)).eval()
    seen = []
    model.mid1.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    t, y = torch.tensor([3, 90]), torch.tensor([1, 2])
    model(torch.randn(2, 1, 8, 8), t, y)
    emb = model.embed(t, y)
    torch.testing.assert_close(seen[0], F.silu(emb) if emb_silu else emb, rtol=0, atol=0)
    assert count_params(model) == count_params(UNet(tiny.teacher))  # SiLU has no weights


def test_a_checkpoint_from_before_the_silu_loads_as_it_was_trained(tiny, tmp_path):
    """Checkpoints written before ModelConfig.emb_silu existed hold no such key: they load
    with the linear embedding they were trained with, and a model of the new layout
    refuses them by name."""
    from dashlib.artifacts import load_artifact, save_artifact
    from dashlib.config import to_dict
    from dashlib.io import CheckpointError
    from dashlib.runs import Run

    run = Run(tmp_path / "old")
    run.path.mkdir()
    old = UNet(dataclasses.replace(tiny.teacher, emb_silu=False))
    save_artifact(run, "teacher", {"diffusion": to_dict(tiny.diffusion)}, old, None, None)
    ckpt = torch.load(run.final, weights_only=True)
    del ckpt["model_config"]["emb_silu"]
    torch.save(ckpt, run.final)
    assert load_artifact(run).model.config.emb_silu is False
    with pytest.raises(CheckpointError, match="emb_silu: checkpoint has False, expected True"):
        load_artifact(run, expect=tiny.teacher)
