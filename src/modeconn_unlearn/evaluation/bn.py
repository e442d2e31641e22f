"""The one BatchNorm-data policy: which data re-estimates BatchNorm statistics, and how much.

Interpolated or copied BatchNorm statistics do not belong to new weights, so
every point of a path (and any model compared with one) is scored after its
statistics are re-estimated. The data for that is, in this order:
``bn_loader`` when given, else a split named exactly ``"retain"``, else an
error; never the forget data unless it is passed explicitly. With
``bn_samples=N`` a seeded random subset of ``N`` samples of that data is used
(the same subset at every point).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn
from torch.utils.data import DataLoader

from ..batchnorm import has_batchnorm
from ..checks import positive_int
from ..data import DEFAULT_EVAL_BATCH_SIZE, as_loader, seeded_subset
from ..errors import ModeConnError

__all__ = ["BN_SALT", "BNData", "bn_data"]


class BNData(NamedTuple):
    """The data BatchNorm statistics are re-estimated on, and where it came from.

    Attributes:
        loader: The loader, or ``None`` when the model has no BatchNorm.
        source: ``"bn_loader"``, ``"retain"`` or ``"none (no BatchNorm)"``, with
            ``" (N samples)"`` appended for a subset.
    """

    loader: DataLoader[Any] | None
    source: str


#: Salt of the BatchNorm subset (``bn_samples``), independent of the library's other subsets.
BN_SALT = 40_000


def bn_data(
    template: nn.Module,
    *,
    bn_loader: Any = None,
    splits: Any = None,
    bn_samples: int | None = None,
    seed: int = 0,
) -> BNData:
    """The BatchNorm data for models of ``template``'s architecture.

    Args:
        template: A model of the architecture (only checked for BatchNorm layers).
        bn_loader: Explicit data (a DataLoader or Dataset); use retain data.
        splits: The evaluated ``{name: loader}``, whose ``"retain"`` split is the
            fallback, or ``None``.
        bn_samples: Use a seeded random subset of this many samples (``None``: all).
        seed: Seed of that subset.

    Returns:
        A :class:`BNData`; its loader is ``None`` for a model without BatchNorm.

    Raises:
        ModeConnError: The model has BatchNorm but there is no ``bn_loader`` and
            no ``"retain"`` split, or ``bn_samples`` is not a positive integer.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> retain = TensorDataset(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        >>> bn_data(net, splits={"retain": retain}, bn_samples=4).source
        'retain (4 samples)'
        >>> bn_data(nn.Linear(3, 2), bn_loader=retain).loader is None
        True
    """
    positive_int(bn_samples, "bn_samples", optional=True)
    if not has_batchnorm(template):
        return BNData(None, "none (no BatchNorm)")
    if bn_loader is not None:
        loader, source = as_loader(bn_loader, name="bn_loader"), "bn_loader"
    elif splits is not None and "retain" in splits:
        loader, source = as_loader(splits["retain"], name="splits['retain']"), "retain"
    else:
        raise ModeConnError(
            "The model has BatchNorm, whose statistics must be re-estimated at every point "
            "(interpolated statistics are meaningless): pass bn_loader=... (retain data) or "
            'include a "retain" split. Forget data is never used for this unless you pass it '
            "explicitly."
        )
    if bn_samples is not None:
        subset = seeded_subset(loader.dataset, int(bn_samples), seed, salt=BN_SALT)
        if subset is not loader.dataset:
            batch_size = loader.batch_size or DEFAULT_EVAL_BATCH_SIZE
            loader = DataLoader(subset, batch_size=batch_size, collate_fn=loader.collate_fn)
        source = f"{source} ({len(subset)} samples)"  # type: ignore[arg-type]
    return BNData(loader, source)
