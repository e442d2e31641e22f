"""RMU: representation misdirection at one hidden layer (Li et al., 2024, WMDP).

RMU does not read the model's output. It captures the activations ``h`` of one
named submodule during the forward pass and

* steers them, on forget samples, to a fixed random direction ``c · u``
  (``u`` uniform on [0, 1)^d, normalised; ``c`` the steering coefficient);
* keeps them, on retain samples, where the reference model (the original,
  held fixed) puts them.

``L = mean_forget ‖h_θ(x) - c·u‖²/d + alpha · mean_retain ‖h_θ(x) - h_ref(x)‖²/d``,
where each sample's term is averaged over its positions (the tokens its
``attention_mask`` keeps, when its inputs carry one) and the hidden dimension
``d``. The one forward pass still goes through the task, so ``last_stats``
records the usual accuracies next to the two terms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import as_float
from ..curve import CurveModel
from ..errors import ModeConnError, listed
from ..tasks import Batch, SampleOutputs, Task
from ..wrappers import unwrap
from .base import (
    Objective,
    Parts,
    UnlearnLoss,
    reference_outputs,
    select_rows,
)

__all__ = ["rmu"]


def _layer_of(model: nn.Module, layer: str) -> nn.Module:
    """The submodule ``layer`` of the user's model (inside a curve's template, if a curve)."""
    inner = unwrap(model)
    owner = inner.template if isinstance(inner, CurveModel) else inner
    try:
        return owner.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in owner.named_modules() if name]
        raise ModeConnError(
            f"rmu: the model has no submodule {layer!r}; give a name from "
            f"model.named_modules(), e.g. {listed(names)}."
        ) from None


@contextmanager
def _captured(module: nn.Module) -> Iterator[list[Tensor]]:
    """The outputs of ``module`` during the block (the first element of a tuple output)."""
    seen: list[Tensor] = []

    def hook(_: nn.Module, __: Any, output: Any) -> None:
        value = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(value, Tensor):
            raise ModeConnError(
                f"rmu: the layer returned a {type(value).__name__}; it needs a layer whose "
                "output is a tensor of activations (or a tuple starting with one)."
            )
        seen.append(value)

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _only(seen: list[Tensor], layer: str) -> Tensor:
    if len(seen) != 1:
        raise ModeConnError(
            f"rmu: layer {layer!r} ran {len(seen)} times in one forward pass; choose a "
            "submodule that runs once (e.g. one decoder block)."
        )
    return seen[0]


def _per_sample(squared: Tensor, inputs: Any) -> Tensor:
    """Per-sample mean of ``(N, ..., d)`` squared errors over positions and features."""
    per_position = squared.mean(dim=-1) if squared.dim() > 1 else squared
    flat = per_position.reshape(per_position.shape[0], -1)
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, Tensor) and tuple(mask.shape) == tuple(flat.shape):
        keep = mask.to(flat.device, flat.dtype)
        return (flat * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
    return flat.mean(dim=1)


class _RMU(Objective):
    def __init__(
        self,
        layer: str,
        steering_coef: float,
        alpha: float,
        reference: nn.Module | None,
        seed: int,
        task: Task | None,
    ) -> None:
        super().__init__(task)
        self.layer, self.steering_coef, self.alpha = layer, steering_coef, alpha
        self.reference, self.seed = reference, seed
        self._direction: Tensor | None = None
        self._activations: Tensor | None = None

    def direction(self, features: int, like: Tensor) -> Tensor:
        """The unit control direction ``u`` (drawn once from ``seed``)."""
        if self._direction is None or self._direction.numel() != features:
            generator = torch.Generator().manual_seed(self.seed)
            u = torch.rand(features, generator=generator, dtype=torch.float64)
            self._direction = u / u.norm()
        return self._direction.to(like.device, like.dtype)

    def forward(self, model: nn.Module, batch: Batch) -> SampleOutputs:
        assert batch.targets is not None
        with _captured(_layer_of(model, self.layer)) as seen:
            out = self.task(model, batch.inputs, batch.targets)
        self._activations = _only(seen, self.layer)
        return out

    def _reference_activations(self, model: nn.Module, inputs: Any, targets: Tensor) -> Tensor:
        owner = model if self.reference is None else self.reference
        with _captured(_layer_of(owner, self.layer)) as seen:
            reference_outputs(model, self.reference, self.task, inputs, targets, name="rmu")
        return _only(seen, self.layer)

    def combine(self, model: nn.Module, p: Parts) -> Tensor:
        hidden, self._activations = self._activations, None
        assert hidden is not None
        if hidden.dim() < 1 or hidden.shape[0] != p.is_forget.shape[0]:
            raise ModeConnError(
                f"rmu: layer {self.layer!r} gave activations of shape {tuple(hidden.shape)} "
                f"for a batch of {p.is_forget.shape[0]} samples; it needs (batch, ..., features)."
            )
        forget = p.is_forget.to(hidden.device)
        zero = 0.0 * hidden.sum()
        forget_term, retain_term = zero, zero
        if bool(forget.any()):
            h = hidden[forget]
            target = self.steering_coef * self.direction(h.shape[-1], h)
            forget_inputs = select_rows(p.batch.inputs, forget)
            forget_term = _per_sample((h - target).pow(2), forget_inputs).mean()
        if self.alpha > 0.0 and bool((~forget).any()):
            assert p.batch.targets is not None
            retain_inputs = select_rows(p.batch.inputs, ~forget)
            retain_targets = p.batch.targets[~forget.to(p.batch.targets.device)]
            ref = self._reference_activations(model, retain_inputs, retain_targets)
            ref = ref.to(hidden.device)
            h = hidden[~forget]
            retain_term = _per_sample((h - ref).pow(2), retain_inputs).mean()
        p.stats["rmu_forget"] = float(forget_term.detach())
        p.stats["rmu_retain"] = float(retain_term.detach())
        return forget_term + self.alpha * retain_term

    def __repr__(self) -> str:
        ref = "curve start" if self.reference is None else type(self.reference).__name__
        return (
            f"rmu(layer={self.layer!r}, steering_coef={self.steering_coef}, "
            f"alpha={self.alpha}, reference={ref}, seed={self.seed})"
        )


def rmu(
    layer: str,
    *,
    steering_coef: float = 6.5,
    alpha: float = 100.0,
    reference: nn.Module | None = None,
    seed: int = 0,
    task: Task | None = None,
) -> UnlearnLoss:
    """RMU, representation misdirection for unlearning (Li et al., 2024).

    See the module docstring for the formula. Both coefficients depend on the
    model: the activations' scale at ``layer`` sets how large ``steering_coef``
    must be for the forget activations to move, and ``alpha`` balances the two
    terms (the WMDP study used 6.5 and 1200 on a 7B model).

    Args:
        layer: Name of the submodule whose output is misdirected, as in
            ``model.named_modules()`` of the user's model (for a curve, of the
            model it wraps), e.g. ``"model.layers.3"`` for a Llama decoder block.
        steering_coef: ``c > 0``, the length of the control vector.
        alpha: Weight ``>= 0`` of the retain term.
        reference: The original model, held fixed (run in eval mode without
            gradients). May be omitted when training a
            :class:`~modeconn_unlearn.curve.CurveModel`: the curve's start
            ``curve(x, t=0.0)`` is the original.
        seed: Seed of the random direction ``u``.
        task: Reads batches (default: classification); its per-sample results
            give the accuracies in ``last_stats``.

    Returns:
        The objective; ``last_stats`` records ``rmu_forget`` and ``rmu_retain``.

    Raises:
        ModeConnError: ``steering_coef <= 0``, a negative ``alpha`` or a bad
            ``reference``; on a call, a layer the model lacks, one that runs
            more than once per forward pass or returns no tensor, or no
            reference while the model is not a curve.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeconn_unlearn.data import UnlearnBatch
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
        >>> batch = UnlearnBatch(torch.randn(3, 2), torch.tensor([0, 1, 2]),
        ...                      torch.tensor([False, False, True]))
        >>> loss = rmu("0", reference=model, alpha=10.0)
        >>> value = loss(model, batch)  # the model is its own reference: no retain term
        >>> loss.last_stats["rmu_retain"], value.item() == loss.last_stats["rmu_forget"]
        (0.0, True)
    """
    if not isinstance(layer, str) or not layer:
        raise ModeConnError(f"rmu: layer must be a submodule name, got {layer!r}.")
    coef = as_float(steering_coef, "steering_coef", positive=True)
    weight = as_float(alpha, "alpha", nonnegative=True)
    if reference is not None and not isinstance(reference, nn.Module):
        raise ModeConnError(
            f"reference must be an nn.Module (the original model), got {type(reference).__name__}."
        )
    return _RMU(layer, coef, weight, reference, int(seed), task)
