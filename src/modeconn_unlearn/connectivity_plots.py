"""Figures for connectivity analysis; they now live in :mod:`modeconn_unlearn.plotting`.

This module keeps ``from modeconn_unlearn.connectivity_plots import plot_barriers,
plot_matrix`` working.
"""

from __future__ import annotations

from .plotting.connectivity import plot_barriers, plot_matrix

__all__ = ["plot_barriers", "plot_matrix"]
