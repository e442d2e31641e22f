"""Train/eval modes of a user's module, switched for a block and restored per submodule.

``model.train(was_training)`` after a block is not a restore: it sets every submodule
to the top module's mode, so a BatchNorm the user froze in eval mode (fine-tuning) or
a dropout they disabled would come back in training mode. These context managers
record each submodule's own flag and put it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

__all__ = ["evaluating", "keeping_modes"]

M = TypeVar("M", bound=nn.Module)


@contextmanager
def keeping_modes(model: M) -> Iterator[M]:
    """Restore every submodule's train/eval mode on exit, whatever the block switched.

    Args:
        model: The module; its mode and each submodule's are recorded on entry.

    Yields:
        ``model`` itself.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # a frozen BatchNorm in a training model
        >>> with keeping_modes(net):
        ...     _ = net.train()  # e.g. to re-estimate its statistics
        ...     net[1].training
        True
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        # Pre-order: a parent's train() resets its children, which are restored after it.
        # train() rather than the flag alone, so that modules overriding it stay in step.
        for module, mode in modes:
            module.train(mode)


@contextmanager
def evaluating(model: M) -> Iterator[M]:
    """Eval mode for the block; every submodule's own mode is restored on exit.

    Gradients are untouched: combine it with :func:`torch.no_grad` for a pass
    that needs none.

    Args:
        model: The module to run in eval mode.

    Yields:
        ``model`` itself, in eval mode.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
        >>> _ = net[1].eval()  # a dropout the user disabled
        >>> with evaluating(net), torch.no_grad():
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[1].training
        (True, False)
    """
    with keeping_modes(model):
        model.eval()
        yield model
