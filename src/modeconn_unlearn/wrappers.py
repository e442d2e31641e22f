"""The user's module as the library finds it: inside training's wrappers, and on its device.

``DistributedDataParallel`` keeps the module as ``.module`` and ``torch.compile``
as ``._orig_mod``; they nest in either order. A state dict saved through them
carries their key prefixes instead, which
:func:`~modeconn_unlearn.checkpoint.load_checkpoint` removes.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["module_device", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside any nesting of ``DistributedDataParallel`` and ``torch.compile``.

    Example:
        >>> import torch
        >>> layer = nn.Linear(2, 2)
        >>> unwrap(torch.compile(layer)) is layer
        True
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
        else:
            return model


def module_device(model: nn.Module) -> torch.device:
    """The device of the first parameter (or buffer) of ``model``; CPU if it has none.

    Example:
        >>> module_device(nn.Linear(2, 2)), module_device(nn.ReLU())
        (device(type='cpu'), device(type='cpu'))
    """
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
