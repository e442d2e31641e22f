"""Small helpers for runs under ``torchrun`` (``torch.distributed`` process groups).

Everything here is a no-op in a single process, so library code can call it
unconditionally. Evaluation uses the same helpers to shard and sum its passes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "barrier", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is running.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 in a single process).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks (``tensor`` itself in one process).

    The input is not modified; with the NCCL backend a CPU tensor is summed on
    this rank's GPU and returned on the CPU.

    Example:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    if not is_distributed():
        return tensor
    work = tensor.detach().clone()
    if dist.get_backend() == "nccl" and work.device.type != "cuda":
        summed = work.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed.to(tensor.device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()
