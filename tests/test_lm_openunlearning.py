"""OpenUnlearning's TOFU metrics: each formula by hand, and the one call end to end."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.lm import (
    LMOutputs,
    OpenUnlearningResult,
    QADataset,
    QAPair,
    as_lm_loader,
    evaluate_openunlearning,
    exact_memorization,
    extraction_strength,
    fictitious_qa,
    group_split,
    qa_texts,
    rouge_l_recall,
    tiny_causal_lm,
    train_tokenizer,
)

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")

EOS = 3


def outputs_with_hits(hits: list[list[bool]], ids: list[list[int]] | None = None) -> LMOutputs:
    n = [len(h) for h in hits]
    ids = ids or [[10 + j for j in range(k)] for k in n]
    zeros = [np.zeros(k) for k in n]
    return LMOutputs(
        nll=np.ones(len(n)),
        nll_sum=np.array(n, dtype=np.float64),
        num_tokens=np.array(n, dtype=np.int64),
        token_accuracy=np.array([np.mean(h) for h in hits]),
        token_logprobs=zeros,
        mink_pp=zeros,
        answer_ids=[np.array(i, dtype=np.int64) for i in ids],
        token_correct=[np.array(h, dtype=bool) for h in hits],
    )


def strength_by_hand(hits: list[bool]) -> float:
    """OpenUnlearning's loop: the first k whose suffix is all right, else the last k tried."""
    n = len(hits)
    k = 0
    for k in range(n):  # k is read after the loop
        if all(hits[k:]):
            break
    return 1.0 - k / n


# --------------------------------------------------------------------------- formulas
def test_exact_memorization_by_hand() -> None:
    hits = [[True, False, True, True], [False, False], [True, True, True]]
    out = outputs_with_hits(hits)
    np.testing.assert_allclose(exact_memorization(out), [3 / 4, 0.0, 1.0])
    # The final EOS is left out where it ends the answer, nowhere else.
    with_eos = outputs_with_hits(hits, ids=[[5, 6, 7, EOS], [EOS, 8], [5, 6, EOS]])
    np.testing.assert_allclose(exact_memorization(with_eos, eos_token_id=EOS), [2 / 3, 0.0, 1.0])
    only_eos = outputs_with_hits([[True]], ids=[[EOS]])
    assert math.isnan(exact_memorization(only_eos, eos_token_id=EOS)[0])


@pytest.mark.parametrize(
    "hits",
    [
        [True, True, True, True],
        [False, True, True, True],
        [True, False, True, True],
        [True, True, True, False],
        [False, False, False, False],
        [False, False, False, True],
        [True],
        [False],
        [True, False, True, False, True],
    ],
)
def test_extraction_strength_by_hand(hits: list[bool]) -> None:
    out = outputs_with_hits([hits])
    assert extraction_strength(out)[0] == pytest.approx(strength_by_hand(hits))


def test_extraction_strength_leaves_out_the_final_eos() -> None:
    out = outputs_with_hits([[False, True, True, False]], ids=[[5, 6, 7, EOS]])
    assert extraction_strength(out, eos_token_id=EOS)[0] == pytest.approx(1 - 1 / 3)
    assert extraction_strength(out)[0] == pytest.approx(1 / 4)  # no right suffix: 1/n


def test_formulas_need_per_token_correctness() -> None:
    out = outputs_with_hits([[True, False]])
    bare = dataclasses.replace(out, token_correct=[])  # as built by hand without the field
    with pytest.raises(ModeConnError, match="token_correct"):
        exact_memorization(bare)
    with pytest.raises(ModeConnError, match="token_correct"):
        extraction_strength(bare)


# --------------------------------------------------------------------------- the one call
def train(model: torch.nn.Module, data: QADataset, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(as_lm_loader(data, batch_size=len(data))))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """10 entities x 2 facts: 2 held out, 2 forgotten; a model trained on 8, a reference on 6."""
    pairs = fictitious_qa(num_entities=10, facts_per_entity=2, num_perturbed=2, seed=0)
    tok = train_tokenizer(qa_texts(pairs))
    data = QADataset(pairs, tok)
    train_part, holdout = group_split(data, forget_groups=[p.group for p in pairs[-4:]])
    retain, forget = group_split(train_part, forget_groups=[p.group for p in pairs[:4]])
    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
    # Trained briefly: the model remembers some forget tokens, not all.
    model = train(tiny_causal_lm(len(tok), seed=0, **small), train_part, 12)
    reference = train(tiny_causal_lm(len(tok), seed=1, **small), retain, 12)
    return {
        "tok": tok,
        "forget": forget,
        "retain": retain,
        "holdout": holdout,
        "model": model,
        "reference": reference,
    }


def per_token(model: torch.nn.Module, data: QADataset) -> list[dict[str, np.ndarray]]:
    """Per answer token, straight from the model: log-probability, greedy hit, Min-K%++ score."""
    rows = []
    for i in range(len(data)):
        x, y = data[i]
        with torch.no_grad():
            logits = model(input_ids=x["input_ids"][None]).logits[0, :-1].double()
        lp = torch.log_softmax(logits, dim=-1)
        labels = y[1:]
        keep = labels != -100
        lp, tokens = lp[keep], labels[keep]
        token_lp = lp.gather(-1, tokens[:, None]).squeeze(-1)
        mu = (lp.exp() * lp).sum(-1)
        sigma = ((lp.exp() * lp**2).sum(-1) - mu**2).sqrt()
        rows.append(
            {
                "lp": token_lp.numpy(),
                "hit": (lp.argmax(-1) == tokens).numpy(),
                "pp": ((token_lp - mu) / sigma).numpy(),
                "ids": tokens.numpy(),
            }
        )
    return rows


def truth_ratios_by_hand(model: torch.nn.Module, data: QADataset) -> np.ndarray:
    def nll(answers: list[str]) -> np.ndarray:
        return np.array([-r["lp"].mean() for r in per_token(model, data.with_answers(answers))])

    para = nll([p.paraphrased_answer or "" for p in data.pairs])
    pert = np.stack([nll([p.perturbed_answers[j] for p in data.pairs]) for j in range(2)], axis=1)
    probability = np.exp(-para)
    wrong = np.exp(-pert.mean(axis=1))  # geometric mean of the normalised probabilities
    return wrong / probability


def min_k(rows: list[dict[str, np.ndarray]], key: str, k: float = 0.4) -> np.ndarray:
    scores = []
    for r in rows:
        assert r["ids"][-1] == EOS
        values = np.sort(r[key][:-1])  # the EOS left out
        scores.append(values[: max(1, int(len(values) * k))].mean())
    return np.array(scores)


def test_every_metric_matches_a_hand_computation(world: dict[str, Any]) -> None:
    model, reference = world["model"], world["reference"]
    forget, retain, holdout = world["forget"], world["retain"], world["holdout"]
    result = evaluate_openunlearning(
        model, forget=forget, retain=retain, holdout=holdout, reference=reference
    )
    assert list(result.metrics) == [  # OpenUnlearning's names, in report order
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
    ]
    rows = {name: per_token(model, data) for name, data in [("f", forget), ("r", retain)]}
    for split, key in (("forget", "f"), ("retain", "r")):
        prob = [math.exp(r["lp"].mean()) for r in rows[key]]
        assert result[f"{split}_Q_A_Prob"] == pytest.approx(np.mean(prob), rel=1e-5)
        rouge = rouge_l_recall(model, forget if key == "f" else retain, use_stemmer=True)
        assert result[f"{split}_Q_A_ROUGE"] == pytest.approx(rouge.mean)
    ratios = truth_ratios_by_hand(model, forget)
    np.testing.assert_allclose(result.per_example["forget_truth_ratio"], ratios, rtol=1e-5)
    assert result["forget_truth_ratio"] == pytest.approx(np.minimum(ratios, 1 / ratios).mean())
    retain_ratios = truth_ratios_by_hand(model, retain)
    np.testing.assert_allclose(result.per_example["retain_Truth_Ratio"], retain_ratios, rtol=1e-5)
    assert result["retain_Truth_Ratio"] == pytest.approx(np.maximum(0, 1 - retain_ratios).mean())
    reference_ratios = truth_ratios_by_hand(reference, forget)
    assert result["forget_quality"] == pytest.approx(ks_2samp(ratios, reference_ratios).pvalue)
    hits = [r["hit"][:-1] for r in rows["f"]]  # the final EOS left out
    assert result["exact_memorization"] == pytest.approx(np.mean([h.mean() for h in hits]))
    strength = np.mean([strength_by_hand(list(h)) for h in hits])
    assert result["extraction_strength"] == pytest.approx(strength)
    assert 0 < result["exact_memorization"] < 1 and 0 < result["extraction_strength"] < 1

    def auc(m: torch.nn.Module, key: str) -> float:
        members, others = min_k(per_token(m, forget), key), min_k(per_token(m, holdout), key)
        truth = np.r_[np.ones(len(members)), np.zeros(len(others))]
        return float(roc_auc_score(truth, np.r_[members, others]))

    assert result["mia_min_k"] == pytest.approx(auc(model, "lp"))
    assert result["mia_min_k_plus_plus"] == pytest.approx(auc(model, "pp"))
    a, r = auc(model, "lp"), auc(reference, "lp")
    assert result["privleak"] == pytest.approx(100 * ((1 - a) - (1 - r)) / (1 - r))
    # An AUC away from 0 and 1 (the reference model's), against a given reference AUC.
    given = evaluate_openunlearning(
        reference, forget=forget, retain=retain, holdout=holdout, reference_auc=0.3
    )
    assert 0.1 < r < 0.9 and given["mia_min_k"] == pytest.approx(r)
    assert given["privleak"] == pytest.approx(100 * ((1 - r) - 0.7) / 0.7)
    assert not any("forget_quality" in note for note in result.notes)
    assert any("model_utility" in note for note in result.notes)


def test_the_reference_given_four_ways_gives_the_same_numbers(world: dict[str, Any]) -> None:
    data = {k: world[k] for k in ("forget", "retain", "holdout")}
    model, reference = world["model"], world["reference"]
    by_model = evaluate_openunlearning(model, **data, reference=reference)
    reference_result = evaluate_openunlearning(reference, **data)
    by_result = evaluate_openunlearning(model, **data, reference=reference_result)
    by_numbers = evaluate_openunlearning(
        model,
        **data,
        reference_truth_ratios=reference_result.per_example["forget_truth_ratio"],
        reference_auc=reference_result["mia_min_k"],
    )
    assert by_model.to_dict() == by_result.to_dict() == by_numbers.to_dict()
    # Min-K%++ behind privleak: its own AUC (the reference model's, away from 0 and 1).
    plus = evaluate_openunlearning(reference, **data, reference_auc=0.3, privleak_attack="min_k_pp")
    a = reference_result["mia_min_k_plus_plus"]
    assert a != reference_result["mia_min_k"]
    assert plus["privleak"] == pytest.approx(100 * ((1 - a) - 0.7) / 0.7)
    # A reference that separates forget from holdout perfectly (AUC 1) gives no privleak.
    assert by_model["mia_min_k"] == 1.0
    swapped = evaluate_openunlearning(reference, **data, reference=by_model)
    assert "privleak" not in swapped.metrics and "forget_quality" in swapped.metrics
    assert any(note.startswith("privleak left out") for note in swapped.notes)


def test_without_a_reference_forget_quality_is_left_out_not_invented(
    world: dict[str, Any],
) -> None:
    data = {k: world[k] for k in ("forget", "retain", "holdout")}
    result = evaluate_openunlearning(world["model"], **data)
    assert "forget_quality" not in result.metrics and "forget_quality" not in result.to_dict()
    assert any(note.startswith("forget_quality left out") for note in result.notes)
    assert any("0.5" in note for note in result.notes)
    a = result["mia_min_k"]
    assert result["privleak"] == pytest.approx(100 * ((1 - a) - 0.5) / 0.5)
    with pytest.raises(KeyError, match="forget_quality"):
        result["forget_quality"]
    no_holdout = evaluate_openunlearning(
        world["model"], forget=world["forget"], retain=world["retain"]
    )
    assert not {"mia_min_k", "mia_min_k_plus_plus", "privleak"} & set(no_holdout.metrics)
    assert any("holdout" in note for note in no_holdout.notes)
    assert no_holdout["forget_Q_A_Prob"] == result["forget_Q_A_Prob"]


def test_pairs_without_truth_answers_leave_the_truth_ratio_out(world: dict[str, Any]) -> None:
    tok = world["tok"]
    plain = QADataset([QAPair(p.question, p.answer) for p in world["retain"].pairs], tok)
    result = evaluate_openunlearning(
        world["model"], forget=world["forget"], retain=plain, reference_truth_ratios=[0.5, 1.0]
    )
    assert "retain_Truth_Ratio" not in result.metrics and "forget_quality" in result.metrics
    assert any(note.startswith("retain_Truth_Ratio left out") for note in result.notes)


def test_bad_requests_are_refused(world: dict[str, Any]) -> None:
    data = {k: world[k] for k in ("forget", "retain", "holdout")}
    model = world["model"]
    with pytest.raises(ModeConnError, match="not both"):
        evaluate_openunlearning(model, **data, reference=model, reference_auc=0.5)
    with pytest.raises(ModeConnError, match="privleak_attack"):
        evaluate_openunlearning(model, **data, privleak_attack="loss")  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="reference must be"):
        evaluate_openunlearning(model, **data, reference="retain.pt")  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="reference_auc"):
        evaluate_openunlearning(model, **data, reference_auc=1.5)
    with pytest.raises(ModeConnError, match="k must lie"):
        evaluate_openunlearning(model, **data, k=0.0)
    with pytest.raises(ModeConnError, match=r"forget=: .*QADataset"):
        evaluate_openunlearning(model, forget=[1, 2], retain=data["retain"])
    with pytest.raises(ModeConnError, match=r"holdout=: .*QADataset"):
        evaluate_openunlearning(model, **{**data, "holdout": [1, 2]})
    assert isinstance(evaluate_openunlearning.__doc__, str)
    assert OpenUnlearningResult.__doc__


def test_rouge_is_scored_on_stemmed_words_as_openunlearning_does(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modeconn_unlearn.lm import openunlearning

    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("use_stemmer"))
        return rouge_l_recall(*args, **kwargs)

    monkeypatch.setattr(openunlearning, "rouge_l_recall", spy)
    evaluate_openunlearning(world["model"], forget=world["forget"], retain=world["retain"])
    assert seen == [True, True]


def test_the_result_prints_its_metrics_and_notes_not_its_arrays() -> None:
    result = OpenUnlearningResult(
        {"forget_Q_A_Prob": 0.25, "privleak": -3.0}, {"forget_Q_A_Prob": np.zeros(500)}, ("n1",)
    )
    assert repr(result) == "OpenUnlearningResult(forget_Q_A_Prob=0.25, privleak=-3; 1 notes)"
    assert str(result).splitlines() == [
        "forget_Q_A_Prob             0.250",
        "privleak                   -3.000",
        "note: n1",
    ]
