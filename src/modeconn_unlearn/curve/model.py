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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..batchnorm import update_bn as _update_module_bn
from ..checkpoint import StateSource, load_checkpoint
from ..checks import validate_mask
from ..cloning import clone_module
from ..errors import IncompatibleModelsError, ModeConnError, listed
from ..optional import require
from ..wrappers import unwrap
from .bends import BendGroup, BufferPair
from .coefficients import CoefficientFn, get_curve
from .endpoints import check_endpoint, endpoint_source
from .points import TSampler, check_t, path_points, uniform_sampler

__all__ = ["CurveModel", "MaskSpec", "check_t", "path_points"]

MaskSpec = Mapping[str, "Tensor | bool"]


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
            or DDP-wrapped module is unwrapped). It may live on the meta device (no host
            copy of a large model) when ``start`` and ``end`` are given as weights.
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
        >>> _ = torch.manual_seed(0)
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
        Under ``DistributedDataParallel`` turn off the buffer sync in forward
        (``forward_sync_buffers=False``; ``broadcast_buffers=False`` before torch
        renamed it): the curve's buffers are its fixed anchors, identical on every
        process. :func:`~modeconn_unlearn.unlearn` and ``fit_curve`` do this themselves.

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
        model = unwrap(model)
        self.__dict__["_template"] = clone_module(model)
        self._pinned: tuple[float, dict[str, Tensor], tuple[int, ...]] | None = None
        self._last_t: float | Tensor | None = None
        self.t_sampler = t_sampler

        template = self.template
        expected = template.state_dict()
        on_meta = any(t.is_meta for t in expected.values())
        if on_meta and start is None:
            raise ModeConnError(
                "The model is on the meta device and holds no weights: pass both ends as "
                "state dicts or checkpoint files, CurveModel(model, start=..., end=...)."
            )
        start_state = load_checkpoint(endpoint_source(model if start is None else start))
        end_state = load_checkpoint(endpoint_source(end))
        check_endpoint(expected, start_state, "start")
        check_endpoint(expected, end_state, "end")
        if on_meta:
            # A template built on the meta device (no host copy of a large model) takes the
            # start's tensors by reference; the curved ones move to the anchors' storage below.
            template.load_state_dict(start_state, assign=True)

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
        groups = {}
        for dtype, names in by_dtype.items():
            key = str(dtype).removeprefix("torch.")
            device = parameters[names[0]].device
            start_flat, end_flat = (
                torch.cat([state[n].detach().reshape(-1).to(device) for n in names])
                for state in (start_state, end_state)
            )
            group_mask = None if masks is None else torch.cat([masks[n] for n in names])
            groups[key] = BendGroup(
                [parameters[n].shape for n in names],
                start_flat,
                end_flat,
                num_bends=self.num_bends,
                fix_start=fix_start,
                fix_end=fix_end,
                mask=group_mask,
                names=names,
            )
        self.groups = nn.ModuleDict(groups)
        buffers = dict(template.named_buffers())
        self._buffer_names = list(buffers)
        self.model_buffers = nn.ModuleList(
            BufferPair(start_state.get(n, buffers[n]), end_state.get(n, buffers[n]))
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
        # Sharded storage (training.shard_curve) keeps no such parameters in the template.
        template = self.template
        for module in self.groups.values():
            if not isinstance(module, BendGroup):
                continue
            views = torch.split(module.anchors[0], module.numels)
            for name, view, shape in zip(module.names, views, module.shapes, strict=True):
                param = template.get_parameter(name)
                if param.dtype == view.dtype and param.device == view.device:
                    param.data = view.view(shape)

    @staticmethod
    def _flat_masks(
        mask: MaskSpec, template: nn.Module, parameters: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """The mask of every curved parameter, flat; frozen ones must be all ``False``."""
        full = validate_mask(mask, template)
        frozen_marked = [n for n, m in full.items() if n not in parameters and bool(m.any())]
        if frozen_marked:
            raise ModeConnError(
                f"The mask marks entries of frozen parameters (requires_grad=False) as trainable: "
                f"{listed(frozen_marked)}. Only parameters with requires_grad=True are "
                "curved; drop them from the mask or set them to False."
            )
        return {name: full[name].reshape(-1) for name in parameters}

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
            sampler = uniform_sampler(*sampler)
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
        return self._weights_at(check_t(t), forward=False)

    def _weights_at(self, t: float, *, forward: bool) -> dict[str, Tensor]:
        coefs = [float(c) for c in self._coefficients_at(t)]
        weights: dict[str, Tensor] = {}
        for module in self.groups.values():
            group = cast(BendGroup, module)
            if forward and not group.combined_before_forward:
                continue
            weights.update(zip(group.names, group.weights(coefs), strict=True))
        return weights

    def _traced_weights_at(self, t: Tensor) -> dict[str, Tensor]:
        coefs = torch.stack([torch.as_tensor(c) for c in self._coefficients_at(t)])
        weights: dict[str, Tensor] = {}
        for module in self.groups.values():
            group = cast(BendGroup, module)
            weights.update(zip(group.names, group.traced_weights(coefs), strict=True))
        return weights

    def buffers_at(self, t: float | Tensor) -> dict[str, Tensor]:
        """The buffers of the model at ``t`` (interpolated, or pinned by :meth:`update_bn`)."""
        t = check_t(t)
        if self._pinned is not None:
            pinned_t, buffers, versions = self._pinned
            if pinned_t == t and versions == self._bend_versions():
                return {name: tensor.clone() for name, tensor in buffers.items()}
        pairs = cast(Iterable[BufferPair], self.model_buffers)
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
            pairs = cast(Iterable[BufferPair], self.model_buffers)
            state.update(
                (name, pair.at(t_tensor))
                for name, pair in zip(self._buffer_names, pairs, strict=True)
            )
        else:
            t = check_t(t)
            self._last_t = t
            state = self._weights_at(t, forward=True)
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
            ``merged``), in the curve's train/eval mode. For a curve sharded by
            :func:`~modeconn_unlearn.training.shard_curve` every rank must call
            this: the sharded base or bends are gathered into a plain, unsharded
            copy on every rank.

        Raises:
            ModeConnError: ``merged=True`` for a model that is not a PEFT model,
                or peft is not installed.
        """
        t = check_t(t)
        if merged:
            peft = require("peft", "lm", feature="export(merged=True)")
            if not isinstance(self.template, peft.PeftModel):
                raise ModeConnError(
                    f"export(merged=True) merges PEFT adapters, but the curve's model is a "
                    f"{type(self.template).__name__}; call export(t) without merged."
                )
        # A curve sharded by training.shard_curve gathers its model back (on every rank).
        unsharded_copy = self.__dict__.get("_unsharded_copy")
        model = clone_module(self.template) if unsharded_copy is None else unsharded_copy()
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
