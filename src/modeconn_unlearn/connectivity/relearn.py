"""Relearning attacks: how fast forgotten knowledge comes back under a few fine-tuning steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Subset
from typing_extensions import Unpack

from ..checks import as_float, positive_int
from ..cloning import clone_module
from ..curve import CurveModel, path_points
from ..data import as_loader, seeded_order, stack_collate
from ..errors import ModeConnError
from ..evaluation.bn import bn_data
from ..evaluation.options import PATH_OPTIONS, PathOptions, path_settings
from ..evaluation.outputs import DataLike, DeviceLike
from ..evaluation.paths import check_curve, walk_path
from ..evaluation.scores import evaluate
from ..losses import finetune
from ..tasks import Task, resolve_task, task_collate
from ..training import TrainConfig, unlearn
from .results import RelearnPathResult, RelearnResult

__all__ = ["relearn_attack", "relearn_path"]


class _FrozenModes(nn.Module):
    """Keeps the wrapped model in eval mode while the training loop calls ``train()``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _FrozenModes:
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def _relearn(
    model: nn.Module,
    finetune_loader: DataLoader[Any],
    eval_loader: DataLoader[Any],
    *,
    steps: int,
    lr: float,
    momentum: float,
    task: Task,
    device: DeviceLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine-tune a copy with :func:`~modeconn_unlearn.training.unlearn` and score every step."""
    accuracy, loss = np.empty(steps + 1), np.empty(steps + 1)
    train_loss = np.full(steps + 1, np.nan)

    def record(step: int, module: nn.Module) -> None:
        metrics = evaluate(module, eval_loader, task=task)
        accuracy[step], loss[step] = float(metrics.accuracy), float(metrics.loss)
        if step < steps:  # the loss the next step descends from
            train_loss[step] = evaluate(module, finetune_loader, task=task).loss

    attacked = _FrozenModes(clone_module(model))
    if device is not None:
        attacked.to(device)
    record(0, attacked)
    if steps > 0:
        chosen = finetune_loader.dataset
        config = TrainConfig(
            lr=lr,
            max_steps=steps,
            momentum=momentum,
            weight_decay=0.0,
            batch_size=len(chosen),
            progress=False,
            device=device,
            step_callback=record,
        )
        unlearn(attacked, chosen, None, loss=finetune(task=task), config=config)
    return accuracy, loss, train_loss


_Attack = Callable[[nn.Module], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _prepared(
    forget_data: DataLike,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int,
    eval_data: DataLike | None,
    momentum: float,
    task: Task | None,
    device: DeviceLike,
) -> tuple[_Attack, np.ndarray]:
    """The attack on one model (:func:`_relearn` on the drawn samples) and the samples' indices."""
    positive_int(steps, "steps", minimum=0)
    as_float(lr, "lr", positive=True)
    loader = as_loader(forget_data, name="forget_data")
    dataset = loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    need_rest = eval_data is None
    limit = n - 1 if need_rest else n
    if not 1 <= samples <= limit:
        hint = " (and leave at least one to evaluate on, or pass eval_data)" if need_rest else ""
        raise ModeConnError(
            f"samples must be between 1 and {limit} for a forget set of {n}{hint}, got {samples}."
        )
    order = np.array(seeded_order(n, seed))
    chosen, rest = np.sort(order[:samples]), np.sort(order[samples:])
    own = loader.collate_fn if isinstance(forget_data, DataLoader) else None
    finetune_loader = DataLoader(
        Subset(dataset, chosen.tolist()),
        batch_size=samples,
        collate_fn=own or task_collate(task) or stack_collate,
    )
    held_out = Subset(dataset, rest.tolist()) if need_rest else eval_data
    eval_loader = as_loader(held_out, name="eval_data", collate_fn=task_collate(task))
    attack = partial(
        _relearn,
        finetune_loader=finetune_loader,
        eval_loader=eval_loader,
        steps=steps,
        lr=lr,
        momentum=momentum,
        task=resolve_task(task),
        device=device,
    )
    return attack, chosen


def relearn_attack(
    model: nn.Module,
    forget_data: DataLike,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int = 0,
    eval_data: DataLike | None = None,
    momentum: float = 0.0,
    task: Task | None = None,
    device: DeviceLike = None,
) -> RelearnResult:
    """Fine-tune a copy of ``model`` on a few forget samples; track forget accuracy per step.

    A relearning attack: if unlearning only hid the forgotten knowledge, a handful of
    gradient steps on a few forget samples brings the accuracy on the *other* forget
    samples back fast; a model that never learned them (like the retrained one) relearns
    at the speed of learning new data. ``samples`` forget samples are drawn with ``seed``;
    each step is one full-batch SGD step on them with the task's mean loss
    (cross-entropy for a classifier), run by :func:`~modeconn_unlearn.training.unlearn`
    (``finetune`` on those samples, ``max_steps=steps``, no weight decay). The copy stays in
    eval mode throughout (BatchNorm statistics and dropout frozen): the fine-tuning batch
    holds forget samples only (a single class, for class-wise forgetting), and BatchNorm
    in training mode would subtract that batch's mean, the very signal to relearn; so
    accuracy changes through the weights alone. Without batch normalisation the steps can
    be sharp: if ``train_loss`` grows, lower ``lr``. The input model is never modified.

    Args:
        model: The (unlearned) model.
        forget_data: The forget set (DataLoader or Dataset; its items start ``(x, y)``).
        steps: Number of fine-tuning steps.
        lr: SGD learning rate.
        samples: Number of forget samples to fine-tune on.
        seed: Seed for the choice of samples.
        eval_data: Where to measure accuracy; default: the forget samples that were not
            fine-tuned on (so accuracy measures recovered knowledge, not memorisation).
        momentum: SGD momentum.
        task: How batches are read and scored (default: classification).
        device: Where to fine-tune; ``None`` keeps the model's device.

    Returns:
        A :class:`RelearnResult` with accuracy after 0, 1, ..., ``steps`` steps.

    Raises:
        ModeConnError: Bad ``steps``, ``lr`` or ``samples``, or empty data.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> forget = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> result = relearn_attack(torch.nn.Linear(4, 3), forget, steps=5, lr=0.1, samples=8)
        >>> result.accuracy.shape, len(result.samples)
        ((6,), 8)
    """
    attack, chosen = _prepared(
        forget_data,
        steps=steps,
        lr=lr,
        samples=samples,
        seed=seed,
        eval_data=eval_data,
        momentum=momentum,
        task=task,
        device=device,
    )
    accuracy, loss, train_loss = attack(model)
    return RelearnResult(
        steps=np.arange(steps + 1),
        accuracy=accuracy,
        loss=loss,
        train_loss=train_loss,
        samples=chosen,
    )


def relearn_path(
    curve: CurveModel,
    ts: int | Sequence[float] | np.ndarray,
    forget_data: DataLike,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int = 0,
    eval_data: DataLike | None = None,
    momentum: float = 0.0,
    **options: Unpack[PathOptions],
) -> RelearnPathResult:
    """:func:`relearn_attack` on the model at each ``t`` of a curve, with the same samples.

    At each t the weights are exported as a plain model (BatchNorm statistics
    re-estimated on ``bn_loader``, required when the model has BatchNorm) and attacked as
    in :func:`relearn_attack`. The curve is not modified.

    Args:
        curve: A :class:`CurveModel`.
        ts: Number of evenly spaced t in [0, 1], or the t values.
        forget_data: The forget set.
        steps: Number of fine-tuning steps.
        lr: SGD learning rate.
        samples: Number of forget samples to fine-tune on.
        seed: Seed for the choice of samples (and of the BatchNorm subset, ``bn_samples``).
        eval_data: Where to measure accuracy; default: the other forget samples.
        momentum: SGD momentum.
        **options: The path options (:class:`~modeconn_unlearn.evaluation.PathOptions`) but
            ``ts``, given above: ``bn_loader`` (use retain data; required when the model has
            BatchNorm), ``bn_samples``, ``task``, ``device`` (where to fine-tune),
            ``progress``.

    Returns:
        A :class:`RelearnPathResult`.

    Raises:
        ModeConnError: As :func:`relearn_attack`, BatchNorm without ``bn_loader``, or an
            unknown keyword.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> forget = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> curve = CurveModel(torch.nn.Linear(4, 3), end=torch.nn.Linear(4, 3))
        >>> result = relearn_path(curve, 3, forget, steps=2, lr=0.1, samples=8,
        ...                       progress=False)
        >>> result.accuracy.shape
        (3, 3)
    """
    curve = check_curve(curve)
    settings = path_settings(
        options, caller="relearn_path", allowed=[name for name in PATH_OPTIONS if name != "ts"]
    )
    t_values = path_points(ts)
    bn = bn_data(
        curve.template, bn_loader=settings.bn_loader, bn_samples=settings.bn_samples, seed=seed
    ).loader
    attack, chosen = _prepared(
        forget_data,
        steps=steps,
        lr=lr,
        samples=samples,
        seed=seed,
        eval_data=eval_data,
        momentum=momentum,
        task=settings.task,
        device=settings.device,
    )
    accuracy = np.empty((len(t_values), steps + 1))
    loss = np.empty((len(t_values), steps + 1))
    walk = walk_path(curve, t_values, bn_loader=bn, progress=settings.progress, desc="relearn")
    for i, (_, model) in enumerate(walk):
        accuracy[i], loss[i], _ = attack(model)
    return RelearnPathResult(
        t=t_values, steps=np.arange(steps + 1), accuracy=accuracy, loss=loss, samples=chosen
    )
