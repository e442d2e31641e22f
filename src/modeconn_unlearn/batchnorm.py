"""Re-estimation of BatchNorm running statistics, for plain models and curves."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import DataLoader, Dataset

from .cloning import clone_module
from .data import DEFAULT_EVAL_BATCH_SIZE
from .errors import ModeConnError
from .modes import keeping_modes
from .tasks import Task, call_model, resolve_task
from .wrappers import module_device

__all__ = ["has_batchnorm", "update_bn", "with_bn_from"]


@runtime_checkable
class _SupportsUpdateBN(Protocol):
    def update_bn(self, loader: Iterable[Any], *, t: float) -> None: ...


class _InputsOnly:
    """Batches of ``loader`` reduced to their inputs by ``task`` (for a curve's own update_bn)."""

    def __init__(self, loader: Iterable[Any], task: Task) -> None:
        self.loader = loader
        self.task = task

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield (self.task.split(batch).inputs,)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a normalisation layer that tracks running statistics."""
    return any(isinstance(m, _NormBase) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def update_bn(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    t: float | None = None,
    task: Task | None = None,
) -> None:
    """Recompute BatchNorm running statistics as an exact average over ``loader``.

    Every BatchNorm-like layer is reset and switched to a cumulative moving
    average (``momentum=None``), the inputs of ``loader`` are passed through the
    model in training mode, and the layers' momenta and the model's mode are
    restored. Models without such layers are left untouched (no pass is made).

    For a :class:`~modeconn_unlearn.CurveModel`, ``t`` is required: the
    statistics are estimated for the weights at ``t`` and pinned to that ``t``,
    so ``curve(x, t=t)`` in eval mode uses them.

    Args:
        model: A plain module or a ``CurveModel``.
        loader: A ``DataLoader`` or any iterable of batches (only their inputs
            are used); a map-style ``Dataset`` is batched first.
        t: The point on the curve (curves only).
        task: Reads each batch (``task.split``); dict inputs are passed as
            keyword arguments. Default: classification batches ``(x, y)``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> update_bn(net, [torch.randn(8, 3) + 5.0])
        >>> bool(net[1].num_batches_tracked == 1)
        True
    """
    reader = resolve_task(task)
    if isinstance(loader, Dataset):
        # A map-style dataset yields single samples; batch them like everywhere else.
        loader = DataLoader(loader, batch_size=DEFAULT_EVAL_BATCH_SIZE, shuffle=False)
    if isinstance(model, _SupportsUpdateBN):
        if t is None:
            raise ModeConnError("update_bn on a CurveModel needs the point: pass t=... in [0, 1].")
        if task is None:
            model.update_bn(loader, t=t)
        else:
            model.update_bn(_InputsOnly(loader, reader), t=t)
        return
    layers = [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    if not layers:
        return
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    device = module_device(model)
    # Statistics are collected in train mode; each submodule's own mode comes back after.
    with keeping_modes(model):
        model.train()
        try:
            for batch in loader:
                call_model(model, reader.split(batch, device=device).inputs)
        finally:
            for layer, momentum in momenta.items():
                layer.momentum = momentum


def with_bn_from(model: nn.Module, loader: Iterable[Any], *, task: Task | None = None) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics re-estimated on ``loader`` (:func:`update_bn`).

    This is how every point of a path is scored, so a model scored this way compares with the
    path's points exactly (MCU at ``t = 1`` is then θ_u itself). ``model`` is never changed; a
    model without BatchNorm is copied all the same, so the result never aliases it.

    Example:
        >>> net = nn.BatchNorm1d(2)
        >>> copy = with_bn_from(net, [torch.full((4, 2), 5.0)])
        >>> copy.running_mean.tolist(), net.running_mean.tolist()
        ([5.0, 5.0], [0.0, 0.0])
    """
    copy = clone_module(model)
    update_bn(copy, loader, task=task)
    return copy
