from __future__ import annotations

import logging

import numpy as np
import pytest

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.selection import OptimalT, avg_gap, effective_region, find_optimal_t

RETAIN_TARGET, FORGET_TARGET = 99.0, 92.0


def quadratic_path(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Retain on target; forget = target + 20 (t - 0.6)^2, so avg_gap = 10 (t - 0.6)^2."""
    return np.full_like(t, RETAIN_TARGET), FORGET_TARGET + 20.0 * (t - 0.6) ** 2


def test_avg_gap_formula() -> None:
    assert avg_gap(97.0, 95.0, retain_target=99.0, forget_target=92.0) == pytest.approx(2.5)
    gaps = avg_gap([99.0, 100.0], [92.0, 90.0], retain_target=99.0, forget_target=92.0)
    np.testing.assert_allclose(gaps, [0.0, 1.5])


def test_optimum_and_region_of_a_quadratic_gap() -> None:
    t = np.linspace(0.0, 1.0, 11)
    best = find_optimal_t(
        t,
        *quadratic_path(t),
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
        kind="cubic",
    )
    assert isinstance(best, OptimalT)
    assert best.interpolation == "cubic"
    assert best.t == pytest.approx(0.6, abs=1e-9)
    assert best.avg_gap == pytest.approx(0.0, abs=1e-9)
    assert best.retain_acc == pytest.approx(RETAIN_TARGET)
    assert best.forget_acc == pytest.approx(FORGET_TARGET, abs=1e-9)
    # 10 (t - 0.6)^2 < 10 * 0.4^2  <=>  0.2 < t < 1.0
    assert best.region is not None and len(best.region) == 1
    assert best.region[0] == pytest.approx((0.2, 1.0), abs=1e-6)


def test_cubic_finds_the_minimum_between_measured_points() -> None:
    t = np.linspace(0.0, 1.0, 6)  # 0.5 is not measured
    retain = np.full_like(t, RETAIN_TARGET)
    forget = FORGET_TARGET + 20.0 * (t - 0.5) ** 2
    kwargs = {"retain_target": RETAIN_TARGET, "forget_target": FORGET_TARGET}
    cubic = find_optimal_t(t, retain, forget, kind="cubic", **kwargs)
    assert cubic.t == pytest.approx(0.5, abs=1e-3)
    assert cubic.avg_gap == pytest.approx(0.0, abs=1e-5)
    linear = find_optimal_t(t, retain, forget, kind="linear", **kwargs)
    assert linear.avg_gap == pytest.approx(0.1)  # flat between the measured 0.4 and 0.6


def test_t_is_a_value_not_an_index() -> None:
    t = np.linspace(0.5, 1.0, 6)  # 0.5, 0.6, ..., 1.0; the optimum 0.7 is index 2
    retain = np.full_like(t, RETAIN_TARGET)
    forget = FORGET_TARGET + 20.0 * (t - 0.7) ** 2
    best = find_optimal_t(
        t,
        retain,
        forget,
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
        t_range=(0.5, 1.0),
    )
    assert isinstance(best.t, float)
    assert best.t == pytest.approx(0.7, abs=1e-9)


def test_t_range_restricts_the_search() -> None:
    t = np.linspace(0.0, 1.0, 11)
    best = find_optimal_t(
        t,
        *quadratic_path(t),
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
        t_range=(0.75, 1.0),
        kind="cubic",
    )
    assert best.t == pytest.approx(0.75)
    assert best.avg_gap == pytest.approx(10.0 * 0.15**2)
    assert best.t_range == (0.75, 1.0)
    assert best.grid_t.min() == pytest.approx(0.75) and best.grid_t.max() == pytest.approx(1.0)


def test_two_interval_region_with_linear_interpolation() -> None:
    t = [0.0, 0.25, 0.5, 0.75, 1.0]
    gaps = np.array([3.0, 1.0, 3.0, 1.0, 2.0])
    region = effective_region(
        t, [50.0] * 5, 2.0 * gaps, retain_target=50.0, forget_target=0.0, kind="linear"
    )
    assert len(region) == 2
    assert region[0] == pytest.approx((0.125, 0.375), abs=1e-9)
    assert region[1] == pytest.approx((0.625, 1.0), abs=1e-9)


def test_no_region_when_the_end_is_best() -> None:
    t = np.linspace(0.0, 1.0, 5)
    forget = FORGET_TARGET + 10.0 * (1.0 - t)  # gap falls monotonically to 0 at t = 1
    region = effective_region(
        t,
        np.full(5, RETAIN_TARGET),
        forget,
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
    )
    assert region == []


def test_region_against_another_reference_point() -> None:
    t = np.linspace(0.0, 1.0, 11)
    region = effective_region(
        t,
        *quadratic_path(t),
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
        reference_t=0.4,
    )
    assert region == [pytest.approx((0.4, 0.8), abs=1e-6)]


def test_fewer_than_four_points_fall_back_to_linear(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="modeconn_unlearn.selection"):
        best = find_optimal_t(
            [0.0, 0.5, 1.0],
            [99.0, 98.0, 99.0],
            [100.0, 92.0, 80.0],
            retain_target=99.0,
            forget_target=92.0,
        )
    assert best.interpolation == "linear"
    assert any("linear" in note for note in best.notes)
    assert "linear" in caplog.text
    assert best.t == pytest.approx(0.5)


def test_pchip_does_not_overshoot_plateaus() -> None:
    t = np.linspace(0.0, 1.0, 11)
    forget = np.array([100, 100, 100, 99, 93, 43, 0, 0, 0, 0, 0], dtype=float)
    retain = np.full_like(t, 100.0)
    kwargs = {"retain_target": 100.0, "forget_target": 60.0}
    pchip = find_optimal_t(t, retain, forget, **kwargs)
    assert pchip.interpolation == "pchip"
    # Shape preserving: never below 0 %, so t in [0.6, 1] ties with t = 1 and is not "better".
    assert pchip.region is not None and pchip.region[-1][1] < 0.6 + 1e-9
    cubic = find_optimal_t(t, retain, forget, kind="cubic", **kwargs)
    assert cubic.region != pchip.region  # the spline's wiggles on the 0 % plateau


def test_region_is_none_without_t_equal_one() -> None:
    t = np.linspace(0.0, 0.9, 10)
    best = find_optimal_t(
        t,
        *quadratic_path(t),
        retain_target=RETAIN_TARGET,
        forget_target=FORGET_TARGET,
        t_range=(0.0, 0.9),
    )
    assert best.region is None
    assert any("t = 1" in note for note in best.notes)


GOOD_T = [0.0, 0.25, 0.5, 0.75, 1.0]
GOOD_ACC = [99.0, 98.0, 97.0, 98.0, 99.0]


@pytest.mark.parametrize(
    ("t", "retain", "forget", "kwargs", "message"),
    [
        (GOOD_T, GOOD_ACC[:4], GOOD_ACC, {}, "same length"),
        ([0.0, 0.5, 0.25, 0.75, 1.0], GOOD_ACC, GOOD_ACC, {}, "sorted"),
        ([0.0, 0.25, 0.25, 0.75, 1.0], GOOD_ACC, GOOD_ACC, {}, "duplicate"),
        ([0.0, 0.25, 0.5, 0.75, 1.5], GOOD_ACC, GOOD_ACC, {}, r"\[0, 1\]"),
        (GOOD_T, [99.0, np.nan, 97.0, 98.0, 99.0], GOOD_ACC, {}, "non-finite"),
        (GOOD_T, GOOD_ACC, GOOD_ACC, {"t_range": (-0.1, 1.0)}, "t_range"),
        (GOOD_T, GOOD_ACC, GOOD_ACC, {"t_range": (0.0, 1.2)}, "t_range"),
        (GOOD_T, GOOD_ACC, GOOD_ACC, {"t_range": (0.8, 0.2)}, "t_range"),
        (GOOD_T[:4], GOOD_ACC[:4], GOOD_ACC[:4], {"t_range": (0.0, 1.0)}, "measured"),
        (GOOD_T, GOOD_ACC, GOOD_ACC, {"dense": 1}, "dense"),
        (GOOD_T, GOOD_ACC, GOOD_ACC, {"kind": "quintic"}, "kind"),
        ([0.5], [99.0], [92.0], {}, "at least 2"),
    ],
)
def test_bad_inputs_raise(
    t: list[float], retain: list[float], forget: list[float], kwargs: dict, message: str
) -> None:
    with pytest.raises(ModeConnError, match=message):
        find_optimal_t(t, retain, forget, retain_target=99.0, forget_target=92.0, **kwargs)


def test_effective_region_needs_the_reference_point() -> None:
    with pytest.raises(ModeConnError, match="reference_t"):
        effective_region(
            GOOD_T[:4], GOOD_ACC[:4], GOOD_ACC[:4], retain_target=99.0, forget_target=92.0
        )


@pytest.mark.parametrize(
    "call",
    [
        lambda: find_optimal_t(
            [0.0, 0.5, 1.0], [99.0] * 3, [90.0] * 3, retain_target=0.99, forget_target=0.92
        ),
        lambda: effective_region(
            [0.0, 0.5, 1.0], [99.0] * 3, [90.0] * 3, retain_target=0.99, forget_target=0.92
        ),
        lambda: avg_gap(98.0, 90.0, retain_target=0.99, forget_target=0.92),
    ],
)
def test_fraction_targets_are_refused(call) -> None:
    with pytest.raises(ModeConnError, match=r"did you mean 99\.0 and 92\.0\?"):
        call()


def test_percent_targets_at_the_edges_are_accepted() -> None:
    # 0 % forget accuracy with 99 % retain is a percentage pair, not fractions.
    assert avg_gap(99.0, 1.0, retain_target=99.0, forget_target=0.0) == 0.5
    assert avg_gap(0.5, 0.0, retain_target=0.0, forget_target=0.0) == 0.25  # both 0: allowed


# --------------------------------------------------------------------------- penalty
def test_penalty_moves_the_optimum_to_the_cheapest_score() -> None:
    # Linear pieces: the gap alone is 0 at t = 0.5; a cost of 4 there and none elsewhere
    # makes 0.5 cost 4, while t = 0.25 costs its gap of 1.5 only, and 0.75 its 2 (by hand).
    ts, ra, fa = GOOD_T, [99.0] * 5, [97.0, 95.0, 92.0, 96.0, 99.0]
    plain = find_optimal_t(ts, ra, fa, retain_target=99.0, forget_target=92.0, kind="linear")
    found = find_optimal_t(
        ts,
        ra,
        fa,
        retain_target=99.0,
        forget_target=92.0,
        kind="linear",
        penalty=[0.0, 0.0, 4.0, 0.0, 0.0],
    )
    assert plain.t == pytest.approx(0.5) and plain.penalty == 0.0
    # From 0.25 to 0.5 the score is 1.5 - 6(t - 0.25) + 16(t - 0.25), from 0.5 to 0.75
    # 4 + 8(t - 0.5) - 16(t - 0.5): smallest at 0.25.
    assert found.t == pytest.approx(0.25)
    assert (found.avg_gap, found.penalty, found.score) == pytest.approx((1.5, 0.0, 1.5))
    # The grid's accuracy gap and the effective region ignore the penalty.
    np.testing.assert_array_equal(found.grid_avg_gap, plain.grid_avg_gap)
    assert found.region == plain.region


def test_a_zero_penalty_changes_nothing() -> None:
    plain = find_optimal_t(GOOD_T, GOOD_ACC, GOOD_ACC, retain_target=99.0, forget_target=92.0)
    zero = find_optimal_t(
        GOOD_T, GOOD_ACC, GOOD_ACC, retain_target=99.0, forget_target=92.0, penalty=[0.0] * 5
    )
    assert (zero.t, zero.avg_gap, zero.score) == (plain.t, plain.avg_gap, plain.avg_gap)


@pytest.mark.parametrize(
    ("penalty", "message"),
    [
        ([0.0] * 4, "one value per measured t"),
        ([0.0, -1.0, 0.0, 0.0, 0.0], ">= 0"),
        ([0.0, np.nan, 0.0, 0.0, 0.0], "finite"),
    ],
)
def test_bad_penalties_raise(penalty: list[float], message: str) -> None:
    with pytest.raises(ModeConnError, match=message):
        find_optimal_t(
            GOOD_T, GOOD_ACC, GOOD_ACC, retain_target=99.0, forget_target=92.0, penalty=penalty
        )
