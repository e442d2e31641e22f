"""The outputs layer: one forward-pass collector over a loader, per-sample results.

Everything that scores a model on data (:func:`~modeconn_unlearn.evaluation.evaluate`,
:func:`~modeconn_unlearn.evaluation.evaluate_path`, the attacks of
:mod:`modeconn_unlearn.mia`, the connectivity analysis) computes from the
:class:`Outputs` of :func:`collect_outputs`: per-sample loss and correctness
from the task and, when asked, the task's attack signals. A pass runs under
:func:`torch.no_grad` in eval mode and leaves every submodule's train/eval
mode as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import as_loader
from ..errors import ModeConnError
from ..modes import evaluating
from ..tasks import Task, resolve_task, task_collate
from ..wrappers import module_device

__all__ = [
    "DataLike",
    "DeviceLike",
    "Metrics",
    "Outputs",
    "collect_outputs",
    "concat_signals",
    "resolve_device",
    "run_pass",
]

#: What every evaluation function accepts as data: a DataLoader, or a map-style
#: Dataset (read in batches of 256).
DataLike: TypeAlias = "DataLoader[Any] | Dataset[Any]"
#: A device, its name, or ``None`` for "where the model is".
DeviceLike: TypeAlias = "torch.device | str | None"


@dataclass(frozen=True)
class Metrics:
    """Accuracy and loss of a model on one dataset.

    Attributes:
        accuracy: ``100 * mean(correct)``: top-1 accuracy in percent for a
            classifier, the mean share of correctly predicted answer tokens
            for a language model.
        loss: Mean per-sample loss (cross-entropy for a classifier).
        count: Number of samples evaluated.
    """

    accuracy: float
    loss: float
    count: int


@dataclass
class Outputs:
    """Per-sample results of one pass over a dataset, in data order, on the CPU.

    Attributes:
        loss: ``(N,)`` float64 per-sample loss.
        correct: ``(N,)`` float64 correctness in [0, 1].
        signals: The task's attack signals (see the task's docstring), concatenated
            over batches; empty unless collected with ``signals=True``.

    Example:
        >>> out = Outputs(torch.tensor([1.0, 3.0], dtype=torch.float64),
        ...               torch.tensor([1.0, 0.0], dtype=torch.float64))
        >>> out.metrics()
        Metrics(accuracy=50.0, loss=2.0, count=2)
    """

    loss: Tensor
    correct: Tensor
    signals: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @property
    def count(self) -> int:
        """The number of samples."""
        return len(self)

    def metrics(self) -> Metrics:
        """Accuracy (``100 * mean(correct)``) and mean loss."""
        count = len(self)
        return Metrics(
            accuracy=100.0 * float(self.correct.sum()) / count,
            loss=float(self.loss.sum()) / count,
            count=count,
        )


def resolve_device(model: nn.Module, device: DeviceLike) -> torch.device:
    """``device`` (the model is moved there), or the model's own device for ``None``."""
    if device is None:
        return module_device(model)
    resolved = torch.device(device)
    model.to(resolved)
    return resolved


def concat_signals(parts: list[Tensor]) -> Tensor:
    """Concatenate per-sample parts along dim 0; 2-D parts of different widths are right-padded.

    Token-level signals of batches padded to different lengths line up this way
    (the padding is 0, or ``False`` for a mask).

    Example:
        >>> concat_signals([torch.ones(1, 2), torch.ones(1, 3)]).tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    if len({tuple(p.shape[1:]) for p in parts}) <= 1:
        return torch.cat(parts)
    if any(p.ndim != 2 for p in parts):
        shapes = sorted({tuple(p.shape) for p in parts})
        raise ModeConnError(f"Per-sample signals of shapes {shapes} cannot be concatenated.")
    width = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, width - p.shape[1])) for p in parts])


def run_pass(
    model: Callable[..., Any],
    loader: Iterable[Any],
    *,
    task: Task,
    device: torch.device | None,
    signals: bool = False,
    name: str = "data",
) -> Outputs:
    """One pass of ``model`` (already on ``device``; ``None``: batches stay where they are).

    The caller runs it under :func:`~modeconn_unlearn.modes.evaluating` and
    :func:`torch.no_grad`.

    Per-sample results stay on the device until the end, so there is no
    synchronisation per batch; signals are moved to the CPU batch by batch.
    """
    losses: list[Tensor] = []
    corrects: list[Tensor] = []
    signal_parts: dict[str, list[Tensor]] = {}
    for batch in loader:
        inputs, targets, _ = task.split(batch, device=device)
        if targets is None:
            raise ModeConnError(
                f"{name} must yield (inputs, targets) pairs, UnlearnBatch items or dicts with "
                f"'labels' to be evaluated; got a batch of type {type(batch).__name__} "
                "without labels."
            )
        out = task(model, inputs, targets, signals=signals)
        losses.append(out.loss.detach().double())
        corrects.append(out.correct.detach().double())
        for key, value in out.signals.items():
            signal_parts.setdefault(key, []).append(value.detach().cpu())
    if not losses or sum(len(part) for part in losses) == 0:
        raise ModeConnError(f"{name} is empty; evaluation needs at least one sample.")
    return Outputs(
        loss=torch.cat(losses).cpu(),
        correct=torch.cat(corrects).cpu(),
        signals={key: concat_signals(parts) for key, parts in signal_parts.items()},
    )


def collect_outputs(
    model: Callable[..., Any],
    data: DataLike,
    *,
    task: Task | None = None,
    signals: bool = False,
    device: DeviceLike = None,
    name: str = "data",
) -> Outputs:
    """Per-sample loss, correctness and (optionally) attack signals of ``model`` on ``data``.

    Args:
        model: The model, run as the task calls it; or any function of the inputs that
            returns outputs (e.g. a curve at one ``t``), run as it is.
        data: A DataLoader, or a map-style Dataset (read in batches of 256).
        task: How batches and outputs are read; default
            :class:`~modeconn_unlearn.tasks.ClassificationTask`.
        signals: Also collect the task's attack signals.
        device: Where to run (a model is moved there); default: the model's device
            (a function's batches stay on the device the loader gives).
        name: How error messages call ``data``.

    Returns:
        :class:`Outputs`, in the order of ``data``.

    Raises:
        ModeConnError: Empty data, batches without labels, or outputs of the
            wrong shape for the task.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> data = TensorDataset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> collect_outputs(model, data).correct.tolist()
        [1.0, 0.0]
    """
    chosen = resolve_task(task)
    if isinstance(model, nn.Module):
        target: torch.device | None = resolve_device(model, device)
        modes: Any = evaluating(model)
    else:
        target = None if device is None else torch.device(device)
        modes = nullcontext()
    loader = as_loader(data, name=name, collate_fn=task_collate(chosen))
    with modes, torch.no_grad():
        return run_pass(model, loader, task=chosen, device=target, signals=signals, name=name)
