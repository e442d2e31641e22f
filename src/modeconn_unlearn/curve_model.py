"""CurveModel: any ``nn.Module`` as a curve in weight space.

The curve never rewrites the user's layers. It keeps the bends of every
parameter in flat tensors (one group per dtype), combines them into the weights
at ``t`` with one fused pass, and runs the user's own module on those weights
through :func:`torch.func.functional_call`.

Storage, per dtype group of ``N`` parameter entries and ``m`` middle bends:

* ``anchors`` (buffer, ``2 x N``): the start and end weights.
* ``middle`` (parameter, ``m x N``): the middle bends, initialised on the
  straight line between the ends. With a mask it is ``m x K``: only the ``K``
  masked entries are stored and trained; the others stay on the straight line,
  which is a combination of the two anchors, so they cost no storage, no
  gradient and no optimizer state, and they cannot drift under momentum or
  weight decay.
* ``start``/``end`` (parameters, ``N``) only when an end is not fixed.

Only parameters with ``requires_grad=True`` are curved. Frozen parameters (a
PEFT model's base weights, a frozen backbone) stay in the template, stored
once and shared by every point of the curve.

A tensor with no trainable entry comes out of the combination as a constant
(no ``grad_fn``), so autograd skips its weight gradient; with a per-tensor
mask the backward pass costs only what the masked tensors need.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from .batchnorm import update_bn as _update_module_bn
from .checkpoint import StateSource, load_checkpoint
from .cloning import clone_module
from .curves import CoefficientFn, get_curve, linear_positions
from .errors import NAMES_SHOWN, IncompatibleModelsError, ModeConnError, listed

__all__ = ["CurveModel", "MaskSpec", "check_t", "path_points"]

MaskSpec = Mapping[str, "Tensor | bool"]
TSampler = Callable[[], "float | Tensor"]
_LM_HINT = 'pip install "modeconn-unlearn[lm]"'


def check_t(t: float | Tensor) -> float:
    """Return ``t`` as a float after checking it is a finite number in [0, 1].

    Raises:
        ModeConnError: ``t`` is not a scalar, not finite, or outside [0, 1].

    Example:
        >>> check_t(torch.tensor(0.25))
        0.25
    """
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise ModeConnError(f"t must be a scalar, got a tensor of shape {tuple(t.shape)}.")
        t = t.item()
    value = float(t)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ModeConnError(f"t must lie in [0, 1], got {value}. t=0 is the start, t=1 the end.")
    return value


def path_points(ts: int | Sequence[float] | np.ndarray) -> np.ndarray:
    """The points of a path: ``ts`` evenly spaced in [0, 1], or the given t values checked.

    Raises:
        ModeConnError: Fewer than 2 points, an empty or non-1-D sequence, a t
            outside [0, 1], or values that are not strictly increasing.

    Example:
        >>> path_points(3).tolist()
        [0.0, 0.5, 1.0]
    """
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        if ts < 2:
            raise ModeConnError(f"ts must be at least 2 evenly spaced points, got {ts}.")
        return np.linspace(0.0, 1.0, int(ts))
    values = np.asarray(ts, dtype=np.float64)
    if values.ndim != 1:
        raise ModeConnError(
            f"ts must be a number or a 1-D sequence of t, got shape {values.shape}."
        )
    if len(values) == 0:
        raise ModeConnError("ts is empty; give a number of points or a sequence of t in [0, 1].")
    points = np.array([check_t(float(t)) for t in values])
    if np.any(np.diff(points) <= 0):
        raise ModeConnError(f"ts must be strictly increasing, got {points.tolist()}.")
    return points


def _check_endpoint(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], role: str) -> None:
    missing = expected.keys() - given.keys()
    unexpected = given.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys {listed(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys {listed(sorted(unexpected))}")
    common = expected.keys() & given.keys()
    shapes = [k for k in common if expected[k].shape != given[k].shape]
    if shapes:
        detail = ", ".join(
            f"{k!r}: {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(shapes)
        )
        problems.append(f"shape mismatches ({role} vs model) {detail}")
    dtypes = [k for k in common if expected[k].dtype != given[k].dtype]
    if dtypes:
        detail = ", ".join(
            f"{k!r}: {given[k].dtype} vs {expected[k].dtype}" for k in sorted(dtypes)
        )
        problems.append(f"dtype mismatches ({role} vs model) {detail}")
    if problems:
        raise IncompatibleModelsError(
            f"The {role} weights do not match the model's architecture: "
            + "; ".join(problems)
            + f". Pass a module or state_dict of the same architecture as {role}=."
        )


def _uniform_sampler(low: float, high: float) -> TSampler:
    low, high = check_t(low), check_t(high)
    if low > high:
        raise ModeConnError(
            f"t_sampler range ({low}, {high}) is empty; use (low, high), low <= high."
        )

    def sample() -> Tensor:
        # A 0-d tensor, so a compiled curve draws t inside its graph; the arithmetic is
        # in float64, which gives the same t as Python floats would.
        return low + (high - low) * torch.rand(()).double()

    return sample


def _unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``)."""
    inner = getattr(model, "_orig_mod", None)
    while isinstance(inner, nn.Module):
        model, inner = inner, getattr(inner, "_orig_mod", None)
    return model


def _require_peft() -> Any:
    try:
        return importlib.import_module("peft")
    except ImportError as error:
        raise ModeConnError(
            f"This needs the optional dependency peft; install it with {_LM_HINT}."
        ) from error


def _blend(terms: Sequence[tuple[Tensor, float]]) -> Tensor:
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


class _Combine(torch.autograd.Function):
    """Fused weights at t for one group: one pass over the bends, one scaled gradient copy.

    Returns the per-parameter views of the combined flat weights; backward
    writes every parameter's gradient straight into its slice of the middle
    bends' gradient, so no concatenation is needed. Views of tensors with no
    trainable entry are marked non-differentiable: they reach the model as
    constants, so autograd computes no weight gradient for them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        group: _BendGroup,
        anchor_coefs: tuple[float, float],
        middle_coefs: tuple[float, ...],
        line_coefs: tuple[float, float],
        anchors: Tensor,
        middle: Tensor | None,
    ) -> tuple[Tensor, ...]:
        ends = [(anchors[0], anchor_coefs[0]), (anchors[1], anchor_coefs[1])]
        if middle is not None and group.index is None:
            weights = _blend([*ends, *zip(middle, middle_coefs, strict=True)])
        else:
            weights = _blend(ends)
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
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        nothing = (None, None, None, None, None)
        reference = next((g for g in grads if g is not None), None)
        if ctx.middle_shape is None or not ctx.needs_input_grad[5] or reference is None:
            return (*nothing, None)
        group: _BendGroup = ctx.group
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


class _BendGroup(nn.Module):
    """The bends of all curved parameters of one dtype, stored flat."""

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
    ) -> None:
        super().__init__()
        self.shapes = shapes
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
        pieces: tuple[Tensor, ...] = _Combine.apply(  # type: ignore[no-untyped-call]
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


class _BufferPair(nn.Module):
    """A model buffer at both ends; floating buffers are interpolated, others kept."""

    start: Tensor
    end: Tensor

    def __init__(self, start: Tensor, end: Tensor) -> None:
        super().__init__()
        self.register_buffer("start", start.detach().clone())
        self.register_buffer("end", end.detach().clone())

    def at(self, t: float | Tensor) -> Tensor:
        if self.start.is_floating_point() or self.start.is_complex():
            if isinstance(t, Tensor):
                t = t.to(self.start.dtype)
            return torch.lerp(self.start, self.end, t)
        return self.start.clone()


class CurveModel(nn.Module):
    """A curve of models ``θ(t)`` in weight space between two models of the same architecture.

    ``θ(t) = Σ_j c_j(t) θ_j`` over ``num_bends`` bends; the first bend is
    ``start``, the last ``end``, and the middle bends start on the straight line
    between them and are the trainable parameters. Works on any ``nn.Module``:
    the user's model is copied as a template (never mutated) and run with
    the weights at ``t`` through :func:`torch.func.functional_call`, so tied
    weights stay tied and bare ``nn.Parameter``s and parametrized modules work.

    Only parameters with ``requires_grad=True`` are curved. Frozen parameters
    (e.g. the base weights of a PEFT/LoRA model, whose adapters are the only
    trainable tensors) are stored once, in the template, and shared by every
    point of the curve; ``start`` and ``end`` must agree on them.

    In training mode ``curve(x)`` draws one ``t`` per call from
    :attr:`t_sampler` (default U(0, 1)), so a training loop written for the
    plain model runs unchanged. In eval mode pass ``t``: ``curve(x, t=0.8)``.
    Under ``torch.compile`` the drawn ``t`` is a 0-d tensor and the weights
    are computed from it inside the graph, so training compiles once for all
    ``t``.

    Floating buffers (e.g. BatchNorm running statistics) are interpolated
    linearly between the ends, integer buffers are taken from ``start``; after
    :meth:`update_bn` the re-estimated statistics are used at that ``t`` until
    the bends change.

    Args:
        model: The architecture; any ``nn.Module`` (a ``torch.compile``-d module
            is unwrapped).
        start: The start weights (an ``nn.Module``, a state dict, or a checkpoint
            path). Defaults to ``model``'s own weights.
        end: The end weights, same forms as ``start``. Required, by keyword.
        curve: ``"bezier"``, ``"polychain"``, or a function
            ``(t, num_bends) -> coefficients``.
        num_bends: Number of bends including both ends (2 is the straight line).
        fix_start: Keep the start bend fixed.
        fix_end: Keep the end bend fixed.
        mask: ``{param_name: bool tensor | bool}``: only these entries of the
            middle bends are trainable; parameters not named stay frozen on
            the straight line. ``None`` trains all middle-bend entries. A
            tensor with no ``True`` entry costs no weight gradient.
        t_sampler: Callable returning a ``t`` (a float or a 0-d tensor) for each
            training forward, or a ``(low, high)`` pair for U(low, high).

    Raises:
        IncompatibleModelsError: ``start``/``end`` keys, shapes or dtypes differ
            from ``model``'s, or ``start`` and ``end`` differ in a frozen parameter.
        ModeConnError: Fewer than 2 bends, an unknown curve, a bad mask, no
            trainable parameter, or ``end`` missing or passed positionally.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a, b = nn.Linear(4, 2), nn.Linear(4, 2)
        >>> curve = CurveModel(a, start=a, end=b, num_bends=3)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(curve(x, t=1.0), b(x))
        True
        >>> [tuple(p.shape) for p in curve.parameters()]
        [(1, 10)]
        >>> type(curve.export(0.5)).__name__
        'Linear'

    Note:
        Under ``DistributedDataParallel`` pass ``broadcast_buffers=False``: the
        curve's buffers are its fixed anchors, identical on every process.

        ``torch.compile(curve)`` in training mode compiles once for every ``t``:
        ``t`` is drawn as a 0-d tensor and the weights are computed from it in
        the graph (``t`` is then not range-checked). A float ``t`` passed
        explicitly is a constant to the compiler, so each new value recompiles;
        pass a 0-d tensor instead. Compiling fuses the weight combination, which
        eager mode runs as one pass over the weights per bend; that cost shows
        on models whose weights are large next to their compute (wide MLPs at
        small batch), hardly on convolutional networks.
    """

    def __init__(
        self,
        model: nn.Module,
        *positional: object,
        start: StateSource | None = None,
        end: StateSource | None = None,
        curve: str | CoefficientFn = "bezier",
        num_bends: int = 3,
        fix_start: bool = True,
        fix_end: bool = True,
        mask: MaskSpec | None = None,
        t_sampler: TSampler | tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if positional:
            raise ModeConnError(
                f"CurveModel takes only the model positionally, got {len(positional)} more "
                "argument(s); pass the weights by keyword: "
                "CurveModel(model, start=theta_o, end=theta_u)."
            )
        if end is None:
            raise ModeConnError(
                "CurveModel needs the end weights: CurveModel(model, start=theta_o, end=theta_u)."
            )
        if int(num_bends) != num_bends or num_bends < 2:
            raise ModeConnError(f"num_bends must be an integer >= 2 (2 = a line), got {num_bends}.")
        self.num_bends = int(num_bends)
        self.curve_name = curve if isinstance(curve, str) else getattr(curve, "__name__", "custom")
        self.coefficients = get_curve(curve)
        self.fix_start, self.fix_end = fix_start, fix_end
        model = _unwrap_compiled(model)
        self.__dict__["_template"] = clone_module(model)
        self._pinned: tuple[float, dict[str, Tensor], tuple[int, ...]] | None = None
        self._last_t: float | Tensor | None = None
        self.t_sampler = t_sampler

        template = self.template
        expected = template.state_dict()
        start_state = load_checkpoint(_endpoint(model if start is None else start))
        end_state = load_checkpoint(_endpoint(end))
        _check_endpoint(expected, start_state, "start")
        _check_endpoint(expected, end_state, "end")

        all_parameters = dict(template.named_parameters())
        parameters = {n: p for n, p in all_parameters.items() if p.requires_grad}
        frozen = [n for n in all_parameters if n not in parameters]
        if not parameters:
            raise ModeConnError(
                "The model has no trainable parameter (every requires_grad is False); "
                "CurveModel curves only parameters with requires_grad=True."
            )
        self._share_frozen(frozen, start_state, end_state)
        masks = self._flat_masks(mask, template, parameters) if mask is not None else None
        by_dtype: dict[torch.dtype, list[str]] = {}
        for name, tensor in parameters.items():
            by_dtype.setdefault(tensor.dtype, []).append(name)
        self._param_names: dict[str, list[str]] = {}
        groups = {}
        for dtype, names in by_dtype.items():
            key = str(dtype).removeprefix("torch.")
            device = parameters[names[0]].device
            start_flat, end_flat = (
                torch.cat([state[n].detach().reshape(-1).to(device) for n in names])
                for state in (start_state, end_state)
            )
            group_mask = None if masks is None else torch.cat([masks[n] for n in names])
            groups[key] = _BendGroup(
                [parameters[n].shape for n in names],
                start_flat,
                end_flat,
                num_bends=self.num_bends,
                fix_start=fix_start,
                fix_end=fix_end,
                mask=group_mask,
            )
            self._param_names[key] = names
        self.groups = nn.ModuleDict(groups)
        buffers = dict(template.named_buffers())
        self._buffer_names = list(buffers)
        self.model_buffers = nn.ModuleList(
            _BufferPair(start_state.get(n, buffers[n]), end_state.get(n, buffers[n]))
            for n in self._buffer_names
        )
        self._link_template()

    def _share_frozen(
        self, frozen: list[str], start_state: Mapping[str, Tensor], end_state: Mapping[str, Tensor]
    ) -> None:
        """Check that the ends agree on the frozen parameters; put them in the template."""
        if not frozen:
            return
        template = self.template
        differ = [
            name
            for name in frozen
            if not torch.equal(start_state[name], end_state[name].to(start_state[name].device))
        ]
        if differ:
            raise IncompatibleModelsError(
                f"start and end differ in frozen parameters {listed(differ)} "
                "(requires_grad=False). A curve shares frozen parameters between all its points; "
                "set requires_grad=True on them to curve them, or pass models with the same "
                "frozen weights (e.g. two adapters on one base model)."
            )
        with torch.no_grad():
            for name in frozen:
                param = template.get_parameter(name)
                if param.data_ptr() != start_state[name].data_ptr():
                    param.copy_(start_state[name])

    def _link_template(self) -> None:
        # The template's curved parameters are never read (functional_call swaps them for the
        # weights at t), so they share the start anchor's storage instead of holding a copy.
        template = self.template
        for key, module in self.groups.items():
            group = cast(_BendGroup, module)
            views = torch.split(group.anchors[0], group.numels)
            for name, view, shape in zip(self._param_names[key], views, group.shapes, strict=True):
                param = template.get_parameter(name)
                if param.dtype == view.dtype and param.device == view.device:
                    param.data = view.view(shape)

    @staticmethod
    def _flat_masks(
        mask: MaskSpec, template: nn.Module, parameters: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        canonical = {id(p): name for name, p in template.named_parameters()}
        aliases = {
            name: canonical[id(p)] for name, p in template.named_parameters(remove_duplicate=False)
        }
        unknown = [name for name in mask if name not in aliases]
        if unknown:
            valid = sorted(list(aliases)[:NAMES_SHOWN])
            raise ModeConnError(
                f"The mask names parameters the model does not have: {listed(sorted(unknown))}. "
                f"Valid names include {listed(valid)}; build masks from "
                "model.named_parameters() (e.g. with mcu.layer_mask or mcu.saliency_mask)."
            )
        everything = dict(template.named_parameters())
        flat: dict[str, Tensor] = {}
        for name, param in parameters.items():
            flat[name] = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
        frozen_marked = []
        for name, value in mask.items():
            param = everything[aliases[name]]
            if isinstance(value, bool):
                entries = torch.full((param.numel(),), value, dtype=torch.bool, device=param.device)
            elif not isinstance(value, Tensor) or value.dtype != torch.bool:
                kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
                raise ModeConnError(
                    f"Mask entry {name!r} must be a bool or a bool tensor, got {kind}; "
                    "convert it with .bool()."
                )
            elif value.shape != param.shape:
                raise ModeConnError(
                    f"Mask entry {name!r} has shape {tuple(value.shape)} but the parameter has "
                    f"shape {tuple(param.shape)}."
                )
            else:
                entries = value.detach().reshape(-1).to(param.device)
            if aliases[name] in parameters:
                flat[aliases[name]] = entries
            elif bool(entries.any()):
                frozen_marked.append(name)
        if frozen_marked:
            raise ModeConnError(
                f"The mask marks entries of frozen parameters (requires_grad=False) as trainable: "
                f"{listed(sorted(frozen_marked))}. Only parameters with requires_grad=True are "
                "curved; drop them from the mask or set them to False."
            )
        return flat

    @property
    def template(self) -> nn.Module:
        """The copy of the user's model that defines the architecture (and holds frozen weights)."""
        template: nn.Module = self.__dict__["_template"]
        return template

    @property
    def t_sampler(self) -> TSampler:
        """Draws the ``t`` of each training-mode forward (default U(0, 1), as a 0-d tensor)."""
        sampler: TSampler = self.__dict__["_t_sampler"]
        return sampler

    @t_sampler.setter
    def t_sampler(self, sampler: TSampler | tuple[float, float] | None) -> None:
        if sampler is None:
            sampler = (0.0, 1.0)
        if isinstance(sampler, tuple):
            sampler = _uniform_sampler(*sampler)
        if not callable(sampler):
            raise ModeConnError("t_sampler must be a callable returning t or a (low, high) pair.")
        self.__dict__["_t_sampler"] = sampler

    @property
    def last_t(self) -> float | None:
        """The ``t`` of the latest forward (``None`` before the first)."""
        t = self._last_t
        return None if t is None else float(t)

    def _coefficients_at(self, t: float | Tensor) -> Sequence[Any]:
        coefs = self.coefficients(t, self.num_bends)
        if len(coefs) != self.num_bends:
            raise ModeConnError(
                f"The curve function returned {len(coefs)} coefficients for {self.num_bends} bends."
            )
        return coefs

    def weights_at(self, t: float | Tensor) -> dict[str, Tensor]:
        """The curved parameters at ``t``, keyed like ``model.named_parameters()``.

        Frozen parameters (``requires_grad=False``) are not curved and not
        included; they stay in :attr:`template`. A tensor is differentiable
        with respect to the trainable bends when at least one of its entries
        is trainable; the others are plain constants.

        Example:
            >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
            >>> curve = CurveModel(a, start=a, end=b, num_bends=2)
            >>> torch.allclose(curve.weights_at(0.0)["weight"], a.weight)
            True
        """
        t = check_t(t)
        coefs = [float(c) for c in self._coefficients_at(t)]
        weights: dict[str, Tensor] = {}
        for key, module in self.groups.items():
            group = cast(_BendGroup, module)
            weights.update(zip(self._param_names[key], group.weights(coefs), strict=True))
        return weights

    def _traced_weights_at(self, t: Tensor) -> dict[str, Tensor]:
        coefs = torch.stack([torch.as_tensor(c) for c in self._coefficients_at(t)])
        weights: dict[str, Tensor] = {}
        for key, module in self.groups.items():
            group = cast(_BendGroup, module)
            weights.update(zip(self._param_names[key], group.traced_weights(coefs), strict=True))
        return weights

    def buffers_at(self, t: float | Tensor) -> dict[str, Tensor]:
        """The buffers of the model at ``t`` (interpolated, or pinned by :meth:`update_bn`)."""
        t = check_t(t)
        if self._pinned is not None:
            pinned_t, buffers, versions = self._pinned
            if pinned_t == t and versions == self._bend_versions():
                return {name: tensor.clone() for name, tensor in buffers.items()}
        pairs = cast(Iterable[_BufferPair], self.model_buffers)
        return {name: pair.at(t) for name, pair in zip(self._buffer_names, pairs, strict=True)}

    def forward(self, *args: Any, t: float | Tensor | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model with the weights at ``t``.

        Args:
            *args: Positional inputs of the wrapped model.
            t: Point on the curve. ``None`` draws one from :attr:`t_sampler`
                in training mode and is an error in eval mode.
            **kwargs: Keyword inputs of the wrapped model.
        """
        if t is None:
            if not self.training:
                raise ModeConnError(
                    "CurveModel in eval mode needs a point on the curve: call curve(x, t=0.5)."
                )
            t = self.t_sampler()
        if torch.compiler.is_compiling():
            # No Python number may depend on t here, or every new t would recompile; t is
            # not range-checked (that needs its value) and pinned statistics are not used.
            t_tensor = torch.as_tensor(t, dtype=torch.float64)
            self._last_t = t_tensor
            state = self._traced_weights_at(t_tensor)
            pairs = cast(Iterable[_BufferPair], self.model_buffers)
            state.update(
                (name, pair.at(t_tensor))
                for name, pair in zip(self._buffer_names, pairs, strict=True)
            )
        else:
            t = check_t(t)
            self._last_t = t
            state = self.weights_at(t)
            state.update(self.buffers_at(t))
        return functional_call(self.template, state, args, kwargs, tie_weights=True, strict=False)

    def export(
        self,
        t: float | Tensor,
        *,
        bn_loader: Iterable[Any] | None = None,
        merged: bool = False,
    ) -> nn.Module:
        """A plain copy of the user's model class with the weights at ``t``.

        Args:
            t: Point on the curve.
            bn_loader: If given, BatchNorm statistics of the copy are re-estimated
                on it (use retain data, never the forget set).
            merged: For a PEFT model: merge the adapters at ``t`` into the base
                weights and return the plain base model (``merge_and_unload``).

        Returns:
            A new module of the template's class (the base model's class when
            ``merged``), in the curve's train/eval mode.

        Raises:
            ModeConnError: ``merged=True`` for a model that is not a PEFT model,
                or peft is not installed.
        """
        t = check_t(t)
        if merged:
            peft = _require_peft()
            if not isinstance(self.template, peft.PeftModel):
                raise ModeConnError(
                    f"export(merged=True) merges PEFT adapters, but the curve's model is a "
                    f"{type(self.template).__name__}; call export(t) without merged."
                )
        model = clone_module(self.template)
        with torch.no_grad():
            for name, value in self.weights_at(t).items():
                model.get_parameter(name).copy_(value)
            for name, value in self.buffers_at(t).items():
                model.get_buffer(name).copy_(value)
        if merged:
            model = cast(nn.Module, model.merge_and_unload())  # type: ignore[operator]
        if bn_loader is not None:
            _update_module_bn(model, bn_loader)
        return model.train(self.training)

    def update_bn(self, loader: Iterable[Any], *, t: float) -> None:
        """Re-estimate BatchNorm statistics at ``t`` on ``loader`` and pin them to that ``t``."""
        t = check_t(t)
        model = self.export(t, bn_loader=loader)
        buffers = {name: b.detach() for name, b in model.named_buffers()}
        self._pinned = (t, buffers, self._bend_versions())

    def _bend_versions(self) -> tuple[int, ...]:
        # Every in-place change of a bend (an optimizer step, load_state_dict) bumps its
        # version, which invalidates statistics pinned for the old weights.
        return tuple(p._version for p in self.parameters())

    def train(self, mode: bool = True) -> CurveModel:
        """Set training mode on the curve and the wrapped template."""
        super().train(mode)
        self.template.train(mode)
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CurveModel:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self.template._apply(fn)  # type: ignore[no-untyped-call]
        self._link_template()
        if self._pinned is not None:
            t, buffers, _ = self._pinned
            self._pinned = (t, {name: fn(b) for name, b in buffers.items()}, self._bend_versions())
        return self

    def extra_repr(self) -> str:
        """Summary shown by ``repr(curve)``."""
        trainable = sum(p.numel() for p in self.parameters())
        return (
            f"template={type(self.template).__name__}, curve={self.curve_name!r}, "
            f"num_bends={self.num_bends}, fix_start={self.fix_start}, fix_end={self.fix_end}, "
            f"trainable={trainable}"
        )


def _endpoint(source: StateSource) -> StateSource:
    return _unwrap_compiled(source) if isinstance(source, nn.Module) else source
