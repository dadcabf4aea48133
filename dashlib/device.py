"""Device selection and the autocast context (the precision rule is `dashlib.runtime.amp_dtype`)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch

from dashlib.config import ConfigError

#: Device types dash runs on; torch knows more (mps, xla, ...), dash is not tested there.
DEVICE_TYPES = ("cpu", "cuda")

def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; otherwise torch.device(name), which must exist here.

    A name torch does not know, a type dash does not run on, CUDA on a host
    without it and a GPU index past the last GPU are ConfigErrors (one CLI line).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"device {name!r}: dash runs on {' or '.join(DEVICE_TYPES)} only; "
                          f"use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; "
                          f"use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this host has {torch.cuda.device_count()} "
                          f"GPU(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return device


def memory_bytes(device: torch.device) -> int:
    """The device's total memory: the GPU's, or the host's physical RAM."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_fits(batch: int, shape: Sequence[int], device: torch.device, what: str) -> None:
    """Refuse, before any file is written, a batch whose float32 inputs alone (x_0, the
    noise and x_t: 3 x batch x prod(shape) x 4 bytes, a lower bound of what training
    needs) exceed the device's whole memory; such a run could only die out of memory."""
    need = 3 * batch * math.prod(shape) * 4
    have = memory_bytes(device)
    if need > have:
        raise ConfigError(f"{what} = {batch} cannot fit: its {tuple(shape)} inputs alone need "
                          f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of {device}; "
                          f"lower it")


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory errors: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield
