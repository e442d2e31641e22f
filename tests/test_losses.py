from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.data import UnlearnBatch
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.losses import (
    AdaptiveBeta,
    UnlearnLoss,
    finetune,
    gradient_ascent,
    gradient_difference,
    idk,
    mcu_objective,
    neggrad_plus,
    npo,
    random_label,
    rmu,
    simnpo,
)
from modeconn_unlearn.tasks import CausalLMTask


class Table(nn.Module):
    """Returns fixed, trainable logits: row i for input i."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.logits[index]


LOGITS = np.array(
    [
        [2.0, 0.5, -1.0],  # retain, y=0 (correct)
        [0.1, 0.3, 0.2],  # retain, y=2 (wrong: argmax 1)
        [-0.5, 1.5, 0.0],  # forget, y=1 (correct)
        [1.0, -2.0, 0.5],  # forget, y=2 (wrong: argmax 0)
        [0.0, 0.0, 3.0],  # forget, y=2 (correct)
    ]
)
TARGETS = [0, 2, 1, 2, 2]
IS_FORGET = [False, False, True, True, True]


def hand_ce(rows: list[int], labels: list[int] | None = None) -> float:
    """Mean cross-entropy -log softmax(z)_y over the given rows, in numpy."""
    labels = [TARGETS[i] for i in rows] if labels is None else labels
    values = []
    for i, y in zip(rows, labels, strict=True):
        z = LOGITS[i]
        values.append(-(z[y] - np.log(np.exp(z).sum())))
    return float(np.mean(values))


def hand_ce_of(logits: np.ndarray, rows: list[int]) -> float:
    """Mean cross-entropy of ``rows`` under other logits (labels from TARGETS)."""
    values = [-(logits[i][TARGETS[i]] - np.log(np.exp(logits[i]).sum())) for i in rows]
    return float(np.mean(values))


def fixed_batch(rows=range(5)) -> tuple[Table, UnlearnBatch]:
    rows = list(rows)
    batch = UnlearnBatch(
        torch.tensor(rows),
        torch.tensor([TARGETS[i] for i in rows]),
        torch.tensor([IS_FORGET[i] for i in rows]),
    )
    return Table(LOGITS), batch


RETAIN, FORGET = [0, 1], [2, 3, 4]


def test_gradient_ascent_matches_hand_computation():
    model, batch = fixed_batch()
    loss = gradient_ascent()
    assert loss(model, batch).item() == pytest.approx(-hand_ce(FORGET), rel=1e-12)
    assert loss.needs == ("forget",)
    assert loss.last_stats["forget_acc"] == pytest.approx(200 / 3)
    assert loss.last_stats["retain_acc"] == 50.0
    assert (loss.last_stats["n_retain"], loss.last_stats["n_forget"]) == (2.0, 3.0)


def test_finetune_matches_hand_computation():
    model, batch = fixed_batch()
    loss = finetune()
    assert loss(model, batch).item() == pytest.approx(hand_ce(RETAIN), rel=1e-12)
    assert loss.needs == ("retain",)


def test_neggrad_plus_matches_hand_computation():
    model, batch = fixed_batch()
    loss = neggrad_plus(0.8)
    expected = 0.8 * hand_ce(RETAIN) - 0.2 * hand_ce(FORGET)
    assert loss(model, batch).item() == pytest.approx(expected, rel=1e-12)
    assert loss.last_stats["beta"] == 0.8


def test_mcu_objective_constant_beta_matches_hand_computation():
    model, batch = fixed_batch()
    loss = mcu_objective(0.3)
    expected = hand_ce(RETAIN) - 0.3 * hand_ce(FORGET)
    assert loss(model, batch).item() == pytest.approx(expected, rel=1e-12)
    assert loss.last_stats["beta"] == 0.3


def test_mcu_objective_adaptive_beta_uses_batch_accuracies():
    # Batch accuracies: retain 50 %, forget 66.7 %.
    model, batch = fixed_batch()
    # forget target 60: forget excess (66.7-60)/60 = 0.111 ; retain excess (50-40)/40 = 0.25 -> low
    loss = mcu_objective(AdaptiveBeta(retain_target=40.0, forget_target=60.0, low=0.05, high=0.7))
    value = loss(model, batch).item()
    assert loss.last_stats["beta"] == 0.05
    assert value == pytest.approx(hand_ce(RETAIN) - 0.05 * hand_ce(FORGET), rel=1e-12)
    # retain target 90: retain excess negative -> high
    loss = mcu_objective(AdaptiveBeta(retain_target=90.0, forget_target=60.0, low=0.05, high=0.7))
    value = loss(model, batch).item()
    assert loss.last_stats["beta"] == 0.7
    assert value == pytest.approx(hand_ce(RETAIN) - 0.7 * hand_ce(FORGET), rel=1e-12)
    # forget accuracy at or below its target -> beta 0: the retain term alone
    loss = mcu_objective(AdaptiveBeta(retain_target=90.0, forget_target=70.0))
    assert loss(model, batch).item() == pytest.approx(hand_ce(RETAIN), rel=1e-12)
    assert loss.last_stats["beta"] == 0.0


def test_mcu_objective_accepts_any_beta_rule():
    seen = []

    def rule(retain_acc, forget_acc):
        seen.append((retain_acc, forget_acc))
        return 2.0

    model, batch = fixed_batch()
    value = mcu_objective(rule)(model, batch).item()
    assert seen == [(50.0, pytest.approx(200 / 3))]
    assert value == pytest.approx(hand_ce(RETAIN) - 2.0 * hand_ce(FORGET), rel=1e-12)


def test_mcu_objective_matching_form_pulls_the_forget_loss_to_its_target():
    forget_ce = hand_ce(FORGET)
    for target in (forget_ce - 0.4, forget_ce + 0.4):  # from above and from below
        model, batch = fixed_batch()
        loss = mcu_objective(0.7, forget_loss=target)
        value = loss(model, batch)
        assert value.item() == pytest.approx(hand_ce(RETAIN) + 0.7 * 0.4, rel=1e-12)
        # The gradient on the forget rows points the forget loss toward the target.
        value.backward()
        step = -1e-3 * model.logits.grad
        moved = hand_ce_of(LOGITS + step.detach().numpy(), FORGET)
        assert abs(moved - target) < abs(forget_ce - target)
    assert "forget_loss=" in repr(mcu_objective(0.7, forget_loss=1.0))


def test_mcu_objective_matching_form_without_forget_samples_is_the_retain_term():
    model, batch = fixed_batch(RETAIN)
    value = mcu_objective(2.0, forget_loss=5.0)(model, batch)
    assert value.item() == pytest.approx(hand_ce(RETAIN), rel=1e-12)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "x"])
def test_mcu_objective_refuses_a_bad_forget_loss(bad) -> None:
    with pytest.raises(ModeConnError, match="forget_loss"):
        mcu_objective(1.0, forget_loss=bad)


def test_random_label_two_classes_flips_forget_labels():
    # With 2 classes the only wrong label is 1 - y, so the loss is known exactly.
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0])
    is_forget = torch.tensor([False, True, True, False])
    model = Table(logits)
    batch = UnlearnBatch(torch.arange(4), targets, is_forget)
    expected = F.cross_entropy(logits, torch.tensor([0, 0, 0, 0])).item()
    for seed in range(5):
        torch.manual_seed(seed)
        assert random_label(2)(model, batch).item() == pytest.approx(expected, rel=1e-12)


def test_random_label_never_keeps_the_true_label_and_is_uniform():
    # Zero logits: d(mean CE)/d logits_i = (1/C - onehot(label_i)) / N, so the gradient
    # reveals each label that was used.
    n, c = 4500, 10
    model = Table(torch.zeros(n, c))
    targets = torch.full((n,), 3)
    is_forget = torch.arange(n) % 3 != 0
    loss = random_label(c)
    value = loss(model, UnlearnBatch(torch.arange(n), targets, is_forget))
    assert value.item() == pytest.approx(math.log(c), rel=1e-12)
    value.backward()
    used = model.logits.grad.argmin(dim=1)
    assert torch.equal(used[~is_forget], targets[~is_forget])
    forget_labels = used[is_forget]
    assert not bool((forget_labels == 3).any())
    counts = torch.bincount(forget_labels, minlength=c).tolist()
    expected = int(is_forget.sum()) / (c - 1)
    assert counts[3] == 0
    assert all(abs(k - expected) < 0.2 * expected for i, k in enumerate(counts) if i != 3)


@pytest.mark.parametrize(
    "make", [gradient_ascent, finetune, lambda: neggrad_plus(0.5), lambda: mcu_objective(0.5)]
)
@pytest.mark.parametrize("rows", [RETAIN, FORGET])
def test_missing_part_contributes_zero_without_nan(make, rows):
    model, batch = fixed_batch(rows)
    loss = make()
    value = loss(model, batch)
    assert torch.isfinite(value)
    value.backward()  # still differentiable
    assert torch.isfinite(model.logits.grad).all()
    only = "retain_acc" if rows == RETAIN else "forget_acc"
    other = "forget_acc" if rows == RETAIN else "retain_acc"
    assert only in loss.last_stats and other not in loss.last_stats


def test_missing_parts_match_the_remaining_term():
    model, batch = fixed_batch(RETAIN)
    assert gradient_ascent()(model, batch).item() == 0.0
    assert mcu_objective(0.5)(model, batch).item() == pytest.approx(hand_ce(RETAIN), rel=1e-12)
    model, batch = fixed_batch(FORGET)
    assert finetune()(model, batch).item() == 0.0
    value = neggrad_plus(0.25)(model, batch).item()
    assert value == pytest.approx(-0.75 * hand_ce(FORGET), rel=1e-12)


def test_adaptive_beta_on_batch_without_forget_samples_is_zero():
    model, batch = fixed_batch(RETAIN)
    loss = mcu_objective(AdaptiveBeta(retain_target=99.0, forget_target=0.0))
    assert torch.isfinite(loss(model, batch))
    assert loss.last_stats["beta"] == 0.0


# --------------------------------------------------------------------------- AdaptiveBeta
def test_adaptive_beta_branches():
    rule = AdaptiveBeta(retain_target=98.0, forget_target=90.0, low=0.01, high=0.5)
    # forget at or below target -> 0
    assert rule(50.0, 90.0) == 0.0
    assert rule(99.0, 80.0) == 0.0
    assert rule(99.0, None) == 0.0
    # forget excess (91-90)/90 = 0.0111 < retain excess (99.5-98)/98 = 0.0153 -> low
    assert rule(99.5, 91.0) == 0.01
    # forget excess 0.0111 > retain excess (99-98)/98 = 0.0102 -> high
    assert rule(99.0, 91.0) == 0.5
    # retain below its target: negative excess -> high
    assert rule(97.0, 90.5) == 0.5
    # equal excesses -> high (the strict inequality fails)
    assert AdaptiveBeta(50.0, 50.0)(60.0, 60.0) == 0.5
    # no retain sample: retain counts as on target (excess 0) -> high
    assert rule(None, 91.0) == 0.5


def test_adaptive_beta_zero_targets_do_not_divide_by_zero():
    rule = AdaptiveBeta(retain_target=99.0, forget_target=0.0)
    assert rule(99.0, 0.0) == 0.0
    assert rule(100.0, 0.5) == 0.5  # infinite relative excess
    assert rule(None, 10.0) == 0.5
    both = AdaptiveBeta(retain_target=0.0, forget_target=0.0, low=0.1, high=0.2)
    assert both(0.0, 5.0) == 0.2
    assert both(10.0, 5.0) == 0.2  # inf < inf is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retain_target": 101.0, "forget_target": 0.0},
        {"retain_target": 90.0, "forget_target": -1.0},
        {"retain_target": 90.0, "forget_target": float("nan")},
        {"retain_target": 90.0, "forget_target": 10.0, "low": -0.1},
        {"retain_target": 90.0, "forget_target": 10.0, "high": float("inf")},
    ],
)
def test_adaptive_beta_validation(kwargs):
    with pytest.raises(ModeConnError):
        AdaptiveBeta(**kwargs)


# --------------------------------------------------------------------------- protocol, errors
def test_plain_functions_satisfy_the_protocol():
    def mine(model, batch):
        return F.cross_entropy(model(batch.inputs), batch.targets)

    assert isinstance(mine, UnlearnLoss)
    assert isinstance(mcu_objective(0.1), UnlearnLoss)


def test_argument_errors():
    with pytest.raises(ModeConnError, match=r"\[0, 1\]"):
        neggrad_plus(1.5)
    with pytest.raises(ModeConnError, match=">= 0"):
        mcu_objective(-0.1)
    with pytest.raises(ModeConnError, match="real number"):
        mcu_objective("big")
    with pytest.raises(ModeConnError, match=">= 2"):
        random_label(1)
    model, batch = fixed_batch()
    with pytest.raises(ModeConnError, match="3 classes"):
        random_label(4)(model, batch)
    bad = UnlearnBatch(batch.inputs, torch.tensor([0, 1, 2, 3, 0]), batch.is_forget)
    with pytest.raises(ModeConnError, match=r"\[0, 3\)"):
        random_label(3)(model, bad)
    with pytest.raises(ModeConnError, match="UnlearnBatch"):
        finetune()(model, (batch.inputs, batch.targets))


def test_integer_is_forget_flags_are_accepted():
    model, batch = fixed_batch()
    as_int = UnlearnBatch(batch.inputs, batch.targets, batch.is_forget.long())
    assert mcu_objective(0.3)(model, as_int).item() == pytest.approx(
        hand_ce(RETAIN) - 0.3 * hand_ce(FORGET), rel=1e-12
    )


# --------------------------------------------------------------------------- task layer
class TinyLM(nn.Module):
    """Embedding + linear head: logits (N, L, V), called with input_ids (and attention_mask)."""

    def __init__(self, vocab: int = 7, dim: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids))


def lm_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 7, (4, 6), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # prompt tokens are not scored
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return UnlearnBatch(inputs, labels, torch.tensor([False, True, False, True]))


def hand_lm_nll(model, batch, reduction="mean"):
    """Per-sample answer NLL computed token by token with log_softmax."""
    logits = model(**batch.inputs)
    values = []
    for i in range(len(batch.targets)):
        total, count = 0.0, 0
        for pos in range(1, batch.targets.shape[1]):
            label = int(batch.targets[i, pos])
            if label != -100:
                total = total - torch.log_softmax(logits[i, pos - 1], -1)[label]
                count += 1
        values.append(total / count if reduction == "mean" else total)
    return torch.stack(values)


def test_objectives_read_lm_batches_through_the_task():
    model, batch = TinyLM(), lm_batch()
    nll = hand_lm_nll(model, batch)
    retain, forget = nll[[0, 2]].mean(), nll[[1, 3]].mean()
    task = CausalLMTask()
    torch.testing.assert_close(finetune(task=task)(model, batch), retain)
    torch.testing.assert_close(gradient_ascent(task=task)(model, batch), -forget)
    torch.testing.assert_close(
        neggrad_plus(0.8, task=task)(model, batch), 0.8 * retain - 0.2 * forget
    )
    loss = mcu_objective(0.5, task=task)
    torch.testing.assert_close(loss(model, batch), retain - 0.5 * forget)
    assert loss.last_stats["n_forget"] == 2.0
    assert 0.0 <= loss.last_stats["forget_acc"] <= 100.0


def test_recorded_accuracy_is_100_times_mean_correctness():
    model, batch = TinyLM(), lm_batch()
    out = CausalLMTask()(model, batch.inputs, batch.targets)
    loss = finetune(task=CausalLMTask())
    loss(model, batch)
    assert loss.last_stats["retain_acc"] == pytest.approx(100.0 * float(out.correct[[0, 2]].mean()))


def test_random_label_is_classification_only():
    with pytest.raises(ModeConnError, match="ClassificationTask only"):
        random_label(3, task=CausalLMTask())


def test_objective_gradients_equal_those_of_a_summed_cross_entropy():
    model, batch = fixed_batch()
    value = neggrad_plus(0.7)(model, batch)
    (grad,) = torch.autograd.grad(value, [model.logits])
    logits = model.logits
    retain, forget = ~batch.is_forget, batch.is_forget
    # Today's formula: a part's summed cross-entropy divided by its (tensor) count.
    retain_ce = F.cross_entropy(logits[retain], batch.targets[retain], reduction="sum")
    forget_ce = F.cross_entropy(logits[forget], batch.targets[forget], reduction="sum")
    reference = 0.7 * (retain_ce / retain.sum()) - (1.0 - 0.7) * (forget_ce / forget.sum())
    (expected,) = torch.autograd.grad(reference, [model.logits])
    assert torch.equal(grad, expected)


@pytest.mark.parametrize(("retain", "forget"), [(0.99, 0.92), (1.0, 0.5), (0.9, 0.0), (0.0, 0.3)])
def test_adaptive_beta_refuses_fractions(retain, forget):
    with pytest.raises(ModeConnError, match="did you mean"):
        AdaptiveBeta(retain, forget)


def test_adaptive_beta_keeps_percentages_and_zero_targets():
    assert AdaptiveBeta(99.0, 0.0).forget_target == 0.0
    assert AdaptiveBeta(0.0, 0.0).retain_target == 0.0
    with pytest.raises(ModeConnError, match=r"99\.0 and 92\.0"):
        AdaptiveBeta(0.99, 0.92)


# --------------------------------------------------------------------------- new objectives
def test_gradient_difference_and_idk_match_hand_computation():
    model, batch = fixed_batch()
    expected = 0.7 * hand_ce(RETAIN) - 0.4 * hand_ce(FORGET)
    assert gradient_difference(0.7, 0.4)(model, batch).item() == pytest.approx(expected, rel=1e-12)
    assert idk()(model, batch).item() == pytest.approx(hand_ce(RETAIN) + hand_ce(FORGET), rel=1e-12)
    value = idk(retain_weight=0.5)(model, batch).item()
    assert value == pytest.approx(0.5 * hand_ce(RETAIN) + hand_ce(FORGET), rel=1e-12)


def hand_logp(logits: np.ndarray, rows: list[int]) -> np.ndarray:
    return np.array([logits[i][TARGETS[i]] - np.log(np.exp(logits[i]).sum()) for i in rows])


def softplus(x):
    return np.log1p(np.exp(x))


def test_npo_matches_hand_computation_for_classification():
    model, batch = fixed_batch()
    ref_logits = LOGITS * 0.5 + 0.1
    reference = Table(ref_logits)
    beta = 0.3
    loss = npo(beta, reference=reference, retain_weight=0.25)
    ratio = beta * (hand_logp(LOGITS, FORGET) - hand_logp(ref_logits, FORGET))
    expected = (2 / beta) * softplus(ratio).mean() + 0.25 * hand_ce(RETAIN)
    assert loss(model, batch).item() == pytest.approx(expected, rel=1e-12)
    assert loss.last_stats["beta"] == beta


def test_npo_uses_summed_nll_for_language_models_and_mean_nll_for_the_retain_term():
    model, reference, batch = TinyLM(), TinyLM(), lm_batch()
    summed, mean = hand_lm_nll(model, batch, "sum"), hand_lm_nll(model, batch, "mean")
    with torch.no_grad():
        ref_summed = hand_lm_nll(reference, batch, "sum")
    forget, retain = [1, 3], [0, 2]
    beta = 0.5
    ratio = beta * (-summed[forget] + ref_summed[forget])
    expected = (2 / beta) * F.softplus(ratio).mean() + 1.0 * mean[retain].mean()
    loss = npo(beta, reference=reference, retain_weight=1.0, task=CausalLMTask())
    torch.testing.assert_close(loss(model, batch), expected)


def test_npo_on_a_curve_uses_the_curve_start_as_reference():
    start, end = TinyLM(), TinyLM()
    curve = CurveModel(start, start=start, end=end)
    batch = lm_batch()
    task = CausalLMTask()
    torch.manual_seed(0)
    value = npo(0.2, task=task)(curve, batch)
    torch.manual_seed(0)
    explicit = npo(0.2, reference=start, task=task)(curve, batch)
    torch.testing.assert_close(value, explicit)
    with pytest.raises(ModeConnError, match="reference="):
        npo(0.2, task=task)(TinyLM(), batch)


def test_simnpo_matches_hand_computation():
    model, batch = fixed_batch()
    beta, gamma = 2.5, 0.4
    ce_forget = -hand_logp(LOGITS, FORGET)
    log_sigmoid = -np.log1p(np.exp(-(beta * ce_forget - gamma)))
    expected = -(2 / beta) * log_sigmoid.mean() + 0.5 * hand_ce(RETAIN)
    value = simnpo(beta, gamma, retain_weight=0.5)(model, batch)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_simnpo_normalises_by_answer_length_whatever_the_task_reduction():
    model, batch = TinyLM(), lm_batch()
    mean, summed = hand_lm_nll(model, batch, "mean"), hand_lm_nll(model, batch, "sum")
    forget, retain = [1, 3], [0, 2]
    expected = -(2 / 2.0) * F.logsigmoid(2.0 * mean[forget]).mean() + summed[retain].mean()
    loss = simnpo(2.0, retain_weight=1.0, task=CausalLMTask(reduction="sum"))
    torch.testing.assert_close(loss(model, batch), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: npo(0.0),
        lambda: npo(-1.0),
        lambda: npo(0.1, retain_weight=-1.0),
        lambda: npo(0.1, reference="original"),
        lambda: simnpo(0.0),
        lambda: simnpo(1.0, gamma=float("inf")),
        lambda: gradient_difference(-1.0),
        lambda: idk(retain_weight=-0.5),
    ],
)
def test_new_objectives_refuse_bad_settings(make):
    with pytest.raises(ModeConnError):
        make()


def test_npo_is_bounded_below_by_zero_where_gradient_ascent_diverges():
    model, batch = fixed_batch()
    reference = Table(LOGITS)
    with torch.no_grad():
        for row in FORGET:  # make every forget label extremely unlikely
            model.logits[row] = 50.0
            model.logits[row, TARGETS[row]] = -50.0
    value = npo(1.0, reference=reference)(model, batch).item()
    assert 0.0 <= value < 1e-12
    assert gradient_ascent()(model, batch).item() < -99.0


# --- RMU -------------------------------------------------------------------------------------


def rmu_direction(features: int, seed: int = 0) -> torch.Tensor:
    u = torch.rand(features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def test_rmu_matches_hand_computation_for_a_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    reference = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    is_forget = torch.tensor([True, False, True, False, False])
    batch = UnlearnBatch(x, torch.tensor([0, 1, 0, 1, 1]), is_forget)
    coef, alpha = 2.0, 3.0
    with torch.no_grad():
        h, h_ref = model[0](x), reference[0](x)
    target = coef * rmu_direction(4)
    forget_term = ((h[is_forget] - target) ** 2).mean(dim=1).mean()
    retain_term = ((h[~is_forget] - h_ref[~is_forget]) ** 2).mean(dim=1).mean()
    loss = rmu("0", steering_coef=coef, alpha=alpha, reference=reference)
    value = loss(model, batch)
    torch.testing.assert_close(value, forget_term + alpha * retain_term)
    assert loss.last_stats["rmu_forget"] == pytest.approx(float(forget_term))
    assert loss.last_stats["rmu_retain"] == pytest.approx(float(retain_term))
    assert "retain_acc" in loss.last_stats  # the task's accuracies still come from the pass
    value.backward()
    assert model[0].weight.grad is not None and model[2].weight.grad is None  # only up to "0"


def test_rmu_on_token_activations_averages_over_the_attention_mask():
    model, reference, batch = TinyLM(), TinyLM(), lm_batch()
    mask = batch.inputs["attention_mask"].clone()
    mask[:, 4:] = 0  # the last two positions are padding
    batch = UnlearnBatch({**batch.inputs, "attention_mask": mask}, batch.targets, batch.is_forget)
    with torch.no_grad():
        h, h_ref = (
            model.embed(batch.inputs["input_ids"]),
            reference.embed(batch.inputs["input_ids"]),
        )
    target = (6.5 * rmu_direction(5)).float()
    keep = mask.float()

    forget, retain = batch.is_forget, ~batch.is_forget
    forget_rows = ((h[forget] - target) ** 2).mean(-1)
    forget_term = ((forget_rows * keep[forget]).sum(1) / keep[forget].sum(1)).mean()
    retain_rows = ((h[retain] - h_ref[retain]) ** 2).mean(-1)
    retain_term = ((retain_rows * keep[retain]).sum(1) / keep[retain].sum(1)).mean()
    loss = rmu("embed", alpha=2.0, reference=reference, task=CausalLMTask())
    torch.testing.assert_close(loss(model, batch), forget_term + 2.0 * retain_term)
    unmasked = ((h[forget] - target) ** 2).mean()
    assert not torch.isclose(forget_term, unmasked)  # the mask matters in this batch


def test_rmu_on_a_curve_uses_the_curve_start_as_reference():
    start, end = TinyLM(), TinyLM()
    curve = CurveModel(start, start=start, end=end)
    curve.t_sampler = (0.4, 0.4)
    batch = lm_batch()
    task = CausalLMTask()
    value = rmu("embed", task=task)(curve, batch)
    explicit = rmu("embed", reference=start, task=task)(curve, batch)
    torch.testing.assert_close(value, explicit)
    assert curve.training
    with pytest.raises(ModeConnError, match="reference="):
        rmu("embed", task=task)(TinyLM(), batch)


def test_rmu_training_steers_forget_activations_and_alpha_holds_retain_ones():
    from modeconn_unlearn.training import unlearn

    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    retain = torch.utils.data.TensorDataset(x[:32], y[:32])
    forget = torch.utils.data.TensorDataset(x[32:], y[32:])
    batch = UnlearnBatch(x, y, torch.arange(48) >= 32)
    probe = rmu("0", steering_coef=5.0, alpha=1.0, reference=original)
    probe(original, batch)
    start = probe.last_stats["rmu_forget"]
    after = {}
    for alpha in (0.0, 10.0):
        loss = rmu("0", steering_coef=5.0, alpha=alpha, reference=original)
        model = unlearn(original, retain, forget, loss=loss, epochs=20, lr=0.05, progress=False)
        probe(model, batch)
        after[alpha] = dict(probe.last_stats)
    # Without the retain term the forget activations reach the control vector, and the retain
    # ones drift; a large alpha holds the retain activations at the reference's and still
    # moves the forget ones (a tiny layer cannot do both fully: the trade-off alpha sets).
    assert after[0.0]["rmu_forget"] < 0.1 * start
    assert after[10.0]["rmu_retain"] < 0.05 * after[0.0]["rmu_retain"]
    assert after[10.0]["rmu_forget"] < 0.9 * start


def test_rmu_refuses_what_it_cannot_use():
    model, batch = fixed_batch()
    with pytest.raises(ModeConnError, match="no submodule 'nope'"):
        rmu("nope", reference=model)(model, batch)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(3, 3)

        def forward(self, x):
            return self.block(self.block(x))

    twice = Twice()
    with pytest.raises(ModeConnError, match="ran 2 times"):
        rmu("block", reference=twice)(
            twice,
            UnlearnBatch(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([True, False])),
        )
    for make in (
        lambda: rmu(""),
        lambda: rmu("0", steering_coef=0.0),
        lambda: rmu("0", alpha=-1.0),
        lambda: rmu("0", reference="original"),
    ):
        with pytest.raises(ModeConnError):
            make()
