"""Adaptive path search: same t as a dense 21-point grid with at most half the evaluations."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import make_mlp
from torch.utils.data import TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn import path_search
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.selection.search import merge_reports, refine_optimal_t, search_path

Curve = Callable[[np.ndarray], np.ndarray]
DENSE = np.linspace(0.0, 1.0, 21)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# (retain accuracy, forget accuracy, retain target, forget target): monotone in t.
SYNTHETIC: dict[str, tuple[Curve, Curve, float, float]] = {
    "linear": (lambda t: 100 - 5 * t, lambda t: 100 - 30 * t, 97.0, 85.0),
    "sigmoid": (
        lambda t: 100 - 8 * t**2,
        lambda t: 100 - 60 * _sigmoid((t - 0.6) / 0.08),
        96.0,
        70.0,
    ),
    "early_drop": (lambda t: 99 - 3 * t, lambda t: 99 - 40 * _sigmoid((t - 0.3) / 0.1), 98.0, 88.0),
    "late_drop": (lambda t: 100 - t, lambda t: 100 - 20 * t**4, 99.5, 89.0),
    "class_kink": (
        lambda t: 95 - 10 * t**3,
        lambda t: np.clip(100 * (1 - t / 0.7), 0, 100),
        95.0,
        0.0,
    ),
}


def _dense_t(retain: Curve, forget: Curve, targets: tuple[float, float], t_range: tuple) -> float:
    return mcu.find_optimal_t(
        DENSE,
        retain(DENSE),
        forget(DENSE),
        retain_target=targets[0],
        forget_target=targets[1],
        t_range=t_range,
    ).t


# The class curve's kink over the whole of [0, 1] is measured separately below: it needs the
# recipe's t_range.
CASES = [
    (name, t_range)
    for name in sorted(SYNTHETIC)
    for t_range in [(0.5, 1.0), (0.0, 1.0)]
    if not (name == "class_kink" and t_range == (0.0, 1.0))
]


@pytest.mark.parametrize(("name", "t_range"), CASES)
def test_synthetic_curves_match_dense_grid_with_half_the_evaluations(
    name: str, t_range: tuple[float, float]
) -> None:
    retain, forget, retain_target, forget_target = SYNTHETIC[name]
    calls: list[list[float]] = []

    def measure(ts: list[float]) -> tuple[list[float], list[float]]:
        calls.append(list(ts))
        points = np.asarray(ts)
        return retain(points).tolist(), forget(points).tolist()

    found = refine_optimal_t(
        measure, retain_target=retain_target, forget_target=forget_target, t_range=t_range
    )
    measured = [t for call in calls for t in call]
    assert len(measured) <= len(DENSE) // 2
    assert len(set(measured)) == len(measured)  # each point once: new points only
    assert found.evaluations == len(measured)
    dense = _dense_t(retain, forget, (retain_target, forget_target), t_range)
    assert abs(found.best.t - dense) <= 0.01


def test_kinked_class_curve_on_the_full_range_is_within_a_grid_step() -> None:
    # A forget accuracy that hits 0 at a kink (class forgetting) on [0, 1]: the search
    # lands within 0.011 of the dense grid's t (recorded as a limit, not hidden).
    retain, forget, retain_target, forget_target = SYNTHETIC["class_kink"]
    found = refine_optimal_t(
        lambda ts: (retain(np.asarray(ts)).tolist(), forget(np.asarray(ts)).tolist()),
        retain_target=retain_target,
        forget_target=forget_target,
    )
    dense = _dense_t(retain, forget, (retain_target, forget_target), (0.0, 1.0))
    assert found.evaluations <= 10
    assert abs(found.best.t - dense) <= 0.015


def test_search_stops_early_when_the_optimum_is_bracketed() -> None:
    # The optimum sits on a coarse point with a flat retain curve: bisection stops once
    # the bracket is narrower than 4 * tol, so a large tol means no refinement at all.
    found = refine_optimal_t(
        lambda ts: ([99.0] * len(ts), [100.0 - 20.0 * t for t in ts]),
        retain_target=99.0,
        forget_target=90.0,
        coarse=5,
        tol=0.2,
    )
    assert found.rounds == ((0.0, 0.25, 0.5, 0.75, 1.0),)
    assert found.best.t == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coarse": 1}, "coarse"),
        ({"coarse": 5, "max_points": 4}, "max_points"),
        ({"tol": 0.0}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"t_range": (0.8, 0.2)}, "t_range"),
        ({"t_range": (0.0, 1.5)}, "t_range"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ModeConnError, match=match):
        refine_optimal_t(
            lambda ts: ([0.0] * len(ts), [0.0] * len(ts)),
            retain_target=1.0,
            forget_target=1.0,
            **kwargs,
        )


def test_measure_with_the_wrong_number_of_values_is_refused() -> None:
    with pytest.raises(ModeConnError, match="one of each per t"):
        refine_optimal_t(lambda ts: ([1.0], [1.0]), retain_target=1.0, forget_target=1.0)
    rounds = iter([3, 2])  # a penalty in the first round only

    def fickle(ts: list[float]) -> tuple[list[float], ...]:
        values = [50.0] * len(ts), [100.0 - 20.0 * t for t in ts], [0.0] * len(ts)
        return values[: next(rounds)]

    with pytest.raises(ModeConnError, match="some rounds only"):
        refine_optimal_t(fickle, retain_target=50.0, forget_target=90.0, coarse=3, tol=0.001)


def test_a_measured_penalty_steers_the_search_and_the_choice() -> None:
    # By hand: the gap is |100 - 20t - 90| / 2 = 10|t - 0.5|, zero at t = 0.5; a cost of
    # 40|t - 0.8| falls faster than the gap rises, so their sum is smallest at t = 0.8.
    def measure(ts: list[float]) -> tuple[list[float], ...]:
        return [99.0] * len(ts), [100.0 - 20.0 * t for t in ts], [40 * abs(t - 0.8) for t in ts]

    found = refine_optimal_t(measure, retain_target=99.0, forget_target=90.0, kind="linear")
    assert found.best.t == pytest.approx(0.8, abs=0.02)
    assert found.penalty is not None and len(found.penalty) == found.evaluations
    np.testing.assert_allclose(found.penalty, 40 * np.abs(found.t - 0.8))
    # The same points without the penalty choose the accuracies' optimum.
    plain = refine_optimal_t(
        lambda ts: measure(ts)[:2], retain_target=99.0, forget_target=90.0, kind="linear"
    )
    assert plain.best.t == pytest.approx(0.5, abs=0.01) and plain.penalty is None


# --------------------------------------------------------------------------- real curve
@pytest.fixture(scope="module")
def digits_curve(digits: tuple[TensorDataset, TensorDataset]) -> tuple:
    train, _ = digits
    retain, forget = mcu.forget_retain_split(train, forget_ratio=0.1, seed=0)
    original = mcu.retrain(lambda: make_mlp(0), train, epochs=8, lr=0.1, progress=False)
    theta_u = mcu.unlearn(
        original,
        retain,
        forget,
        loss=mcu.losses.random_label(10),
        epochs=2,
        lr=0.05,
        progress=False,
    )
    curve = mcu.CurveModel(original, start=original, end=theta_u)
    mcu.fit_curve(
        curve,
        retain,
        forget,
        loss=mcu.losses.mcu_objective(0.5),
        epochs=1,
        lr=0.01,
        progress=False,
    )
    return curve, retain, forget, original


def test_real_digits_curve_matches_dense_grid(digits_curve: tuple, monkeypatch) -> None:
    curve, retain, forget, _ = digits_curve
    splits = {"retain": retain, "forget": forget}
    dense = mcu.evaluate_path(curve, splits, ts=21, progress=False)
    retain_target = float(dense.acc("retain")[-1])  # a target inside the path's range
    forget_target = float((dense.acc("forget")[10] + dense.acc("forget")[-1]) / 2)
    dense_t = mcu.find_optimal_t(
        dense.t,
        dense.acc("retain"),
        dense.acc("forget"),
        retain_target=retain_target,
        forget_target=forget_target,
        t_range=(0.5, 1.0),
    ).t

    evaluated: list[float] = []
    real = path_search.evaluate_path

    def counting(curve, splits, *, ts, **kwargs):  # type: ignore[no-untyped-def]
        evaluated.extend(ts)
        return real(curve, splits, ts=ts, **kwargs)

    monkeypatch.setattr(path_search, "evaluate_path", counting)
    found = search_path(
        curve, splits, retain_target=retain_target, forget_target=forget_target, t_range=(0.5, 1.0)
    )
    assert len(evaluated) == found.evaluations <= 10
    assert abs(found.best.t - dense_t) <= 0.01
    # The merged report holds exactly what evaluate_path gives at those points.
    again = real(curve, splits, ts=found.report.t.tolist(), progress=False)
    np.testing.assert_allclose(found.report.acc("forget"), again.acc("forget"))
    np.testing.assert_allclose(found.report.acc("retain"), again.acc("retain"))
    np.testing.assert_allclose(found.report.segment_lengths, again.segment_lengths, rtol=1e-9)


def test_merge_reports_refuses_overlap_and_mismatch(digits_curve: tuple) -> None:
    curve, retain, forget, _ = digits_curve
    a = mcu.evaluate_path(curve, {"retain": retain}, ts=[0.0, 0.5], progress=False)
    b = mcu.evaluate_path(curve, {"retain": retain}, ts=[0.5, 1.0], progress=False)
    c = mcu.evaluate_path(curve, {"forget": forget}, ts=[0.7], progress=False)
    with pytest.raises(ModeConnError, match="share a t"):
        merge_reports(curve, [a, b])
    with pytest.raises(ModeConnError, match="different splits"):
        merge_reports(curve, [a, c])
    with pytest.raises(ModeConnError, match="at least one"):
        merge_reports(curve, [])


def test_search_path_penalty_sees_the_model_at_each_t(digits_curve: tuple) -> None:
    curve, retain, forget, _ = digits_curve
    seen: dict[float, torch.Tensor] = {}

    def penalty(t: float, model: torch.nn.Module) -> float:
        seen[t] = torch.cat([p.detach().flatten() for p in model.parameters()])
        return 100.0 * t  # favours small t

    splits = {"retain": retain, "forget": forget}
    targets = {"retain_target": 95.0, "forget_target": 80.0, "t_range": (0.5, 1.0)}
    found = search_path(curve, splits, penalty=penalty, progress=False, **targets)
    plain = search_path(curve, splits, progress=False, **targets)
    assert sorted(seen) == found.report.t.tolist()
    for t, weights in seen.items():
        exported = torch.cat([p.flatten() for p in curve.export(t).parameters()])
        torch.testing.assert_close(weights, exported)
    assert found.penalty is not None and plain.penalty is None
    np.testing.assert_allclose(found.penalty, 100.0 * found.report.t)
    assert found.best.t <= plain.best.t and found.best.penalty > 0


def test_search_path_needs_retain_and_forget(digits_curve: tuple) -> None:
    curve, retain, _, _ = digits_curve
    with pytest.raises(ModeConnError, match="forget"):
        search_path(curve, {"retain": retain}, retain_target=90.0, forget_target=80.0)


def test_bn_statistics_come_from_bn_loader() -> None:
    # A BatchNorm model: with bn_loader the points are scored exactly as evaluate_path does.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    other = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    curve = mcu.CurveModel(model, start=model, end=other)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    bn = TensorDataset(torch.randn(32, 4) * 3 + 1, torch.randint(0, 3, (32,)))
    found = search_path(
        curve,
        {"retain": data, "forget": data},
        retain_target=40.0,
        forget_target=30.0,
        bn_loader=bn,
    )
    again = mcu.evaluate_path(
        curve,
        {"retain": data, "forget": data},
        ts=found.report.t.tolist(),
        bn_loader=bn,
        progress=False,
    )
    np.testing.assert_allclose(found.report.loss("retain"), again.loss("retain"))
