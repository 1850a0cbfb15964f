"""torchrun support: ranks, barrier, and who writes (rank 0 only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
