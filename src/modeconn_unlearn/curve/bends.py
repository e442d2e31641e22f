"""Storage of a curve's bends: flat per-dtype groups and their fused combination at ``t``.

:class:`BendGroup` holds the bends of all parameters of one dtype in flat
tensors and :class:`Combine` turns them into the weights at ``t`` in one pass;
:class:`BufferPair` holds a model buffer at both ends. ``CurveModel`` is built
on them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .coefficients import linear_positions

__all__ = ["BendGroup", "BufferPair", "Combine", "blend"]


def blend(terms: Sequence[tuple[Tensor, float]]) -> Tensor:
    """``Σ c_k x_k`` for same-shaped ``x_k``, in one pass per non-zero term.

    Curve coefficients are non-negative and sum to one, so the sum is a chain of
    ``lerp``s (each a single read-read-write pass), one pass fewer than
    scaling and adding; other coefficients take the scale-and-add route.
    """
    nonzero = [(x, c) for x, c in terms if c != 0.0]
    total = sum(c for _, c in nonzero)
    if len(nonzero) < 2 or abs(total - 1.0) > 1e-9 or any(c < 0.0 for _, c in nonzero):
        first, coef = nonzero[0] if nonzero else terms[0]
        out = torch.mul(first, coef if nonzero else 0.0)
        for x, c in nonzero[1:]:
            out.add_(x, alpha=c)
        return out
    (x0, c0), (x1, c1) = nonzero[:2]
    weight = c0 + c1
    out = torch.lerp(x0, x1, c1 / weight)
    for x, c in nonzero[2:]:
        weight += c
        out.lerp_(x, c / weight)
    return out


class Combine(torch.autograd.Function):
    """Fused weights at t for one group: one pass over the bends, one scaled gradient copy.

    Returns the per-parameter views of the combined flat weights; backward
    writes every parameter's gradient straight into its slice of the middle
    bends' gradient, so no concatenation is needed. Views of tensors with no
    trainable entry are marked non-differentiable: they reach the model as
    constants, so autograd computes no weight gradient for them.
    """

    @staticmethod
    def forward(  # noqa: D102 (torch.autograd.Function protocol)
        ctx: Any,
        group: BendGroup,
        anchor_coefs: tuple[float, float],
        middle_coefs: tuple[float, ...],
        line_coefs: tuple[float, float],
        anchors: Tensor,
        middle: Tensor | None,
    ) -> tuple[Tensor, ...]:
        ends = [(anchors[0], anchor_coefs[0]), (anchors[1], anchor_coefs[1])]
        if middle is not None and group.index is None:
            weights = blend([*ends, *zip(middle, middle_coefs, strict=True)])
        else:
            weights = blend(ends)
        if middle is not None and group.index is not None:
            if group.runs is not None:
                # Whole tensors are trainable: write them from the bends by slices.
                for _, start, stop, offset in group.runs:
                    out = weights[start:stop]
                    torch.mul(anchors[0, start:stop], anchor_coefs[0] - line_coefs[0], out=out)
                    out.add_(anchors[1, start:stop], alpha=anchor_coefs[1] - line_coefs[1])
                    for row, coef in zip(middle, middle_coefs, strict=True):
                        out.add_(row[offset : offset + stop - start], alpha=coef)
            else:
                # Masked entries: swap their straight-line value for the trained one.
                delta = torch.mul(middle[0], middle_coefs[0])
                for row, coef in zip(middle[1:], middle_coefs[1:], strict=True):
                    delta.add_(row, alpha=coef)
                at_index = anchors.index_select(1, group.index)
                delta.sub_(at_index[0], alpha=line_coefs[0]).sub_(at_index[1], alpha=line_coefs[1])
                weights.index_add_(0, group.index, delta)
        ctx.group = group
        ctx.middle_coefs = middle_coefs
        ctx.middle_shape = None if middle is None else middle.shape
        ctx.set_materialize_grads(False)
        pieces = torch.split(weights, group.numels)
        outputs = tuple(
            piece.view(shape) for piece, shape in zip(pieces, group.shapes, strict=True)
        )
        constant = [out for out, free in zip(outputs, group.trainable, strict=True) if not free]
        if constant:
            ctx.mark_non_differentiable(*constant)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: D102
        nothing = (None, None, None, None, None)
        reference = next((g for g in grads if g is not None), None)
        if ctx.middle_shape is None or not ctx.needs_input_grad[5] or reference is None:
            return (*nothing, None)
        group: BendGroup = ctx.group
        coefs: tuple[float, ...] = ctx.middle_coefs
        grad_middle = reference.new_empty(ctx.middle_shape)
        if group.index is None:
            for row, coef in zip(grad_middle.unbind(0), coefs, strict=True):
                for piece, grad in zip(torch.split(row, group.numels), grads, strict=True):
                    if grad is None:
                        piece.zero_()
                    else:
                        torch.mul(grad.reshape(-1), coef, out=piece)
            return (*nothing, grad_middle)
        if group.runs is not None:
            rows = grad_middle.unbind(0)
            for tensor, start, stop, offset in group.runs:
                grad = grads[tensor]
                for row, coef in zip(rows, coefs, strict=True):
                    piece = row[offset : offset + stop - start]
                    if grad is None:
                        piece.zero_()
                    else:
                        torch.mul(grad.reshape(-1), coef, out=piece)
            return (*nothing, grad_middle)
        first = grad_middle[0]
        for (start, stop), grad in zip(group.index_spans, grads, strict=True):
            if start == stop:
                continue
            if grad is None:
                first[start:stop].zero_()
            else:
                local = cast(Tensor, group.local_index)[start:stop]
                torch.index_select(grad.reshape(-1), 0, local, out=first[start:stop])
        for row, coef in zip(grad_middle[1:], coefs[1:], strict=True):
            torch.mul(first, coef, out=row)
        first.mul_(coefs[0])
        return (*nothing, grad_middle)


class BendGroup(nn.Module):
    """The bends of all curved parameters of one dtype, stored flat.

    ``names`` (default ``"0"``, ``"1"``, ...) name the tensors in the order of
    ``shapes``; :meth:`weights` returns them in that order.
    """

    #: The curve combines this group's weights before running its model. Storage that
    #: combines its weights during the forward pass itself (bends sharded over ranks, put
    #: in place block by block) sets it to ``False``; the curve then leaves it out.
    combined_before_forward: bool = True

    anchors: Tensor
    index: Tensor | None
    local_index: Tensor | None

    def __init__(
        self,
        shapes: list[torch.Size],
        start: Tensor,
        end: Tensor,
        *,
        num_bends: int,
        fix_start: bool,
        fix_end: bool,
        mask: Tensor | None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.shapes = shapes
        self.names = [str(i) for i in range(len(shapes))] if names is None else list(names)
        self.numels = [math.prod(shape) for shape in shapes]
        offsets = [0, *torch.tensor(self.numels, dtype=torch.long).cumsum(0).tolist()]
        self.spans = list(itertools.pairwise(offsets))
        self.fix_start, self.fix_end = fix_start, fix_end
        self.positions = linear_positions(num_bends)[1:-1]
        self.register_buffer("anchors", torch.stack([start, end]))
        self.start = None if fix_start else nn.Parameter(start.clone())
        self.end = None if fix_end else nn.Parameter(end.clone())
        # (tensor, start, stop, offset in the middle bends) of each trainable tensor under a
        # per-tensor mask, which then runs on slices instead of gathers and scatters.
        self.runs: list[tuple[int, int, int, int]] | None = None
        if mask is None:
            self.index = self.local_index = None
            self.index_spans: list[tuple[int, int]] = []
            selected_start, selected_end = start, end
        else:
            index = mask.nonzero().squeeze(1)
            bounds = torch.searchsorted(index, torch.tensor(offsets, device=index.device)).tolist()
            self.index_spans = list(itertools.pairwise(bounds))
            owner_offset = torch.repeat_interleave(
                torch.tensor(offsets[:-1]), torch.tensor(bounds[1:]) - torch.tensor(bounds[:-1])
            ).to(index.device)
            self.register_buffer("index", index)
            self.register_buffer("local_index", index - owner_offset)
            selected_start, selected_end = start[index], end[index]
            counts = [stop - first for first, stop in self.index_spans]
            if all(c in (0, n) for c, n in zip(counts, self.numels, strict=True)):
                # A per-tensor mask: every tensor is wholly trainable or wholly frozen.
                self.runs = [
                    (tensor, span[0], span[1], first)
                    for tensor, (span, (first, stop)) in enumerate(
                        zip(self.spans, self.index_spans, strict=True)
                    )
                    if stop > first
                ]
        rows = [(1.0 - s) * selected_start + s * selected_end for s in self.positions]
        has_middle = bool(rows) and rows[0].numel() > 0
        self.middle = nn.Parameter(torch.stack(rows)) if has_middle else None
        free_ends = not (fix_start and fix_end)
        # Which tensors depend on a trainable bend; the others are constants at every t.
        self.trainable = [
            free_ends or (has_middle and (mask is None or span[0] != span[1]))
            for span in (self.spans if mask is None else self.index_spans)
        ]

    def _coefficient_split(
        self, coefs: Sequence[Any]
    ) -> tuple[tuple[Any, Any], tuple[Any, ...], tuple[Any, Any]]:
        middle_coefs = tuple(coefs[1:-1])
        anchor_start = coefs[0] if self.fix_start else 0.0 * coefs[0]
        anchor_end = coefs[-1] if self.fix_end else 0.0 * coefs[-1]
        line: tuple[Any, Any] = (0.0, 0.0)
        if self.index is not None or self.middle is None:
            # Frozen middle entries lie on the straight line between the anchors.
            line = (
                sum(c * (1.0 - s) for c, s in zip(middle_coefs, self.positions, strict=True)),
                sum(c * s for c, s in zip(middle_coefs, self.positions, strict=True)),
            )
        return (anchor_start + line[0], anchor_end + line[1]), middle_coefs, line

    def _with_free_ends(
        self, pieces: tuple[Tensor, ...], coefs: Sequence[Any]
    ) -> tuple[Tensor, ...]:
        for free_end, coef in ((self.start, coefs[0]), (self.end, coefs[-1])):
            if free_end is not None:
                ends = torch.split(free_end, self.numels)
                pieces = tuple(p + coef * e.view_as(p) for p, e in zip(pieces, ends, strict=True))
        return pieces

    def weights(self, coefs: list[float]) -> tuple[Tensor, ...]:
        """The weights at the bend coefficients ``coefs`` (floats), one fused pass."""
        anchor_coefs, middle_coefs, line = self._coefficient_split(coefs)
        pieces: tuple[Tensor, ...] = Combine.apply(  # type: ignore[no-untyped-call]
            self, anchor_coefs, middle_coefs, line, self.anchors, self.middle
        )
        return self._with_free_ends(pieces, coefs)

    def traced_weights(self, coefs: Tensor) -> tuple[Tensor, ...]:
        """The same weights from a tensor of coefficients, in plain traceable tensor ops.

        Used under ``torch.compile``: no Python number depends on ``t``, so one
        graph serves every ``t``.
        """
        coefs = coefs.to(self.anchors.dtype)
        anchor_coefs, middle_coefs, line = self._coefficient_split(list(coefs.unbind()))
        # Pointwise sums (not matrix-vector products), so the compiler fuses them into one loop.
        start, end = self.anchors.unbind(0)
        base = anchor_coefs[0] * start + anchor_coefs[1] * end
        flat = base
        if self.middle is not None:
            bends = sum(c * row for c, row in zip(middle_coefs, self.middle.unbind(0), strict=True))
            if self.index is None:
                flat = base + bends
            else:
                at_start, at_end = self.anchors.index_select(1, self.index).unbind(0)
                delta = bends - (line[0] * at_start + line[1] * at_end)
                flat = base.index_add(0, self.index, delta)
        varying, constant = torch.split(flat, self.numels), torch.split(base, self.numels)
        pieces = tuple(
            (v if free else c).view(shape)
            for v, c, free, shape in zip(
                varying, constant, self.trainable, self.shapes, strict=True
            )
        )
        return self._with_free_ends(pieces, list(coefs.unbind()))


class BufferPair(nn.Module):
    """A model buffer at both ends; floating buffers are interpolated, others kept."""

    start: Tensor
    end: Tensor

    def __init__(self, start: Tensor, end: Tensor) -> None:
        super().__init__()
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("end", end.detach().clone())

    def at(self, t: float | Tensor) -> Tensor:
        """The buffer at ``t``: interpolated if floating, else the start's."""
        if self.start.is_floating_point() or self.start.is_complex():
            if isinstance(t, Tensor):
                t = t.to(self.start.dtype)
            return torch.lerp(self.start, self.end, t)
        return self.start.clone()
