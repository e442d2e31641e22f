"""OpenUnlearning's TOFU metrics, under OpenUnlearning's names, from one call.

:func:`evaluate_openunlearning` scores a model on forget, retain and holdout QA
data and returns the numbers OpenUnlearning reports for TOFU, keyed by the same
names, so that results can be set beside OpenUnlearning's. Everything comes from
the library's one pass over the data (:func:`~modeconn_unlearn.lm.metrics.lm_outputs`)
and its metric functions. With ``R`` the truth ratio of
:func:`~modeconn_unlearn.lm.metrics.truth_ratio` (perturbed over paraphrased
answer probability, each length-normalised) and an answer of ``n`` tokens:

* ``forget_quality``: p-value of the two-sample KS test between the forget-set
  truth ratios of the model and of a reference (retain) model; omitted, with a
  note, when no reference is given;
* ``forget_truth_ratio``: ``mean(min(R, 1/R))`` on the forget set;
  ``retain_Truth_Ratio``: ``mean(max(0, 1 - R))`` on the retain set;
* ``forget_Q_A_Prob`` / ``retain_Q_A_Prob``: mean of ``p(answer | question)^(1/n)``;
* ``forget_Q_A_ROUGE`` / ``retain_Q_A_ROUGE``: mean ROUGE-L recall of the greedy
  answer (stemmed words);
* ``exact_memorization``: mean over forget answers of the share of tokens that
  are the greedy prediction given the true prefix;
* ``extraction_strength``: mean over forget answers of ``1 - k/n``, ``k`` the
  first position from which every token is the greedy prediction (at most
  ``n - 1``, so an answer with no such suffix scores ``1/n``, as in OpenUnlearning);
* ``mia_min_k`` / ``mia_min_k_plus_plus``: ROC AUC of Min-K% / Min-K%++
  (``k = 0.4``), forget answers as members, holdout answers as non-members;
* ``privleak``: ``100 * (ref_auc - auc) / (1 - ref_auc)`` for the chosen attack
  (OpenUnlearning's form of MUSE's privacy leakage: ``(1 - AUC)`` relative to
  the reference model's), with the reference model's AUC or 0.5.

As in OpenUnlearning, exact memorisation, extraction strength and the attacks
leave out an answer's final EOS token; the probabilities and truth ratios keep it.
``model_utility`` (a harmonic mean that also needs the real-authors and
world-facts sets) is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from ..checks import as_float
from ..errors import ModeConnError
from .attacks import mia_from_outputs, privleak
from .data import qa_source
from .metrics import (
    LMOutputs,
    forget_quality,
    lm_outputs,
    rouge_l_recall,
    truth_ratios,
    truth_score,
)

__all__ = [
    "OpenUnlearningResult",
    "evaluate_openunlearning",
    "exact_memorization",
    "extraction_strength",
]

#: The metrics in report order (OpenUnlearning's names).
_ORDER = (
    "forget_quality",
    "forget_truth_ratio",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "extraction_strength",
    "exact_memorization",
    "mia_min_k",
    "mia_min_k_plus_plus",
    "privleak",
)

#: OpenUnlearning's attack names for the attacks of :data:`~modeconn_unlearn.lm.attacks.ATTACKS`.
_MIA_NAMES = {"min_k": "mia_min_k", "min_k_pp": "mia_min_k_plus_plus"}


def _without_eos(outputs: LMOutputs, eos_token_id: int | None) -> LMOutputs:
    """``outputs`` with each answer's final token dropped where it is ``eos_token_id``."""
    if eos_token_id is None:
        return outputs
    keep = [
        len(ids) - 1 if len(ids) and int(ids[-1]) == eos_token_id else len(ids)
        for ids in outputs.answer_ids
    ]
    cut: dict[str, Any] = {
        name: [v[:n] for v, n in zip(getattr(outputs, name), keep, strict=True)]
        for name in ("token_logprobs", "mink_pp", "answer_ids", "token_correct")
    }
    nll_sum = np.array([-float(v.sum()) for v in cut["token_logprobs"]], dtype=np.float64)
    num = np.array(keep, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        nll = np.where(num > 0, nll_sum / np.maximum(num, 1), np.nan)
    return replace(outputs, nll=nll, nll_sum=nll_sum, num_tokens=num, **cut)


def _hits(outputs: LMOutputs, eos_token_id: int | None, name: str) -> list[NDArray[np.bool_]]:
    if len(outputs.token_correct) != len(outputs.answer_ids):
        raise ModeConnError(
            f"{name} needs whether each answer token is the greedy prediction; compute the "
            "outputs with lm_outputs and a task that gives the 'token_correct' signal "
            "(CausalLMTask does)."
        )
    return _without_eos(outputs, eos_token_id).token_correct


def exact_memorization(
    outputs: LMOutputs, *, eos_token_id: int | None = None
) -> NDArray[np.float64]:
    """Exact memorisation per answer: the share of its tokens that are the greedy prediction.

    Teacher-forced (each token predicted from the true prefix). An answer's
    final token is left out when it is ``eos_token_id``, as in OpenUnlearning;
    an answer with no token left gets NaN.

    Args:
        outputs: Per-example results of :func:`~modeconn_unlearn.lm.metrics.lm_outputs`.
        eos_token_id: The tokenizer's EOS id, or ``None`` to keep every token.

    Returns:
        ``(N,)`` values in [0, 1].

    Raises:
        ModeConnError: ``outputs`` carry no per-token correctness.

    Example:
        >>> out = LMOutputs(np.ones(1), np.ones(1), np.array([4]), np.ones(1), [np.zeros(4)],
        ...                 [np.zeros(4)], [np.array([5, 6, 7, 3])],
        ...                 [np.array([True, False, True, True])])
        >>> exact_memorization(out, eos_token_id=3).tolist()  # 2 of the 3 tokens before EOS
        [0.6666666666666666]
    """
    return np.array(
        [float(h.mean()) if len(h) else math.nan for h in _hits(outputs, eos_token_id, "EM")],
        dtype=np.float64,
    )


def extraction_strength(
    outputs: LMOutputs, *, eos_token_id: int | None = None
) -> NDArray[np.float64]:
    """Extraction strength per answer: ``1 - k/n``, ``k`` where the greedily right suffix starts.

    ``k`` is the first position from which every token of the answer is the
    greedy prediction given the true prefix, at most ``n - 1`` (OpenUnlearning's
    convention: an answer with no right suffix scores ``1/n``). An answer's final
    token is left out when it is ``eos_token_id``; an answer with no token left
    gets NaN.

    Args:
        outputs: Per-example results of :func:`~modeconn_unlearn.lm.metrics.lm_outputs`.
        eos_token_id: The tokenizer's EOS id, or ``None`` to keep every token.

    Returns:
        ``(N,)`` values in (0, 1].

    Raises:
        ModeConnError: ``outputs`` carry no per-token correctness.

    Example:
        >>> out = LMOutputs(np.ones(1), np.ones(1), np.array([4]), np.ones(1), [np.zeros(4)],
        ...                 [np.zeros(4)], [np.array([5, 6, 7, 8])],
        ...                 [np.array([True, False, True, True])])
        >>> extraction_strength(out).tolist()  # the suffix from position 2 is right: 1 - 2/4
        [0.5]
    """
    values = []
    for hits in _hits(outputs, eos_token_id, "extraction strength"):
        n = len(hits)
        if n == 0:
            values.append(math.nan)
            continue
        wrong = np.flatnonzero(~hits)
        start = int(wrong[-1]) + 1 if len(wrong) else 0
        values.append(1.0 - min(start, n - 1) / n)
    return np.array(values, dtype=np.float64)


@dataclass(frozen=True)
class OpenUnlearningResult:
    """OpenUnlearning's TOFU metrics of one model.

    Attributes:
        metrics: ``{OpenUnlearning name: aggregated value}`` for every metric
            that could be computed (see :mod:`modeconn_unlearn.lm.openunlearning`).
        per_example: Per-example values behind them, e.g. ``"forget_truth_ratio"``
            holds the raw truth ratios ``R`` of the forget set (what a later call
            needs as the reference's).
        notes: Why a metric is missing or how it was obtained (e.g. the default
            reference AUC of privleak).
    """

    metrics: dict[str, float]
    per_example: dict[str, NDArray[np.float64]]
    notes: tuple[str, ...]

    def __getitem__(self, name: str) -> float:
        """The aggregated value of metric ``name``.

        Raises:
            KeyError: The metric was not computed (see :attr:`notes`).
        """
        if name not in self.metrics:
            raise KeyError(
                f"{name!r} was not computed; computed: {sorted(self.metrics)}; notes: "
                f"{list(self.notes)}"
            )
        return self.metrics[name]

    def to_dict(self) -> dict[str, float]:
        """The aggregated values, as OpenUnlearning's summary file lists them."""
        return dict(self.metrics)

    def __str__(self) -> str:
        """One line per metric, then the notes: what ``print(result)`` shows.

        Example:
            >>> print(OpenUnlearningResult({"privleak": -12.5}, {}, ("a note",)))
            privleak                  -12.500
            note: a note
        """
        lines = [f"{name:24s} {value:8.3f}" for name, value in self.metrics.items()]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value:.3g}" for name, value in self.metrics.items())
        return f"OpenUnlearningResult({shown}; {len(self.notes)} notes)"


def _mean(values: NDArray[np.float64]) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _has_truth_answers(data: Any) -> bool:
    base, indices = qa_source(data)
    pairs = [base.pairs[i] for i in indices]
    counts = {len(p.perturbed_answers) for p in pairs}
    paraphrased = all(p.paraphrased_answer is not None for p in pairs)
    return paraphrased and len(counts) == 1 and 0 not in counts


def _eos_of(data: Any) -> int | None:
    eos = getattr(qa_source(data)[0].tokenizer, "eos_token_id", None)
    return None if eos is None else int(eos)


def _attack_aucs(
    model: nn.Module, forget: Any, holdout: Any, *, k: float, options: Mapping[str, Any]
) -> dict[str, float]:
    eos = _eos_of(forget)
    results = mia_from_outputs(
        _without_eos(lm_outputs(model, forget, **options), eos),
        _without_eos(lm_outputs(model, holdout, **options), eos),
        attacks=tuple(_MIA_NAMES),
        k=k,
    )
    return {_MIA_NAMES[attack]: result.auc for attack, result in results.items()}


def evaluate_openunlearning(
    model: nn.Module,
    *,
    forget: Any,
    retain: Any,
    holdout: Any | None = None,
    reference: nn.Module | OpenUnlearningResult | None = None,
    reference_truth_ratios: ArrayLike | None = None,
    reference_auc: float | None = None,
    privleak_attack: Literal["min_k", "min_k_pp"] = "min_k",
    k: float = 0.4,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> OpenUnlearningResult:
    """OpenUnlearning's TOFU metrics of ``model``, under OpenUnlearning's names, in one call.

    A reference (a model trained without the forget set, e.g. OpenUnlearning's
    retain model) is needed only for ``forget_quality`` and the AUC behind
    ``privleak``. Give the model itself, the result of this function on it
    (evaluate the reference once, reuse it for every model), or its numbers
    (``reference_truth_ratios``, ``reference_auc``). Without one,
    ``forget_quality`` is left out and ``privleak`` uses the reference AUC 0.5
    (OpenUnlearning's default); :attr:`OpenUnlearningResult.notes` says so.

    Args:
        model: The model to score (e.g. an unlearned one).
        forget: Forget QA data: a :class:`~modeconn_unlearn.lm.data.QADataset`
            or a ``Subset`` of one, whose pairs have paraphrased and perturbed
            answers (TOFU's ``forget10_perturbed``; see
            :func:`~modeconn_unlearn.lm.records.qa_pairs`).
        retain: Retain QA data, the same way (TOFU's ``retain_perturbed``).
        holdout: QA data never trained on (TOFU's ``holdout10``), the
            non-members of the attacks; without it the attacks and ``privleak``
            are left out.
        reference: The reference model, or its :class:`OpenUnlearningResult`.
        reference_truth_ratios: The reference model's raw forget-set truth
            ratios (instead of ``reference``).
        reference_auc: The reference model's AUC of ``privleak_attack``
            (instead of ``reference``).
        privleak_attack: The attack behind ``privleak``: ``"min_k"`` (Min-K%, as
            OpenUnlearning's TOFU and MUSE configurations) or ``"min_k_pp"`` (Min-K%++).
        k: Token fraction of Min-K% and Min-K%++.
        device: Where to run; defaults to the model's device.
        batch_size: Examples per forward pass.

    Returns:
        The :class:`OpenUnlearningResult`.

    Raises:
        ModeConnError: Data not built on a ``QADataset``, ``reference`` together
            with ``reference_truth_ratios`` or ``reference_auc``, or an unknown
            ``privleak_attack``.

    Example:
        >>> from modeconn_unlearn.lm import QADataset, fictitious_qa, group_split
        >>> from modeconn_unlearn.lm import qa_texts, tiny_causal_lm, train_tokenizer
        >>> pairs = fictitious_qa(6, 2, num_perturbed=2, seed=0)
        >>> tok = train_tokenizer(qa_texts(pairs))
        >>> train, holdout = group_split(QADataset(pairs, tok), forget_ratio=0.34, seed=0)
        >>> retain, forget = group_split(train, forget_ratio=0.25, seed=0)
        >>> model = tiny_causal_lm(len(tok), hidden_size=8, num_layers=1, num_heads=2)
        >>> result = evaluate_openunlearning(model, forget=forget, retain=retain, holdout=holdout,
        ...                                  reference_auc=0.5)
        >>> list(result.metrics)[:3], "forget_quality" in result.metrics
        (['forget_truth_ratio', 'forget_Q_A_Prob', 'forget_Q_A_ROUGE'], False)
    """
    data_of = {"forget": forget, "retain": retain, "holdout": holdout}
    _check_request(reference, reference_truth_ratios, reference_auc, privleak_attack, k, data_of)
    options: dict[str, Any] = {"device": device, "batch_size": batch_size}
    metrics: dict[str, float] = {}
    per_example: dict[str, NDArray[np.float64]] = {}
    notes: list[str] = []
    for split, data in (("forget", forget), ("retain", retain)):
        per_example.update(_answer_values(model, data, split, options))
        name = f"{split}_truth_ratio" if split == "forget" else "retain_Truth_Ratio"
        if _has_truth_answers(data):
            ratios = truth_ratios(model, data, **options)
            per_example[name] = ratios
            metrics[name] = truth_score(ratios, kind="forget" if split == "forget" else "retain")
        else:
            notes.append(
                f"{name} left out: not every {split} pair has a paraphrased answer and the same "
                "number of perturbed answers."
            )
    metrics.update({n: _mean(v) for n, v in per_example.items() if n not in metrics})
    reference_ratios = _reference_ratios(reference, reference_truth_ratios, forget, options)
    if "forget_truth_ratio" not in per_example:
        notes.append("forget_quality left out: the forget set has no truth ratios.")
    elif reference_ratios is None:
        notes.append(
            "forget_quality left out: it compares with a reference (retain) model's truth "
            "ratios; pass reference= (the model or its result) or reference_truth_ratios=."
        )
    else:
        quality = forget_quality(per_example["forget_truth_ratio"], reference_ratios)
        metrics["forget_quality"] = quality.pvalue
    if holdout is None:
        notes.append("mia_* and privleak left out: they need holdout= (data never trained on).")
    else:
        metrics.update(_attack_aucs(model, forget, holdout, k=k, options=options))
        attack = _MIA_NAMES[privleak_attack]
        ref_auc = reference_auc
        if isinstance(reference, OpenUnlearningResult):
            ref_auc = reference.metrics.get(attack)
        elif isinstance(reference, nn.Module):
            ref_auc = _attack_aucs(reference, forget, holdout, k=k, options=options)[attack]
        if ref_auc is None:
            ref_auc = 0.5
            notes.append(
                "privleak uses the reference AUC 0.5 (OpenUnlearning's default): no reference "
                "AUC was given or computed."
            )
        if ref_auc >= 1.0:
            notes.append("privleak left out: the reference AUC is 1, so 1 - AUC divides by 0.")
        else:
            metrics["privleak"] = privleak(1.0 - metrics[attack], 1.0 - float(ref_auc))
    notes.append(
        "model_utility not computed: it also needs TOFU's real-authors and world-facts sets."
    )
    ordered = {name: metrics[name] for name in _ORDER if name in metrics}
    return OpenUnlearningResult(metrics=ordered, per_example=per_example, notes=tuple(notes))


def _check_request(
    reference: Any,
    reference_truth_ratios: ArrayLike | None,
    reference_auc: float | None,
    privleak_attack: str,
    k: float,
    data: Mapping[str, Any],
) -> None:
    """Refuse a bad request before any model runs."""
    if privleak_attack not in _MIA_NAMES:
        raise ModeConnError(
            f"privleak_attack must be one of {sorted(_MIA_NAMES)}, got {privleak_attack!r}."
        )
    if reference is not None and not isinstance(reference, (nn.Module, OpenUnlearningResult)):
        raise ModeConnError(
            "reference must be the reference model (an nn.Module) or its OpenUnlearningResult, "
            f"got {type(reference).__name__}."
        )
    if reference is not None and (reference_truth_ratios is not None or reference_auc is not None):
        raise ModeConnError(
            "give the reference either as reference= (a model or its OpenUnlearningResult) or "
            "as its numbers (reference_truth_ratios=, reference_auc=), not both."
        )
    if reference_auc is not None and not 0.0 <= as_float(reference_auc, "reference_auc") <= 1.0:
        raise ModeConnError(f"reference_auc must lie in [0, 1], got {reference_auc!r}.")
    if not 0.0 < as_float(k, "k") <= 1.0:
        raise ModeConnError(f"k must lie in (0, 1] (a fraction of the tokens), got {k!r}.")
    for name, part in data.items():
        if part is None and name == "holdout":
            continue
        try:
            qa_source(part)
        except ModeConnError as error:
            raise ModeConnError(f"{name}=: {error}") from None


def _answer_values(
    model: nn.Module, data: Any, split: str, options: Mapping[str, Any]
) -> dict[str, NDArray[np.float64]]:
    """Per-example probability and ROUGE-L recall; on the forget set also ES and EM."""
    outputs = lm_outputs(model, data, **options)
    values = {
        f"{split}_Q_A_Prob": outputs.probability,
        f"{split}_Q_A_ROUGE": rouge_l_recall(model, data, use_stemmer=True, **options).recall,
    }
    if split == "forget":
        eos = _eos_of(data)
        values["extraction_strength"] = extraction_strength(outputs, eos_token_id=eos)
        values["exact_memorization"] = exact_memorization(outputs, eos_token_id=eos)
    return values


def _reference_ratios(
    reference: nn.Module | OpenUnlearningResult | None,
    given: ArrayLike | None,
    forget: Any,
    options: Mapping[str, Any],
) -> NDArray[np.float64] | None:
    if given is not None:
        return np.asarray(given, dtype=np.float64)
    if isinstance(reference, OpenUnlearningResult):
        return reference.per_example.get("forget_truth_ratio")
    if isinstance(reference, nn.Module) and _has_truth_answers(forget):
        return truth_ratios(reference, forget, **options)
    return None
