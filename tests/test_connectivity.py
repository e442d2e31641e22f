from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, make_mlp, model_state
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from modeconn_unlearn.batchnorm import update_bn
from modeconn_unlearn.connectivity import (
    BarrierResult,
    ConnectivityMatrix,
    connect,
    connectivity_matrix,
    loss_barrier,
    relearn_attack,
    relearn_path,
)
from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import evaluate
from modeconn_unlearn.tasks import CausalLMTask

# ----------------------------------------------------------------------------- helpers


def _train(
    model: nn.Module, data: TensorDataset, *, steps: int = 150, lr: float = 0.02
) -> nn.Module:
    """Full-batch Adam: deterministic and quick on digits."""
    x, y = data.tensors
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _permute_hidden(mlp: nn.Sequential, seed: int) -> nn.Sequential:
    """The same function with its hidden units permuted: far away in weight space."""
    perm = torch.randperm(mlp[0].out_features, generator=torch.Generator().manual_seed(seed))
    out = copy.deepcopy(mlp)
    with torch.no_grad():
        out[0].weight.copy_(mlp[0].weight[perm])
        out[0].bias.copy_(mlp[0].bias[perm])
        out[2].weight.copy_(mlp[2].weight[:, perm])
    return out


class OneParam(nn.Module):
    """logits = [cos(w) * x, 0]: the loss on x = 1, y = 0 is softplus(-cos(w))."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = torch.cos(self.w) * x[:, 0]
        return torch.stack([first, torch.zeros_like(first)], dim=1)


def _ones(n: int = 4) -> TensorDataset:
    return TensorDataset(torch.ones(n, 1, dtype=torch.float64), torch.zeros(n, dtype=torch.long))


@pytest.fixture(scope="module")
def trained(digits: tuple[TensorDataset, TensorDataset]) -> dict[str, nn.Module]:
    train, _ = digits
    torch.manual_seed(0)
    a = _train(make_mlp(0), train)
    return {"a": a, "a_perm": _permute_hidden(a, seed=1), "b": _train(make_mlp(1), train)}


# ----------------------------------------------------------------------------- barriers


def test_barrier_of_model_with_itself_is_zero(digits, trained):
    _, test = digits
    model = trained["a"]
    result = loss_barrier(model, model, test, ts=11)
    assert isinstance(result, BarrierResult)
    assert result.split is None
    assert result.height == pytest.approx(0.0, abs=1e-5)
    assert np.allclose(result.values, evaluate(model, test).loss, atol=1e-5)
    # a state dict as the second model is the same path
    again = loss_barrier(model, model.state_dict(), test, ts=11)
    assert again.height == pytest.approx(0.0, abs=1e-5)


def test_linear_barrier_of_convex_loss_is_zero(digits):
    # softmax regression: the cross-entropy is convex in the weights, so the straight line
    # between any two points lies on or below the chord between the endpoint values
    train, _ = digits
    torch.manual_seed(3)
    a = _train(nn.Linear(64, 10), train, steps=30)
    b = nn.Linear(64, 10)
    result = loss_barrier(a, b, train, ts=11)
    interior = result.excess[1:-1]
    assert np.all(interior < 0.0)
    assert result.height <= 0.0
    assert result.start < result.end


def test_barrier_matches_hand_computation_on_one_parameter_model():
    w_a, w_b = 0.3, 5.0
    result = loss_barrier(OneParam(w_a), OneParam(w_b), _ones(), ts=21)
    t = np.linspace(0.0, 1.0, 21)
    expected = np.log1p(np.exp(-np.cos((1 - t) * w_a + t * w_b)))
    np.testing.assert_allclose(result.values, expected, rtol=1e-6)
    chord = (1 - t) * expected[0] + t * expected[-1]
    np.testing.assert_allclose(result.excess, expected - chord, atol=1e-6)
    assert result.height == pytest.approx(np.max(expected - chord), abs=1e-6)
    assert result.t_peak == pytest.approx(t[np.argmax(expected - chord)])
    assert (result.start, result.end) == pytest.approx((expected[0], expected[-1]))


def test_barrier_of_a_full_turn_is_exactly_one():
    # w: 0 -> 2π, both ends at loss log(1 + 1/e); at t = 1/2, w = π and the loss is
    # log(1 + e); the difference is log(e) = 1
    result = loss_barrier(OneParam(0.0), OneParam(2 * math.pi), _ones(), ts=21)
    assert result.height == pytest.approx(1.0, abs=1e-6)
    assert result.t_peak == pytest.approx(0.5)
    # error: cos(w) < 0 for t in (1/4, 3/4) -> every sample wrong there
    error = loss_barrier(OneParam(0.0), OneParam(2 * math.pi), _ones(), ts=21, metric="error")
    inside = (error.t > 0.26) & (error.t < 0.74)
    assert np.all(error.values[inside] == 100.0)
    assert error.values[0] == error.values[-1] == 0.0
    assert error.height == 100.0


def test_ts_values_get_both_ends():
    result = loss_barrier(OneParam(0.0), OneParam(1.0), _ones(), ts=[0.25, 0.5])
    assert result.t.tolist() == [0.0, 0.25, 0.5, 1.0]


def test_dict_of_splits_gives_a_barrier_per_split(digits, trained):
    train, test = digits
    a, b = trained["a"], trained["b"]
    results = loss_barrier(a, b, {"retain": train, "test": test}, ts=5)
    assert set(results) == {"retain", "test"}
    assert results["test"].split == "test"
    single = loss_barrier(a, b, DataLoader(test, batch_size=100), ts=5)
    np.testing.assert_allclose(results["test"].values, single.values, rtol=1e-5)
    assert results["retain"].height > 0.05  # two independently trained MLPs


def test_one_walk_gives_every_metric_with_one_pass_per_point_and_split(
    digits, trained, monkeypatch
):
    from modeconn_unlearn.connectivity import barriers

    train, test = digits
    splits = {"retain": DataLoader(train, batch_size=256), "test": DataLoader(test, batch_size=256)}
    curve = CurveModel(trained["a"], end=trained["b"], num_bends=2)
    ts = np.linspace(0.0, 1.0, 4)
    common = {"bn_loader": None, "task": None, "device": None, "progress": False, "named": True}
    calls = []
    counted = barriers.evaluate

    def counting(*args, **kwargs):
        calls.append(1)
        return counted(*args, **kwargs)

    monkeypatch.setattr(barriers, "evaluate", counting)
    both = barriers.barriers_by_metric(curve, splits, ts, metrics=("loss", "error"), **common)
    assert len(calls) == len(ts) * len(splits)
    for metric in ("loss", "error"):
        alone = barriers.barriers_on_curve(curve, splits, ts, metric=metric, **common)
        for split in splits:
            np.testing.assert_allclose(both[metric][split].values, alone[split].values)
            assert both[metric][split].metric == metric
    with pytest.raises(ModeConnError, match="metric"):
        barriers.barriers_by_metric(curve, splits, ts, metrics=("loss", "acc"), **common)


def test_barrier_along_a_curve_checks_its_ends(digits, trained):
    _, test = digits
    a, b = trained["a"], trained["b"]
    line = CurveModel(a, start=a, end=b, num_bends=2)
    along = loss_barrier(None, None, test, path=line, ts=5)
    named = loss_barrier(a, b, test, path=line, ts=5)
    linear = loss_barrier(a, b, test, ts=5)
    np.testing.assert_allclose(along.values, linear.values, rtol=1e-5)
    np.testing.assert_allclose(named.values, linear.values, rtol=1e-5)
    with pytest.raises(ModeConnError, match="model_a is not the curve's end"):
        loss_barrier(trained["a_perm"], b, test, path=line, ts=5)
    assert line.training  # mode restored


def test_batchnorm_statistics_are_re_estimated_at_each_t(digits):
    train, test = digits

    def bn_mlp(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    a, b = _train(bn_mlp(0), train, steps=30), _train(bn_mlp(1), train, steps=30)
    with pytest.raises(ModeConnError, match="bn_loader"):
        loss_barrier(a, b, test, ts=3)
    explicit = loss_barrier(a, b, {"retain": train, "test": test}, ts=3, bn_loader=train)
    default = loss_barrier(a, b, {"retain": train, "test": test}, ts=3)
    np.testing.assert_allclose(default["test"].values, explicit["test"].values)
    # by hand at t = 1/2: average the weights, recompute the statistics on retain
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for p_mid, p_a, p_b in zip(mid.parameters(), a.parameters(), b.parameters(), strict=True):
            p_mid.copy_(0.5 * p_a + 0.5 * p_b)
    update_bn(mid, DataLoader(train, batch_size=256))
    assert explicit["test"].values[1] == pytest.approx(evaluate(mid.eval(), test).loss, rel=1e-4)
    # the matrix evaluates each model's own values once and reuses them at the path ends
    matrix = connectivity_matrix({"a": a, "b": b}, {"retain": train, "test": test}, ts=3)
    pair = matrix.barriers[("a", "b")]["test"]
    np.testing.assert_allclose(pair.values, explicit["test"].values, rtol=1e-5)
    assert matrix.height("a", "b", "test") == pytest.approx(explicit["test"].height, rel=1e-4)


# ----------------------------------------------------------------------------- matrix


def test_matrix_is_symmetric_with_zero_diagonal_and_matches_pairs(digits, trained):
    train, test = digits
    models = {"a": trained["a"], "a_perm": trained["a_perm"].state_dict(), "b": trained["b"]}
    matrix = connectivity_matrix(models, {"retain": train, "test": test}, ts=5, progress=False)
    assert isinstance(matrix, ConnectivityMatrix)
    assert matrix.names == ("a", "a_perm", "b")
    for split in ("retain", "test"):
        m = matrix[split]
        assert m.shape == (3, 3)
        np.testing.assert_array_equal(m, m.T)
        np.testing.assert_array_equal(np.diag(m), 0.0)
    forward = loss_barrier(trained["a"], trained["b"], test, ts=5).height
    backward = loss_barrier(trained["b"], trained["a"], test, ts=5).height
    assert matrix.height("a", "b", "test") == pytest.approx(forward, rel=1e-5)
    assert matrix.height("b", "a", "test") == pytest.approx(backward, rel=1e-4)
    assert matrix.height("a", "a_perm", "retain") > 0.1
    markdown = matrix.to_markdown("test")
    assert "| a | 0.000 |" in markdown and "a_perm" in markdown
    dumped = json.loads(json.dumps(matrix.to_dict()))
    assert dumped["heights"]["test"][0][2] == pytest.approx(forward, rel=1e-5)
    assert len(dumped["barriers"]) == 3


def test_connect_lowers_the_retain_barrier_of_permuted_twins(digits, trained):
    train, test = digits
    a, a_perm = trained["a"], trained["a_perm"]
    splits = {"retain": train, "test": test}
    linear = loss_barrier(a, a_perm, splits, ts=11)
    assert linear["retain"].height > 0.3  # same function, different basin on the line
    before = model_state(a)
    curve = connect(
        a, a_perm, DataLoader(train, batch_size=64, shuffle=True), epochs=8, lr=0.05, progress=False
    )
    assert isinstance(curve, CurveModel)
    assert_unchanged(a, before)
    along = loss_barrier(a, a_perm, splits, path=curve, ts=11)
    assert along["retain"].height < 0.5 * linear["retain"].height
    assert along["retain"].start == pytest.approx(linear["retain"].start, rel=1e-5)
    # the matrix trains the same curve for path="curve"
    matrix = connectivity_matrix(
        {"a": a, "a_perm": a_perm},
        splits,
        path="curve",
        ts=11,
        retain_data=DataLoader(train, batch_size=64, shuffle=True),
        epochs=8,
        lr=0.05,
        progress=False,
    )
    assert matrix.height("a", "a_perm", "retain") == pytest.approx(
        along["retain"].height, rel=1e-4, abs=1e-6
    )


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_mode_conn_error(digits, trained):
    _, test = digits
    a = trained["a"]
    narrow = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ModeConnError, match=r"0\.weight"):
        loss_barrier(a, narrow, test)
    with pytest.raises(ModeConnError, match="different architectures"):
        connectivity_matrix({"a": a, "narrow": narrow}, test, progress=False)
    empty = TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ModeConnError, match="empty"):
        loss_barrier(a, a, empty)
    with pytest.raises(ModeConnError, match="empty"):
        loss_barrier(a, a, {"retain": test, "forget": empty})
    with pytest.raises(ModeConnError, match="empty dict"):
        loss_barrier(a, a, {})
    with pytest.raises(ModeConnError, match="metric"):
        loss_barrier(a, a, test, metric="accuracy")
    with pytest.raises(ModeConnError, match="ts"):
        loss_barrier(a, a, test, ts=1)
    with pytest.raises(ModeConnError, match="increasing"):
        loss_barrier(a, a, test, ts=[0.5, 0.2])
    with pytest.raises(ModeConnError, match="path"):
        loss_barrier(a, a, test, path="cubic")
    with pytest.raises(ModeConnError, match=">= 2"):
        connectivity_matrix({"a": a}, test)
    with pytest.raises(ModeConnError, match="template"):
        connectivity_matrix({"a": a.state_dict(), "b": a.state_dict()}, test)
    with pytest.raises(ModeConnError, match="path='curve'"):
        connectivity_matrix({"a": a, "b": a}, test, epochs=3)
    with pytest.raises(ModeConnError, match="retain"):
        connectivity_matrix({"a": a, "b": a}, test, path="curve", epochs=1, lr=0.1)
    with pytest.raises(ModeConnError, match="num_bends"):
        connect(a, a, test, num_bends=2, epochs=1, lr=0.1)


# ----------------------------------------------------------------------------- relearning


@pytest.fixture(scope="module")
def forgot_zero(digits):
    """A model trained without class 0, and the class-0 training samples (the forget set)."""
    train, _ = digits
    x, y = train.tensors
    retain = TensorDataset(x[y != 0], y[y != 0])
    forget = TensorDataset(x[y == 0], y[y == 0])
    return _train(make_mlp(5), retain, steps=100), forget


def test_relearn_attack_brings_back_a_forgotten_class(forgot_zero):
    model, forget = forgot_zero
    before = model_state(model)
    result = relearn_attack(model, forget, steps=10, lr=0.5, samples=5, seed=0)
    assert_unchanged(model, before)
    assert result.steps.tolist() == list(range(11))
    assert len(result.samples) == 5
    rest = Subset(forget, sorted(set(range(len(forget))) - set(result.samples.tolist())))
    assert result.accuracy[0] == pytest.approx(evaluate(model, rest).accuracy)
    assert result.accuracy[0] < 5.0
    assert result.accuracy[-1] > 60.0
    assert result.steps_to(50.0) is not None
    # step 1 by hand: one full-batch SGD step on the chosen samples
    x, y = forget.tensors
    manual = copy.deepcopy(model)
    F.cross_entropy(manual(x[result.samples]), y[result.samples]).backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.5 * p.grad
    assert result.loss[1] == pytest.approx(evaluate(manual, rest).loss, rel=1e-5)
    assert result.train_loss[0] == pytest.approx(
        F.cross_entropy(model(x[result.samples]), y[result.samples]).item(), rel=1e-5
    )
    again = relearn_attack(model, forget, steps=10, lr=0.5, samples=5, seed=0)
    np.testing.assert_array_equal(again.accuracy, result.accuracy)
    other = relearn_attack(model, forget, steps=0, lr=0.5, samples=5, seed=1)
    assert other.samples.tolist() != result.samples.tolist()
    with pytest.raises(ModeConnError, match="samples"):
        relearn_attack(model, forget, steps=1, lr=0.1, samples=len(forget))


def test_relearn_attack_fine_tunes_batchnorm_models_in_eval_mode(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model = _train(model, train, steps=20)
    before = model_state(model)
    result = relearn_attack(model, train, steps=1, lr=0.5, samples=8, eval_data=train)
    assert_unchanged(model, before)
    # by hand: one step in eval mode (the model's own statistics, which stay unchanged)
    x, y = train.tensors
    manual = copy.deepcopy(model).eval()
    F.cross_entropy(manual(x[result.samples]), y[result.samples]).backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.5 * p.grad
    assert result.loss[1] == pytest.approx(evaluate(manual, train).loss, rel=1e-5)
    one = relearn_attack(model, train, steps=1, lr=0.1, samples=1, eval_data=train)
    assert one.steps.tolist() == [0, 1]


def test_relearn_path_matches_the_attack_at_each_t(digits, forgot_zero):
    train, _ = digits
    forgot, forget = forgot_zero
    original = _train(make_mlp(5), train, steps=100)
    curve = CurveModel(original, start=original, end=forgot, num_bends=2)
    result = relearn_path(
        curve, [0.0, 1.0], forget, steps=3, lr=0.5, samples=5, eval_data=forget, progress=False
    )
    assert result.accuracy.shape == (2, 4)
    at_end = relearn_attack(forgot, forget, steps=3, lr=0.5, samples=5, eval_data=forget)
    np.testing.assert_allclose(result.accuracy[1], at_end.accuracy)
    assert result.accuracy[0, 0] > 90.0 > result.accuracy[1, 0]
    np.testing.assert_array_equal(result.steps_to(90.0)[:1], [0.0])


# ----------------------------------------------------------------------------- plots


def test_plots_draw_and_save(tmp_path, digits, trained):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from modeconn_unlearn.connectivity_plots import plot_barriers, plot_matrix

    train, test = digits
    a, b = trained["a"], trained["b"]
    results = loss_barrier(a, b, {"retain": train, "test": test}, ts=5)
    fig = plot_barriers(results, label="linear", save=tmp_path / "barriers.png")
    assert len(fig.axes[0].lines) == 2 * 2 + 2  # curve + chord per split, peak markers
    matrix = connectivity_matrix({"a": a, "b": b}, {"test": test}, ts=3, progress=False)
    fig = plot_matrix(matrix, save=tmp_path / "matrix.png")
    assert (tmp_path / "barriers.png").stat().st_size > 0
    assert (tmp_path / "matrix.png").stat().st_size > 0
    assert fig.axes[0].get_title().startswith("test")


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


def test_loss_barrier_of_language_models_uses_the_task_loss():
    a, b, data = TinyLM(0), TinyLM(1), lm_samples(12, 2)
    result = loss_barrier(a, b, data, ts=3, task=CausalLMTask())
    curve = CurveModel(a, start=a, end=b, num_bends=2)
    expected = [evaluate(curve.export(t), data, task=CausalLMTask()).loss for t in (0.0, 0.5, 1.0)]
    np.testing.assert_allclose(result.values, expected, rtol=1e-6)
    error = loss_barrier(a, b, data, ts=3, metric="error", task=CausalLMTask())
    accuracy = evaluate(curve.export(0.5), data, task=CausalLMTask()).accuracy
    assert error.values[1] == pytest.approx(100.0 - accuracy)


def test_relearn_attack_on_a_language_model_lowers_the_answer_nll():
    forget = lm_samples(16, 3)
    result = relearn_attack(TinyLM(0), forget, steps=5, lr=0.5, samples=8, task=CausalLMTask())
    assert result.train_loss[0] > result.train_loss[4]
    eval_data = [forget[i] for i in range(16) if i not in set(result.samples.tolist())]
    assert result.loss[0] == pytest.approx(
        evaluate(TinyLM(0), eval_data, task=CausalLMTask()).loss, rel=1e-6
    )


def test_relearn_path_refuses_a_plain_model(digits):
    with pytest.raises(ModeConnError, match="must be a CurveModel"):
        relearn_path(make_mlp(0), 3, digits[1], steps=1, lr=0.1, samples=4, progress=False)


def test_connect_trains_language_models_through_the_task():
    a, b, data = TinyLM(0), TinyLM(1), lm_samples(16, 4)
    line = loss_barrier(a, b, data, ts=5, task=CausalLMTask())
    curve = connect(a, b, data, epochs=3, lr=0.5, progress=False, task=CausalLMTask())
    after = loss_barrier(None, None, data, path=curve, ts=5, task=CausalLMTask())
    assert after.values[2] < line.values[2]  # the middle of the curve learned the data
    assert after.start == pytest.approx(evaluate(a, data, task=CausalLMTask()).loss, rel=1e-6)


def test_matrix_takes_checkpoint_files_like_state_dicts(digits, trained, tmp_path):
    from modeconn_unlearn.checkpoint import save_checkpoint

    _, test = digits
    path = tmp_path / "b.pt"
    save_checkpoint(trained["b"].state_dict(), path)
    from_file = connectivity_matrix(
        {"a": trained["a"], "b": str(path)}, {"test": test}, ts=3, progress=False
    )
    from_module = connectivity_matrix(
        {"a": trained["a"], "b": trained["b"]}, {"test": test}, ts=3, progress=False
    )
    assert from_file.height("a", "b", "test") == from_module.height("a", "b", "test")
