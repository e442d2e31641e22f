"""Figures of path evaluations (optional: ``pip install "modeconn-unlearn[plot]"``).

matplotlib is imported inside the functions, so the rest of the library works
without it. Figures saved to a file are drawn on a private Agg canvas, which
leaves pyplot's global state (and any interactive backend) untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModeConnError
from .selection import Interpolation, _interpolant, _resolve_kind, effective_region

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .evaluation import PathReport

__all__ = ["plot_path"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = 'Plotting needs matplotlib: pip install "modeconn-unlearn[plot]".'
_SUFFIXES = (".png", ".pdf", ".svg")
_LABELS = {"acc": "accuracy (%)", "loss": "cross-entropy loss"}


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return matplotlib


def _new_figure(path: Path | None) -> tuple[Figure, Axes]:
    _require_matplotlib()
    if path is None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7.0, 4.2))
        return figure, axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def plot_path(
    report: PathReport,
    *,
    targets: Mapping[str, float] | None = None,
    region: bool = True,
    path: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    metric: str = "acc",
    optimal_t: float | None = None,
    kind: Interpolation = "cubic",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Plot a metric per split along the path, with targets and the effective region.

    Args:
        report: The :class:`~modeconn_unlearn.evaluation.PathReport` to draw.
        targets: ``{split: target value}`` drawn as dashed lines in the split's
            colour (e.g. the retrained model's accuracies).
        region: Shade the effective region (where the average gap to the
            targets is below its value at ``t = 1``); needs accuracy targets for
            both ``"retain"`` and ``"forget"``, otherwise nothing is shaded.
        path: Save the figure there; the suffix picks the format (``.png``,
            ``.pdf`` or ``.svg``).
        splits: Splits to draw (default: all in the report).
        metric: The metric to draw (``"acc"``, ``"loss"``, ``"mia_confidence"``...).
        optimal_t: Mark this ``t`` (e.g. ``find_optimal_t(...).t``) with a line.
        kind: Interpolation drawn between the measured points (markers) and
            used for the region, as in :func:`~modeconn_unlearn.selection.find_optimal_t`,
            so the figure shows what the selection sees.
        title: Axes title.
        ax: Draw into these axes instead of a new figure.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ImportError: matplotlib is not installed (with the install command).
        ModeConnError: Unknown split or metric, or an unsupported file suffix.

    Example:
        >>> from modeconn_unlearn.evaluation import PathReport
        >>> report = PathReport([0.0, 0.5, 1.0], {"retain": {"acc": [99.0, 97.0, 98.0]}},
        ...                     segment_lengths=[1.0, 1.0])
        >>> fig = plot_path(report, targets={"retain": 98.5}, path="path.png")  # doctest: +SKIP
    """
    file = None if path is None else Path(path)
    if file is not None and file.suffix.lower() not in _SUFFIXES:
        raise ModeConnError(
            f"Cannot save a figure as {file.name!r}; use one of the suffixes {list(_SUFFIXES)}."
        )
    chosen = list(report.splits if splits is None else splits)
    series = {split: report.metric(split, metric) for split in chosen}
    targets = dict(targets or {})
    unknown = [split for split in targets if split not in report.splits]
    if unknown:
        raise ModeConnError(f"targets name splits {unknown} not in the report {report.splits}.")

    if ax is None:
        figure, axes = _new_figure(file)
    else:
        _require_matplotlib()
        from matplotlib.figure import SubFigure

        axes = ax
        parent = ax.figure
        figure = parent.figure if isinstance(parent, SubFigure) else parent

    used: Interpolation = _resolve_kind(kind, len(report.t))[0]
    dense = np.linspace(float(report.t[0]), float(report.t[-1]), 401)
    for split, values in series.items():
        curve = _interpolant(report.t, values, used)(dense) if len(report.t) > 1 else values
        (line,) = axes.plot(dense if len(report.t) > 1 else report.t, curve, label=split)
        colour = line.get_color()
        axes.plot(report.t, values, "o", markersize=3.5, color=colour)
        if split in targets:
            axes.axhline(
                targets[split],
                color=colour,
                linestyle="--",
                linewidth=1.0,
                label=f"{split} target ({targets[split]:g})",
            )

    if region and metric == "acc" and {"retain", "forget"} <= targets.keys():
        _shade_region(axes, report, targets, used)
    if optimal_t is not None:
        axes.axvline(
            optimal_t,
            color="black",
            linestyle=":",
            linewidth=1.2,
            label=f"optimal t = {optimal_t:.3f}",
        )

    axes.set_xlabel("t (0 = start, 1 = end)")
    axes.set_ylabel(_LABELS.get(metric, metric))
    axes.set_xlim(float(report.t[0]), float(report.t[-1]))
    axes.grid(alpha=0.3)
    if title is not None:
        axes.set_title(title)
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(file, dpi=150, bbox_inches="tight")
    return figure


def _shade_region(
    axes: Axes, report: PathReport, targets: Mapping[str, float], kind: Interpolation
) -> None:
    t = report.t
    if not (t[0] <= 1.0 <= t[-1]) or len(t) < 2:
        logger.info("The report does not reach t = 1; the effective region is not shaded.")
        return
    intervals = effective_region(
        t,
        report.acc("retain"),
        report.acc("forget"),
        retain_target=targets["retain"],
        forget_target=targets["forget"],
        kind=kind,
    )
    for i, (start, end) in enumerate(intervals):
        axes.axvspan(
            start,
            end,
            color="tab:green",
            alpha=0.12,
            linewidth=0,
            label="effective region" if i == 0 else None,
        )
