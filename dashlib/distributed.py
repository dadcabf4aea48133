"""Running under `torchrun --nproc_per_node N`: process group, ranks, DDP, sharded sampling.

Everything here is a no-op in one process: `rank_world()` is (0, 1),
`wrap_objective` returns the objective itself, `GlobalBatch(1)` sums locally,
`sample_sharded` is `sampler.sample`. So library code calls these helpers
unconditionally and stays bit-for-bit what it was without torchrun.

How training stays equal to one process (see docs/scaling.md):

* every rank draws the same GLOBAL batch from identically seeded generators
  and keeps its rows `rank_rows(B, rank, world)`;
* DistributedDataParallel averages the per-rank gradients of per-rank means,
  which is the gradient of the global mean because the shares are equal;
* batch statistics inside a loss (TIRT's weight normalisation, the loss-bin
  tracker) go through the `GlobalBatch` reduction the Trainer passes to the
  objective, which sums over every rank, with a backward pass that sums the
  gradients too;
* dropout draws from each rank's own global RNG (seed + 2 + 1000 * rank), so
  equality holds only with dropout 0.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the
backend is NCCL when the device is CUDA (one GPU per process, cuda:LOCAL_RANK)
and gloo on CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dashlib.config import ConfigError
from dashlib.device import resolve_device
from dashlib.workers import die_with_parent

T = TypeVar("T")
GATHER_CHUNK = 4096  # rows per all_gather when collecting samples (bounds GPU memory)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; backend is "" in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def _local_device(device: str, local_rank: int) -> torch.device:
    """The device this rank uses; CUDA means cuda:LOCAL_RANK under torchrun."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise ConfigError(f"--device {device} names one GPU, but under torchrun every process "
                          f"takes cuda:LOCAL_RANK; pass --device cuda or auto "
                          f"(choose GPUs with CUDA_VISIBLE_DEVICES)")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} "
                          f"visible; use --nproc_per_node <= the number of GPUs")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); no-op without torchrun."""
    if dist.is_initialized():
        rank, world = rank_world()
        return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())
    if not launched():
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _local_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # so "cuda" (no index) means this rank's GPU everywhere
    # torchrun's agent is this rank's parent: a SIGKILLed launcher left its ranks training
    die_with_parent(os.getppid())
    dist.init_process_group(backend)
    # Left at exit, not after each command: a second init in the same process can hang
    # on torchrun's rendezvous store (several CLI calls in one script, as the tests do).
    atexit.register(_leave)
    rank, world = rank_world()
    return DistInfo(rank, world, local_rank, backend)


#: how long a rank waits at exit for the others before leaving anyway
LEAVE_TIMEOUT_S = 60


def _leave() -> None:
    """Leave the group together: a rank that destroyed its group while another's gloo
    threads still talked to it made that one abort ("terminate called without an active
    exception") after every file was written. A rank that failed does not wait for long."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":  # NCCL's barrier has no timeout of its own: not there
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=LEAVE_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - a rank missing at exit: leave without it
            pass
    dist.destroy_process_group()


@contextlib.contextmanager
def session(command: str, supported: bool, device: str = "auto") -> Iterator[DistInfo]:
    """CLI wrapper: join the group when launched by torchrun and silence ranks > 0 (rank 0
    reports for all; errors are still printed by the caller, outside this block). A
    command that cannot run distributed is refused."""
    if not launched():
        yield DistInfo()
        return
    if not supported:
        raise ConfigError(f"`dash {command}` runs as a single process; launch it without torchrun "
                          f"(torchrun works with train-teacher, sample and distill)")
    info = init_distributed(device)
    with contextlib.ExitStack() as quiet:
        if info.rank:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield info


#: What gloo's and NCCL's errors say when another rank of the job has gone (killed, crashed).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def peer_lost(err: BaseException) -> bool:
    """Whether a collective of this torchrun job failed because another of its processes stopped."""
    return launched() and isinstance(err, RuntimeError) and any(p in str(err) for p in PEER_LOST)


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 only; every rank returns its result, or raises its error."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box = [("ok", fn())]
        except Exception as err:  # noqa: BLE001  (re-raised on every rank below)
            box = [("error", err)]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value  # type: ignore[no-any-return]


# --- splitting work ---------------------------------------------------------

def rank_rows(batch_size: int, rank: int, world: int) -> slice:
    """The rows of a global batch one rank trains on; the shares must be equal so
    that DDP's gradient average is the global mean."""
    if batch_size % world:
        raise ConfigError(f"the global batch size {batch_size} is not divisible by the {world} "
                          f"processes (torchrun --nproc_per_node); the batch is split evenly "
                          f"across them, so choose a batch size that is a multiple of {world}")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def shard_sizes(n: int, world: int) -> list[int]:
    """Contiguous near-equal shares of n items: the first n % world get one more."""
    q, r = divmod(n, world)
    return [q + (i < r) for i in range(world)]


def shard(n: int, rank: int, world: int) -> slice:
    """Rank's contiguous share of n items; concatenating all shares gives range(n)."""
    sizes = shard_sizes(n, world)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


# --- batch statistics across ranks --------------------------------------------

def all_reduce_sum(x: Tensor) -> Tensor:
    """x summed elementwise over every rank (a new tensor; x is left as it is)."""
    out = x.clone()
    dist.all_reduce(out)
    return out


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's y depends on every rank's x, so the
    gradient for x is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sum_ranks: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.sum_ranks = sum_ranks
        return sum_ranks(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.sum_ranks(grad), None


@dataclass(frozen=True)
class GlobalBatch:
    """Batch statistics over the global batch, every rank's equal share of rows: a
    `dashlib.tirt.BatchReduce` that the Trainer passes to its objective each step.

    Only the Trainer's step uses it; evaluation, notebooks and hooks one rank
    runs alone keep the local default, so nothing waits on a collective that
    other ranks never join. With `world` 1 it is exactly the local reduction.
    `sum_ranks` is the all-reduce (swappable, e.g. threads standing in for ranks
    in tests).
    """

    world: int
    sum_ranks: Callable[[Tensor], Tensor] = all_reduce_sum

    def sum(self, x: Tensor) -> Tensor:
        """x summed over its first dim (B, ...) -> (...) and over every rank;
        differentiable (the backward sums gradients over ranks)."""
        local = x.sum(0)
        if self.world == 1:
            return local
        if x.requires_grad:
            return _SumOverRanks.apply(local, self.sum_ranks)  # type: ignore[no-any-return]
        return self.sum_ranks(local)

    def mean(self, x: Tensor) -> Tensor:
        """The mean of x (B,) over the global batch (equal shares on every rank)."""
        if self.world == 1:
            return x.mean()
        return self.sum(x) / (x.shape[0] * self.world)


def mean_over_ranks(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Scalars averaged over ranks (for logs and the finiteness check); detached."""
    if rank_world()[1] == 1 or not values:
        return {k: v.detach() for k, v in values.items()}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    stacked = stacked.to(comm_device())
    dist.all_reduce(stacked)
    stacked /= rank_world()[1]
    return dict(zip(values, stacked.unbind()))


# --- DistributedDataParallel ----------------------------------------------------

def wrap_objective(objective: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the whole objective when world > 1, else the objective itself.

    Wrapping the objective (not just `.model`) synchronises every trainable
    part it owns: the network, a learned TIRT table, FitNets adapters. Frozen
    parameters (a distillation teacher, a transferred TIRT table) are left out
    of DDP entirely: no start-up broadcast, no gradient buckets. Buffers are
    not re-broadcast each step: they are updated identically on every rank
    (the loss tracker sums over ranks). An objective whose steps may leave a
    trainable parameter unused sets `find_unused_parameters = True`.
    """
    if rank_world()[1] == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [name for name, p in objective.named_parameters() if not p.requires_grad]
    DDP._set_params_and_buffers_to_ignore_for_model(objective, frozen)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # newer torch renamed broadcast_buffers (per-forward buffer sync) to forward_sync_buffers
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in \
        inspect.signature(DDP.__init__).parameters else "broadcast_buffers"
    # a channels-last 1x1 weight's gradient has other strides than DDP's bucket view: DDP
    # copies it (a few kB a step) and warned about it on every run
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DDP(objective, device_ids=ids, **{no_sync: False},
               find_unused_parameters=bool(getattr(objective, "find_unused_parameters", False)))


# --- random state per rank ----------------------------------------------------

def dropout_seed(seed: int, rank: int) -> int:
    """Seed of a rank's global RNG (dropout); rank 0 keeps the single-process seed."""
    return seed + 2 + 1000 * rank


def gather_rng_states(device: torch.device) -> list[dict[str, Tensor]] | None:
    """Every rank's global RNG state (collective), or None in one process."""
    if rank_world()[1] == 1:
        return None
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    states: list[Any] = [None] * rank_world()[1]
    dist.all_gather_object(states, state)
    return [{k: v.cpu() for k, v in s.items()} for s in states]


def restore_rng_state(states: list[dict[str, Tensor]] | None, device: torch.device, seed: int,
                      step: int) -> None:
    """Restore this rank's RNG from a checkpoint saved with the same world size;
    otherwise reseed deterministically and say that dropout will not replay exactly."""
    rank, world = rank_world()
    if states is not None and len(states) == world:
        torch.set_rng_state(states[rank]["cpu"])
        if device.type == "cuda" and "cuda" in states[rank]:
            torch.cuda.set_rng_state(states[rank]["cuda"], device)
        return
    torch.manual_seed(dropout_seed(seed, rank) + 7919 * step)
    if rank == 0:
        print("dash: note: the checkpoint was written by a different number of processes; "
              "continuing with fresh per-rank dropout seeds (the run will not replay exactly)",
              file=sys.stderr)


# --- sampling across ranks --------------------------------------------------------

def gather_rows(local: Tensor, n: int, chunk: int = GATHER_CHUNK) -> Tensor:
    """Every rank's share (its `shard` of n rows) concatenated in rank order: (n, ...) on
    CPU on every rank. Shares are padded to the largest for all_gather, in blocks of
    `chunk` rows so 50K CIFAR samples never sit on one GPU at once."""
    rank, world = rank_world()
    if world == 1:
        return local
    sizes = shard_sizes(n, world)
    if len(local) != sizes[rank]:
        raise ValueError(f"rank {rank} holds {len(local)} rows but its share of {n} is {sizes[rank]}")
    dev = comm_device()
    parts: list[list[Tensor]] = [[] for _ in range(world)]
    for start in range(0, max(sizes), chunk):
        block = torch.zeros((min(chunk, max(sizes) - start), *local.shape[1:]), dtype=local.dtype,
                            device=dev)
        mine = local[start:start + chunk]
        block[:len(mine)] = mine.to(dev)
        gathered = [torch.empty_like(block) for _ in range(world)]
        dist.all_gather(gathered, block)
        for r, g in enumerate(gathered):
            keep = max(min(sizes[r] - start, len(g)), 0)
            parts[r].append(g[:keep].cpu())
    return torch.cat([torch.cat(p) for p in parts])


@torch.no_grad()
def sample_sharded(sampler: Any, model: nn.Module, y: Tensor, generator: torch.Generator) -> Tensor:
    """`sampler.sample(model, y, generator)` split over the ranks: (N, C, H, W) on every rank.

    Every rank draws x_T for ALL N samples from the same generator (as one
    process does), denoises its contiguous share, and the shares are gathered
    back in order. With eta = 0 the result equals the single-process one (up
    to floating-point differences between batch shapes). With eta > 0 each rank
    draws its step noise from its own generator, seeded from the shared one:
    valid samples, but not the single-process stream.
    """
    rank, world = rank_world()
    if world == 1:
        return sampler.sample(model, y, generator)  # type: ignore[no-any-return]
    cfg = model.config
    x_T = sampler.initial_noise(len(y), (cfg.in_channels, cfg.image_size, cfg.image_size), generator)
    step_gen = generator
    if sampler.config.eta > 0:
        base = int(torch.randint(0, 2**62, (1,), generator=generator))
        step_gen = torch.Generator().manual_seed(base + rank)
    rows = shard(len(y), rank, world)
    local = sampler.sample_from(model, x_T[rows], y[rows], step_gen) if rows.stop > rows.start \
        else x_T[:0]  # more ranks than samples: nothing to do here
    return gather_rows(local, len(y))
