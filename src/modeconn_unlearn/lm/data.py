"""Question-answer data for causal language models.

A :class:`QAPair` (question, answer, the entity it is about, optionally a
paraphrased and some perturbed answers) becomes a tokenized example whose
labels are ``-100`` on the prompt, so that :class:`~modeconn_unlearn.tasks.CausalLMTask`
scores the answer tokens only. :class:`QADataset` holds such examples for any
Hugging Face tokenizer (chat template and system prompt optional; batching
lives in :mod:`modeconn_unlearn.lm.batches`, records in TOFU's form are read by
:mod:`modeconn_unlearn.lm.records`); :func:`group_split` forgets every fact of
some entities (as TOFU forgets authors) and returns datasets ready for the loaders;
:func:`refusal_dataset` replaces the answers by refusals (the IDK objective).

Items of a :class:`QADataset` are ``(inputs, labels)`` with
``inputs = {"input_ids", "attention_mask"}``, so the dataset also works with
:class:`~modeconn_unlearn.data.UnlearnDataset`; with ``pad_to_max_length=True``
all items have one length and the library's default collate batches them too
(this is what ``mcu.unlearn`` and ``mcu.fit_curve`` use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import IGNORE_INDEX, as_dataset, seeded_order
from ..errors import ModeConnError

__all__ = [
    "DEFAULT_PROMPT",
    "QADataset",
    "QAPair",
    "group_split",
    "qa_source",
    "refusal_dataset",
    "tokenize_qa",
]

#: The prompt format used when no chat template is asked for.
DEFAULT_PROMPT = "Question: {question}\nAnswer: "


@dataclass(frozen=True)
class QAPair:
    """One question and its answer.

    Attributes:
        question: The question.
        answer: The answer the model is trained on.
        group: The entity the fact belongs to (forgetting removes whole groups).
        paraphrased_answer: The answer in other words (for the truth ratio).
        perturbed_answers: Wrong answers in the same form (for the truth ratio).

    Example:
        >>> QAPair("Where was Ana born?", "in Lima", group="Ana").group
        'Ana'
    """

    question: str
    answer: str
    group: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    return [int(i) for i in ids]


def tokenize_qa(
    tokenizer: Any,
    question: str,
    answer: str,
    *,
    prompt_template: str = DEFAULT_PROMPT,
    chat_template: bool = False,
    system_prompt: str | None = None,
    add_eos: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer, and labels with ``-100`` on the prompt.

    Prompt and answer are tokenized separately and concatenated, so the label
    boundary is exact for any tokenizer (a BPE merge across it cannot move it).
    The prompt gets the tokenizer's special tokens (e.g. BOS); the answer gets
    none, then the EOS token when ``add_eos`` and the tokenizer has one.

    Args:
        tokenizer: Any Hugging Face tokenizer (``tokenizer(text, add_special_tokens=...)``).
        question: The question.
        answer: The answer.
        prompt_template: Format of the prompt with a ``{question}`` field (not
            used with ``chat_template=True``).
        chat_template: Build the prompt with ``tokenizer.apply_chat_template``
            (one user turn and the generation prompt); the tokenizer must have one.
        system_prompt: A system turn before the question (with ``chat_template=True``).
        add_eos: Append the EOS token to the answer.

    Returns:
        ``(input_ids, labels)``, two lists of equal length.

    Raises:
        ModeConnError: No chat template although one was asked for, a system
            prompt without one, a template without ``{question}``, or an answer
            that tokenizes to nothing.

    Example:
        >>> from modeconn_unlearn.lm import train_tokenizer
        >>> tok = train_tokenizer(["Question: Who ? Answer: Ana"])
        >>> ids, labels = tokenize_qa(tok, "Who ?", "Ana")
        >>> [t for t, l in zip(tok.convert_ids_to_tokens(ids), labels) if l != -100]
        ['Ana', '</s>']
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ModeConnError(
                "chat_template=True but the tokenizer has no chat template; set "
                "tokenizer.chat_template (a Jinja string) or use chat_template=False."
            )
        turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
        turns.append({"role": "user", "content": question})
        prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        prompt_ids = _encode(tokenizer, prompt, special=False)
    else:
        if system_prompt:
            raise ModeConnError(
                "system_prompt needs chat_template=True (the tokenizer's template places it); "
                "with a plain prompt_template, write it into the template."
            )
        if "{question}" not in prompt_template:
            raise ModeConnError(
                f"prompt_template must contain '{{question}}', got {prompt_template!r}."
            )
        prompt_ids = _encode(tokenizer, prompt_template.format(question=question), special=True)
    answer_ids = _encode(tokenizer, answer, special=False)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        answer_ids.append(int(eos))
    if not answer_ids:
        raise ModeConnError(
            f"the answer {answer!r} tokenizes to no token; give a non-empty answer."
        )
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


class QADataset(Dataset[tuple[dict[str, Tensor], Tensor]]):
    """Tokenized question-answer examples: items ``({"input_ids", "attention_mask"}, labels)``.

    Args:
        pairs: The :class:`QAPair` items (or ``(question, answer)`` tuples).
        tokenizer: Any Hugging Face tokenizer.
        prompt_template: See :func:`tokenize_qa`.
        chat_template: See :func:`tokenize_qa`.
        system_prompt: See :func:`tokenize_qa`.
        add_eos: See :func:`tokenize_qa`.
        max_length: Longest allowed example; a longer one raises (truncation
            could cut off the answer).
        pad_to_max_length: Pad every item to ``max_length`` (labels ``-100``,
            attention 0), so that default collation batches them.

    Attributes:
        pairs: The pairs, in order.
        groups: The group of each pair (``None`` where not given).
        pad_token_id: The id used for padding (the tokenizer's pad token, else
            its EOS token, else 0; padded positions are never attended or scored).
        prompt_lengths: Number of prompt tokens of each example.
        indices: Where each example sits in the dataset it was taken from (by
            :meth:`subset` or :func:`group_split`); ``0 .. N-1`` for a dataset
            built from pairs.

    Raises:
        ModeConnError: No pairs, a pair of the wrong type, an example longer
            than ``max_length``, or ``pad_to_max_length`` without ``max_length``.

    Example:
        >>> from modeconn_unlearn.lm import train_tokenizer
        >>> pairs = [QAPair("Who ?", "Ana", group="a"), QAPair("Who now ?", "Bo", group="b")]
        >>> tok = train_tokenizer(["Question: Who now ? Answer: Ana Bo"])
        >>> ds = QADataset(pairs, tok, max_length=12, pad_to_max_length=True)
        >>> inputs, labels = ds[0]
        >>> tuple(inputs["input_ids"].shape), int((labels != -100).sum()), ds.groups
        ((12,), 2, ['a', 'b'])
    """

    def __init__(
        self,
        pairs: Sequence[QAPair | tuple[str, str]],
        tokenizer: Any,
        *,
        prompt_template: str = DEFAULT_PROMPT,
        chat_template: bool = False,
        system_prompt: str | None = None,
        add_eos: bool = True,
        max_length: int | None = None,
        pad_to_max_length: bool = False,
    ) -> None:
        self.pairs = [_as_pair(p, i) for i, p in enumerate(pairs)]
        if not self.pairs:
            raise ModeConnError("QADataset got no pairs; give at least one QAPair.")
        if pad_to_max_length and max_length is None:
            raise ModeConnError("pad_to_max_length=True needs max_length (an int).")
        if max_length is not None and int(max_length) < 2:
            raise ModeConnError(f"max_length must be an int >= 2, got {max_length!r}.")
        self.tokenizer = tokenizer
        tokenizing: dict[str, Any] = {
            "prompt_template": prompt_template,
            "chat_template": chat_template,
            "system_prompt": system_prompt,
            "add_eos": add_eos,
        }
        self.options = {
            **tokenizing,
            "max_length": max_length,
            "pad_to_max_length": pad_to_max_length,
        }
        ids = (getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id"))
        self.pad_token_id = int(next((i for i in ids if i is not None), 0))
        self._examples: list[tuple[list[int], list[int]]] = []
        for i, pair in enumerate(self.pairs):
            ids, labels = tokenize_qa(tokenizer, pair.question, pair.answer, **tokenizing)
            if max_length is not None and len(ids) > int(max_length):
                raise ModeConnError(
                    f"pair {i} has {len(ids)} tokens, more than max_length={max_length}; "
                    "raise max_length or shorten the question/answer."
                )
            self._examples.append((ids, labels))
        self.prompt_lengths = [labels.count(IGNORE_INDEX) for _, labels in self._examples]
        self.indices = list(range(len(self._examples)))
        # Set by group_split: the QADataset this one was cut from and the positions in it.
        self._source: tuple[QADataset, list[int]] | None = None

    @property
    def groups(self) -> list[str | None]:
        """The group (entity) of each pair."""
        return [p.group for p in self.pairs]

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        ids, labels = self._examples[index]
        length = len(ids)
        if self.options["pad_to_max_length"]:
            extra = int(self.options["max_length"]) - length
            ids = ids + [self.pad_token_id] * extra
            labels = labels + [IGNORE_INDEX] * extra
        mask = [1] * length + [0] * (len(ids) - length)
        inputs = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
        return inputs, torch.tensor(labels, dtype=torch.long)

    def prompt_ids(self, index: int) -> list[int]:
        """The prompt's token ids of example ``index`` (what generation starts from)."""
        return list(self._examples[index][0][: self.prompt_lengths[index]])

    def with_answers(self, answers: Sequence[str]) -> QADataset:
        """The same questions with other answers (e.g. paraphrased), tokenized alike.

        Example:
            >>> from modeconn_unlearn.lm import train_tokenizer
            >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
            >>> ds = QADataset([QAPair("Who ?", "Ana")], tok).with_answers(["Bo"])
            >>> ds.pairs[0].answer
            'Bo'
        """
        if len(answers) != len(self.pairs):
            raise ModeConnError(
                f"with_answers needs one answer per pair: {len(self.pairs)} pairs, "
                f"{len(answers)} answers."
            )
        pairs = [replace(p, answer=str(a)) for p, a in zip(self.pairs, answers, strict=True)]
        return QADataset(pairs, self.tokenizer, **self.options)

    def subset(self, indices: Sequence[int]) -> QADataset:
        """A new dataset of the pairs at ``indices``, tokenized alike; its ``indices`` are these.

        Example:
            >>> from modeconn_unlearn.lm import train_tokenizer
            >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
            >>> part = QADataset([("Who ?", "Ana"), ("Who ?", "Bo")], tok).subset([1])
            >>> part.pairs[0].answer, part.indices
            ('Bo', [1])
        """
        positions = [int(i) for i in indices]
        return self._taken(positions, indices=positions)

    def _taken(self, positions: Sequence[int], *, indices: Sequence[int]) -> QADataset:
        # A view needs no new tokenization: the examples are copied as they are.
        if not positions:
            raise ModeConnError("subset got no indices; a QADataset needs at least one pair.")
        size = len(self._examples)
        outside = [i for i in positions if not -size <= i < size]
        if outside:
            raise ModeConnError(f"indices {outside[:8]} are outside 0..{size - 1}.")
        taken = QADataset.__new__(QADataset)
        taken.pairs = [self.pairs[i] for i in positions]
        taken.tokenizer = self.tokenizer
        taken.options = dict(self.options)
        taken.pad_token_id = self.pad_token_id
        taken._examples = [self._examples[i] for i in positions]
        taken.prompt_lengths = [self.prompt_lengths[i] for i in positions]
        taken.indices = [int(i) for i in indices]
        taken._source = None
        return taken


def _as_pair(item: Any, index: int) -> QAPair:
    if isinstance(item, QAPair):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item):
        return QAPair(item[0], item[1])
    raise ModeConnError(
        f"pair {index} is a {type(item).__name__}; give QAPair(question, answer, group=...) "
        "or a (question, answer) tuple of strings."
    )


def qa_source(data: Any) -> tuple[QADataset, list[int]]:
    """The :class:`QADataset` behind ``data`` and the indices of ``data`` in it.

    ``data`` is a :class:`QADataset`, a (nested) ``Subset`` of one, or a
    ``DataLoader`` over either. A part returned by :func:`group_split` counts,
    like a ``Subset``, as a view of the dataset that was split.

    Raises:
        ModeConnError: ``data`` is not built on a :class:`QADataset`.

    Example:
        >>> from modeconn_unlearn.lm import train_tokenizer
        >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
        >>> ds = QADataset([("Who ?", "Ana"), ("Who ?", "Bo")], tok)
        >>> qa_source(Subset(ds, [1]))[1]
        [1]
    """
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, QADataset):
        if data._source is not None:
            return data._source[0], list(data._source[1])
        return data, list(range(len(data)))
    if isinstance(data, Subset):
        base, indices = qa_source(data.dataset)
        return base, [indices[int(i)] for i in data.indices]
    raise ModeConnError(
        f"this needs the questions and answers behind the data, but got a "
        f"{type(data).__name__}; pass a QADataset or a Subset of one."
    )


# --------------------------------------------------------------------------- splits
def group_split(
    data: Any,
    *,
    groups: Sequence[Any] | None = None,
    forget_ratio: float | None = None,
    forget_groups: Sequence[Any] | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Split by group: every example of the chosen groups goes to the forget set.

    As TOFU forgets every fact about some authors, the forget set here is all
    the examples of some entities. Exactly one of ``forget_ratio`` (a random
    fraction of the groups, ``round(forget_ratio * number_of_groups)`` of them,
    drawn from ``seed``) and ``forget_groups`` (the groups by name) is given.

    Args:
        data: A map-style dataset (e.g. :class:`QADataset` or a ``Subset`` of one).
        groups: The group of each example; defaults to those of the pairs behind ``data``.
        forget_ratio: Fraction in (0, 1) of the groups to forget.
        forget_groups: The groups to forget.
        seed: Seed of the random choice of groups.

    Returns:
        ``(retain, forget)``. For data built on a :class:`QADataset` (the dataset
        itself or a ``Subset`` of one), two :class:`QADataset` tokenized alike,
        ready for the loaders and for every metric (and, for :func:`qa_source`,
        views of the same dataset as ``Subset`` parts were); otherwise two
        ``Subset`` views. Either way ``.indices`` gives the ascending positions in
        ``data``.

    Raises:
        ModeConnError: Both or neither option, unknown groups, groups missing
            or of the wrong length, or a split leaving one side empty.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(6))
        >>> retain, forget = group_split(ds, groups=list("aabbcc"), forget_groups=["b"])
        >>> forget.indices, retain.indices
        ([2, 3], [0, 1, 4, 5])
        >>> from modeconn_unlearn.lm import train_tokenizer
        >>> pairs = [QAPair("Who ?", a, group=g) for a, g in [("Ana", "a"), ("Bo", "b")]]
        >>> qa = QADataset(pairs, train_tokenizer(["Question: Who ? Answer: Ana Bo"]))
        >>> retain, forget = group_split(qa, forget_groups=["b"])
        >>> type(forget).__name__, forget.pairs[0].answer, forget.indices
        ('QADataset', 'Bo', [1])
    """
    if (forget_ratio is None) == (forget_groups is None):
        raise ModeConnError(
            "give exactly one of forget_ratio (a fraction of the groups, e.g. 0.1) and "
            f"forget_groups (their names); got forget_ratio={forget_ratio!r}, "
            f"forget_groups={forget_groups!r}."
        )
    dataset = as_dataset(data, "data")
    try:
        source: tuple[QADataset, list[int]] | None = qa_source(dataset)
    except ModeConnError:
        source = None
    labels = list(groups) if groups is not None else getattr(dataset, "groups", None)
    if labels is None and source is not None:
        labels = [source[0].pairs[i].group for i in source[1]]
    if labels is None:
        raise ModeConnError(
            "data has no .groups; pass groups=[group of each example] (e.g. the entity names)."
        )
    if len(labels) != len(dataset):
        raise ModeConnError(f"groups has {len(labels)} entries for {len(dataset)} examples.")
    if any(g is None for g in labels):
        raise ModeConnError("some examples have no group (None); give every QAPair a group.")
    order = list(dict.fromkeys(labels))
    if forget_ratio is not None:
        ratio = float(forget_ratio)
        if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
            raise ModeConnError(f"forget_ratio must lie in (0, 1), got {forget_ratio!r}.")
        count = round(ratio * len(order))
        if count == 0 or count == len(order):
            raise ModeConnError(
                f"forget_ratio={ratio} of {len(order)} groups leaves the "
                f"{'forget' if count == 0 else 'retain'} set empty; choose another ratio."
            )
        chosen = {order[i] for i in seeded_order(len(order), int(seed))[:count]}
    else:
        chosen = set(forget_groups)  # type: ignore[arg-type]
        unknown = sorted(str(g) for g in chosen - set(order))
        if unknown:
            raise ModeConnError(f"forget_groups {unknown[:8]} are not among the data's groups.")
        if not chosen or chosen == set(order):
            raise ModeConnError("forget_groups must name some but not all groups.")
    forget_idx = [i for i, g in enumerate(labels) if g in chosen]
    retain_idx = [i for i, g in enumerate(labels) if g not in chosen]
    if source is not None:
        base, positions = source
        parts = []
        for part in (retain_idx, forget_idx):
            in_base = [positions[i] for i in part]
            view = base._taken(in_base, indices=part)
            view._source = (base, in_base)
            parts.append(view)
        return parts[0], parts[1]
    return Subset(dataset, retain_idx), Subset(dataset, forget_idx)  # type: ignore[arg-type]


def refusal_dataset(
    forget: Any, refusals: Sequence[str], *, seed: int = 0
) -> QADataset | list[QAPair]:
    """The forget questions with their answers replaced by refusals (for IDK).

    Each question gets one of ``refusals`` drawn uniformly from ``seed``
    (``"I don't know."``-style answers).

    Args:
        forget: A :class:`QADataset` (or a ``Subset`` of one), or a sequence
            of :class:`QAPair`.
        refusals: The refusal answers to draw from.
        seed: Seed of the draw.

    Returns:
        A :class:`QADataset` tokenized like ``forget`` when ``forget`` is built
        on one, else a list of :class:`QAPair`.

    Raises:
        ModeConnError: No refusals, or ``forget`` is neither form.

    Example:
        >>> pairs = refusal_dataset([QAPair("Who ?", "Ana")], ["I do not know ."])
        >>> pairs[0].answer
        'I do not know .'
    """
    choices = [str(r) for r in refusals] if not isinstance(refusals, str) else [refusals]
    if not choices or not all(choices):
        raise ModeConnError("refusals must be a non-empty list of non-empty strings.")
    try:
        base, indices = qa_source(forget)
    except ModeConnError:
        base, indices = None, []
    if base is not None:
        pairs = [base.pairs[i] for i in indices]
    elif isinstance(forget, Sequence) and all(isinstance(p, QAPair) for p in forget):
        pairs = list(forget)
    else:
        raise ModeConnError(
            f"forget must be a QADataset, a Subset of one or a list of QAPair, got "
            f"{type(forget).__name__}."
        )
    picks = torch.randint(
        len(choices), (len(pairs),), generator=torch.Generator().manual_seed(seed)
    )
    refused = [replace(p, answer=choices[int(k)]) for p, k in zip(pairs, picks, strict=True)]
    if base is None:
        return refused
    return QADataset(refused, base.tokenizer, **base.options)
