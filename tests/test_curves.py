from __future__ import annotations

import math

import pytest
import torch

from modeconn_unlearn.curve.coefficients import bezier, get_curve, linear_positions, polychain
from modeconn_unlearn.errors import ModeConnError


@pytest.mark.parametrize("fn", [bezier, polychain])
@pytest.mark.parametrize("num_bends", [2, 3, 4, 7])
@pytest.mark.parametrize("t", [0.0, 0.13, 0.5, 0.77, 1.0])
def test_coefficients_sum_to_one_and_hit_ends(fn, num_bends: int, t: float) -> None:
    coefs = fn(t, num_bends)
    assert len(coefs) == num_bends
    assert math.isclose(sum(coefs), 1.0, abs_tol=1e-12)
    assert all(c >= 0 for c in coefs)
    if t == 0.0:
        assert coefs == [1.0] + [0.0] * (num_bends - 1)
    if t == 1.0:
        assert coefs == [0.0] * (num_bends - 1) + [1.0]


def test_quadratic_bezier_by_hand() -> None:
    t = 0.3
    assert bezier(t, 3) == pytest.approx([(1 - t) ** 2, 2 * t * (1 - t), t**2])


@pytest.mark.parametrize("fn", [bezier, polychain])
@pytest.mark.parametrize("num_bends", [2, 3, 5])
def test_linear_positions_trace_the_straight_line(fn, num_bends: int) -> None:
    positions = linear_positions(num_bends)
    for t in (0.0, 0.2, 0.45, 0.9, 1.0):
        assert sum(
            c * s for c, s in zip(fn(t, num_bends), positions, strict=True)
        ) == pytest.approx(t)


def test_polychain_segments_by_hand() -> None:
    assert polychain(0.5, 3) == [0.0, 1.0, 0.0]
    assert polychain(0.75, 3) == pytest.approx([0.0, 0.5, 0.5])
    assert polychain(0.1, 2) == pytest.approx([0.9, 0.1])


def test_get_curve() -> None:
    assert get_curve("Bezier") is bezier
    assert get_curve("polychain") is polychain
    custom = lambda t, n: [1 - t, t]  # noqa: E731
    assert get_curve(custom) is custom
    with pytest.raises(ModeConnError, match="bezier"):
        get_curve("spline")


@pytest.mark.parametrize("fn", [bezier, polychain])
@pytest.mark.parametrize("num_bends", [2, 3, 5])
@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.5, 0.6, 1.0])
def test_tensor_t_gives_the_float_coefficients(fn, num_bends: int, t: float) -> None:
    expected = fn(t, num_bends)
    got = fn(torch.tensor(t, dtype=torch.float64), num_bends)
    assert all(isinstance(c, torch.Tensor) and c.dim() == 0 for c in got)
    assert [float(c) for c in got] == pytest.approx(expected, abs=1e-12)
