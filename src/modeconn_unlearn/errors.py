"""Exceptions raised by modeconn_unlearn.

Every error the library raises on bad input is a :class:`ModeConnError`, a
subclass of :class:`ValueError`, whose message says what is wrong and how to
fix it.
"""

from __future__ import annotations

__all__ = ["IncompatibleModelsError", "ModeConnError", "NonFiniteLossError"]


class ModeConnError(ValueError):
    """Bad input or an impossible request; the message says how to fix it."""


class IncompatibleModelsError(ModeConnError):
    """Two models or state dicts do not share keys, shapes or dtypes."""


class NonFiniteLossError(ModeConnError):
    """A training loss became NaN or infinite; the model keeps its last finite state."""
