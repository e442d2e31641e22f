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

Plots live in :mod:`modeconn_unlearn.connectivity_plots`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data import default_collate as _default_collate
from tqdm import tqdm

from .batchnorm import has_batchnorm, module_device, update_bn
from .checkpoint import load_checkpoint
from .curve_model import CurveModel, path_points
from .data import as_loader
from .errors import IncompatibleModelsError, ModeConnError
from .evaluation import Metrics, evaluate
from .losses import finetune
from .training import fit_curve

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

logger = logging.getLogger(__name__)

Data: TypeAlias = "DataLoader[Any] | Dataset[Any]"
ModelLike: TypeAlias = "nn.Module | Mapping[str, Tensor]"
Metric: TypeAlias = Literal["loss", "error"]
DeviceLike: TypeAlias = "torch.device | str | None"

_METRICS = ("loss", "error")
# Split name used by connectivity_matrix when ``data`` is a single loader.
_SINGLE_SPLIT = "data"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, repr=False)
class BarrierResult:
    """The metric along a path between two models on one split, and its barrier.

    Attributes:
        t: The evaluated path positions, sorted, always including 0 and 1.
        values: The metric at each ``t`` (mean cross-entropy for ``"loss"``, ``100 -
            accuracy`` in percent for ``"error"``).
        metric: ``"loss"`` or ``"error"``.
        split: The split name when :func:`loss_barrier` got a dict of splits, else ``None``.
        start: ``v(0)``, the metric at the first model.
        end: ``v(1)``, the metric at the second model.
        excess: ``v(t) - ((1 - t) v(0) + t v(1))``, the excess over the straight line
            between the endpoint values (0 at both ends).
        height: The barrier height ``max_t excess(t)``; never negative since the ends
            count, and 0 when the path never rises above the straight line.
        t_peak: The ``t`` where the excess is largest (the first one on ties).

    Example:
        >>> import numpy as np
        >>> r = BarrierResult(t=np.array([0.0, 0.5, 1.0]), values=np.array([1.0, 3.0, 2.0]),
        ...                   metric="loss")
        >>> r.height, r.t_peak, r.start, r.end
        (1.5, 0.5, 1.0, 2.0)
    """

    t: np.ndarray
    values: np.ndarray
    metric: str
    split: str | None = None
    start: float = field(init=False)
    end: float = field(init=False)
    excess: np.ndarray = field(init=False)
    height: float = field(init=False)
    t_peak: float = field(init=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=np.float64)
        values = np.asarray(self.values, dtype=np.float64)
        if t.ndim != 1 or t.shape != values.shape or len(t) < 2:
            raise ModeConnError(
                f"t and values must be 1-D arrays of one equal length >= 2, got shapes "
                f"{t.shape} and {values.shape}."
            )
        if t[0] != 0.0 or t[-1] != 1.0:
            raise ModeConnError(f"t must start at 0 and end at 1, got {t[0]} ... {t[-1]}.")
        start, end = float(values[0]), float(values[-1])
        excess = values - ((1.0 - t) * start + t * end)
        peak = int(np.argmax(excess))  # NaN wins argmax, so a broken path is not hidden
        for array in (t, values, excess):
            array.flags.writeable = False
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "excess", excess)
        object.__setattr__(self, "height", float(excess[peak]))
        object.__setattr__(self, "t_peak", float(t[peak]))

    def __repr__(self) -> str:
        split = "" if self.split is None else f"split={self.split!r}, "
        return (
            f"BarrierResult({split}metric={self.metric!r}, height={self.height:.4g} at "
            f"t={self.t_peak:.3g}, start={self.start:.4g}, end={self.end:.4g}, "
            f"{len(self.t)} points)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists and floats).

        Example:
            >>> import numpy as np
            >>> BarrierResult(t=np.array([0.0, 1.0]), values=np.array([2.0, 2.0]),
            ...               metric="loss").to_dict()["height"]
            0.0
        """
        return {
            "split": self.split,
            "metric": self.metric,
            "height": self.height,
            "t_peak": self.t_peak,
            "start": self.start,
            "end": self.end,
            "t": self.t.tolist(),
            "values": self.values.tolist(),
            "excess": self.excess.tolist(),
        }


@dataclass(frozen=True, repr=False)
class ConnectivityMatrix:
    """Barrier heights between every pair of a set of models, one matrix per split.

    Attributes:
        names: The model names, in the order of the matrix rows and columns.
        heights: ``{split: (n, n) array}`` of barrier heights; symmetric with a zero
            diagonal (the barrier of a model with itself).
        metric: ``"loss"`` or ``"error"``.
        path: ``"linear"`` or ``"curve"``.
        barriers: ``{(name_i, name_j): {split: BarrierResult}}`` for every pair with
            ``i < j`` in :attr:`names` order: the full per-t values behind each entry.

    Example:
        >>> import numpy as np
        >>> m = ConnectivityMatrix(names=("a", "b"), heights={"retain": np.array(
        ...     [[0.0, 0.5], [0.5, 0.0]])}, metric="loss", path="linear")
        >>> m.height("a", "b", "retain")
        0.5
    """

    names: tuple[str, ...]
    heights: dict[str, np.ndarray]
    metric: str
    path: str
    barriers: dict[tuple[str, str], dict[str, BarrierResult]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ConnectivityMatrix(path={self.path!r}, metric={self.metric!r}, "
            f"names={list(self.names)}, splits={list(self.splits)})"
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names, in the order given."""
        return tuple(self.heights)

    def __getitem__(self, split: str) -> np.ndarray:
        """The ``(n, n)`` matrix of one split."""
        if split not in self.heights:
            raise ModeConnError(f"unknown split {split!r}; available: {list(self.heights)}.")
        return self.heights[split]

    def height(self, name_a: str, name_b: str, split: str | None = None) -> float:
        """The barrier height between two named models on a split.

        Args:
            name_a: A model name.
            name_b: Another model name.
            split: The split; may be left out when there is only one.

        Returns:
            The barrier height.
        """
        split = self._split(split)
        for name in (name_a, name_b):
            if name not in self.names:
                raise ModeConnError(f"unknown model {name!r}; available: {list(self.names)}.")
        i, j = self.names.index(name_a), self.names.index(name_b)
        return float(self.heights[split][i, j])

    def _split(self, split: str | None) -> str:
        if split is None:
            if len(self.heights) != 1:
                raise ModeConnError(f"several splits {list(self.heights)}: pass split=...")
            return next(iter(self.heights))
        if split not in self.heights:
            raise ModeConnError(f"unknown split {split!r}; available: {list(self.heights)}.")
        return split

    def to_markdown(self, split: str | None = None, *, digits: int = 3) -> str:
        """Markdown tables, one per split (or only ``split``), with a heading line each.

        Args:
            split: Only this split; ``None`` for all.
            digits: Decimal places.

        Returns:
            The markdown text.

        Example:
            >>> import numpy as np
            >>> m = ConnectivityMatrix(names=("a", "b"), heights={"retain": np.array(
            ...     [[0.0, 0.5], [0.5, 0.0]])}, metric="loss", path="linear")
            >>> print(m.to_markdown(digits=1))
            **retain**: loss barrier, linear path
            <BLANKLINE>
            | | a | b |
            |---|---|---|
            | a | 0.0 | 0.5 |
            | b | 0.5 | 0.0 |
        """
        splits = self.splits if split is None else (self._split(split),)
        blocks = []
        for name in splits:
            matrix = self.heights[name]
            lines = [
                f"**{name}**: {self.metric} barrier, {self.path} path",
                "",
                "| | " + " | ".join(self.names) + " |",
                "|---" * (len(self.names) + 1) + "|",
            ]
            for row_name, row in zip(self.names, matrix, strict=True):
                cells = " | ".join(f"{value:.{digits}f}" for value in row)
                lines.append(f"| {row_name} | {cells} |")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: names, metric, path, matrices and per-pair barriers."""
        return {
            "names": list(self.names),
            "metric": self.metric,
            "path": self.path,
            "heights": {split: matrix.tolist() for split, matrix in self.heights.items()},
            "barriers": [
                {"a": a, "b": b, "splits": {s: r.to_dict() for s, r in per_split.items()}}
                for (a, b), per_split in self.barriers.items()
            ],
        }


@dataclass(frozen=True, repr=False)
class RelearnResult:
    """Accuracy on forget data while a copy of a model is fine-tuned on a few forget samples.

    Attributes:
        steps: ``0, 1, ..., steps``; step 0 is the model before fine-tuning.
        accuracy: Accuracy (%) on the evaluation data after each step.
        loss: Mean cross-entropy on the evaluation data after each step.
        train_loss: Cross-entropy on the fine-tuning samples *before* each step
            (``nan`` at the final entry, which no step follows).
        samples: Indices (into the forget dataset) of the fine-tuning samples.

    Example:
        >>> import numpy as np
        >>> r = RelearnResult(steps=np.arange(3), accuracy=np.array([5.0, 40.0, 80.0]),
        ...                   loss=np.zeros(3), train_loss=np.zeros(3), samples=np.arange(4))
        >>> r.steps_to(50.0)
        2
    """

    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    train_loss: np.ndarray
    samples: np.ndarray

    def __repr__(self) -> str:
        return (
            f"RelearnResult(accuracy {self.accuracy[0]:.2f}% -> {self.accuracy[-1]:.2f}% "
            f"after {int(self.steps[-1])} steps on {len(self.samples)} samples)"
        )

    def steps_to(self, accuracy: float) -> int | None:
        """The first step at which accuracy reaches ``accuracy`` (%), ``None`` if never."""
        hits = np.flatnonzero(self.accuracy >= accuracy)
        return int(self.steps[hits[0]]) if len(hits) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "steps": self.steps.tolist(),
            "accuracy": self.accuracy.tolist(),
            "loss": self.loss.tolist(),
            "train_loss": [None if math.isnan(v) else v for v in self.train_loss.tolist()],
            "samples": self.samples.tolist(),
        }


@dataclass(frozen=True, repr=False)
class RelearnPathResult:
    """:class:`RelearnResult` at every evaluated ``t`` along a path (same samples at each t).

    Attributes:
        t: The path positions.
        steps: ``0, 1, ..., steps``.
        accuracy: ``(len(t), steps + 1)`` accuracy (%) on the evaluation data.
        loss: ``(len(t), steps + 1)`` mean cross-entropy on the evaluation data.
        samples: Indices (into the forget dataset) of the fine-tuning samples.

    Example:
        >>> import numpy as np
        >>> r = RelearnPathResult(t=np.array([0.0, 1.0]), steps=np.arange(3),
        ...     accuracy=np.array([[90.0, 95.0, 97.0], [5.0, 30.0, 60.0]]),
        ...     loss=np.zeros((2, 3)), samples=np.arange(4))
        >>> r.steps_to(50.0).tolist()
        [0.0, 2.0]
    """

    t: np.ndarray
    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    samples: np.ndarray

    def __repr__(self) -> str:
        return (
            f"RelearnPathResult({len(self.t)} t values, {int(self.steps[-1])} steps on "
            f"{len(self.samples)} samples)"
        )

    def steps_to(self, accuracy: float) -> np.ndarray:
        """Per t, the first step with accuracy >= ``accuracy`` (%); ``nan`` where never."""
        reached = self.accuracy >= accuracy
        first: np.ndarray = np.argmax(reached, axis=1).astype(np.float64)
        first[~reached.any(axis=1)] = np.nan
        return first

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "t": self.t.tolist(),
            "steps": self.steps.tolist(),
            "accuracy": self.accuracy.tolist(),
            "loss": self.loss.tolist(),
            "samples": self.samples.tolist(),
        }


# --------------------------------------------------------------------------- helpers


def _as_splits(data: Any, name: str = "data") -> dict[str, DataLoader[Any]]:
    """``{split: loader}``; a single loader or dataset becomes ``{_SINGLE_SPLIT: loader}``."""
    if isinstance(data, Mapping):
        if not data:
            raise ModeConnError(
                f"{name} is an empty dict: pass a loader or a dict such as "
                "{'retain': ..., 'forget': ..., 'test': ...}."
            )
        return {str(k): as_loader(v, name=f"{name}[{k!r}]") for k, v in data.items()}
    return {_SINGLE_SPLIT: as_loader(data, name=name)}


def _with_ends(points: np.ndarray) -> np.ndarray:
    """``points`` with t = 0 and t = 1 added (barriers compare against both ends)."""
    return np.unique(np.concatenate([[0.0], points, [1.0]]))


def _resolve_bn_loader(
    template: nn.Module,
    splits: Mapping[str, DataLoader[Any]] | None,
    bn_loader: Any,
) -> DataLoader[Any] | None:
    """The loader BatchNorm statistics are re-estimated on at each t, or None without BN.

    The evaluated splits are never used silently, except a split named exactly
    ``"retain"``: the retain data is what the models are meant to keep, so its statistics
    are the right ones (the same default as :func:`modeconn_unlearn.evaluation.evaluate_path`).
    """
    if bn_loader is not None:
        return as_loader(bn_loader, name="bn_loader")
    if not has_batchnorm(template):
        return None
    if splits is not None and "retain" in splits:
        logger.info("re-estimating BatchNorm statistics at each t on the 'retain' split")
        return splits["retain"]
    raise ModeConnError(
        "the models have BatchNorm layers, whose running statistics must be re-estimated "
        "at every t (interpolated statistics are meaningless): pass bn_loader=<retain "
        "loader>, or pass data as a dict with a 'retain' split, which is then used."
    )


def _metric_value(metrics: Metrics, metric: str) -> float:
    return float(metrics.loss) if metric == "loss" else 100.0 - float(metrics.accuracy)


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ModeConnError(f"metric must be one of {_METRICS}, got {metric!r}.")


def _state_of(model: ModelLike) -> dict[str, Tensor]:
    if isinstance(model, nn.Module):
        return dict(model.state_dict())
    return load_checkpoint(model)


def _check_compatible(models: Mapping[str, ModelLike]) -> None:
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
                parts.append(f"keys missing from {name!r}: {missing[:8]}")
            if extra:
                parts.append(f"keys only in {name!r}: {extra[:8]}")
            if shapes:
                parts.append(f"shape mismatches: {shapes[:8]}")
            raise IncompatibleModelsError(
                f"models {ref_name!r} and {name!r} have different architectures ("
                + "; ".join(parts)
                + "): barriers need models of one architecture."
            )


def _materialize(template: nn.Module, model: ModelLike) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    module = copy.deepcopy(template)
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
                f"{label} lacks parameters of the curve: {missing[:8]}; pass the curve's "
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
                f"{label} is not the curve's end at t={t:g} (differs in {far[:8]}); pass the "
                "models the curve was built between, or model_a=None, model_b=None."
            )


def _linear_curve(template: nn.Module, start: ModelLike, end: ModelLike) -> CurveModel:
    return CurveModel(template, start=start, end=end, curve="bezier", num_bends=2)


def _values_of(
    model: nn.Module,
    splits: Mapping[str, DataLoader[Any]],
    *,
    metric: str,
    device: DeviceLike,
) -> dict[str, float]:
    model.eval()
    if device is not None:
        model.to(device)
    return {
        split: _metric_value(evaluate(model, loader, device=device), metric)
        for split, loader in splits.items()
    }


def _end_values(
    model: nn.Module,
    splits: Mapping[str, DataLoader[Any]],
    *,
    metric: str,
    bn_loader: DataLoader[Any] | None,
    device: DeviceLike,
) -> dict[str, float]:
    """The metric of a model evaluated exactly as a path end (BatchNorm re-estimated)."""
    model = copy.deepcopy(model)
    if bn_loader is not None:
        update_bn(model, bn_loader)
    return _values_of(model, splits, metric=metric, device=device)


def _barriers_on_curve(
    curve: CurveModel,
    splits: Mapping[str, DataLoader[Any]],
    ts: np.ndarray,
    *,
    metric: str,
    bn_loader: DataLoader[Any] | None,
    device: DeviceLike,
    progress: bool,
    named: bool,
    ends: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> dict[str, BarrierResult]:
    """Evaluate the curve at each t; ``ends`` gives known values at t = 0 and 1 (not redone)."""
    values = {split: np.empty(len(ts)) for split in splits}
    todo = range(len(ts)) if ends is None else range(1, len(ts) - 1)
    if ends is not None:
        for split in splits:
            values[split][0], values[split][-1] = ends[0][split], ends[1][split]
    was_training = curve.training
    curve.eval()
    try:
        for i in tqdm(todo, desc="barrier", disable=not progress, leave=False):
            model = curve.export(float(ts[i]), bn_loader=bn_loader)
            for split, value in _values_of(model, splits, metric=metric, device=device).items():
                values[split][i] = value
    finally:
        curve.train(was_training)
    results = {
        split: BarrierResult(t=ts, values=v, metric=metric, split=split if named else None)
        for split, v in values.items()
    }
    for split, result in results.items():
        if not np.all(np.isfinite(result.values)):
            logger.warning("non-finite %s on split %r along the path", metric, split)
    return results


# --------------------------------------------------------------------------- barriers


@overload
def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: Mapping[str, Data],
    *,
    path: Literal["linear"] | CurveModel = ...,
    ts: int | Sequence[float] | np.ndarray = ...,
    bn_loader: Data | None = ...,
    metric: Metric = ...,
    device: DeviceLike = ...,
    progress: bool = ...,
) -> dict[str, BarrierResult]: ...


@overload
def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: Data,
    *,
    path: Literal["linear"] | CurveModel = ...,
    ts: int | Sequence[float] | np.ndarray = ...,
    bn_loader: Data | None = ...,
    metric: Metric = ...,
    device: DeviceLike = ...,
    progress: bool = ...,
) -> BarrierResult: ...


def loss_barrier(
    model_a: ModelLike | None,
    model_b: ModelLike | None,
    data: Data | Mapping[str, Data],
    *,
    path: Literal["linear"] | CurveModel = "linear",
    ts: int | Sequence[float] | np.ndarray = 21,
    bn_loader: Data | None = None,
    metric: Metric = "loss",
    device: DeviceLike = None,
    progress: bool = False,
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
        model_b: The model at ``t = 1``: an ``nn.Module`` or a state dict of the same
            architecture (``None`` with a curve, as for ``model_a``).
        data: A DataLoader or Dataset, or a dict of them (e.g. ``{"retain": ...,
            "forget": ..., "test": ...}``) for a barrier per split.
        path: ``"linear"`` or a :class:`CurveModel` between the two models.
        ts: Number of evenly spaced t in [0, 1], or the t values themselves (0 and 1 are
            added when missing: the barrier needs both ends).
        bn_loader: Data to re-estimate BatchNorm statistics on at each t. Required when the
            models have BatchNorm, unless ``data`` is a dict with a ``"retain"`` split,
            which is then used (never the forget data).
        metric: ``"loss"`` (mean cross-entropy) or ``"error"`` (100 - accuracy, in %).
        device: Where to evaluate; ``None`` keeps the models' device.
        progress: Show a progress bar over t.

    Returns:
        A :class:`BarrierResult` for a single loader, or ``{split: BarrierResult}`` for a
        dict of splits.

    Raises:
        ModeConnError: Models of different architectures, empty data, bad ``ts`` or
            ``metric``, BatchNorm without ``bn_loader``, or a curve whose ends are not
            the given models.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        >>> result = loss_barrier(a, b, data, ts=5)
        >>> result.t.tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> result.height >= 0.0
        True
    """
    _check_metric(metric)
    splits = _as_splits(data)
    named = isinstance(data, Mapping)
    t_values = _with_ends(path_points(ts))
    if isinstance(path, CurveModel):
        curve = path
        _check_curve_ends(curve, model_a, model_b)
        template = curve.template
    elif isinstance(path, str) and path == "linear":
        if not isinstance(model_a, nn.Module):
            raise TypeError(
                "model_a must be an nn.Module for path='linear' (it is the architecture "
                f"template), got {type(model_a).__name__}."
            )
        if model_b is None:
            raise ModeConnError("model_b is None: pass the second model.")
        curve = _linear_curve(model_a, model_a, model_b)
        if device is not None:
            curve.to(device)
        template = model_a
    else:
        raise ModeConnError(
            f"path must be 'linear' or a CurveModel (e.g. from connect()), got {path!r}."
        )
    bn = _resolve_bn_loader(template, splits if named else None, bn_loader)
    results = _barriers_on_curve(
        curve,
        splits,
        t_values,
        metric=metric,
        bn_loader=bn,
        device=device,
        progress=progress,
        named=named,
    )
    return results if named else results[_SINGLE_SPLIT]


def connect(
    model_a: nn.Module,
    model_b: ModelLike,
    retain_data: Data,
    forget_data: Data | None = None,
    *,
    loss: Callable[..., Tensor] | None = None,
    curve: Literal["bezier", "polychain"] = "bezier",
    num_bends: int = 3,
    epochs: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
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
        model_b: The model at ``t = 1`` (a module or state dict of the same architecture).
        retain_data: Retain data (DataLoader or Dataset).
        forget_data: Forget data, for objectives that use it.
        loss: The objective ``loss(model, batch)``; default ``losses.finetune()``.
        curve: ``"bezier"`` or ``"polychain"``.
        num_bends: Number of bends including both ends (at least 3).
        epochs: Training epochs.
        lr: Learning rate.
        seed: Seed for t sampling and data order.
        progress: Show progress bars.
        **fit_kwargs: Further arguments for ``fit_curve`` (``retain_ratio``, ``t_sampler``,
            ``checkpoint_dir``, ...).

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
    path = CurveModel(
        model_a,
        start=model_a,
        end=model_b,
        curve=curve,
        num_bends=num_bends,
        fix_start=True,
        fix_end=True,
    )
    fit_curve(
        path,
        retain_data,
        forget_data,
        loss=finetune() if loss is None else loss,
        epochs=epochs,
        lr=lr,
        seed=seed,
        progress=progress,
        **fit_kwargs,
    )
    return path


def connectivity_matrix(
    models: Mapping[str, ModelLike],
    data: Data | Mapping[str, Data],
    *,
    path: Literal["linear", "curve"] = "linear",
    template: nn.Module | None = None,
    ts: int | Sequence[float] | np.ndarray = 21,
    bn_loader: Data | None = None,
    metric: Metric = "loss",
    retain_data: Data | None = None,
    forget_data: Data | None = None,
    device: DeviceLike = None,
    progress: bool = True,
    **connect_kwargs: Any,
) -> ConnectivityMatrix:
    """Barrier heights between every pair of models, per split.

    Each unordered pair is measured once (``i < j`` in the order of ``models``) and the
    matrix is filled symmetrically, with a zero diagonal: a path from ``b`` to ``a`` is
    the path from ``a`` to ``b`` run backwards, with the same barrier.

    Args:
        models: ``{name: nn.Module or state dict}`` (at least 2), all of one architecture.
        data: A loader or a dict of splits, as for :func:`loss_barrier`. A single loader
            appears as the split ``"data"``.
        path: ``"linear"`` (straight lines) or ``"curve"`` (a curve trained by
            :func:`connect` for every pair; slow: ``n (n - 1) / 2`` trainings).
        template: Architecture for state-dict entries; default: the first
            ``nn.Module`` among ``models``.
        ts: As for :func:`loss_barrier`.
        bn_loader: As for :func:`loss_barrier`.
        metric: ``"loss"`` or ``"error"``.
        retain_data: Training data for ``path="curve"``; default: ``data["retain"]``.
        forget_data: Forget data passed to :func:`connect` for ``path="curve"``.
        device: Where to evaluate.
        progress: Show a progress bar over pairs.
        **connect_kwargs: Arguments for :func:`connect` with ``path="curve"`` (``epochs``
            and ``lr`` are required there; also ``loss``, ``num_bends``, ``seed``, ...).

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
    _check_metric(metric)
    if not isinstance(models, Mapping) or len(models) < 2:
        raise ModeConnError("models must be a dict {name: model or state dict} of >= 2 entries.")
    if path not in ("linear", "curve"):
        raise ModeConnError(f"path must be 'linear' or 'curve', got {path!r}.")
    if path == "linear" and (connect_kwargs or retain_data is not None or forget_data is not None):
        extra = sorted(connect_kwargs) + [
            n
            for n, v in (("retain_data", retain_data), ("forget_data", forget_data))
            if v is not None
        ]
        raise ModeConnError(f"{extra} only apply to path='curve'; remove them or set path='curve'.")
    if template is None:
        template = next((m for m in models.values() if isinstance(m, nn.Module)), None)
        if template is None:
            raise ModeConnError(
                "all models are state dicts: pass template=<an nn.Module of the architecture>."
            )
    names = tuple(str(name) for name in models)
    _check_compatible({"template": template, **{str(k): v for k, v in models.items()}})
    splits = _as_splits(data)
    named = isinstance(data, Mapping)
    t_values = _with_ends(path_points(ts))
    bn = _resolve_bn_loader(template, splits if named else None, bn_loader)
    train_data: Data | None = retain_data
    if path == "curve":
        if train_data is None:
            if "retain" not in splits:
                raise ModeConnError(
                    "path='curve' trains a curve per pair: pass retain_data=..., or a data "
                    "dict with a 'retain' split."
                )
            train_data = splits["retain"]
        missing = [k for k in ("epochs", "lr") if k not in connect_kwargs]
        if missing:
            raise ModeConnError(f"path='curve' needs {missing} for connect(), e.g. epochs=5.")
        connect_kwargs.setdefault("progress", False)
    modules = {n: _materialize(template, m) for n, m in zip(names, models.values(), strict=True)}

    # Every path through a model starts or ends at that model, so its own values are
    # computed once (the same export + BatchNorm re-estimation as at t = 0 or 1).
    ends = {
        name: _end_values(module, splits, metric=metric, bn_loader=bn, device=device)
        for name, module in modules.items()
    }
    heights = {split: np.zeros((len(names), len(names))) for split in splits}
    barriers: dict[tuple[str, str], dict[str, BarrierResult]] = {}
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for i, j in tqdm(pairs, desc=f"{path} barriers", disable=not progress):
        a, b = modules[names[i]], modules[names[j]]
        if train_data is not None:  # path == "curve"
            curve = connect(a, b, train_data, forget_data, **connect_kwargs)
        else:
            curve = _linear_curve(template, a, b)
        if device is not None:
            curve.to(device)
        per_split = _barriers_on_curve(
            curve,
            splits,
            t_values,
            metric=metric,
            bn_loader=bn,
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


# --------------------------------------------------------------------------- relearning


def _forget_samples(
    forget_data: Data, samples: int, seed: int, need_rest: bool
) -> tuple[Any, np.ndarray, np.ndarray, Callable[[list[Any]], Any]]:
    loader = as_loader(forget_data, name="forget_data")
    dataset = loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    limit = n - 1 if need_rest else n
    if not 1 <= samples <= limit:
        hint = " (and leave at least one to evaluate on, or pass eval_data)" if need_rest else ""
        raise ModeConnError(
            f"samples must be between 1 and {limit} for a forget set of {n}{hint}, got {samples}."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).numpy()
    chosen, rest = np.sort(order[:samples]), np.sort(order[samples:])
    collate = loader.collate_fn if isinstance(forget_data, DataLoader) else _default_collate
    return dataset, chosen, rest, collate


def _relearn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eval_loader: DataLoader[Any],
    *,
    steps: int,
    lr: float,
    momentum: float,
    device: DeviceLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    attacked = copy.deepcopy(model)
    if device is not None:
        attacked.to(device)
    # Eval mode throughout: the fine-tuning batch holds forget samples only (for class-wise
    # forgetting, one class), whose batch statistics would let BatchNorm in training mode
    # normalise away the very signal to relearn; frozen statistics keep the model's own.
    attacked.eval()
    target = module_device(attacked)
    x, y = x.to(target), y.to(target)
    optimizer = torch.optim.SGD(attacked.parameters(), lr=lr, momentum=momentum)
    accuracy, loss, train_loss = (
        np.empty(steps + 1),
        np.empty(steps + 1),
        np.full(steps + 1, np.nan),
    )
    for step in range(steps + 1):
        metrics = evaluate(attacked, eval_loader, device=device)
        accuracy[step], loss[step] = float(metrics.accuracy), float(metrics.loss)
        if step == steps:
            break
        attacked.eval()
        optimizer.zero_grad(set_to_none=True)
        batch_loss = F.cross_entropy(attacked(x), y)
        if not torch.isfinite(batch_loss):
            raise ModeConnError(
                f"relearning loss became {batch_loss.item()} at step {step}: lower lr={lr}."
            )
        batch_loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        train_loss[step] = float(batch_loss.detach())
    return accuracy, loss, train_loss


def _prepare_relearn(
    forget_data: Data,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int,
    eval_data: Data | None,
) -> tuple[Tensor, Tensor, DataLoader[Any], np.ndarray]:
    if steps < 0:
        raise ModeConnError(f"steps must be >= 0, got {steps}.")
    if not lr > 0:
        raise ModeConnError(f"lr must be positive, got {lr}.")
    dataset, chosen, rest, collate = _forget_samples(
        forget_data, samples, seed, need_rest=eval_data is None
    )
    batch = collate([dataset[int(i)] for i in chosen])
    x, y = batch[0], batch[1]
    if eval_data is None:
        eval_loader = as_loader(Subset(dataset, rest.tolist()))
    else:
        eval_loader = as_loader(eval_data, name="eval_data")
    return x, y, eval_loader, chosen


def relearn_attack(
    model: nn.Module,
    forget_data: Data,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int = 0,
    eval_data: Data | None = None,
    momentum: float = 0.0,
    device: DeviceLike = None,
) -> RelearnResult:
    """Fine-tune a copy of ``model`` on a few forget samples; track forget accuracy per step.

    A relearning attack: if unlearning only hid the forgotten knowledge, a handful of
    gradient steps on a few forget samples brings the accuracy on the *other* forget
    samples back fast; a model that never learned them (like the retrained one) relearns
    at the speed of learning new data. ``samples`` forget samples are drawn with ``seed``;
    each step is one full-batch SGD step on them with cross-entropy. The copy stays in
    eval mode throughout (BatchNorm statistics and dropout frozen): the fine-tuning batch
    holds forget samples only (a single class, for class-wise forgetting), and BatchNorm
    in training mode would subtract that batch's mean, the very signal to relearn; so
    accuracy changes through the weights alone. Without batch normalisation the steps can
    be sharp: if ``train_loss`` grows, lower ``lr``. The input model is never modified.

    Args:
        model: The (unlearned) model.
        forget_data: The forget set (DataLoader or Dataset; its items start ``(x, y)``).
        steps: Number of fine-tuning steps.
        lr: SGD learning rate.
        samples: Number of forget samples to fine-tune on.
        seed: Seed for the choice of samples.
        eval_data: Where to measure accuracy; default: the forget samples that were not
            fine-tuned on (so accuracy measures recovered knowledge, not memorisation).
        momentum: SGD momentum.
        device: Where to fine-tune; ``None`` keeps the model's device.

    Returns:
        A :class:`RelearnResult` with accuracy after 0, 1, ..., ``steps`` steps.

    Raises:
        ModeConnError: Bad ``steps``, ``lr`` or ``samples``, or empty data.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> forget = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> result = relearn_attack(torch.nn.Linear(4, 3), forget, steps=5, lr=0.1, samples=8)
        >>> result.accuracy.shape, len(result.samples)
        ((6,), 8)
    """
    x, y, eval_loader, chosen = _prepare_relearn(
        forget_data, steps=steps, lr=lr, samples=samples, seed=seed, eval_data=eval_data
    )
    accuracy, loss, train_loss = _relearn(
        model, x, y, eval_loader, steps=steps, lr=lr, momentum=momentum, device=device
    )
    return RelearnResult(
        steps=np.arange(steps + 1),
        accuracy=accuracy,
        loss=loss,
        train_loss=train_loss,
        samples=chosen,
    )


def relearn_path(
    curve: CurveModel,
    ts: int | Sequence[float] | np.ndarray,
    forget_data: Data,
    *,
    steps: int,
    lr: float,
    samples: int,
    seed: int = 0,
    eval_data: Data | None = None,
    bn_loader: Data | None = None,
    momentum: float = 0.0,
    device: DeviceLike = None,
    progress: bool = True,
) -> RelearnPathResult:
    """:func:`relearn_attack` on the model at each ``t`` of a curve, with the same samples.

    At each t the weights are exported as a plain model (BatchNorm statistics
    re-estimated on ``bn_loader``, required when the model has BatchNorm) and attacked as
    in :func:`relearn_attack`. The curve is not modified.

    Args:
        curve: A :class:`CurveModel`.
        ts: Number of evenly spaced t in [0, 1], or the t values.
        forget_data: The forget set.
        steps: Number of fine-tuning steps.
        lr: SGD learning rate.
        samples: Number of forget samples to fine-tune on.
        seed: Seed for the choice of samples.
        eval_data: Where to measure accuracy; default: the other forget samples.
        bn_loader: Data for BatchNorm statistics at each t (use retain data).
        momentum: SGD momentum.
        device: Where to fine-tune.
        progress: Show a progress bar over t.

    Returns:
        A :class:`RelearnPathResult`.

    Raises:
        ModeConnError: As :func:`relearn_attack`, or BatchNorm without ``bn_loader``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> forget = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> curve = CurveModel(torch.nn.Linear(4, 3), end=torch.nn.Linear(4, 3))
        >>> result = relearn_path(curve, 3, forget, steps=2, lr=0.1, samples=8,
        ...                       progress=False)
        >>> result.accuracy.shape
        (3, 3)
    """
    if not isinstance(curve, CurveModel):
        raise TypeError(f"curve must be a CurveModel, got {type(curve).__name__}.")
    t_values = path_points(ts)
    bn = _resolve_bn_loader(curve.template, None, bn_loader)
    x, y, eval_loader, chosen = _prepare_relearn(
        forget_data, steps=steps, lr=lr, samples=samples, seed=seed, eval_data=eval_data
    )
    accuracy = np.empty((len(t_values), steps + 1))
    loss = np.empty((len(t_values), steps + 1))
    was_training = curve.training
    curve.eval()
    try:
        for i, t in enumerate(tqdm(t_values, desc="relearn", disable=not progress)):
            model = curve.export(float(t), bn_loader=bn)
            accuracy[i], loss[i], _ = _relearn(
                model, x, y, eval_loader, steps=steps, lr=lr, momentum=momentum, device=device
            )
    finally:
        curve.train(was_training)
    return RelearnPathResult(
        t=t_values, steps=np.arange(steps + 1), accuracy=accuracy, loss=loss, samples=chosen
    )
