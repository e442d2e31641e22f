"""Reading the data a user gives: datasets, loaders, samples and batches.

Functions elsewhere in the library that take "data" accept either a
:class:`~torch.utils.data.DataLoader` or a map-style
:class:`~torch.utils.data.Dataset`; :func:`as_loader` and :func:`as_dataset`
implement that convention. :func:`read_sample` reads one ``(x, y)`` item (or a
dict with ``labels``), :class:`UnlearnBatch` is the batch of the unlearning
loaders and :func:`move_to_device` moves nested inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from typing_extensions import deprecated

from ..errors import ModeConnError

__all__ = [
    "DEFAULT_EVAL_BATCH_SIZE",
    "MapDataset",
    "UnlearnBatch",
    "as_dataset",
    "as_loader",
    "move_to_device",
    "read_sample",
    "stack_collate",
    "unpack_batch",
]

#: Batch size used when a bare ``Dataset`` is given where a loader is expected.
DEFAULT_EVAL_BATCH_SIZE = 256


class UnlearnBatch(NamedTuple):
    """A batch mixing retain and forget samples, and a batch as a task reads it.

    The unlearning loaders fill all three fields; a task's ``split`` reads any batch
    into one, with ``None`` for what the batch does not carry.

    Attributes:
        inputs: The model inputs (a tensor, or whatever the dataset's collate gives).
        targets: The labels (``(N,)`` class labels, ``(N, L)`` token labels), or
            ``None`` for an unlabelled batch.
        is_forget: Boolean tensor, shape ``(N,)``; ``True`` marks forget samples
            (``None`` for a batch that is not split into retain and forget).

    Example:
        >>> import torch
        >>> b = UnlearnBatch(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([True, False]))
        >>> int(b.is_forget.sum())
        1
    """

    inputs: Any
    targets: Tensor | None
    is_forget: Tensor | None


class MapDataset(Protocol):
    """Anything indexable with a length: a map-style dataset."""

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


class _EmptyDataset(Dataset[Any]):
    """A dataset with no samples (stands for a part an objective does not use)."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> Any:
        raise IndexError(f"index {index} out of range for an empty dataset")


def _refuse_tensor_columns(data: Any, name: str) -> None:
    """Refuse ``(X, Y)``: a sequence of whole columns reads as a dataset of one sample each."""
    parts = data if isinstance(data, (tuple, list)) else ()
    if (
        len(parts) >= 2
        and all(isinstance(part, Tensor) and part.ndim >= 1 for part in parts)
        # Samples of one dataset share shape and dtype; columns such as (X, Y) do not.
        and len({(part.shape, part.dtype) for part in parts}) > 1
    ):
        shapes = ", ".join(str(tuple(part.shape)) for part in parts)
        raise ModeConnError(
            f"{name} is a {type(data).__name__} of {len(parts)} tensors of shapes {shapes}, "
            f"which would be read as {len(parts)} samples; wrap the tensors in a dataset: "
            "torch.utils.data.TensorDataset(X, Y)."
        )


def as_dataset(data: Any, name: str = "data") -> MapDataset:
    """Return the map-style dataset behind ``data``.

    Args:
        data: A map-style ``Dataset``, a ``DataLoader`` over one (its dataset is
            used; its batching is not), any sequence of ``(x, y)`` pairs, or
            ``None`` (an empty dataset).
        name: How to call ``data`` in error messages.

    Returns:
        A map-style dataset.

    Raises:
        ModeConnError: If ``data`` is an iterable-style dataset, tensors of whole
            columns such as ``(X, Y)`` (wrap them in a ``TensorDataset``), or not a
            dataset at all.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
        >>> as_dataset(DataLoader(ds, batch_size=2)) is ds
        True
    """
    if data is None:
        return _EmptyDataset()
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, IterableDataset):
        raise ModeConnError(
            f"{name} is an IterableDataset; a map-style dataset (with __getitem__ and "
            "__len__) is needed to mix retain and forget samples. Materialise it, e.g. "
            "as a TensorDataset."
        )
    _refuse_tensor_columns(data, name)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data  # type: ignore[no-any-return]
    raise ModeConnError(
        f"{name} must be a map-style Dataset or a DataLoader over one, got {type(data).__name__}."
    )


def stack_collate(items: list[Any]) -> Any:
    """PyTorch's ``default_collate``, with a one-line fix when samples differ in size.

    Token sequences of different lengths cannot be stacked; the error then says
    to pad them (``task=CausalLMTask()``, whose ``collate`` pads, or a
    ``DataLoader`` with ``collate_fn=PadCollator(...)``) instead of torch's
    "stack expects each tensor to be equal size" deep inside the loader.

    Raises:
        ModeConnError: Samples of different sizes.

    Example:
        >>> stack_collate([torch.zeros(2), torch.ones(2)]).shape
        torch.Size([2, 2])
        >>> stack_collate([torch.zeros(2), torch.ones(3)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modeconn_unlearn.errors.ModeConnError: samples of different sizes cannot be batched ...
    """
    try:
        return default_collate(items)
    except RuntimeError as error:
        if "equal size" not in str(error):
            raise
        raise ModeConnError(
            f"samples of different sizes cannot be batched ({error}); for token sequences "
            "pass task=CausalLMTask() (its collate pads them), or a DataLoader with "
            "collate_fn=modeconn_unlearn.data.PadCollator(pad_token_id)."
        ) from None


def as_loader(
    data: Any,
    *,
    name: str = "data",
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """Return ``data`` as a loader: a ``DataLoader`` as is, a ``Dataset`` wrapped.

    Args:
        data: A ``DataLoader`` (returned unchanged) or a map-style ``Dataset``
            (wrapped with ``shuffle=False``).
        name: How error messages call ``data``.
        batch_size: Batch size of the wrapping loader.
        collate_fn: Batches a wrapped dataset's samples, e.g. a task's
            ``collate`` (:func:`~modeconn_unlearn.tasks.task_collate`); default
            :func:`stack_collate`. A ``DataLoader`` keeps its own.

    Returns:
        A ``DataLoader``.

    Raises:
        TypeError: If ``data`` is neither.
        ModeConnError: If it holds no samples, or is tensors of whole columns
            such as ``(X, Y)`` (wrap them in a ``TensorDataset``).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.zeros(300, 2), torch.zeros(300, dtype=torch.long))
        >>> len(as_loader(ds))
        2
    """
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, (Dataset, Sequence)) and not isinstance(data, (str, bytes)):
        _refuse_tensor_columns(data, name)
        loader = DataLoader(
            data,  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=False,
            collate_fn=collate_fn or stack_collate,
        )
    else:
        raise TypeError(
            f"{name} must be a DataLoader or a map-style Dataset yielding (inputs, targets), got "
            f"{type(data).__name__}; wrap tensors as torch.utils.data.TensorDataset(x, y)."
        )
    if hasattr(loader.dataset, "__len__") and len(loader.dataset) == 0:
        raise ModeConnError(f"{name} is empty (0 samples): pass a loader with some data.")
    return loader


def read_sample(item: Any) -> tuple[Any, Any]:
    """Return ``(inputs, target)`` of ONE dataset item (not a batch).

    Batches are read by a task's ``split`` (see :mod:`modeconn_unlearn.tasks`);
    this reads the items of the map-style datasets that :class:`UnlearnDataset`
    mixes: ``(x, y, ...)`` tuples, or dicts of keyword inputs with a
    ``"labels"`` entry (language-model examples), whose other entries are the
    inputs.

    Args:
        item: One item of a dataset.

    Returns:
        The pair ``(inputs, target)``.

    Raises:
        ModeConnError: If the item is neither.

    Example:
        >>> import torch
        >>> read_sample((torch.zeros(3), 1))[1]
        1
        >>> sorted(read_sample({"input_ids": torch.zeros(4), "labels": torch.zeros(4)})[0])
        ['input_ids']
    """
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, Mapping) and "labels" in item:
        inputs = {k: v for k, v in item.items() if k != "labels"}
        if inputs:
            return inputs, item["labels"]
    raise ModeConnError(
        f"a dataset item must be (inputs, target, ...) or a dict with a 'labels' entry and model "
        f"inputs, got {type(item).__name__}; use a dataset whose items are (x, y) pairs."
    )


@deprecated(
    "unpack_batch is deprecated and will be removed in 0.3.0: read batches with "
    "task.split(batch) (modeconn_unlearn.tasks)"
)
def unpack_batch(batch: Any) -> tuple[Any, Tensor]:
    """Deprecated (removed in 0.3.0): ``(inputs, targets)`` of a batch; use ``task.split(batch)``.

    Kept as an alias of :func:`read_sample` for code written against earlier versions.
    """
    inputs, targets = read_sample(batch)
    return inputs, targets


def move_to_device(obj: Any, device: torch.device | str) -> Any:
    """Move tensors inside ``obj`` (tensor, mapping, tuple or list) to ``device``.

    Args:
        obj: A tensor or a (nested) container of tensors; other values pass through.
        device: The target device.

    Returns:
        The same structure with tensors on ``device``.

    Example:
        >>> import torch
        >>> move_to_device({"x": torch.zeros(1)}, "cpu")["x"].device.type
        'cpu'
    """
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, UnlearnBatch):
        return UnlearnBatch(*(move_to_device(item, device) for item in obj))
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to_device(v, device) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to_device(item, device) for item in obj)
    return obj
