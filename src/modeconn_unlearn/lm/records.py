"""Question-answer records in TOFU's form: lists of dicts, JSON-lines files, ``datasets``.

TOFU and OpenUnlearning store one fact per record::

    {"question": ..., "answer": ...,
     "paraphrased_answer": ...,            # the same fact in other words
     "perturbed_answer": [..., ...]}       # wrong answers in the same form

:func:`qa_pairs` reads such records into :class:`~modeconn_unlearn.lm.data.QAPair`
items, paraphrased and perturbed answers included, so that a
:class:`~modeconn_unlearn.lm.data.QADataset` built from them feeds
:func:`~modeconn_unlearn.lm.metrics.truth_ratios` directly. Field names can be
renamed (e.g. ``question_key="paraphrased_question"``). Records come from a list
of dicts, a JSON-lines file, a Hugging Face ``datasets.Dataset``, or a dataset
saved with ``save_to_disk`` / a Parquet file (these two need the optional
``datasets`` package: ``pip install "modeconn-unlearn[hf-data]"``). Nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..checks import positive_int
from ..errors import ModeConnError, listed
from ..optional import require
from .data import QAPair

__all__ = ["qa_pairs"]


def _json_lines(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # one JSON array instead of one object per line
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModeConnError(f"{path} is not valid JSON: {error}.") from error
        return list(records)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ModeConnError(
                f"line {number} of {path} is not JSON ({error}); a JSON-lines file holds one "
                "JSON object per line."
            ) from error
    return records


def _from_path(path: Path) -> Iterable[Any]:
    if path.is_dir():
        datasets = require("datasets", "hf-data", feature="qa_pairs on a saved dataset")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, Mapping):
            raise ModeConnError(
                f"{path} holds a DatasetDict with splits {listed(sorted(loaded))}; pass one "
                "split's folder (or load it and pass loaded[split])."
            )
        return loaded  # type: ignore[no-any-return]
    if not path.is_file():
        raise ModeConnError(
            f"no file or folder {str(path)!r}; give a JSON-lines file, a Parquet file, a "
            "folder written by Dataset.save_to_disk, or the records themselves."
        )
    if path.suffix == ".parquet":
        datasets = require("datasets", "hf-data", feature="qa_pairs on a Parquet file")
        return datasets.Dataset.from_parquet(str(path))  # type: ignore[no-any-return]
    return _json_lines(path)


def _records(source: Any) -> Iterable[Any]:
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source))
    if isinstance(source, Mapping):
        keys = listed(sorted(str(k) for k in source))
        raise ModeConnError(
            f"qa_pairs got one mapping (keys {keys}), not a list of records; for a "
            "DatasetDict pick a split (records['train']), for one record wrap it in a list."
        )
    if not isinstance(source, Iterable):
        raise ModeConnError(
            f"qa_pairs needs records (a list of dicts, a datasets.Dataset) or a file path, "
            f"got {type(source).__name__}."
        )
    return source  # type: ignore[no-any-return]


def _text(record: Mapping[str, Any], key: str, index: int, *, option: str | None) -> str | None:
    """The string field ``key``; required when ``option`` (the keyword naming it) is given."""
    value = record.get(key)
    if value is None:
        if option is None:
            return None
        raise ModeConnError(
            f"record {index} has no {key!r} field (its fields: "
            f"{listed(sorted(map(str, record)))}); name the field with {option}=..."
        )
    if not isinstance(value, str) or (option is not None and not value.strip()):
        raise ModeConnError(f"record {index}: {key!r} must be a non-empty string, got {value!r}.")
    return value


def _perturbed(record: Mapping[str, Any], key: str, index: int) -> tuple[str, ...]:
    value = record.get(key)
    if value is None:
        return ()
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise ModeConnError(
            f"record {index}: {key!r} must be a list of strings (the wrong answers), got {value!r}."
        )
    return tuple(answers)


def qa_pairs(
    source: Any,
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    paraphrased_key: str = "paraphrased_answer",
    perturbed_key: str = "perturbed_answer",
    group_key: str | None = None,
    group_size: int | None = None,
) -> list[QAPair]:
    """Read question-answer records (TOFU / OpenUnlearning field names) into :class:`QAPair` items.

    The paraphrased answer and the perturbed answers are optional per record
    (TOFU's plain splits have neither; its ``*_perturbed`` splits have both, as
    :func:`~modeconn_unlearn.lm.metrics.truth_ratios` needs); a single perturbed
    answer may be a string. A pair's ``group`` (the entity forgetting removes as
    a whole, see :func:`~modeconn_unlearn.lm.data.group_split`) comes from the
    field ``group_key``, or from consecutive blocks of ``group_size`` records
    (TOFU lists its authors' 20 facts one author after another: ``group_size=20``).

    Args:
        source: The records: a list (any iterable) of dicts, a ``datasets.Dataset``,
            or a path to a JSON-lines file (one object per line, or one JSON array),
            a Parquet file or a folder written by ``Dataset.save_to_disk`` (the
            last two need ``datasets``).
        question_key: The field of the question (e.g. ``"paraphrased_question"``).
        answer_key: The field of the answer.
        paraphrased_key: The field of the paraphrased answer.
        perturbed_key: The field of the list of perturbed answers.
        group_key: The field naming each record's entity.
        group_size: Records per entity, in order (instead of ``group_key``).

    Returns:
        One :class:`QAPair` per record, in order.

    Raises:
        ModeConnError: No records, a record that is not a mapping or lacks the
            question or the answer (the message names the record and the field),
            a field of the wrong type, a file that is not JSON lines, or both
            ``group_key`` and ``group_size``.
        MissingDependencyError: A Parquet file or a saved dataset without ``datasets``.

    Example:
        >>> records = [{"question": "Who ?", "answer": "Ana", "paraphrased_answer": "It is Ana",
        ...             "perturbed_answer": ["Bo", "Cy"]}]
        >>> pair = qa_pairs(records)[0]
        >>> pair.answer, pair.paraphrased_answer, pair.perturbed_answers
        ('Ana', 'It is Ana', ('Bo', 'Cy'))
        >>> [p.group for p in qa_pairs(records * 4, group_size=2)]
        ['0', '0', '1', '1']
    """
    if group_key is not None and group_size is not None:
        raise ModeConnError("give at most one of group_key (a field) and group_size (a count).")
    positive_int(group_size, "group_size", optional=True)
    pairs = []
    for index, record in enumerate(_records(source)):
        if not isinstance(record, Mapping):
            raise ModeConnError(
                f"record {index} is a {type(record).__name__}, not a mapping; give one dict "
                "per question with the fields question, answer, ..."
            )
        group: str | None = None
        if group_key is not None:
            value = record.get(group_key)
            if value is None:
                raise ModeConnError(
                    f"record {index} has no {group_key!r} field (its fields: "
                    f"{listed(sorted(map(str, record)))}); give every record its group or "
                    "use group_size=..."
                )
            group = str(value)
        elif group_size is not None:
            group = str(index // group_size)
        pairs.append(
            QAPair(
                question=str(_text(record, question_key, index, option="question_key")),
                answer=str(_text(record, answer_key, index, option="answer_key")),
                group=group,
                paraphrased_answer=_text(record, paraphrased_key, index, option=None),
                perturbed_answers=_perturbed(record, perturbed_key, index),
            )
        )
    if not pairs:
        raise ModeConnError("qa_pairs found no records; give at least one question and answer.")
    return pairs
