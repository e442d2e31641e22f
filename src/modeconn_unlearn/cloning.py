"""Deep copies of user modules that survive hook-based reparametrisations.

``copy.deepcopy`` refuses a module that holds a non-leaf tensor as a plain
attribute, which is what the hook-based ``torch.nn.utils.spectral_norm`` and
``weight_norm`` leave behind after a forward pass with gradients. Such a
tensor is recomputed from the module's parameters by the next forward, so the
copy receives it detached.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from torch import Tensor, nn

__all__ = ["clone_module"]

M = TypeVar("M", bound=nn.Module)


def clone_module(module: M) -> M:
    """A deep copy of ``module``; non-leaf tensor attributes are copied detached.

    Example:
        >>> import torch
        >>> layer = torch.nn.utils.spectral_norm(nn.Linear(3, 3))
        >>> layer(torch.randn(2, 3)).sum().backward()
        >>> copied = clone_module(layer)
        >>> torch.equal(copied.weight_orig, layer.weight_orig), copied.weight.grad_fn is None
        (True, True)
    """
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)
