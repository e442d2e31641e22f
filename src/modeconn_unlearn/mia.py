"""Membership-inference attacks for judging unlearning.

Three families, sharing one forward pass per dataset and a few private helpers:

* :func:`svc_mia`: the MIA-efficacy protocol of the unlearning literature: an
  SVC per per-sample feature (correctness, confidence, entropy, modified
  entropy, probability vector) trained on shadow members vs non-members and
  applied to target data.
* :func:`threshold_attack`: population attacks thresholding the loss,
  confidence or entropy, with ROC AUC and TPR at low FPR (:func:`roc_metrics`).
* :func:`lira`: the per-example likelihood-ratio attack with reference models
  (:func:`train_reference_models` trains them). Population attacks alone
  overestimate how private an unlearned model is; LiRA is the stronger test.

Member scores are oriented so that *higher means more likely a member*.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.svm import SVC
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from tqdm import tqdm

from .batchnorm import module_device
from .errors import ModeConnError
from .evaluation import DataLike, _collect_outputs, _Pass

__all__ = [
    "FEATURES",
    "SIGNALS",
    "ReferenceModels",
    "RocMetrics",
    "ThresholdAttack",
    "lira",
    "logit_confidence",
    "modified_entropy",
    "roc_metrics",
    "sample_features",
    "svc_mia",
    "threshold_attack",
    "train_reference_models",
]

logger = logging.getLogger(__name__)

FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")
"""The per-sample features of :func:`svc_mia`."""
SIGNALS = ("loss", "confidence", "entropy", "m_entropy")
"""The per-sample signals :func:`threshold_attack` can threshold."""

_EPS = 1e-30  # clamp before log, so that log(0) is finite (as in the reference protocol)
_MIN_SHADOW = 5
_MIN_STD = 1e-8


# --------------------------------------------------------------------------- per-sample features
def _check_probs(probs: Tensor, labels: Tensor, name: str = "probs") -> tuple[Tensor, Tensor]:
    if probs.ndim != 2:
        raise ModeConnError(f"{name} must have shape (samples, classes), got {tuple(probs.shape)}.")
    if labels.shape != (len(probs),):
        raise ModeConnError(
            f"labels must have shape ({len(probs)},) to match {name}, got {tuple(labels.shape)}."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]):
        raise ModeConnError(
            f"labels must be class indices in [0, {probs.shape[1] - 1}], "
            f"got values from {int(labels.min())} to {int(labels.max())}."
        )
    return probs.double(), labels.long()


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim=1)


def modified_entropy(probs: Tensor, labels: Tensor) -> Tensor:
    """Per-sample modified entropy (Song & Mittal, 2021).

    ``Mentr(p, y) = -(1 - p_y) log p_y - Σ_{i≠y} p_i log(1 - p_i)``, with
    probabilities clamped away from 0 inside the logs. Each sample uses only its
    own label (a widely copied version indexes every row with every label of
    the batch and writes ``log p`` where ``log(1 - p)`` belongs).

    Args:
        probs: Probabilities, shape ``(samples, classes)``.
        labels: True classes, shape ``(samples,)``.

    Returns:
        A float64 tensor of shape ``(samples,)``; low for confident correct
        predictions, high for confident wrong ones.

    Example:
        >>> p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
        >>> [round(v, 4) for v in modified_entropy(p, torch.tensor([0, 0])).tolist()]
        [0.6931, 0.0211]
    """
    probs, labels = _check_probs(probs, labels)
    is_label = F.one_hot(labels, probs.shape[1]).bool()
    log_p = probs.clamp_min(_EPS).log()
    log_not_p = (1.0 - probs).clamp_min(_EPS).log()
    terms = torch.where(is_label, (1.0 - probs) * log_p, probs * log_not_p)
    return -terms.sum(dim=1)


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """The logit-scaled confidence ``log(p_y / (1 - p_y))`` used by LiRA.

    Computed from logits as ``z_y - logsumexp_{i≠y} z_i``, which stays exact
    where ``p_y`` rounds to 1.

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> round(logit_confidence(z, torch.tensor([0])).item(), 6)
        2.0
    """
    logits, labels = _check_probs(logits, labels, "logits")
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -math.inf)
    return own - torch.logsumexp(others, dim=1)


def sample_features(
    probs: Tensor, labels: Tensor, features: Sequence[str] = FEATURES
) -> dict[str, Tensor]:
    """The per-sample features of :func:`svc_mia`, each of shape ``(samples, d)``.

    ``correctness`` (1 if the argmax is the label), ``confidence`` (``p_y``),
    ``entropy``, ``m_entropy`` (:func:`modified_entropy`) have ``d = 1``;
    ``prob`` is the whole probability vector.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
        >>> feats = sample_features(p, torch.tensor([0, 0]), ("correctness", "confidence"))
        >>> feats["correctness"].ravel().tolist(), feats["confidence"].ravel().tolist()
        ([1.0, 0.0], [0.9, 0.2])
    """
    probs, labels = _check_probs(probs, labels)
    result: dict[str, Tensor] = {}
    for feature in _check_features(features):
        if feature == "correctness":
            value = (probs.argmax(dim=1) == labels).double()
        elif feature == "confidence":
            value = probs.gather(1, labels[:, None]).squeeze(1)
        elif feature == "entropy":
            value = _entropy(probs)
        elif feature == "m_entropy":
            value = modified_entropy(probs, labels)
        else:
            result[feature] = probs
            continue
        result[feature] = value[:, None]
    return result


def _check_features(features: Sequence[str]) -> tuple[str, ...]:
    chosen = (features,) if isinstance(features, str) else tuple(features)
    unknown = [f for f in chosen if f not in FEATURES]
    if unknown or not chosen:
        raise ModeConnError(f"Unknown MIA features {unknown}; choose from {list(FEATURES)}.")
    return chosen


def _probs(outputs: _Pass) -> tuple[Tensor, Tensor]:
    assert outputs.logits is not None and outputs.labels is not None
    return torch.softmax(outputs.logits.double(), dim=1), outputs.labels


def _signal(outputs: _Pass, signal: str) -> NDArray[np.float64]:
    """A per-sample member score: higher means more member-like."""
    probs, labels = _probs(outputs)
    if signal == "loss":
        assert outputs.logits is not None
        value = -F.cross_entropy(outputs.logits.double(), labels, reduction="none")
    elif signal == "confidence":
        value = probs.gather(1, labels[:, None]).squeeze(1)
    elif signal == "entropy":
        value = -_entropy(probs)
    elif signal == "m_entropy":
        value = -modified_entropy(probs, labels)
    else:
        raise ModeConnError(f"Unknown signal {signal!r}; choose from {list(SIGNALS)}.")
    return value.numpy()


# --------------------------------------------------------------------------- SVC attack
def _svc_fit_predict(
    shadow_in: NDArray[np.float64],
    shadow_out: NDArray[np.float64],
    target_in: NDArray[np.float64] | None,
    target_out: NDArray[np.float64] | None,
    *,
    seed: int,
) -> float:
    """Fit SVC(C=3, rbf, gamma="auto") on shadow members (1) vs non-members (0).

    Returns the fraction of targets classified correctly: members of
    ``target_in`` predicted 1, non-members of ``target_out`` predicted 0; the
    mean of the two when both are given.
    """
    for name, rows in (("shadow members", shadow_in), ("shadow non-members", shadow_out)):
        if len(rows) < _MIN_SHADOW:
            raise ModeConnError(
                f"The SVC attack needs at least {_MIN_SHADOW} {name}, got {len(rows)}; "
                "pass larger shadow_train / shadow_test sets."
            )
    x = np.concatenate([shadow_in, shadow_out])
    if not np.all(np.isfinite(x)):
        raise ModeConnError("The model produced non-finite outputs on the shadow data.")
    y = np.concatenate([np.ones(len(shadow_in)), np.zeros(len(shadow_out))])
    classifier = SVC(C=3, gamma="auto", kernel="rbf", random_state=seed)
    classifier.fit(x, y)
    accuracies = []
    if target_in is not None:
        accuracies.append(float(classifier.predict(target_in).mean()))
    if target_out is not None:
        accuracies.append(1.0 - float(classifier.predict(target_out).mean()))
    return float(np.mean(accuracies))


def _feature_arrays(outputs: _Pass, features: tuple[str, ...]) -> dict[str, NDArray[np.float64]]:
    probs, labels = _probs(outputs)
    return {name: value.numpy() for name, value in sample_features(probs, labels, features).items()}


def _mia_efficacy(
    shadow: _Pass,
    test: _Pass,
    forget: _Pass,
    *,
    feature: str,
    subsample: bool,
    seed: int = 0,
) -> float:
    """MIA-efficacy in percent: forget samples an SVC on ``feature`` calls non-members.

    With ``subsample`` the shadow members are a seeded random subset of
    ``shadow`` as large as ``test`` (the same subset for the same sizes).
    """
    (feature,) = _check_features((feature,))
    members = _feature_arrays(shadow, (feature,))[feature]
    if subsample and len(members) > test.count:
        rng = np.random.default_rng(seed)
        members = members[np.sort(rng.choice(len(members), size=test.count, replace=False))]
    nonmembers = _feature_arrays(test, (feature,))[feature]
    targets = _feature_arrays(forget, (feature,))[feature]
    return 100.0 * _svc_fit_predict(members, nonmembers, None, targets, seed=seed)


def svc_mia(
    model: nn.Module,
    *,
    shadow_train: DataLike,
    shadow_test: DataLike,
    target_train: DataLike | None = None,
    target_test: DataLike | None = None,
    features: Sequence[str] = FEATURES,
    seed: int = 0,
    device: torch.device | str | None = None,
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
        model: The model under attack; returns logits.
        shadow_train: Shadow members (data the model trained on).
        shadow_test: Shadow non-members (data it never saw).
        target_train: Targets that should be members.
        target_test: Targets that should be non-members.
        features: Any of ``"correctness"``, ``"confidence"``, ``"entropy"``,
            ``"m_entropy"``, ``"prob"``.
        seed: Random state of the SVCs.
        device: Where to run the model (default: its device).

    Returns:
        ``{feature: score in [0, 1]}``.

    Raises:
        ModeConnError: No targets, fewer than 5 shadow samples per side, or an
            unknown feature.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
        >>> scores = svc_mia(nn.Linear(4, 2), shadow_train=data, shadow_test=data,
        ...                  target_test=data, features=("confidence", "entropy"))
        >>> sorted(scores)
        ['confidence', 'entropy']
    """
    chosen = _check_features(features)
    if target_train is None and target_test is None:
        raise ModeConnError(
            "svc_mia needs targets: pass target_train (should be members) and/or target_test "
            "(should be non-members, e.g. the forget set)."
        )
    sets = {"shadow_train": shadow_train, "shadow_test": shadow_test}
    if target_train is not None:
        sets["target_train"] = target_train
    if target_test is not None:
        sets["target_test"] = target_test
    feats = {
        name: _feature_arrays(_collect_outputs(model, data, device=device, name=name), chosen)
        for name, data in sets.items()
    }
    return {
        feature: _svc_fit_predict(
            feats["shadow_train"][feature],
            feats["shadow_test"][feature],
            feats["target_train"][feature] if "target_train" in feats else None,
            feats["target_test"][feature] if "target_test" in feats else None,
            seed=seed,
        )
        for feature in chosen
    }


# --------------------------------------------------------------------------- threshold attacks
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
    device: torch.device | str | None = None,
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
            ``"m_entropy"``.
        fprs: The low false-positive rates to report TPR at.
        device: Where to run the model.

    Returns:
        ``{signal: ThresholdAttack}``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
        >>> result = threshold_attack(nn.Linear(4, 2), member=data, nonmember=data)
        >>> round(result["loss"].auc, 6)
        0.5
    """
    chosen = (signals,) if isinstance(signals, str) else tuple(signals)
    unknown = [s for s in chosen if s not in SIGNALS]
    if unknown or not chosen:
        raise ModeConnError(f"Unknown signals {unknown}; choose from {list(SIGNALS)}.")
    levels = _check_fprs(fprs)
    outputs = {
        name: _collect_outputs(model, data, device=device, name=name)
        for name, data in (("member", member), ("nonmember", nonmember), ("target", target))
        if data is not None
    }
    results = {}
    for signal in chosen:
        members = _signal(outputs["member"], signal)
        nonmembers = _signal(outputs["nonmember"], signal)
        calibration = roc_metrics(members, nonmembers, fprs=levels)
        truth = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
        fpr, tpr, thresholds = roc_curve(truth, np.concatenate([members, nonmembers]))
        threshold = float(thresholds[int(np.argmax(tpr - fpr))])
        extra: dict[str, Any] = {}
        if "target" in outputs:
            targets = _signal(outputs["target"], signal)
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


# --------------------------------------------------------------------------- LiRA
def _fixed_order(data: DataLike, name: str) -> Any:
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise ModeConnError(
            f"{name} is a shuffling DataLoader; LiRA matches examples across models by "
            "position, so pass the Dataset or a DataLoader with shuffle=False."
        )
    return data


def _lira_scores(
    target: NDArray[np.float64],
    reference: NDArray[np.float64],
    in_mask: NDArray[np.bool_],
    *,
    online: bool,
    fix_variance: bool,
) -> NDArray[np.float64]:
    """LiRA member scores from logit-scaled confidences.

    ``target``: ``(n,)``; ``reference``: ``(k, n)``; ``in_mask[j, i]`` whether
    reference model ``j`` trained on example ``i``.
    """
    k, n = reference.shape
    if target.shape != (n,) or in_mask.shape != (k, n):
        raise ModeConnError(
            f"Shapes do not match: target ({target.shape}), reference confidences "
            f"({reference.shape}) and in_mask ({in_mask.shape}) must be (n,), (k, n), (k, n)."
        )

    def gaussian(mask: NDArray[np.bool_], role: str) -> tuple[NDArray[np.float64], ...]:
        counts = mask.sum(axis=0)
        needed = 1 if fix_variance else 2
        short = np.flatnonzero(counts < needed)
        if len(short):
            raise ModeConnError(
                f"{len(short)} examples (e.g. positions {short[:5].tolist()}) have fewer than "
                f"{needed} {role} reference models; train more reference models "
                "(train_reference_models balances IN/OUT per example) or pass fix_variance=True."
            )
        mean = np.where(mask, reference, 0.0).sum(axis=0) / counts
        squares = np.where(mask, (reference - mean) ** 2, 0.0)
        if fix_variance:
            dof = max(int(counts.sum() - n), 1)
            std = np.full(n, math.sqrt(squares.sum() / dof))
        else:
            std = np.sqrt(squares.sum(axis=0) / counts)
        return mean, np.maximum(std, _MIN_STD)

    mean_out, std_out = gaussian(~in_mask, "OUT")
    if not online:
        return (target - mean_out) / std_out
    mean_in, std_in = gaussian(in_mask, "IN")
    ratio = norm.logpdf(target, mean_in, std_in) - norm.logpdf(target, mean_out, std_out)
    return np.asarray(ratio, dtype=np.float64)


def lira(
    target_model: nn.Module,
    reference_models: Sequence[nn.Module],
    data: DataLike,
    in_mask: ArrayLike,
    *,
    online: bool = True,
    fix_variance: bool = False,
    device: torch.device | str | None = None,
) -> NDArray[np.float64]:
    """Per-example likelihood-ratio membership scores (LiRA, Carlini et al., 2022).

    For each example the logit-scaled confidence ``φ = log(p_y / (1 - p_y))``
    of the reference models that trained on it (IN) and that did not (OUT) is
    fitted by a Gaussian. Online: the score is
    ``log N(φ_target; mean_in, std_in) - log N(φ_target; mean_out, std_out)``.
    Offline (OUT models only): ``(φ_target - mean_out) / std_out``, monotone in
    the one-sided test ``Φ(·)`` of the paper. Higher means "member"; feed the scores of members and
    non-members (e.g. forget vs test examples) to :func:`roc_metrics`.

    Args:
        target_model: The model under attack.
        reference_models: ``k`` models of the same kind trained on random
            halves (see :func:`train_reference_models`).
        data: The ``n`` candidate examples, in a fixed order.
        in_mask: Bool array ``(k, n)``: whether reference model ``j`` trained
            on example ``i``.
        online: Use IN and OUT models (stronger); ``False`` uses OUT only.
        fix_variance: One pooled variance for all examples instead of one per
            example (more stable with few reference models).
        device: Where to run the models.

    Returns:
        Scores of shape ``(n,)``.

    Raises:
        ModeConnError: Mismatched shapes, a shuffling loader, or examples with
            too few IN/OUT reference models.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = TensorDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
        >>> refs = [nn.Linear(3, 2) for _ in range(4)]
        >>> mask = [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]] * 2
        >>> lira(nn.Linear(3, 2), refs, data, mask).shape
        (6,)
    """
    data = _fixed_order(data, "data")
    if len(reference_models) == 0:
        raise ModeConnError("lira needs reference models; see train_reference_models().")
    mask = np.asarray(in_mask)
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ModeConnError("in_mask must be a boolean (or 0/1) array of shape (k, n).")
        mask = mask.astype(bool)

    def confidences(model: nn.Module, name: str) -> NDArray[np.float64]:
        outputs = _collect_outputs(model, data, device=device, name=name)
        assert outputs.logits is not None and outputs.labels is not None
        return logit_confidence(outputs.logits, outputs.labels).numpy()

    target = confidences(target_model, "data")
    reference = np.stack(
        [confidences(model, f"data (reference {j})") for j, model in enumerate(reference_models)]
    )
    return _lira_scores(target, reference, mask, online=online, fix_variance=fix_variance)


class ReferenceModels(NamedTuple):
    """Reference models for :func:`lira` and which examples each trained on."""

    models: list[nn.Module]
    in_mask: NDArray[np.bool_]


def _dataset_of(data: DataLike) -> Dataset[Any]:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "train_reference_models needs a map-style Dataset (or a DataLoader over one) to "
            f"draw random halves from, got {type(data).__name__}."
        )
    return dataset


def _train_simple(
    model: nn.Module,
    data: Dataset[Any],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Plain SGD with momentum on cross-entropy."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    for _ in range(epochs):
        for batch in loader:
            inputs, targets = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()


def train_reference_models(
    model_factory: Callable[[], nn.Module],
    data: DataLike,
    *,
    k: int = 8,
    train_fn: Callable[[nn.Module, Dataset[Any]], nn.Module | None] | None = None,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> ReferenceModels:
    """Train ``k`` reference models, each on a random half of ``data``.

    The halves are balanced: every example is IN for exactly ``k // 2`` models
    and OUT for the rest, so each example has IN and OUT models for
    :func:`lira`.

    Args:
        model_factory: Returns a fresh, untrained model (called ``k`` times,
            with the torch seed set to ``seed + j`` before call ``j``).
        data: A map-style Dataset (or a DataLoader over one) of ``n`` examples,
            in the same order as later passed to :func:`lira`.
        k: Number of reference models (at least 2; use 4 or more for online LiRA).
        train_fn: ``train_fn(model, subset)`` trains in place (or returns the
            trained model). Default: SGD (momentum 0.9, weight decay 5e-4)
            on cross-entropy for ``epochs`` epochs.
        epochs: Epochs of the built-in loop.
        lr: Learning rate of the built-in loop.
        batch_size: Batch size of the built-in loop.
        seed: Seed of the halves, the model initialisations and the shuffling.
        progress: Show a progress bar over the models.
        device: Where to train with the built-in loop (default: CPU or the
            factory's device).

    Returns:
        ``ReferenceModels(models, in_mask)`` with ``in_mask`` of shape ``(k, n)``;
        the models are in eval mode.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
        >>> refs = train_reference_models(lambda: nn.Linear(3, 2), data, k=2, epochs=1,
        ...                               progress=False)
        >>> refs.in_mask.shape, refs.in_mask.sum(axis=0).tolist() == [1] * 10
        ((2, 10), True)
    """
    dataset = _dataset_of(data)
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ModeConnError(f"k must be an integer >= 2 (models per IN/OUT side), got {k!r}.")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ModeConnError(f"Need at least 2 examples to split into halves, got {n}.")
    rng = np.random.default_rng(seed)
    # Per example, a random ranking of the models; the first k // 2 train on it.
    in_mask = rng.random((k, n)).argsort(axis=0).argsort(axis=0) < k // 2
    models: list[nn.Module] = []
    for j in tqdm(range(k), desc="reference models", disable=not progress):
        torch.manual_seed(seed + j)
        model = model_factory()
        subset = Subset(dataset, np.flatnonzero(in_mask[j]).tolist())
        if train_fn is None:
            target = torch.device(device) if device is not None else module_device(model)
            generator = torch.Generator().manual_seed(seed + j)
            _train_simple(
                model,
                subset,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                generator=generator,
                device=target,
            )
        else:
            trained = train_fn(model, subset)
            if isinstance(trained, nn.Module):
                model = trained
        models.append(model.eval())
    logger.debug("trained %d reference models on halves of %d examples", k, n)
    return ReferenceModels(models, in_mask)
