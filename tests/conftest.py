"""Shared fixtures: every test runs on CPU in its own runs/ folder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny models gain nothing from a second thread, and OpenMP threads spin-wait
# when the cores are busy (other tests' subprocesses), which slows them ~10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DASH_RUNS", str(tmp_path / "runs"))
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    from dashlib.presets import get_preset

    return get_preset("tiny")


@pytest.fixture
def tiny_model(tiny):
    from dashlib.unet import UNet

    torch.manual_seed(1)
    model = UNet(tiny.teacher).eval()
    # Zero-initialised output convs make every branch output 0; randomise them so
    # branch tests compare genuinely different predictions.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model


@pytest.fixture
def interrupted_at():
    """A context manager: `with interrupted_at(step): train(...)` stops training with a
    KeyboardInterrupt (as Ctrl-C would) when the Trainer reaches `step`, which the
    `with` expects; afterwards training runs normally again. `interrupted_at(step,
    error)` raises `error` instead (an out-of-memory error, say)."""
    import contextlib

    from dashlib.train import Trainer

    @contextlib.contextmanager
    def stop(step: int, error: BaseException | None = None):
        error = KeyboardInterrupt() if error is None else error
        original = Trainer.train_step

        def stopping(self):
            if self.step == step:
                raise error
            return original(self)

        Trainer.train_step = stopping
        try:
            with pytest.raises(type(error)) as raised:
                yield
            assert raised.value is error
        finally:
            Trainer.train_step = original

    return stop
