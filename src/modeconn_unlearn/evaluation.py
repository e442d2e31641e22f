"""Evaluation of models and of whole paths: accuracy, loss, unlearning scores, PathReport.

One forward pass per split and model (or per split and ``t`` along a curve)
produces everything: accuracy, mean cross-entropy and, when asked, the
per-sample probabilities that the membership-inference attacks of
:mod:`modeconn_unlearn.mia` need. Every pass runs under :func:`torch.no_grad`
in eval mode and leaves the model's train/eval mode as it was.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .batchnorm import has_batchnorm, module_device, update_bn
from .curve_model import path_points
from .data import as_loader, move_to_device
from .errors import ModeConnError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .curve_model import CurveModel

__all__ = [
    "Metrics",
    "PathReport",
    "UnlearningScores",
    "evaluate",
    "evaluate_path",
    "unlearning_scores",
]

logger = logging.getLogger(__name__)

DataLike = DataLoader[Any] | Dataset[Any]

_BATCH_SIZE = 256
_SCORE_NAMES = ("ua", "ra", "ta", "mia")
_REPORT_FORMAT = "modeconn_unlearn.PathReport"
_REPORT_VERSION = 1


# --------------------------------------------------------------------------- forward passes
def _inputs_targets(batch: Any, name: str) -> tuple[Any, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ModeConnError(
            f"{name} must yield (inputs, targets) pairs or UnlearnBatch items to be evaluated; "
            f"got a batch of type {type(batch).__name__} without labels."
        )
    inputs, targets = batch[0], batch[1]
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.is_floating_point() or targets.is_complex():
        raise ModeConnError(
            f"{name} targets must be a 1-D tensor of class indices, got dtype {targets.dtype} "
            f"and shape {tuple(targets.shape)}."
        )
    return inputs, targets


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the block; every submodule's previous mode is restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        # Pre-order: a parent's train() resets its children, which are restored right after.
        for module, mode in modes:
            module.train(mode)


@dataclass
class _Pass:
    """What one pass over a split produced."""

    correct: int
    loss_sum: float
    count: int
    logits: Tensor | None = None
    labels: Tensor | None = None

    def metrics(self) -> Metrics:
        return Metrics(
            accuracy=100.0 * self.correct / self.count,
            loss=self.loss_sum / self.count,
            count=self.count,
        )


def _forward_pass(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    *,
    keep_outputs: bool = False,
    name: str = "data",
) -> _Pass:
    """One pass over ``loader``; call inside :func:`_evaluating`.

    Sums stay on the device until the end, so there is no synchronisation per
    batch. With ``keep_outputs`` the logits (float32, CPU) and labels are kept.
    """
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    logits_parts: list[Tensor] = []
    label_parts: list[Tensor] = []
    for batch in loader:
        inputs, targets = _inputs_targets(batch, name)
        targets = targets.to(device, non_blocking=True)
        logits = model(move_to_device(inputs, device))
        if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != len(targets):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ModeConnError(
                f"The model must return logits of shape (batch, classes) = ({len(targets)}, C); "
                f"got {shape}. Wrap the model so that forward returns the logits tensor."
            )
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(dim=1) == targets).sum()
        count += len(targets)
        if keep_outputs:
            logits_parts.append(logits.cpu())
            label_parts.append(targets.cpu())
    if count == 0:
        raise ModeConnError(f"{name} is empty; evaluation needs at least one sample.")
    result = _Pass(correct=int(correct.item()), loss_sum=float(loss_sum.item()), count=count)
    if keep_outputs:
        result.logits = torch.cat(logits_parts)
        result.labels = torch.cat(label_parts)
    return result


def _collect_outputs(
    model: nn.Module, data: DataLike, *, device: torch.device | str | None = None, name: str
) -> _Pass:
    """A pass over ``data`` that keeps logits and labels (used by the attacks in ``mia``)."""
    target = _resolve_device(model, device)
    with _evaluating(model):
        return _forward_pass(
            model, as_loader(data, name=name), target, keep_outputs=True, name=name
        )


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is None:
        return module_device(model)
    resolved = torch.device(device)
    model.to(resolved)
    return resolved


# --------------------------------------------------------------------------- single models
@dataclass(frozen=True)
class Metrics:
    """Accuracy and loss of a model on one dataset.

    Attributes:
        accuracy: Top-1 accuracy in percent (0-100).
        loss: Mean cross-entropy over all samples.
        count: Number of samples evaluated.
    """

    accuracy: float
    loss: float
    count: int


def evaluate(
    model: nn.Module, data: DataLike, *, device: torch.device | str | None = None
) -> Metrics:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on ``data``.

    Runs under :func:`torch.no_grad` in eval mode; every submodule gets its
    previous train/eval mode back afterwards.

    Args:
        model: A module returning logits of shape ``(batch, classes)``.
        data: A DataLoader or map-style Dataset yielding ``(inputs, targets)``
            (or ``UnlearnBatch``); a Dataset is read in batches of 256.
        device: Where to evaluate; the model is moved there. Defaults to the
            device of the model's parameters.

    Returns:
        A :class:`Metrics` with ``accuracy``, ``loss`` and ``count``.

    Raises:
        ModeConnError: Empty data, batches without labels, or a model that
            does not return logits.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> data = TensorDataset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> evaluate(model, data).accuracy
        50.0
    """
    target = _resolve_device(model, device)
    with _evaluating(model):
        return _forward_pass(model, as_loader(data), target).metrics()


@dataclass(frozen=True)
class UnlearningScores:
    """The standard unlearning scores of one model, all in percent.

    Attributes:
        ua: Unlearning accuracy, ``100 - forget accuracy``.
        ra: Retain accuracy.
        ta: Test accuracy.
        mia: MIA-efficacy: the share of forget samples an SVC attack
            (trained on retain members vs test non-members) calls non-members.
        gaps: ``|score - reference score|`` per metric, given a reference.
        avg_gap: The mean of ``gaps`` (the "Avg. Gap"), given a reference.
    """

    ua: float
    ra: float
    ta: float
    mia: float
    gaps: dict[str, float] | None = None
    avg_gap: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The scores as a plain dict (JSON-friendly)."""
        result: dict[str, Any] = {name: getattr(self, name) for name in _SCORE_NAMES}
        if self.gaps is not None:
            result["gaps"] = dict(self.gaps)
            result["avg_gap"] = self.avg_gap
        return result


def unlearning_scores(
    model: nn.Module,
    *,
    retain: DataLike,
    forget: DataLike,
    test: DataLike,
    reference: nn.Module | UnlearningScores | Mapping[str, float] | None = None,
    mia_shadow: DataLike | None = None,
    mia_feature: str = "confidence",
    bn_loader: DataLike | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> UnlearningScores:
    """UA, RA, TA and MIA-efficacy of ``model``, and the gaps to a reference.

    The MIA-efficacy follows the usual protocol (SVC on one feature, C=3, RBF):
    the attack is trained on shadow members (by default a random subset of
    ``retain`` as large as ``test``) against ``test`` as non-members, then
    applied to ``forget``; the score is the percentage of forget samples
    predicted as non-members. One forward pass per split.

    Args:
        model: The (unlearned) model.
        retain: Retain data.
        forget: Forget data.
        test: Held-out test data.
        reference: The model to compare with (usually the one retrained on
            ``retain``), its :class:`UnlearningScores`, or a mapping with keys
            ``ua``, ``ra``, ``ta``, ``mia`` (any case). A module is scored with
            the same data.
        mia_shadow: Shadow member data instead of the retain subset.
        mia_feature: The :func:`~modeconn_unlearn.mia.svc_mia` feature for
            MIA-efficacy (``"confidence"`` as in SalUn's tables).
        bn_loader: If given, a copy of ``model`` (and of a reference module)
            is scored with BatchNorm statistics re-estimated on it, exactly as
            :func:`evaluate_path` does at every ``t``; use it to compare a
            model with points of a path on equal terms. Use retain data.
        seed: Seed of the retain subset and the SVC.
        device: Where to evaluate (default: the model's device).

    Returns:
        :class:`UnlearningScores`; ``gaps``/``avg_gap`` are set when a
        reference is given.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
        >>> scores = unlearning_scores(nn.Linear(4, 2), retain=data, forget=data, test=data,
        ...                            reference={"UA": 0, "RA": 100, "TA": 90, "MIA": 10})
        >>> sorted(scores.gaps)
        ['mia', 'ra', 'ta', 'ua']
    """
    from .mia import _mia_efficacy

    if bn_loader is not None and has_batchnorm(model):
        model = copy.deepcopy(model)
        update_bn(model, as_loader(bn_loader, name="bn_loader"))
    target = _resolve_device(model, device)
    loaders = {
        "retain": as_loader(retain, name="retain"),
        "forget": as_loader(forget, name="forget"),
        "test": as_loader(test, name="test"),
    }
    shadow_loader = None if mia_shadow is None else as_loader(mia_shadow, name="mia_shadow")
    with _evaluating(model):
        passes = {
            name: _forward_pass(
                model,
                loader,
                target,
                keep_outputs=name != "retain" or shadow_loader is None,
                name=name,
            )
            for name, loader in loaders.items()
        }
        shadow = (
            passes["retain"]
            if shadow_loader is None
            else _forward_pass(model, shadow_loader, target, keep_outputs=True, name="mia_shadow")
        )
    mia = _mia_efficacy(
        shadow,
        passes["test"],
        passes["forget"],
        feature=mia_feature,
        subsample=shadow_loader is None,
        seed=seed,
    )
    scores = UnlearningScores(
        ua=100.0 - passes["forget"].metrics().accuracy,
        ra=passes["retain"].metrics().accuracy,
        ta=passes["test"].metrics().accuracy,
        mia=mia,
    )
    if reference is None:
        return scores
    if isinstance(reference, nn.Module):
        reference = unlearning_scores(
            reference,
            retain=retain,
            forget=forget,
            test=test,
            mia_shadow=mia_shadow,
            mia_feature=mia_feature,
            bn_loader=bn_loader,
            seed=seed,
            device=device,
        )
    ref = _reference_scores(reference)
    gaps = {name: abs(getattr(scores, name) - ref[name]) for name in _SCORE_NAMES}
    return UnlearningScores(
        ua=scores.ua,
        ra=scores.ra,
        ta=scores.ta,
        mia=scores.mia,
        gaps=gaps,
        avg_gap=sum(gaps.values()) / len(gaps),
    )


def _reference_scores(reference: UnlearningScores | Mapping[str, float]) -> dict[str, float]:
    if isinstance(reference, UnlearningScores):
        return {name: getattr(reference, name) for name in _SCORE_NAMES}
    if not isinstance(reference, Mapping):
        raise TypeError(
            "reference must be an nn.Module, UnlearningScores or a mapping with keys "
            f"{list(_SCORE_NAMES)}, got {type(reference).__name__}."
        )
    lowered = {str(key).lower(): value for key, value in reference.items()}
    missing = [name for name in _SCORE_NAMES if name not in lowered]
    if missing:
        raise ModeConnError(
            f"reference is missing the scores {missing}; give all of {list(_SCORE_NAMES)} "
            f"(got keys {sorted(map(str, reference))})."
        )
    return {name: float(lowered[name]) for name in _SCORE_NAMES}


# --------------------------------------------------------------------------- paths
class PathReport:
    """Metrics measured at points ``t`` along a curve, per split.

    Holds one numpy array per split and metric (``"acc"`` in percent,
    ``"loss"`` mean cross-entropy and, when measured, ``"mia_<feature>"`` on
    the forget split in percent), the distances between consecutive points in
    weight space, and summary statistics.

    Args:
        t: The measured points, increasing.
        metrics: ``{split: {metric: values}}``, each of the length of ``t``.
        segment_lengths: ``‖w(t_i) - w(t_{i-1})‖`` for consecutive points
            (length ``len(t) - 1``).
        meta: Free-form JSON-friendly information (counts, BN loader...).

    Example:
        >>> report = PathReport([0.0, 0.5, 1.0], {"forget": {"acc": [100.0, 60.0, 90.0]}},
        ...                     segment_lengths=[1.0, 1.0])
        >>> float(report.acc("forget")[1]), report.path_length
        (60.0, 2.0)
        >>> report.summary("forget", "acc")["integral"]
        155.0
    """

    def __init__(
        self,
        t: ArrayLike,
        metrics: Mapping[str, Mapping[str, ArrayLike]],
        *,
        segment_lengths: ArrayLike,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.t = _frozen_array(t)
        if self.t.ndim != 1 or len(self.t) == 0:
            raise ModeConnError(f"t must be a non-empty 1-D array, got shape {self.t.shape}.")
        self.segment_lengths = _frozen_array(segment_lengths)
        if self.segment_lengths.shape != (len(self.t) - 1,):
            raise ModeConnError(
                f"segment_lengths must have {len(self.t) - 1} entries (one per pair of "
                f"consecutive t), got shape {self.segment_lengths.shape}."
            )
        self._metrics: dict[str, dict[str, NDArray[np.float64]]] = {}
        for split, values in metrics.items():
            self._metrics[str(split)] = {}
            for name, series in values.items():
                array = _frozen_array(series)
                if array.shape != self.t.shape:
                    raise ModeConnError(
                        f"Metric {split!r}/{name!r} has shape {array.shape}, but t has "
                        f"{len(self.t)} points."
                    )
                self._metrics[str(split)][str(name)] = array
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def splits(self) -> list[str]:
        """The split names, in insertion order."""
        return list(self._metrics)

    @property
    def path_length(self) -> float:
        """Σ‖w(t_i) - w(t_{i-1})‖ over the measured points."""
        return float(self.segment_lengths.sum())

    @property
    def arc_length(self) -> NDArray[np.float64]:
        """Cumulative distance along the path at each ``t`` (starts at 0)."""
        return np.concatenate([[0.0], np.cumsum(self.segment_lengths)])

    def metric_names(self, split: str) -> list[str]:
        """The metrics measured on ``split``."""
        return list(self._split(split))

    def metric(self, split: str, name: str) -> NDArray[np.float64]:
        """The values of metric ``name`` on ``split`` at every ``t`` (read-only array)."""
        values = self._split(split)
        if name not in values:
            raise ModeConnError(
                f"No metric {name!r} for split {split!r}; available: {list(values)}."
            )
        return values[name]

    def acc(self, split: str) -> NDArray[np.float64]:
        """Accuracy (percent) on ``split`` at every ``t``."""
        return self.metric(split, "acc")

    def loss(self, split: str) -> NDArray[np.float64]:
        """Mean cross-entropy on ``split`` at every ``t``."""
        return self.metric(split, "loss")

    def summary(self, split: str, name: str) -> dict[str, float]:
        """Min, max, mean and length-weighted integral of a metric.

        ``integral`` is the trapezoid rule over arc length,
        ``Σ (m_{i-1} + m_i) / 2 · ‖w(t_i) - w(t_{i-1})‖``, and
        ``length_weighted_mean`` is ``integral / path_length`` (NaN for a path
        of length 0). ``t_min``/``t_max`` are where the extremes are reached.
        """
        values = self.metric(split, name)
        integral = float(np.sum((values[1:] + values[:-1]) / 2.0 * self.segment_lengths))
        length = self.path_length
        return {
            "min": float(np.min(values)),
            "max": float(np.max(values)),
            "mean": float(np.mean(values)),
            "integral": integral,
            "length_weighted_mean": integral / length if length > 0 else math.nan,
            "t_min": float(self.t[int(np.argmin(values))]),
            "t_max": float(self.t[int(np.argmax(values))]),
        }

    def _split(self, split: str) -> dict[str, NDArray[np.float64]]:
        if split not in self._metrics:
            raise ModeConnError(f"No split {split!r} in this report; available: {self.splits}.")
        return self._metrics[split]

    def _columns(self) -> list[tuple[str, NDArray[np.float64]]]:
        return [
            (f"{split}/{name}", values)
            for split, metrics in self._metrics.items()
            for name, values in metrics.items()
        ]

    # ----------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: arrays as lists, NaN as ``None``, plus the summaries."""
        return {
            "format": _REPORT_FORMAT,
            "version": _REPORT_VERSION,
            "t": _jsonable(self.t),
            "segment_lengths": _jsonable(self.segment_lengths),
            "path_length": self.path_length,
            "metrics": {
                split: {name: _jsonable(values) for name, values in metrics.items()}
                for split, metrics in self._metrics.items()
            },
            "summary": {
                split: {name: _jsonable_mapping(self.summary(split, name)) for name in metrics}
                for split, metrics in self._metrics.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PathReport:
        """Rebuild a report from :meth:`to_dict` output (derived fields are recomputed)."""
        missing = [key for key in ("t", "segment_lengths", "metrics") if key not in data]
        if missing:
            raise ModeConnError(f"Not a PathReport dict: missing keys {missing}.")
        return cls(
            _from_json(data["t"]),
            {
                split: {name: _from_json(values) for name, values in metrics.items()}
                for split, metrics in data["metrics"].items()
            },
            segment_lengths=_from_json(data["segment_lengths"]),
            meta=data.get("meta"),
        )

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """One row per ``t``, one column per ``split/metric``; written to ``path`` if given.

        Returns:
            The CSV text.
        """
        columns = self._columns()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["t", *(name for name, _ in columns)])
        for i, t in enumerate(self.t):
            writer.writerow([repr(float(t)), *(repr(float(values[i])) for _, values in columns)])
        text = buffer.getvalue()
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    def _table(self) -> tuple[list[str], list[list[str]]]:
        columns = self._columns()
        header = ["t", *(name for name, _ in columns)]
        rows = [
            [f"{t:.3f}", *(_format_value(name, values[i]) for name, values in columns)]
            for i, t in enumerate(self.t)
        ]
        return header, rows

    def to_markdown(self) -> str:
        """A markdown table (one row per ``t``) followed by the path length."""
        header, rows = self._table()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---:" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
        lines.append("")
        lines.append(f"Path length: {self.path_length:.4g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        header, rows = self._table()
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        head = "  ".join(cell.rjust(width) for cell, width in zip(header, widths, strict=True))
        return "\n".join([head, *lines, f"path length: {self.path_length:.4g}"])

    def __repr__(self) -> str:
        return (
            f"PathReport(points={len(self.t)}, splits={self.splits}, "
            f"path_length={self.path_length:.4g})"
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (atomically: a temporary file, then a rename)."""
        _atomic_write(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PathReport:
        """Read a report written by :meth:`save`."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModeConnError(f"No PathReport file at {file}.") from None
        except json.JSONDecodeError as error:
            raise ModeConnError(f"{file} is not valid JSON: {error}.") from None
        if not isinstance(data, Mapping) or data.get("format") != _REPORT_FORMAT:
            raise ModeConnError(f"{file} does not hold a PathReport saved by PathReport.save().")
        return cls.from_dict(data)

    def plot(self, **kwargs: Any) -> Figure:
        """Draw the report; see :func:`modeconn_unlearn.plotting.plot_path` for the arguments."""
        from .plotting import plot_path  # optional dependency, imported on use

        return plot_path(self, **kwargs)


def _frozen_array(values: ArrayLike) -> NDArray[np.float64]:
    array = np.array(values, dtype=np.float64)
    array.flags.writeable = False
    return array


def _format_value(column: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if column.endswith("/loss") else f"{value:.2f}"


def _jsonable(values: NDArray[np.float64]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def _jsonable_mapping(values: Mapping[str, float]) -> dict[str, float | None]:
    return {key: None if math.isnan(v) else v for key, v in values.items()}


def _from_json(values: Sequence[float | None]) -> NDArray[np.float64]:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evaluate_path(
    curve: CurveModel,
    splits: Mapping[str, DataLike],
    *,
    ts: int | Sequence[float] = 21,
    bn_loader: DataLike | None = None,
    mia: bool = False,
    mia_features: Sequence[str] = ("confidence",),
    progress: bool = True,
    device: torch.device | str | None = None,
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
        ts: Number of evenly spaced points in [0, 1] (default 21), or the
            points themselves (increasing).
        bn_loader: Data for the BatchNorm statistics. Default: the ``"retain"``
            split. The forget data is never used unless passed here.
        mia: Also compute MIA-efficacy (needs splits ``retain``, ``forget``, ``test``).
        mia_features: Features of :func:`~modeconn_unlearn.mia.svc_mia` to use.
        progress: Show a progress bar over ``t``.
        device: Where to evaluate (default: the curve's device).

    Returns:
        A :class:`PathReport`.

    Raises:
        ModeConnError: No splits, bad ``ts``, a BatchNorm model without a
            ``"retain"`` split or ``bn_loader``, or missing splits for ``mia``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from modeconn_unlearn.curve_model import CurveModel
        >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> data = TensorDataset(torch.randn(30, 4), torch.randint(0, 3, (30,)))
        >>> report = evaluate_path(CurveModel(a, end=b), {"retain": data}, ts=5, progress=False)
        >>> report.acc("retain").shape
        (5,)
    """
    if not callable(getattr(curve, "export", None)) or not callable(
        getattr(curve, "weights_at", None)
    ):
        raise TypeError(
            f"curve must be a CurveModel (with export() and weights_at()), got "
            f"{type(curve).__name__}; for a single model use evaluate()."
        )
    if not isinstance(splits, Mapping) or not splits:
        raise ModeConnError(
            'splits must be a non-empty mapping such as {"retain": dr, "forget": df, "test": dt}.'
        )
    points = path_points(ts)
    loaders = {
        str(name): as_loader(data, name=f"splits[{name!r}]") for name, data in splits.items()
    }
    target = torch.device(device) if device is not None else module_device(curve)

    bn_source = "none (no BatchNorm)"
    bn_data: Iterable[Any] | None = None
    if has_batchnorm(curve.template):
        if bn_loader is not None:
            bn_data, bn_source = as_loader(bn_loader, name="bn_loader"), "bn_loader"
        elif "retain" in loaders:
            bn_data, bn_source = loaders["retain"], "retain"
        else:
            raise ModeConnError(
                "The model has BatchNorm, whose statistics are re-estimated at every t; pass "
                'bn_loader=... (retain data) or include a "retain" split. Forget data is '
                "never used for this unless you pass it explicitly."
            )

    features = tuple(mia_features)
    mia_state = _PathMIA(loaders, features) if mia else None
    logger.debug(
        "evaluate_path: %d points, splits %s, BatchNorm statistics from %s",
        len(points),
        list(loaders),
        bn_source,
    )

    values: dict[str, dict[str, list[float]]] = {name: {"acc": [], "loss": []} for name in loaders}
    if mia_state is not None:
        values["forget"].update({f"mia_{feature}": [] for feature in features})
    counts: dict[str, int] = {}
    segments: list[float] = []
    previous: dict[str, Tensor] | None = None
    for t in tqdm(points, desc="evaluate_path", unit="t", disable=not progress):
        t = float(t)
        model = curve.export(t).to(target)
        if bn_data is not None:
            update_bn(model, bn_data)
        with _evaluating(model):
            passes = {
                name: _forward_pass(
                    model,
                    loader,
                    target,
                    keep_outputs=mia_state is not None and name in _PathMIA.SPLITS,
                    name=f"splits[{name!r}]",
                )
                for name, loader in loaders.items()
            }
        with torch.no_grad():
            weights = {name: w.detach() for name, w in curve.weights_at(t).items()}
        for name, result in passes.items():
            metrics = result.metrics()
            values[name]["acc"].append(metrics.accuracy)
            values[name]["loss"].append(metrics.loss)
            counts[name] = metrics.count
        if mia_state is not None:
            for feature, score in mia_state.scores(passes).items():
                values["forget"][f"mia_{feature}"].append(score)
        if previous is not None:
            squared = sum(
                float(torch.sum((weights[name].double() - previous[name].double()) ** 2))
                for name in weights
            )
            segments.append(math.sqrt(squared))
        previous = weights

    return PathReport(
        points,
        values,
        segment_lengths=segments,
        meta={
            "counts": counts,
            "bn_data": bn_source,
            "mia_features": list(features) if mia else [],
        },
    )


class _PathMIA:
    """MIA-efficacy at every ``t`` with the same shadow subset throughout the path."""

    SPLITS = ("retain", "forget", "test")

    def __init__(self, loaders: Mapping[str, Iterable[Any]], features: tuple[str, ...]) -> None:
        from .mia import _check_features

        missing = [name for name in self.SPLITS if name not in loaders]
        if missing:
            raise ModeConnError(
                f"mia=True needs the splits {list(self.SPLITS)} (shadow members, targets, "
                f"non-members); missing {missing}."
            )
        self.features = _check_features(features)

    def scores(self, passes: Mapping[str, _Pass]) -> dict[str, float]:
        from .mia import _mia_efficacy

        return {
            feature: _mia_efficacy(
                passes["retain"], passes["test"], passes["forget"], feature=feature, subsample=True
            )
            for feature in self.features
        }
