"""The one figure policy: how figures are created, where they are drawn, how they are saved.

matplotlib is optional (``pip install "modeconn-unlearn[plot]"``) and imported
only when a figure is drawn. A figure that is saved to a file is drawn on a
private Agg canvas, which leaves pyplot's global state (and any interactive
backend) untouched; a figure that is not saved is made with pyplot, so that a
notebook shows it. Every plotting function takes ``save=`` (a path whose
suffix picks the format) and ``ax=`` (draw into existing axes).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModeConnError
from ..optional import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "check_save_path",
    "figure_of",
    "new_figure",
    "resolve_save",
    "save_figure",
]

_DPI = 150


def check_save_path(save: str | os.PathLike[str] | None) -> Path | None:
    """``save`` as a Path, checked for a suffix matplotlib can write (before any drawing)."""
    if save is None:
        return None
    require("matplotlib", "plot", feature="Plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    file = Path(save)
    formats = FigureCanvasAgg.get_supported_filetypes()
    if file.suffix.lower().lstrip(".") not in formats:
        shown = ", ".join(f".{name}" for name in sorted(formats))
        raise ModeConnError(
            f"Cannot save a figure as {file.name!r}; use a file name ending in one of {shown}."
        )
    return file


def resolve_save(
    save: str | os.PathLike[str] | None,
    path: str | os.PathLike[str] | None,
    *,
    stacklevel: int = 3,
) -> Path | None:
    """``save``, or the deprecated ``path=`` spelling of it (warns; removed in 0.3.0)."""
    if path is not None:
        if save is not None:
            raise ModeConnError("Pass the file name once, as save=... (path= is its old name).")
        warnings.warn(
            "plot_path(path=...) is deprecated and will be removed in 0.3.0; use save=... as in "
            "the other plotting functions.",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        save = path
    return check_save_path(save)


def new_figure(
    save: Path | None, *, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1
) -> tuple[Figure, Any]:
    """A figure and its axes (``plt.subplots(..., squeeze=False)`` layout when there are several).

    On a private Agg canvas when ``save`` is set, with pyplot otherwise.
    """
    require("matplotlib", "plot", feature="Plotting")
    squeeze = nrows == 1 and ncols == 1
    if save is None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=squeeze)
        return figure, axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze)


def figure_of(ax: Axes) -> Figure:
    """The top-level figure of ``ax`` (also when it sits in a SubFigure)."""
    require("matplotlib", "plot", feature="Plotting")
    from matplotlib.figure import Figure, SubFigure

    parent = ax.figure
    figure = parent.figure if isinstance(parent, SubFigure) else parent
    if not isinstance(figure, Figure):
        raise ModeConnError("ax does not belong to a matplotlib Figure.")
    return figure


def save_figure(figure: Figure, save: Path | None) -> None:
    """Write ``figure`` to ``save`` (if set) at 150 dpi with a tight bounding box."""
    if save is None:
        return
    save.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(save, dpi=_DPI, bbox_inches="tight")
