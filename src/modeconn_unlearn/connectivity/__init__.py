"""Connectivity analysis of unlearned models: loss barriers, barrier matrices, relearning.

Two unlearned models (two methods, or one method with two seeds) are *connected* on a
split when some path between them keeps the metric (loss or error) no worse than the
straight line between its endpoint values. The *barrier* of a path is the largest
excess over that straight line,

    barrier = max_t [ v(t) - ((1 - t) v(0) + t v(1)) ],

which is 0 for a connected path and grows with the bump in between. On the retain data
a low barrier means the two models sit in one basin; on the forget data a *high*
barrier along the whole path is what unlearning wants to keep.

- :func:`loss_barrier` measures the barrier along the straight line or a trained curve.
- :func:`connect` trains a low-loss curve between two models with both ends fixed.
- :func:`connectivity_matrix` does both for every pair of a set of models.
- :func:`relearn_attack` and :func:`relearn_path` measure how fast forgotten knowledge
  comes back when a model (or each model along a path) is fine-tuned on a few forget
  samples.

Every function takes ``task=`` (default: classification). Plots live in
:mod:`modeconn_unlearn.plotting`.
"""

from __future__ import annotations

from .barriers import connect, loss_barrier
from .matrix import connectivity_matrix
from .relearn import relearn_attack, relearn_path
from .results import BarrierResult, ConnectivityMatrix, RelearnPathResult, RelearnResult

__all__ = [
    "BarrierResult",
    "ConnectivityMatrix",
    "RelearnPathResult",
    "RelearnResult",
    "connect",
    "connectivity_matrix",
    "loss_barrier",
    "relearn_attack",
    "relearn_path",
]
