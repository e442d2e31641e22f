"""QA records in TOFU's form: lists of dicts, JSON lines, Hugging Face datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modeconn_unlearn.errors import MissingDependencyError, ModeConnError
from modeconn_unlearn.lm import (
    QADataset,
    QAPair,
    fictitious_qa,
    group_split,
    qa_pairs,
    qa_texts,
    tiny_causal_lm,
    train_tokenizer,
    truth_ratios,
)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pairs() -> list[QAPair]:
    return fictitious_qa(num_entities=4, facts_per_entity=2, num_perturbed=3, seed=1)


def tofu_records(pairs: list[QAPair]) -> list[dict[str, Any]]:
    """The pairs as TOFU writes them (``*_perturbed`` splits), with the entity as ``author``."""
    return [
        {
            "question": p.question,
            "answer": p.answer,
            "paraphrased_answer": p.paraphrased_answer,
            "perturbed_answer": list(p.perturbed_answers),
            "author": p.group,
        }
        for p in pairs
    ]


def test_records_become_the_same_pairs_and_feed_the_truth_ratio(pairs: list[QAPair]) -> None:
    read = qa_pairs(tofu_records(pairs), group_key="author")
    assert read == pairs  # question, answer, group, paraphrased and perturbed answers
    tok = train_tokenizer(qa_texts(pairs))
    model = tiny_causal_lm(len(tok), hidden_size=16, num_layers=1, num_heads=2, seed=0)
    np.testing.assert_array_equal(
        truth_ratios(model, QADataset(read, tok)), truth_ratios(model, QADataset(pairs, tok))
    )
    retain, forget = group_split(QADataset(read, tok), forget_groups=[pairs[0].group])
    assert forget.pairs == pairs[:2] and len(retain) == len(pairs) - 2


def test_optional_fields_other_names_and_groups_in_blocks() -> None:
    records = [
        {"paraphrased_question": "Who wrote it ?", "response": "Ana", "wrong": "Bo"},
        {"paraphrased_question": "Where ?", "response": "Lima", "wrong": None},
        {"paraphrased_question": "When ?", "response": "1990"},
    ]
    read = qa_pairs(
        records,
        question_key="paraphrased_question",
        answer_key="response",
        perturbed_key="wrong",
        group_size=2,
    )
    assert read == [
        QAPair("Who wrote it ?", "Ana", group="0", perturbed_answers=("Bo",)),
        QAPair("Where ?", "Lima", group="0"),
        QAPair("When ?", "1990", group="1"),
    ]
    assert [
        p.group
        for p in qa_pairs(records * 2, answer_key="response", question_key="paraphrased_question")
    ] == [None] * 6


def test_json_lines_and_json_array_files(tmp_path: Path, pairs: list[QAPair]) -> None:
    records = tofu_records(pairs)
    lines = tmp_path / "forget.jsonl"
    lines.write_text(
        "\n".join(json.dumps(r) for r in records[:3]) + "\n\n" + json.dumps(records[3]) + "\n",
        encoding="utf-8",
    )
    assert qa_pairs(lines, group_key="author") == pairs[:4]
    assert qa_pairs(str(lines), group_key="author") == pairs[:4]
    array = tmp_path / "forget.json"
    array.write_text(json.dumps(records), encoding="utf-8")
    assert qa_pairs(array, group_key="author") == pairs
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ModeConnError, match="line 2 of"):
        qa_pairs(broken)
    with pytest.raises(ModeConnError, match="no file or folder"):
        qa_pairs(tmp_path / "missing.jsonl")


def test_hugging_face_datasets_in_memory_on_disk_and_parquet(
    tmp_path: Path, pairs: list[QAPair]
) -> None:
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_list(tofu_records(pairs))
    assert qa_pairs(table, group_key="author") == pairs
    table.save_to_disk(str(tmp_path / "saved"))
    assert qa_pairs(tmp_path / "saved", group_key="author") == pairs
    table.to_parquet(str(tmp_path / "forget.parquet"))
    assert qa_pairs(tmp_path / "forget.parquet", group_key="author") == pairs
    splits = datasets.DatasetDict({"train": table})
    with pytest.raises(ModeConnError, match="pick a split"):
        qa_pairs(splits)
    splits.save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ModeConnError, match="DatasetDict with splits 'train'"):
        qa_pairs(tmp_path / "splits")


def test_a_saved_dataset_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "saved").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "modeconn-unlearn\[hf-data\]"'):
        qa_pairs(tmp_path / "saved")


def test_bad_records_name_the_record_and_the_field() -> None:
    good = {"question": "Who ?", "answer": "Ana"}
    with pytest.raises(ModeConnError, match=r"record 1 has no 'answer' field .*answer_key="):
        qa_pairs([good, {"question": "Where ?", "reply": "Lima"}])
    with pytest.raises(ModeConnError, match=r"record 0 has no 'question' field"):
        qa_pairs([{"answer": "Ana"}])
    with pytest.raises(ModeConnError, match=r"record 1: 'answer' must be a non-empty string"):
        qa_pairs([good, {"question": "Who ?", "answer": "  "}])
    with pytest.raises(ModeConnError, match=r"record 0: 'paraphrased_answer' must be"):
        qa_pairs([{**good, "paraphrased_answer": 3}])
    with pytest.raises(ModeConnError, match=r"record 0: 'perturbed_answer' must be a list"):
        qa_pairs([{**good, "perturbed_answer": ["Bo", 2]}])
    with pytest.raises(ModeConnError, match="record 1 is a str"):
        qa_pairs([good, "Who ? Ana"])
    with pytest.raises(ModeConnError, match=r"record 0 has no 'author' field"):
        qa_pairs([good], group_key="author")
    with pytest.raises(ModeConnError, match="at most one"):
        qa_pairs([good], group_key="author", group_size=2)
    with pytest.raises(ModeConnError, match="group_size"):
        qa_pairs([good], group_size=0)
    with pytest.raises(ModeConnError, match="one mapping"):
        qa_pairs(good)
    with pytest.raises(ModeConnError, match="no records"):
        qa_pairs([])
    with pytest.raises(ModeConnError, match="got int"):
        qa_pairs(3)
