"""The objective protocol and the machinery the built-in objectives share.

A built-in objective reads the batch with its task's ``split`` (the one batch
interpreter), runs **one** forward pass through ``task(model, inputs,
targets)`` and combines the per-sample losses: a part's term is the mean over
that part's samples, exactly 0 (never NaN) when the batch has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..curve import CurveModel
from ..data import UnlearnBatch, move_to_device
from ..errors import ModeConnError
from ..modes import evaluating
from ..tasks import Batch, SampleOutputs, Task, cast_inputs, resolve_task
from ..wrappers import module_device, unwrap

__all__ = [
    "Objective",
    "Parts",
    "UnlearnLoss",
    "reference_outputs",
    "select_rows",
]


@runtime_checkable
class UnlearnLoss(Protocol):
    """The objective protocol: ``loss(model, batch) -> Tensor`` (a scalar to minimise).

    Optional attributes read by the training loop: ``last_stats``
    (``dict[str, float]`` logged per epoch), ``needs`` (a tuple naming the
    parts ``"retain"``/``"forget"`` the objective uses; both by default) and
    ``task`` (the task that reads its batches).

    Example:
        >>> import torch.nn.functional as F
        >>> def my_loss(model, batch):
        ...     return F.cross_entropy(model(batch.inputs), batch.targets)
        >>> isinstance(my_loss, UnlearnLoss)
        True
    """

    def __call__(self, model: nn.Module, batch: UnlearnBatch) -> Tensor:
        """Return the scalar loss of ``model`` on ``batch``."""
        ...


def reference_outputs(
    model: nn.Module,
    reference: nn.Module | None,
    task: Task,
    inputs: Any,
    targets: Tensor,
    *,
    name: str,
) -> SampleOutputs:
    """The task's results of the reference model, in eval mode and without gradients.

    The reference is ``reference`` (the original, held fixed; the batch moves to
    its device) or, when ``None`` and ``model`` is a
    :class:`~modeconn_unlearn.curve.CurveModel`, the curve's own start
    ``curve(x, t=0.0)``, so no second copy of the original is held. Each
    submodule's own train/eval mode is restored afterwards.

    Raises:
        ModeConnError: ``reference`` is ``None`` and ``model`` is not a curve;
            the message names the objective ``name``.

    Example:
        >>> import torch
        >>> from modeconn_unlearn.tasks import resolve_task
        >>> original = nn.Linear(2, 3)
        >>> out = reference_outputs(original, original, resolve_task(None), torch.zeros(1, 2),
        ...                         torch.tensor([0]), name="npo")
        >>> out.loss.requires_grad, original.training
        (False, True)
    """
    curve = unwrap(model)
    runner: Any
    owner: nn.Module
    if reference is not None:
        owner = runner = reference
        device = module_device(reference)
        inputs, targets = move_to_device(inputs, device), targets.to(device)
    elif isinstance(curve, CurveModel):
        owner = curve

        def runner(*args: Any, **kwargs: Any) -> Any:
            return curve(*args, t=0.0, **kwargs)
    else:
        raise ModeConnError(
            f"{name} needs reference= (the original model, held fixed) unless it trains a "
            f"CurveModel, whose start is the reference; got a {type(curve).__name__} and "
            f"reference=None. Pass {name}(..., reference=original_model)."
        )
    with evaluating(owner), torch.no_grad():
        return task(runner, inputs, targets)


def select_rows(inputs: Any, select: Tensor) -> Any:
    """The rows ``select`` of a batch's inputs (a tensor or a dict of per-sample tensors).

    Example:
        >>> import torch
        >>> select_rows({"ids": torch.arange(4)}, torch.tensor([True, False, True, False]))
        {'ids': tensor([0, 2])}
    """
    if isinstance(inputs, Tensor):
        return inputs[select.to(inputs.device)]
    if isinstance(inputs, Mapping):
        return {k: select_rows(v, select) for k, v in inputs.items()}
    return inputs


def _part_mean(values: Tensor, select: Tensor) -> Tensor:
    """Mean of ``values`` over the selected rows; exactly 0 (still differentiable) if none."""
    return values[select].sum() / select.sum().clamp(min=1)


def _part_acc(correct: Tensor, select: Tensor) -> float | None:
    count = int(select.sum())
    if count == 0:
        return None
    return 100.0 * float(correct[select].sum()) / count


@dataclass
class Parts:
    """One batch's per-sample results split into retain and forget parts.

    Attributes:
        batch: The batch as the task read it (inputs, targets, is_forget).
        out: The task's per-sample results of the one forward pass.
        is_forget: ``(N,)`` bool on the device of ``out.loss``.
        retain_acc: ``100 * mean(correct)`` over the retain samples (``None`` if none).
        forget_acc: Same over the forget samples.
        stats: What the objective records in ``last_stats``.
    """

    batch: Batch
    out: SampleOutputs
    is_forget: Tensor
    retain_acc: float | None
    forget_acc: float | None
    stats: dict[str, float]

    def retain_mean(self, values: Tensor | None = None) -> Tensor:
        """Mean of ``values`` (default: the per-sample loss) over the retain samples."""
        return _part_mean(self.out.loss if values is None else values, ~self.is_forget)

    def forget_mean(self, values: Tensor | None = None) -> Tensor:
        """Mean of ``values`` (default: the per-sample loss) over the forget samples."""
        return _part_mean(self.out.loss if values is None else values, self.is_forget)


class Objective:
    """Base of the built-in objectives: read, one forward pass, split, record stats.

    Subclasses implement :meth:`combine`; :meth:`forward` may be overridden to
    run the forward differently (one pass still).
    """

    needs: tuple[str, ...] = ("retain", "forget")

    def __init__(self, task: Task | None = None) -> None:
        self.task = resolve_task(task)
        self.last_stats: dict[str, float] = {}

    def __call__(self, model: nn.Module, batch: UnlearnBatch) -> Tensor:
        """Run the model on ``batch`` and return the objective (records ``last_stats``)."""
        read = self.task.split(batch)
        if read.targets is None or read.is_forget is None:
            raise ModeConnError(
                "unlearning objectives need an UnlearnBatch(inputs, targets, is_forget); got "
                f"{type(batch).__name__} without is_forget flags. Build the loader with "
                "modeconn_unlearn.data.unlearn_loader."
            )
        # Cast here, not only in the task: an objective may run the model through a wrapper.
        read = read._replace(inputs=cast_inputs(model, read.inputs))
        out = self.forward(model, read)
        is_forget = read.is_forget.to(out.loss.device)
        retain = ~is_forget
        retain_acc = _part_acc(out.correct, retain)
        forget_acc = _part_acc(out.correct, is_forget)
        stats: dict[str, float] = {
            "n_retain": float(retain.sum()),
            "n_forget": float(is_forget.sum()),
        }
        if retain_acc is not None:
            stats["retain_acc"] = retain_acc
        if forget_acc is not None:
            stats["forget_acc"] = forget_acc
        loss = self.combine(model, Parts(read, out, is_forget, retain_acc, forget_acc, stats))
        self.last_stats = stats
        return loss

    def forward(self, model: nn.Module, batch: Batch) -> SampleOutputs:
        """The one forward pass: the task's per-sample results."""
        assert batch.targets is not None
        return self.task(model, batch.inputs, batch.targets)

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        """The scalar objective from the parts (implemented by each objective)."""
        raise NotImplementedError
