"""Issue 17's speed levers change how fast, never what is computed (to float tolerance),
and a CPU run stays deterministic with them on."""

import copy
import dataclasses

import torch
import torch.nn.functional as F

from dashlib.presets import get_preset
from dashlib.runtime import (
    _FROZEN,
    CHANNELS_LAST_MIN_CH,
    FrozenUNet,
    Runtime,
    adamw_options,
    inference_model,
    to_channels_last,
    uses_channels_last,
    uses_freeze,
)
from dashlib.unet import AttnBlock, build_unet

CPU = torch.device("cpu")


def _transposed_attention(block: AttnBlock, x):
    """The attention as written before issue 17 (strided q/k/v), the reference."""
    b, c, h, w = x.shape
    q, k, v = block.qkv(block.norm(x)).reshape(b, 3, c, h * w).unbind(1)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None])[:, 0]
    return x + block.proj(out.transpose(1, 2).reshape(b, c, h, w))


def test_contiguous_attention_matches_the_transposed_reference():
    torch.manual_seed(0)
    block = AttnBlock(32, 8)
    torch.nn.init.normal_(block.proj.weight)  # zero-initialised: the test would see only x
    x = torch.randn(4, 32, 4, 4)
    with torch.no_grad():
        out, ref = block(x), _transposed_attention(block, x)
    assert (out - x).abs().max() > 0.1
    assert torch.allclose(out, ref, atol=1e-5)


def test_rule_tables_pick_the_measured_levers():
    auto = Runtime()
    digits = get_preset("digits")
    assert uses_channels_last(auto, CPU, digits.student.ch)
    assert not uses_channels_last(auto, CPU, get_preset("tiny").teacher.ch)
    assert CHANNELS_LAST_MIN_CH["cpu"] > get_preset("tiny").teacher.ch
    assert uses_channels_last(auto, torch.device("cuda"), 4)
    assert not uses_channels_last(Runtime(channels_last="off"), CPU, 128)
    assert uses_channels_last(Runtime(channels_last="on"), CPU, 2)
    assert not uses_channels_last(auto, torch.device("meta"), 128)
    assert adamw_options(CPU) == {"fused": True}
    assert adamw_options(torch.device("meta")) == {}
    model = to_channels_last(build_unet(digits.student, 0), auto, CPU)
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    cifar = get_preset("cifar10")
    assert uses_freeze(auto, CPU, digits.student.ch) and uses_freeze(auto, CPU, digits.teacher.ch)
    assert not uses_freeze(auto, CPU, cifar.student.ch)
    assert not uses_freeze(auto, torch.device("cuda"), digits.student.ch)
    assert uses_freeze(Runtime(freeze="on"), CPU, 128) and not uses_freeze(Runtime(freeze="off"), CPU, 2)
    assert isinstance(inference_model(build_unet(digits.student, 0).eval(), auto, CPU), FrozenUNet)
    narrow_cifar = dataclasses.replace(cifar.student, image_size=8, ch_mult=(1,), attn_resolutions=())
    wide = build_unet(narrow_cifar, 0).eval()  # cifar's student width, shrunk to be quick
    assert inference_model(wide, auto, CPU) is wide


def test_sampling_lays_out_the_narrow_students_in_nchw():
    """Training keeps the ch-16 students in NHWC; sampling lays them out NCHW (their
    GroupNorms are slow in NHWC) and keeps the ch-32 teachers in NHWC."""
    auto, digits = Runtime(), get_preset("digits")
    assert uses_channels_last(auto, CPU, digits.student.ch)
    assert not uses_channels_last(auto, CPU, digits.student.ch, sampling=True)
    assert uses_channels_last(auto, CPU, digits.teacher.ch, sampling=True)
    assert uses_channels_last(auto, torch.device("cuda"), digits.student.ch, sampling=True)
    assert uses_channels_last(Runtime(channels_last="on"), CPU, digits.student.ch, sampling=True)
    student = to_channels_last(build_unet(digits.student, 0).eval(), auto, CPU)  # as trained
    assert _nhwc(student)
    inference_model(student, auto, CPU)
    assert not _nhwc(student) and _inner_conv(student).weight.is_contiguous()
    teacher = build_unet(digits.teacher, 0).eval()
    inference_model(teacher, auto, CPU)
    assert _nhwc(teacher)


def _inner_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    """A 3x3 convolution of several input channels (conv_in's single channel is
    contiguous in both layouts)."""
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
                and m.kernel_size == (3, 3))


def _nhwc(model: torch.nn.Module) -> bool:
    weight = _inner_conv(model).weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _perturbed(cfg, seed=1):
    """A model whose zero-initialised layers are not zero, so its output depends on every layer."""
    model = build_unet(cfg, 0).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_frozen_graph_gives_the_eager_output_bit_for_bit_and_follows_the_weights():
    cfg = dataclasses.replace(get_preset("digits").student, ch_mult=(1, 2))
    model = to_channels_last(_perturbed(cfg), Runtime(), CPU)
    frozen = FrozenUNet(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (12, 5):  # traced at 12 rows, then any batch size
            x = torch.randn(rows, 1, 8, 8, generator=g)
            t = torch.randint(0, 1000, (rows,), generator=g)
            y = torch.randint(0, cfg.num_classes + 1, (rows,), generator=g)
            eager = model(x, t, y)
            assert eager.abs().max() > 0.1
            assert torch.equal(frozen(x, t, y), eager)
        assert len(_FROZEN[model][1]) == 1  # one graph, reused
        model.conv_out.weight.mul_(2.0)  # changed in place: the cached graph is stale
        assert torch.equal(frozen(x, t, y), model(x, t, y))
        assert not torch.equal(frozen(x, t, y), eager)


def test_a_model_without_a_null_row_samples_eagerly():
    """Single-head students (cfg=False) are not frozen: TorchScript's tracer probes every
    attribute, and null_label raises on them (it broke an evaluation once)."""
    import warnings

    model = _perturbed(dataclasses.replace(get_preset("tiny").student, cfg=False))
    assert inference_model(model, Runtime(freeze="on"), CPU) is model
    frozen = FrozenUNet(model)  # forced: the failed trace falls back to eager with a warning
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(frozen(x, t, y), model(x, t, y))
    assert any("could not freeze" in str(w.message) for w in caught)


def test_frozen_unet_runs_eagerly_when_training_or_with_gradients():
    model = _perturbed(dataclasses.replace(get_preset("tiny").student, dropout=0.5))
    frozen = FrozenUNet(model)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 4])
    out = frozen(x, t, y)  # gradients on: the UNet itself, so backward works
    out.pow(2).mean().backward()
    assert model.conv_in.weight.grad is not None
    model.train()
    with torch.no_grad():
        a, b = frozen(x, t, y), frozen(x, t, y)
    assert not torch.equal(a, b)  # dropout is live: not a frozen eval graph
    assert model not in _FROZEN


def _small_cfg():
    """The digits student's width (channels-last under "auto" on CPU), trimmed to be fast."""
    return dataclasses.replace(get_preset("digits").student, ch_mult=(1, 2), dropout=0.0)


def _steps(model, opt, n=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(6, 1, 8, 8, generator=g)
        t, y = torch.randint(0, 1000, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
        loss = (model(x, t, y) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trained(default_path: bool):
    model = build_unet(_small_cfg(), 0)
    layout = "auto" if default_path else "off"
    to_channels_last(model, Runtime(channels_last=layout), CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **(adamw_options(CPU) if default_path else {}))
    return _steps(model, opt)


def test_default_training_path_matches_the_plain_one_and_is_deterministic():
    fast, again, plain = _trained(True), _trained(True), _trained(False)
    assert torch.equal(fast, again)  # bit-for-bit repeatable on CPU
    start = torch.cat([p.detach().flatten() for p in build_unet(_small_cfg(), 0).parameters()])
    assert (plain - start).abs().max() > 1e-3  # the steps moved the weights
    assert torch.allclose(fast, plain, atol=1e-4), (fast - plain).abs().max()


def test_fused_adamw_state_round_trips():
    model = build_unet(_small_cfg(), 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **adamw_options(CPU))
    _steps(model, opt, 1)
    twin = copy.deepcopy(model)
    opt2 = torch.optim.AdamW(twin.parameters(), lr=1e-3, **adamw_options(CPU))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint would
    assert torch.equal(_steps(model, opt, 1), _steps(twin, opt2, 1))


def test_a_model_that_cannot_be_traced_samples_eagerly_with_one_warning(monkeypatch):
    import warnings

    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing is not supported here")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    model = _perturbed(get_preset("tiny").student)
    frozen = FrozenUNet(model)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 4])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = frozen(x, t, y), frozen(x, t, y)
        assert torch.equal(first, model(x, t, y)) and torch.equal(second, first)
    assert [str(w.message) for w in caught if "could not freeze" in str(w.message)] == [
        "could not freeze the UNet for sampling (RuntimeError: tracing is not supported here); "
        "sampling eagerly instead (--freeze off silences this)"]
