from __future__ import annotations

import copy
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modeconn_unlearn.evaluation as evaluation
from modeconn_unlearn.batchnorm import update_bn
from modeconn_unlearn.curve_model import CurveModel
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import (
    Metrics,
    PathReport,
    UnlearningScores,
    evaluate,
    evaluate_path,
    unlearning_scores,
)
from modeconn_unlearn.mia import svc_mia


# --------------------------------------------------------------------------- helpers
def make_bn_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def fit(model: nn.Module, data: TensorDataset, steps: int = 40) -> nn.Module:
    x, y = data.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def take(data: TensorDataset, index: slice | torch.Tensor) -> TensorDataset:
    return TensorDataset(*(tensor[index] for tensor in data.tensors))


@pytest.fixture(scope="module")
def splits(digits: tuple[TensorDataset, TensorDataset]) -> dict[str, TensorDataset]:
    """Retain/forget (class 3)/test splits of digits, small enough for fast tests."""
    train, test = digits
    is_forget = train.tensors[1] == 3
    retain = take(train, ~is_forget)
    return {
        "retain": take(retain, slice(0, 500)),
        "forget": take(train, is_forget),
        "test": take(test, slice(0, 200)),
    }


@pytest.fixture(scope="module")
def bn_curve(splits: dict[str, TensorDataset]) -> CurveModel:
    start = fit(make_bn_mlp(0), splits["retain"])
    end = fit(make_bn_mlp(1), splits["forget"], steps=10)
    return CurveModel(make_bn_mlp(2), start=start, end=end, num_bends=3)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_matches_a_hand_computation(splits: dict[str, TensorDataset]) -> None:
    model = make_mlp(0)
    x, y = splits["test"].tensors
    with torch.no_grad():
        logits = model(x)
    result = evaluate(model, splits["test"])
    assert isinstance(result, Metrics)
    assert result.count == len(y)
    assert result.accuracy == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    loader = DataLoader(splits["test"], batch_size=7)
    batched = evaluate(model, loader)
    assert batched.accuracy == result.accuracy and batched.count == result.count
    assert batched.loss == pytest.approx(result.loss, rel=1e-6)
    with pytest.raises(AttributeError):
        result.accuracy = 0.0  # type: ignore[misc]


def test_evaluate_runs_in_eval_mode_without_grad_and_restores_modes(
    splits: dict[str, TensorDataset],
) -> None:
    model = make_bn_mlp(0)
    model.train()
    model[1].eval()  # a mixed state must survive
    seen = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.append((module.training, torch.is_grad_enabled()))

    model[1].register_forward_hook(hook)
    model[0].register_forward_hook(hook)
    before = [m.training for m in model.modules()]
    running_mean = model[1].running_mean.clone()
    evaluate(model, splits["test"])
    assert seen and all(state == (False, False) for state in seen)
    assert [m.training for m in model.modules()] == before
    assert torch.equal(model[1].running_mean, running_mean)


def test_evaluate_rejects_bad_data() -> None:
    model = make_mlp(0)
    with pytest.raises(ModeConnError, match="empty"):
        evaluate(model, TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ModeConnError, match="labels"):
        evaluate(model, TensorDataset(torch.zeros(4, 64)))
    with pytest.raises(ModeConnError, match="class indices"):
        evaluate(model, TensorDataset(torch.zeros(4, 64), torch.zeros(4, 10)))
    with pytest.raises(ModeConnError, match="logits"):
        evaluate(nn.Flatten(0), TensorDataset(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(TypeError, match="DataLoader"):
        evaluate(model, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- unlearning_scores


def test_unlearning_scores_re_estimates_batchnorm_on_a_copy(splits) -> None:
    model = fit(make_bn_mlp(0), splits["retain"])
    with torch.no_grad():
        model[1].running_mean.add_(3.0)  # stale statistics
    stale = copy.deepcopy(model)
    kwargs = {"retain": splits["retain"], "forget": splits["forget"], "test": splits["test"]}
    with_bn = unlearning_scores(model, bn_loader=splits["retain"], **kwargs)
    assert torch.equal(model[1].running_mean, stale[1].running_mean)  # input untouched
    fresh = copy.deepcopy(model)
    update_bn(fresh, DataLoader(splits["retain"], batch_size=256))
    expected = unlearning_scores(fresh, **kwargs)
    assert (with_bn.ra, with_bn.ta, with_bn.ua) == (expected.ra, expected.ta, expected.ua)
    assert unlearning_scores(model, **kwargs).ra < with_bn.ra


def test_unlearning_scores_and_gaps(splits: dict[str, TensorDataset]) -> None:
    model = fit(make_mlp(0), splits["retain"])
    scores = unlearning_scores(
        model, retain=splits["retain"], forget=splits["forget"], test=splits["test"]
    )
    assert scores.ua == pytest.approx(100.0 - evaluate(model, splits["forget"]).accuracy)
    assert scores.ra == pytest.approx(evaluate(model, splits["retain"]).accuracy)
    assert scores.ta == pytest.approx(evaluate(model, splits["test"]).accuracy)
    assert 0.0 <= scores.mia <= 100.0
    assert scores.gaps is None and scores.avg_gap is None

    reference = {"UA": scores.ua + 4.0, "ra": scores.ra - 2.0, "Ta": scores.ta, "MIA": 0.0}
    with_gaps = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        reference=reference,
    )
    assert with_gaps.gaps == pytest.approx({"ua": 4.0, "ra": 2.0, "ta": 0.0, "mia": scores.mia})
    assert with_gaps.avg_gap == pytest.approx((6.0 + scores.mia) / 4.0)
    assert with_gaps.as_dict()["avg_gap"] == with_gaps.avg_gap

    itself = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        reference=model,
    )
    assert itself.avg_gap == pytest.approx(0.0)
    assert isinstance(itself, UnlearningScores)
    with pytest.raises(ModeConnError, match="missing the scores"):
        unlearning_scores(
            model,
            retain=splits["retain"],
            forget=splits["forget"],
            test=splits["test"],
            reference={"ua": 1.0},
        )


def test_unlearning_scores_mia_is_svc_efficacy(splits: dict[str, TensorDataset]) -> None:
    model = fit(make_mlp(0), splits["retain"])
    shadow = take(splits["retain"], slice(0, 200))
    scores = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        mia_shadow=shadow,
    )
    direct = svc_mia(
        model,
        shadow_train=shadow,
        shadow_test=splits["test"],
        target_test=splits["forget"],
        features=("confidence",),
    )
    assert scores.mia == pytest.approx(100.0 * direct["confidence"])


# --------------------------------------------------------------------------- evaluate_path
def test_path_endpoints_match_evaluate_after_bn_reestimation(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    bn_loader = DataLoader(splits["retain"], batch_size=64)
    report = evaluate_path(
        bn_curve, splits, ts=[0.0, 0.5, 1.0], bn_loader=bn_loader, progress=False
    )
    np.testing.assert_array_equal(report.t, [0.0, 0.5, 1.0])
    for index, t in ((0, 0.0), (-1, 1.0)):
        model = bn_curve.export(t)
        update_bn(model, bn_loader)
        for name, data in splits.items():
            expected = evaluate(model, data)
            assert report.acc(name)[index] == pytest.approx(expected.accuracy)
            assert report.loss(name)[index] == pytest.approx(expected.loss, rel=1e-6)
    assert report.meta["counts"] == {name: len(data) for name, data in splits.items()}


def test_bn_statistics_never_see_forget_data_by_default(
    bn_curve: CurveModel, splits: dict[str, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = splits["forget"].tensors
    shifted = {**splits, "forget": TensorDataset(x + 5.0, y)}  # a far-away input distribution
    batch_means: list[float] = []

    def spy(model: nn.Module, loader: object, **kwargs: object) -> None:
        for batch in loader:  # type: ignore[attr-defined]
            batch_means.append(float(batch[0].mean()))
        update_bn(model, loader, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluation, "update_bn", spy)
    default = evaluate_path(bn_curve, shifted, ts=3, progress=False)
    assert batch_means and max(batch_means) < 1.0  # digits lie in [0, 1]; forget is >= 5
    explicit = evaluate_path(bn_curve, shifted, ts=3, bn_loader=shifted["retain"], progress=False)
    on_forget = evaluate_path(bn_curve, shifted, ts=3, bn_loader=shifted["forget"], progress=False)
    for name in shifted:
        np.testing.assert_allclose(default.loss(name), explicit.loss(name))
    assert not np.allclose(default.loss("retain"), on_forget.loss("retain"))
    assert default.meta["bn_data"] == "retain"


def test_bn_models_need_retain_data_or_a_bn_loader(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    with pytest.raises(ModeConnError, match="bn_loader"):
        evaluate_path(bn_curve, {"forget": splits["forget"]}, ts=2, progress=False)


def test_no_bn_pass_without_batchnorm(
    splits: dict[str, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(evaluation, "update_bn", lambda *a, **k: calls.append(a))
    curve = CurveModel(make_mlp(0), end=make_mlp(1), num_bends=2)
    report = evaluate_path(curve, {"forget": splits["forget"]}, ts=3, progress=False)
    assert calls == []
    assert report.meta["bn_data"].startswith("none")


def test_path_length_of_a_straight_line(splits: dict[str, TensorDataset]) -> None:
    start, end = make_mlp(0), make_mlp(1)
    curve = CurveModel(make_mlp(2), start=start, end=end, num_bends=2)
    curve.train()
    report = evaluate_path(curve, {"test": splits["test"]}, ts=5, progress=False)
    distance = math.sqrt(
        sum(
            float(((a.detach() - b.detach()) ** 2).sum())
            for a, b in zip(start.parameters(), end.parameters(), strict=True)
        )
    )
    assert report.path_length == pytest.approx(distance, rel=1e-5)
    np.testing.assert_allclose(report.segment_lengths, np.full(4, distance / 4), rtol=1e-5)
    assert curve.training  # the curve's mode is left alone
    assert report.arc_length[-1] == pytest.approx(report.path_length)


def test_path_is_deterministic_and_measures_mia(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    first = evaluate_path(
        bn_curve, splits, ts=4, mia=True, mia_features=("confidence", "entropy"), progress=False
    )
    second = evaluate_path(
        bn_curve, splits, ts=4, mia=True, mia_features=("confidence", "entropy"), progress=False
    )
    assert first.metric_names("forget") == ["acc", "loss", "mia_confidence", "mia_entropy"]
    for name in ("acc", "loss", "mia_confidence"):
        np.testing.assert_array_equal(first.metric("forget", name), second.metric("forget", name))
    values = first.metric("forget", "mia_confidence")
    assert values.shape == (4,) and ((values >= 0) & (values <= 100)).all()
    with pytest.raises(ModeConnError, match="missing"):
        evaluate_path(
            bn_curve,
            {"retain": splits["retain"], "forget": splits["forget"]},
            ts=2,
            mia=True,
            progress=False,
        )


@pytest.mark.parametrize(
    ("ts", "message"),
    [(1, "at least 2"), ([0.0, 0.6, 0.5], "increasing"), ([0.0, 1.5], r"\[0, 1\]"), ([], "empty")],
)
def test_bad_ts(
    bn_curve: CurveModel, splits: dict[str, TensorDataset], ts: object, message: str
) -> None:
    with pytest.raises(ModeConnError, match=message):
        evaluate_path(bn_curve, splits, ts=ts, progress=False)  # type: ignore[arg-type]


def test_evaluate_path_rejects_plain_models_and_empty_splits(
    splits: dict[str, TensorDataset], bn_curve: CurveModel
) -> None:
    with pytest.raises(TypeError, match="CurveModel"):
        evaluate_path(make_mlp(0), splits, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="non-empty mapping"):
        evaluate_path(bn_curve, {}, progress=False)


# --------------------------------------------------------------------------- PathReport
@pytest.fixture
def report() -> PathReport:
    return PathReport(
        [0.0, 0.5, 1.0],
        {
            "retain": {"acc": [99.0, 97.0, 98.0], "loss": [0.1, 0.3, 0.2]},
            "forget": {"acc": [100.0, 40.0, 10.0], "loss": [0.01, 1.5, float("nan")]},
        },
        segment_lengths=[1.0, 3.0],
        meta={"counts": {"retain": 10, "forget": 5}},
    )


def test_report_accessors_and_summary(report: PathReport) -> None:
    np.testing.assert_array_equal(report.acc("forget"), [100.0, 40.0, 10.0])
    np.testing.assert_array_equal(report.metric("retain", "loss"), [0.1, 0.3, 0.2])
    assert report.splits == ["retain", "forget"]
    assert report.path_length == 4.0
    summary = report.summary("forget", "acc")
    assert summary["min"] == 10.0 and summary["max"] == 100.0 and summary["mean"] == 50.0
    assert summary["integral"] == pytest.approx((100 + 40) / 2 * 1.0 + (40 + 10) / 2 * 3.0)
    assert summary["length_weighted_mean"] == pytest.approx(summary["integral"] / 4.0)
    assert summary["t_min"] == 1.0 and summary["t_max"] == 0.0
    with pytest.raises(ModeConnError, match="available"):
        report.acc("test")
    with pytest.raises(ModeConnError, match="available"):
        report.metric("retain", "mia_confidence")
    with pytest.raises(ValueError, match="read-only"):
        report.acc("retain")[0] = 0.0


def test_report_round_trips_through_json(report: PathReport, tmp_path: object) -> None:
    path = tmp_path / "report.json"  # type: ignore[operator]
    report.save(path)
    data = json.loads(path.read_text())  # strict JSON: NaN is stored as null
    assert data["metrics"]["forget"]["loss"][2] is None
    loaded = PathReport.load(path)
    np.testing.assert_array_equal(loaded.t, report.t)
    np.testing.assert_array_equal(loaded.loss("forget"), report.loss("forget"))
    assert loaded.meta == report.meta
    assert loaded.path_length == report.path_length
    rebuilt = PathReport.from_dict(report.to_dict())
    np.testing.assert_array_equal(rebuilt.acc("retain"), report.acc("retain"))
    with pytest.raises(ModeConnError, match="No PathReport"):
        PathReport.load(tmp_path / "missing.json")  # type: ignore[operator]


def test_report_as_csv_markdown_and_text(report: PathReport, tmp_path: object) -> None:
    path = tmp_path / "report.csv"  # type: ignore[operator]
    text = report.to_csv(path)
    assert path.read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3
    assert float(rows[1]["forget/acc"]) == 40.0 and float(rows[2]["t"]) == 1.0
    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert lines[0].startswith("| t | retain/acc | retain/loss | forget/acc")
    assert lines[1].startswith("|---:")
    assert "| 0.500 | 97.00 | 0.3000 | 40.00 | 1.5000 |" in markdown
    assert "Path length: 4" in markdown
    printed = str(report)
    assert "forget/acc" in printed and "nan" in printed and len(printed.splitlines()) == 5
    assert "points=3" in repr(report)


def test_report_rejects_mismatched_lengths() -> None:
    with pytest.raises(ModeConnError, match="segment_lengths"):
        PathReport([0.0, 1.0], {"a": {"acc": [1.0, 2.0]}}, segment_lengths=[1.0, 2.0])
    with pytest.raises(ModeConnError, match="shape"):
        PathReport([0.0, 1.0], {"a": {"acc": [1.0]}}, segment_lengths=[1.0])


def test_evaluate_leaves_a_copy_untouched(splits: dict[str, TensorDataset]) -> None:
    model = make_bn_mlp(3)
    snapshot = copy.deepcopy(model.state_dict())
    evaluate(model, splits["test"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])
