"""Population attacks that threshold a per-sample signal, and ROC summaries of member scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from ..errors import ModeConnError
from ..evaluation.features import check_signals, member_signal
from ..evaluation.outputs import DataLike, DeviceLike, collect_outputs
from ..tasks import Task

__all__ = ["RocMetrics", "ThresholdAttack", "roc_metrics", "threshold_attack"]


@dataclass(frozen=True)
class RocMetrics:
    """ROC summary of a member score.

    Attributes:
        auc: Area under the ROC curve (0.5 = chance).
        tpr_at_fpr: ``{fpr: highest TPR with FPR <= fpr}``.
    """

    auc: float
    tpr_at_fpr: dict[float, float]


def _check_fprs(fprs: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fprs)
    if any(not 0.0 <= f <= 1.0 for f in values):
        raise ModeConnError(f"fprs must lie in [0, 1], got {list(values)}.")
    return values


def roc_metrics(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
) -> RocMetrics:
    """ROC AUC and TPR at low FPR of scores where higher means "member".

    Uses :func:`sklearn.metrics.roc_auc_score` and
    :func:`sklearn.metrics.roc_curve`; the TPR at a given FPR is the highest
    TPR of any threshold whose FPR does not exceed it.

    Example:
        >>> result = roc_metrics([0.9, 0.8, 0.3], [0.1, 0.4, 0.2], fprs=(0.0,))
        >>> round(result.auc, 4), result.tpr_at_fpr
        (0.8889, {0.0: 0.6666666666666666})
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if len(members) == 0 or len(nonmembers) == 0:
        raise ModeConnError(
            f"ROC needs both members and non-members, got {len(members)} members and "
            f"{len(nonmembers)} non-members."
        )
    scores = np.concatenate([members, nonmembers])
    if not np.all(np.isfinite(scores)):
        raise ModeConnError("Member scores contain NaN or infinite values.")
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    return RocMetrics(
        auc=float(roc_auc_score(truth, scores)),
        tpr_at_fpr={f: float(tpr[fpr <= f].max()) for f in _check_fprs(fprs)},
    )


@dataclass(frozen=True)
class ThresholdAttack:
    """A threshold attack on one signal.

    Attributes:
        signal: ``"loss"``, ``"confidence"``, ``"entropy"`` or ``"m_entropy"``.
        auc: ROC AUC of members vs non-members (the attack's strength).
        tpr_at_fpr: TPR at each low FPR, members vs non-members.
        threshold: Member score threshold maximising TPR - FPR; on the member
            score scale (``-loss``, ``confidence``, ``-entropy``, ``-m_entropy``).
        target_auc: ROC AUC of the targets (as members) vs non-members; 0.5
            means the targets look like unseen data.
        target_tpr_at_fpr: TPR of the targets at each low FPR.
        target_member_rate: Fraction of targets at or above ``threshold``.
    """

    signal: str
    auc: float
    tpr_at_fpr: dict[float, float]
    threshold: float
    target_auc: float | None = None
    target_tpr_at_fpr: dict[float, float] | None = None
    target_member_rate: float | None = None


def threshold_attack(
    model: nn.Module,
    *,
    member: DataLike,
    nonmember: DataLike,
    target: DataLike | None = None,
    signals: Sequence[str] = ("loss", "confidence", "entropy"),
    fprs: Sequence[float] = (0.01, 0.001),
    task: Task | None = None,
    device: DeviceLike = None,
) -> dict[str, ThresholdAttack]:
    """Population attacks that threshold a per-sample signal.

    Calibrated on ``member`` (e.g. a retain subset) vs ``nonmember`` (the
    test set); with ``target`` (the forget set) also evaluated on it: the
    targets' AUC and TPR against the non-members and the fraction above the
    calibrated threshold.

    Args:
        model: The model under attack.
        member: Data the model trained on.
        nonmember: Data it never saw.
        target: Data whose membership is in question (e.g. the forget set).
        signals: Which of ``"loss"``, ``"confidence"``, ``"entropy"``,
            ``"m_entropy"``. With a task that gives no class logits (e.g.
            :class:`~modeconn_unlearn.tasks.CausalLMTask`) only ``"loss"``
            applies: the task's per-sample loss (the answer NLL).
        fprs: The low false-positive rates to report TPR at.
        task: How outputs are read (default: classification).
        device: Where to run the model.

    Returns:
        ``{signal: ThresholdAttack}``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
        >>> result = threshold_attack(nn.Linear(4, 2), member=data, nonmember=data)
        >>> round(result["loss"].auc, 6)
        0.5
    """
    chosen = check_signals(signals)
    levels = _check_fprs(fprs)
    outputs = {
        name: collect_outputs(model, data, task=task, signals=True, device=device, name=name)
        for name, data in (("member", member), ("nonmember", nonmember), ("target", target))
        if data is not None
    }
    results = {}
    for signal in chosen:
        members = member_signal(outputs["member"], signal)
        nonmembers = member_signal(outputs["nonmember"], signal)
        calibration = roc_metrics(members, nonmembers, fprs=levels)
        truth = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
        fpr, tpr, thresholds = roc_curve(truth, np.concatenate([members, nonmembers]))
        threshold = float(thresholds[int(np.argmax(tpr - fpr))])
        extra: dict[str, Any] = {}
        if "target" in outputs:
            targets = member_signal(outputs["target"], signal)
            on_target = roc_metrics(targets, nonmembers, fprs=levels)
            extra = {
                "target_auc": on_target.auc,
                "target_tpr_at_fpr": on_target.tpr_at_fpr,
                "target_member_rate": float(np.mean(targets >= threshold)),
            }
        results[signal] = ThresholdAttack(
            signal=signal,
            auc=calibration.auc,
            tpr_at_fpr=calibration.tpr_at_fpr,
            threshold=threshold,
            **extra,
        )
    return results
