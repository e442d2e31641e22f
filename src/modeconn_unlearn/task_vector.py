"""Task-vector negation (NegTV), a training-free unlearning baseline.

Fine-tuning the original model θ_o on the forget set gives θ_ft; the task
vector ``θ_ft - θ_o`` points towards the forget set, and subtracting it moves
away from it: ``θ_o - coef * (θ_ft - θ_o)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checkpoint import StateSource, load_checkpoint
from .cloning import clone_module
from .errors import IncompatibleModelsError, ModeConnError, listed

__all__ = ["negate_task_vector"]


def negate_task_vector(
    original: nn.Module, finetuned: StateSource, *, coef: float = 0.9
) -> nn.Module:
    """Return a new model ``θ_o - coef * (θ_ft - θ_o)`` (task-vector negation).

    Every floating-point parameter is moved; other parameters and all buffers
    (e.g. BatchNorm running statistics) are kept from ``original``, which is
    not modified.

    Args:
        original: The original model θ_o.
        finetuned: θ_ft, the original fine-tuned on the forget set: a module of
            the same architecture, a state dict (a ``"module."`` prefix is
            accepted) or a checkpoint path.
        coef: Scale of the negated task vector (``0`` returns a copy of θ_o).

    Returns:
        A new module of ``original``'s class.

    Raises:
        IncompatibleModelsError: ``finetuned`` misses parameters of ``original``,
            has keys ``original`` lacks, or differs in shape or dtype (the
            message names the keys).
        ModeConnError: ``coef`` is not a finite number.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> original, finetuned = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> negated = negate_task_vector(original, finetuned, coef=0.5)
        >>> expected = original.weight - 0.5 * (finetuned.weight - original.weight)
        >>> torch.allclose(negated.weight, expected)
        True
    """
    if not isinstance(original, nn.Module):
        raise TypeError(f"original must be an nn.Module, got {type(original).__name__}.")
    scale = float(coef)
    if not math.isfinite(scale):
        raise ModeConnError(f"coef must be a finite number, got {coef!r}.")
    tuned = load_checkpoint(finetuned)
    params = dict(original.named_parameters())
    known = set(original.state_dict())
    missing = [n for n in params if n not in tuned]
    unexpected = [n for n in tuned if n not in known]
    common = [n for n in params if n in tuned]
    shapes = [n for n in common if tuned[n].shape != params[n].shape]
    dtypes = [n for n in common if n not in shapes and tuned[n].dtype != params[n].dtype]
    problems = []
    if missing:
        problems.append(f"missing from finetuned: {listed(missing)}")
    if unexpected:
        problems.append(f"not in original: {listed(unexpected)}")
    if shapes:
        detail = ", ".join(
            f"{n!r} {tuple(tuned[n].shape)} vs {tuple(params[n].shape)}" for n in shapes[:8]
        )
        problems.append(f"shape mismatches (finetuned vs original): {detail}")
    if dtypes:
        detail = ", ".join(f"{n!r} {tuned[n].dtype} vs {params[n].dtype}" for n in dtypes[:8])
        problems.append(f"dtype mismatches (finetuned vs original): {detail}")
    if problems:
        raise IncompatibleModelsError(
            "finetuned does not match original: "
            + "; ".join(problems)
            + ". Pass the original model fine-tuned on the forget set (same architecture)."
        )
    negated = clone_module(original)
    with torch.no_grad():
        for name, p in negated.named_parameters():
            if p.is_floating_point():
                theta_o = params[name].detach()
                delta = tuned[name].to(device=p.device) - theta_o
                p.copy_(theta_o - scale * delta)
    return negated
