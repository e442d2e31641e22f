"""Path ensembles: one model whose prediction averages the curve's models at several ``t``.

A model unlearned along a curve can be replaced by the average of the models at a
few nearby points of the same curve. Their errors on the forget set differ, so the
average is less confidently right on it. It is no defence against relearning: an
attacker holding the members' weights fine-tunes them one by one, and they relearn
like single models (``benchmarks/results/mcu_strong_mlpc_relearn.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .curve import CurveModel
from .errors import ModeConnError

__all__ = ["PathEnsemble", "path_ensemble"]


class PathEnsemble(nn.Module):
    """Average of the class probabilities of several models; returns log-probabilities.

    ``forward`` runs every member and returns ``log(mean_k softmax(z_k))`` over the
    last dimension, which works wherever logits do (``argmax``, cross-entropy,
    the library's tasks). An output with a ``.logits`` attribute (Hugging Face)
    comes back as the first member's output with its logits replaced.

    Attributes:
        members: The models averaged.
        ts: The ``t`` of each member (empty when built from plain models).

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> x = torch.randn(4, 2)
        >>> out = PathEnsemble([a, b])(x)
        >>> mean = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
        >>> torch.allclose(out.exp(), mean)
        True
    """

    def __init__(self, members: Sequence[nn.Module], ts: Sequence[float] = ()) -> None:
        super().__init__()
        if not members:
            raise ModeConnError("a PathEnsemble needs at least one member model.")
        self.members = nn.ModuleList(members)
        self.ts = tuple(float(t) for t in ts)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run every member and average their probabilities."""
        outputs = [member(*args, **kwargs) for member in self.members]
        logits = [getattr(out, "logits", out) for out in outputs]
        if not all(isinstance(z, Tensor) for z in logits):
            raise ModeConnError(
                "PathEnsemble averages class probabilities and needs each member to return a "
                f"logits tensor (or an output with .logits), got {type(outputs[0]).__name__}."
            )
        stacked = torch.stack([z.log_softmax(-1) for z in logits])
        combined = torch.logsumexp(stacked, dim=0) - math.log(len(logits))
        if hasattr(outputs[0], "logits"):
            outputs[0].logits = combined
            return outputs[0]
        return combined


def path_ensemble(
    curve: CurveModel, ts: Iterable[float], *, bn_loader: Iterable[Any] | None = None
) -> PathEnsemble:
    """The :class:`PathEnsemble` of ``curve.export(t)`` over ``ts``.

    Args:
        curve: A trained :class:`~modeconn_unlearn.CurveModel`.
        ts: Points of the curve (at least one, each in [0, 1]).
        bn_loader: Retain data to re-estimate each member's BatchNorm statistics on.

    Returns:
        The ensemble, in the curve's train/eval mode.

    Raises:
        ModeConnError: No points, or a point outside [0, 1].

    Example:
        >>> curve = CurveModel(nn.Linear(2, 3), end=nn.Linear(2, 3))
        >>> ensemble = path_ensemble(curve, [0.8, 0.9, 1.0])
        >>> ensemble.ts, ensemble(torch.randn(5, 2)).shape
        ((0.8, 0.9, 1.0), torch.Size([5, 3]))
    """
    if not isinstance(curve, CurveModel):
        raise ModeConnError(f"path_ensemble needs a CurveModel, got {type(curve).__name__}.")
    points = [float(t) for t in ts]
    if not points:
        raise ModeConnError("path_ensemble needs at least one t.")
    members = [curve.export(t, bn_loader=bn_loader) for t in points]
    return PathEnsemble(members, points).train(curve.training)
