"""Exceptions raised by modeconn_unlearn.

Every error the library raises on bad input is a :class:`ModeConnError`, a
subclass of :class:`ValueError`, whose message says what is wrong and how to
fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "IncompatibleModelsError",
    "MissingDependencyError",
    "ModeConnError",
    "NonFiniteLossError",
    "listed",
]

#: How many names an error message shows before "and N more".
NAMES_SHOWN = 8


def listed(names: list[str]) -> str:
    """Quote the first :data:`NAMES_SHOWN` names for an error message, then "and N more".

    Example:
        >>> listed(["a", "b"])
        "'a', 'b'"
    """
    shown = ", ".join(repr(n) for n in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


class ModeConnError(ValueError):
    """Bad input or an impossible request; the message says how to fix it."""


class IncompatibleModelsError(ModeConnError):
    """Two models or state dicts do not share keys, shapes or dtypes."""


class MissingDependencyError(ModeConnError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


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
