"""One process per device under ``torchrun``: who am I, which device, and the few collectives used.

``torchrun --nproc_per_node=N`` (``python -m torch.distributed.run``) sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group -- NCCL when the
run is on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU -- and without those
variables it is a single process with no group at all. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from HNTumorSegLib.pipeline.inference import resolve_device as resolve_device_name

#: Collectives wait this long: rank 0 validating full volumes keeps the others at a barrier.
GROUP_TIMEOUT = timedelta(hours=2)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (itself when not distributed)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def cleanup(self, barrier: bool = True) -> None:
        """Leave the group if :func:`setup` created it; first a barrier (skipped after an error,
        when the other ranks may never reach it)."""
        if self.initialised_here and dist.is_initialized():
            if barrier:
                self.barrier()
            dist.destroy_process_group()
            self.initialised_here = False


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; ``"cuda"`` -> ``cuda:LOCAL_RANK``
    (the library's rules: :func:`HNTumorSegLib.pipeline.inference.resolve_device`)."""
    if isinstance(device, torch.device):
        return device
    return resolve_device_name(device, local_rank)


def setup(device: str | torch.device = "auto") -> DistContext:
    """The process's context; joins the torchrun process group (NCCL on CUDA, gloo on the CPU)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world, timeout=GROUP_TIMEOUT)
        created = True
    return DistContext(rank, world, local_rank, dev, created)
