"""The torchrun process group: which rank this is, the DDP wrapper and the end-of-run sync."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Dist:
    """Process-group facts of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Only rank 0 writes files, logs and progress."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun started this process (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def setup_distributed(device_flag: str | None) -> Dist:
    """Initialise DDP when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag:
        device = torch.device(device_flag)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """The module the training step calls: DDP over the model when there are several ranks."""
    if dist.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
        find_unused_parameters=True)  # prompt-encoder parts are unused in 'none' batches


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op alone)."""
    if dist.world > 1:
        torch.distributed.barrier()


def share_rank0_buffers(model: nn.Module, dist: Dist) -> None:
    """BatchNorm running stats are updated locally by each rank's last forward pass; take rank
    0's (the saved ones) so that every rank ends with the model that was written."""
    if dist.world > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)


def teardown(dist: Dist) -> None:
    """Last barrier and the end of the process group."""
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
