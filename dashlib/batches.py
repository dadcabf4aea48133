"""The training batch stream: all randomness drawn in order, rows gathered in workers.

A global batch is a pure function of two generators (`data_gen` for the row
indices, `noise_gen` for t, eps and the uniforms), drawn in exactly this
order every step; that is what makes runs reproducible and resumable.

With `workers = 0` the loop draws and gathers each batch itself. With
`workers > 0` a DataLoader runs ahead: its sampler, in the main process,
draws each batch's randomness from the same generators in the same order (a
"ticket"), the workers gather the image rows from the in-memory split, and
on CUDA the pin-memory thread pins everything for asynchronous copies. The
sequence of batches is therefore identical; because the sampler runs ahead,
each ticket carries the generator states right after its draw and
`states()` reports those of the last batch handed out, which is what a
checkpoint must save.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from dashlib.data import Split, batch_indices
from dashlib.diffusion import Diffusion

FIELDS = ("x0", "y", "t", "eps", "u", "u_batch")


def draw_ticket(n: int, image_shape: tuple[int, ...], diffusion: Diffusion, batch_size: int,
                data_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Tensor]:
    """One global batch's randomness: idx (B,), t (B,), eps (B, C, H, W), u (B, 4), u_batch (4,),
    plus the generator states after drawing it."""
    idx = batch_indices(n, batch_size, data_gen)
    g = noise_gen
    return {"idx": idx, "t": diffusion.sample_t(batch_size, g),
            "eps": torch.randn((batch_size, *image_shape), generator=g),
            "u": torch.rand(batch_size, 4, generator=g), "u_batch": torch.rand(4, generator=g),
            "data_state": data_gen.get_state(), "noise_state": g.get_state()}


class _Tickets(torch.utils.data.Sampler):
    """An endless sequence of tickets drawn in the main process (DataLoader samplers are)."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield self.stream.ticket()


class _Rows(torch.utils.data.Dataset):
    """Worker side: gather a ticket's rows from the in-memory split."""

    def __init__(self, data: Split) -> None:
        self.x, self.y = data.x, data.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, ticket: dict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        idx = ticket["idx"]
        return {"x0": self.x[idx], "y": self.y[idx], **{k: v for k, v in ticket.items() if k != "idx"}}


class BatchStream:
    """Global batches (x0, y, t, eps, u, u_batch) in the order the generators dictate.

    Use as a context manager so worker processes are shut down; after changing
    the generators' states (resume), call `reset()`.
    """

    def __init__(self, data: Split, diffusion: Diffusion, batch_size: int,
                 data_gen: torch.Generator, noise_gen: torch.Generator, workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.data, self.diffusion, self.batch_size = data, diffusion, batch_size
        self.data_gen, self.noise_gen = data_gen, noise_gen
        self.workers, self.pin_memory = workers, pin_memory
        self._iter: Iterator[dict[str, Tensor]] | None = None
        self._states: tuple[Tensor, Tensor] | None = None

    def ticket(self) -> dict[str, Tensor]:
        return draw_ticket(len(self.data), tuple(self.data.x.shape[1:]), self.diffusion,
                           self.batch_size, self.data_gen, self.noise_gen)

    def next(self) -> tuple[Tensor, ...]:
        """The next global batch as (x0, y, t, eps, u, u_batch)."""
        if self.workers == 0:
            item = _Rows(self.data)[self.ticket()]
        else:
            if self._iter is None:
                self._iter = iter(self._loader())
            item = next(self._iter)
        self._states = (item["data_state"], item["noise_state"])
        return tuple(item[k] for k in FIELDS)

    def states(self) -> tuple[Tensor, Tensor]:
        """(data_gen, noise_gen) states right after the last batch handed out."""
        if self._states is None or self.workers == 0:
            return self.data_gen.get_state(), self.noise_gen.get_state()
        return self._states[0].clone(), self._states[1].clone()

    def reset(self) -> None:
        """Drop batches drawn ahead; the next one is drawn from the generators' current state
        (call it after setting their states, e.g. on resume)."""
        self._states = None
        self._shutdown()

    def close(self) -> None:
        """Stop the workers and rewind the generators to the last batch handed out."""
        self._shutdown()
        if self.workers and self._states is not None:
            self.data_gen.set_state(self._states[0].clone())
            self.noise_gen.set_state(self._states[1].clone())

    def _loader(self) -> torch.utils.data.DataLoader:
        # A private generator for the workers' base seed: by default DataLoader draws it from
        # the global RNG, which dropout uses, and that would change the run.
        return torch.utils.data.DataLoader(
            _Rows(self.data), batch_size=None, sampler=_Tickets(self), num_workers=self.workers,
            pin_memory=self.pin_memory, prefetch_factor=2, generator=torch.Generator().manual_seed(0))

    def _shutdown(self) -> None:
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
