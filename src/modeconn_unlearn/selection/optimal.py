"""Choosing a point on the path: the optimal ``t`` and the effective region.

Accuracies are measured at a few ``t`` along a curve (see
:func:`~modeconn_unlearn.evaluation.evaluate_path`); between them they are
interpolated on a dense grid, by default with a shape-preserving piecewise
cubic (:class:`scipy.interpolate.PchipInterpolator`, :data:`DEFAULT_KIND`), the
same default :func:`~modeconn_unlearn.plotting.plot_path` draws, so a figure
shades exactly :attr:`OptimalT.region`. The gap to a target model (usually the retrained one) is

    avg_gap(t) = (|RA(t) - retain_target| + |FA(t) - forget_target|) / 2

with RA/FA the retain/forget accuracies in percent. The optimal ``t``
minimises it, plus an optional measured *penalty* per point (e.g. the recipe's
privacy term), inside a user-chosen range; the *effective region* is where the
path's accuracies are closer to the target than its end ``t = 1`` (the
pre-unlearned model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import CubicSpline, PchipInterpolator

from ..checks import check_percentages, positive_int
from ..errors import ModeConnError

__all__ = [
    "DEFAULT_KIND",
    "Interpolation",
    "OptimalT",
    "avg_gap",
    "check_targets",
    "effective_region",
    "find_optimal_t",
    "interpolant",
    "resolve_kind",
]

logger = logging.getLogger(__name__)

Interpolation = Literal["cubic", "pchip", "linear"]
_KINDS = ("cubic", "pchip", "linear")
#: The interpolation used by default for selection and figures.
DEFAULT_KIND: Interpolation = "pchip"
_MIN_CUBIC_POINTS = 4


@dataclass(frozen=True, eq=False)
class OptimalT:
    """The result of :func:`find_optimal_t`.

    Attributes:
        t: The chosen point on the path (a ``t`` value in ``t_range``, not an index).
        avg_gap: The (interpolated) average gap at ``t``, in percentage points.
        retain_acc: Interpolated retain accuracy at ``t`` (percent).
        forget_acc: Interpolated forget accuracy at ``t`` (percent).
        region: The effective region as ``(start, end)`` intervals over the whole
            measured path, or ``None`` when ``t = 1`` was not measured.
        interpolation: The interpolation actually used (``"cubic"``, ``"pchip"``
            or ``"linear"``; cubic falls back to linear below 4 points).
        t_range: The range that was searched.
        grid_t: The dense grid of ``t`` searched.
        grid_avg_gap: ``avg_gap`` on ``grid_t``.
        notes: Human-readable remarks (fallbacks, missing region).
        penalty: The (interpolated) penalty at ``t``, in percentage points (0 without one);
            ``t`` minimises ``avg_gap + penalty``.
    """

    t: float
    avg_gap: float
    retain_acc: float
    forget_acc: float
    region: list[tuple[float, float]] | None
    interpolation: str
    t_range: tuple[float, float]
    grid_t: NDArray[np.float64] = field(repr=False)
    grid_avg_gap: NDArray[np.float64] = field(repr=False)
    notes: tuple[str, ...] = ()
    penalty: float = 0.0

    @property
    def score(self) -> float:
        """What the choice minimised at ``t``: ``avg_gap + penalty``."""
        return self.avg_gap + self.penalty


def avg_gap(
    retain_acc: ArrayLike,
    forget_acc: ArrayLike,
    *,
    retain_target: float,
    forget_target: float,
) -> float | NDArray[np.float64]:
    """The mean absolute gap of retain and forget accuracy to their targets.

    ``(|retain_acc - retain_target| + |forget_acc - forget_target|) / 2``,
    element-wise; all values in percent.

    Args:
        retain_acc: Retain accuracy, a number or an array.
        forget_acc: Forget accuracy, same shape as ``retain_acc``.
        retain_target: Target retain accuracy (e.g. of the retrained model).
        forget_target: Target forget accuracy.

    Returns:
        A float for scalar inputs, otherwise an array.

    Example:
        >>> avg_gap(98.0, 90.0, retain_target=99.0, forget_target=92.0)
        1.5
    """
    retain = np.asarray(retain_acc, dtype=np.float64)
    forget = np.asarray(forget_acc, dtype=np.float64)
    if retain.shape != forget.shape:
        raise ModeConnError(
            f"retain_acc and forget_acc have different shapes {retain.shape} and {forget.shape}."
        )
    check_targets(retain_target, forget_target)
    gap = (np.abs(retain - retain_target) + np.abs(forget - forget_target)) / 2.0
    return float(gap) if gap.ndim == 0 else gap


def check_targets(retain_target: float, forget_target: float) -> None:
    """Refuse targets that are not finite percentages, or that look like fractions.

    Accuracies are percentages in [0, 100]; both targets ``<= 1`` with one
    ``> 0`` (e.g. ``0.99`` and ``0.92``) is taken for fractions and refused,
    by the same rule as :class:`~modeconn_unlearn.losses.AdaptiveBeta`.

    Raises:
        ModeConnError: A target is not finite, or both look like fractions.

    Example:
        >>> check_targets(99.0, 0.0)
        >>> try:
        ...     check_targets(0.99, 0.92)
        ... except ValueError as error:
        ...     print(str(error).split(": ")[-1])
        did you mean 99.0 and 92.0?
    """
    targets = {"retain_target": retain_target, "forget_target": forget_target}
    for name, value in targets.items():
        if not math.isfinite(float(value)):
            raise ModeConnError(f"{name} must be a finite accuracy in percent, got {value}.")
    check_percentages(targets)


def find_optimal_t(
    t: ArrayLike,
    retain_acc: ArrayLike,
    forget_acc: ArrayLike,
    *,
    retain_target: float,
    forget_target: float,
    t_range: tuple[float, float] = (0.0, 1.0),
    dense: int = 1001,
    kind: Interpolation = DEFAULT_KIND,
    penalty: ArrayLike | None = None,
) -> OptimalT:
    """The ``t`` whose interpolated accuracies are closest to the targets.

    The measured accuracies are interpolated (shape-preserving cubic by default) on
    ``dense`` evenly spaced points of ``t_range`` plus the measured ``t`` inside
    it, and the point with the smallest :func:`avg_gap` is returned (the
    smallest such ``t`` on ties). With ``penalty``, a measured cost per point
    interpolated the same way is added to the gap before the choice. The
    effective region is computed from the accuracies alone, over the whole
    measured path with the same interpolation.

    Args:
        t: Measured points, strictly increasing, in [0, 1].
        retain_acc: Retain accuracy (percent) at each ``t``.
        forget_acc: Forget accuracy (percent) at each ``t``.
        retain_target: Target retain accuracy (percent).
        forget_target: Target forget accuracy (percent).
        t_range: ``(low, high)`` to search, inside [0, 1] and inside the measured
            span of ``t``.
        dense: Number of evenly spaced grid points (at least 2).
        kind: ``"pchip"`` (default: a shape-preserving piecewise cubic that
            never leaves the range of neighbouring measurements),
            ``"cubic"`` (a not-a-knot cubic spline) or ``"linear"``. Both
            cubic kinds fall back to ``"linear"`` below 4 points, as recorded
            in the result. A cubic spline overshoots next to plateaus
            (accuracies stuck at 100 % or 0 %), which can open or close thin
            slivers of the effective region.
        penalty: A cost (percentage points, finite, >= 0) at each ``t``, added to the gap
            (``None``: none).

    Returns:
        An :class:`OptimalT` with ``.t`` a value in ``t_range``.

    Raises:
        ModeConnError: Inputs of different lengths, unsorted or duplicate ``t``,
            non-finite values, a negative penalty, a bad ``t_range`` or ``kind``.

    Example:
        >>> ts = [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> ra = [99.0, 99.0, 99.0, 99.0, 99.0]
        >>> fa = [100.0, 97.0, 92.0, 95.0, 99.0]
        >>> best = find_optimal_t(ts, ra, fa, retain_target=99.0, forget_target=92.0)
        >>> round(best.t, 3), round(best.avg_gap, 3)
        (0.5, 0.0)
        >>> found = find_optimal_t(ts, ra, fa, retain_target=99.0, forget_target=92.0,
        ...                        penalty=[0.0, 0.0, 4.0, 0.0, 0.0], kind="linear")
        >>> round(found.t, 3), round(found.avg_gap, 3), round(found.penalty, 3)
        (0.75, 1.5, 0.0)
    """
    ts, retain, forget = _check_series(t, retain_acc, forget_acc)
    costs = None if penalty is None else _check_penalty(penalty, len(ts))
    check_targets(retain_target, forget_target)
    low, high = _check_range(t_range, ts)
    positive_int(dense, "dense", minimum=2)
    used, notes = resolve_kind(kind, len(ts))
    retain_fn = interpolant(ts, retain, used)
    forget_fn = interpolant(ts, forget, used)

    inside = ts[(ts >= low) & (ts <= high)]
    grid = np.union1d(np.linspace(low, high, dense), inside)
    ra, fa = retain_fn(grid), forget_fn(grid)
    gaps = avg_gap(ra, fa, retain_target=retain_target, forget_target=forget_target)
    gaps = np.asarray(gaps, dtype=np.float64)
    costs_on_grid = np.zeros_like(gaps)
    if costs is not None:  # a cubic may dip below 0 between measured points
        costs_on_grid = np.maximum(interpolant(ts, costs, used)(grid), 0.0)
    best = int(np.argmin(gaps + costs_on_grid))

    region: list[tuple[float, float]] | None = None
    if ts[0] <= 1.0 <= ts[-1]:
        region = _region(ts, retain_fn, forget_fn, retain_target, forget_target, dense, 1.0)
    else:
        notes.append("t = 1 was not measured, so the effective region was not computed.")
    return OptimalT(
        t=float(grid[best]),
        avg_gap=float(gaps[best]),
        retain_acc=float(ra[best]),
        forget_acc=float(fa[best]),
        region=region,
        interpolation=used,
        t_range=(low, high),
        grid_t=grid,
        grid_avg_gap=gaps,
        notes=tuple(notes),
        penalty=float(costs_on_grid[best]),
    )


def effective_region(
    t: ArrayLike,
    retain_acc: ArrayLike,
    forget_acc: ArrayLike,
    *,
    retain_target: float,
    forget_target: float,
    dense: int = 1001,
    kind: Interpolation = DEFAULT_KIND,
    reference_t: float = 1.0,
) -> list[tuple[float, float]]:
    """The intervals of ``t`` where the path is closer to the targets than at ``reference_t``.

    That is, where ``avg_gap(t) < avg_gap(reference_t)`` (default ``t = 1``, the
    pre-unlearned end of an MCU path), evaluated on the interpolated
    accuracies over the measured span. Interval ends between grid points are
    located by linear interpolation of the gap difference.

    Args:
        t: Measured points, strictly increasing, in [0, 1].
        retain_acc: Retain accuracy (percent) at each ``t``.
        forget_acc: Forget accuracy (percent) at each ``t``.
        retain_target: Target retain accuracy (percent).
        forget_target: Target forget accuracy (percent).
        dense: Number of evenly spaced grid points over the measured span.
        kind: Interpolation, as in :func:`find_optimal_t`.
        reference_t: The point to beat; must lie in the measured span.

    Returns:
        A list of ``(start, end)`` pairs in increasing order; empty when no
        point beats the reference.

    Raises:
        ModeConnError: Bad inputs, as in :func:`find_optimal_t`, or
            ``reference_t`` outside the measured span.

    Example:
        >>> ts = [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> gaps = [3.0, 1.0, 3.0, 1.0, 2.0]  # forget acc above a target of 0
        >>> effective_region(ts, [50.0] * 5, [2 * g for g in gaps], retain_target=50.0,
        ...                  forget_target=0.0, kind="linear")
        [(0.125, 0.375), (0.625, 1.0)]
    """
    ts, retain, forget = _check_series(t, retain_acc, forget_acc)
    check_targets(retain_target, forget_target)
    positive_int(dense, "dense", minimum=2)
    if not (math.isfinite(reference_t) and ts[0] <= reference_t <= ts[-1]):
        raise ModeConnError(
            f"reference_t={reference_t} lies outside the measured t in [{ts[0]}, {ts[-1]}]; "
            "measure the path at the reference point (by default t=1, the unlearned end)."
        )
    used, notes = resolve_kind(kind, len(ts))
    for note in notes:
        logger.info(note)
    return _region(
        ts,
        interpolant(ts, retain, used),
        interpolant(ts, forget, used),
        retain_target,
        forget_target,
        dense,
        reference_t,
    )


def _region(
    ts: NDArray[np.float64],
    retain_fn: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    forget_fn: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    retain_target: float,
    forget_target: float,
    dense: int,
    reference_t: float,
) -> list[tuple[float, float]]:
    grid = np.union1d(np.linspace(ts[0], ts[-1], dense), ts)
    points = np.append(grid, reference_t)
    targets = {"retain_target": retain_target, "forget_target": forget_target}
    gaps = np.asarray(avg_gap(retain_fn(points), forget_fn(points), **targets))
    reference = float(gaps[-1])
    diff = gaps[:-1] - reference
    # A tolerance keeps rounding noise of the spline from opening zero-width intervals.
    inside = diff < -1e-9 * (1.0 + abs(reference))
    # The first and last grid index of each run of points inside.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
    last = len(grid) - 1
    return [
        (
            float(grid[a] if a == 0 else _crossing(grid, diff, a - 1, a)),
            float(grid[b] if b == last else _crossing(grid, diff, b, b + 1)),
        )
        for a, b in zip(edges[::2], edges[1::2] - 1, strict=True)
    ]


def _crossing(grid: NDArray[np.float64], diff: NDArray[np.float64], i: int, j: int) -> float:
    """Where the gap difference, linear between grid points ``i`` and ``j``, crosses zero."""
    denominator = diff[i] - diff[j]
    if denominator == 0.0:
        return float(grid[i])
    return float(grid[i] + (grid[j] - grid[i]) * diff[i] / denominator)


def interpolant(
    ts: NDArray[np.float64], values: NDArray[np.float64], kind: str
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """The interpolating function of ``values`` measured at ``ts`` (``kind`` already resolved).

    Example:
        >>> f = interpolant(np.array([0.0, 1.0]), np.array([0.0, 2.0]), "linear")
        >>> float(f(np.array([0.25]))[0])
        0.5
    """
    if kind == "cubic":
        spline = CubicSpline(ts, values)
        return lambda x: np.asarray(spline(x), dtype=np.float64)
    if kind == "pchip":
        pchip = PchipInterpolator(ts, values)
        return lambda x: np.asarray(pchip(x), dtype=np.float64)
    return lambda x: np.interp(x, ts, values)


def resolve_kind(kind: str, points: int) -> tuple[Interpolation, list[str]]:
    """The interpolation to use for ``points`` measurements, and notes on any fallback.

    Cubic kinds need 4 points; below that linear interpolation is used (and logged).

    Example:
        >>> resolve_kind("pchip", 5)
        ('pchip', [])
    """
    if kind not in _KINDS:
        raise ModeConnError(f"kind must be one of {_KINDS}, got {kind!r}.")
    if kind != "linear" and points < _MIN_CUBIC_POINTS:
        note = (
            f"{kind} interpolation needs at least {_MIN_CUBIC_POINTS} measured points, got "
            f"{points}; used linear interpolation instead."
        )
        logger.warning(note)
        return "linear", [note]
    return cast(Interpolation, kind), []


def _check_series(
    t: ArrayLike, retain_acc: ArrayLike, forget_acc: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    arrays = {}
    for name, values in (("t", t), ("retain_acc", retain_acc), ("forget_acc", forget_acc)):
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise ModeConnError(f"{name} must be one-dimensional, got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            bad = np.flatnonzero(~np.isfinite(array)).tolist()
            raise ModeConnError(f"{name} has non-finite values at positions {bad}.")
        arrays[name] = array
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ModeConnError(
            f"t, retain_acc and forget_acc must have the same length, got {lengths}."
        )
    ts = arrays["t"]
    if len(ts) < 2:
        raise ModeConnError(f"Need at least 2 measured points along the path, got {len(ts)}.")
    steps = np.diff(ts)
    if np.any(steps == 0):
        duplicates = sorted(set(ts[1:][steps == 0].tolist()))
        raise ModeConnError(f"t has duplicate values {duplicates}; measure each t once.")
    if np.any(steps < 0):
        raise ModeConnError(
            "t must be sorted in increasing order; sort t and the accuracies together "
            "(e.g. order = np.argsort(t))."
        )
    if ts[0] < 0.0 or ts[-1] > 1.0:
        raise ModeConnError(f"t must lie in [0, 1], got values from {ts[0]} to {ts[-1]}.")
    return ts, arrays["retain_acc"], arrays["forget_acc"]


def _check_penalty(penalty: ArrayLike, count: int) -> NDArray[np.float64]:
    costs = np.asarray(penalty, dtype=np.float64)
    if costs.shape != (count,):
        raise ModeConnError(
            f"penalty must hold one value per measured t ({count}), got shape {costs.shape}."
        )
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise ModeConnError(f"penalty must be finite and >= 0, got {costs.tolist()}.")
    return costs


def _check_range(
    t_range: Sequence[float] | tuple[float, float], ts: NDArray[np.float64]
) -> tuple[float, float]:
    if len(t_range) != 2:
        raise ModeConnError(f"t_range must be a (low, high) pair, got {t_range!r}.")
    low, high = float(t_range[0]), float(t_range[1])
    if not (0.0 <= low < high <= 1.0):
        raise ModeConnError(f"t_range must satisfy 0 <= low < high <= 1, got ({low}, {high}).")
    if low < ts[0] or high > ts[-1]:
        raise ModeConnError(
            f"t_range ({low}, {high}) reaches outside the measured t in [{ts[0]}, {ts[-1]}]; "
            "measure the path there or narrow t_range (no extrapolation)."
        )
    return low, high
