"""The usual language-model schedule: linear warm-up, then a decay to 0, per optimizer step.

:func:`warmup_schedule` returns a factory ``(optimizer, total_steps) -> LRScheduler``
for ``TrainConfig(scheduler=..., scheduler_interval="step")``: the loop passes the
run's number of optimizer steps, so the schedule ends where the run ends. The
scheduler is one of torch's own (``LinearLR`` and ``CosineAnnealingLR``, chained by
``SequentialLR``), so its state checkpoints and resumes like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from ..checks import as_float, positive_int
from ..errors import ModeConnError
from .config import StepSchedulerFactory

__all__ = ["Decay", "warmup_schedule"]

Decay = Literal["linear", "cosine", "constant"]
_DECAYS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class _WarmupSchedule:
    """The factory :func:`warmup_schedule` returns (compares equal when its settings do)."""

    warmup: int | float
    decay: Decay

    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        positive_int(total_steps, "total_steps")
        steps = self.warmup if isinstance(self.warmup, int) else round(self.warmup * total_steps)
        if steps >= total_steps:
            raise ModeConnError(
                f"a warm-up of {steps} steps leaves none of the run's {total_steps} optimizer "
                "steps to decay over; use a shorter warm-up or a longer run."
            )
        rest = total_steps - steps
        decay: LRScheduler
        if self.decay == "linear":
            decay = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)
        elif self.decay == "cosine":
            decay = CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)
        else:
            decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
        if steps == 0:
            return decay
        # Step k (from 1) of the warm-up runs at lr * k / steps: the first step already moves.
        warmup = LinearLR(
            optimizer, start_factor=1.0 / steps, end_factor=1.0, total_iters=steps - 1
        )
        return SequentialLR(optimizer, [warmup, decay], milestones=[steps])

    def __repr__(self) -> str:
        return f"warmup_schedule({self.warmup!r}, decay={self.decay!r})"


def warmup_schedule(warmup: int | float = 0.0, *, decay: Decay = "linear") -> StepSchedulerFactory:
    """Linear warm-up, then linear or cosine decay to 0 over the run's optimizer steps.

    For ``TrainConfig(scheduler=warmup_schedule(...), scheduler_interval="step")``
    (or the same fields of :class:`~modeconn_unlearn.recipe.RecipeConfig`). With
    ``W`` warm-up steps of a run of ``T`` optimizer steps, optimizer step ``k``
    (from 1) runs at the learning rate ``lr`` times

    * ``k / W`` for ``k <= W`` (the first step already moves; the peak is step ``W``),
    * ``(T - k + 1) / (T - W)`` for ``decay="linear"``,
      ``(1 + cos(pi (k - 1 - W) / (T - W))) / 2`` for ``decay="cosine"``, and 1
      for ``decay="constant"``, when ``k > W``: both decays start from ``lr``
      and would reach 0 one step after the run.

    Args:
        warmup: Warm-up length: an ``int`` counts optimizer steps, a ``float`` in
            ``[0, 1)`` is a fraction of the run's steps (rounded). 0: no warm-up.
        decay: ``"linear"``, ``"cosine"`` or ``"constant"``.

    Returns:
        A factory ``(optimizer, total_steps) -> LRScheduler`` (torch's
        ``LinearLR``/``CosineAnnealingLR``, in a ``SequentialLR`` after a
        warm-up); its ``repr`` is the call that made it.

    Raises:
        ModeConnError: A negative or non-numeric ``warmup``, a fraction not below
            1, an unknown ``decay``; when called, a warm-up as long as the run.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.AdamW(layer.parameters(), lr=1.0)
        >>> scheduler = warmup_schedule(2, decay="linear")(optimizer, 6)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(optimizer.param_groups[0]["lr"])
        ...     optimizer.step()
        ...     scheduler.step()
        >>> [round(lr, 2) for lr in lrs]
        [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise ModeConnError(
            f"warmup must be a number of steps (int) or a fraction of the run (float), got "
            f"{warmup!r}."
        )
    if isinstance(warmup, int):
        positive_int(warmup, "warmup", minimum=0)
    else:
        fraction = as_float(warmup, "warmup", nonnegative=True)
        if fraction >= 1.0:
            raise ModeConnError(
                f"warmup={warmup!r} as a float is a fraction of the run's steps and must lie in "
                "[0, 1); pass an int to count steps."
            )
    if decay not in _DECAYS:
        raise ModeConnError(f"decay must be 'linear', 'cosine' or 'constant', got {decay!r}.")
    return _WarmupSchedule(warmup, decay)
