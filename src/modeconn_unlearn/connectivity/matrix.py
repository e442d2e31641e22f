"""Barrier matrices: the barrier between every pair of a set of models, per split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from torch import nn

from ..curve import path_points
from ..errors import ModeConnError
from ..evaluation.options import path_settings
from ..evaluation.outputs import DataLike
from ..progress import progress_bar
from .barriers import (
    BARRIER_OPTIONS,
    Metric,
    ModelLike,
    as_splits,
    barriers_on_curve,
    bn_for,
    check_compatible,
    check_metric,
    connect,
    end_values,
    linear_curve,
    materialize,
    with_ends,
)
from .results import BarrierResult, ConnectivityMatrix

__all__ = ["connectivity_matrix"]


def connectivity_matrix(
    models: Mapping[str, ModelLike],
    data: DataLike | Mapping[str, DataLike],
    *,
    path: Literal["linear", "curve"] = "linear",
    template: nn.Module | None = None,
    metric: Metric = "loss",
    retain_data: DataLike | None = None,
    forget_data: DataLike | None = None,
    **options: Any,
) -> ConnectivityMatrix:
    """Barrier heights between every pair of models, per split.

    Each unordered pair is measured once (``i < j`` in the order of ``models``) and the
    matrix is filled symmetrically, with a zero diagonal: a path from ``b`` to ``a`` is
    the path from ``a`` to ``b`` run backwards, with the same barrier.

    Args:
        models: ``{name: nn.Module, state dict or checkpoint file}`` (at least 2), all of
            one architecture.
        data: A loader or a dict of splits, as for :func:`loss_barrier`. A single loader
            appears as the split ``"data"``.
        path: ``"linear"`` (straight lines) or ``"curve"`` (a curve trained by
            :func:`connect` for every pair; slow: ``n (n - 1) / 2`` trainings).
        template: Architecture for state-dict entries; default: the first
            ``nn.Module`` among ``models``.
        metric: ``"loss"`` or ``"error"``.
        retain_data: Training data for ``path="curve"``; default: ``data["retain"]``.
        forget_data: Forget data passed to :func:`connect` for ``path="curve"``.
        **options: The path options of :func:`loss_barrier` (``ts``, ``bn_loader``,
            ``task``, ``device``, ``progress``: here a bar over pairs); every other keyword
            goes to :func:`connect` with ``path="curve"`` (``epochs`` and ``lr`` are
            required there; also ``loss``, ``num_bends``, ``seed``, ...).

    Returns:
        A :class:`ConnectivityMatrix`.

    Raises:
        ModeConnError: Fewer than two models, incompatible architectures, a state dict
            without a template, missing ``retain_data`` for curves, or ``connect``
            arguments with ``path="linear"``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> models = {f"seed{i}": torch.nn.Linear(4, 3) for i in range(3)}
        >>> m = connectivity_matrix(models, {"test": data}, ts=3, progress=False)
        >>> m["test"].shape
        (3, 3)
    """
    settings = path_settings(
        {k: v for k, v in options.items() if k in BARRIER_OPTIONS},
        caller="connectivity_matrix",
        allowed=BARRIER_OPTIONS,
    )
    task, device = settings.task, settings.device
    connect_kwargs = {k: v for k, v in options.items() if k not in BARRIER_OPTIONS}
    template = _check_request(
        models, path, template, metric, connect_kwargs, retain_data, forget_data
    )
    names = tuple(str(name) for name in models)
    check_compatible({"template": template, **{str(k): v for k, v in models.items()}})
    splits = as_splits(data, task=task)
    named = isinstance(data, Mapping)
    t_values = with_ends(path_points(settings.ts))
    bn = bn_for(template, splits if named else None, settings.bn_loader)
    train_data = _curve_data(splits, retain_data, connect_kwargs) if path == "curve" else None
    modules = {n: materialize(template, m) for n, m in zip(names, models.values(), strict=True)}

    # Every path through a model starts or ends at that model, so its own values are
    # computed once (the same export + BatchNorm re-estimation as at t = 0 or 1).
    ends = {
        name: end_values(module, splits, metric=metric, bn_loader=bn, task=task, device=device)
        for name, module in modules.items()
    }
    heights = {split: np.zeros((len(names), len(names))) for split in splits}
    barriers: dict[tuple[str, str], dict[str, BarrierResult]] = {}
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for i, j in progress_bar(settings.progress, pairs, desc=f"{path} barriers"):
        a, b = modules[names[i]], modules[names[j]]
        if train_data is not None:  # path == "curve"
            curve = connect(a, b, train_data, forget_data, task=task, **connect_kwargs)
        else:
            curve = linear_curve(template, a, b)
        if device is not None:
            curve.to(device)
        per_split = barriers_on_curve(
            curve,
            splits,
            t_values,
            metric=metric,
            bn_loader=bn,
            task=task,
            device=device,
            progress=False,
            named=True,
            ends=(ends[names[i]], ends[names[j]]),
        )
        barriers[(names[i], names[j])] = per_split
        for split, result in per_split.items():
            heights[split][i, j] = heights[split][j, i] = result.height
    return ConnectivityMatrix(
        names=names, heights=heights, metric=metric, path=path, barriers=barriers
    )


def _check_request(
    models: Mapping[str, ModelLike],
    path: str,
    template: nn.Module | None,
    metric: str,
    connect_kwargs: Mapping[str, Any],
    retain_data: DataLike | None,
    forget_data: DataLike | None,
) -> nn.Module:
    """Validate the arguments of :func:`connectivity_matrix`; return the template."""
    check_metric(metric)
    if not isinstance(models, Mapping) or len(models) < 2:
        raise ModeConnError("models must be a dict {name: model or state dict} of >= 2 entries.")
    if path not in ("linear", "curve"):
        raise ModeConnError(f"path must be 'linear' or 'curve', got {path!r}.")
    data = {"retain_data": retain_data, "forget_data": forget_data}
    extra = sorted(connect_kwargs) + [name for name, value in data.items() if value is not None]
    if path == "linear" and extra:
        raise ModeConnError(f"{extra} only apply to path='curve'; remove them or set path='curve'.")
    if template is None:
        template = next((m for m in models.values() if isinstance(m, nn.Module)), None)
        if template is None:
            raise ModeConnError(
                "all models are state dicts: pass template=<an nn.Module of the architecture>."
            )
    return template


def _curve_data(
    splits: Mapping[str, Any], retain_data: DataLike | None, connect_kwargs: dict[str, Any]
) -> DataLike:
    """The training data of the curve per pair (``path="curve"``); checks connect()'s needs."""
    if retain_data is None:
        if "retain" not in splits:
            raise ModeConnError(
                "path='curve' trains a curve per pair: pass retain_data=..., or a data "
                "dict with a 'retain' split."
            )
        retain_data = splits["retain"]
    missing = [k for k in ("epochs", "lr") if k not in connect_kwargs]
    if missing:
        raise ModeConnError(f"path='curve' needs {missing} for connect(), e.g. epochs=5.")
    connect_kwargs.setdefault("progress", False)
    return retain_data
