"""Choosing ``t``: the optimum and effective region of measured accuracies, and the adaptive search.

* :mod:`.optimal`: :func:`find_optimal_t`, :func:`effective_region` and :func:`avg_gap` on
  accuracies measured along a path.
* :mod:`.search`: :func:`search_path`, which measures a curve at few ``t`` near the optimum.
"""

from __future__ import annotations

from .optimal import (
    DEFAULT_KIND,
    Interpolation,
    OptimalT,
    avg_gap,
    effective_region,
    find_optimal_t,
    interpolant,
    resolve_kind,
)
from .search import PathSearch, merge_reports, search_path

__all__ = [
    "DEFAULT_KIND",
    "Interpolation",
    "OptimalT",
    "PathSearch",
    "avg_gap",
    "effective_region",
    "find_optimal_t",
    "interpolant",
    "merge_reports",
    "resolve_kind",
    "search_path",
]
