"""Forget/retain splits and a dataset view that flags forget samples.

Unlearning needs two sets: the *forget set* D_f whose influence is removed and
the *retain set* D_r whose knowledge is kept. This module builds them from any
map-style dataset returning ``(x, y)`` and mixes them into one stream of
:class:`~modeconn_unlearn.data.UnlearnBatch` batches, where ``is_forget`` tells
each objective which samples to learn and which to unlearn.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from ..checks import positive_int
from ..errors import ModeConnError
from .samples import UnlearnBatch, as_dataset, read_sample, stack_collate
from .subsets import seeded_order

__all__ = [
    "UnlearnCollate",
    "UnlearnDataset",
    "collate_of",
    "collate_unlearn",
    "forget_retain_split",
    "unlearn_loader",
]

logger = logging.getLogger(__name__)


def _targets_of(dataset: Any) -> Tensor:
    """Integer labels of every sample of ``dataset``, without loading inputs when possible."""
    if isinstance(dataset, Subset):
        return _targets_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].reshape(len(dataset)).long()
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets).reshape(len(dataset)).long()
    labels = [int(read_sample(dataset[i])[1]) for i in range(len(dataset))]
    return torch.tensor(labels, dtype=torch.long)


def forget_retain_split(
    dataset: Any,
    *,
    forget_ratio: float | None = None,
    forget_class: int | str | None = None,
    seed: int = 0,
) -> tuple[Subset[Any], Subset[Any]]:
    """Split a dataset into a retain set and a forget set.

    Exactly one of ``forget_ratio`` (random forgetting) and ``forget_class``
    (class-wise forgetting) must be given. Both splits are reproducible from
    ``seed``, including the class picked by ``forget_class="random"``.

    Args:
        dataset: Any map-style dataset returning ``(x, y)`` (or a ``DataLoader`` over one).
        forget_ratio: Fraction in (0, 1) of samples drawn uniformly at random into
            the forget set (``round(forget_ratio * len(dataset))`` samples).
        forget_class: The class whose samples all go to the forget set, or
            ``"random"`` to draw one of the classes present from ``seed``.
        seed: Seed of the random draw.

    Returns:
        ``(retain, forget)`` as :class:`~torch.utils.data.Subset` views of
        ``dataset`` with ascending indices.

    Raises:
        ModeConnError: If both or neither option is given, the ratio is outside
            (0, 1) (a percentage such as ``10`` gets "did you mean 0.1?"), ``dataset``
            is ``(X, Y)`` tensors rather than a dataset, or the split would leave the
            forget or retain set empty.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.randn(10, 2), torch.arange(10) % 2)
        >>> retain, forget = forget_retain_split(ds, forget_ratio=0.2, seed=0)
        >>> len(retain), len(forget)
        (8, 2)
        >>> retain, forget = forget_retain_split(ds, forget_class=1)
        >>> sorted(forget.indices)
        [1, 3, 5, 7, 9]
    """
    if (forget_ratio is None) == (forget_class is None):
        raise ModeConnError(
            "give exactly one of forget_ratio (random forgetting, e.g. forget_ratio=0.1) and "
            f"forget_class (class-wise forgetting, an int or 'random'); got "
            f"forget_ratio={forget_ratio!r}, forget_class={forget_class!r}."
        )
    dataset = as_dataset(dataset, "dataset")
    n = len(dataset)
    if forget_ratio is not None:
        ratio = float(forget_ratio)
        if not (math.isfinite(ratio) and 0.0 < ratio < 1.0):
            if 1.0 < ratio < 100.0:
                raise ModeConnError(
                    f"forget_ratio is a fraction in (0, 1), not a percentage; got "
                    f"{forget_ratio!r}: did you mean {ratio / 100:g}?"
                )
            raise ModeConnError(f"forget_ratio must lie in (0, 1), got {forget_ratio!r}.")
        n_forget = round(ratio * n)
        if n_forget == 0 or n_forget == n:
            part = "forget" if n_forget == 0 else "retain"
            raise ModeConnError(
                f"forget_ratio={ratio} of {n} samples leaves the {part} set empty; "
                "choose a ratio that selects at least one sample for each set."
            )
        is_forget = torch.zeros(n, dtype=torch.bool)
        is_forget[seeded_order(n, int(seed))[:n_forget]] = True
    else:
        targets = _targets_of(dataset)
        classes = torch.unique(targets)
        if isinstance(forget_class, str):
            if forget_class != "random":
                raise ModeConnError(
                    f"forget_class must be an int or 'random', got {forget_class!r}."
                )
            generator = torch.Generator().manual_seed(int(seed))
            pick = int(torch.randint(len(classes), (1,), generator=generator))
            chosen = int(classes[pick])
            logger.info("forget_retain_split: seed %d picked class %d to forget", seed, chosen)
        else:
            if isinstance(forget_class, bool):
                raise ModeConnError(f"forget_class must be an int or 'random', got {forget_class}.")
            chosen = operator.index(forget_class)  # type: ignore[arg-type]
        is_forget = targets == chosen
        if not bool(is_forget.any()):
            raise ModeConnError(
                f"forget_class={chosen} has no samples; classes present: {classes.tolist()}."
            )
        if bool(is_forget.all()):
            raise ModeConnError(f"every sample has class {chosen}; the retain set would be empty.")
    retain_idx = torch.nonzero(~is_forget).flatten().tolist()
    forget_idx = torch.nonzero(is_forget).flatten().tolist()
    return Subset(dataset, retain_idx), Subset(dataset, forget_idx)


class UnlearnDataset(Dataset[tuple[Any, Any, bool]]):
    """Retain and forget samples in one map-style dataset, with an ``is_forget`` flag.

    Items are ``(x, y, is_forget)``: indices ``0 .. num_retain - 1`` are the
    (subsampled) retain samples, the rest the forget samples. With
    ``retain_ratio < 1`` a fixed subset of ``round(retain_ratio * len(retain))``
    retain samples, drawn from ``seed``, is used (the same subset every epoch).

    Args:
        retain: Map-style dataset (or ``DataLoader`` over one) of ``(x, y)`` retain
            samples; ``None`` for none.
        forget: Same for the forget samples.
        retain_ratio: Fraction in (0, 1] of the retain set to keep.
        seed: Seed of the retain subsample.

    Raises:
        ModeConnError: If ``retain_ratio`` is outside (0, 1], keeps no retain
            sample of a non-empty retain set, or both sets are empty.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> r = TensorDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
        >>> f = TensorDataset(torch.ones(2, 2), torch.ones(2, dtype=torch.long))
        >>> ds = UnlearnDataset(r, f, retain_ratio=0.5)
        >>> len(ds), ds.num_retain, ds[len(ds) - 1][2]
        (6, 4, True)
    """

    def __init__(
        self, retain: Any, forget: Any, *, retain_ratio: float = 1.0, seed: int = 0
    ) -> None:
        self.retain = as_dataset(retain, "retain")
        self.forget = as_dataset(forget, "forget")
        ratio = float(retain_ratio)
        if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
            raise ModeConnError(f"retain_ratio must lie in (0, 1], got {retain_ratio!r}.")
        n_retain = len(self.retain)
        if ratio == 1.0:
            self.retain_indices: list[int] = list(range(n_retain))
        else:
            keep = round(ratio * n_retain)
            if keep == 0 and n_retain > 0:
                raise ModeConnError(
                    f"retain_ratio={ratio} keeps no sample of the {n_retain} retain samples; "
                    "increase it."
                )
            self.retain_indices = sorted(seeded_order(n_retain, int(seed))[:keep])
        if len(self.retain_indices) + len(self.forget) == 0:
            raise ModeConnError(
                "both the retain and the forget set are empty; nothing to train on."
            )

    @property
    def num_retain(self) -> int:
        """Number of retain samples in the view (after subsampling)."""
        return len(self.retain_indices)

    @property
    def num_forget(self) -> int:
        """Number of forget samples in the view."""
        return len(self.forget)

    def __len__(self) -> int:
        return self.num_retain + self.num_forget

    def __getitem__(self, index: int) -> tuple[Any, Any, bool]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for UnlearnDataset of length {n}")
        if index < self.num_retain:
            x, y = read_sample(self.retain[self.retain_indices[index]])
            return x, y, False
        x, y = read_sample(self.forget[index - self.num_retain])
        return x, y, True


def collate_unlearn(
    samples: Sequence[tuple[Any, Any, bool]],
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> UnlearnBatch:
    """Collate ``(x, y, is_forget)`` items into an :class:`UnlearnBatch`.

    Without ``collate_fn``, inputs and targets go through PyTorch's
    ``default_collate`` (so inputs may be tensors, dicts of tensors, ...; samples
    of different sizes raise :func:`~modeconn_unlearn.data.stack_collate`'s error). With
    one (e.g. a padding collator of language-model examples), it receives the
    samples as the dataset gave them, ``{**inputs, "labels": y}`` for dict
    items and ``(x, y)`` otherwise, and its batch is read back with
    :func:`read_sample`. ``is_forget`` becomes a bool tensor.

    Args:
        samples: Items of an :class:`UnlearnDataset`.
        collate_fn: The collate function of the user's own ``DataLoader``, or ``None``.

    Returns:
        The batch.

    Example:
        >>> import torch
        >>> b = collate_unlearn([(torch.zeros(2), 0, False), (torch.ones(2), 1, True)])
        >>> b.targets.tolist(), b.is_forget.tolist()
        ([0, 1], [False, True])
    """
    xs, ys, flags = zip(*samples, strict=True)
    is_forget = torch.tensor([bool(f) for f in flags], dtype=torch.bool)
    if collate_fn is None:
        return UnlearnBatch(stack_collate(list(xs)), stack_collate(list(ys)), is_forget)
    items = [
        {**x, "labels": y} if isinstance(x, Mapping) else (x, y)
        for x, y in zip(xs, ys, strict=True)
    ]
    inputs, targets = read_sample(collate_fn(items))
    return UnlearnBatch(inputs, torch.as_tensor(targets), is_forget)


class UnlearnCollate:
    """:func:`collate_unlearn` bound to a user's ``collate_fn`` (picklable for worker processes).

    Example:
        >>> import torch
        >>> collate = UnlearnCollate(None)
        >>> collate([(torch.zeros(2), 0, True)]).is_forget.tolist()
        [True]
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[tuple[Any, Any, bool]]) -> UnlearnBatch:
        """Collate ``samples`` (see :func:`collate_unlearn`)."""
        return collate_unlearn(samples, self.collate_fn)


def collate_of(data: Any) -> Callable[[list[Any]], Any] | None:
    """The custom ``collate_fn`` of a ``DataLoader`` (``None`` for the defaults or a dataset).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.zeros(2, 1))
        >>> collate_of(DataLoader(ds)) is None, collate_of(DataLoader(ds, collate_fn=list)) is list
        (True, True)
    """
    if not isinstance(data, DataLoader):
        return None
    collate = data.collate_fn
    return None if collate in (default_collate, stack_collate) else collate


def unlearn_loader(
    retain: Any,
    forget: Any,
    *,
    batch_size: int = 64,
    retain_ratio: float = 1.0,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A loader of :class:`UnlearnBatch` batches mixing retain and forget samples.

    The order is drawn from a ``torch.Generator`` seeded with ``seed`` (kept as
    ``loader.generator``), so two loaders built with the same arguments yield
    the same batches epoch after epoch, independently of the global RNG.

    Args:
        retain: Retain data (map-style ``Dataset`` or ``DataLoader``; ``None`` for none).
        forget: Forget data (same).
        batch_size: Samples per batch.
        retain_ratio: Fraction in (0, 1] of the retain set to keep (see :class:`UnlearnDataset`).
        shuffle: Shuffle the samples each epoch.
        seed: Seed of the retain subsample and of the shuffling.
        num_workers: Worker processes of the ``DataLoader``.
        drop_last: Drop the last incomplete batch.
        collate_fn: Collates the samples as the datasets give them (e.g. padding
            language-model examples); default: the collate of the first of
            ``retain``/``forget`` that is a ``DataLoader`` with a custom one, else
            PyTorch's ``default_collate``. See :func:`collate_unlearn`.

    Returns:
        A ``DataLoader`` over an :class:`UnlearnDataset`.

    Raises:
        ModeConnError: If ``batch_size`` is not positive, or as :class:`UnlearnDataset`.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> r = TensorDataset(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))
        >>> f = TensorDataset(torch.ones(2, 2), torch.ones(2, dtype=torch.long))
        >>> batch = next(iter(unlearn_loader(r, f, batch_size=8)))
        >>> int(batch.is_forget.sum()), tuple(batch.inputs.shape)
        (2, (8, 2))
    """
    positive_int(batch_size, "batch_size")
    dataset = UnlearnDataset(retain, forget, retain_ratio=retain_ratio, seed=seed)
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle,
        generator=generator,
        collate_fn=UnlearnCollate(collate_fn or collate_of(retain) or collate_of(forget)),
        num_workers=num_workers,
        drop_last=drop_last,
    )
