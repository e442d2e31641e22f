"""What a training run records: one :class:`EpochRecord` per epoch, in a :class:`History`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .distributed import all_reduce_sum, is_distributed

__all__ = ["EpochMeter", "EpochRecord", "History"]

_STANDARD_STATS = ("n_retain", "n_forget", "retain_acc", "forget_acc", "beta")


@dataclass
class EpochRecord:
    """What one training epoch did.

    Attributes:
        epoch: Epoch number, from 1.
        loss: Mean of the objective over the epoch's steps.
        retain_acc: Accuracy (percent) on the retain samples of the training
            batches, weighted by their count (NaN if the objective records none).
        forget_acc: Same on the forget samples.
        beta: Mean ``beta`` used per step (NaN if the objective has none).
        lr: Learning rate of the epoch's first step (a per-step schedule moves it
            within the epoch).
        time_s: Wall-clock seconds of the epoch.
        steps: Optimizer steps taken.
        extra: Means of any other numbers the objective put in ``last_stats``.
    """

    epoch: int
    loss: float
    retain_acc: float
    forget_acc: float
    beta: float
    lr: float
    time_s: float
    steps: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class History:
    """Per-epoch records of a training run (a sequence of :class:`EpochRecord`).

    Example:
        >>> h = History([EpochRecord(1, 0.5, 90.0, 80.0, 0.01, 0.1, 1.2, 10)])
        >>> len(h), h[-1].forget_acc, h.to_dict()["retain_acc"]
        (1, 80.0, [90.0])
    """

    records: list[EpochRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> EpochRecord:
        return self.records[index]

    def to_dict(self) -> dict[str, list[float]]:
        """Column-wise dict: one list per field (``extra`` keys become columns too).

        Returns:
            ``{"epoch": [...], "loss": [...], ..., **extra}``; a column of an
            ``extra`` key absent from some epochs holds NaN there.
        """
        fields = [name for name in EpochRecord.__dataclass_fields__ if name != "extra"]
        columns = {name: [getattr(r, name) for r in self.records] for name in fields}
        for key in sorted({key for r in self.records for key in r.extra}):
            columns[key] = [r.extra.get(key, math.nan) for r in self.records]
        return columns

    def state(self) -> list[dict[str, Any]]:
        """The records as plain dicts (what a checkpoint stores)."""
        return [asdict(r) for r in self.records]

    @classmethod
    def from_state(cls, state: Sequence[Mapping[str, Any]]) -> History:
        """The history a checkpoint stored with :meth:`state`."""
        return cls([EpochRecord(**dict(r)) for r in state])


class EpochMeter:
    """Accumulates per-step loss and ``last_stats`` into an :class:`EpochRecord`.

    Under ``torchrun`` the loss, accuracy and ``beta`` sums are all-reduced over
    the ranks when the record is made, so every rank records the same numbers.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.loss_sum = 0.0
        self.loss_count = 0.0
        self.acc = {"retain": [0.0, 0.0], "forget": [0.0, 0.0]}  # weighted sum, weight
        self.beta = [0.0, 0]
        self.extra: dict[str, list[float]] = {}

    def update(self, loss: float, stats: Mapping[str, Any]) -> None:
        """Add one step's loss and the objective's ``last_stats``."""
        self.steps += 1
        self.loss_sum += loss
        self.loss_count += 1.0
        for part in ("retain", "forget"):
            value = stats.get(f"{part}_acc")
            if value is not None:
                weight = float(stats.get(f"n_{part}", 1.0))
                self.acc[part][0] += float(value) * weight
                self.acc[part][1] += weight
        if stats.get("beta") is not None:
            self.beta[0] += float(stats["beta"])
            self.beta[1] += 1
        for key, value in stats.items():
            if key not in _STANDARD_STATS and isinstance(value, (int, float)):
                total = self.extra.setdefault(key, [0.0, 0.0])
                total[0] += float(value)
                total[1] += 1.0

    def record(self, epoch: int, lr: float, seconds: float) -> EpochRecord:
        """The epoch's record (all-reduced over the ranks under ``torchrun``)."""
        if is_distributed():
            self._all_reduce()

        def mean(pair: Sequence[float]) -> float:
            return pair[0] / pair[1] if pair[1] else math.nan

        return EpochRecord(
            epoch=epoch,
            loss=self.loss_sum / self.loss_count if self.loss_count else math.nan,
            retain_acc=mean(self.acc["retain"]),
            forget_acc=mean(self.acc["forget"]),
            beta=mean(self.beta),
            lr=lr,
            time_s=seconds,
            steps=self.steps,
            extra={key: mean(pair) for key, pair in self.extra.items()},
        )

    def _all_reduce(self) -> None:
        sums = [self.loss_sum, self.loss_count, *self.acc["retain"], *self.acc["forget"]]
        sums += [self.beta[0], float(self.beta[1])]
        reduced: list[float] = all_reduce_sum(torch.tensor(sums, dtype=torch.float64)).tolist()
        self.loss_sum, self.loss_count = reduced[0], reduced[1]
        self.acc = {"retain": reduced[2:4], "forget": reduced[4:6]}
        self.beta = [reduced[6], int(reduced[7])]
