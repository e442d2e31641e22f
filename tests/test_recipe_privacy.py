"""The recipe's privacy term against hand computations and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import Bigram, assert_unchanged, model_state
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from modeconn_unlearn.recipe.privacy import (
    auc_standard_error,
    member_scores,
    privacy_auc,
    privacy_penalty,
)
from modeconn_unlearn.tasks import CausalLMTask


def _min_k_pp_by_hand(table: np.ndarray, ids: list[int], labels: list[int], k: float) -> float:
    """Min-K%++ of one sequence: (log p(x) - mu) / sigma per scored token, lowest k averaged."""
    scores = []
    for position in range(1, len(ids)):
        if labels[position] == -100:
            continue
        row = table[ids[position - 1]]
        logp = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        p = np.exp(logp)
        mu = float((p * logp).sum())
        sigma = math.sqrt(float((p * logp**2).sum()) - mu**2)
        scores.append((logp[labels[position]] - mu) / sigma)
    lowest = sorted(scores)[: max(1, int(k * len(scores)))]
    return float(np.mean(lowest))


def test_classifier_member_scores_are_minus_the_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    scores = member_scores(model, TensorDataset(x, y))
    with torch.no_grad():
        expected = -F.cross_entropy(model(x).double(), y, reduction="none").numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)


def test_privacy_auc_is_scikit_learns_auc_of_forget_against_holdout() -> None:
    torch.manual_seed(1)
    model = nn.Linear(5, 3)
    forget = TensorDataset(torch.randn(30, 5), torch.randint(0, 3, (30,)))
    holdout = TensorDataset(torch.randn(50, 5), torch.randint(0, 3, (50,)))
    members, nonmembers = member_scores(model, forget), member_scores(model, holdout)
    truth = np.r_[np.ones(30), np.zeros(50)]
    expected = roc_auc_score(truth, np.r_[members, nonmembers])
    assert privacy_auc(model, forget, holdout) == pytest.approx(expected)
    # Swapping the roles mirrors the AUC around 0.5.
    assert privacy_auc(model, holdout, forget) == pytest.approx(1.0 - expected)


def test_causal_lm_member_scores_are_min_k_pp_by_hand() -> None:
    torch.manual_seed(2)
    table = torch.randn(7, 7)
    model = Bigram(table)
    rows = [
        ([0, 1, 2, 3, 4, 5], [-100, -100, 2, 3, 4, 5]),
        ([6, 5, 4, 3, 2, 1], [-100, -100, -100, 3, 2, 1]),
    ]
    data = [(torch.tensor(ids), torch.tensor(labels)) for ids, labels in rows]
    scores = member_scores(model, data, task=CausalLMTask())
    expected = [_min_k_pp_by_hand(table.double().numpy(), ids, labels, 0.2) for ids, labels in rows]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_penalty_is_the_weighted_distance_from_chance() -> None:
    assert privacy_penalty(0.5, 3.0) == 0.0
    assert privacy_penalty(0.3, 0.5) == pytest.approx(10.0)
    assert privacy_penalty(0.9, 1.0) == pytest.approx(privacy_penalty(0.1, 1.0))


def test_auc_standard_error_is_hanley_and_mcneils() -> None:
    auc, m, n = 0.8, 40, 120
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    by_hand = math.sqrt(
        (auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n)
    )
    assert auc_standard_error(auc, m, n) == pytest.approx(by_hand)
    # More samples, a smaller error; no samples, no error to account for.
    assert auc_standard_error(auc, 4 * m, 4 * n) < auc_standard_error(auc, m, n)
    assert auc_standard_error(auc, 0, n) == 0.0


def test_auc_standard_error_matches_the_spread_of_simulated_aucs() -> None:
    rng = np.random.default_rng(0)
    aucs = [
        roc_auc_score(np.r_[np.ones(50), np.zeros(250)], rng.normal(size=300)) for _ in range(2000)
    ]
    assert auc_standard_error(0.5, 50, 250) == pytest.approx(np.std(aucs), rel=0.1)


def test_privacy_auc_leaves_the_models_as_they_were() -> None:
    torch.manual_seed(3)
    classifier = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    classifier[0].weight.requires_grad_(False)
    forget = TensorDataset(torch.randn(12, 5), torch.randint(0, 3, (12,)))
    holdout = TensorDataset(torch.randn(20, 5), torch.randint(0, 3, (20,)))
    before = model_state(classifier)  # in train mode: BatchNorm would update, dropout drop
    privacy_auc(classifier, forget, holdout)
    assert_unchanged(classifier, before)
    language_model = Bigram(torch.randn(7, 7))
    data = [(torch.tensor([0, 1, 2, 3]), torch.tensor([-100, 1, 2, 3]))] * 2
    before = model_state(language_model)
    privacy_auc(language_model, data, data, task=CausalLMTask())
    assert_unchanged(language_model, before)
