"""The curve in weight space: its shape, its points, its storage, its ends, and ``CurveModel``.

* :mod:`.coefficients`: coefficient functions ``t -> weights over the bends`` (Bezier, polychain).
* :mod:`.points`: checked values of ``t``, evenly spaced paths, the default t sampler.
* :mod:`.bends`: flat per-dtype bend storage and its fused combination at ``t``.
* :mod:`.endpoints`: where the two ends come from and whether they fit the model.
* :mod:`.model`: :class:`CurveModel`, any ``nn.Module`` as a curve.
"""

from __future__ import annotations

from .bends import BendGroup
from .coefficients import bezier, get_curve, polychain
from .model import CurveModel, MaskSpec
from .points import check_t, path_points

__all__ = [
    "BendGroup",
    "CurveModel",
    "MaskSpec",
    "bezier",
    "check_t",
    "get_curve",
    "path_points",
    "polychain",
]
