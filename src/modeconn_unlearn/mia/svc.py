"""The SVC membership-inference attack (MIA-efficacy protocol of the unlearning literature)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ModeConnError
from ..evaluation.efficacy import svc_fit_predict
from ..evaluation.features import FEATURES, check_features, feature_arrays
from ..evaluation.outputs import DataLike, DeviceLike, collect_outputs
from ..tasks import Task

__all__ = ["svc_mia"]


def svc_mia(
    model: nn.Module,
    *,
    shadow_train: DataLike,
    shadow_test: DataLike,
    target_train: DataLike | None = None,
    target_test: DataLike | None = None,
    features: Sequence[str] = FEATURES,
    task: Task | None = None,
    seed: int = 0,
    device: DeviceLike = None,
) -> dict[str, float]:
    """SVC membership-inference attack, one classifier per feature.

    For each feature an ``SVC(C=3, gamma="auto", kernel="rbf")`` learns to tell
    ``shadow_train`` (members, e.g. a retain subset as large as the test set)
    from ``shadow_test`` (non-members, e.g. the test set). The score is the
    fraction of targets it classifies correctly: ``target_train`` as members,
    ``target_test`` as non-members (their mean when both are given). With
    ``target_test=forget`` this is the MIA-efficacy of unlearning papers (high
    means the forget set looks unseen).

    Args:
        model: The model under attack.
        shadow_train: Shadow members (data the model trained on).
        shadow_test: Shadow non-members (data it never saw).
        target_train: Targets that should be members.
        target_test: Targets that should be non-members.
        features: Any of ``"correctness"``, ``"confidence"``, ``"entropy"``,
            ``"m_entropy"``, ``"prob"`` (these need class logits, i.e. a
            classification task) and ``"loss"`` (the per-sample loss, any task).
        task: How outputs are read (default: classification).
        seed: Random state of the SVCs.
        device: Where to run the model (default: its device).

    Returns:
        ``{feature: score in [0, 1]}``.

    Raises:
        ModeConnError: No targets, fewer than 5 shadow samples per side, an
            unknown feature, or a probability feature with a task that gives no
            class logits.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
        >>> scores = svc_mia(nn.Linear(4, 2), shadow_train=data, shadow_test=data,
        ...                  target_test=data, features=("confidence", "entropy"))
        >>> sorted(scores)
        ['confidence', 'entropy']
    """
    chosen = check_features(features)
    if target_train is None and target_test is None:
        raise ModeConnError(
            "svc_mia needs targets: pass target_train (should be members) and/or target_test "
            "(should be non-members, e.g. the forget set)."
        )
    targets = {"target_train": target_train, "target_test": target_test}
    sets = {"shadow_train": shadow_train, "shadow_test": shadow_test}
    sets |= {name: data for name, data in targets.items() if data is not None}
    feats = {
        name: feature_arrays(
            collect_outputs(model, data, task=task, signals=True, device=device, name=name),
            chosen,
        )
        for name, data in sets.items()
    }
    return {
        feature: svc_fit_predict(
            feats["shadow_train"][feature],
            feats["shadow_test"][feature],
            feats["target_train"][feature] if "target_train" in feats else None,
            feats["target_test"][feature] if "target_test" in feats else None,
            seed=seed,
        )
        for feature in chosen
    }
