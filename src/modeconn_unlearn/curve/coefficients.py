"""Curve coefficient functions: a point ``t`` on the path to weights over the bends.

A curve with bends ``θ_0 … θ_{n-1}`` is ``θ(t) = Σ_j c_j(t) θ_j``. A coefficient
function maps ``(t, num_bends)`` to the list ``[c_0(t), …, c_{n-1}(t)]``; the
coefficients always sum to one, so a curve through identical bends is constant.

The built-in functions also take ``t`` as a 0-d tensor and then return
tensors, so a compiled curve computes its coefficients inside the graph and
one compilation serves every ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..errors import ModeConnError

__all__ = ["CoefficientFn", "bezier", "get_curve", "linear_positions", "polychain"]

CoefficientFn = Callable[[Any, int], Sequence[Any]]
"""``(t, num_bends) -> coefficients``; ``t`` is a float, or a 0-d tensor under ``torch.compile``."""

T = TypeVar("T", float, Tensor)


def bezier(t: T, num_bends: int) -> list[T]:
    """Bernstein coefficients of a Bezier curve of degree ``num_bends - 1``.

    ``c_j(t) = C(n-1, j) t^j (1-t)^(n-1-j)``. Two bends give the straight line,
    three the quadratic Bezier ``(1-t)² θ_0 + 2t(1-t) θ_1 + t² θ_2``.

    Args:
        t: Position on the curve, in [0, 1] (a float or a 0-d tensor).
        num_bends: Number of bends (control points), at least 2.

    Returns:
        The ``num_bends`` coefficients at ``t`` (floats, or 0-d tensors for a tensor ``t``).

    Example:
        >>> bezier(0.5, 3)
        [0.25, 0.5, 0.25]
        >>> [round(float(c), 4) for c in bezier(torch.tensor(0.5), 3)]
        [0.25, 0.5, 0.25]
    """
    degree = num_bends - 1
    return [math.comb(degree, j) * t**j * (1.0 - t) ** (degree - j) for j in range(num_bends)]


def polychain(t: T, num_bends: int) -> list[T]:
    """Coefficients of a polygonal chain through bends placed at ``t = j / (n-1)``.

    Between two neighbouring knots the curve is the straight segment joining
    their bends, so at a knot it passes exactly through that bend. For a
    tensor ``t`` each coefficient is the hat function ``max(0, 1 - |t (n-1) - j|)``,
    which is the same piecewise-linear map written without branching.

    Args:
        t: Position on the curve, in [0, 1] (a float or a 0-d tensor).
        num_bends: Number of bends, at least 2.

    Returns:
        The ``num_bends`` coefficients at ``t`` (at most two are non-zero).

    Example:
        >>> polychain(0.25, 3)
        [0.5, 0.5, 0.0]
        >>> [float(c) for c in polychain(torch.tensor(0.25), 3)]
        [0.5, 0.5, 0.0]
    """
    segments = num_bends - 1
    position = t * segments
    if isinstance(position, Tensor):
        return [torch.clamp(1.0 - torch.abs(position - j), min=0.0) for j in range(num_bends)]
    left = min(int(position), segments - 1)
    weight = position - left
    coefficients = [0.0] * num_bends
    coefficients[left] = 1.0 - weight
    coefficients[left + 1] = weight
    return coefficients


def linear_positions(num_bends: int) -> list[float]:
    """Where each bend lies on the straight line between the ends when initialised linearly.

    Bend ``j`` starts at ``(1 - s_j) θ_start + s_j θ_end`` with ``s_j = j / (n-1)``.
    With these positions a Bezier curve or a PolyChain traces the straight line.

    Example:
        >>> linear_positions(3)
        [0.0, 0.5, 1.0]
    """
    return [j / (num_bends - 1) for j in range(num_bends)]


_CURVES: dict[str, CoefficientFn] = {"bezier": bezier, "polychain": polychain}


def get_curve(curve: str | CoefficientFn) -> CoefficientFn:
    """Resolve a curve name (``"bezier"``, ``"polychain"``) or pass a coefficient function through.

    Raises:
        ModeConnError: For an unknown name.
    """
    if callable(curve):
        return curve
    key = str(curve).lower()
    if key not in _CURVES:
        raise ModeConnError(
            f"Unknown curve {curve!r}. Use one of {sorted(_CURVES)} or pass a function "
            "(t, num_bends) -> list of coefficients."
        )
    return _CURVES[key]
