"""The path figure: a metric per split along ``t``, with targets, the effective region and MIA."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import ModeConnError, listed
from ..selection import (
    DEFAULT_KIND,
    Interpolation,
    OptimalT,
    effective_region,
    interpolant,
    resolve_kind,
)
from .figures import figure_of, new_figure, resolve_save, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..evaluation import PathReport

__all__ = ["plot_path"]

logger = logging.getLogger(__name__)

_LABELS = {"acc": "accuracy (%)", "loss": "loss (mean per sample)"}
_CURVE_ZORDER = 3
_MIA_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive")
_TARGET_ZORDER = 2


def _number(value: float) -> str:
    """A target with 1-2 decimals: 99.0, 92.5, 92.53."""
    text = f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def _deprecated_kind(kind: Interpolation | None) -> Interpolation:
    """The interpolation to draw: the selection's default, or the deprecated ``kind=``."""
    if kind is None:
        return DEFAULT_KIND
    warnings.warn(
        "plot_path(kind=...) is deprecated and will be removed in 0.3.0; pass "
        "optimal_t=find_optimal_t(..., kind=...) so the figure shows the selection's "
        "interpolation.",
        DeprecationWarning,
        stacklevel=3,
    )
    return kind


def plot_path(
    report: PathReport,
    *,
    targets: Mapping[str, float] | None = None,
    region: bool = True,
    save: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    metric: str = "acc",
    optimal_t: float | OptimalT | None = None,
    end_labels: tuple[str, str] | None = None,
    mia: bool | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    **deprecated: Any,
) -> Figure:
    """Plot a metric per split along the path, with targets, the effective region and MIA.

    Curves are drawn on top of the thin dashed target lines, so a curve that
    lies on its target stays visible. Measured points are markers; between
    them the curve is the interpolation that the selection uses.

    Args:
        report: The :class:`~modeconn_unlearn.evaluation.PathReport` to draw.
        targets: ``{split: target value}`` drawn as thin dashed lines in the
            split's colour (e.g. the retrained model's accuracies), labelled
            with 1-2 decimals.
        region: Shade the effective region: where the average gap to the
            targets is below its value at ``t = 1``. It needs accuracy targets
            for both ``"retain"`` and ``"forget"``, otherwise nothing is shaded.
            It is computed as in :func:`~modeconn_unlearn.selection.find_optimal_t`
            (same interpolation and grid), so it equals ``OptimalT.region``.
        save: Save the figure there; the suffix picks the format (``.png``,
            ``.pdf``, ``.svg``, ...).
        splits: Splits to draw (default: all in the report).
        metric: The metric to draw (``"acc"``, ``"loss"``, ``"mia_confidence"``...).
        optimal_t: Mark this ``t`` with a line; an :class:`~modeconn_unlearn.selection.OptimalT`
            also supplies the interpolation drawn between the measured points and the shaded
            region, so the figure shows what the selection saw. Otherwise the selection's
            default interpolation is drawn (:data:`~modeconn_unlearn.selection.DEFAULT_KIND`).
        end_labels: Names of the ends, shown under ``t = 0`` and ``t = 1`` on the
            axis, e.g. ``("original", "RL")`` (the base method's name at 1).
        mia: Draw the report's MIA-efficacy (``mia_<feature>`` on the forget
            split) on a second axis; ``None`` draws it when the report has it
            and ``metric`` is ``"acc"``.
        title: Axes title.
        ax: Draw into these axes instead of a new figure.
        **deprecated: Keywords removed in 0.3.0, each with a ``DeprecationWarning``:
            ``path=`` (the old name of ``save``) and ``kind=`` (pass
            ``optimal_t=find_optimal_t(..., kind=...)`` instead).

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ImportError: matplotlib is not installed (with the install command).
        ModeConnError: Unknown split or metric, an unsupported file suffix, or
            ``mia=True`` for a report without MIA scores.

    Example:
        >>> from modeconn_unlearn.evaluation import PathReport
        >>> report = PathReport([0.0, 0.5, 1.0], {"retain": {"acc": [99.0, 97.0, 98.0]}},
        ...                     segment_lengths=[1.0, 1.0])
        >>> fig = plot_path(report, targets={"retain": 98.5}, save="path.png")  # doctest: +SKIP
    """
    file = resolve_save(save, deprecated.pop("path", None))
    kind = _deprecated_kind(deprecated.pop("kind", None))
    if deprecated:
        raise ModeConnError(f"plot_path() got unexpected keyword(s) {listed(sorted(deprecated))}.")
    chosen = list(report.splits if splits is None else splits)
    series = {split: report.metric(split, metric) for split in chosen}
    targets = dict(targets or {})
    unknown = [split for split in targets if split not in report.splits]
    if unknown:
        raise ModeConnError(f"targets name splits {unknown} not in the report {report.splits}.")
    mia_names = _mia_names(report, metric, mia)
    best = optimal_t if isinstance(optimal_t, OptimalT) else None
    if best is not None:
        kind = cast(Interpolation, best.interpolation)

    if ax is None:
        figure, axes = new_figure(file, figsize=(7.0, 4.2))
    else:
        figure, axes = figure_of(ax), ax

    used: Interpolation = resolve_kind(kind, len(report.t))[0]
    _draw_series(axes, report, series, targets, used)
    if region and metric == "acc" and {"retain", "forget"} <= targets.keys():
        _shade_region(axes, report, targets, used, best, end_labels)
    if optimal_t is not None:
        at = best.t if best is not None else float(cast(float, optimal_t))
        axes.axvline(at, color="black", linestyle=":", linewidth=1.2, label=f"optimal t = {at:.3f}")
    handles, labels = axes.get_legend_handles_labels()
    if mia_names:
        extra_handles, extra_labels = _draw_mia(axes, report, mia_names)
        handles, labels = handles + extra_handles, labels + extra_labels

    _label_t_axis(axes, report, end_labels)
    axes.set_ylabel(_LABELS.get(metric, metric))
    axes.grid(alpha=0.3)
    if title is not None:
        axes.set_title(title)
    axes.legend(
        handles,
        labels,
        fontsize="small",
        loc="center left",
        bbox_to_anchor=(1.12 if mia_names else 1.01, 0.5),
    )
    save_figure(figure, file)
    return figure


def _draw_series(
    axes: Any,
    report: PathReport,
    series: Mapping[str, Any],
    targets: Mapping[str, float],
    kind: Interpolation,
) -> None:
    """Each split's interpolated curve and measured markers, over its thin target line."""
    dense = np.linspace(float(report.t[0]), float(report.t[-1]), 401)
    for split, values in series.items():
        if len(report.t) > 1:
            xs, ys = dense, interpolant(report.t, values, kind)(dense)
        else:
            xs, ys = report.t, values
        (line,) = axes.plot(xs, ys, label=split, zorder=_CURVE_ZORDER, linewidth=1.6)
        colour = line.get_color()
        axes.plot(report.t, values, "o", markersize=3.5, color=colour, zorder=_CURVE_ZORDER)
        if split in targets:
            axes.axhline(
                targets[split],
                color=colour,
                linestyle="--",
                linewidth=0.8,
                alpha=0.8,
                zorder=_TARGET_ZORDER,
                label=f"{split} target ({_number(targets[split])})",
            )


def _draw_mia(axes: Any, report: PathReport, names: Sequence[str]) -> tuple[list[Any], list[str]]:
    """MIA-efficacy of the forget split on a right axis; its legend handles and labels."""
    twin = axes.twinx()
    for i, name in enumerate(names):
        twin.plot(
            report.t,
            report.metric("forget", name),
            linestyle="-.",
            marker="s",
            markersize=3,
            color=_MIA_COLOURS[i % len(_MIA_COLOURS)],
            label=f"forget MIA-efficacy, {name.removeprefix('mia_')} (right axis)",
        )
    twin.set_ylabel("MIA-efficacy (%)")
    handles, labels = twin.get_legend_handles_labels()
    return list(handles), list(labels)


def _mia_names(report: PathReport, metric: str, mia: bool | None) -> list[str]:
    available = (
        [n for n in report.metric_names("forget") if n.startswith("mia_")]
        if "forget" in report.splits
        else []
    )
    if mia is None:
        return available if metric == "acc" else []
    if mia and not available:
        raise ModeConnError(
            "mia=True, but the report has no MIA scores; measure them with "
            "evaluate_path(..., mia=True)."
        )
    return available if mia else []


def _label_t_axis(axes: Any, report: PathReport, end_labels: tuple[str, str] | None) -> None:
    low, high = float(report.t[0]), float(report.t[-1])
    axes.set_xlim(low, high)
    if end_labels is None:
        axes.set_xlabel("t (0 = start, 1 = end)")
        return
    if len(end_labels) != 2:
        raise ModeConnError(
            f"end_labels must be a pair (name at t=0, name at t=1), got {end_labels!r}."
        )
    ticks = np.linspace(low, high, 6)
    names = {0.0: end_labels[0], 1.0: end_labels[1]}
    axes.set_xticks(ticks, [f"{t:g}" + (f"\n{names[t]}" if t in names else "") for t in ticks])
    axes.set_xlabel("t")


def _shade_region(
    axes: Any,
    report: PathReport,
    targets: Mapping[str, float],
    kind: Interpolation,
    best: OptimalT | None,
    end_labels: tuple[str, str] | None,
) -> None:
    t = report.t
    if best is not None and best.region is not None:
        intervals = best.region
    elif not (t[0] <= 1.0 <= t[-1]) or len(t) < 2:
        logger.info("The report does not reach t = 1; the effective region is not shaded.")
        return
    else:
        intervals = effective_region(
            t,
            report.acc("retain"),
            report.acc("forget"),
            retain_target=targets["retain"],
            forget_target=targets["forget"],
            kind=kind,
        )
    end = "t = 1" if end_labels is None else end_labels[1]
    for i, (start, stop) in enumerate(intervals):
        axes.axvspan(
            start,
            stop,
            color="tab:green",
            alpha=0.12,
            linewidth=0,
            zorder=1,
            label=f"effective region (closer to the targets than {end})" if i == 0 else None,
        )
