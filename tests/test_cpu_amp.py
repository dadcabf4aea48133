"""Mixed precision by rule (`dashlib.runtime.amp_dtype`): bf16 autocast on a CPU with AMX
for wide UNets, fp32 elsewhere; explicit choices win. The rule's CPU probe is patched so
these run the same on any host (bf16 autocast works, only slower, without AMX)."""

import json

import pytest
import torch

from dashlib import runtime
from dashlib.config import override
from dashlib.io import load_checkpoint
from dashlib.runtime import CPU_BF16_MIN_CH, InferenceModel, Runtime, amp_dtype, inference_model
from dashlib.teacher import train_teacher

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("fast", [True, False])
def test_auto_picks_bf16_only_on_a_fast_cpu_from_the_rule_width(monkeypatch, fast):
    monkeypatch.setattr(runtime, "cpu_bf16_fast", lambda: fast)
    wide, narrow = CPU_BF16_MIN_CH, CPU_BF16_MIN_CH // 2
    assert amp_dtype(CPU, "auto", wide) == (torch.bfloat16 if fast else None)
    assert amp_dtype(CPU, "auto", narrow) is None
    assert amp_dtype(CPU, "auto", None) is None  # no width, no rule
    assert amp_dtype(CPU, "none", wide) is None
    assert amp_dtype(CPU, "bf16", narrow) == torch.bfloat16  # the user's choice wins
    # fp16 (the cifar presets', a GPU format) asks for mixed precision: the CPU rule decides
    assert amp_dtype(CPU, "fp16", wide) == amp_dtype(CPU, "auto", wide)
    assert amp_dtype(CPU, "fp16", narrow) is None
    assert amp_dtype(torch.device("meta"), "auto", wide) is None


def test_cuda_keeps_its_rule_whatever_the_width(monkeypatch):
    for bf16, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert amp_dtype(CUDA, "auto", 2) == expected
    assert amp_dtype(CUDA, "fp16", 2) == torch.float16
    assert amp_dtype(CUDA, "bf16", 2) == torch.bfloat16
    assert amp_dtype(CUDA, "none", 128) is None


def test_the_probe_falls_back_to_the_cpu_flags(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    try:
        flags = [line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")]
    except OSError:
        flags = []
    expected = bool(flags) and runtime.CPU_BF16_NEEDS in flags[0]
    assert runtime.cpu_bf16_fast() is expected


def _rule_everywhere(monkeypatch, on: bool) -> None:
    """The rule as on an AMX CPU, lowered to the tiny preset's widths (or switched off)."""
    monkeypatch.setattr(runtime, "cpu_bf16_fast", lambda: on)
    monkeypatch.setattr(runtime, "CPU_BF16_MIN_CH", 1)


def _train(tiny, monkeypatch, tmp_path, name: str, rule: bool, amp: str = "auto"):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / name))
    _rule_everywhere(monkeypatch, rule)
    preset = override(tiny, **{"train.steps": 8, "train.amp": amp})
    run = train_teacher(preset, progress=False, device="cpu")
    return json.loads(run.results.read_text()), load_checkpoint(run.final)["model"]


def test_training_autocasts_by_the_rule_and_stays_close_and_repeatable(tiny, monkeypatch, tmp_path):
    bf16, weights = _train(tiny, monkeypatch, tmp_path, "bf16", rule=True)
    again, weights_again = _train(tiny, monkeypatch, tmp_path, "again", rule=True)
    fp32, weights_fp32 = _train(tiny, monkeypatch, tmp_path, "fp32", rule=False)
    forced, _ = _train(tiny, monkeypatch, tmp_path, "none", rule=True, amp="none")
    fp16, _ = _train(tiny, monkeypatch, tmp_path, "fp16", rule=True, amp="fp16")
    assert (bf16["precision"], fp32["precision"], forced["precision"]) == ("bfloat16", "float32", "float32")
    assert fp16["precision"] == "bfloat16"  # no GradScaler needed, none used
    assert all(v.dtype == torch.float32 for v in weights.values())  # master weights stay fp32
    for k in weights:  # a CPU run in bf16 repeats bit for bit
        assert torch.equal(weights[k], weights_again[k]), k
    # bf16 really ran (the weights moved differently) yet trained the same model
    assert any(not torch.equal(weights[k], weights_fp32[k]) for k in weights)
    assert abs(bf16["final_loss"] - fp32["final_loss"]) < 0.1 * fp32["final_loss"]


def test_sampling_autocasts_only_when_asked(tiny_model, monkeypatch):
    _rule_everywhere(monkeypatch, True)
    model = tiny_model
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([10, 40, 70, 99]), torch.tensor([0, 1, 2, 3])
    assert not isinstance(inference_model(model, Runtime(), CPU), InferenceModel)  # default: fp32
    fast = inference_model(model, Runtime(sample_amp="auto", freeze="off"), CPU)
    assert isinstance(fast, InferenceModel) and fast.dtype == torch.bfloat16
    with torch.no_grad():
        out, ref = fast(x, t, y), model(x, t, y)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05), (out - ref).abs().max()
