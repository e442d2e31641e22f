"""Padding token sequences into batches: :class:`PadCollator`.

Language-model examples have different lengths; :class:`PadCollator` pads them on
the right (ids with a pad id, attention mask with 0, labels with ``-100``) into one
batch. :class:`~modeconn_unlearn.tasks.CausalLMTask` pads with it when the library
builds a loader from a dataset of such examples, and
:mod:`modeconn_unlearn.lm` batches its question-answer data with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import positive_int
from ..errors import ModeConnError
from .samples import UnlearnBatch

__all__ = ["IGNORE_INDEX", "PadCollator"]

#: Label value of tokens that are not scored (prompt, padding), as in Hugging Face.
IGNORE_INDEX = -100


def _item_parts(item: Any, index: int) -> tuple[Tensor, Tensor | None, Tensor, bool | None]:
    """``(input_ids, attention_mask, labels, is_forget)`` of one item."""
    flag: bool | None = None
    if isinstance(item, Mapping):
        inputs = item
        labels = item.get("labels")
        if "is_forget" in item:
            flag = bool(item["is_forget"])
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        inputs, labels = item[0], item[1]
        if len(item) == 3:
            flag = bool(item[2])
    else:
        raise ModeConnError(
            f"item {index} is a {type(item).__name__}; PadCollator reads dicts with "
            "'input_ids' and 'labels', (inputs, labels) or (inputs, labels, is_forget)."
        )
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - {"input_ids", "attention_mask", "labels", "is_forget"})
        if unknown:
            raise ModeConnError(
                f"item {index} has inputs {unknown} that PadCollator does not know how to pad; "
                "it pads 'input_ids', 'attention_mask' and 'labels' only."
            )
        if "input_ids" not in inputs:
            raise ModeConnError(f"item {index} has no 'input_ids'.")
        ids = torch.as_tensor(inputs["input_ids"])
        mask = inputs.get("attention_mask")
        mask = None if mask is None else torch.as_tensor(mask)
    else:
        ids, mask = torch.as_tensor(inputs), None
    if labels is None:
        raise ModeConnError(f"item {index} has no labels; lm.QADataset items carry them.")
    labels = torch.as_tensor(labels)
    if ids.ndim != 1 or labels.shape != ids.shape or (mask is not None and mask.shape != ids.shape):
        raise ModeConnError(
            f"item {index}: input_ids, attention_mask and labels must be 1-D of one length, "
            f"got {tuple(ids.shape)}, {None if mask is None else tuple(mask.shape)} and "
            f"{tuple(labels.shape)}."
        )
    return ids, mask, labels, flag


class PadCollator:
    """Pad token sequences on the right into one batch.

    Items may be dicts (``input_ids``, optional ``attention_mask``,
    ``labels``, optional ``is_forget``), ``(inputs, labels)`` or
    ``(inputs, labels, is_forget)`` with ``inputs`` a dict or a 1-D id tensor
    (the items of :class:`~modeconn_unlearn.lm.QADataset` and of
    :class:`~modeconn_unlearn.data.UnlearnDataset` over one). Padding uses
    ``pad_token_id`` for ids, 0 for the attention mask and ``-100`` for labels.

    Returns a dict ``{"input_ids", "attention_mask", "labels"}`` (the Hugging
    Face form, which ``CausalLMTask`` and ``transformers.Trainer`` read), or
    :class:`~modeconn_unlearn.data.UnlearnBatch` ``(inputs, labels, is_forget)``
    when the items carry forget flags (with ``as_dict=True``: the dict with an
    ``"is_forget"`` entry, which tasks read the same way and which
    ``transformers.Trainer`` can move to its device).

    Args:
        pad_token_id: The id written into padded positions.
        pad_to_multiple_of: Round the padded length up to a multiple of this.
        as_dict: Return forget-flagged batches as a dict, not an ``UnlearnBatch``.

    Example:
        >>> collate = PadCollator(pad_token_id=0)
        >>> batch = collate([(torch.tensor([5, 6]), torch.tensor([-100, 6])),
        ...                  (torch.tensor([7]), torch.tensor([7]))])
        >>> batch["input_ids"].tolist(), batch["labels"].tolist()
        ([[5, 6], [7, 0]], [[-100, 6], [7, -100]])
    """

    def __init__(
        self, pad_token_id: int = 0, *, pad_to_multiple_of: int | None = None, as_dict: bool = False
    ) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ModeConnError(f"pad_token_id must be an int, got {pad_token_id!r}.")
        positive_int(pad_to_multiple_of, "pad_to_multiple_of", optional=True)
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.as_dict = bool(as_dict)

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor] | UnlearnBatch:
        """Collate ``items`` into one padded batch."""
        if len(items) == 0:
            raise ModeConnError("PadCollator got an empty list of items.")
        parts = [_item_parts(item, i) for i, item in enumerate(items)]
        flags = [p[3] for p in parts]
        if len({f is None for f in flags}) > 1:
            raise ModeConnError("some items carry is_forget flags and some do not; mix neither.")
        length = max(len(p[0]) for p in parts)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(parts)
        ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for row, (item_ids, item_mask, item_labels, _) in enumerate(parts):
            size = len(item_ids)
            ids[row, :size] = item_ids
            mask[row, :size] = 1 if item_mask is None else item_mask
            labels[row, :size] = item_labels
        inputs = {"input_ids": ids, "attention_mask": mask}
        if flags[0] is None:
            return {**inputs, "labels": labels}
        is_forget = torch.tensor(flags, dtype=torch.bool)
        if self.as_dict:
            return {**inputs, "labels": labels, "is_forget": is_forget}
        return UnlearnBatch(inputs, labels, is_forget)

    def __repr__(self) -> str:
        return f"PadCollator(pad_token_id={self.pad_token_id})"
