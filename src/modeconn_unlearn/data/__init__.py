"""Data the library reads: datasets, loaders and batches, and forget/retain splits.

Unlearning needs two sets: the *forget set* D_f whose influence is removed and
the *retain set* D_r whose knowledge is kept. :func:`forget_retain_split` builds
them from any map-style dataset returning ``(x, y)``; :func:`unlearn_loader`
mixes them into one stream of :class:`UnlearnBatch` batches, where ``is_forget``
tells each objective which samples to learn and which to unlearn.

Functions elsewhere in the library that take "data" accept either a
:class:`~torch.utils.data.DataLoader` or a map-style
:class:`~torch.utils.data.Dataset`; :func:`as_loader` and :func:`as_dataset`
implement that convention; token sequences of different lengths are padded by
:class:`PadCollator`.
"""

from .padding import IGNORE_INDEX, PadCollator
from .samples import (
    DEFAULT_EVAL_BATCH_SIZE,
    MapDataset,
    UnlearnBatch,
    as_dataset,
    as_loader,
    move_to_device,
    read_sample,
    stack_collate,
    unpack_batch,
)
from .splits import (
    UnlearnCollate,
    UnlearnDataset,
    collate_of,
    collate_unlearn,
    forget_retain_split,
    unlearn_loader,
)
from .subsets import seeded_order, seeded_subset

__all__ = [
    "DEFAULT_EVAL_BATCH_SIZE",
    "IGNORE_INDEX",
    "MapDataset",
    "PadCollator",
    "UnlearnBatch",
    "UnlearnCollate",
    "UnlearnDataset",
    "as_dataset",
    "as_loader",
    "collate_of",
    "collate_unlearn",
    "forget_retain_split",
    "move_to_device",
    "read_sample",
    "seeded_order",
    "seeded_subset",
    "stack_collate",
    "unlearn_loader",
    "unpack_batch",
]
