"""The keyword options of every function that walks a path, declared and defaulted once.

:func:`~modeconn_unlearn.evaluate_path`, :func:`~modeconn_unlearn.search_path`,
:func:`~modeconn_unlearn.loss_barrier`, :func:`~modeconn_unlearn.connectivity_matrix` and
:func:`~modeconn_unlearn.relearn_path` take them as keywords (``ts=11, bn_loader=dr``);
their meaning and defaults live here, in :class:`PathOptions` and :class:`PathSettings`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypedDict

import numpy as np

from ..errors import ModeConnError, listed
from ..tasks import Task
from .outputs import DataLike, DeviceLike

__all__ = ["PATH_OPTIONS", "PathOptions", "PathSettings", "path_settings"]


class PathOptions(TypedDict, total=False):
    """Keywords shared by the functions that walk a path; each is optional.

    Attributes:
        ts: Number of evenly spaced points in [0, 1] (default 21), or the points themselves
            (increasing).
        bn_loader: Data for re-estimating BatchNorm statistics at each point. Default: the
            function's retain data (the ``"retain"`` split); forget data is never used unless
            passed here. Models without BatchNorm skip the step.
        bn_samples: Re-estimate BatchNorm on a seeded random subset of this many samples of
            that data (the same subset at every point); ``None`` (default) uses all of it.
        task: How batches are read and scored (default: classification; see
            :mod:`modeconn_unlearn.tasks`).
        device: Where to evaluate (default: the curve's or model's device).
        progress: Show a progress bar over the points (default ``True``).
    """

    ts: int | Sequence[float] | np.ndarray
    bn_loader: DataLike | None
    bn_samples: int | None
    task: Task | None
    device: DeviceLike
    progress: bool


@dataclass(frozen=True)
class PathSettings:
    """:class:`PathOptions` with every default filled in; see there for each field.

    Example:
        >>> PathSettings().ts, PathSettings().progress
        (21, True)
    """

    ts: int | Sequence[float] | np.ndarray = 21
    bn_loader: DataLike | None = None
    bn_samples: int | None = None
    task: Task | None = None
    device: DeviceLike = None
    progress: bool = True

    def options(self, **changes: Any) -> dict[str, Any]:
        """These settings as keywords for another path function, with ``changes`` applied.

        Example:
            >>> PathSettings(ts=5).options(progress=False)["progress"]
            False
        """
        return {name: getattr(self, name) for name in PATH_OPTIONS} | changes


#: The names of the shared options, in declaration order.
PATH_OPTIONS: tuple[str, ...] = tuple(field.name for field in fields(PathSettings))


def path_settings(
    options: Mapping[str, Any], *, caller: str, allowed: Collection[str] = PATH_OPTIONS
) -> PathSettings:
    """The settings a caller was given, refusing keywords it does not take.

    Args:
        options: The keywords the caller received (``**options``).
        caller: The public function's name, for the error message.
        allowed: The options that function takes (by default all of them).

    Raises:
        ModeConnError: An unknown keyword, naming the ones the function takes.

    Example:
        >>> path_settings({"ts": 5}, caller="evaluate_path").ts
        5
        >>> path_settings({"t": 5}, caller="evaluate_path")
        Traceback (most recent call last):
        ...
        modeconn_unlearn.errors.ModeConnError: evaluate_path() got unexpected keyword(s) 't'; \
its path options are 'ts', 'bn_loader', 'bn_samples', 'task', 'device', 'progress'.
    """
    unknown = [name for name in options if name not in allowed]
    if unknown:
        raise ModeConnError(
            f"{caller}() got unexpected keyword(s) {listed(unknown)}; its path options are "
            f"{listed([name for name in PATH_OPTIONS if name in allowed])}."
        )
    return PathSettings(**options)
