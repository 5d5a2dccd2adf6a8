"""Data-parallel training over several processes (torchrun), on one machine or many.

Launched by torchrun (WORLD_SIZE > 1), each process trains a DistributedDataParallel copy of the
model on its own share of every global batch. The batch streams are pure functions of the step,
so every rank computes the same global batch and keeps its own rows: no sampler, and nothing
but gradients crosses between processes. Rank 0 alone writes files, prints and evaluates.

Alone (no torchrun, or one process) every function here returns at once and no process group
exists, so the single-process path is the plain one.
"""

import atexit
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int  # 0 .. size - 1 over all machines
    size: int  # processes in all
    local_rank: int  # index on this machine: picks the GPU


def world() -> World:
    """This process's place, from the variables torchrun sets (alone: rank 0 of 1)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    """Rank 0: the one process that writes files, prints and evaluates."""
    return world().rank == 0


def init_if_needed(device: torch.device, batch_size: int) -> torch.device:
    """The device this process trains on; under torchrun, joins the process group (once).

    The global `batch_size` must split evenly over the processes, so that the recipe (batch, lr)
    means the same at any world size. On CUDA each process takes GPU LOCAL_RANK of its machine.
    """
    w = world()
    if w.size == 1:
        return device
    if batch_size % w.size:
        raise UserError(f"batch size {batch_size} does not split over {w.size} processes; use a multiple of {w.size}")
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # An hour, not the default minutes: the other ranks wait while one downloads data or
        # evaluates on a held-out set.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1),
                                device_id=device if device.type == "cuda" else None)
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    """Leave the process group (registered to run at exit by init_if_needed).

    Garbage is collected first: a run stopped by an exception leaves its DDP wrapper in a reference
    cycle through the traceback, and freed during interpreter shutdown, after the group, gloo's
    threads can abort the process ("terminate called without an active exception"; it failed a
    CI run of tests/test_parallel.py).
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as the step runs it: under torchrun a DDP wrapper, which starts every rank from
    rank 0's weights and averages gradients in backward; alone, the model itself."""
    if world().size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def share(batch: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's contiguous rows of a global batch (a view): rank r of W takes rows [r*B/W, (r+1)*B/W)."""
    w = world()
    if batch is None or w.size == 1:
        return batch
    return batch.tensor_split(w.size)[w.rank]


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a device tensor over the ranks (summed then divided: gloo has no AVG)."""
    w = world()
    if w.size == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / w.size


def from_main(compute: Callable[[], T]) -> T:
    """compute() run on rank 0 only, its value (or its UserError) handed to every rank.

    Reading a resumable state this way lets the ranks resume together without sharing a
    filesystem; an error is raised on all ranks, so none is left waiting for the others.
    """
    if world().size == 1:
        return compute()
    box = [None]
    if is_main():
        try:
            box = [(compute(), None)]
        except UserError as e:
            box = [(None, e)]
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics). DDP copies them at the start of
    each forward, so after the last step each rank still holds its own update of them."""
    if world().size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def check_same(batch: torch.Tensor, what: str) -> None:
    """UserError on every rank unless all ranks hold the same `batch`.

    Each rank cuts its rows from a global batch it computed itself; machines with different data
    files or teachers would otherwise train on a mixture without a word.
    """
    if world().size == 1:
        return
    flat = batch.flatten(1).double()  # (B, D): position-weighted row sums see order as well as content
    checksum = flat @ torch.arange(1, flat.shape[1] + 1, dtype=torch.float64, device=flat.device)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise UserError(f"the {world().size} processes disagree on {what}; every machine needs the same data, "
                        "teacher and settings")


@contextmanager
def local_main_first():
    """Run the block on each machine's first process, then on the others (which then read what
    it wrote): one download per machine rather than several racing on the same files."""
    w = world()
    if w.size == 1:
        yield
        return
    if w.local_rank != 0:
        dist.barrier()
    yield
    if w.local_rank == 0:
        dist.barrier()
