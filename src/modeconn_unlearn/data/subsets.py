"""Fixed random subsets: ``torch.randperm`` on a private generator seeded with ``salt + seed``.

The global random state is neither read nor advanced; different salts give
independent draws for one user seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["seeded_order", "seeded_subset"]


def seeded_order(n: int, seed: int, *, salt: int = 0) -> list[int]:
    """A random permutation of ``range(n)``, fixed by ``salt + seed``.

    Example:
        >>> seeded_order(5, 0) == seeded_order(5, 0), sorted(seeded_order(5, 0))
        (True, [0, 1, 2, 3, 4])
    """
    generator = torch.Generator().manual_seed(salt + seed)
    order: list[int] = torch.randperm(n, generator=generator).tolist()
    return order


def seeded_subset(
    data: Dataset[Any], size: int | None, seed: int, *, salt: int = 0
) -> Dataset[Any]:
    """``size`` samples of ``data`` drawn without replacement, in their original order.

    Args:
        data: A map-style dataset.
        size: How many samples; ``None`` (or at least ``len(data)``) returns ``data`` itself.
        seed: The user's seed.
        salt: Added to ``seed``, so that two subsets drawn with one seed are independent.

    Returns:
        ``data``, or a :class:`~torch.utils.data.Subset` of it with sorted indices: the
        first ``size`` entries of :func:`seeded_order`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(10))
        >>> subset = seeded_subset(data, 3, seed=0)
        >>> len(subset), subset.indices == sorted(seeded_order(10, 0)[:3])
        (3, True)
        >>> seeded_subset(data, None, seed=0) is data
        True
    """
    count = len(data)  # type: ignore[arg-type]
    if size is None or size >= count:
        return data
    return Subset(data, sorted(seeded_order(count, seed, salt=salt)[:size]))
