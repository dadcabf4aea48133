"""How to run, not what: speed options that never change a run's identity.

`Runtime` is deliberately NOT part of a run's payload (its hash), because
none of these options changes what is trained, only how fast:

* ``channels_last``: "auto" (default) uses the NHWC memory layout on CUDA
  only, where cuDNN's convolutions and tensor cores prefer it; "on"/"off"
  force it.
* ``compile``: `torch.compile` every UNet (in place, so state_dict keys and
  checkpoints are unchanged). Off by default: compiling takes minutes.
* ``loader_workers``: DataLoader worker processes that gather the (already drawn)
  batch rows and, on CUDA, pin them for asynchronous copies (0 = in the
  training loop itself; see `dashlib.batches`).
* ``sample_amp``: autocast for sampling on CUDA ("none" by default, so
  samples are fp32 and reproducible; "auto" picks bf16 when supported).
  Training's precision is `train.amp`, part of the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.config import Validated, one_of, positive
from dashlib.device import amp_dtype, autocast
from dashlib.unet import UNet


@dataclass(frozen=True)
class Runtime(Validated):
    compile: bool = False
    channels_last: str = "auto"
    loader_workers: int = 0
    sample_amp: str = "none"

    def validate(self) -> None:
        one_of(self, "channels_last", ("auto", "on", "off"))
        positive(self, "loader_workers", strict=False)
        one_of(self, "sample_amp", ("none", "auto", "bf16", "fp16"))


def uses_channels_last(runtime: Runtime, device: torch.device) -> bool:
    if runtime.channels_last == "auto":
        return device.type == "cuda"
    return runtime.channels_last == "on"


def _with_frozen(module: nn.Module) -> list[nn.Module]:
    """The module and a distillation objective's frozen teacher, kept outside its tree."""
    teacher = getattr(module, "teacher", None)
    return [module, teacher] if isinstance(teacher, nn.Module) else [module]


def to_channels_last(module: nn.Module, runtime: Runtime, device: torch.device) -> nn.Module:
    """Convert 4-D weights in place (and a frozen teacher's) when channels-last applies."""
    if uses_channels_last(runtime, device):
        for m in _with_frozen(module):
            m.to(memory_format=torch.channels_last)
    return module


def compile_unets(module: nn.Module, runtime: Runtime) -> None:
    """torch.compile every UNet inside `module` (and a frozen teacher), in place, so
    state_dict keys and checkpoints are unchanged.

    Call it after any deepcopy of the module (the EMA): a copy made after
    compiling would call the original's compiled forward.
    """
    if runtime.compile:
        for top in _with_frozen(module):
            for m in top.modules():
                if isinstance(m, UNet):
                    m.compile()


class InferenceModel(nn.Module):
    """A UNet run under autocast, returning float32; exposes `config` and `null_label`
    so the sampler and guidance code treat it as the UNet itself."""

    def __init__(self, model: UNet, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype
        self.config = model.config

    @property
    def null_label(self) -> int:
        return self.model.null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with autocast(x.device, self.dtype):
            return self.model(x, t, y).float()


def inference_model(model: UNet, runtime: Runtime, device: torch.device) -> nn.Module:
    """The model prepared for sampling: channels-last, compiled, autocast as configured.
    With the default Runtime on CPU it is the model itself."""
    to_channels_last(model, runtime, device)
    compile_unets(model, runtime)
    dtype = amp_dtype(device, runtime.sample_amp)
    return model if dtype is None else InferenceModel(model, dtype)
