"""Small helpers for runs under ``torchrun`` (``torch.distributed`` process groups).

Everything here is a no-op in a single process, so library code can call it
unconditionally. Evaluation uses the same helpers to shard and sum its passes.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "all_reduce_sum",
    "barrier",
    "is_distributed",
    "no_forward_buffer_sync",
    "rank",
    "world_size",
]

_DDP_HAS_FORWARD_SYNC = (
    "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is running.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def no_forward_buffer_sync() -> dict[str, bool]:
    """The ``DistributedDataParallel`` keyword that turns off its buffer sync in forward.

    A curve's buffers are its fixed ends and pinned statistics, identical on every
    rank. Newer torch renamed ``broadcast_buffers`` to ``forward_sync_buffers``;
    this gives whichever the installed torch takes.

    Example:
        >>> list(no_forward_buffer_sync().values())
        [False]
    """
    return {"forward_sync_buffers" if _DDP_HAS_FORWARD_SYNC else "broadcast_buffers": False}


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
