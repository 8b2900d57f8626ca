"""Scale-out on PyTorch's own engine: DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m blockzoo train ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK; ``setup`` then joins the process group (gloo on CPU, nccl on CUDA).
Each rank takes its contiguous share of every global batch (``TensorLoader``),
the loss is the batch *sum* divided by the *global* batch size, and DDP averages
gradients over ranks — so N processes compute the gradient of exactly the batch
one process would see. Metrics are summed over ranks with ``all_reduce``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "all_reduce_sum", "barrier", "setup", "teardown"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun, ``cuda`` means GPU ``LOCAL_RANK`` (modulo the count)."""
    if device.type != "cuda" or device.index is not None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))


def setup(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun with more than one process.

    NCCL when every process on this node has a GPU of its own; gloo otherwise (CPU, or
    several processes sharing one GPU, which NCCL refuses).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        own_gpu = device.type == "cuda" and torch.cuda.device_count() >= local
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if own_gpu else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself in one process)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read)."""
    if d.enabled:
        dist.barrier()


def teardown(d: Dist | None = None) -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
