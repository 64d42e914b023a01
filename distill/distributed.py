"""Training on several processes (torch's DistributedDataParallel under ``torchrun``) and the
batches every process trains on.

A step's global batch is what one process has always drawn for it, ``sampler.batch(step,
batch)``: examples drawn one after another from one generator seeded by ``(seed, step)``. An
example cannot be drawn without the ones before it (each starts where the previous one left the
generator), so instead of every process drawing the whole batch to keep its share, the processes
take turns: process ``step % world`` draws the whole batch of ``step`` (in its own data-loading
workers, if any) and hands every process its share, the contiguous rows ``rank * batch / world``
onwards. Each process thus draws as much as it trains on; one process draws exactly what training
drew before it could run on several; and a run resumed on another number of processes trains on
the same global batches.

Process 0 logs, validates and writes checkpoints. The other processes reseed torch's generators
(Gumbel noise of gated models) from ``(seed, step, rank)`` at every step, so a step is a function
of the checkpoint and its number alone.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # process number on this machine: its GPU
    device: torch.device = torch.device("cpu")
    control: object = None  # gloo group for batches and flags (CPU tensors whatever the device); None in a single process

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them in the environment; (0, 1, 0) without it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start several processes with torchrun") from None


def setup(device: str, timeout_s: float) -> Context:
    """Join the run's process group (gloo on CPU, NCCL on CUDA) when torchrun started more than one
    process; a single process joins nothing. Collectives that wait longer than ``timeout_s`` fail.
    Raises ValueError for a device this process cannot use, RuntimeError when the group cannot form."""
    rank, world, local = launch()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
        if local >= torch.cuda.device_count():
            raise ValueError(f"process {local} on this machine has no GPU of its own ({torch.cuda.device_count()} visible): start at most that many per node")
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    if world == 1:
        return Context(device=where)
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=timeout, **({"device_id": where} if where.type == "cuda" else {}))
    control = dist.new_group(backend="gloo", timeout=timeout) if where.type == "cuda" else dist.group.WORLD
    return Context(rank, world, local, where, control)


def close(ctx: Context) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def any_of(ctx: Context, *flags: bool) -> list[bool]:
    """Each flag, true when it is true in any process (one all-reduce): decisions every process
    must take alike, such as skipping a step or stopping."""
    if ctx.world == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control)
    return [bool(v) for v in t.tolist()]


def mean(ctx: Context, values: list[float]) -> list[float]:
    """The mean of each value over the processes."""
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=ctx.control)
    return (t / ctx.world).tolist()


def from_main(ctx: Context, obj):
    """Process 0's ``obj`` in every process (pickled): what only process 0 reads, such as the
    checkpoint a run resumes from, whose folder the other machines may not see."""
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's generators in process ``rank`` at ``step`` (runs on several processes)."""
    return int(np.random.SeedSequence([seed, 3, step, rank]).generate_state(1)[0])


class _Steps(torch.utils.data.Dataset):
    """The global batches of some steps, for DataLoader workers: item ``i`` is the batch of ``steps[i]``."""

    def __init__(self, sampler, steps: range, size: int):
        self.sampler, self.steps, self.size = sampler, steps, size

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        return self.sampler.batch(self.steps[i], self.size)


def _tensors(arrays) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a) for a in arrays)


def _drawn(sampler, steps: range, size: int, workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The global batches of ``steps`` in order, drawn ahead: by ``workers`` processes, or with
    none by one thread that draws the next batch while the current one trains."""
    if workers:
        loader = torch.utils.data.DataLoader(_Steps(sampler, steps, size), batch_size=None, num_workers=workers, prefetch_factor=2)
        for arrays in loader:
            yield _tensors(arrays)
        return
    if not steps:
        return
    pool = ThreadPoolExecutor(1)
    try:
        pending = pool.submit(sampler.batch, steps[0], size)
        for i in range(len(steps)):
            arrays = pending.result()
            if i + 1 < len(steps):
                pending = pool.submit(sampler.batch, steps[i + 1], size)
            yield _tensors(arrays)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def batches(sampler, start: int, end: int, size: int, ctx: Context, workers: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """This process's share of the global batch of each step from ``start`` to ``end`` (exclusive):
    rows ``rank * size / world`` onwards of ``sampler.batch(step, size)``, as CPU tensors
    ``(noisy, clean[, extra])``. Process ``step % world`` draws the batch and scatters it.

    Shape: -> ([size / world, L], [size / world, L][, [size / world]])
    """
    own = range(start + (ctx.rank - start) % ctx.world, end, ctx.world)
    drawn = _drawn(sampler, own, size, workers)
    share = size // ctx.world
    try:
        for step in range(start, end):
            if ctx.world == 1:
                yield next(drawn)
                continue
            owner = step % ctx.world
            parts = None
            if owner == ctx.rank:
                full = next(drawn)
                parts = [tuple(t[r * share : (r + 1) * share].clone() for t in full) for r in range(ctx.world)]  # clones: a view pickles its whole batch
            box = [None]
            dist.scatter_object_list(box, parts, src=owner, group=ctx.control)
            yield box[0]
    finally:
        drawn.close()
