"""torchrun support. The entry point owns the process group; the library only reads it.

``process_group()`` is what an entry point (the CLI, or a user's own ``torchrun`` script) wraps
its work in: it joins the group when launched by torchrun and leaves it on exit, but only if it
created it. Library functions call :func:`current` and never create or destroy a group, so a
caller's group survives ``encode()`` and ``fit()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import DaitError

# torchrun sets these for every worker; their presence means "launched by torchrun".
_TORCHRUN_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group is initialised (possibly of one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@contextmanager
def process_group(device_type: str) -> Iterator[DistInfo]:
    """Join torchrun's group for the duration of the block (a no-op outside torchrun).

    A group that already exists is used and left alone; one created here is destroyed here.
    """
    created = False
    if launched_by_torchrun() and not tdist.is_initialized():
        if device_type == "cuda":  # before init, so NCCL binds this rank's device
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        tdist.init_process_group(backend_for(device_type))
        created = True
    try:
        yield current()
    finally:
        if created and tdist.is_initialized():
            tdist.destroy_process_group()


def current() -> DistInfo:
    """Rank and world size of the caller's process group; one process when there is none."""
    if not (tdist.is_available() and tdist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DaitError(
                "launched by torchrun with WORLD_SIZE > 1 but no process group exists; "
                "run through the dait-cache command, or wrap your code in "
                "`with dait_cache.dist.process_group('cuda'):`"
            )
        return DistInfo()
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)


def collective_device() -> torch.device:
    """Where a tensor must live for a collective of the current group (NCCL: this rank's GPU)."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: int, info: DistInfo) -> int:
    """Sum an integer over the group (identity without one)."""
    return int(all_reduce_tensor(torch.tensor([value], dtype=torch.int64), info).item())


def all_reduce_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise sum of ``t`` over the group, on ``t``'s device (``t`` without one)."""
    if not info.enabled:
        return t
    summed = t.to(collective_device())
    tdist.all_reduce(summed)
    return summed.to(t.device)


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order ([obj] without a group)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


def usable_cores() -> int:
    """CPU cores this process may use (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Decode workers where the user names none: one per usable core, at most 4."""
    return min(4, usable_cores())
