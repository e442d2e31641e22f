"""Figures for connectivity analysis: barrier curves and barrier-matrix heatmaps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..connectivity import BarrierResult, ConnectivityMatrix
from ..errors import ModeConnError
from .figures import check_save_path, figure_of, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_barriers", "plot_matrix"]

_YLABELS = {"loss": "loss (mean per sample)", "error": "error (%)"}


def plot_barriers(
    barriers: BarrierResult | Mapping[str, BarrierResult],
    *,
    ax: Axes | None = None,
    label: str | None = None,
    linestyle: str = "-",
    show_line: bool = True,
    title: str | None = None,
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Plot the metric along a path per split, with the straight line between its ends.

    Each split gets one colour: the solid (or ``linestyle``) curve is ``v(t)``, the
    dotted line joins ``v(0)`` and ``v(1)``, and a marker shows where the barrier
    peaks. Call twice on one ``ax`` (with ``label``) to compare two paths, e.g. the
    linear one and a trained curve.

    Args:
        barriers: A :class:`BarrierResult` or ``{split: BarrierResult}`` from
            :func:`~modeconn_unlearn.connectivity.loss_barrier`.
        ax: Axes to draw on; a new figure when ``None``.
        label: Prefix for the legend entries (e.g. ``"linear"``).
        linestyle: Line style of the ``v(t)`` curves.
        show_line: Draw the straight line between the endpoint values.
        title: Axes title.
        save: Save the figure to this path (PNG, PDF, ... by suffix).

    Returns:
        The matplotlib figure.

    Example:
        >>> import numpy as np
        >>> r = BarrierResult(t=np.linspace(0, 1, 5), values=np.array([1, 2, 3, 2, 1.0]),
        ...                   metric="loss", split="retain")
        >>> fig = plot_barriers({"retain": r}, label="linear")  # doctest: +SKIP
    """
    file = check_save_path(save)
    results = dict(barriers) if isinstance(barriers, Mapping) else {barriers.split or "": barriers}
    if not results:
        raise ModeConnError("nothing to plot: barriers is empty.")
    if ax is None:
        fig, ax = new_figure(file, figsize=(5.5, 3.8))
    else:
        fig = figure_of(ax)
    metrics = {r.metric for r in results.values()}
    for split, result in results.items():
        name = " ".join(part for part in (label, split) if part) or "path"
        (line,) = ax.plot(
            result.t,
            result.values,
            linestyle=linestyle,
            marker="o",
            markersize=3,
            label=f"{name} (barrier {result.height:.3g})",
        )
        if show_line:
            ax.plot([0.0, 1.0], [result.start, result.end], ":", color=line.get_color())
        peak = int(abs(result.t - result.t_peak).argmin())
        if result.height > 0:
            ax.plot(result.t_peak, result.values[peak], "*", color=line.get_color(), markersize=10)
    ax.set_xlabel("t")
    ax.set_ylabel(_YLABELS[metrics.pop()] if len(metrics) == 1 else "value")
    ax.set_xlim(0.0, 1.0)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    save_figure(fig, file)
    return fig


def plot_matrix(
    matrix: ConnectivityMatrix,
    split: str | None = None,
    *,
    ax: Axes | None = None,
    annotate: bool = True,
    cmap: str = "viridis",
    save: str | os.PathLike[str] | None = None,
) -> Figure:
    """Draw barrier matrices as heatmaps: one panel per split, or only ``split``.

    Args:
        matrix: A :class:`ConnectivityMatrix` from
            :func:`~modeconn_unlearn.connectivity.connectivity_matrix`.
        split: Only this split; ``None`` draws every split side by side.
        ax: Axes to draw on (only with a single split).
        annotate: Write the barrier height in each cell.
        cmap: A matplotlib colour map name.
        save: Save the figure to this path (PNG, PDF, ... by suffix).

    Returns:
        The matplotlib figure.

    Example:
        >>> import numpy as np
        >>> m = ConnectivityMatrix(names=("a", "b"), heights={"retain": np.array(
        ...     [[0.0, 0.5], [0.5, 0.0]])}, metric="loss", path="linear")
        >>> fig = plot_matrix(m)  # doctest: +SKIP
    """
    file = check_save_path(save)
    splits = list(matrix.splits) if split is None else [split]
    for name in splits:
        matrix[name]  # raises a ModeConnError naming the available splits
    if ax is not None and len(splits) != 1:
        raise ModeConnError(f"ax= draws one split; pick one of {splits} with split=...")
    n = len(matrix.names)
    if ax is None:
        size = max(3.0, 0.55 * n + 1.5)
        fig, axes = new_figure(file, figsize=(size * len(splits), size), ncols=len(splits))
        axes_list = list(axes[0]) if len(splits) > 1 else [axes]
    else:
        fig, axes_list = figure_of(ax), [ax]
    for panel, name in zip(axes_list, splits, strict=True):
        values = matrix[name]
        image = panel.imshow(values, cmap=cmap)
        fig.colorbar(image, ax=panel, fraction=0.046, pad=0.04)
        panel.set_xticks(range(n), matrix.names, rotation=45, ha="right")
        panel.set_yticks(range(n), matrix.names)
        panel.set_title(f"{name}: {matrix.metric} barrier ({matrix.path})")
        if annotate:
            high = values.max() if values.size else 0.0
            for i in range(n):
                for j in range(n):
                    colour = "black" if values[i, j] > 0.6 * high else "white"
                    text = f"{values[i, j]:.2g}"
                    panel.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    save_figure(fig, file)
    return fig
