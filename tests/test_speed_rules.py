"""Issue 17's speed levers change how fast, never what is computed (to float tolerance),
and a CPU run stays deterministic with them on."""

import copy
import dataclasses

import torch
import torch.nn.functional as F

from dashlib.presets import get_preset
from dashlib.runtime import (
    CHANNELS_LAST_MIN_CH,
    Runtime,
    adamw_options,
    to_channels_last,
    uses_channels_last,
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
