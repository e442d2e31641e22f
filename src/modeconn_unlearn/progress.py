"""Progress bars: tqdm when shown, and no tqdm object at all when not.

A disabled ``tqdm`` still takes tqdm's process-shared lock when it is created.
A process killed while holding it (SIGKILL during a checkpointed run) would
leave every process forked from the same parent waiting on that lock, so a
bar that is off is never built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["NoBar", "progress_bar"]

T = TypeVar("T")


class NoBar:
    """The methods of a tqdm bar that the library calls, doing nothing.

    Example:
        >>> bar = NoBar()
        >>> bar.update(1); bar.set_postfix(loss="0.1"); bar.close()
    """

    def update(self, n: float = 1) -> None:
        """Do nothing (a shown bar would advance by ``n``)."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing (a shown bar would show these values)."""

    def close(self) -> None:
        """Do nothing."""


def progress_bar(enabled: bool, iterable: Iterable[T] | None = None, **options: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one), or the plain iterable when off.

    Args:
        enabled: Show the bar.
        iterable: What to iterate over; ``None`` for a bar advanced by ``update``.
        **options: Passed to ``tqdm`` (``desc``, ``total``, ``unit``, ...).

    Returns:
        The bar; when ``enabled`` is false, ``iterable`` itself (or a :class:`NoBar`).

    Example:
        >>> progress_bar(False, [1, 2])
        [1, 2]
        >>> isinstance(progress_bar(False), NoBar)
        True
    """
    if not enabled:
        return NoBar() if iterable is None else iterable
    return tqdm(iterable, **options)
