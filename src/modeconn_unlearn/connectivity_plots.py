"""Figures for connectivity analysis; they now live in :mod:`modeconn_unlearn.plotting`.

Deprecated, removed in 0.3.0: import ``plot_barriers`` and ``plot_matrix`` from
:mod:`modeconn_unlearn.plotting`. Until then this module keeps ``from
modeconn_unlearn.connectivity_plots import plot_barriers, plot_matrix`` working.
"""

from __future__ import annotations

from .plotting.connectivity import plot_barriers, plot_matrix

__all__ = ["plot_barriers", "plot_matrix"]
