"""Points on a curve: checked values of ``t``, evenly spaced paths, and the default t sampler."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ModeConnError

__all__ = ["TSampler", "check_t", "path_points", "uniform_sampler"]

TSampler = Callable[[], "float | Tensor"]


def check_t(t: float | Tensor) -> float:
    """Return ``t`` as a float after checking it is a finite number in [0, 1].

    Raises:
        ModeConnError: ``t`` is not a scalar, not finite, or outside [0, 1].

    Example:
        >>> check_t(torch.tensor(0.25))
        0.25
    """
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise ModeConnError(f"t must be a scalar, got a tensor of shape {tuple(t.shape)}.")
        t = t.item()
    value = float(t)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ModeConnError(f"t must lie in [0, 1], got {value}. t=0 is the start, t=1 the end.")
    return value


def path_points(ts: int | Sequence[float] | np.ndarray) -> np.ndarray:
    """The points of a path: ``ts`` evenly spaced in [0, 1], or the given t values checked.

    Raises:
        ModeConnError: Fewer than 2 points, an empty or non-1-D sequence, a t
            outside [0, 1], or values that are not strictly increasing.

    Example:
        >>> path_points(3).tolist()
        [0.0, 0.5, 1.0]
    """
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        if ts < 2:
            raise ModeConnError(f"ts must be at least 2 evenly spaced points, got {ts}.")
        return np.linspace(0.0, 1.0, int(ts))
    values = np.asarray(ts, dtype=np.float64)
    if values.ndim != 1:
        raise ModeConnError(
            f"ts must be a number or a 1-D sequence of t, got shape {values.shape}."
        )
    if len(values) == 0:
        raise ModeConnError("ts is empty; give a number of points or a sequence of t in [0, 1].")
    points = np.array([check_t(float(t)) for t in values])
    if np.any(np.diff(points) <= 0):
        raise ModeConnError(f"ts must be strictly increasing, got {points.tolist()}.")
    return points


def uniform_sampler(low: float, high: float) -> TSampler:
    """A sampler of U(low, high) as a 0-d float64 tensor (no graph break under compile).

    Example:
        >>> float(uniform_sampler(0.5, 0.5)())
        0.5
    """
    low, high = check_t(low), check_t(high)
    if low > high:
        raise ModeConnError(
            f"t_sampler range ({low}, {high}) is empty; use (low, high), low <= high."
        )

    def sample() -> Tensor:
        # A 0-d tensor, so a compiled curve draws t inside its graph; the arithmetic is
        # in float64, which gives the same t as Python floats would.
        return low + (high - low) * torch.rand(()).double()

    return sample
