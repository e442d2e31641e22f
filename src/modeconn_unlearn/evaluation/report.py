"""PathReport: metrics measured at points ``t`` along a curve, and its files (JSON, CSV, text)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..checkpoint import write_text_atomic
from ..errors import ModeConnError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PathReport"]

_REPORT_FORMAT = "modeconn_unlearn.PathReport"
_REPORT_VERSION = 1


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
            write_text_atomic(path, text)
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
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))

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
        """Draw the report; see :func:`modeconn_unlearn.plotting.plot_path` for the arguments.

        A convenience accessor (like ``DataFrame.plot``): the optional plotting
        layer is imported on use, the one place a lower layer reaches up.
        """
        from ..plotting import plot_path

        if "path" in kwargs:
            if "save" in kwargs:
                raise ModeConnError("Pass the file name once, as save=... (path= is its old name).")
            warnings.warn(
                "PathReport.plot(path=...) is deprecated and will be removed in 0.3.0; use "
                "save=... as in the other plotting functions.",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs["save"] = kwargs.pop("path")
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
