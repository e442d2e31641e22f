"""Scores of single models: accuracy and loss (:func:`evaluate`), and the unlearning scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from typing_extensions import deprecated

from ..batchnorm import has_batchnorm, with_bn_from
from ..data import as_loader
from ..errors import ModeConnError
from ..modes import evaluating
from ..tasks import Task, resolve_task, task_collate
from .efficacy import mia_efficacy
from .outputs import (
    DataLike,
    DeviceLike,
    Metrics,
    collect_outputs,
    resolve_device,
    run_pass,
)

__all__ = ["SCORE_NAMES", "UnlearningScores", "evaluate", "unlearning_scores"]

#: The four unlearning scores, in table order.
SCORE_NAMES = ("ua", "ra", "ta", "mia")


def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    task: Task | None = None,
    device: DeviceLike = None,
) -> Metrics:
    """Accuracy (``100 * mean(correct)``, in %) and mean per-sample loss of ``model`` on ``data``.

    Runs under :func:`torch.no_grad` in eval mode; every submodule gets its
    previous train/eval mode back afterwards.

    Args:
        model: The model; for the default task it returns logits ``(batch, classes)``.
        data: A DataLoader or map-style Dataset yielding ``(inputs, targets)``
            (or ``UnlearnBatch``, or dicts with ``labels``); a Dataset is read in
            batches of 256.
        task: How outputs are scored; default
            :class:`~modeconn_unlearn.tasks.ClassificationTask` (top-1 accuracy,
            cross-entropy). :class:`~modeconn_unlearn.tasks.CausalLMTask` gives
            token accuracy and the answer NLL.
        device: Where to evaluate; the model is moved there. Defaults to the
            device of the model's parameters.

    Returns:
        A :class:`~modeconn_unlearn.evaluation.Metrics` with ``accuracy``, ``loss`` and ``count``.

    Raises:
        ModeConnError: Empty data, batches without labels, or model outputs of
            the wrong shape for the task.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> data = TensorDataset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> evaluate(model, data).accuracy
        50.0
    """
    return collect_outputs(model, data, task=task, device=device).metrics()


@dataclass(frozen=True)
class UnlearningScores:
    """The standard unlearning scores of one model, all in percent.

    Attributes:
        ua: Unlearning accuracy, ``100 - forget accuracy``.
        ra: Retain accuracy.
        ta: Test accuracy.
        mia: MIA-efficacy: the share of forget samples an SVC attack
            (trained on retain members vs test non-members) calls non-members.
        gaps: ``|score - reference score|`` per metric, given a reference.
        avg_gap: The mean of ``gaps`` (the "Avg. Gap"), given a reference.

    Example:
        >>> UnlearningScores(ua=10.0, ra=99.0, ta=90.0, mia=20.0).to_dict()
        {'ua': 10.0, 'ra': 99.0, 'ta': 90.0, 'mia': 20.0}
    """

    ua: float
    ra: float
    ta: float
    mia: float
    gaps: dict[str, float] | None = None
    avg_gap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The scores as a plain dict (JSON-friendly)."""
        result: dict[str, Any] = {name: getattr(self, name) for name in SCORE_NAMES}
        if self.gaps is not None:
            result["gaps"] = dict(self.gaps)
            result["avg_gap"] = self.avg_gap
        return result

    @deprecated(
        "UnlearningScores.as_dict() is deprecated and will be removed in 0.3.0; use to_dict()."
    )
    def as_dict(self) -> dict[str, Any]:
        """Deprecated alias of :meth:`to_dict`; removed in 0.3.0."""
        return self.to_dict()


def unlearning_scores(
    model: nn.Module,
    *,
    retain: DataLike,
    forget: DataLike,
    test: DataLike,
    reference: nn.Module | UnlearningScores | Mapping[str, float] | None = None,
    mia_shadow: DataLike | None = None,
    mia_feature: str = "confidence",
    bn_loader: DataLike | None = None,
    task: Task | None = None,
    seed: int = 0,
    device: DeviceLike = None,
) -> UnlearningScores:
    """UA, RA, TA and MIA-efficacy of ``model``, and the gaps to a reference.

    The MIA-efficacy follows the usual protocol (SVC on one feature, C=3, RBF):
    the attack is trained on shadow members (by default a random subset of
    ``retain`` as large as ``test``) against ``test`` as non-members, then
    applied to ``forget``; the score is the percentage of forget samples
    predicted as non-members. One forward pass per split.

    Args:
        model: The (unlearned) model.
        retain: Retain data.
        forget: Forget data.
        test: Held-out test data.
        reference: The model to compare with (usually the one retrained on
            ``retain``), its :class:`UnlearningScores`, or a mapping with keys
            ``ua``, ``ra``, ``ta``, ``mia`` (any case). A module is scored with
            the same data.
        mia_shadow: Shadow member data instead of the retain subset.
        mia_feature: The :func:`~modeconn_unlearn.mia.svc_mia` feature for
            MIA-efficacy (``"confidence"`` as in SalUn's tables; ``"loss"`` for
            tasks without class logits, such as language models).
        bn_loader: If given, a copy of ``model`` (and of a reference module)
            is scored with BatchNorm statistics re-estimated on it, exactly as
            :func:`~modeconn_unlearn.evaluation.evaluate_path` does at every
            ``t``; use it to compare a model with points of a path on equal
            terms. Use retain data.
        task: How outputs are scored (default: classification).
        seed: Seed of the retain subset and the SVC.
        device: Where to evaluate (default: the model's device).

    Returns:
        :class:`UnlearningScores`; ``gaps``/``avg_gap`` are set when a
        reference is given.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
        >>> scores = unlearning_scores(nn.Linear(4, 2), retain=data, forget=data, test=data,
        ...                            reference={"UA": 0, "RA": 100, "TA": 90, "MIA": 10})
        >>> sorted(scores.gaps)
        ['mia', 'ra', 'ta', 'ua']
    """
    chosen = resolve_task(task)
    if bn_loader is not None and has_batchnorm(model):
        model = with_bn_from(model, as_loader(bn_loader, name="bn_loader"))
    target = resolve_device(model, device)
    collate = task_collate(chosen)
    given = {"retain": retain, "forget": forget, "test": test}
    if mia_shadow is not None:
        given["mia_shadow"] = mia_shadow
    loaders = {name: as_loader(data, name=name, collate_fn=collate) for name, data in given.items()}
    with evaluating(model), torch.no_grad():
        passes = {
            name: run_pass(
                model,
                loader,
                task=chosen,
                device=target,
                signals=name != "retain" or mia_shadow is None,
                name=name,
            )
            for name, loader in loaders.items()
        }
    mia = mia_efficacy(
        passes.get("mia_shadow", passes["retain"]),
        passes["test"],
        passes["forget"],
        feature=mia_feature,
        subsample=mia_shadow is None,
        seed=seed,
    )
    scores = UnlearningScores(
        ua=100.0 - passes["forget"].metrics().accuracy,
        ra=passes["retain"].metrics().accuracy,
        ta=passes["test"].metrics().accuracy,
        mia=mia,
    )
    if reference is None:
        return scores
    if isinstance(reference, nn.Module):
        reference = unlearning_scores(
            reference,
            retain=retain,
            forget=forget,
            test=test,
            mia_shadow=mia_shadow,
            mia_feature=mia_feature,
            bn_loader=bn_loader,
            task=task,
            seed=seed,
            device=device,
        )
    ref = _reference_scores(reference)
    gaps = {name: abs(getattr(scores, name) - ref[name]) for name in SCORE_NAMES}
    return replace(scores, gaps=gaps, avg_gap=sum(gaps.values()) / len(gaps))


def _reference_scores(reference: UnlearningScores | Mapping[str, float]) -> dict[str, float]:
    if isinstance(reference, UnlearningScores):
        return {name: getattr(reference, name) for name in SCORE_NAMES}
    if not isinstance(reference, Mapping):
        raise TypeError(
            "reference must be an nn.Module, UnlearningScores or a mapping with keys "
            f"{list(SCORE_NAMES)}, got {type(reference).__name__}."
        )
    lowered = {str(key).lower(): value for key, value in reference.items()}
    missing = [name for name in SCORE_NAMES if name not in lowered]
    if missing:
        raise ModeConnError(
            f"reference is missing the scores {missing}; give all of {list(SCORE_NAMES)} "
            f"(got keys {sorted(map(str, reference))})."
        )
    return {name: float(lowered[name]) for name in SCORE_NAMES}
