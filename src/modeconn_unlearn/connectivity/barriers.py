"""Loss barriers between models, and trained connecting curves.

The barrier of a path is the largest excess of the metric over the straight
line between its endpoint values, ``max_t [v(t) - ((1 - t) v(0) + t v(1))]``.
Every point, the ends included, is evaluated the same way: exported by the
path walker (:func:`~modeconn_unlearn.evaluation.walk_path`), BatchNorm
re-estimated by the one policy (:func:`~modeconn_unlearn.evaluation.bn.bn_data`),
scored through the task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import Unpack

from ..batchnorm import with_bn_from
from ..checkpoint import StateSource, load_checkpoint
from ..cloning import clone_module
from ..curve import CurveModel, path_points
from ..data import as_loader
from ..errors import IncompatibleModelsError, ModeConnError, listed
from ..evaluation.bn import bn_data
from ..evaluation.options import PATH_OPTIONS, PathOptions, path_settings
from ..evaluation.outputs import DataLike, DeviceLike, Metrics
from ..evaluation.paths import walk_path
from ..evaluation.scores import evaluate
from ..losses import finetune
from ..tasks import Task, task_collate
from ..training import fit_curve
from .results import BarrierResult

#: The path options the barrier functions take (BatchNorm is re-estimated on all its data).
BARRIER_OPTIONS = tuple(name for name in PATH_OPTIONS if name != "bn_samples")

__all__ = [
    "BARRIER_OPTIONS",
    "SINGLE_SPLIT",
    "Data",
    "Metric",
    "ModelLike",
    "as_splits",
    "barriers_by_metric",
    "barriers_on_curve",
    "bn_for",
    "check_compatible",
    "check_metric",
    "connect",
    "end_values",
    "linear_curve",
    "loss_barrier",
    "materialize",
    "with_ends",
]

logger = logging.getLogger(__name__)

#: Deprecated spelling of :data:`~modeconn_unlearn.evaluation.DataLike`; removed in 0.3.0.
Data: TypeAlias = DataLike
#: A model, its state dict, or a checkpoint file (the checkpoint module's ``StateSource``).
ModelLike: TypeAlias = StateSource
Metric: TypeAlias = Literal["loss", "error"]

_METRICS = ("loss", "error")
#: The split name used when ``data`` is a single loader.
SINGLE_SPLIT = "data"


def as_splits(
    data: Any, name: str = "data", *, task: Task | None = None
) -> dict[str, DataLoader[Any]]:
    """``{split: loader}``; a single loader or dataset becomes ``{SINGLE_SPLIT: loader}``.

    Datasets are batched with the task's ``collate`` when it has one (token sequences are padded).
    """
    collate = task_collate(task)
    if isinstance(data, Mapping):
        if not data:
            raise ModeConnError(
                f"{name} is an empty dict: pass a loader or a dict such as "
                "{'retain': ..., 'forget': ..., 'test': ...}."
            )
        return {
            str(k): as_loader(v, name=f"{name}[{k!r}]", collate_fn=collate) for k, v in data.items()
        }
    return {SINGLE_SPLIT: as_loader(data, name=name, collate_fn=collate)}


def bn_for(
    template: nn.Module, splits: Mapping[str, DataLoader[Any]] | None, bn_loader: Any
) -> DataLoader[Any] | None:
    """The BatchNorm data, by the policy shared with evaluate_path.

    Only a split named exactly ``"retain"`` is ever used without being passed as ``bn_loader``.
    """
    chosen = bn_data(template, bn_loader=bn_loader, splits=splits)
    if chosen.loader is not None and bn_loader is None:
        logger.info("re-estimating BatchNorm statistics at each t on the 'retain' split")
    return chosen.loader


def with_ends(points: np.ndarray) -> np.ndarray:
    """``points`` with t = 0 and t = 1 added (barriers compare against both ends)."""
    return np.unique(np.concatenate([[0.0], points, [1.0]]))


def _metric_value(metrics: Metrics, metric: str) -> float:
    return float(metrics.loss) if metric == "loss" else 100.0 - float(metrics.accuracy)


def check_metric(metric: str) -> None:
    """Raise unless ``metric`` is ``"loss"`` or ``"error"``."""
    if metric not in _METRICS:
        raise ModeConnError(f"metric must be one of {_METRICS}, got {metric!r}.")


def _state_of(model: ModelLike) -> dict[str, Tensor]:
    if isinstance(model, nn.Module):
        return dict(model.state_dict())
    return load_checkpoint(model)


def check_compatible(models: Mapping[str, ModelLike]) -> None:
    """Raise IncompatibleModelsError unless all models share state-dict keys and shapes."""
    items = list(models.items())
    ref_name, ref = items[0][0], _state_of(items[0][1])
    for name, model in items[1:]:
        state = _state_of(model)
        missing = sorted(set(ref) - set(state))
        extra = sorted(set(state) - set(ref))
        shapes = sorted(
            f"{k}: {tuple(ref[k].shape)} vs {tuple(state[k].shape)}"
            for k in set(ref) & set(state)
            if ref[k].shape != state[k].shape
        )
        if missing or extra or shapes:
            parts = []
            if missing:
                parts.append(f"keys missing from {name!r}: {listed(missing)}")
            if extra:
                parts.append(f"keys only in {name!r}: {listed(extra)}")
            if shapes:
                parts.append(f"shape mismatches: {listed(shapes)}")
            raise IncompatibleModelsError(
                f"models {ref_name!r} and {name!r} have different architectures ("
                + "; ".join(parts)
                + "): barriers need models of one architecture."
            )


def materialize(template: nn.Module, model: ModelLike) -> nn.Module:
    """``model`` as a module: itself, or a copy of ``template`` loaded with the state dict."""
    if isinstance(model, nn.Module):
        return model
    module = clone_module(template)
    module.load_state_dict(load_checkpoint(model))
    return module


def _check_curve_ends(
    curve: CurveModel, model_a: ModelLike | None, model_b: ModelLike | None
) -> None:
    """Raise unless ``model_a``/``model_b`` (when given) are the curve's ends."""
    for t, model, label in ((0.0, model_a, "model_a"), (1.0, model_b, "model_b")):
        if model is None:
            continue
        at_t = curve.weights_at(t)
        state = _state_of(model)
        missing = sorted(set(at_t) - set(state))
        if missing:
            raise IncompatibleModelsError(
                f"{label} lacks parameters of the curve: {listed(missing)}; pass the curve's "
                "own end models, or None to use them."
            )
        far = [
            k
            for k, w in at_t.items()
            if w.shape != state[k].shape
            or not torch.allclose(
                w.detach().cpu().float(), state[k].cpu().float(), rtol=1e-4, atol=1e-6
            )
        ]
        if far:
            raise ModeConnError(
                f"{label} is not the curve's end at t={t:g} (differs in {listed(far)}); pass the "
                "models the curve was built between, or model_a=None, model_b=None."
            )


def linear_curve(template: nn.Module, start: ModelLike, end: ModelLike) -> CurveModel:
    """The straight line from ``start`` to ``end`` as a two-bend curve."""
    return CurveModel(template, start=start, end=end, curve="bezier", num_bends=2)


def _measured(
    model: nn.Module,
    splits: Mapping[str, DataLoader[Any]],
    *,
    task: Task | None,
    device: DeviceLike,
) -> dict[str, Metrics]:
    """One evaluation pass per split; every barrier metric is read from its result."""
    return {name: evaluate(model, data, task=task, device=device) for name, data in splits.items()}


def end_values(
    model: nn.Module,
    splits: Mapping[str, DataLoader[Any]],
    *,
    metric: str,
    bn_loader: DataLoader[Any] | None,
    task: Task | None,
    device: DeviceLike,
) -> dict[str, float]:
    """The metric of a model evaluated exactly as a path end (BatchNorm re-estimated)."""
    if bn_loader is not None:
        model = with_bn_from(model, bn_loader)
    measured = _measured(model, splits, task=task, device=device)
    return {split: _metric_value(metrics, metric) for split, metrics in measured.items()}


def barriers_on_curve(
    curve: CurveModel,
    splits: Mapping[str, DataLoader[Any]],
    ts: np.ndarray,
    *,
    metric: str,
    bn_loader: DataLoader[Any] | None,
    task: Task | None,
    device: DeviceLike,
    progress: bool,
    named: bool,
    ends: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> dict[str, BarrierResult]:
    """Evaluate the curve at each t; ``ends`` gives known values at t = 0 and 1 (not redone)."""
    return barriers_by_metric(
        curve,
        splits,
        ts,
        metrics=(metric,),
        bn_loader=bn_loader,
        task=task,
        device=device,
        progress=progress,
        named=named,
        ends=None if ends is None else {metric: ends},
    )[metric]


def barriers_by_metric(
    curve: CurveModel,
    splits: Mapping[str, DataLoader[Any]],
    ts: np.ndarray,
    *,
    metrics: Sequence[str],
    bn_loader: DataLoader[Any] | None,
    task: Task | None,
    device: DeviceLike,
    progress: bool,
    named: bool,
    ends: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]] | None = None,
) -> dict[str, dict[str, BarrierResult]]:
    """``{metric: {split: BarrierResult}}`` from one walk: one pass per point and split.

    ``ends`` gives, per metric, the known values at t = 0 and 1, which are then not evaluated.
    """
    for metric in metrics:
        check_metric(metric)
    values = {m: {split: np.empty(len(ts)) for split in splits} for m in metrics}
    todo = list(range(len(ts))) if ends is None else list(range(1, len(ts) - 1))
    if ends is not None:
        for m in metrics:
            for split in splits:
                values[m][split][0], values[m][split][-1] = ends[m][0][split], ends[m][1][split]
    walk = walk_path(
        curve, ts[todo], bn_loader=bn_loader, device=device, progress=progress, desc="barrier"
    )
    for i, (_, model) in zip(todo, walk, strict=True):
        for split, measured in _measured(model, splits, task=task, device=None).items():
            for m in metrics:
                values[m][split][i] = _metric_value(measured, m)
    results = {
        m: {
            split: BarrierResult(t=ts, values=v, metric=m, split=split if named else None)
            for split, v in per_split.items()
        }
        for m, per_split in values.items()
    }
    for m, per_split in results.items():
        for split, result in per_split.items():
            if not np.all(np.isfinite(result.values)):
                logger.warning("non-finite %s on split %r along the path", m, split)
    return results


# --------------------------------------------------------------------------- barriers


@overload
def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: Mapping[str, DataLike],
    *,
    path: Literal["linear"] | CurveModel = ...,
    metric: Metric = ...,
    **options: Unpack[PathOptions],
) -> dict[str, BarrierResult]: ...


@overload
def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: DataLike,
    *,
    path: Literal["linear"] | CurveModel = ...,
    metric: Metric = ...,
    **options: Unpack[PathOptions],
) -> BarrierResult: ...


def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: DataLike | Mapping[str, DataLike],
    *,
    path: Literal["linear"] | CurveModel = "linear",
    metric: Metric = "loss",
    **options: Unpack[PathOptions],
) -> BarrierResult | dict[str, BarrierResult]:
    """Barrier height of the path between two models on one split or on several.

    The metric ``v`` is evaluated at each ``t``; the barrier is
    ``max_t [v(t) - ((1 - t) v(0) + t v(1))]``. For ``path="linear"`` the path is the
    straight line ``(1 - t) θ_a + t θ_b``; pass a trained :class:`CurveModel` (e.g. from
    :func:`connect`) to measure along it instead. Every point, the ends included, is
    evaluated the same way: the weights at ``t`` are exported as a plain model and, when
    the models have BatchNorm, its statistics are re-estimated on ``bn_loader`` (so
    ``v(0)`` can differ slightly from the first model's own evaluation).

    Args:
        model_a: The model at ``t = 0`` (an ``nn.Module``; for the linear path it is the
            architecture template). With a curve, ``None`` uses the curve's own end;
            a model that is not the curve's end raises.
        model_b: The model at ``t = 1``: an ``nn.Module``, a state dict or a checkpoint
            file of the same architecture (``None`` with a curve, as for ``model_a``).
        data: A DataLoader or Dataset, or a dict of them (e.g. ``{"retain": ...,
            "forget": ..., "test": ...}``) for a barrier per split.
        path: ``"linear"`` or a :class:`CurveModel` between the two models.
        metric: ``"loss"`` (mean per-sample loss: cross-entropy for a classifier) or
            ``"error"`` (100 - accuracy, in %).
        **options: The path options (:class:`~modeconn_unlearn.evaluation.PathOptions`) but
            ``bn_samples``: ``ts`` (0 and 1 are added when missing: the barrier needs both
            ends), ``bn_loader`` (required when the models have BatchNorm, unless ``data`` is
            a dict with a ``"retain"`` split, which is then used; never the forget data),
            ``task``, ``device``, ``progress``.

    Returns:
        A :class:`BarrierResult` for a single loader, or ``{split: BarrierResult}`` for a
        dict of splits.

    Raises:
        ModeConnError: Models of different architectures, empty data, bad ``ts`` or
            ``metric``, BatchNorm without ``bn_loader``, a curve whose ends are not
            the given models, or an unknown keyword.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> result = loss_barrier(a, b, data, ts=5)
        >>> result.t.tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> result.height >= 0.0
        True
    """
    settings = path_settings(options, caller="loss_barrier", allowed=BARRIER_OPTIONS)
    check_metric(metric)
    splits = as_splits(data, task=settings.task)
    named = isinstance(data, Mapping)
    t_values = with_ends(path_points(settings.ts))
    if isinstance(path, CurveModel):
        curve = path
        _check_curve_ends(curve, model_a, model_b)
    elif isinstance(path, str) and path == "linear":
        if not isinstance(model_a, nn.Module):
            raise TypeError(
                "model_a must be an nn.Module for path='linear' (it is the architecture "
                f"template), got {type(model_a).__name__}."
            )
        if model_b is None:
            raise ModeConnError("model_b is None: pass the second model.")
        curve = linear_curve(model_a, model_a, model_b)
        if settings.device is not None:
            curve.to(settings.device)
    else:
        raise ModeConnError(
            f"path must be 'linear' or a CurveModel (e.g. from connect()), got {path!r}."
        )
    bn = bn_for(curve.template, splits if named else None, settings.bn_loader)
    results = barriers_on_curve(
        curve,
        splits,
        t_values,
        metric=metric,
        bn_loader=bn,
        task=settings.task,
        device=settings.device,
        progress=settings.progress,
        named=named,
    )
    return results if named else results[SINGLE_SPLIT]


def connect(
    model_a: nn.Module,
    model_b: ModelLike,
    retain_data: DataLike,
    forget_data: DataLike | None = None,
    *,
    loss: Callable[..., Tensor] | None = None,
    curve: Literal["bezier", "polychain"] = "bezier",
    num_bends: int = 3,
    epochs: int,
    lr: float,
    task: Task | None = None,
    **fit_kwargs: Any,
) -> CurveModel:
    """Train a curve between two models with both ends fixed, ready for :func:`loss_barrier`.

    The middle bends start on the straight line and are trained by
    :func:`modeconn_unlearn.training.fit_curve` with t drawn at random per batch. With
    the default objective (cross-entropy on the retain data) a low barrier on the retain
    data afterwards means the two models are connected by a low-loss path; pass an
    unlearning objective (e.g. ``losses.mcu_objective(...)``) together with
    ``forget_data`` to search for a path that also stays high-loss on the forget data.

    Args:
        model_a: The model at ``t = 0`` (the architecture template; never mutated).
        model_b: The model at ``t = 1`` (a module, state dict or checkpoint file of the
            same architecture).
        retain_data: Retain data (DataLoader or Dataset).
        forget_data: Forget data, for objectives that use it.
        loss: The objective ``loss(model, batch)``; default ``losses.finetune()``.
        curve: ``"bezier"`` or ``"polychain"``.
        num_bends: Number of bends including both ends (at least 3).
        epochs: Training epochs.
        lr: Learning rate.
        task: How batches are read and scored (default: classification); also the
            task of the default objective.
        **fit_kwargs: Further arguments for ``fit_curve``: ``config=TrainConfig(...)``
            or its fields (``seed`` of t sampling and data order, ``progress``,
            ``retain_ratio``, ``t_sampler``, ``checkpoint_dir``, ...).

    Returns:
        The trained :class:`CurveModel`.

    Raises:
        ModeConnError: ``num_bends < 3`` or incompatible models.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> curve = connect(a, b, data, epochs=1, lr=0.01, progress=False)
        >>> loss_barrier(None, None, data, path=curve, ts=3).height >= 0.0
        True
    """
    if num_bends < 3:
        raise ModeConnError(
            f"num_bends={num_bends} has no trainable bend: use num_bends >= 3 (2 is the "
            "straight line, which loss_barrier(path='linear') measures without training)."
        )
    path = CurveModel(model_a, start=model_a, end=model_b, curve=curve, num_bends=num_bends)
    fit_curve(
        path,
        retain_data,
        forget_data,
        loss=finetune(task=task) if loss is None else loss,
        epochs=epochs,
        lr=lr,
        task=task,
        **fit_kwargs,
    )
    return path
