"""MCU's targets from data the user holds, never from a retrained model.

A user who needs unlearning has the original model θ_o and its training data but
**no retrained model**. :func:`user_targets` gives MCU's targets from what the
user holds: the original's accuracy on retain data, and for the forget set its
accuracy on a held-out split carved from the training data before training
(:func:`carve_holdout`; random forgetting) or 0 (a forgotten class). For
language models the same comes from held-out question-answer data (entities the
original never trained on), scored as answer token accuracy and answer NLL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import as_dataset, seeded_order
from ..errors import ModeConnError
from ..evaluation import DataLike, evaluate
from ..tasks import Task

__all__ = ["Scenario", "Targets", "carve_holdout", "user_targets"]

Scenario = Literal["random", "class"]


@dataclass(frozen=True)
class Targets:
    """MCU's targets, in percent, and where they came from.

    Attributes:
        retain: Target retain accuracy.
        forget: Target forget accuracy.
        scenario: ``"random"`` or ``"class"``.
        source: How each target was obtained (for reports).
        forget_loss: Target mean forget loss: the original's mean loss on the
            held-out split (random forgetting; ``None`` for a class, whose
            retrained loss the user cannot estimate). MCU's matching objective
            pulls the forget loss to it (:func:`~modeconn_unlearn.losses.mcu_objective`).
        counts: Samples each target was measured on (``"retain"``,
            ``"holdout"``); the recipe's keep-θ_u rule reads the targets'
            sampling error from them.
    """

    retain: float
    forget: float
    scenario: str
    source: dict[str, str] = field(default_factory=dict)
    forget_loss: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("retain", "forget"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 100.0):
                raise ModeConnError(f"Targets.{name} is a percentage in [0, 100], got {value!r}.")
        loss = self.forget_loss
        if loss is not None and not (
            isinstance(loss, (int, float)) and math.isfinite(loss) and loss >= 0.0
        ):
            raise ModeConnError(f"Targets.forget_loss must be a mean loss >= 0, got {loss!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


def carve_holdout(
    train: Dataset[Any], *, fraction: float = 0.1, seed: int = 0
) -> tuple[Subset[Any], Subset[Any]]:
    """Split a training set into the data to train on and a held-out validation split.

    Do this **before** training the original model: the holdout is data the
    original never saw, drawn from the training distribution, so the
    original's accuracy on it estimates what a model retrained without a random
    forget set scores on that forget set (:func:`user_targets`). The test split
    stays untouched for reporting.

    Args:
        train: The training set (map-style dataset).
        fraction: Fraction in (0, 1) held out (``round(fraction * len(train))`` samples).
        seed: Seed of the draw.

    Returns:
        ``(train_rest, holdout)``, both :class:`~torch.utils.data.Subset` with ascending indices.

    Raises:
        ModeConnError: A fraction outside (0, 1), a split that leaves a side empty,
            or ``train`` that is not a map-style dataset: a ``DataLoader`` (pass
            ``loader.dataset``) or ``(X, Y)`` tensors (wrap them in a ``TensorDataset``).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(20.0).view(20, 1), torch.zeros(20, dtype=torch.long))
        >>> rest, holdout = carve_holdout(data, fraction=0.25)
        >>> len(rest), len(holdout), set(rest.indices) & set(holdout.indices)
        (15, 5, set())
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ModeConnError(f"fraction must be a number in (0, 1), got {fraction!r}.")
    if not 0.0 < fraction < 1.0:
        raise ModeConnError(
            f"fraction must be in (0, 1), got {fraction}; pass a fraction (0.1), not a percentage."
        )
    if isinstance(train, DataLoader):
        raise ModeConnError(
            "carve_holdout splits a dataset, got a DataLoader; pass its dataset "
            "(carve_holdout(loader.dataset)) and build loaders over the two splits it returns."
        )
    size = len(as_dataset(train, "train"))
    count = round(fraction * size)
    if count == 0 or count == size:
        raise ModeConnError(
            f"Holding out {fraction} of {size} samples leaves one side empty; choose a fraction "
            "that keeps samples on both sides."
        )
    order = seeded_order(size, seed)
    return Subset(train, sorted(order[count:])), Subset(train, sorted(order[:count]))


def user_targets(
    original: nn.Module,
    retain: DataLike,
    holdout: DataLike | None = None,
    *,
    scenario: Scenario = "random",
    device: torch.device | str | None = None,
    task: Task | None = None,
) -> Targets:
    """MCU's targets from the original model and data the user holds.

    * retain target: the original's accuracy on ``retain`` (retraining keeps
      what the retain set teaches);
    * forget target, ``scenario="random"``: the original's accuracy on
      ``holdout``, a validation split carved from the training data before
      training (:func:`carve_holdout`); a model retrained without a random
      forget set treats it like unseen data from the same distribution;
    * forget target, ``scenario="class"``: 0 (a model that never saw a class
      never predicts it);
    * forget loss target (random forgetting): the original's mean loss on
      ``holdout``, with the sample counts behind each target.

    "Accuracy" and "loss" are the task's: top-1 accuracy and cross-entropy by
    default; with :class:`~modeconn_unlearn.tasks.CausalLMTask` the answer token
    accuracy and the mean answer NLL, and ``holdout`` is question-answer data
    about entities the original never trained on (variable-length examples are
    padded).

    Never pass the test split as ``holdout`` (it is for reporting), and never
    a retrained model's numbers: a user does not have them.

    Args:
        original: The original model θ_o (evaluated as it is, in eval mode).
        retain: Retain data (or a fixed subset of it, e.g. the one the path is
            evaluated on).
        holdout: The held-out validation split (needed for ``"random"``;
            ignored for ``"class"``).
        scenario: ``"random"`` or ``"class"`` forgetting.
        device: Where to evaluate.
        task: How batches are read and scored (default: classification).

    Returns:
        :class:`Targets`.

    Raises:
        ModeConnError: An unknown scenario, or ``"random"`` without a holdout.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(30, 4), torch.randint(0, 3, (30,)))
        >>> targets = user_targets(nn.Linear(4, 3), data, scenario="class")
        >>> targets.forget, 0.0 <= targets.retain <= 100.0
        (0.0, True)
    """
    if scenario not in ("random", "class"):
        raise ModeConnError(f'scenario must be "random" or "class", got {scenario!r}.')
    on_retain = evaluate(original, retain, task=task, device=device)
    if scenario == "class":
        return Targets(
            retain=on_retain.accuracy,
            forget=0.0,
            scenario=scenario,
            source={"retain": "original on retain data", "forget": "0 (forgotten class)"},
            counts={"retain": on_retain.count},
        )
    if holdout is None:
        raise ModeConnError(
            "Random forgetting needs holdout=...: a validation split carved from the training "
            "data before training (carve_holdout); the original's accuracy on it is the forget "
            "target. Do not use the test split."
        )
    on_holdout = evaluate(original, holdout, task=task, device=device)
    return Targets(
        retain=on_retain.accuracy,
        forget=on_holdout.accuracy,
        scenario=scenario,
        source={"retain": "original on retain data", "forget": "original on held-out split"},
        forget_loss=on_holdout.loss,
        counts={"retain": on_retain.count, "holdout": on_holdout.count},
    )
