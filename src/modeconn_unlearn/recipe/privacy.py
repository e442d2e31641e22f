"""The recipe's privacy term: how far an attacker tells the forget set from held-out data.

A model retrained without the forget set has never seen it, nor the held-out
split, so a membership attack's ROC AUC of forget (members) against held-out
(non-members) data is about 0.5 for it. An unlearned point that still knows the
forget set scores above 0.5; one that forgot too hard (confidently wrong on it)
scores below. :func:`privacy_auc` measures that AUC with the task's attack
(Min-K%++ for a causal LM, the per-sample loss for a classifier), and
:func:`privacy_penalty` turns it into the cost the path search adds to the gap:
``100 · weight · |AUC - 0.5|`` percentage points.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..evaluation import DataLike, collect_outputs
from ..evaluation.features import member_signal
from ..lm import attack_scores, lm_outputs
from ..mia import roc_metrics
from ..tasks import Task, resolve_task

__all__ = ["auc_standard_error", "member_scores", "privacy_auc", "privacy_penalty"]

#: Fraction of tokens Min-K%++ averages over (the attack's usual k).
MIN_K = 0.2


def member_scores(
    model: nn.Module,
    data: DataLike,
    *,
    task: Task | None = None,
    device: torch.device | str | None = None,
) -> NDArray[np.float64]:
    """Per-example member scores (higher: more likely trained on) with the task's attack.

    A causal-LM task (``task.name == "causal_lm"``) gets Min-K%++ over the lowest
    20 % of answer tokens; any other task gets the threshold attack's ``"loss"``
    signal (:func:`~modeconn_unlearn.evaluation.features.member_signal`: minus the
    exact per-sample loss).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.eye(2), torch.tensor([0, 1]))
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        >>> scores = member_scores(model, data)  # the first sample is predicted more surely
        >>> bool(scores[0] > scores[1])
        True
    """
    chosen = resolve_task(task)
    if getattr(chosen, "name", None) == "causal_lm":
        outputs = lm_outputs(model, data, task=chosen, device=device)
        return attack_scores(outputs, "min_k_pp", k=MIN_K)
    outputs = collect_outputs(model, data, task=chosen, signals=True, device=device)
    return member_signal(outputs, "loss")


def privacy_auc(
    model: nn.Module,
    forget: DataLike,
    holdout: DataLike,
    *,
    task: Task | None = None,
    device: torch.device | str | None = None,
) -> float:
    """ROC AUC of the task's attack, forget (members) against ``holdout`` (non-members).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> x = torch.eye(4)
        >>> model = nn.Linear(4, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[4.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        >>> forget = TensorDataset(x[:2], torch.tensor([0, 0]))  # confidently right
        >>> holdout = TensorDataset(x[2:], torch.tensor([0, 0]))  # unsure
        >>> privacy_auc(model, forget, holdout)
        1.0
    """
    members = member_scores(model, forget, task=task, device=device)
    nonmembers = member_scores(model, holdout, task=task, device=device)
    return roc_metrics(members, nonmembers, fprs=()).auc


def privacy_penalty(auc: float, weight: float) -> float:
    """The privacy term in percentage points: ``100 · weight · |auc - 0.5|``.

    Example:
        >>> privacy_penalty(0.75, 0.5)
        12.5
    """
    return 100.0 * weight * abs(auc - 0.5)


def auc_standard_error(auc: float, members: int, nonmembers: int) -> float:
    """Hanley and McNeil's (1982) standard error of an ROC AUC from its two sample sizes.

    Example:
        >>> round(auc_standard_error(0.5, 50, 250), 4)
        0.0448
    """
    if members < 1 or nonmembers < 1:
        return 0.0
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    variance = (
        auc * (1.0 - auc) + (members - 1) * (q1 - auc**2) + (nonmembers - 1) * (q2 - auc**2)
    ) / (members * nonmembers)
    return math.sqrt(max(variance, 0.0))
