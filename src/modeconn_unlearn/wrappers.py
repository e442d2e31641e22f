"""The user's module inside the wrappers that training puts around it.

``DistributedDataParallel`` keeps the module as ``.module`` and ``torch.compile``
as ``._orig_mod``; they nest in either order. A state dict saved through them
carries their key prefixes instead, which
:func:`~modeconn_unlearn.checkpoint.load_checkpoint` removes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["unwrap"]


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
