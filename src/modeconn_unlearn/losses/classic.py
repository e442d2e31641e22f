"""Classic unlearning objectives: GA, FT, NegGrad+, random labels and the MCU objective.

Each built-in runs **one** forward pass on the whole batch through its task
(so a curve draws one ``t`` per batch) and splits the per-sample losses by
``batch.is_forget``. The term of a part is the mean over that part; a part
absent from the batch contributes exactly 0 (never NaN). After each call they
record ``last_stats`` (accuracies ``100 * mean(correct)`` in percent, the part
sizes, the ``beta`` used), which the training loop logs, and declare in
``needs`` which parts of the data they use, so that
:func:`~modeconn_unlearn.training.unlearn` feeds gradient ascent only forget
samples and fine-tuning only retain samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import as_float, check_percentages, positive_int
from ..errors import ModeConnError
from ..tasks import Batch, ClassificationTask, SampleOutputs, Task
from .base import Objective, Parts, UnlearnLoss

__all__ = [
    "AdaptiveBeta",
    "finetune",
    "gradient_ascent",
    "mcu_objective",
    "neggrad_plus",
    "random_label",
]

BetaRule = Callable[[float | None, float | None], float]


class _GradientAscent(Objective):
    needs = ("forget",)

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        return -p.forget_mean()

    def __repr__(self) -> str:
        return "gradient_ascent()"


class _Finetune(Objective):
    needs = ("retain",)

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        return p.retain_mean()

    def __repr__(self) -> str:
        return "finetune()"


class _NegGradPlus(Objective):
    def __init__(self, beta: float, task: Task | None) -> None:
        super().__init__(task)
        self.beta = beta

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        p.stats["beta"] = self.beta
        return self.beta * p.retain_mean() - (1.0 - self.beta) * p.forget_mean()

    def __repr__(self) -> str:
        return f"neggrad_plus({self.beta})"


class _Captured:
    """Calls a model and keeps its raw output (so a loss can reuse the one forward pass)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.output: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.output = self.model(*args, **kwargs)
        return self.output


class _RandomLabel(Objective):
    def __init__(self, num_classes: int, task: Task | None) -> None:
        super().__init__(task)
        if not isinstance(self.task, ClassificationTask):
            raise ModeConnError(
                f"random_label relabels classes and works with ClassificationTask only, got "
                f"{self.task!r}; for language models use gradient_difference, npo, simnpo or idk."
            )
        self.num_classes = num_classes
        self._logits: Tensor | None = None

    def forward(self, model: nn.Module, batch: Batch) -> SampleOutputs:
        targets = batch.targets
        assert targets is not None
        c = self.num_classes
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
            raise ModeConnError(
                f"targets must lie in [0, {c}); got values in "
                f"[{int(targets.min())}, {int(targets.max())}]."
            )
        captured = _Captured(model)
        out = self.task(captured, batch.inputs, targets)  # type: ignore[arg-type]
        logits = captured.output
        logits = getattr(logits, "logits", logits)
        if logits.shape[-1] != c:
            raise ModeConnError(
                f"random_label(num_classes={c}) got logits with {logits.shape[-1]} classes; "
                "pass the model's number of classes."
            )
        self._logits = logits
        return out

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        logits, self._logits = self._logits, None
        assert logits is not None and p.batch.targets is not None
        c = self.num_classes
        targets = p.batch.targets.to(logits.device)
        # A uniform offset in 1..c-1 gives a label uniform over the c-1 wrong classes.
        offset = torch.randint(1, c, targets.shape, device=targets.device)
        relabelled = torch.where(p.is_forget, (targets + offset) % c, targets)
        return F.cross_entropy(logits, relabelled)

    def __repr__(self) -> str:
        return f"random_label({self.num_classes})"


class _MCUObjective(Objective):
    def __init__(
        self, beta: float | BetaRule, forget_loss: float | None, task: Task | None
    ) -> None:
        super().__init__(task)
        self.beta = beta
        self.forget_loss = forget_loss

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        rule = self.beta
        beta = float(rule(p.retain_acc, p.forget_acc)) if callable(rule) else rule
        p.stats["beta"] = beta
        if self.forget_loss is None:
            return p.retain_mean() - beta * p.forget_mean()
        if p.forget_acc is None:  # no forget sample: the matching term is absent, not a constant
            return p.retain_mean()
        return p.retain_mean() + beta * (p.forget_mean() - self.forget_loss).abs()

    def __repr__(self) -> str:
        if self.forget_loss is None:
            return f"mcu_objective({self.beta!r})"
        return f"mcu_objective({self.beta!r}, forget_loss={self.forget_loss!r})"


def gradient_ascent(*, task: Task | None = None) -> UnlearnLoss:
    """Gradient ascent (GA): ``-CE(forget part)``; retain samples are ignored.

    Its ``needs`` is ``("forget",)``: :func:`~modeconn_unlearn.training.unlearn`
    trains it on the forget set only.

    Args:
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> model = nn.Linear(2, 3)
        >>> batch = UnlearnBatch(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]),
        ...                      torch.tensor([True, True, False, False]))
        >>> loss = gradient_ascent()
        >>> bool(loss(model, batch) < 0), loss.last_stats["n_forget"]
        (True, 2.0)
    """
    return _GradientAscent(task)


def finetune(*, task: Task | None = None) -> UnlearnLoss:
    """Fine-tuning (FT): ``CE(retain part)``; forget samples are ignored.

    Run from a fresh initialisation it is retraining, the unlearning gold
    standard (see :func:`~modeconn_unlearn.training.retrain`). Its ``needs`` is
    ``("retain",)``.

    Args:
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> batch = UnlearnBatch(torch.randn(3, 2), torch.tensor([0, 1, 2]),
        ...                      torch.tensor([False, False, True]))
        >>> finetune()(nn.Linear(2, 3), batch).item() > 0
        True
    """
    return _Finetune(task)


def neggrad_plus(beta: float, *, task: Task | None = None) -> UnlearnLoss:
    """NegGrad+: ``beta * CE(retain part) - (1 - beta) * CE(forget part)``.

    Args:
        beta: Weight in [0, 1] of the retain term (``1 - beta`` weighs the forget term).
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective; ``last_stats["beta"]`` records ``beta``.

    Raises:
        ModeConnError: If ``beta`` is outside [0, 1].

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> batch = UnlearnBatch(torch.randn(2, 2), torch.tensor([0, 1]),
        ...                      torch.tensor([False, True]))
        >>> loss = neggrad_plus(0.9)
        >>> _ = loss(nn.Linear(2, 3), batch)
        >>> loss.last_stats["beta"]
        0.9
    """
    value = as_float(beta, "beta")
    if not 0.0 <= value <= 1.0:
        raise ModeConnError(
            f"neggrad_plus beta weighs the retain term and must lie in [0, 1], got {beta!r}."
        )
    return _NegGradPlus(value, task)


def random_label(num_classes: int, *, task: Task | None = None) -> UnlearnLoss:
    """Random labels (RL): CE with each forget label replaced by a random *wrong* label.

    Each forget sample gets a label drawn uniformly from the ``num_classes - 1``
    classes other than its own (from the global torch RNG, which the training
    loop seeds); retain samples keep their label. The loss is the mean
    cross-entropy over the whole batch. With :func:`~modeconn_unlearn.masks.saliency_mask`
    this is SalUn.

    Args:
        num_classes: Number of classes of the model's output (at least 2).
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective.

    Raises:
        ModeConnError: If ``num_classes < 2`` or ``task`` is not a
            :class:`~modeconn_unlearn.tasks.ClassificationTask`; on a call, if the
            logits or targets do not match ``num_classes``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> batch = UnlearnBatch(torch.randn(2, 2), torch.tensor([0, 1]),
        ...                      torch.tensor([False, True]))
        >>> random_label(3)(nn.Linear(2, 3), batch).item() > 0
        True
    """
    positive_int(num_classes, "num_classes", minimum=2)
    return _RandomLabel(num_classes, task)


@dataclass(frozen=True)
class AdaptiveBeta:
    """Per-batch ``beta`` of the MCU objective from the alignment principle.

    With batch accuracies ``r`` (retain) and ``f`` (forget) in percent and the
    targets ``R`` and ``F`` (e.g. the accuracies of a model retrained without
    the forget set), the relative excesses are ``(f - F) / F`` and
    ``(r - R) / R``, and

    * ``f <= F`` (forgetting reached, or no forget sample in the batch): ``beta = 0``;
    * else, relative forget excess < relative retain excess: ``beta = low``;
    * else: ``beta = high``.

    A target of 0 (class-wise forgetting: ``F = 0``) makes the relative excess
    of any positive accuracy infinite, without dividing by zero; so a forget
    accuracy above 0 always gets ``high``. A batch without retain samples
    counts as retain on target (excess 0).

    Args:
        retain_target: Target retain accuracy ``R`` in [0, 100].
        forget_target: Target forget accuracy ``F`` in [0, 100].
        low: ``beta`` when forgetting is closer to its target than retention.
        high: ``beta`` otherwise.

    Raises:
        ModeConnError: If a target is outside [0, 100], both targets look like
            fractions (both <= 1 and one > 0: ``AdaptiveBeta(0.99, 0.92)`` means
            ``AdaptiveBeta(99.0, 92.0)``), or ``low``/``high`` is negative or not finite.

    Example:
        >>> rule = AdaptiveBeta(retain_target=99.0, forget_target=92.0)
        >>> rule(99.5, 90.0), rule(99.5, 92.1), rule(98.0, 95.0)
        (0.0, 0.01, 0.5)
    """

    retain_target: float
    forget_target: float
    low: float = 0.01
    high: float = 0.5

    def __post_init__(self) -> None:
        for name in ("retain_target", "forget_target"):
            value = as_float(getattr(self, name), name)
            if not 0.0 <= value <= 100.0:
                raise ModeConnError(f"{name} is an accuracy in percent in [0, 100], got {value}.")
        check_percentages(
            {"retain_target": self.retain_target, "forget_target": self.forget_target}
        )
        for name in ("low", "high"):
            as_float(getattr(self, name), name, nonnegative=True)

    @staticmethod
    def _relative_excess(acc: float, target: float) -> float:
        if target > 0.0:
            return (acc - target) / target
        if acc > 0.0:
            return math.inf
        return 0.0

    def __call__(self, retain_acc: float | None, forget_acc: float | None) -> float:
        """Return ``beta`` for one batch (``None`` marks a part absent from the batch).

        Args:
            retain_acc: Retain accuracy of the batch in percent, or ``None``.
            forget_acc: Forget accuracy of the batch in percent, or ``None``.

        Returns:
            ``0.0``, ``low`` or ``high``.
        """
        if forget_acc is None or forget_acc <= self.forget_target:
            return 0.0
        forget_excess = self._relative_excess(forget_acc, self.forget_target)
        retain_excess = (
            0.0 if retain_acc is None else self._relative_excess(retain_acc, self.retain_target)
        )
        return float(self.low if forget_excess < retain_excess else self.high)


def mcu_objective(
    beta: float | BetaRule, *, forget_loss: float | None = None, task: Task | None = None
) -> UnlearnLoss:
    """The MCU objective ``CE(retain part) - beta * CE(forget part)``, or its matching form.

    The first form rewards forgetting without bound: the forget loss it pushes
    up has no ceiling, so a curve trained with a large ``beta`` becomes
    confidently wrong on the forget set, which a membership-inference attack
    sees. With ``forget_loss=τ`` (the mean loss a model has on data it never
    saw, e.g. the original's on a held-out split, :attr:`Targets.forget_loss
    <modeconn_unlearn.recipe.Targets.forget_loss>`) the objective is
    ``CE(retain part) + beta * |CE(forget part) - τ|``: the forget loss is
    pulled *to* the held-out level, from below and from above, which is how a
    retrained model treats the forget set. A batch without forget samples
    then contributes its retain term only.

    Args:
        beta: A constant ``beta >= 0``, or a per-batch rule
            ``beta(retain_acc, forget_acc) -> float`` such as :class:`AdaptiveBeta`
            (accuracies of the current batch in percent, ``None`` for an absent part).
        forget_loss: The target mean forget loss ``τ >= 0`` (same unit as the
            task's per-sample loss; nats for cross-entropy), or ``None`` for
            the unbounded form.
        task: Reads batches and gives per-sample losses (default: classification).

    Returns:
        The objective; ``last_stats["beta"]`` records the ``beta`` used on the last batch.

    Raises:
        ModeConnError: If a constant ``beta`` or ``forget_loss`` is negative or not finite.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> batch = UnlearnBatch(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]),
        ...                      torch.tensor([True, False, False, False]))
        >>> loss = mcu_objective(AdaptiveBeta(retain_target=99.0, forget_target=0.0))
        >>> _ = loss(nn.Linear(2, 3), batch)
        >>> loss.last_stats["beta"] in (0.0, 0.5)
        True
    """
    target = None if forget_loss is None else as_float(forget_loss, "forget_loss", nonnegative=True)
    if callable(beta):
        return _MCUObjective(beta, target, task)
    value = as_float(beta, "beta")
    if value < 0.0:
        raise ModeConnError(f"beta must be >= 0 (it weighs the forget term), got {beta!r}.")
    return _MCUObjective(value, target, task)
