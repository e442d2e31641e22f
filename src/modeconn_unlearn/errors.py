"""Exceptions raised by modeconn_unlearn.

Every error the library raises on bad input is a :class:`ModeConnError`, a
subclass of :class:`ValueError`, whose message says what is wrong and how to
fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["IncompatibleModelsError", "ModeConnError", "NonFiniteLossError"]


class ModeConnError(ValueError):
    """Bad input or an impossible request; the message says how to fix it."""


class IncompatibleModelsError(ModeConnError):
    """Two models or state dicts do not share keys, shapes or dtypes."""


class NonFiniteLossError(ModeConnError):
    """A training loss became NaN or infinite; the model keeps its last finite state.

    Attributes:
        model: The model being trained, at its last finite state (for
            ``unlearn``/``retrain`` this is the working copy, since the input
            model is never modified), or ``None``.
    """

    def __init__(self, message: str, *, model: nn.Module | None = None) -> None:
        super().__init__(message)
        self.model = model
