"""Result types of the connectivity analysis: barriers, barrier matrices, relearning curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ModeConnError

__all__ = ["BarrierResult", "ConnectivityMatrix", "RelearnPathResult", "RelearnResult"]


def _plain(result: Any) -> dict[str, Any]:
    """Every field of a result dataclass, arrays as lists."""
    values = {f.name: getattr(result, f.name) for f in fields(result)}
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in values.items()}


@dataclass(frozen=True, repr=False)
class BarrierResult:
    """The metric along a path between two models on one split, and its barrier.

    Attributes:
        t: The evaluated path positions, sorted, always including 0 and 1.
        values: The metric at each ``t``: the mean per-sample loss (cross-entropy
            for a classifier) for ``"loss"``, ``100 - accuracy`` in percent for
            ``"error"``.
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
        derived = {"t": t, "values": values, "start": start, "end": end, "excess": excess}
        derived.update(height=float(excess[peak]), t_peak=float(t[peak]))
        for name, value in derived.items():
            object.__setattr__(self, name, value)

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
        return _plain(self)


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
        return self.heights[self._split(split)]

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
        loss: Mean per-sample loss on the evaluation data after each step.
        train_loss: Mean loss on the fine-tuning samples *before* each step
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
        """Plain JSON-ready dict (``None`` for the final ``nan`` of ``train_loss``)."""
        plain = _plain(self)
        plain["train_loss"] = [None if math.isnan(v) else v for v in plain["train_loss"]]
        return plain


@dataclass(frozen=True, repr=False)
class RelearnPathResult:
    """:class:`RelearnResult` at every evaluated ``t`` along a path (same samples at each t).

    Attributes:
        t: The path positions.
        steps: ``0, 1, ..., steps``.
        accuracy: ``(len(t), steps + 1)`` accuracy (%) on the evaluation data.
        loss: ``(len(t), steps + 1)`` mean per-sample loss on the evaluation data.
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
        return _plain(self)
