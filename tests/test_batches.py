"""The batch stream: DataLoader workers must not change the sequence of batches."""

import pytest
import torch

from dashlib.batches import BatchStream
from dashlib.config import ConfigError, override
from dashlib.data import load_dataset
from dashlib.diffusion import Diffusion
from dashlib.io import load_checkpoint
from dashlib.runtime import Runtime, inference_model
from dashlib.teacher import train_teacher


def _stream(tiny, workers):
    gens = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    data = load_dataset(tiny.data).train
    return BatchStream(data, Diffusion(tiny.diffusion), 8, *gens, workers=workers)


def test_workers_give_the_same_batches_and_generator_states(tiny):
    with _stream(tiny, 0) as plain, _stream(tiny, 2) as loaded:
        for _ in range(6):
            a, b = plain.next(), loaded.next()
            assert all(torch.equal(x, y) for x, y in zip(a, b))
            # the loader has drawn ahead, yet reports the state right after this batch
            assert all(torch.equal(x, y) for x, y in zip(plain.states(), loaded.states()))
    # closing rewinds the generators to the last batch handed out
    assert torch.equal(loaded.noise_gen.get_state(), plain.noise_gen.get_state())


def _final(preset, workers, interrupted_at=None, stop_at=None):
    runtime = Runtime(loader_workers=workers)
    if stop_at is not None:
        with interrupted_at(stop_at):
            train_teacher(preset, progress=False, runtime=runtime)
    run = train_teacher(preset, resume=stop_at is not None, progress=False, runtime=runtime)
    return load_checkpoint(run.final)["model"]


def test_training_with_workers_equals_without_and_resumes_exactly(tiny, monkeypatch, tmp_path,
                                                                 interrupted_at):
    # dropout > 0: the loader must not draw from the global RNG dropout uses
    preset = override(tiny, **{"train.steps": 8, "train.ckpt_every": 3, "teacher.dropout": 0.1})
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "plain"))
    plain = _final(preset, 0)
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "workers"))
    resumed = _final(preset, 1, interrupted_at, stop_at=5)
    for k in plain:
        assert torch.equal(plain[k], resumed[k]), k


def test_runtime_options_are_validated_and_default_to_the_plain_model(tiny_model):
    with pytest.raises(ConfigError, match="channels_last"):
        Runtime(channels_last="yes")
    with pytest.raises(ConfigError, match="loader_workers"):
        Runtime(loader_workers=-1)
    with pytest.raises(ConfigError, match="freeze"):
        Runtime(freeze="yes")
    assert inference_model(tiny_model, Runtime(freeze="off"), torch.device("cpu")) is tiny_model


def test_channels_last_changes_layout_not_results(tiny_model):
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 99]), torch.tensor([0, 1, 4])
    with torch.no_grad():
        before = tiny_model(x, t, y)
        model = inference_model(tiny_model, Runtime(channels_last="on", freeze="off"), torch.device("cpu"))
        assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(model(x, t, y), before, atol=1e-5)
