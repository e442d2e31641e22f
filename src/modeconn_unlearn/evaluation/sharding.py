"""Evaluation under ``torchrun``: each rank scores its shard, and the sums are all-reduced.

In a single process every function here is the identity, so callers use them
unconditionally. With a ``torch.distributed`` process group of ``W`` ranks,
rank ``r`` evaluates samples ``r, r + W, r + 2W, ...`` of each split (the
slicing of a ``DistributedSampler`` without padding, so no sample counts
twice); accuracy and loss come from all-reduced sums, identical on every
rank, and per-sample results that an attack needs are gathered back into data
order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from ..errors import ModeConnError
from ..training.distributed import all_reduce_sum, is_distributed, rank, world_size
from .outputs import Metrics, Outputs, concat_signals

__all__ = ["gather_outputs", "global_metrics", "shard_loader"]


def shard_loader(loader: DataLoader[Any], *, name: str = "data") -> DataLoader[Any]:
    """This rank's shard of ``loader`` (the loader itself in a single process).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.arange(5)), batch_size=2)
        >>> shard_loader(loader) is loader
        True
    """
    if not is_distributed():
        return loader
    dataset = loader.dataset
    n, world = len(dataset), world_size()  # type: ignore[arg-type]
    if n < world:
        raise ModeConnError(
            f"{name} has {n} samples for {world} ranks; every rank needs at least one."
        )
    return DataLoader(
        Subset(dataset, list(range(rank(), n, world))),
        batch_size=loader.batch_size or 1,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


def global_metrics(outputs: Outputs) -> Metrics:
    """Accuracy and mean loss over all ranks' shards (this shard's in a single process).

    Example:
        >>> out = Outputs(torch.tensor([1.0, 3.0], dtype=torch.float64), torch.ones(2))
        >>> global_metrics(out).loss
        2.0
    """
    if not is_distributed():
        return outputs.metrics()
    sums = torch.tensor(
        [float(outputs.loss.sum()), float(outputs.correct.sum()), float(len(outputs))],
        dtype=torch.float64,
    )
    loss, correct, count = all_reduce_sum(sums).tolist()
    return Metrics(accuracy=100.0 * correct / count, loss=loss / count, count=int(count))


def gather_outputs(outputs: Outputs) -> Outputs:
    """Every rank's per-sample outputs, back in data order (``outputs`` in a single process).

    Example:
        >>> out = Outputs(torch.zeros(3, dtype=torch.float64), torch.ones(3))
        >>> gather_outputs(out) is out
        True
    """
    if not is_distributed():
        return outputs
    world = world_size()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, outputs)
    total = sum(len(part) for part in parts)
    # Rank r holds samples r, r + W, ...: position i of rank r is sample r + i * W.
    order = torch.cat([torch.arange(r, total, world) for r in range(world)])
    inverse = torch.argsort(order)

    def merge(tensors: list[torch.Tensor]) -> torch.Tensor:
        return concat_signals(tensors)[inverse]

    keys = parts[0].signals.keys()
    return Outputs(
        loss=merge([part.loss for part in parts]),
        correct=merge([part.correct for part in parts]),
        signals={key: merge([part.signals[key] for part in parts]) for key in keys},
    )
