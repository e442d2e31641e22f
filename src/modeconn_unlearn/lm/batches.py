"""Batches of question-answer examples: padding, loaders, and retain/forget mixes.

:class:`~modeconn_unlearn.data.PadCollator` (re-exported here) pads tokenized
examples (``input_ids``, ``attention_mask``, ``labels`` with ``-100``) into batches;
:func:`as_lm_loader` batches one dataset; :func:`lm_unlearn_loader` mixes retain and
forget examples into :class:`~modeconn_unlearn.data.UnlearnBatch` batches for
``mcu.unlearn`` and ``mcu.fit_curve``.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from ..checks import positive_int
from ..data import PadCollator, as_dataset, unlearn_loader
from ..errors import ModeConnError
from .data import qa_source

__all__ = ["PadCollator", "as_lm_loader", "lm_unlearn_loader"]


def _pad_id_of(data: Any) -> int:
    try:
        return qa_source(data)[0].pad_token_id
    except ModeConnError:
        return 0


def as_lm_loader(data: Any, *, batch_size: int = 32) -> DataLoader[Any]:
    """``data`` as a loader of padded batches: a ``DataLoader`` as is, a dataset wrapped.

    A dataset (e.g. a :class:`QADataset` or a ``Subset`` of one) is wrapped in
    order (no shuffling) with a :class:`PadCollator`.

    Raises:
        ModeConnError: ``data`` is empty or not a map-style dataset.

    Example:
        >>> from modeconn_unlearn.lm import QADataset, train_tokenizer
        >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
        >>> ds = QADataset([("Who ?", "Ana"), ("Who ?", "Bo")], tok)
        >>> next(iter(as_lm_loader(ds)))["input_ids"].shape[0]
        2
    """
    if isinstance(data, DataLoader):
        return data
    positive_int(batch_size, "batch_size")
    dataset = as_dataset(data, "data")
    if len(dataset) == 0:
        raise ModeConnError("data is empty (0 examples).")
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=int(batch_size),
        shuffle=False,
        collate_fn=PadCollator(_pad_id_of(data)),
    )


def lm_unlearn_loader(
    retain: Any,
    forget: Any,
    *,
    batch_size: int = 16,
    retain_ratio: float = 1.0,
    shuffle: bool = True,
    seed: int = 0,
    pad_token_id: int | None = None,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A loader of padded :class:`~modeconn_unlearn.data.UnlearnBatch` batches for LMs.

    :func:`~modeconn_unlearn.data.unlearn_loader` (same order from the same
    ``seed``) with a :class:`PadCollator`, so variable-length examples batch:
    ``UnlearnBatch(inputs={"input_ids", "attention_mask"}, targets=labels, is_forget)``.

    Args:
        retain: Retain examples (``QADataset``, a ``Subset`` of one, any dataset
            of ``(inputs, labels)``) or ``None``.
        forget: Forget examples (same) or ``None``.
        batch_size: Examples per batch.
        retain_ratio: Fraction in (0, 1] of the retain set used (a fixed subset).
        shuffle: Shuffle every epoch.
        seed: Seed of the order and of the retain subsample.
        pad_token_id: Padding id; defaults to the one of the QADataset behind
            ``retain`` (or ``forget``), else 0.
        drop_last: Drop the last incomplete batch.

    Example:
        >>> from torch.utils.data import Subset
        >>> from modeconn_unlearn.lm import QADataset, train_tokenizer
        >>> tok = train_tokenizer(["Question: Who ? Answer: Ana Bo"])
        >>> ds = QADataset([("Who ?", "Ana"), ("Who ?", "Bo")], tok)
        >>> batch = next(iter(lm_unlearn_loader(Subset(ds, [0]), Subset(ds, [1]), batch_size=2)))
        >>> sorted(batch.is_forget.tolist()), sorted(batch.inputs)
        ([False, True], ['attention_mask', 'input_ids'])
    """
    if pad_token_id is None:
        pad_token_id = _pad_id_of(retain) if retain is not None else _pad_id_of(forget)
    return unlearn_loader(
        retain,
        forget,
        batch_size=batch_size,
        retain_ratio=retain_ratio,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        collate_fn=PadCollator(pad_token_id),
    )


# --------------------------------------------------------------------------- splits
