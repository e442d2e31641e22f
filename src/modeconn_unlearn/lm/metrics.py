"""Language-model unlearning metrics: answer NLL, ROUGE-L, truth ratio, forget quality.

Also the answer probability, the token accuracy and greedy generation.

The per-example numbers come from one pass of the causal-LM task
(:func:`lm_outputs` returns :class:`LMOutputs`); every metric and attack in
:mod:`modeconn_unlearn.lm` is computed from them, so a model is run once per
data set however many numbers are wanted.

Formulas (``a`` an answer of ``|a|`` scored tokens, ``q`` its prompt):

* answer NLL: ``-(1/|a|) sum_i log p(a_i | q, a_<i)``; probability
  ``exp(-NLL) = p(a|q)^(1/|a|)`` (length-normalised, as in TOFU);
* token accuracy: share of answer tokens that are the greedy prediction;
* truth ratio (TOFU): ``R = exp(NLL(paraphrased) - mean_j NLL(perturbed_j))``,
  i.e. the geometric mean over perturbed answers of their normalised
  probability divided by that of the paraphrased answer; lower means the
  model prefers the true fact;
* forget quality (TOFU): the p-value of the two-sample Kolmogorov-Smirnov
  test between the truth ratios of the unlearned and of the retrained model
  on the forget set (:func:`scipy.stats.ks_2samp`); high means alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.stats import ks_2samp
from torch import Tensor, nn

from ..checks import positive_int
from ..errors import ModeConnError
from ..evaluation import collect_outputs
from ..modes import evaluating
from ..optional import require
from ..tasks import CausalLMTask, Task, resolve_task
from ..wrappers import module_device
from .batches import as_lm_loader
from .data import qa_source

__all__ = [
    "ForgetQuality",
    "LMOutputs",
    "RougeResult",
    "forget_quality",
    "greedy_generate",
    "lm_outputs",
    "rouge_l_recall",
    "truth_ratio",
    "truth_ratios",
    "truth_score",
]

_NEEDED = ("token_logprobs", "token_mask", "mink_pp", "nll_sum", "num_tokens", "labels")


@dataclass(frozen=True)
class LMOutputs:
    """Per-example results of a causal LM on a data set.

    Attributes:
        nll: ``(N,)`` mean NLL over each example's answer tokens.
        nll_sum: ``(N,)`` summed NLL.
        num_tokens: ``(N,)`` number of scored tokens.
        token_accuracy: ``(N,)`` share of answer tokens predicted greedily.
        token_logprobs: Per example, the log-probability of each scored token.
        mink_pp: Per example, the Min-K%++ score of each scored token.
        answer_ids: Per example, the scored token ids.
        token_correct: Per example, whether each scored token is the greedy
            prediction (empty when the task gives no ``"token_correct"`` signal).
    """

    nll: NDArray[np.float64]
    nll_sum: NDArray[np.float64]
    num_tokens: NDArray[np.int64]
    token_accuracy: NDArray[np.float64]
    token_logprobs: list[NDArray[np.float64]]
    mink_pp: list[NDArray[np.float64]]
    answer_ids: list[NDArray[np.int64]]
    token_correct: list[NDArray[np.bool_]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.nll)

    @property
    def probability(self) -> NDArray[np.float64]:
        """``(N,)`` length-normalised answer probability ``exp(-nll)``."""
        return np.exp(-self.nll)

    @property
    def sequence_probability(self) -> NDArray[np.float64]:
        """``(N,)`` probability of the whole answer ``exp(-nll_sum)``."""
        return np.exp(-self.nll_sum)

    def summary(self) -> dict[str, float]:
        """Means over the examples: ``nll``, ``probability``, ``token_accuracy``."""
        return {
            "nll": float(self.nll.mean()),
            "probability": float(self.probability.mean()),
            "token_accuracy": float(self.token_accuracy.mean()),
        }


def lm_outputs(
    model: nn.Module,
    data: Any,
    *,
    task: Task | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> LMOutputs:
    """Run ``model`` over ``data`` once and keep every per-example number.

    Args:
        model: A causal LM (HF outputs with ``.logits`` or plain logits).
        data: A ``DataLoader`` of LM batches, or a dataset such as a
            :class:`~modeconn_unlearn.lm.data.QADataset` (batched in order).
        task: A causal-LM task that returns the signals of
            :class:`~modeconn_unlearn.tasks.CausalLMTask` (the default).
        device: Where to run (a model is moved there); defaults to the model's device.
        batch_size: Batch size when ``data`` is a dataset.

    Returns:
        The :class:`LMOutputs`, in the order of ``data``, from one pass of
        :func:`~modeconn_unlearn.evaluation.collect_outputs` with the task's signals.

    Raises:
        ModeConnError: Empty data, or a task without the causal-LM signals.

    Example:
        >>> def model(input_ids, attention_mask):  # uniform over 4 tokens
        ...     return torch.zeros(*input_ids.shape, 4)
        >>> data = [(torch.tensor([0, 1, 2]), torch.tensor([-100, 1, 2]))]
        >>> out = lm_outputs(model, data)
        >>> round(float(out.nll[0]), 4), out.num_tokens.tolist()
        (1.3863, [2])
    """
    chosen = CausalLMTask() if task is None else resolve_task(task)
    loader = as_lm_loader(data, batch_size=batch_size)
    out = collect_outputs(model, loader, task=chosen, signals=True, device=device)
    missing = [k for k in _NEEDED if k not in out.signals]
    if missing:
        raise ModeConnError(
            f"task {chosen!r} returned no signals {missing}; use CausalLMTask() or a task with "
            "the same signals."
        )
    signals = out.signals
    scored = signals["token_mask"].bool()

    def per_example(key: str, dtype: torch.dtype) -> list[Any]:
        return [row[keep].to(dtype).numpy() for row, keep in zip(signals[key], scored, strict=True)]

    nll_sum = signals["nll_sum"].double().numpy()
    num = signals["num_tokens"].long().numpy()
    return LMOutputs(
        nll=nll_sum / num,
        nll_sum=nll_sum,
        num_tokens=num,
        token_accuracy=out.correct.numpy(),
        token_logprobs=per_example("token_logprobs", torch.float64),
        mink_pp=per_example("mink_pp", torch.float64),
        answer_ids=per_example("labels", torch.long),
        token_correct=per_example("token_correct", torch.bool)
        if "token_correct" in signals
        else [],
    )


# --------------------------------------------------------------------------- generation
def _logits(model: Any, ids: Tensor) -> Tensor:
    output = model(ids)
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ModeConnError(
            "greedy_generate needs a model returning (batch, seq, vocab) logits or an output "
            f"with .logits, got {type(logits).__name__}."
        )
    return logits


def greedy_generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts (the EOS token ends one and is dropped).

    Prompts of one length are decoded together, so no padding (and no
    position shift from left padding) is ever needed; any callable returning
    logits works, e.g. a ``CurveModel`` through ``lambda ids: curve(ids, t=0.5)``.

    Args:
        model: The language model.
        prompts: Token ids of each prompt (non-empty).
        max_new_tokens: Most tokens generated per prompt.
        eos_token_id: The token that ends a generation.
        device: Where to run; defaults to the model's device.
        batch_size: Prompts decoded at once.

    Returns:
        The generated ids of each prompt, without the prompt and the EOS token.

    Raises:
        ModeConnError: An empty prompt or a bad ``max_new_tokens``.

    Example:
        >>> class Echo(nn.Module):  # always predicts the token after the last one
        ...     def forward(self, ids):
        ...         return nn.functional.one_hot((ids + 1) % 5, 5).float()
        >>> greedy_generate(Echo(), [[0], [2, 3]], max_new_tokens=3, eos_token_id=4)
        [[1, 2, 3], []]
    """
    positive_int(max_new_tokens, "max_new_tokens")
    if any(len(p) == 0 for p in prompts):
        raise ModeConnError("greedy_generate got an empty prompt; every prompt needs a token.")
    if device is None:
        device = module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    results: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    modes = evaluating(model) if isinstance(model, nn.Module) else nullcontext()
    with modes, torch.no_grad():
        for members in by_length.values():
            for start in range(0, len(members), int(batch_size)):
                chunk = members[start : start + int(batch_size)]
                ids = torch.tensor([list(prompts[i]) for i in chunk], device=device)
                done = [False] * len(chunk)
                for _ in range(int(max_new_tokens)):
                    nxt = _logits(model, ids)[:, -1].argmax(dim=-1)
                    for row, token in enumerate(nxt.tolist()):
                        done[row] = done[row] or token == eos_token_id
                        if not done[row]:
                            results[chunk[row]].append(token)
                    if all(done):
                        break
                    ids = torch.cat([ids, nxt[:, None]], dim=1)
    return results


@dataclass(frozen=True)
class RougeResult:
    """ROUGE-L recall of greedy generations against the reference answers.

    Attributes:
        recall: ``(N,)`` ROUGE-L recall per example.
        generations: The decoded generations.
        references: The reference answers.
    """

    recall: NDArray[np.float64]
    generations: list[str]
    references: list[str]

    @property
    def mean(self) -> float:
        """Mean recall over the examples."""
        return float(self.recall.mean())


def rouge_l_recall(
    model: Any,
    data: Any,
    *,
    tokenizer: Any | None = None,
    max_new_tokens: int | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 32,
    use_stemmer: bool = False,
) -> RougeResult:
    """ROUGE-L recall of the model's greedy answers to the questions of ``data``.

    Scored with ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])`` (its
    default tokenization: lower case, alphanumeric words; Porter stemming with
    ``use_stemmer=True``, as OpenUnlearning scores), reference = the
    pair's answer, prediction = the generation decoded with
    ``skip_special_tokens=True``. As in TOFU and MUSE, the recall (the share
    of the reference's longest common subsequence found) is reported.

    Args:
        model: The language model.
        data: A :class:`~modeconn_unlearn.lm.data.QADataset` or a ``Subset`` of one.
        tokenizer: Decodes the generations; defaults to the dataset's.
        max_new_tokens: Most tokens generated; defaults to the longest answer
            (with EOS) of ``data``.
        device: Where to run.
        batch_size: Prompts decoded at once.
        use_stemmer: Stem words before matching them.

    Returns:
        The :class:`RougeResult`.

    Raises:
        ImportError: ``rouge-score`` is not installed.
        ModeConnError: ``data`` is not built on a ``QADataset``.

    Example:
        >>> from modeconn_unlearn.lm import QADataset, train_tokenizer, tiny_causal_lm
        >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
        >>> data = QADataset([("Who ?", "Ana Bo")], tok)
        >>> result = rouge_l_recall(tiny_causal_lm(len(tok), hidden_size=8, num_heads=2), data)
        >>> 0.0 <= result.mean <= 1.0
        True
    """
    scorer_module = require("rouge_score.rouge_scorer", "lm", feature="rouge_l_recall")
    base, indices = qa_source(data)
    tokenizer = base.tokenizer if tokenizer is None else tokenizer
    if max_new_tokens is None:
        max_new_tokens = max(len(base[i][0]["input_ids"]) - base.prompt_lengths[i] for i in indices)
    eos = getattr(tokenizer, "eos_token_id", None)
    generated = greedy_generate(
        model,
        [base.prompt_ids(i) for i in indices],
        max_new_tokens=max_new_tokens,
        eos_token_id=None if eos is None else int(eos),
        device=device,
        batch_size=batch_size,
    )
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    references = [base.pairs[i].answer for i in indices]
    scorer = scorer_module.RougeScorer(["rougeL"], use_stemmer=bool(use_stemmer))
    scores = [scorer.score(r, g)["rougeL"].recall for r, g in zip(references, texts, strict=True)]
    return RougeResult(np.array(scores, dtype=np.float64), generations=texts, references=references)


# --------------------------------------------------------------------------- truth ratio
def truth_ratio(paraphrased_nll: ArrayLike, perturbed_nll: ArrayLike) -> NDArray[np.float64]:
    """TOFU's truth ratio from answer NLLs: ``exp(nll_para - mean_j nll_pert_j)``.

    Args:
        paraphrased_nll: ``(N,)`` mean NLL of each paraphrased (true) answer.
        perturbed_nll: ``(N, P)`` mean NLL of each of the ``P`` perturbed answers.

    Returns:
        ``(N,)`` ratios; below 1 when the true answer is the more probable.

    Raises:
        ModeConnError: Shapes that do not match, or non-finite values.

    Example:
        >>> import math
        >>> r = truth_ratio([1.0], [[2.0, 4.0]])  # exp(1 - 3)
        >>> bool(abs(r[0] - math.exp(-2.0)) < 1e-12)
        True
    """
    para = np.asarray(paraphrased_nll, dtype=np.float64)
    pert = np.asarray(perturbed_nll, dtype=np.float64)
    if para.ndim != 1 or pert.ndim != 2 or pert.shape[0] != para.shape[0] or pert.shape[1] == 0:
        raise ModeConnError(
            f"truth_ratio needs paraphrased NLLs (N,) and perturbed NLLs (N, P), got "
            f"{para.shape} and {pert.shape}."
        )
    if not (np.isfinite(para).all() and np.isfinite(pert).all()):
        raise ModeConnError("truth_ratio got NaN or infinite NLLs.")
    ratios: NDArray[np.float64] = np.exp(para - pert.mean(axis=1))
    return ratios


def truth_ratios(
    model: nn.Module,
    data: Any,
    *,
    task: Task | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> NDArray[np.float64]:
    """Truth ratio of every pair of ``data``, from its paraphrased and perturbed answers.

    Args:
        model: The language model.
        data: A :class:`~modeconn_unlearn.lm.data.QADataset` (or a ``Subset``)
            whose pairs have ``paraphrased_answer`` and ``perturbed_answers``.
        task: See :func:`lm_outputs`.
        device: Where to run.
        batch_size: Batch size.

    Returns:
        ``(N,)`` ratios (:func:`truth_ratio`).

    Raises:
        ModeConnError: A pair without a paraphrased answer, or pairs with
            different numbers of perturbed answers.

    Example:
        >>> from modeconn_unlearn.lm import fictitious_qa, qa_texts, QADataset, train_tokenizer
        >>> from modeconn_unlearn.lm import tiny_causal_lm
        >>> pairs = fictitious_qa(2, 2, seed=0)
        >>> tok = train_tokenizer(qa_texts(pairs))
        >>> model = tiny_causal_lm(len(tok), hidden_size=8, num_heads=2)
        >>> truth_ratios(model, QADataset(pairs, tok)).shape
        (4,)
    """
    base, indices = qa_source(data)
    pairs = [base.pairs[i] for i in indices]
    if any(p.paraphrased_answer is None for p in pairs):
        raise ModeConnError("truth_ratios needs a paraphrased_answer on every pair.")
    counts = {len(p.perturbed_answers) for p in pairs}
    if len(counts) != 1 or 0 in counts:
        raise ModeConnError(
            f"truth_ratios needs the same positive number of perturbed answers on every pair, "
            f"got {sorted(counts)}."
        )
    questions = base.subset(indices)

    def nll(answers: list[str]) -> NDArray[np.float64]:
        data = questions.with_answers(answers)
        return lm_outputs(model, data, task=task, device=device, batch_size=batch_size).nll

    para_nll = nll([str(p.paraphrased_answer) for p in pairs])
    perturbed = [nll([p.perturbed_answers[j] for p in pairs]) for j in range(counts.pop())]
    return truth_ratio(para_nll, np.stack(perturbed, axis=1))


def truth_score(ratios: ArrayLike, *, kind: Literal["retain", "forget"]) -> float:
    """TOFU's summary of truth ratios: ``mean(max(0, 1 - R))`` (retain) or ``mean(min(R, 1/R))``.

    On retained data a good model prefers the truth (score near 1); on the
    forget set TOFU reports ``min(R, 1/R)``, which is 1 when the true and
    the perturbed answers are equally likely.

    Example:
        >>> truth_score([0.25, 2.0], kind="retain"), truth_score([0.25, 2.0], kind="forget")
        (0.375, 0.375)
    """
    r = np.asarray(ratios, dtype=np.float64).ravel()
    if r.size == 0 or not np.isfinite(r).all() or (r <= 0).any():
        raise ModeConnError("truth_score needs a non-empty array of positive finite ratios.")
    if kind == "retain":
        return float(np.maximum(0.0, 1.0 - r).mean())
    if kind == "forget":
        return float(np.minimum(r, 1.0 / r).mean())
    raise ModeConnError(f"kind must be 'retain' or 'forget', got {kind!r}.")


@dataclass(frozen=True)
class ForgetQuality:
    """The KS test behind TOFU's forget quality.

    Attributes:
        pvalue: The forget quality (high: the two models' truth ratios are alike).
        statistic: The Kolmogorov-Smirnov statistic.
    """

    pvalue: float
    statistic: float


def forget_quality(unlearned_ratios: ArrayLike, retrained_ratios: ArrayLike) -> ForgetQuality:
    """TOFU's forget quality: KS test between two models' truth ratios on the forget set.

    Uses :func:`scipy.stats.ks_2samp` (two-sided).

    Example:
        >>> fq = forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
        >>> fq.pvalue, fq.statistic
        (1.0, 0.0)
    """
    a = np.asarray(unlearned_ratios, dtype=np.float64).ravel()
    b = np.asarray(retrained_ratios, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ModeConnError("forget_quality needs truth ratios of both models (non-empty).")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ModeConnError("forget_quality got NaN or infinite truth ratios.")
    result = ks_2samp(a, b)
    return ForgetQuality(pvalue=float(result.pvalue), statistic=float(result.statistic))
