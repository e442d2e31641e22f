"""Objectives from the language-model unlearning literature; task-generic.

* :func:`gradient_difference`: descent on the retain part, ascent on the forget part.
* :func:`npo`: Negative Preference Optimization, a bounded relative of gradient
  ascent against a reference model (the original).
* :func:`simnpo`: SimNPO, NPO without a reference, on the length-normalised NLL.
* :func:`idk`: descent on both parts, where the forget samples carry refusal
  answers ("I don't know"); the language-model data helpers build them.

``log π(y|x)`` of a sample is minus its **summed** NLL: for
:class:`~modeconn_unlearn.tasks.CausalLMTask` the NLL summed over the answer
tokens (whatever the task's own ``reduction``), for classification the
per-sample cross-entropy, and for a user's task minus its per-sample loss.
Retain terms use the task's own per-sample loss (its ``reduction``).
RMU, which reads a hidden layer's activations instead, is in :mod:`.representation`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import as_float
from ..errors import ModeConnError
from ..tasks import IGNORE_INDEX, Batch, CausalLMTask, SampleOutputs, Task
from .base import Objective, Parts, UnlearnLoss, reference_outputs, select_rows

__all__ = ["gradient_difference", "idk", "npo", "simnpo"]


def _with_reduction(task: Task, reduction: str) -> Task:
    """``task``, or a CausalLMTask with ``reduction`` when it is a CausalLMTask of the other one."""
    if isinstance(task, CausalLMTask) and task.reduction != reduction:
        return CausalLMTask(reduction)  # type: ignore[arg-type]
    return task


def _converted(values: Tensor, targets: Tensor, task: Task, used: Task) -> Tensor:
    """Per-sample losses computed with ``used`` expressed in ``task``'s reduction."""
    if not isinstance(task, CausalLMTask) or not isinstance(used, CausalLMTask):
        return values
    if task.reduction == used.reduction:
        return values
    counts = (targets[:, 1:] != IGNORE_INDEX).sum(dim=1).to(values.device, values.dtype)
    return values / counts if task.reduction == "mean" else values * counts


class _WeightedParts(Objective):
    """``retain_weight * retain loss + sign * forget_weight * forget loss``."""

    def __init__(self, retain_weight: float, forget_weight: float, sign: float, task: Task | None):
        super().__init__(task)
        self.retain_weight, self.forget_weight, self.sign = retain_weight, forget_weight, sign

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        return self.retain_weight * p.retain_mean() + self.sign * self.forget_weight * (
            p.forget_mean()
        )


class _GradientDifference(_WeightedParts):
    def __repr__(self) -> str:
        return f"gradient_difference({self.retain_weight}, {self.forget_weight})"


class _IDK(_WeightedParts):
    def __repr__(self) -> str:
        return f"idk(retain_weight={self.retain_weight})"


class _Preference(Objective):
    """NPO and SimNPO: losses of one reduction, ``retain_weight`` on the task's own retain loss."""

    reduction = "sum"

    def __init__(self, beta: float, retain_weight: float, task: Task | None) -> None:
        super().__init__(task)
        self.beta, self.retain_weight = beta, retain_weight
        self.scored = _with_reduction(self.task, self.reduction)

    def forward(self, model: nn.Module, batch: Batch) -> SampleOutputs:
        assert batch.targets is not None
        return self.scored(model, batch.inputs, batch.targets)

    def retain_term(self, p: Parts) -> Tensor:
        p.stats["beta"] = self.beta
        assert p.batch.targets is not None
        losses = _converted(p.out.loss, p.batch.targets, self.task, self.scored)
        return self.retain_weight * p.retain_mean(losses)


class _NPO(_Preference):
    def __init__(
        self, beta: float, reference: nn.Module | None, retain_weight: float, task: Task | None
    ) -> None:
        super().__init__(beta, retain_weight, task)
        self.reference = reference

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        loss = self.retain_term(p)
        forget, targets = p.is_forget, p.batch.targets
        assert targets is not None
        if not bool(forget.any()):
            return loss + 0.0 * p.out.loss.sum()
        rows = forget.to(targets.device)
        inputs = select_rows(p.batch.inputs, rows)
        ref = reference_outputs(
            model, self.reference, self.scored, inputs, targets[rows], name="npo"
        )
        ratio = self.beta * (ref.loss.to(p.out.loss.device) - p.out.loss[forget])
        return loss + (2.0 / self.beta) * F.softplus(ratio).mean()

    def __repr__(self) -> str:
        ref = "curve start" if self.reference is None else type(self.reference).__name__
        return f"npo(beta={self.beta}, reference={ref}, retain_weight={self.retain_weight})"


class _SimNPO(_Preference):
    reduction = "mean"

    def __init__(self, beta: float, gamma: float, retain_weight: float, task: Task | None):
        super().__init__(beta, retain_weight, task)
        self.gamma = gamma

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        forget_term = -(2.0 / self.beta) * F.logsigmoid(self.beta * p.out.loss - self.gamma)
        return self.retain_term(p) + p.forget_mean(forget_term)

    def __repr__(self) -> str:
        return f"simnpo(beta={self.beta}, gamma={self.gamma}, retain_weight={self.retain_weight})"


def _beta(value: Any) -> float:
    result = as_float(value, "beta")
    if result <= 0.0:
        raise ModeConnError(f"beta must be > 0 (it scales the log-ratio), got {value!r}.")
    return result


def gradient_difference(
    retain_weight: float = 1.0, forget_weight: float = 1.0, *, task: Task | None = None
) -> UnlearnLoss:
    """Gradient difference: ``retain_weight * L(retain) - forget_weight * L(forget)``.

    ``L`` is the mean of the task's per-sample loss over each part.

    Args:
        retain_weight: Weight (>= 0) of the retain term.
        forget_weight: Weight (>= 0) of the (ascended) forget term.
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective.

    Raises:
        ModeConnError: A weight is negative or not finite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> batch = UnlearnBatch(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]),
        ...                      torch.tensor([True, False, False, True]))
        >>> model = nn.Linear(2, 3)
        >>> value = gradient_difference(1.0, 0.5)(model, batch)
        >>> ce = nn.functional.cross_entropy(model(batch.inputs), batch.targets, reduction="none")
        >>> torch.allclose(value, ce[[1, 2]].mean() - 0.5 * ce[[0, 3]].mean())
        True
    """
    return _GradientDifference(
        as_float(retain_weight, "retain_weight", nonnegative=True),
        as_float(forget_weight, "forget_weight", nonnegative=True),
        -1.0,
        task,
    )


def npo(
    beta: float = 0.1,
    *,
    reference: nn.Module | None = None,
    retain_weight: float = 0.0,
    task: Task | None = None,
) -> UnlearnLoss:
    """Negative Preference Optimization (Zhang et al., 2024).

    ``L = (2/β) · mean_forget softplus(β · (log π_θ(y|x) - log π_ref(y|x)))
    + retain_weight · L(retain)``, with ``log π = -(summed NLL)`` of a sample.
    Its gradient is that of gradient ascent weighted by
    ``2 π_θ^β / (π_θ^β + π_ref^β)``, which vanishes as the forget samples are
    unlearned, so it does not diverge like gradient ascent.

    Args:
        beta: Inverse temperature ``β > 0``.
        reference: The reference model π_ref (the original, held fixed; it is
            run in eval mode without gradients). May be omitted when the model
            being trained is a :class:`~modeconn_unlearn.curve.CurveModel`:
            the curve's start ``curve(x, t=0.0)`` is the original, so no second
            copy is held (that pass runs after the training pass, so the
            curve's ``last_t`` reads 0.0 after a call).
        retain_weight: Weight (>= 0) of the retain loss (0: forget term only;
            use e.g. 1.0 for "NPO + retain loss").
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective; ``last_stats["beta"]`` records ``β``.

    Raises:
        ModeConnError: ``beta <= 0`` or a negative weight; on a call, no
            reference and the model is not a curve.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> model = nn.Linear(2, 3)
        >>> batch = UnlearnBatch(torch.randn(2, 2), torch.tensor([0, 1]),
        ...                      torch.tensor([True, True]))
        >>> value = npo(0.5, reference=model)(model, batch)  # π_θ = π_ref: (2/β)·log 2
        >>> round(value.item(), 4) == round(4 * float(torch.log(torch.tensor(2.0))), 4)
        True
    """
    if reference is not None and not isinstance(reference, nn.Module):
        raise ModeConnError(
            f"reference must be an nn.Module (the original model), got {type(reference).__name__}."
        )
    return _NPO(
        _beta(beta), reference, as_float(retain_weight, "retain_weight", nonnegative=True), task
    )


def simnpo(
    beta: float = 2.5,
    gamma: float = 0.0,
    *,
    retain_weight: float = 0.0,
    task: Task | None = None,
) -> UnlearnLoss:
    """SimNPO (Fan et al., 2024): NPO without a reference, on the length-normalised NLL.

    ``L = -(2/β) · mean_forget logsigmoid(-(β/|y|) · log π_θ(y|x) - gamma)
    + retain_weight · L(retain)``, i.e. ``-(2/β) logsigmoid(β · meanNLL - gamma)``
    per forget sample, where meanNLL is the NLL per answer token (for
    classification ``|y| = 1``: the cross-entropy).

    Args:
        beta: Inverse temperature ``β > 0``.
        gamma: Reward margin ``gamma`` (finite).
        retain_weight: Weight (>= 0) of the retain loss.
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective; ``last_stats["beta"]`` records ``β``.

    Raises:
        ModeConnError: ``beta <= 0``, ``gamma`` not finite, or a negative weight.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> model = nn.Linear(2, 3)
        >>> batch = UnlearnBatch(torch.randn(3, 2), torch.tensor([0, 1, 2]),
        ...                      torch.tensor([True, False, True]))
        >>> value = simnpo(2.0, 0.5)(model, batch)
        >>> ce = nn.functional.cross_entropy(model(batch.inputs), batch.targets, reduction="none")
        >>> expected = -(2 / 2.0) * nn.functional.logsigmoid(2.0 * ce[[0, 2]] - 0.5).mean()
        >>> torch.allclose(value, expected)
        True
    """
    return _SimNPO(
        _beta(beta),
        as_float(gamma, "gamma"),
        as_float(retain_weight, "retain_weight", nonnegative=True),
        task,
    )


def idk(*, retain_weight: float = 1.0, task: Task | None = None) -> UnlearnLoss:
    """IDK fine-tuning: descent on both parts, ``L(forget) + retain_weight · L(retain)``.

    The forget samples carry refusal answers ("I don't know") in place of the
    true ones (see the language-model data helpers' ``refusal_dataset``), so
    descending on them teaches the model to refuse; the retain samples keep
    their answers.

    Args:
        retain_weight: Weight (>= 0) of the retain loss.
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective.

    Raises:
        ModeConnError: A negative weight.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> model = nn.Linear(2, 3)
        >>> batch = UnlearnBatch(torch.randn(2, 2), torch.tensor([0, 1]),
        ...                      torch.tensor([True, False]))
        >>> ce = nn.functional.cross_entropy(model(batch.inputs), batch.targets, reduction="none")
        >>> torch.allclose(idk()(model, batch), ce.sum())
        True
    """
    return _IDK(as_float(retain_weight, "retain_weight", nonnegative=True), 1.0, 1.0, task)
