"""Where this process sits in a run: one process, or one per device under ``torchrun`` (DDP).

``torchrun --nproc_per_node N`` starts N copies of a command and tells each its place through
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); this module is the one that reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from SCPMNoduleLib.runtime import resolve_device

__all__ = ["Distributed", "init_distributed", "process_rank", "shutdown_distributed"]


def process_rank() -> int:
    """This process's global rank as ``torchrun`` set it (``RANK``; 0 outside ``torchrun``).

    Known before the process group is joined, so logging and reporting can use it from the start.
    """
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1``) and pick the device.

    Args:
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    """
    resolved = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolved.type == "cuda"
    if use_cuda:  # each process drives the GPU of its local rank
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    return Distributed(rank, world_size, local_rank, resolved)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
