"""Parameter masks: which weights an unlearning method may change.

A mask is a plain ``dict[str, torch.Tensor]`` of bool tensors keyed by
``model.named_parameters()`` names, each of its parameter's shape; ``True``
marks a trainable entry. The same mask applies to a plain model
(``unlearn(..., mask=mask)``, e.g. SalUn) and to a curve
(``CurveModel(..., mask=mask)``, MCU); parameters a mask does not name are
frozen.

Conventions: ``sparsity`` is the fraction of entries that are **not**
trainable (``sparsity=0.5``: half of the entries trainable); ``k`` in
:func:`layer_mask` is the fraction of entries that **are** trainable.
Gradients are taken in eval mode (BatchNorm running statistics, no dropout)
with :func:`torch.autograd.grad`, so the model's ``.grad`` fields and its
train/eval mode are left as they were.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .checks import validate_mask
from .curve import CurveModel
from .data import as_loader
from .errors import ModeConnError, listed
from .modes import evaluating
from .progress import progress_bar
from .tasks import Task, resolve_task, task_collate

__all__ = [
    "layer_mask",
    "load_mask",
    "random_mask",
    "saliency_mask",
    "save_mask",
    "validate_mask",
]

logger = logging.getLogger(__name__)

Mask = dict[str, Tensor]


def _check_plain_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if isinstance(model, CurveModel):
        raise ModeConnError(
            "masks are computed on a plain model, not on a CurveModel: pass the original model "
            "(the curve's start), then CurveModel(model, ..., mask=mask)."
        )
    if not any(True for _ in model.parameters()):
        raise ModeConnError("the model has no parameters to mask.")
    return model


def _fraction(value: float, name: str, *, closed_high: bool) -> float:
    result = float(value)
    high_ok = result <= 1.0 if closed_high else result < 1.0
    if not (math.isfinite(result) and result >= 0.0 and high_ok):
        interval = "[0, 1]" if closed_high else "[0, 1)"
        raise ModeConnError(f"{name} must lie in {interval}, got {value!r}.")
    return result


def _summed_gradients(
    model: nn.Module, data: Any, name: str, task: Task, *, progress: bool
) -> dict[str, Tensor]:
    """Σ over all samples of ∇ (per-sample task loss), per trainable parameter.

    Frozen parameters (``requires_grad=False``, e.g. the base of a LoRA model) are
    left out: masks never make them trainable.
    """
    params = dict(model.named_parameters())
    differentiable = [n for n, p in params.items() if p.requires_grad]
    grads = {n: torch.zeros_like(params[n]) for n in differentiable}
    if not differentiable:
        raise ModeConnError("no parameter of the model requires grad; nothing to score.")
    if data is None:
        raise ModeConnError(f"{name} is None; masks need at least one sample of it.")
    device = next(iter(params.values())).device
    seen = 0
    with evaluating(model):
        loader = as_loader(data, name=name, collate_fn=task_collate(task))
        for batch in progress_bar(progress, loader, desc=f"mask: {name}", leave=False):
            read = task.split(batch, device=device)
            if read.targets is None:
                raise ModeConnError(
                    f"{name} yields batches without targets; masks need (inputs, targets)."
                )
            out = task(model, read.inputs, read.targets)
            found = torch.autograd.grad(
                out.loss.sum(), [params[n] for n in differentiable], allow_unused=True
            )
            for n, g in zip(differentiable, found, strict=True):
                if g is not None:
                    grads[n] += g
            seen += len(out)
    if seen == 0:
        raise ModeConnError(f"{name} is empty; masks need at least one sample.")
    return grads


def saliency_mask(
    model: nn.Module,
    forget_data: Any,
    *,
    sparsity: float = 0.5,
    task: Task | None = None,
    progress: bool = True,
) -> Mask:
    """SalUn's weight saliency mask: the entries with the largest forget-loss gradient.

    Scores every parameter entry by ``|Σ ∇(-CE)|``, the magnitude of the
    gradient of the forgetting loss summed over the whole forget set (the sum
    over samples, so the mask does not depend on the batch size), and keeps the
    entries with the **largest** scores trainable, globally across all tensors.
    ``sparsity`` is the fraction of entries that are **not** trainable: exactly
    ``total - round(sparsity * total)`` entries are ``True``. Ties are broken
    by position (earlier parameter, lower flat index first).

    Args:
        model: The original (plain) model.
        forget_data: Forget set as a ``DataLoader`` or map-style ``Dataset`` of ``(x, y)``.
        sparsity: Fraction in [0, 1) of entries frozen (``0.5``: half trainable).
        task: Gives the per-sample loss whose gradient is scored (default:
            classification cross-entropy).
        progress: Show a bar over the batches of the pass.

    Returns:
        ``{param_name: bool tensor}`` for every parameter; frozen ones
        (``requires_grad=False``) are all ``False`` and do not count in the fractions.

    Raises:
        ModeConnError: If ``sparsity`` is outside [0, 1), the forget set is empty,
            or ``model`` is a CurveModel.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Linear(4, 3)
        >>> forget = TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
        >>> mask = saliency_mask(model, forget, sparsity=0.75)
        >>> sum(int(m.sum()) for m in mask.values())  # 15 entries, 11 frozen
        4
    """
    model = _check_plain_model(model)
    sparsity = _fraction(sparsity, "sparsity", closed_high=False)
    grads = _summed_gradients(
        model, forget_data, "forget_data", resolve_task(task), progress=progress
    )
    scores = torch.cat([g.abs().reshape(-1) for g in grads.values()])
    total = scores.numel()
    keep = total - round(sparsity * total)
    mask = _first_entries(torch.argsort(scores, descending=True, stable=True), keep, grads)
    logger.info("saliency_mask: %d of %d entries trainable", keep, total)
    return _with_frozen(mask, model)


def layer_mask(
    model: nn.Module,
    retain_data: Any,
    forget_data: Any,
    *,
    k: float = 0.5,
    kr: float = 0.0,
    task: Task | None = None,
    progress: bool = True,
) -> Mask:
    """MCU's per-tensor mask: whole parameter tensors that matter for forgetting.

    Each parameter tensor gets two scores, ``‖Σ g‖₂ / numel`` with ``g`` the
    gradient of the retain cross-entropy (retain score) and of the forget
    ``-CE`` (forget score), summed over all samples of each set. Then:

    1. walking the tensors by decreasing retain score, exclude them while fewer
       than ``kr`` of all parameter entries are excluded (the tensor that
       crosses the threshold is excluded too);
    2. walking the remaining tensors by decreasing forget score, select them
       while fewer than ``k`` of all entries are selected (the crossing tensor
       is selected too, so at least ``k`` is covered unless the excluded
       tensors make that impossible).

    Selected tensors are entirely ``True``, the others entirely ``False``; ties
    keep the ``named_parameters()`` order.

    Args:
        model: The original (plain) model.
        retain_data: Retain set (``DataLoader`` or map-style ``Dataset`` of ``(x, y)``).
        forget_data: Forget set (same).
        k: Fraction in (0, 1] of parameter entries to make trainable.
        kr: Fraction in [0, 1) of entries, most important to the retain set,
            never made trainable.
        task: Gives the per-sample losses (default: classification cross-entropy).
        progress: Show a bar over the batches of each pass.

    Returns:
        ``{param_name: bool tensor}`` for every parameter; frozen ones
        (``requires_grad=False``) are all ``False`` and do not count in the fractions.

    Raises:
        ModeConnError: If ``k`` or ``kr`` is out of range, ``kr`` excludes every
            tensor, a data set is empty, or ``model`` is a CurveModel.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
        >>> mask = layer_mask(model, data, data, k=0.5)
        >>> all(bool(m.all()) or not bool(m.any()) for m in mask.values())  # whole tensors
        True
        >>> sum(int(m.sum()) for m in mask.values()) >= 0.5 * sum(m.numel() for m in mask.values())
        True
    """
    model = _check_plain_model(model)
    k = _fraction(k, "k", closed_high=True)
    if k == 0.0:
        raise ModeConnError("k must be > 0: a mask with no trainable entry trains nothing.")
    kr = _fraction(kr, "kr", closed_high=False)
    reader = resolve_task(task)
    retain_grads = _summed_gradients(model, retain_data, "retain_data", reader, progress=progress)
    forget_grads = _summed_gradients(model, forget_data, "forget_data", reader, progress=progress)
    numel = {n: g.numel() for n, g in retain_grads.items()}
    total = sum(numel.values())
    names = list(retain_grads)
    retain_score = {n: float(torch.linalg.vector_norm(retain_grads[n])) / numel[n] for n in names}
    forget_score = {n: float(torch.linalg.vector_norm(forget_grads[n])) / numel[n] for n in names}

    def cover(candidates: list[str], score: dict[str, float], share: float) -> tuple[set[str], int]:
        """By decreasing score, the tensors taken while fewer than ``share`` of all entries are."""
        taken: set[str] = set()
        covered = 0
        for n in sorted(candidates, key=lambda n: -score[n]):
            if covered >= share * total:
                break
            taken.add(n)
            covered += numel[n]
        return taken, covered

    excluded, _ = cover(names, retain_score, kr)
    selected, covered = cover([n for n in names if n not in excluded], forget_score, k)
    if not selected:
        raise ModeConnError(
            f"kr={kr} excludes every parameter tensor, so nothing would be trainable; lower kr."
        )
    logger.info(
        "layer_mask: %d of %d tensors trainable (%.3f of the entries), %d excluded for retain",
        len(selected),
        len(names),
        covered / total,
        len(excluded),
    )
    mask = {n: torch.full_like(retain_grads[n], n in selected, dtype=torch.bool) for n in names}
    return _with_frozen(mask, model)


def random_mask(model: nn.Module, *, sparsity: float, seed: int = 0) -> Mask:
    """A uniformly random element-wise mask (a baseline for the saliency masks).

    Exactly ``total - round(sparsity * total)`` entries, drawn from ``seed``
    without replacement over all parameters, are ``True`` (trainable).

    Args:
        model: The model whose parameters are masked.
        sparsity: Fraction in [0, 1) of entries frozen.
        seed: Seed of the draw.

    Returns:
        ``{param_name: bool tensor}`` for every parameter; frozen ones
        (``requires_grad=False``) are all ``False`` and do not count in the fractions.

    Raises:
        ModeConnError: If ``sparsity`` is outside [0, 1).

    Example:
        >>> from torch import nn
        >>> mask = random_mask(nn.Linear(10, 10), sparsity=0.9, seed=0)
        >>> sum(int(m.sum()) for m in mask.values())
        11
    """
    model = _check_plain_model(model)
    sparsity = _fraction(sparsity, "sparsity", closed_high=False)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ModeConnError("no parameter of the model requires grad; nothing to mask.")
    total = sum(p.numel() for p in params.values())
    keep = total - round(sparsity * total)
    generator = torch.Generator().manual_seed(int(seed))
    mask = _first_entries(torch.randperm(total, generator=generator), keep, params)
    return _with_frozen(mask, model)


def _first_entries(order: Tensor, keep: int, like: Mapping[str, Tensor]) -> Mask:
    """``order[:keep]`` (flat indices) ``True``, cut into tensors shaped as those of ``like``."""
    flat = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    flat[order[:keep]] = True
    pieces = flat.split([t.numel() for t in like.values()])
    return {
        name: piece.reshape(t.shape).to(t.device, copy=True)
        for (name, t), piece in zip(like.items(), pieces, strict=True)
    }


def _with_frozen(mask: Mask, model: nn.Module) -> Mask:
    """``mask`` with an all-``False`` entry for every frozen parameter, in model order."""
    return {
        name: mask[name] if name in mask else torch.zeros_like(p, dtype=torch.bool)
        for name, p in model.named_parameters()
    }


def save_mask(mask: Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save a mask atomically (loadable with ``torch.load(weights_only=True)``).

    Args:
        mask: ``{param_name: bool tensor}``.
        path: Destination file.

    Raises:
        ModeConnError: If an entry is not a bool tensor.

    Example:
        >>> import os, tempfile
        >>> from torch import nn
        >>> mask = random_mask(nn.Linear(2, 2), sparsity=0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_mask(mask, os.path.join(d, "mask.pt"))
        ...     loaded = load_mask(os.path.join(d, "mask.pt"))
        >>> all(bool((loaded[n] == mask[n]).all()) for n in mask)
        True
    """
    _check_bool_tensors(mask, "mask")
    save_checkpoint({n: t.detach().cpu() for n, t in mask.items()}, path)


def load_mask(path: str | os.PathLike[str]) -> Mask:
    """Load a mask saved by :func:`save_mask` (read with ``weights_only=True``).

    Args:
        path: The file.

    Returns:
        ``{param_name: bool tensor}`` on the CPU.

    Raises:
        ModeConnError: If the file is missing or unsafe, or holds non-bool tensors.
    """
    mask = load_checkpoint(path)
    _check_bool_tensors(mask, f"the file {str(path)!r}")
    return mask


def _check_bool_tensors(mask: Mapping[str, Any], what: str) -> None:
    if not isinstance(mask, Mapping) or not mask:
        raise ModeConnError(f"{what} must be a non-empty dict {{param_name: bool tensor}}.")
    bad = [n for n, t in mask.items() if not isinstance(t, Tensor) or t.dtype != torch.bool]
    if bad:
        raise ModeConnError(
            f"{what} has entries that are not bool tensors: {listed(bad)}; convert them "
            "with .bool()."
        )
