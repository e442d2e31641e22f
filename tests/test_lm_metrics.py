"""LM metrics and attacks against hand computations, Hugging Face, scikit-learn and scipy."""

from __future__ import annotations

import math
import sys
import zlib

import numpy as np
import pytest
import torch
from helpers import Bigram
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score, roc_curve

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.lm import (
    ATTACKS,
    LMOutputs,
    QADataset,
    QAPair,
    as_lm_loader,
    attack_scores,
    fictitious_qa,
    forget_quality,
    greedy_generate,
    lm_mia,
    lm_outputs,
    mia_from_outputs,
    privleak,
    qa_texts,
    rouge_l_recall,
    tiny_causal_lm,
    train_tokenizer,
    truth_ratio,
    truth_ratios,
    truth_score,
)
from modeconn_unlearn.tasks import ClassificationTask

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")


def log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - math.log(np.exp(shifted).sum())


@pytest.fixture(scope="module")
def pairs() -> list[QAPair]:
    return fictitious_qa(num_entities=4, facts_per_entity=2, num_perturbed=2, seed=0)


@pytest.fixture(scope="module")
def tokenizer(pairs: list[QAPair]):  # type: ignore[no-untyped-def]
    return train_tokenizer(qa_texts(pairs))


# --------------------------------------------------------------------------- lm_outputs
def test_outputs_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    table = torch.randn(6, 6)
    model = Bigram(table)
    data = [
        (torch.tensor([0, 1, 2, 3]), torch.tensor([-100, -100, 2, 3])),
        (torch.tensor([4, 5]), torch.tensor([-100, 1])),
    ]
    out = lm_outputs(model, data, batch_size=2)
    t = table.numpy().astype(np.float64)
    rows = [[(1, 2), (2, 3)], [(4, 1)]]  # (token whose logits predict, label)
    for i, scored in enumerate(rows):
        lps = np.array([log_softmax(t[src])[dst] for src, dst in scored])
        np.testing.assert_allclose(out.token_logprobs[i], lps, rtol=1e-5)
        np.testing.assert_allclose(out.nll[i], -lps.mean(), rtol=1e-5)
        np.testing.assert_allclose(out.nll_sum[i], -lps.sum(), rtol=1e-5)
        hits = [int(np.argmax(t[src]) == dst) for src, dst in scored]
        assert out.token_accuracy[i] == pytest.approx(np.mean(hits))
        assert out.token_correct[i].tolist() == [bool(h) for h in hits]
        pp = []
        for src, dst in scored:
            logp = log_softmax(t[src])
            p = np.exp(logp)
            mu = (p * logp).sum()
            sigma = math.sqrt((p * logp**2).sum() - mu**2)
            pp.append((logp[dst] - mu) / sigma)
        np.testing.assert_allclose(out.mink_pp[i], pp, rtol=1e-4)
        assert out.answer_ids[i].tolist() == [dst for _, dst in scored]
    assert out.num_tokens.tolist() == [2, 1]
    np.testing.assert_allclose(out.probability, np.exp(-out.nll))
    np.testing.assert_allclose(out.sequence_probability, np.exp(-out.nll_sum))
    assert out.summary()["nll"] == pytest.approx(out.nll.mean())
    assert model.training  # mode restored


def test_answer_nll_equals_the_hugging_face_loss(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    model = tiny_causal_lm(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, seed=1)
    data = QADataset(pairs, tokenizer)
    out = lm_outputs(model, data, batch_size=3)  # padded batches
    model.eval()
    with torch.no_grad():
        for i in range(len(data)):
            x, y = data[i]
            hf = model(input_ids=x["input_ids"][None], labels=y[None]).loss
            assert out.nll[i] == pytest.approx(float(hf), rel=1e-4)


def test_outputs_need_the_causal_lm_signals(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    class NoSignals:
        name = "bare"

        def split(self, batch, *, device=None):  # type: ignore[no-untyped-def]
            return ClassificationTask().split(batch, device=device)

        def __call__(self, model, inputs, targets, *, signals=False):  # type: ignore[no-untyped-def]
            from modeconn_unlearn.tasks import CausalLMTask

            out = CausalLMTask()(model, inputs, targets)
            return type(out)(out.loss, out.correct, {})

    model = tiny_causal_lm(len(tokenizer), hidden_size=8, num_layers=1, num_heads=2)
    with pytest.raises(ModeConnError, match="no signals"):
        lm_outputs(model, QADataset(pairs, tokenizer), task=NoSignals())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- generation, ROUGE
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generate_equals_hugging_face_generate(arch: str) -> None:
    model = tiny_causal_lm(20, arch=arch, hidden_size=16, num_layers=1, num_heads=2, seed=3)  # type: ignore[arg-type]
    model.eval()
    prompts = [[2, 5, 7], [2, 9], [2, 4, 11]]
    ours = greedy_generate(model, prompts, max_new_tokens=6)
    for prompt, generated in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        hf = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert generated == hf[0, len(prompt) :].tolist()
    stop = ours[0][2]
    cut = greedy_generate(model, prompts[:1], max_new_tokens=6, eos_token_id=stop)
    assert cut == [ours[0][: ours[0].index(stop)]]


def test_rouge_l_recall_by_hand() -> None:
    tok = train_tokenizer(["Question: Who ? Answer: alpha beta gamma delta"])
    data = QADataset([QAPair("Who ?", "alpha beta gamma delta")], tok)
    vocab = tok.get_vocab()
    table = torch.full((len(tok), len(tok)), -10.0)
    # After the prompt's last token ':' comes "alpha", then "gamma", then EOS.
    assert tok.convert_ids_to_tokens(data.prompt_ids(0))[-1] == ":"
    table[vocab[":"], vocab["alpha"]] = 10.0
    table[vocab["alpha"], vocab["gamma"]] = 10.0
    table[vocab["gamma"], tok.eos_token_id] = 10.0
    result = rouge_l_recall(Bigram(table), data)
    assert result.generations == ["alpha gamma"]
    assert result.references == ["alpha beta gamma delta"]
    assert result.recall.tolist() == [0.5]  # LCS "alpha gamma" = 2 of the reference's 4 words
    assert result.mean == 0.5


def test_rouge_l_recall_stems_words_when_asked() -> None:
    tok = train_tokenizer(["Question: Who ? Answer: alpha gammas gamma"])
    data = QADataset([QAPair("Who ?", "alpha gammas")], tok)
    vocab = tok.get_vocab()
    table = torch.full((len(tok), len(tok)), -10.0)
    table[vocab[":"], vocab["alpha"]] = 10.0
    table[vocab["alpha"], vocab["gamma"]] = 10.0
    table[vocab["gamma"], tok.eos_token_id] = 10.0
    assert rouge_l_recall(Bigram(table), data).recall.tolist() == [0.5]
    stemmed = rouge_l_recall(Bigram(table), data, use_stemmer=True)
    assert stemmed.generations == ["alpha gamma"] and stemmed.recall.tolist() == [1.0]


def test_greedy_generate_rejects_bad_input() -> None:
    model = tiny_causal_lm(10, hidden_size=8, num_layers=1, num_heads=2)
    with pytest.raises(ModeConnError, match="empty prompt"):
        greedy_generate(model, [[]], max_new_tokens=2)
    with pytest.raises(ModeConnError, match="max_new_tokens"):
        greedy_generate(model, [[1]], max_new_tokens=0)


# --------------------------------------------------------------------------- truth ratio
def test_truth_ratio_by_hand() -> None:
    para = np.array([0.5, 2.0])
    pert = np.array([[1.0, 3.0], [1.0, 1.0]])
    expected = [
        (math.sqrt(math.exp(-1.0) * math.exp(-3.0))) / math.exp(-0.5),
        math.exp(-1.0) / math.exp(-2.0),
    ]
    np.testing.assert_allclose(truth_ratio(para, pert), expected, rtol=1e-12)
    with pytest.raises(ModeConnError, match=r"\(N, P\)"):
        truth_ratio(para, pert[:1])
    with pytest.raises(ModeConnError, match="NaN"):
        truth_ratio([np.nan, 1.0], pert)


def test_truth_ratios_of_a_model_match_the_hugging_face_losses(
    tokenizer, pairs: list[QAPair]
) -> None:  # type: ignore[no-untyped-def]
    model = tiny_causal_lm(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, seed=2)
    data = QADataset(pairs, tokenizer)
    ratios = truth_ratios(model, torch.utils.data.Subset(data, [1, 4, 6]))
    model.eval()

    def nll(question: str, answer: str) -> float:
        x, y = QADataset([QAPair(question, answer)], tokenizer)[0]
        with torch.no_grad():
            return float(model(input_ids=x["input_ids"][None], labels=y[None]).loss)

    for r, i in zip(ratios, [1, 4, 6], strict=True):
        p = pairs[i]
        para = nll(p.question, p.paraphrased_answer or "")
        pert = [nll(p.question, a) for a in p.perturbed_answers]
        assert r == pytest.approx(math.exp(para - np.mean(pert)), rel=1e-4)
    with pytest.raises(ModeConnError, match="paraphrased_answer"):
        truth_ratios(model, QADataset([QAPair("Who ?", "x", perturbed_answers=("y",))], tokenizer))


def test_truth_score_and_forget_quality_by_hand() -> None:
    r = np.array([0.5, 1.0, 4.0])
    assert truth_score(r, kind="retain") == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert truth_score(r, kind="forget") == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    with pytest.raises(ModeConnError, match="kind"):
        truth_score(r, kind="both")  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="positive"):
        truth_score([0.0], kind="retain")
    a, b = np.array([0.1, 0.4, 0.5, 0.9]), np.array([0.2, 0.3, 0.35, 0.6, 0.7])
    grid = np.concatenate([a, b])
    hand = max(abs(np.mean(a <= g) - np.mean(b <= g)) for g in grid)
    fq = forget_quality(a, b)
    assert fq.statistic == pytest.approx(hand)
    assert fq.pvalue == pytest.approx(ks_2samp(a, b).pvalue)
    assert forget_quality(a, a).pvalue == 1.0
    with pytest.raises(ModeConnError, match="non-empty"):
        forget_quality([], b)


# --------------------------------------------------------------------------- attacks
def make_outputs(token_lps: list[list[float]], pp: list[list[float]] | None = None) -> LMOutputs:
    lps = [np.array(v, dtype=np.float64) for v in token_lps]
    sums = np.array([-v.sum() for v in lps])
    num = np.array([len(v) for v in lps], dtype=np.int64)
    return LMOutputs(
        nll=sums / num,
        nll_sum=sums,
        num_tokens=num,
        token_accuracy=np.ones(len(lps)),
        token_logprobs=lps,
        mink_pp=[np.array(v, dtype=np.float64) for v in (pp or token_lps)],
        answer_ids=[np.arange(4, 4 + len(v)) for v in lps],
    )


def test_attack_scores_by_hand(tokenizer) -> None:  # type: ignore[no-untyped-def]
    out = make_outputs(
        [[-0.1, -2.0, -0.5, -3.0, -0.2], [-1.0, -1.5]], pp=[[1.0, -2.0, 0.5, -1.0, 3.0], [0.2, 0.1]]
    )
    np.testing.assert_allclose(attack_scores(out, "loss"), [-5.8 / 5, -2.5 / 2])
    # k = 0.4: floor(0.4 * 5) = 2 lowest tokens; floor(0.4 * 2) = 0 -> at least 1.
    np.testing.assert_allclose(attack_scores(out, "min_k", k=0.4), [-2.5, -1.5])
    np.testing.assert_allclose(attack_scores(out, "min_k_pp", k=0.4), [-1.5, 0.1])
    np.testing.assert_allclose(attack_scores(out, "min_k", k=1.0), -out.nll)
    out.answer_ids[1] = np.array([5, tokenizer.eos_token_id])  # EOS is not part of the text
    texts = [tokenizer.decode(out.answer_ids[0].tolist()), tokenizer.decode([5])]
    sizes = [len(zlib.compress(text.encode())) for text in texts]
    np.testing.assert_allclose(
        attack_scores(out, "zlib", tokenizer=tokenizer), -out.nll / np.array(sizes)
    )
    with pytest.raises(ModeConnError, match="tokenizer"):
        attack_scores(out, "zlib")
    with pytest.raises(ModeConnError, match="k must"):
        attack_scores(out, "min_k", k=0.0)
    with pytest.raises(ModeConnError, match="unknown attack"):
        attack_scores(out, "lira")


def test_auc_and_tpr_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    member = make_outputs([list(rng.normal(-0.5, 1.0, 4)) for _ in range(150)])
    nonmember = make_outputs([list(rng.normal(-1.0, 1.0, 4)) for _ in range(120)])
    results = mia_from_outputs(member, nonmember, attacks=("loss", "min_k"), fprs=(0.01, 0.1))
    for attack, result in results.items():
        m, n = attack_scores(member, attack), attack_scores(nonmember, attack)
        truth = np.r_[np.ones(len(m)), np.zeros(len(n))]
        scores = np.r_[m, n]
        assert result.auc == pytest.approx(roc_auc_score(truth, scores))
        fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
        for level in (0.01, 0.1):
            assert result.tpr_at_fpr[level] == pytest.approx(tpr[fpr <= level].max())
    assert results["loss"].auc > 0.6  # members have higher log-probabilities


def test_privleak_by_hand() -> None:
    assert privleak(0.9, 0.6) == pytest.approx(50.0)
    assert privleak(0.3, 0.6) == pytest.approx(-50.0)
    assert privleak(0.6, 0.6) == 0.0
    with pytest.raises(ModeConnError, match="privleak"):
        privleak(1.5, 0.5)
    with pytest.raises(ModeConnError, match="privleak"):
        privleak(0.5, 0.0)


def test_attacks_detect_memorised_examples(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    members, nonmembers = data.subset([0, 1, 2, 3]), data.subset([4, 5, 6, 7])
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(as_lm_loader(members, batch_size=4)))
    model.train()
    for _ in range(40):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    results = lm_mia(model, member=members, nonmember=nonmembers, fprs=(0.01,))
    assert set(results) == set(ATTACKS)
    assert results["loss"].auc == 1.0 and results["min_k"].auc > 0.5
    assert results["zlib"].auc == 1.0  # the tokenizer came from the QADataset
    again = mia_from_outputs(
        lm_outputs(model, members), lm_outputs(model, nonmembers), tokenizer=tokenizer
    )
    assert {a: r.auc for a, r in again.items()} == {a: r.auc for a, r in results.items()}
    with pytest.raises(ModeConnError, match="unknown attacks"):
        lm_mia(model, member=members, nonmember=nonmembers, attacks=("nope",))


def test_missing_optional_packages_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tokenizer, pairs: list[QAPair]
) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs[:1], tokenizer)
    model = tiny_causal_lm(len(tokenizer), hidden_size=8, num_layers=1, num_heads=2)
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(ImportError, match=r'pip install "modeconn-unlearn\[lm\]"'):
        rouge_l_recall(model, data)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="tokenizers"):
        train_tokenizer(["a b"])
