"""Adaptive search for the optimal ``t`` along a curve: few evaluations near the optimum.

Choosing ``t`` needs accurate accuracies near the best point, not everywhere.
:func:`refine_optimal_t` measures a coarse grid over ``t_range``, then adds
points only where the optimum lies: the interpolated optimum when it falls in
the bracket around the best measured point, else the midpoint of the bracket's
larger half (Brent's safeguard against kinks and plateaus). It stops when the
optimum is pinned down to ``tol`` or after ``max_points`` measurements.
:func:`search_path` runs it on a :class:`~modeconn_unlearn.CurveModel` with
:func:`~modeconn_unlearn.evaluate_path`, calling it on the new points only, and
merges the reports into one :class:`~modeconn_unlearn.PathReport`.

With the defaults (5 coarse points, at most 10 in all) it reaches the ``t`` of a
dense 21-point grid to within 0.01 with at most half the model evaluations
(``tests/test_path_search.py`` checks this on synthetic and real curves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from torch import nn
from typing_extensions import Unpack

from ..checks import as_float, positive_int
from ..curve import CurveModel
from ..errors import ModeConnError
from ..evaluation import DataLike, PathOptions, PathReport, evaluate_path
from ..evaluation.options import PATH_OPTIONS, path_settings
from ..evaluation.paths import segment_lengths
from .optimal import Interpolation, OptimalT, avg_gap, find_optimal_t

__all__ = ["PathSearch", "TSearch", "merge_reports", "refine_optimal_t", "search_path"]

Measure = Callable[[list[float]], tuple[Sequence[float], ...]]
"""``measure(ts) -> (retain_acc, forget_acc)`` in percent at each new ``t``, optionally
followed by a third sequence: a penalty (percentage points) that the choice adds to the gap."""


@dataclass(frozen=True)
class TSearch:
    """The result of :func:`refine_optimal_t`.

    Attributes:
        best: :func:`~modeconn_unlearn.find_optimal_t` on all measured points.
        t: Every measured point, increasing.
        retain_acc: Retain accuracy at each point (percent).
        forget_acc: Forget accuracy at each point (percent).
        rounds: The points measured in each round, in order (the first is the coarse grid).
        penalty: The penalty at each point, when ``measure`` returned one.
    """

    best: OptimalT
    t: NDArray[np.float64] = field(repr=False)
    retain_acc: NDArray[np.float64] = field(repr=False)
    forget_acc: NDArray[np.float64] = field(repr=False)
    rounds: tuple[tuple[float, ...], ...] = ()
    penalty: NDArray[np.float64] | None = field(default=None, repr=False)

    @property
    def evaluations(self) -> int:
        """How many points were measured."""
        return len(self.t)


@dataclass(frozen=True)
class PathSearch:
    """The result of :func:`search_path`.

    Attributes:
        best: The chosen ``t`` (:class:`~modeconn_unlearn.OptimalT`).
        report: One :class:`~modeconn_unlearn.PathReport` over all measured points.
        rounds: The points evaluated in each round.
        penalty: With ``search_path(penalty=...)``, its value at each ``report.t``.
    """

    best: OptimalT
    report: PathReport
    rounds: tuple[tuple[float, ...], ...]
    penalty: NDArray[np.float64] | None = field(default=None, repr=False)

    @property
    def evaluations(self) -> int:
        """How many points of the curve were evaluated."""
        return len(self.report.t)


def _next_points(
    best_t: float, measured: NDArray[np.float64], gaps: NDArray[np.float64], tol: float
) -> list[float]:
    """The point to measure next (none once the optimum is bracketed to ``tol``).

    The bracket is the best measured point and its two measured neighbours. The
    interpolated optimum ``best_t`` is taken when it falls inside the bracket
    and away from measured points; otherwise the larger half of the bracket is
    halved (a bisection safeguard, as in Brent's method, for kinks and plateaus
    that an interpolant cannot see).
    """
    centre = int(np.argmin(gaps))
    left = measured[max(centre - 1, 0)]
    right = measured[min(centre + 1, len(measured) - 1)]
    if right - left <= 4 * tol:
        return []
    if left < best_t < right and float(np.min(np.abs(measured - best_t))) > tol:
        return [best_t]
    halves = [
        (measured[centre] - left, (left + measured[centre]) / 2),
        (right - measured[centre], (measured[centre] + right) / 2),
    ]
    width, point = max(halves, key=lambda half: half[0])
    return [float(point)] if width > 2 * tol else []


def refine_optimal_t(
    measure: Measure,
    *,
    retain_target: float,
    forget_target: float,
    t_range: tuple[float, float] = (0.0, 1.0),
    coarse: int = 5,
    max_points: int = 10,
    tol: float = 0.01,
    kind: Interpolation = "pchip",
) -> TSearch:
    """Find the ``t`` closest to the targets with few measurements.

    Measures ``coarse`` evenly spaced points of ``t_range``, then repeats: run
    :func:`~modeconn_unlearn.find_optimal_t` on everything measured and take
    the bracket around the best measured point (its two measured neighbours);
    measure the interpolated optimum if it lies inside the bracket and farther
    than ``tol`` from every measured point, else the midpoint of the larger
    half of the bracket. It stops when the bracket is narrower than ``4 * tol``
    or ``max_points`` points have been measured. ``t = 1`` is
    measured when ``t_range`` reaches it, so the effective region is reported.

    Args:
        measure: ``measure(ts) -> (retain_acc, forget_acc)`` in percent, called
            once per round with the new points only; a third returned sequence is a
            penalty per point (percentage points) added to the gap, in the choice
            (:func:`~modeconn_unlearn.find_optimal_t`'s ``penalty``) and in the bracket.
        retain_target: Target retain accuracy (percent).
        forget_target: Target forget accuracy (percent).
        t_range: ``(low, high)`` searched, inside [0, 1].
        coarse: Points of the first grid (at least 2).
        max_points: Most points measured in all (at least ``coarse``).
        tol: Precision in ``t`` at which the search stops.
        kind: Interpolation of :func:`~modeconn_unlearn.find_optimal_t`.

    Returns:
        A :class:`TSearch`.

    Raises:
        ModeConnError: Bad settings, or ``measure`` returned the wrong number of values,
            or a penalty in some rounds only.

    Example:
        >>> def measure(ts):  # forget accuracy falls linearly from 100 to 80
        ...     return [99.0] * len(ts), [100.0 - 20.0 * t for t in ts]
        >>> found = refine_optimal_t(measure, retain_target=99.0, forget_target=87.0)
        >>> round(found.best.t, 3), found.evaluations <= 10
        (0.65, True)
    """
    positive_int(coarse, "coarse", minimum=2)
    positive_int(max_points, "max_points", minimum=coarse)
    as_float(tol, "tol", positive=True)
    try:
        low, high = (float(v) for v in t_range)
    except (TypeError, ValueError) as error:
        raise ModeConnError(f"t_range must be a pair (low, high), got {t_range!r}.") from error
    if not (0.0 <= low < high <= 1.0):
        raise ModeConnError(f"t_range must satisfy 0 <= low < high <= 1, got {t_range!r}.")
    targets = {"retain_target": retain_target, "forget_target": forget_target}
    ts: list[float] = []
    series: list[list[float]] = []  # retain, forget and (optionally) penalty, per point
    rounds: list[tuple[float, ...]] = []

    def take(points: list[float]) -> None:
        measured = [list(values) for values in measure(points)]
        if len(measured) not in (2, 3) or any(len(v) != len(points) for v in measured):
            raise ModeConnError(
                f"measure returned {[len(v) for v in measured]} values for {len(points)} points; "
                "return (retain_acc, forget_acc) or (retain_acc, forget_acc, penalty), one of "
                "each per t."
            )
        if series and len(measured) != len(series):
            raise ModeConnError("measure returned a penalty in some rounds only; return it always.")
        if not series:
            series.extend([] for _ in measured)
        ts.extend(points)
        for column, values in zip(series, measured, strict=True):
            column.extend(float(v) for v in values)
        rounds.append(tuple(points))

    def optimum() -> tuple[OptimalT, NDArray[np.float64], list[NDArray[np.float64]]]:
        order = np.argsort(ts)
        columns = [np.asarray(column, dtype=np.float64)[order] for column in series]
        t_arr = np.asarray(ts, dtype=np.float64)[order]
        best = find_optimal_t(
            t_arr,
            columns[0],
            columns[1],
            retain_target=retain_target,
            forget_target=forget_target,
            t_range=(low, high),
            kind=kind,
            penalty=columns[2] if len(columns) == 3 else None,
        )
        return best, t_arr, columns

    take([float(v) for v in np.linspace(low, high, coarse)])
    best, t_arr, columns = optimum()
    while len(ts) < max_points:
        scores = np.asarray(avg_gap(columns[0], columns[1], **targets), dtype=np.float64)
        if len(columns) == 3:
            scores = scores + columns[2]
        points = _next_points(best.t, t_arr, scores, tol)
        if not points:
            break
        take(points)
        best, t_arr, columns = optimum()
    return TSearch(
        best=best,
        t=t_arr,
        retain_acc=columns[0],
        forget_acc=columns[1],
        rounds=tuple(rounds),
        penalty=columns[2] if len(columns) == 3 else None,
    )


def merge_reports(curve: CurveModel, reports: Sequence[PathReport]) -> PathReport:
    """One :class:`~modeconn_unlearn.PathReport` over the points of several reports.

    Points are sorted by ``t``; the segment lengths between consecutive points
    are recomputed from ``curve.weights_at`` (no forward pass).

    Args:
        curve: The curve the reports were measured on.
        reports: Reports over disjoint points with the same splits and metrics.

    Returns:
        The merged report.

    Raises:
        ModeConnError: No reports, a point measured twice, or reports with other metrics.

    Example:
        >>> from torch import nn
        >>> curve = CurveModel(nn.Linear(2, 2), end=nn.Linear(2, 2))
        >>> a = PathReport([0.0, 1.0], {"f": {"acc": [1.0, 3.0]}}, segment_lengths=[0.0])
        >>> b = PathReport([0.5], {"f": {"acc": [2.0]}}, segment_lengths=[])
        >>> merge_reports(curve, [a, b]).acc("f").tolist()
        [1.0, 2.0, 3.0]
    """
    if not reports:
        raise ModeConnError("merge_reports needs at least one report.")
    layout = {split: reports[0].metric_names(split) for split in reports[0].splits}
    for report in reports[1:]:
        other = {split: report.metric_names(split) for split in report.splits}
        if other != layout:
            raise ModeConnError(
                f"Reports measure different splits or metrics: {layout} vs {other}; "
                "measure every round with the same splits and options."
            )
    t = np.concatenate([report.t for report in reports])
    order = np.argsort(t, kind="stable")
    t = t[order]
    if len(np.unique(t)) != len(t):
        raise ModeConnError("Reports share a t; measure each point once before merging.")
    metrics = {
        split: {
            name: np.concatenate([report.metric(split, name) for report in reports])[order]
            for name in names
        }
        for split, names in layout.items()
    }
    meta = dict(reports[0].meta)
    meta["rounds"] = [report.t.tolist() for report in reports]
    return PathReport(t, metrics, segment_lengths=segment_lengths(curve, t), meta=meta)


def search_path(
    curve: CurveModel,
    splits: Mapping[str, DataLike],
    *,
    retain_target: float,
    forget_target: float,
    t_range: tuple[float, float] = (0.0, 1.0),
    coarse: int = 5,
    max_points: int = 10,
    tol: float = 0.01,
    kind: Interpolation = "pchip",
    penalty: Callable[[float, nn.Module], float] | None = None,
    **options: Unpack[PathOptions],
) -> PathSearch:
    """:func:`refine_optimal_t` on a curve: evaluate it only where the optimum may be.

    Each round calls :func:`~modeconn_unlearn.evaluate_path` on the new points
    only (BatchNorm statistics re-estimated at each ``t`` on ``bn_loader``, or
    the ``"retain"`` split); selection reads the ``"retain"`` and ``"forget"``
    accuracies only. Other splits (e.g. ``"test"`` for a figure) are measured
    at the same points but never influence the choice; for MIA-efficacy at the
    searched points, call ``evaluate_path(curve, splits, ts=found.report.t, mia=True)``.

    Args:
        curve: A trained :class:`~modeconn_unlearn.CurveModel`.
        splits: ``{name: data}`` with at least ``"retain"`` and ``"forget"``.
        retain_target: Target retain accuracy (percent).
        forget_target: Target forget accuracy (percent).
        t_range: ``(low, high)`` searched.
        coarse: Points of the first grid.
        max_points: Most points evaluated in all.
        tol: Precision in ``t`` at which the search stops.
        kind: Interpolation of :func:`~modeconn_unlearn.find_optimal_t`.
        penalty: ``penalty(t, model) -> float``, a cost in percentage points (>= 0) of
            the model at each evaluated ``t``, added to the gap in the choice of ``t``
            (the recipe's privacy term); ``None``: accuracies only.
        **options: The path options (:class:`~modeconn_unlearn.evaluation.PathOptions`) but
            ``ts``, which the search chooses: ``bn_loader`` (default: the ``"retain"`` split),
            ``bn_samples``, ``task`` (for language models
            :class:`~modeconn_unlearn.tasks.CausalLMTask`, whose accuracy is the answer token
            accuracy), ``device``, ``progress`` (a bar per round).

    Returns:
        A :class:`PathSearch` (chosen ``t``, merged report, points per round).

    Raises:
        ModeConnError: A missing ``"retain"`` or ``"forget"`` split, bad settings, or an
            unknown keyword (``ts`` included).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> curve = CurveModel(nn.Linear(4, 3), end=nn.Linear(4, 3))
        >>> found = search_path(curve, {"retain": data, "forget": data},
        ...                     retain_target=50.0, forget_target=30.0)
        >>> found.evaluations <= 10, 0.0 <= found.best.t <= 1.0
        (True, True)
    """
    allowed = [name for name in PATH_OPTIONS if name != "ts"]
    settings = path_settings(options, caller="search_path", allowed=allowed)
    missing = [name for name in ("retain", "forget") if name not in splits]
    if missing:
        raise ModeConnError(
            f"splits lacks {missing}; search_path chooses t from the retain and forget "
            'accuracies: pass {"retain": dr, "forget": df, ...}.'
        )
    reports: list[PathReport] = []
    costs: dict[float, float] = {}

    def cost(t: float, model: nn.Module) -> None:
        assert penalty is not None
        costs[t] = float(penalty(t, model))

    def measure(ts: list[float]) -> tuple[Sequence[float], ...]:
        hook = None if penalty is None else cost
        report = evaluate_path(curve, splits, each_point=hook, **settings.options(ts=ts))
        reports.append(report)
        accuracies = (report.acc("retain").tolist(), report.acc("forget").tolist())
        return accuracies if penalty is None else (*accuracies, [costs[t] for t in report.t])

    found = refine_optimal_t(
        measure,
        retain_target=retain_target,
        forget_target=forget_target,
        t_range=t_range,
        coarse=coarse,
        max_points=max_points,
        tol=tol,
        kind=kind,
    )
    merged = merge_reports(curve, reports)
    measured = None if penalty is None else np.array([costs[t] for t in merged.t])
    return PathSearch(best=found.best, report=merged, rounds=found.rounds, penalty=measured)
