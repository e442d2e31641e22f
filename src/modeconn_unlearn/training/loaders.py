"""The batches a training run sees: which parts of the data, in which order, on which rank."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..batchnorm import has_batchnorm
from ..curve import CurveModel
from ..data import (
    UnlearnCollate,
    UnlearnDataset,
    as_dataset,
    collate_of,
    move_to_device,
)
from ..errors import ModeConnError
from ..modes import evaluating
from ..tasks import Task, cast_inputs, task_collate
from .config import TrainConfig
from .distributed import is_distributed, rank, world_size

__all__ = ["CurriculumSampler", "RunLoader", "build_loader", "curriculum_order"]


@dataclass
class RunLoader:
    """A run's loader and what the loop needs to reproduce its order.

    Attributes:
        loader: Yields :class:`~modeconn_unlearn.data.UnlearnBatch` batches.
        generator: The ``torch.Generator`` behind the order (saved in checkpoints),
            or ``None`` when the order depends on the epoch only (distributed).
        sampler: A ``DistributedSampler`` to tell the epoch, or ``None``.
    """

    loader: DataLoader[Any]
    generator: torch.Generator | None
    sampler: DistributedSampler[Any] | None

    def start_epoch(self, epoch: int) -> None:
        """Tell a distributed sampler which epoch starts (its order depends on it)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)


class CurriculumSampler(Sampler[int]):
    """Retain samples shuffled each epoch, forget samples in a fixed order spread evenly.

    Indices are those of an :class:`~modeconn_unlearn.data.UnlearnDataset`
    (retain first). Forget sample ``j`` of ``order`` goes to position
    ``floor((j + 0.5) * n / n_forget)`` of the epoch's ``n`` indices.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> order = list(CurriculumSampler(4, torch.tensor([1, 0]), g))
        >>> [i for i in order if i >= 4], sorted(i for i in order if i < 4)
        ([5, 4], [0, 1, 2, 3])
    """

    def __init__(self, num_retain: int, order: Tensor, generator: torch.Generator) -> None:
        self.num_retain = num_retain
        self.order = order.to(torch.long)
        self.generator = generator

    def __len__(self) -> int:
        return self.num_retain + len(self.order)

    def __iter__(self) -> Iterator[int]:
        n, n_forget = len(self), len(self.order)
        retain = torch.randperm(self.num_retain, generator=self.generator).tolist()
        slots = {int((j + 0.5) * n / n_forget): j for j in range(n_forget)} if n_forget else {}
        it = iter(retain)
        for position in range(n):
            j = slots.get(position)
            yield self.num_retain + int(self.order[j]) if j is not None else next(it)


def _check_parts(loss: Any, retain: Any, forget: Any, kind: str) -> tuple[Any, Any]:
    """The parts the objective ``needs``; a needed part that is missing or empty is an error."""
    needs = tuple(getattr(loss, "needs", ("retain", "forget")))
    given = {"retain": retain, "forget": forget}
    for part in needs:
        data = given.get(part)
        size = 0 if data is None else len(as_dataset(data, f"{part}_data"))
        if size == 0:
            state = "not given (None)" if data is None else "empty (0 samples)"
            hint = (
                " If the objective uses retain samples only, give it needs = ('retain',)."
                if part == "forget" and not hasattr(loss, "needs")
                else ""
            )
            raise ModeConnError(
                f"{kind}: the {part.upper()} set is {state}, but the objective {loss!r} trains "
                f"on {part} samples; pass {part}_data with at least one sample.{hint}"
            )
    return (retain if "retain" in needs else None, forget if "forget" in needs else None)


def curriculum_order(
    model: nn.Module, forget: Any, task: Task, *, device: torch.device, hard_first: bool
) -> Tensor:
    """Forget-set indices ordered by the model's per-sample loss (ascending = easy first).

    The model is scored in eval mode without gradients; a ``CurveModel`` at
    ``t = 0`` (the original). Ties keep the dataset order.
    """
    dataset = as_dataset(forget, "forget_data")
    loader = DataLoader(
        UnlearnDataset(None, dataset),
        batch_size=256,
        shuffle=False,
        collate_fn=UnlearnCollate(collate_of(forget) or task_collate(task)),
    )
    scorer: Any = model
    if isinstance(model, CurveModel):
        curve = model

        def scorer(*args: Any, **kwargs: Any) -> Any:
            return curve(*args, t=0.0, **kwargs)

    losses = []
    with evaluating(model), torch.no_grad():
        for batch in loader:
            read = task.split(move_to_device(batch, device))
            assert read.targets is not None
            inputs = cast_inputs(model, read.inputs)  # the curve's scorer is no module
            losses.append(task(scorer, inputs, read.targets).loss.float().cpu())
    values = torch.cat(losses)
    return torch.argsort(-values if hard_first else values, stable=True)


def build_loader(
    kind: str,
    loss: Any,
    retain: Any,
    forget: Any,
    *,
    config: TrainConfig,
    task: Task,
    model: nn.Module,
    device: torch.device,
) -> RunLoader:
    """The run's loader over the parts of the data the objective ``needs``.

    In one process without a curriculum the order is
    :func:`~modeconn_unlearn.data.unlearn_loader`'s (that of earlier releases, bit for
    bit). Samples are batched with the collate of a given ``DataLoader``, else the task's
    ``collate`` (token sequences are padded), else stacked. Under ``torchrun`` a
    ``DistributedSampler`` (seeded with ``config.seed``) gives each rank
    ``batch_size / world_size`` samples of every global batch. For a model with
    BatchNorm, an epoch that would end in a one-sample batch drops it.
    """
    retain, forget = _check_parts(loss, retain, forget, kind)
    seed = int(config.seed)
    collate = UnlearnCollate(collate_of(retain) or collate_of(forget) or task_collate(task))
    dataset = UnlearnDataset(retain, forget, retain_ratio=config.retain_ratio, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler[int] | None = None
    batch_size = config.batch_size
    if is_distributed():
        world = world_size()
        if config.curriculum is not None:
            raise ModeConnError(
                "curriculum= is not supported under torchrun; run it in one process."
            )
        if batch_size % world:
            raise ModeConnError(
                f"batch_size={batch_size} is the global batch and must be divisible by the "
                f"{world} ranks."
            )
        batch_size //= world
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank(), shuffle=True, seed=seed
        )
    elif config.curriculum is not None:
        if forget is None:
            raise ModeConnError("curriculum orders forget samples, but the objective uses none.")
        order = curriculum_order(
            model, forget, task, device=device, hard_first=config.curriculum == "hard_first"
        )
        sampler = CurriculumSampler(dataset.num_retain, order, generator)
    samples = len(dataset) if sampler is None else len(sampler)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        # A distributed sampler's order depends on the epoch only; the generator still fixes
        # each epoch iterator's base seed, which the global RNG would otherwise draw (and so
        # shift the curve's t draws away from a single-process run's). The curriculum's
        # sampler draws from it itself.
        generator=None if isinstance(sampler, CurriculumSampler) else generator,
        collate_fn=collate,
        # BatchNorm cannot train on a batch of one sample: an epoch that would end in one
        # drops that sample (otherwise the last, smaller batch is kept).
        drop_last=samples % batch_size == 1 and _has_batchnorm(model),
    )
    if isinstance(sampler, DistributedSampler):
        return RunLoader(loader, None, sampler)
    return RunLoader(loader, generator, None)


def _has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` (or the network a curve runs) has running-statistics normalisation."""
    return has_batchnorm(model.template if isinstance(model, CurveModel) else model)
