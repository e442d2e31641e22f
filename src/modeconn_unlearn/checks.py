"""Checks of user arguments, each with one message wherever the argument is taken.

A bool is refused where a number is expected: ``True`` is an ``int`` to Python,
but ``epochs=True`` is a mistake, not one epoch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModeConnError, listed

__all__ = ["as_float", "check_percentages", "positive_int", "validate_mask"]


def positive_int(value: Any, name: str, *, optional: bool = False, minimum: int = 1) -> None:
    """Refuse anything but an integer ``>= minimum`` (and ``None`` when ``optional``).

    Args:
        value: The argument; Python and numpy integers pass, floats and bools do not.
        name: The argument's name, for the message.
        optional: Whether ``None`` is allowed.
        minimum: The smallest allowed value.

    Raises:
        ModeConnError: ``value`` is not such an integer.

    Example:
        >>> positive_int(3, "epochs")
        >>> try:
        ...     positive_int(0, "epochs")
        ... except ValueError as error:
        ...     print(error)
        epochs must be a positive integer, got 0.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        wanted += " or None" if optional else ""
        raise ModeConnError(f"{name} must be {wanted}, got {value!r}.")


def as_float(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``value`` as a finite float (``> 0`` or ``>= 0`` when asked), or a :class:`ModeConnError`.

    Args:
        value: A number or a string of one; a bool is refused.
        name: The argument's name, for the message.
        positive: Require ``> 0``.
        nonnegative: Require ``>= 0``.

    Returns:
        ``float(value)``.

    Raises:
        ModeConnError: ``value`` is not a finite real number in the asked range.

    Example:
        >>> as_float("0.5", "beta")
        0.5
    """
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ModeConnError(f"{name} must be a real number, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(result):
        raise ModeConnError(f"{name} must be a finite number, got {value!r}.")
    if positive and result <= 0.0:
        raise ModeConnError(f"{name} must be > 0, got {value!r}.")
    if nonnegative and result < 0.0:
        raise ModeConnError(f"{name} must be >= 0, got {value!r}.")
    return result


def check_percentages(values: Mapping[str, float]) -> None:
    """Refuse accuracies given as fractions: all <= 1 while one is > 0.

    Accuracies in this library are percentages in [0, 100]; ``0.99`` for 99 %
    would silently mean 0.99 %.

    Raises:
        ModeConnError: Every value is <= 1 and one is > 0; the message suggests
            the values times 100.

    Example:
        >>> check_percentages({"retain_target": 99.0, "forget_target": 0.0})
        >>> try:
        ...     check_percentages({"retain_target": 0.99, "forget_target": 0.92})
        ... except ValueError as error:
        ...     print(str(error).split(": ")[-1])
        did you mean 99.0 and 92.0?
    """
    accuracies = {name: float(value) for name, value in values.items()}
    if all(v <= 1.0 for v in accuracies.values()) and any(v > 0.0 for v in accuracies.values()):
        given = ", ".join(f"{name}={value:g}" for name, value in accuracies.items())
        meant = " and ".join(f"{100.0 * value:.1f}" for value in accuracies.values())
        raise ModeConnError(
            f"{given} look like fractions, but accuracies are percentages in [0, 100]: "
            f"did you mean {meant}?"
        )


def validate_mask(mask: Mapping[str, Tensor | bool], model: nn.Module) -> dict[str, Tensor]:
    """Check ``mask`` against ``model`` and return it complete, with bool tensors.

    Args:
        mask: ``{param_name: bool tensor | bool}``; ``True`` marks trainable entries.
        model: The model the mask applies to.

    Returns:
        ``{param_name: bool tensor}`` for **every** parameter of ``model``, on the
        parameter's device; parameters absent from ``mask`` are all ``False``.

    Raises:
        ModeConnError: If the mask names unknown parameters, or an entry is not a
            bool (tensor) of the parameter's shape.

    Example:
        >>> from torch import nn
        >>> full = validate_mask({"weight": True}, nn.Linear(2, 2))
        >>> bool(full["weight"].all()), bool(full["bias"].any())
        (True, False)
    """
    if not isinstance(mask, Mapping):
        raise ModeConnError(
            f"a mask is a dict {{param_name: bool tensor}}, got {type(mask).__name__}."
        )
    params = dict(model.named_parameters())
    canonical = {id(p): n for n, p in params.items()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    unknown = [n for n in mask if n not in aliases]
    if unknown:
        raise ModeConnError(
            f"the mask names parameters the model does not have: {listed(unknown)}; valid "
            f"names include {listed(list(params))}. Build masks from model.named_parameters()."
        )
    full: dict[str, Tensor] = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for n, value in mask.items():
        target = aliases[n]
        p = params[target]
        if isinstance(value, bool):
            full[target] = torch.full_like(p, value, dtype=torch.bool)
            continue
        if not isinstance(value, Tensor) or value.dtype != torch.bool:
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise ModeConnError(
                f"mask entry {n!r} must be a bool or a bool tensor, got {kind}; use .bool()."
            )
        if value.shape != p.shape:
            raise ModeConnError(
                f"mask entry {n!r} has shape {tuple(value.shape)} but the parameter has shape "
                f"{tuple(p.shape)}."
            )
        full[target] = value.detach().to(p.device)
    return full
