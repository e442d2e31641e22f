"""Walking a curve: the one path walker (export -> BatchNorm -> model) and :func:`evaluate_path`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from ..batchnorm import update_bn
from ..curve import CurveModel, path_points
from ..data import as_loader
from ..errors import ModeConnError
from ..modes import evaluating
from ..progress import progress_bar
from ..tasks import Task, resolve_task, task_collate
from ..wrappers import module_device
from .bn import bn_data
from .efficacy import mia_efficacy
from .features import check_features
from .options import PathOptions, path_settings
from .outputs import DataLike, DeviceLike, Metrics, run_pass
from .report import PathReport
from .sharding import gather_outputs, global_metrics, shard_loader

__all__ = ["MIA_SPLITS", "check_curve", "evaluate_path", "segment_lengths", "walk_path"]

logger = logging.getLogger(__name__)

#: The splits MIA-efficacy along a path needs: shadow members, targets, non-members.
MIA_SPLITS = ("retain", "forget", "test")


def check_curve(curve: Any, *, name: str = "curve") -> CurveModel:
    """``curve`` if it is a :class:`~modeconn_unlearn.CurveModel`, else a ModeConnError.

    Example:
        >>> check_curve(nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        modeconn_unlearn.errors.ModeConnError: curve must be a CurveModel, got Linear; ...
    """
    if not isinstance(curve, CurveModel):
        raise ModeConnError(
            f"{name} must be a CurveModel, got {type(curve).__name__}; build one with "
            "CurveModel(model, end=...) (for a single model use evaluate())."
        )
    return curve


def walk_path(
    curve: CurveModel,
    ts: Iterable[float],
    *,
    bn_loader: Iterable[Any] | None,
    device: DeviceLike = None,
    progress: bool = False,
    desc: str = "path",
) -> Iterator[tuple[float, nn.Module]]:
    """Yield ``(t, model at t)`` for each ``t``: exported, moved, BatchNorm re-estimated.

    Each model is a fresh plain copy of the template's class
    (:meth:`CurveModel.export`), on ``device`` (default: the curve's), with
    BatchNorm statistics re-estimated on ``bn_loader`` when given (see
    :func:`~modeconn_unlearn.evaluation.bn.bn_data` for which data), in eval
    mode. The curve is not modified.

    Example:
        >>> curve = CurveModel(nn.Linear(2, 1), end=nn.Linear(2, 1))
        >>> [(t, type(m).__name__) for t, m in walk_path(curve, [0.0, 1.0], bn_loader=None)]
        [(0.0, 'Linear'), (1.0, 'Linear')]
    """
    target = torch.device(device) if device is not None else module_device(curve)
    for t in progress_bar(progress, list(ts), desc=desc, unit="t", leave=False):
        model = curve.export(float(t)).to(target)
        if bn_loader is not None:
            update_bn(model, bn_loader)
        yield float(t), model.eval()


def evaluate_path(
    curve: CurveModel,
    splits: Mapping[str, DataLike],
    *,
    mia: bool = False,
    mia_features: Sequence[str] = ("confidence",),
    seed: int = 0,
    each_point: Callable[[float, nn.Module], object] | None = None,
    **options: Unpack[PathOptions],
) -> PathReport:
    """Accuracy, loss and (optionally) MIA scores per split at points along a curve.

    For every ``t``: the model at ``t`` is exported once
    (:meth:`CurveModel.export`), its BatchNorm statistics are re-estimated on
    ``bn_loader`` (skipped for models without BatchNorm), and one no-grad
    eval-mode pass per split gives accuracy and loss; with ``mia=True`` the
    same pass also feeds an SVC attack per feature (shadow members: a fixed
    random subset of ``"retain"`` as large as ``"test"``; non-members:
    ``"test"``; targets: ``"forget"``), stored as ``"mia_<feature>"`` on the
    forget split, in percent of forget samples called non-members
    (MIA-efficacy).

    Args:
        curve: A :class:`~modeconn_unlearn.CurveModel`.
        splits: ``{name: data}``, e.g. ``{"retain": dr, "forget": df, "test": dt}``.
        mia: Also compute MIA-efficacy (needs splits ``retain``, ``forget``, ``test``).
        mia_features: Features of :func:`~modeconn_unlearn.mia.svc_mia` to use
            (``"loss"`` for tasks without class logits).
        seed: Seed of the BatchNorm subset (``bn_samples``).
        each_point: Called as ``each_point(t, model)`` on the model at every point,
            after the splits are measured (BatchNorm re-estimated, eval mode), for
            measurements of your own without exporting the point again (its
            return value is ignored).
        **options: The path options (:class:`~modeconn_unlearn.evaluation.PathOptions`):
            ``ts``, ``bn_loader`` (default: the ``"retain"`` split), ``bn_samples``, ``task``,
            ``device``, ``progress``.

    Under ``torchrun`` (a ``torch.distributed`` process group) every rank
    evaluates its shard of each split and the sums are all-reduced, so every
    rank returns the same report (see :mod:`~modeconn_unlearn.evaluation.sharding`);
    the BatchNorm statistics are re-estimated on the whole BatchNorm data on
    every rank, so that all ranks score the same model.

    Returns:
        A :class:`~modeconn_unlearn.evaluation.PathReport`.

    Raises:
        ModeConnError: Not a CurveModel, no splits, bad ``ts`` or
            ``bn_samples``, a BatchNorm model without a ``"retain"`` split or
            ``bn_loader``, missing splits for ``mia``, or an unknown keyword.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> data = TensorDataset(torch.randn(30, 4), torch.randint(0, 3, (30,)))
        >>> report = evaluate_path(CurveModel(a, end=b), {"retain": data}, ts=5, progress=False)
        >>> report.acc("retain").shape
        (5,)
    """
    curve = check_curve(curve)
    settings = path_settings(options, caller="evaluate_path")
    if not isinstance(splits, Mapping) or not splits:
        raise ModeConnError(
            'splits must be a non-empty mapping such as {"retain": dr, "forget": df, "test": dt}.'
        )
    chosen = resolve_task(settings.task)
    points = path_points(settings.ts)
    collate = task_collate(chosen)
    loaders = {
        str(name): as_loader(data, name=f"splits[{name!r}]", collate_fn=collate)
        for name, data in splits.items()
    }
    shards = {
        name: shard_loader(loader, name=f"splits[{name!r}]") for name, loader in loaders.items()
    }
    bn = bn_data(
        curve.template,
        bn_loader=settings.bn_loader,
        splits=loaders,
        bn_samples=settings.bn_samples,
        seed=seed,
    )
    features = check_features(mia_features) if mia else ()
    if mia:
        missing = [name for name in MIA_SPLITS if name not in loaders]
        if missing:
            raise ModeConnError(
                f"mia=True needs the splits {list(MIA_SPLITS)} (shadow members, targets, "
                f"non-members); missing {missing}."
            )
    logger.debug(
        "evaluate_path: %d points, splits %s, BatchNorm statistics from %s",
        len(points),
        list(loaders),
        bn.source,
    )

    values: dict[str, dict[str, list[float]]] = {name: {} for name in loaders}
    counts: dict[str, int] = {}
    walk = walk_path(
        curve,
        points,
        bn_loader=bn.loader,
        device=settings.device,
        progress=settings.progress,
        desc="evaluate_path",
    )
    for t, model in walk:
        point = _measure(model, shards, task=chosen, features=features)
        if each_point is not None:
            each_point(t, model)
        for name, (metrics, extra) in point.items():
            for metric, value in {"acc": metrics.accuracy, "loss": metrics.loss, **extra}.items():
                values[name].setdefault(metric, []).append(value)
            counts[name] = metrics.count
    return PathReport(
        points,
        values,
        segment_lengths=segment_lengths(curve, points),
        meta={
            "counts": counts,
            "bn_data": bn.source,
            "mia_features": list(features),
            "task": repr(chosen),
        },
    )


def _measure(
    model: nn.Module,
    shards: Mapping[str, Iterable[Any]],
    *,
    task: Task,
    features: tuple[str, ...],
) -> dict[str, tuple[Metrics, dict[str, float]]]:
    """Metrics per split of one model, and ``mia_<feature>`` on the forget split."""
    target = module_device(model)
    with evaluating(model), torch.no_grad():
        passes = {
            name: run_pass(
                model,
                loader,
                task=task,
                device=target,
                signals=bool(features) and name in MIA_SPLITS,
                name=f"splits[{name!r}]",
            )
            for name, loader in shards.items()
        }
    result: dict[str, tuple[Metrics, dict[str, float]]] = {
        name: (global_metrics(outputs), {}) for name, outputs in passes.items()
    }
    if features:  # the shadow subset (subsample) is the same at every t
        shadow, forget, test = (gather_outputs(passes[n]) for n in ("retain", "forget", "test"))
        for feature in features:
            result["forget"][1][f"mia_{feature}"] = mia_efficacy(
                shadow, test, forget, feature=feature, subsample=True
            )
    return result


def segment_lengths(curve: CurveModel, points: Iterable[float]) -> list[float]:
    """``||w(t_i) - w(t_{i-1})||`` over the curve's parameters, for consecutive points.

    Example:
        >>> curve = CurveModel(nn.Linear(2, 1), end=nn.Linear(2, 1))
        >>> len(segment_lengths(curve, [0.0, 0.5, 1.0]))
        2
    """
    lengths: list[float] = []
    previous: dict[str, Tensor] | None = None
    for t in points:
        with torch.no_grad():
            weights = {name: w.detach() for name, w in curve.weights_at(float(t)).items()}
        if previous is not None:
            squared = sum(
                float(torch.sum((weights[name].double() - previous[name].double()) ** 2))
                for name in weights
            )
            lengths.append(math.sqrt(squared))
        previous = weights
    return lengths
