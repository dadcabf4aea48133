"""Mixed precision by rule (`dashlib.runtime.amp_dtype`): bf16 autocast on a CPU with AMX
for wide UNets, fp32 elsewhere; explicit choices win. The rule's CPU probe is patched so
these run the same on any host (bf16 autocast works, only slower, without AMX)."""

import json

import pytest
import torch

from dashlib import runtime, train
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
    probed = runtime.cpu_bf16_fast()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    try:
        flags = [line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")]
    except OSError:
        flags = []
    expected = bool(flags) and any(f in flags[0] for f in runtime.CPU_BF16_NEEDS)
    assert runtime.cpu_bf16_fast() is expected
    if flags:  # torch's probes and the kernel's flags agree about this CPU
        assert probed is expected


@pytest.mark.parametrize("present, fast", [((True, False), True), ((False, True), True),
                                           ((False, False), False)])
def test_either_bf16_feature_counts(monkeypatch, present, fast):
    for name, on in zip(runtime._CPU_BF16_PROBES, present, strict=True):
        monkeypatch.setattr(torch.cpu, name, lambda on=on: on, raising=False)
    assert runtime.cpu_bf16_fast() is fast


def _rule_everywhere(monkeypatch, on: bool, feature: str = "avx512_bf16") -> None:
    """The rule as on a CPU with bf16 instructions (`feature`), lowered to the tiny preset's
    widths, or as on one without them."""
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: feature if on else "")
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
    assert not torch.equal(out, ref)  # it ran in bf16 (rounded), not in fp32
    assert torch.allclose(out, ref, atol=0.05), (out - ref).abs().max()


def test_which_precisions_a_device_can_resume_in(monkeypatch):
    assert runtime.runs_precision(CPU, "float32") and runtime.runs_precision(CPU, "bfloat16")
    assert not runtime.runs_precision(CPU, "float16")  # no fp16 path for CPU convolutions
    assert not runtime.runs_precision(CPU, "float64")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.runs_precision(CUDA, "float16") and not runtime.runs_precision(CUDA, "bfloat16")


@pytest.mark.parametrize("started_on_bf16_cpu", [True, False])
def test_a_run_resumed_on_another_cpu_keeps_the_precision_it_began_in(
        tiny, monkeypatch, tmp_path, capsys, interrupted_at, started_on_bf16_cpu):
    preset = override(tiny, **{"train.steps": 8, "train.ckpt_every": 4})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "straight"))
    _rule_everywhere(monkeypatch, started_on_bf16_cpu)
    straight = train_teacher(preset, progress=False, device="cpu")

    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "moved"))
    with interrupted_at(6):
        train_teacher(preset, progress=False, device="cpu")
    _rule_everywhere(monkeypatch, not started_on_bf16_cpu)  # resumed on the other kind of CPU
    capsys.readouterr()
    moved = train_teacher(preset, resume=True, progress=False, device="cpu")
    began = "bfloat16" if started_on_bf16_cpu else "float32"
    assert f"continuing in {began}" in capsys.readouterr().err
    assert json.loads(moved.results.read_text())["precision"] == began
    a, b = load_checkpoint(straight.final)["model"], load_checkpoint(moved.final)["model"]
    for k in a:  # the same arithmetic all the way: bit for bit the run that never moved
        assert torch.equal(a[k], b[k]), k


def test_a_precision_this_device_cannot_run_is_said_and_replaced(tiny, monkeypatch, tmp_path, capsys,
                                                                 interrupted_at):
    preset = override(tiny, **{"train.steps": 8, "train.ckpt_every": 4})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path))
    _rule_everywhere(monkeypatch, False)
    with interrupted_at(6):
        train_teacher(preset, progress=False, device="cpu")
    run = next(tmp_path.rglob("checkpoint.pt"))
    ckpt = load_checkpoint(run)
    torch.save({**ckpt, "precision": "float16"}, run)  # as if trained on a GPU in fp16
    capsys.readouterr()
    resumed = train_teacher(preset, resume=True, progress=False, device="cpu")
    assert "trained in float16, which cpu cannot run here; continuing in float32" in capsys.readouterr().err
    assert json.loads(resumed.results.read_text())["precision"] == "float32"


@pytest.mark.parametrize("feature, nhwc", [("amx_bf16", True), ("avx512_bf16", False)])
def test_the_layout_under_bf16_follows_the_cpu_feature(monkeypatch, feature, nhwc):
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: feature)
    auto, wide = Runtime(), 128
    assert runtime.uses_channels_last(auto, CPU, wide, torch.bfloat16) is nhwc
    assert runtime.uses_channels_last(auto, CPU, wide)  # fp32: the width rule
    assert not runtime.uses_channels_last(Runtime(channels_last="off"), CPU, wide, torch.bfloat16)
    assert runtime.uses_channels_last(Runtime(channels_last="on"), CPU, 2, torch.bfloat16)
    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: "")  # bf16 forced, no bf16 CPU
    assert runtime.uses_channels_last(auto, CPU, wide, torch.bfloat16)


def test_a_run_that_changes_precision_on_resume_changes_layout_too(tiny, monkeypatch, tmp_path,
                                                                   interrupted_at):
    """Started in bf16 where that means NHWC, resumed where bf16 means NCHW: the weights
    and the optimizer's moments are laid out again, and training goes on correctly."""
    preset = override(tiny, **{"train.steps": 8, "train.ckpt_every": 4})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path))
    _rule_everywhere(monkeypatch, True, feature="amx_bf16")
    with interrupted_at(6):
        train_teacher(preset, progress=False, device="cpu")
    ckpt = next(tmp_path.rglob("checkpoint.pt"))
    assert _moments_nhwc(ckpt)
    _rule_everywhere(monkeypatch, True, feature="avx512_bf16")
    run = train_teacher(preset, resume=True, progress=False, device="cpu")
    assert json.loads(run.results.read_text())["precision"] == "bfloat16"
    assert not _moments_nhwc(ckpt)


def _moments_nhwc(ckpt) -> int:
    """How many of the checkpoint's 4-D AdamW moments are laid out channels-last (and not
    also contiguous, as 1x1 or single-channel kernels are either way)."""
    state = load_checkpoint(ckpt)["optimizer"]["state"]
    moments = [v for s in state.values() for k, v in s.items() if k == "exp_avg" and v.dim() == 4]
    assert moments
    return sum(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous()
               for v in moments)


def test_training_is_wrapped_for_ddp_after_a_resume_lays_the_weights_out(tiny, monkeypatch, tmp_path,
                                                                         interrupted_at):
    """DDP sizes its gradient buckets by the parameters' strides when it is built: a run
    begun in fp32 (NCHW at the tiny widths) and resumed on an AMX CPU, whose rule would
    start it in bf16 and NHWC, is wrapped once the resume has laid it out NCHW again."""
    preset = override(tiny, **{"train.steps": 8, "train.ckpt_every": 4})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path))
    _rule_everywhere(monkeypatch, False)
    with interrupted_at(6):
        train_teacher(preset, progress=False, device="cpu")
    wrapped = []

    def record(objective, device):
        wrapped.append({n: p.stride() for n, p in objective.named_parameters()})
        return objective

    monkeypatch.setattr(train, "wrap_objective", record)
    _rule_everywhere(monkeypatch, True, feature="amx_bf16")
    seen = []
    monkeypatch.setattr(train.Trainer, "train_step", _spy(train.Trainer.train_step, seen))
    run = train_teacher(preset, resume=True, progress=False, device="cpu")
    assert json.loads(run.results.read_text())["precision"] == "float32"
    assert len(wrapped) == 1 and wrapped[0] == seen[-1]
    assert all(len(s) != 4 or s[-1] == 1 for s in wrapped[0].values())  # NCHW, as it trains


def _spy(train_step, seen):
    """train_step, recording the objective's parameter strides at each step."""
    def step(self):
        seen.append({n: p.stride() for n, p in self.objective.named_parameters()})
        return train_step(self)
    return step
