"""Per-sample membership features and signals, computed from collected :class:`Outputs`.

Membership-inference attacks and the MIA-efficacy score read a model through
these: the SVC features (correctness, confidence, entropy, modified entropy,
probability vector, loss) and the member scores of the threshold attacks
(oriented so that *higher means more likely a member*). The features built on
class probabilities need the ``"logits"``/``"labels"`` signals of a
classification task; ``"loss"`` works for every task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from ..errors import ModeConnError
from .outputs import Outputs

__all__ = [
    "FEATURES",
    "SIGNALS",
    "TASK_FEATURES",
    "check_features",
    "check_signals",
    "class_probs",
    "feature_arrays",
    "logit_confidence",
    "member_signal",
    "modified_entropy",
    "sample_features",
    "sample_loss",
]

FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")
"""The per-sample class-probability features of :func:`~modeconn_unlearn.mia.svc_mia`."""
TASK_FEATURES = ("loss",)
"""Features every task gives (the per-sample loss), usable for language models too."""
SIGNALS = ("loss", "confidence", "entropy", "m_entropy")
"""The per-sample signals :func:`~modeconn_unlearn.mia.threshold_attack` can threshold."""

_EPS = 1e-30  # clamp before log, so that log(0) is finite (as in the reference protocol)


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
    """The per-sample probability features of :func:`~modeconn_unlearn.mia.svc_mia`.

    Each has shape ``(samples, d)``: ``correctness`` (1 if the argmax is the
    label), ``confidence`` (``p_y``), ``entropy``, ``m_entropy``
    (:func:`modified_entropy`) have ``d = 1``; ``prob`` is the whole
    probability vector.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
        >>> feats = sample_features(p, torch.tensor([0, 0]), ("correctness", "confidence"))
        >>> feats["correctness"].ravel().tolist(), feats["confidence"].ravel().tolist()
        ([1.0, 0.0], [0.9, 0.2])
    """
    probs, labels = _check_probs(probs, labels)
    chosen = (features,) if isinstance(features, str) else tuple(features)
    unknown = [f for f in chosen if f not in FEATURES]
    if unknown or not chosen:
        raise ModeConnError(f"Unknown MIA features {unknown}; choose from {list(FEATURES)}.")
    compute: dict[str, Callable[[], Tensor]] = {
        "correctness": lambda: (probs.argmax(dim=1) == labels).double()[:, None],
        "confidence": lambda: probs.gather(1, labels[:, None]),
        "entropy": lambda: _entropy(probs)[:, None],
        "m_entropy": lambda: modified_entropy(probs, labels)[:, None],
        "prob": lambda: probs,
    }
    return {feature: compute[feature]() for feature in chosen}


def check_features(features: Sequence[str] | str) -> tuple[str, ...]:
    """``features`` as a tuple, each one of :data:`FEATURES` or :data:`TASK_FEATURES`.

    Example:
        >>> check_features("confidence")
        ('confidence',)
    """
    chosen = (features,) if isinstance(features, str) else tuple(features)
    known = FEATURES + TASK_FEATURES
    unknown = [f for f in chosen if f not in known]
    if unknown or not chosen:
        raise ModeConnError(f"Unknown MIA features {unknown}; choose from {list(known)}.")
    return chosen


def check_signals(signals: Sequence[str] | str) -> tuple[str, ...]:
    """``signals`` as a tuple, each one of :data:`SIGNALS`.

    Example:
        >>> check_signals(["loss"])
        ('loss',)
    """
    chosen = (signals,) if isinstance(signals, str) else tuple(signals)
    unknown = [s for s in chosen if s not in SIGNALS]
    if unknown or not chosen:
        raise ModeConnError(f"Unknown signals {unknown}; choose from {list(SIGNALS)}.")
    return chosen


def class_probs(outputs: Outputs, *, needed_for: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits float64, softmax probabilities, labels)`` from a classification pass.

    Raises:
        ModeConnError: The outputs hold no ``(N, C)`` class logits (another task,
            or collected without signals).
    """
    logits, labels = outputs.signals.get("logits"), outputs.signals.get("labels")
    if logits is None or labels is None or logits.ndim != 2 or labels.ndim != 1:
        available = sorted(outputs.signals) or "no signals (collected without signals=True)"
        raise ModeConnError(
            f"{needed_for}: class logits of shape (N, C) are needed, which a classification "
            f"task gives; this pass has {available}. For other tasks (e.g. a language model, "
            "CausalLMTask) use the 'loss' feature or signal."
        )
    logits = logits.double()
    return logits, torch.softmax(logits, dim=1), labels.long()


def sample_loss(outputs: Outputs) -> NDArray[np.float64]:
    """The per-sample loss in float64, exact where a memorising model is sure.

    With class logits (a classification pass collected with signals) the
    cross-entropy is recomputed as ``log(1 + exp(-m))`` from the label's
    log-odds ``m`` (:func:`logit_confidence`), not as ``logsumexp(z) - z_y``:
    in float64 the latter is exactly 0 once the label's logit leads by about
    37 (in float32 far sooner), which a memorising model reaches on many
    training *and* test samples, and such ties leave an attack nothing to rank. Without
    class logits (e.g. a language model's answer NLL) it is the task's own loss.

    Example:
        >>> z = torch.tensor([[50.0, 0.0], [40.0, 0.0]])
        >>> out = Outputs(torch.zeros(2), torch.ones(2),
        ...               {"logits": z, "labels": torch.tensor([0, 0])})
        >>> loss = sample_loss(out)
        >>> bool(0.0 < loss[0] < loss[1])
        True
    """
    logits = outputs.signals.get("logits")
    if logits is not None and logits.ndim == 2:
        logits, _, labels = class_probs(outputs, needed_for="the per-sample loss")
        odds = logit_confidence(logits, labels)
        return torch.logaddexp(torch.zeros_like(odds), -odds).numpy()
    return outputs.loss.double().numpy()


def feature_arrays(outputs: Outputs, features: Sequence[str]) -> dict[str, NDArray[np.float64]]:
    """The chosen SVC features as ``(N, d)`` float64 arrays.

    ``"loss"`` is :func:`sample_loss`; the others need class logits.
    """
    chosen = check_features(features)
    result: dict[str, NDArray[np.float64]] = {}
    if "loss" in chosen:
        result["loss"] = sample_loss(outputs)[:, None]
    probability = tuple(f for f in chosen if f != "loss")
    if probability:
        _, probs, labels = class_probs(outputs, needed_for=f"MIA features {list(probability)}")
        for name, value in sample_features(probs, labels, probability).items():
            result[name] = value.numpy()
    return {name: result[name] for name in chosen}


def member_signal(outputs: Outputs, signal: str) -> NDArray[np.float64]:
    """A per-sample member score (higher means more member-like) for a threshold attack.

    ``"loss"`` is the negated :func:`sample_loss` (exact where a memorising
    model is sure, so no ties leave a low false-positive rate without a
    threshold). The other signals need class logits.

    Example:
        >>> z = torch.tensor([[50.0, 0.0], [40.0, 0.0]])
        >>> out = Outputs(torch.zeros(2), torch.ones(2),
        ...               {"logits": z, "labels": torch.tensor([0, 0])})
        >>> score = member_signal(out, "loss")
        >>> bool(score[0] > score[1])
        True
    """
    (signal,) = check_signals((signal,))
    if signal == "loss":
        return -sample_loss(outputs)
    _, probs, labels = class_probs(outputs, needed_for=f"the {signal!r} signal")
    if signal == "confidence":
        value = probs.gather(1, labels[:, None]).squeeze(1)
    elif signal == "entropy":
        value = -_entropy(probs)
    else:
        value = -modified_entropy(probs, labels)
    return value.numpy()
