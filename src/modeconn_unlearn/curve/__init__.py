"""The curve in weight space: its shape, its points, its storage, its ends, and ``CurveModel``.

* :mod:`.coefficients`: coefficient functions ``t -> weights over the bends`` (Bezier, polychain).
* :mod:`.points`: checked values of ``t``, evenly spaced paths, the default t sampler.
* :mod:`.bends`: flat per-dtype bend storage and its fused combination at ``t``.
* :mod:`.endpoints`: where the two ends come from and whether they fit the model.
* :mod:`.model`: :class:`CurveModel`, any ``nn.Module`` as a curve.
"""

from __future__ import annotations

from .bends import BendGroup, BufferPair, Combine, blend
from .coefficients import CoefficientFn, bezier, get_curve, linear_positions, polychain
from .endpoints import check_endpoint, endpoint_source
from .model import CurveModel, MaskSpec
from .points import TSampler, check_t, path_points, uniform_sampler

__all__ = [
    "BendGroup",
    "BufferPair",
    "CoefficientFn",
    "Combine",
    "CurveModel",
    "MaskSpec",
    "TSampler",
    "bezier",
    "blend",
    "check_endpoint",
    "check_t",
    "endpoint_source",
    "get_curve",
    "linear_positions",
    "path_points",
    "polychain",
    "uniform_sampler",
]
