"""Figures (optional: ``pip install "modeconn-unlearn[plot]"``).

* :func:`plot_path` (:mod:`~modeconn_unlearn.plotting.path`): a metric per split
  along a path, with targets, the effective region and MIA-efficacy.
* :func:`plot_barriers` and :func:`plot_matrix`
  (:mod:`~modeconn_unlearn.plotting.connectivity`): barrier curves and
  barrier-matrix heatmaps.

All of them follow one policy (:mod:`~modeconn_unlearn.plotting.figures`):
matplotlib is imported only when a figure is drawn; ``save=`` writes the
figure (on a private Agg canvas, leaving pyplot's state untouched) and
``ax=`` draws into existing axes.
"""

from __future__ import annotations

from .connectivity import plot_barriers, plot_matrix
from .path import plot_path

__all__ = ["plot_barriers", "plot_matrix", "plot_path"]
