from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation.features import feature_arrays, member_signal, sample_loss
from modeconn_unlearn.evaluation.outputs import Outputs
from modeconn_unlearn.mia import (
    lira,
    lira_scores,
    logit_confidence,
    modified_entropy,
    roc_metrics,
    sample_features,
    svc_mia,
    threshold_attack,
    train_reference_models,
)
from modeconn_unlearn.tasks import CausalLMTask
from modeconn_unlearn.training import retrain

# --------------------------------------------------------------------------- helpers
N_FEATURES, N_CLASSES = 20, 10


def random_label_data(n: int, seed: int) -> TensorDataset:
    """Gaussian inputs with random labels: only memorisation can fit them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return TensorDataset(x, y)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(), nn.Linear(128, N_CLASSES))


def memorise(model: nn.Module, data: Dataset, steps: int = 150) -> nn.Module:
    x, y = next(iter(DataLoader(data, batch_size=len(data))))  # TensorDataset or Subset
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def subset(data: TensorDataset, index: slice | np.ndarray) -> TensorDataset:
    return TensorDataset(*(tensor[index] for tensor in data.tensors))


@pytest.fixture(scope="module")
def membership() -> dict[str, object]:
    """A model that memorised `members` and one that never saw them or `nonmembers`."""
    members, nonmembers = random_label_data(200, seed=1), random_label_data(200, seed=2)
    seen = memorise(make_net(0), members)
    unseen = memorise(make_net(1), random_label_data(200, seed=3))
    return {"members": members, "nonmembers": nonmembers, "seen": seen, "unseen": unseen}


def buggy_m_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The widely copied version: every row indexed with every label, log p for log(1 - p)."""
    log_prob = torch.where(probs > 0, probs.log(), torch.tensor(1e-30).log())
    reverse_prob = 1 - probs
    log_reverse_prob = torch.where(probs > 0, probs.log(), torch.tensor(1e-30).log())
    modified_probs = probs.clone()
    modified_probs[:, labels] = reverse_prob[:, labels]
    modified_log_probs = log_reverse_prob.clone()
    modified_log_probs[:, labels] = log_prob[:, labels]
    return -torch.sum(modified_probs * modified_log_probs, dim=-1)


# --------------------------------------------------------------------------- features
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.25, 0.5, 0.25]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 2])


def test_modified_entropy_matches_hand_computation() -> None:
    log = math.log
    expected = [
        -(0.3 * log(0.7)) - 0.2 * log(0.8) - 0.1 * log(0.9),
        -(0.9 * log(0.1)) - 0.1 * log(0.9) - 0.8 * log(0.2),
        -(0.75 * log(0.25)) - 0.25 * log(0.75) - 0.5 * log(0.5),
    ]
    np.testing.assert_allclose(modified_entropy(PROBS, LABELS).numpy(), expected, rtol=1e-12)


def test_buggy_modified_entropy_gives_a_different_answer() -> None:
    ours = modified_entropy(PROBS, LABELS)
    buggy = buggy_m_entropy(PROBS, LABELS)
    assert not torch.allclose(ours, buggy)
    # Even with a single sample (no cross-row indexing) the log p / log(1 - p) mix-up differs.
    one = PROBS[:1]
    assert not torch.allclose(modified_entropy(one, LABELS[:1]), buggy_m_entropy(one, LABELS[:1]))


def test_modified_entropy_is_finite_at_zero_and_one() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    values = modified_entropy(probs, torch.tensor([0, 0]))
    assert torch.isfinite(values).all()
    assert values[0].item() == pytest.approx(0.0)  # certain and right
    assert values[1].item() > 60.0  # certain and wrong: -(1 - 0) log(1e-30) = 69.08


def test_sample_features_match_hand_computation() -> None:
    feats = sample_features(PROBS, LABELS)
    assert set(feats) == {"correctness", "confidence", "entropy", "m_entropy", "prob"}
    np.testing.assert_array_equal(feats["correctness"].ravel().numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(feats["confidence"].ravel().numpy(), [0.7, 0.1, 0.25])
    entropy = [-sum(p * math.log(p) for p in row) for row in PROBS.tolist()]
    np.testing.assert_allclose(feats["entropy"].ravel().numpy(), entropy)
    assert feats["prob"].shape == (3, 3)
    with pytest.raises(ModeConnError, match="Unknown MIA features"):
        sample_features(PROBS, LABELS, ("loss",))
    with pytest.raises(ModeConnError, match="class indices"):
        sample_features(PROBS, torch.tensor([0, 1, 3]))


def test_logit_confidence_is_stable_log_odds() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [60.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    p = torch.softmax(logits, dim=1)[0, 1].item()
    values = logit_confidence(logits, labels)
    assert values[0].item() == pytest.approx(math.log(p / (1 - p)))
    assert values[1].item() == pytest.approx(60.0 - math.log(2.0))  # p_y rounds to 1 here


def test_loss_signal_stays_exact_where_the_label_dominates() -> None:
    # Label margins of 10 to 80: logsumexp(z) - z_y is exactly 0 in float64 from about 37 on.
    margins = torch.tensor([10.0, 30.0, 40.0, 50.0, 80.0], dtype=torch.float64)
    logits = torch.stack([margins, torch.zeros(5, dtype=torch.float64)], dim=1)
    labels = torch.zeros(5, dtype=torch.long)
    naive = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert (naive[2:] == 0).all()  # the ties the stable form avoids
    out = Outputs(naive, torch.ones(5), {"logits": logits.float(), "labels": labels})
    score = member_signal(out, "loss")
    expected = [-math.log1p(math.exp(-m)) for m in margins.tolist()]
    np.testing.assert_allclose(score, expected, rtol=1e-12)
    assert np.all(np.diff(score) > 0)  # a larger margin is strictly more member-like


def test_svc_loss_feature_is_the_exact_loss_of_the_attack_signal() -> None:
    # The task's float32 loss rounds to 0 (or to float32 noise) at margins of 20-35; the SVC
    # feature and the threshold signal read one float64 loss recomputed from the logits.
    margins = torch.tensor([0.5, 5.0, 20.0, 30.0, 35.0], dtype=torch.float64)
    logits = torch.stack([margins, torch.zeros(5, dtype=torch.float64)], dim=1).float()
    labels = torch.zeros(5, dtype=torch.long)
    task_loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert (task_loss[2:] == 0).all()
    out = Outputs(task_loss, torch.ones(5), {"logits": logits, "labels": labels})
    expected = [math.log1p(math.exp(-m)) for m in margins.tolist()]
    feature = feature_arrays(out, ("loss",))["loss"]
    assert feature.shape == (5, 1) and feature.dtype == np.float64
    np.testing.assert_allclose(feature[:, 0], expected, rtol=1e-6)  # float32 logits
    np.testing.assert_array_equal(member_signal(out, "loss"), -sample_loss(out))
    # Without class logits (a language model's answer NLL) it is the task's own loss.
    plain = Outputs(task_loss, torch.ones(5), {})
    np.testing.assert_array_equal(feature_arrays(plain, ("loss",))["loss"][:, 0], task_loss)


def test_threshold_attack_resolves_low_fpr_among_confident_samples() -> None:
    # Every sample is classified with a margin of 40-70, so the naive loss ties all
    # non-members at 0; members lead by more and are told apart at 1 % FPR.
    g = torch.Generator().manual_seed(0)
    nonmember_margins = 40.0 + 10.0 * torch.rand(500, generator=g)
    member_margins = 45.0 + 25.0 * torch.rand(200, generator=g)

    class Margin(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], dim=1)

    def data(margins: torch.Tensor) -> TensorDataset:
        return TensorDataset(margins[:, None], torch.zeros(len(margins), dtype=torch.long))

    result = threshold_attack(
        Margin(), member=data(member_margins), nonmember=data(nonmember_margins), fprs=(0.01,)
    )["loss"]
    expected = roc_metrics(member_margins.numpy(), nonmember_margins.numpy(), fprs=(0.01,))
    assert result.auc == pytest.approx(expected.auc)
    assert result.tpr_at_fpr[0.01] == pytest.approx(expected.tpr_at_fpr[0.01])
    assert result.tpr_at_fpr[0.01] > 0.5


# --------------------------------------------------------------------------- ROC metrics
def brute_force_tpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    best = 0.0
    for threshold in np.concatenate([members, nonmembers, [np.inf]]):
        if np.mean(nonmembers >= threshold) <= fpr:
            best = max(best, float(np.mean(members >= threshold)))
    return best


def test_roc_metrics_against_sklearn_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    members = rng.normal(1.0, 1.0, 300)
    nonmembers = rng.normal(0.0, 1.0, 1000)
    result = roc_metrics(members, nonmembers, fprs=(0.1, 0.01, 0.001))
    truth = np.r_[np.ones(300), np.zeros(1000)]
    assert result.auc == pytest.approx(roc_auc_score(truth, np.r_[members, nonmembers]))
    for fpr in (0.1, 0.01, 0.001):
        assert result.tpr_at_fpr[fpr] == pytest.approx(brute_force_tpr(members, nonmembers, fpr))
    assert 0.0 < result.tpr_at_fpr[0.001] <= result.tpr_at_fpr[0.01] <= result.tpr_at_fpr[0.1]


def test_roc_metrics_rejects_one_sided_input() -> None:
    with pytest.raises(ModeConnError, match="both members and non-members"):
        roc_metrics([0.5, 0.7], [])
    with pytest.raises(ModeConnError, match="NaN"):
        roc_metrics([0.5, np.nan], [0.1])


def test_threshold_attack_on_a_memorising_model(membership: dict) -> None:
    members, nonmembers, seen = membership["members"], membership["nonmembers"], membership["seen"]
    result = threshold_attack(seen, member=members, nonmember=nonmembers, target=members)
    assert set(result) == {"loss", "confidence", "entropy"}
    with torch.no_grad():
        losses = [
            nn.functional.cross_entropy(seen(d.tensors[0]), d.tensors[1], reduction="none")
            for d in (members, nonmembers)
        ]
    truth = np.r_[np.ones(200), np.zeros(200)]
    expected = roc_auc_score(truth, -torch.cat(losses).numpy())
    assert result["loss"].auc == pytest.approx(expected, abs=1e-9)
    assert result["loss"].auc > 0.95
    assert result["loss"].target_auc == pytest.approx(result["loss"].auc)
    assert result["loss"].target_member_rate > 0.9
    threshold = result["loss"].threshold
    assert np.mean(-losses[1].numpy() >= threshold) < 0.2  # few non-members above it


def test_threshold_attack_on_an_unseen_model_is_near_chance(membership: dict) -> None:
    result = threshold_attack(
        membership["unseen"],
        member=membership["members"],
        nonmember=membership["nonmembers"],
        signals=("loss", "m_entropy"),
    )
    assert abs(result["loss"].auc - 0.5) < 0.1
    assert result["loss"].target_auc is None
    with pytest.raises(ModeConnError, match="Unknown signals"):
        threshold_attack(
            membership["seen"],
            member=membership["members"],
            nonmember=membership["nonmembers"],
            signals=("prob",),
        )


# --------------------------------------------------------------------------- SVC attack
def test_svc_mia_high_on_memorised_members(membership: dict) -> None:
    members, nonmembers = membership["members"], membership["nonmembers"]
    scores = svc_mia(
        membership["seen"],
        shadow_train=subset(members, slice(0, 100)),
        shadow_test=subset(nonmembers, slice(0, 100)),
        target_train=subset(members, slice(100, 200)),
        target_test=subset(nonmembers, slice(100, 200)),
    )
    assert set(scores) == {"correctness", "confidence", "entropy", "m_entropy", "prob"}
    for feature in ("correctness", "confidence", "m_entropy"):
        assert scores[feature] > 0.85, (feature, scores)


def test_svc_mia_near_balance_when_never_seen(membership: dict) -> None:
    members, nonmembers = membership["members"], membership["nonmembers"]
    scores = svc_mia(
        membership["unseen"],
        shadow_train=subset(members, slice(0, 100)),
        shadow_test=subset(nonmembers, slice(0, 100)),
        target_train=subset(members, slice(100, 200)),
        target_test=subset(nonmembers, slice(100, 200)),
    )
    for feature, score in scores.items():
        assert abs(score - 0.5) < 0.12, (feature, scores)


def test_svc_mia_follows_the_sklearn_protocol(membership: dict) -> None:
    model, members, nonmembers = membership["seen"], membership["members"], membership["nonmembers"]
    shadow_in, shadow_out = subset(members, slice(0, 60)), subset(nonmembers, slice(0, 60))
    target = subset(nonmembers, slice(60, 200))
    score = svc_mia(
        model,
        shadow_train=shadow_in,
        shadow_test=shadow_out,
        target_test=target,
        features=("entropy",),
    )["entropy"]

    def entropy(data: TensorDataset) -> np.ndarray:
        with torch.no_grad():
            p = torch.softmax(model(data.tensors[0]).double(), dim=1)
        return (-(p * p.log()).sum(dim=1)).numpy()[:, None]

    svc = SVC(C=3, gamma="auto", kernel="rbf")
    svc.fit(np.r_[entropy(shadow_in), entropy(shadow_out)], np.r_[np.ones(60), np.zeros(60)])
    expected = 1.0 - svc.predict(entropy(target)).mean()
    assert score == pytest.approx(expected, abs=1e-12)


def test_svc_mia_rejects_tiny_or_missing_inputs(membership: dict) -> None:
    members, nonmembers = membership["members"], membership["nonmembers"]
    with pytest.raises(ModeConnError, match="at least 5"):
        svc_mia(
            membership["seen"],
            shadow_train=subset(members, slice(0, 3)),
            shadow_test=nonmembers,
            target_test=nonmembers,
        )
    with pytest.raises(ModeConnError, match="needs targets"):
        svc_mia(membership["seen"], shadow_train=members, shadow_test=nonmembers)
    with pytest.raises(ModeConnError, match="empty"):
        svc_mia(
            membership["seen"],
            shadow_train=members,
            shadow_test=subset(members, slice(0, 0)),
            target_test=nonmembers,
        )


# --------------------------------------------------------------------------- LiRA
def testlira_scores_match_hand_computed_gaussians() -> None:
    reference = np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 5.0], [-2.0, 3.0]])
    in_mask = np.array([[True, False], [True, False], [False, True], [False, True]])
    target = np.array([2.5, 0.5])
    online = lira_scores(target, reference, in_mask, online=True, fix_variance=False)
    # Example 0: IN {1, 3} -> N(2, 1); OUT {0, -2} -> N(-1, 1).
    # Example 1: IN {5, 3} -> N(4, 1); OUT {0, 1} -> N(0.5, 0.5).
    expected = [
        norm.logpdf(2.5, 2.0, 1.0) - norm.logpdf(2.5, -1.0, 1.0),
        norm.logpdf(0.5, 4.0, 1.0) - norm.logpdf(0.5, 0.5, 0.5),
    ]
    np.testing.assert_allclose(online, expected)
    offline = lira_scores(target, reference, in_mask, online=False, fix_variance=False)
    np.testing.assert_allclose(offline, [(2.5 + 1.0) / 1.0, (0.5 - 0.5) / 0.5])
    pooled = lira_scores(target, reference, in_mask, online=False, fix_variance=True)
    # OUT residuals: (1, -1) and (-0.5, 0.5): sum of squares 2.5 over 4 - 2 = 2 dof.
    np.testing.assert_allclose(pooled, [3.5 / math.sqrt(1.25), 0.0])


def test_lira_needs_enough_reference_models() -> None:
    reference = np.zeros((4, 2))
    in_mask = np.array([[True, True], [False, True], [False, False], [False, False]])
    with pytest.raises(ModeConnError, match="fewer than 2 IN"):
        lira_scores(np.zeros(2), reference, in_mask, online=True, fix_variance=False)
    scores = lira_scores(np.zeros(2), reference, in_mask, online=True, fix_variance=True)
    assert np.isfinite(scores).all()


def test_train_reference_models_balances_halves() -> None:
    data = random_label_data(30, seed=4)
    refs = train_reference_models(lambda: make_net(), data, k=4, epochs=1, progress=False)
    assert len(refs.models) == 4 and refs.in_mask.shape == (4, 30)
    np.testing.assert_array_equal(refs.in_mask.sum(axis=0), np.full(30, 2))
    assert not any(model.training for model in refs.models)
    again = train_reference_models(lambda: make_net(), data, k=4, epochs=1, progress=False)
    np.testing.assert_array_equal(refs.in_mask, again.in_mask)
    for a, b in zip(refs.models, again.models, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    with pytest.raises(ModeConnError, match="k must be"):
        train_reference_models(lambda: make_net(), data, k=1, progress=False)


def test_lira_separates_members_of_a_memorising_model() -> None:
    data = random_label_data(120, seed=5)
    refs = train_reference_models(
        lambda: make_net(),
        data,
        k=6,
        train_fn=lambda m, d: memorise(m, d, steps=60),
        progress=False,
    )
    member = np.zeros(120, dtype=bool)
    member[np.random.default_rng(9).permutation(120)[:60]] = True
    target = memorise(make_net(7), subset(data, member), steps=60)
    for online in (True, False):
        scores = lira(target, refs.models, data, refs.in_mask, online=online)
        assert scores.shape == (120,)
        assert roc_metrics(scores[member], scores[~member]).auc > 0.9, online


def test_lira_rejects_shuffled_loaders_and_bad_masks() -> None:
    data = random_label_data(10, seed=6)
    models = [make_net(i) for i in range(2)]
    mask = np.array([[True] * 5 + [False] * 5, [False] * 5 + [True] * 5])
    with pytest.raises(ModeConnError, match="shuffl"):
        lira(make_net(), models, DataLoader(data, batch_size=4, shuffle=True), mask)
    with pytest.raises(ModeConnError, match="Shapes"):
        lira(make_net(), models, data, mask[:, :4])
    with pytest.raises(ModeConnError, match="boolean"):
        lira(make_net(), models, data, mask * 2)


# --------------------------------------------------------------------------- tasks
class TinyLM(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(7, 8)
        self.head = nn.Linear(8, 7)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


def lm_samples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 7, (n, 6), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def answer_nll(model: nn.Module, samples: list[dict[str, torch.Tensor]]) -> np.ndarray:
    with torch.no_grad():
        values = []
        for sample in samples:
            logits, labels = model(sample["input_ids"][None])[0, :-1], sample["labels"][1:]
            keep = labels != -100
            values.append(float(nn.functional.cross_entropy(logits[keep], labels[keep])))
    return np.array(values)


def test_threshold_attack_on_a_language_model_thresholds_the_answer_nll() -> None:
    model, members, nonmembers = TinyLM(0), lm_samples(30, 1), lm_samples(30, 2)
    result = threshold_attack(
        model, member=members, nonmember=nonmembers, signals=("loss",), task=CausalLMTask()
    )
    truth = np.r_[np.ones(30), np.zeros(30)]
    scores = -np.r_[answer_nll(model, members), answer_nll(model, nonmembers)]
    assert result["loss"].auc == pytest.approx(roc_auc_score(truth, scores), abs=1e-6)
    with pytest.raises(ModeConnError, match="CausalLMTask"):
        threshold_attack(model, member=members, nonmember=nonmembers, task=CausalLMTask())


def test_svc_mia_on_a_language_model_needs_the_loss_feature() -> None:
    model, members, nonmembers = TinyLM(0), lm_samples(30, 1), lm_samples(30, 2)
    with pytest.raises(ModeConnError, match="'loss' feature"):
        svc_mia(
            model,
            shadow_train=members,
            shadow_test=nonmembers,
            target_test=nonmembers,
            task=CausalLMTask(),
        )
    score = svc_mia(
        model,
        shadow_train=members,
        shadow_test=nonmembers,
        target_test=nonmembers,
        features=("loss",),
        task=CausalLMTask(),
    )["loss"]
    x = np.r_[answer_nll(model, members), answer_nll(model, nonmembers)][:, None]
    svc = SVC(C=3, gamma="auto", kernel="rbf", random_state=0).fit(
        x, np.r_[np.ones(30), np.zeros(30)]
    )
    expected = 1.0 - svc.predict(answer_nll(model, nonmembers)[:, None]).mean()
    assert score == pytest.approx(expected, abs=1e-6)


def test_lira_on_a_language_model_uses_the_log_likelihood() -> None:
    data = lm_samples(6, 3)
    refs = [TinyLM(10 + j) for j in range(4)]
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]] * 2, dtype=bool)
    scores = lira(TinyLM(0), refs, data, mask, online=False, task=CausalLMTask())
    reference = np.stack([-answer_nll(m, data) for m in refs])
    expected = lira_scores(
        -answer_nll(TinyLM(0), data), reference, mask, online=False, fix_variance=False
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_reference_models_are_trained_by_retrain() -> None:
    data = random_label_data(20, seed=4)
    refs = train_reference_models(
        lambda: make_net(0), data, k=2, epochs=2, lr=0.05, seed=7, progress=False
    )
    for j, model in enumerate(refs.models):
        half = Subset(data, np.flatnonzero(refs.in_mask[j]).tolist())
        expected = retrain(
            lambda: make_net(0),
            half,
            epochs=2,
            lr=0.05,
            seed=7 + j,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=64,
            progress=False,
        )
        for a, b in zip(model.parameters(), expected.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
