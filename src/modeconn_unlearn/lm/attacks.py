"""Membership inference on language models: LOSS, ZLib, Min-K% and Min-K%++, and privleak.

Each attack gives every example a *member score* (higher = more likely seen
in training), computed from :class:`~modeconn_unlearn.lm.metrics.LMOutputs`:

* ``loss``: ``-NLL`` (the mean NLL over the scored tokens; Yeom et al.);
* ``zlib``: ``-NLL / zlib(text)``, ``zlib(text)`` the length in bytes of the
  zlib-compressed UTF-8 text of the scored tokens, special tokens skipped
  (Carlini et al. 2021);
* ``min_k``: the mean log-probability of the ``max(1, floor(k * n))``
  least likely of the ``n`` scored tokens (Min-K%, Shi et al. 2024);
* ``min_k_pp``: the same mean over the Min-K%++ token scores
  ``(log p(x_i) - mu_i) / sigma_i`` (Zhang et al. 2024).

Attack strength is the ROC AUC of members against non-members and the TPR
at low FPR (scikit-learn's ``roc_auc_score``/``roc_curve``, through
:func:`modeconn_unlearn.mia.roc_metrics`). :func:`privleak` compares an
unlearned model's AUC on forget vs held-out data with a retrained model's.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..errors import ModeConnError
from ..mia import roc_metrics
from ..tasks import Task
from .data import qa_source
from .metrics import LMOutputs, lm_outputs

__all__ = ["ATTACKS", "AttackResult", "attack_scores", "lm_mia", "mia_from_outputs", "privleak"]

#: The attacks, in report order.
ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


@dataclass(frozen=True)
class AttackResult:
    """One attack's strength, members vs non-members.

    Attributes:
        attack: Its name (one of :data:`ATTACKS`).
        auc: ROC AUC (0.5 = chance; 1 = every member scored above every non-member).
        tpr_at_fpr: ``{fpr: highest TPR at an FPR not above it}``.
    """

    attack: str
    auc: float
    tpr_at_fpr: dict[float, float]


def _lowest_mean(values: NDArray[np.float64], k: float) -> float:
    count = max(1, math.floor(k * len(values)))
    return float(np.sort(values)[:count].mean())


def _check_k(k: float) -> float:
    value = float(k)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ModeConnError(f"k must lie in (0, 1] (a fraction of the tokens), got {k!r}.")
    return value


def attack_scores(
    outputs: LMOutputs, attack: str, *, k: float = 0.2, tokenizer: Any | None = None
) -> NDArray[np.float64]:
    """The member scores of one attack (higher = more likely a member).

    Args:
        outputs: Per-example results of :func:`~modeconn_unlearn.lm.metrics.lm_outputs`.
        attack: One of :data:`ATTACKS`.
        k: Fraction of tokens for ``min_k`` and ``min_k_pp``.
        tokenizer: Decodes the scored tokens for ``zlib``.

    Returns:
        ``(N,)`` scores.

    Raises:
        ModeConnError: An unknown attack, a bad ``k``, or ``zlib`` without a tokenizer.

    Example:
        >>> lp = [np.log([0.5, 0.1, 0.9])]
        >>> out = LMOutputs(np.array([1.0]), np.array([3.0]), np.array([3]), np.array([1.0]),
        ...                 lp, lp, [np.array([4, 5, 6])])
        >>> round(float(np.exp(attack_scores(out, "min_k", k=0.5)[0])), 6)  # the lowest token
        0.1
    """
    if attack not in ATTACKS:
        raise ModeConnError(f"unknown attack {attack!r}; choose from {list(ATTACKS)}.")
    if attack == "loss":
        return -np.asarray(outputs.nll, dtype=np.float64)
    if attack == "zlib":
        if tokenizer is None:
            raise ModeConnError(
                "the zlib attack needs the text: pass tokenizer= (the data's tokenizer)."
            )
        texts = [tokenizer.decode(i.tolist(), skip_special_tokens=True) for i in outputs.answer_ids]
        sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
        return -np.asarray(outputs.nll, dtype=np.float64) / sizes
    per_token = outputs.token_logprobs if attack == "min_k" else outputs.mink_pp
    kk = _check_k(k)
    return np.array([_lowest_mean(v, kk) for v in per_token], dtype=np.float64)


def _chosen(attacks: Sequence[str] | str) -> tuple[str, ...]:
    chosen = (attacks,) if isinstance(attacks, str) else tuple(attacks)
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown or not chosen:
        raise ModeConnError(f"unknown attacks {unknown}; choose from {list(ATTACKS)}.")
    return chosen


def mia_from_outputs(
    member: LMOutputs,
    nonmember: LMOutputs,
    *,
    attacks: Sequence[str] | str = ATTACKS,
    k: float = 0.2,
    fprs: Sequence[float] = (0.01,),
    tokenizer: Any | None = None,
) -> dict[str, AttackResult]:
    """Every attack's AUC and TPR at low FPR from precomputed outputs.

    Example:
        >>> def outputs(nll):
        ...     lp = [np.array([-v]) for v in nll]
        ...     n = np.array(nll, dtype=float)
        ...     return LMOutputs(n, n, np.ones(len(n), dtype=np.int64), np.ones(len(n)), lp, lp,
        ...                      [np.array([1])] * len(n))
        >>> res = mia_from_outputs(outputs([0.1, 0.2]), outputs([0.3, 0.15]), attacks="loss")
        >>> res["loss"].auc
        0.75
    """
    chosen = _chosen(attacks)
    results = {}
    for attack in chosen:
        roc = roc_metrics(
            attack_scores(member, attack, k=k, tokenizer=tokenizer),
            attack_scores(nonmember, attack, k=k, tokenizer=tokenizer),
            fprs=fprs,
        )
        results[attack] = AttackResult(attack=attack, auc=roc.auc, tpr_at_fpr=roc.tpr_at_fpr)
    return results


def _tokenizer_of(data: Any) -> Any | None:
    try:
        return qa_source(data)[0].tokenizer
    except ModeConnError:
        return None


def lm_mia(
    model: nn.Module,
    *,
    member: Any,
    nonmember: Any,
    attacks: Sequence[str] | str = ATTACKS,
    k: float = 0.2,
    fprs: Sequence[float] = (0.01,),
    tokenizer: Any | None = None,
    task: Task | None = None,
    device: torch.device | str | None = None,
) -> dict[str, AttackResult]:
    """Membership attacks on a causal LM: members (e.g. the forget set) vs non-members.

    For unlearning, ``member`` is the forget set and ``nonmember`` held-out
    data of the same kind: an AUC near the retrained model's means the
    forget set no longer looks trained on (see :func:`privleak`).

    Args:
        model: The model under attack.
        member: Data the model (may have) trained on: a ``QADataset``, a ``Subset``
            of one, or a ``DataLoader`` of LM batches.
        nonmember: Data it never saw.
        attacks: Which of :data:`ATTACKS`.
        k: Token fraction of Min-K% and Min-K%++.
        fprs: The false-positive rates to report the TPR at.
        tokenizer: For ``zlib``; defaults to the tokenizer of ``member``'s QADataset.
        task: See :func:`~modeconn_unlearn.lm.metrics.lm_outputs`.
        device: Where to run.

    Returns:
        ``{attack: AttackResult}``.

    Example:
        >>> from modeconn_unlearn.lm import QADataset, fictitious_qa, qa_texts
        >>> from modeconn_unlearn.lm import tiny_causal_lm, train_tokenizer
        >>> pairs = fictitious_qa(4, 2, seed=0)
        >>> tok = train_tokenizer(qa_texts(pairs))
        >>> data = QADataset(pairs, tok)
        >>> model = tiny_causal_lm(len(tok), hidden_size=8, num_heads=2)
        >>> res = lm_mia(model, member=data.subset(range(4)), nonmember=data.subset(range(4, 8)))
        >>> sorted(res) == sorted(ATTACKS) and 0.0 <= res["min_k_pp"].auc <= 1.0
        True
    """
    chosen = _chosen(attacks)
    if tokenizer is None:
        tokenizer = _tokenizer_of(member) or _tokenizer_of(nonmember)
    options: dict[str, Any] = {"task": task, "device": device}
    return mia_from_outputs(
        lm_outputs(model, member, **options),
        lm_outputs(model, nonmember, **options),
        attacks=chosen,
        k=k,
        fprs=fprs,
        tokenizer=tokenizer,
    )


def privleak(auc: float, retrain_auc: float) -> float:
    """MUSE's privacy leakage, in percent: ``100 * (auc - retrain_auc) / retrain_auc``.

    ``auc`` is an attack's AUC (forget set as members, held-out data as
    non-members) on the unlearned model, ``retrain_auc`` the same on a model
    retrained without the forget set. 0 is ideal; with the forget set as the
    positive class, a positive value means the forget set still looks more
    trained-on than under retraining (under-unlearning) and a negative value
    that it looks less (over-unlearning).

    Raises:
        ModeConnError: An AUC outside [0, 1] or a zero ``retrain_auc``.

    Example:
        >>> privleak(0.75, 0.5)
        50.0
    """
    a, r = float(auc), float(retrain_auc)
    if not (0.0 <= a <= 1.0 and 0.0 < r <= 1.0):
        raise ModeConnError(
            f"privleak needs AUCs in [0, 1] and a positive retrain AUC, got {auc!r}, "
            f"{retrain_auc!r}."
        )
    return 100.0 * (a - r) / r
