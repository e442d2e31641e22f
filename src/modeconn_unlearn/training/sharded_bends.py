"""Full-parameter curves past one GPU: every bend sharded along its entries over the ranks.

A full-parameter curve keeps the start, the control point(s) and the end of every
weight. :func:`shard_bends` cuts them into units (one per block, one per other
module that owns parameters) and gives each rank its slice of every unit's flat
entries (padded to a multiple of the world size): each rank stores ``1/W`` of
every bend, and trains and keeps optimizer state for ``1/W`` of the control
points.

When a unit's module runs, a forward pre-hook combines the local slice at the
curve's ``t`` (no communication), all-gathers only the combined weights
(:class:`GatherShards`, the traffic of plain FSDP) and puts them in place; a
forward post-hook takes them out again. In the backward pass the gathered
weights' gradient is reduce-scattered and averaged over the ranks, and each
rank scales its slice by the bends' coefficients (the curve's fused
:class:`~modeconn_unlearn.curve.Combine`). The template keeps no full copy of a
curved weight: between forward passes they are placeholders on the meta device.

A layer saves its weight for the input's gradient, so autograd would keep every
unit's gathered weights until the backward pass. With ``reshard_after_forward``
(the default) saved-tensor hooks (:class:`_Resharder`) keep only a reference to
the gather instead, and the backward pass gathers the unit's weights again when
it needs them: about one unit's full weights are alive at a time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.hooks import RemovableHandle

from ..curve import BendGroup, CurveModel
from ..errors import ModeConnError

__all__ = ["FullCopy", "GatherShards", "ShardedBends", "meta_copy", "shard_bends"]

# Newer torch renames the single-tensor collectives (the old names warn there).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class GatherShards(torch.autograd.Function):
    """All-gather the ranks' slices into the full flat weights; reduce-scatter the gradient.

    The forward pass concatenates this rank's pieces and all-gathers them
    (``world * local`` entries); the backward pass reduce-scatters the full
    gradient, divides it by the world size (the ranks' gradients are averaged,
    as under DDP) and splits it back into the pieces. ``token`` is an empty
    tensor that requires grad when any rank has a trainable entry, so that every
    rank's autograd graph holds the backward pass (a collective) even where this
    rank's own pieces are all constants.
    """

    @staticmethod
    def forward(  # noqa: D102 (torch.autograd.Function protocol)
        ctx: Any, group: dist.ProcessGroup, world: int, token: Tensor, *pieces: Tensor
    ) -> Tensor:
        local = torch.cat(pieces) if len(pieces) > 1 else pieces[0].contiguous()
        full = local.new_empty(world * local.numel())
        _all_gather(full, local, group=group)
        ctx.group, ctx.world = group, world
        ctx.sizes = [p.numel() for p in pieces]
        return full

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        local = grad.new_empty(grad.numel() // ctx.world)
        _reduce_scatter(local, grad.contiguous(), group=ctx.group)
        local.div_(ctx.world)
        pieces = torch.split(local, ctx.sizes)
        needed = ctx.needs_input_grad[3:]
        return (None, None, None, *(p if n else None for p, n in zip(pieces, needed, strict=True)))


class ShardedBends(nn.Module):
    """One unit's bends of one dtype: this rank's slice of their flat entries.

    The slice is stored as a :class:`~modeconn_unlearn.curve.BendGroup` over the
    pieces of the unit's tensors that fall into it (and the padding), so masks
    keep their meaning: a per-tensor mask trains whole pieces, an element-wise
    one the masked entries of the slice only. :meth:`weights` gathers the full
    tensors at given bend coefficients (a collective: every rank calls it).
    """

    combined_before_forward = False

    def __init__(
        self,
        names: list[str],
        shapes: list[torch.Size],
        bends: Sequence[Tensor],
        mask: Tensor | None,
        *,
        free_ends: tuple[Tensor | None, Tensor | None],
        trainable: bool,
        group: dist.ProcessGroup,
    ) -> None:
        super().__init__()
        self.names, self.shapes = names, shapes
        self.numels = [math.prod(shape) for shape in shapes]
        self.group, self.world, rank = group, dist.get_world_size(group), dist.get_rank(group)
        total = sum(self.numels)
        self.local = -(-total // self.world)
        low, high = rank * self.local, (rank + 1) * self.local
        pieces, offset = [], 0
        for numel in self.numels:
            size = min(offset + numel, high) - max(offset, low)
            if size > 0:
                pieces.append(torch.Size([size]))
            offset += numel
        if high > total:
            pieces.append(torch.Size([min(high - total, self.local)]))

        def local(flat: Tensor) -> Tensor:
            padded = torch.cat([flat, flat.new_zeros(self.world * self.local - total)])
            return padded[low:high].clone()

        start, *middle, end = (local(b.detach()) for b in bends)
        local_mask = None if mask is None else local(mask)
        self.bends = BendGroup(
            pieces,
            start,
            end,
            num_bends=len(bends),
            fix_start=free_ends[0] is None,
            fix_end=free_ends[1] is None,
            mask=local_mask,
        )
        with torch.no_grad():
            if self.bends.middle is not None:
                rows = torch.stack(middle)
                self.bends.middle.copy_(rows if local_mask is None else rows[:, local_mask])
            for param, value in ((self.bends.start, free_ends[0]), (self.bends.end, free_ends[1])):
                if param is not None and value is not None:
                    param.copy_(local(value.detach()))
        # Whether any rank trains an entry of this unit: the same on every rank.
        self.trainable = trainable

    def weights(self, coefs: list[float]) -> tuple[Tensor, ...]:
        """The unit's full tensors at the bend coefficients ``coefs`` (collective)."""
        return self.split(self.gather(coefs))

    def gather(self, coefs: list[float]) -> Tensor:
        """The unit's flat entries at ``coefs``, padding included, from every rank (collective)."""
        pieces = self.bends.weights(coefs)
        token = torch.empty(0, requires_grad=self.trainable and torch.is_grad_enabled())
        return cast(Tensor, GatherShards.apply(self.group, self.world, token, *pieces))  # type: ignore[no-untyped-call]

    def split(self, full: Tensor) -> tuple[Tensor, ...]:
        """The unit's tensors, as views of the flat entries ``full`` from :meth:`gather`."""
        flat = torch.split(full[: sum(self.numels)], self.numels)
        return tuple(piece.view(shape) for piece, shape in zip(flat, self.shapes, strict=True))

    def versions(self) -> tuple[int, ...]:
        """The version counters of the local bends (bumped by every in-place change)."""
        return tuple(t._version for t in (*self.parameters(), *self.buffers()))

    def traced_weights(self, coefs: Tensor) -> tuple[Tensor, ...]:
        """Not supported: a compiled curve cannot run the per-block gathers."""
        raise ModeConnError(
            "a curve with sharded bends (shard_curve on a full-parameter curve) cannot be "
            "compiled; run it without compile."
        )

    def extra_repr(self) -> str:
        """Summary shown by ``repr``."""
        return f"tensors={len(self.names)}, entries={sum(self.numels)}, local={self.local}"


@dataclass
class _Install:
    """Where one curved tensor goes in the template: ``setattr(module, attr, ...)``."""

    module: nn.Module
    attr: str
    name: str
    placeholder: Tensor


def shard_bends(
    curve: CurveModel,
    blocks: Iterable[nn.Module],
    group: dist.ProcessGroup,
    *,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Replace ``curve``'s bend storage by per-unit slices and hook the units; in place.

    A unit is a block of ``blocks`` (with everything inside it), or any other
    module that owns a curved parameter (its own parameters only). A tensor
    tied into several units is stored once and gathered by each of them.
    With ``reshard_after_forward``, autograd keeps no gathered weight: the
    backward pass gathers each unit's weights again (see :class:`_Resharder`).

    Returns:
        An empty copy of the template (its parameters on the meta device), for
        :class:`FullCopy`.

    Raises:
        ModeConnError: A block is not a submodule of the curve's model, or lies
            inside another block.
    """
    template = curve.template
    block_list = _checked_blocks(template, blocks)
    sources = _unsharded_bends(curve)
    skeleton = meta_copy(template)
    in_block = {id(m): block for block in block_list for m in block.modules()}
    canonical = {id(p): name for name, p in template.named_parameters()}
    units: dict[int, tuple[nn.Module, str]] = {}
    installs: dict[int, list[_Install]] = {}
    stored_in: dict[str, int] = {}
    seen: set[tuple[int, str]] = set()
    for path, module in template.named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            name = canonical[id(param)]
            if name not in sources or (id(module), attr) in seen:
                continue  # frozen parameters stay in the template, whole on every rank
            seen.add((id(module), attr))
            unit = in_block.get(id(module), module)
            unit_path = _path_of(template, unit) if unit is not module else path
            units.setdefault(id(unit), (unit, unit_path))
            placeholder = torch.empty_like(param, device="meta")
            installs.setdefault(id(unit), []).append(_Install(module, attr, name, placeholder))
            stored_in.setdefault(name, id(unit))
    groups: dict[str, ShardedBends] = {}
    group_of: dict[str, str] = {}
    for unit_id, (_, unit_path) in units.items():
        by_kind: dict[tuple[torch.dtype, bool], list[str]] = {}
        for name in (n for n in sources if stored_in[n] == unit_id):
            kind = (sources[name].bends[0].dtype, sources[name].trainable)
            by_kind.setdefault(kind, []).append(name)
        for (dtype, trainable), members in by_kind.items():
            key = f"{unit_path.replace('.', '-') or 'root'}_{str(dtype).removeprefix('torch.')}"
            key += "" if trainable else "_frozen"
            groups[key] = _sharded_group(
                curve, members, [sources[n] for n in members], trainable=trainable, group=group
            )
            group_of.update(dict.fromkeys(members, key))
    for items in installs.values():
        for item in items:
            delattr(item.module, item.attr)
            setattr(item.module, item.attr, item.placeholder)
    curve.groups = nn.ModuleDict(groups)
    resharder = _Resharder() if reshard_after_forward else None
    for unit_id, (unit, _) in units.items():
        needed = sorted({group_of[item.name] for item in installs[unit_id]})
        _hook_unit(curve, unit, installs[unit_id], [groups[k] for k in needed], resharder)
    return skeleton


def _checked_blocks(template: nn.Module, blocks: Iterable[nn.Module]) -> list[nn.Module]:
    block_list = list(blocks)
    inside = {id(m) for m in template.modules()}
    foreign = [type(b).__name__ for b in block_list if id(b) not in inside]
    if foreign:
        raise ModeConnError(
            f"blocks= returned modules that are not part of the curve's model: {foreign}; "
            "return submodules of the model it is given, e.g. lambda model: model.model.layers."
        )
    for block in block_list:
        nested = [m for m in block.modules() if m is not block and any(m is b for b in block_list)]
        if nested:
            raise ModeConnError(
                f"blocks= returned a {type(nested[0]).__name__} inside another block "
                f"({type(block).__name__}); return blocks that do not contain each other."
            )
    return block_list


@dataclass
class _Source:
    """One curved tensor's flat bends (anchors and middle rows), free ends, mask, trainability."""

    bends: list[Tensor]
    free_ends: tuple[Tensor | None, Tensor | None]
    mask: Tensor | None
    trainable: bool


def _unsharded_bends(curve: CurveModel) -> dict[str, _Source]:
    """Every curved tensor's current bends, flat, from the curve's per-dtype groups."""
    sources: dict[str, _Source] = {}
    for group in curve.groups.values():
        if not isinstance(group, BendGroup):
            raise ModeConnError("shard_curve was already called on this curve; call it once.")
        anchors = group.anchors.detach()
        # Frozen middle entries lie on the straight line between the anchors.
        rows = [(1.0 - s) * anchors[0] + s * anchors[1] for s in group.positions]
        mask = None
        if group.index is not None:
            mask = torch.zeros(anchors.shape[1], dtype=torch.bool, device=anchors.device)
            mask[group.index] = True
        if group.middle is not None:
            middle = group.middle.detach()
            if group.index is None:
                rows = list(middle.unbind(0))
            else:
                for row, values in zip(rows, middle, strict=True):
                    row[group.index] = values
        free = [None if end is None else end.detach() for end in (group.start, group.end)]
        for name, (low, high), trainable in zip(
            group.names, group.spans, group.trainable, strict=True
        ):
            sources[name] = _Source(
                bends=[b[low:high] for b in (anchors[0], *rows, anchors[1])],
                free_ends=(
                    None if free[0] is None else free[0][low:high],
                    None if free[1] is None else free[1][low:high],
                ),
                mask=None if mask is None else mask[low:high],
                trainable=trainable,
            )
    return sources


def _sharded_group(
    curve: CurveModel,
    names: list[str],
    sources: list[_Source],
    *,
    trainable: bool,
    group: dist.ProcessGroup,
) -> ShardedBends:
    """The sharded bends of ``names`` (one unit, one dtype), concatenated in that order."""

    def joined(parts: Sequence[Tensor | None]) -> Tensor | None:
        return None if parts[0] is None else torch.cat(cast(Sequence[Tensor], parts))

    columns = zip(*(s.bends for s in sources), strict=True)
    return ShardedBends(
        names,
        [curve.template.get_parameter(n).shape for n in names],
        [torch.cat(column) for column in columns],
        joined([s.mask for s in sources]),
        free_ends=(
            joined([s.free_ends[0] for s in sources]),
            joined([s.free_ends[1] for s in sources]),
        ),
        trainable=trainable,
        group=group,
    )


def _path_of(root: nn.Module, target: nn.Module) -> str:
    return next(path for path, module in root.named_modules() if module is target)


def _hook_unit(
    curve: CurveModel,
    unit: nn.Module,
    installs: list[_Install],
    groups: list[ShardedBends],
    resharder: _Resharder | None,
) -> list[RemovableHandle]:
    """Put the unit's weights at the curve's ``t`` in place around each of its forward calls."""

    def install(module: nn.Module, args: Any) -> None:
        t = curve.last_t
        if t is None:
            raise ModeConnError(
                "a sharded curve's model runs through the curve: call curve(x, t=)."
            )
        coefs = [float(c) for c in curve.coefficients(t, curve.num_bends)]
        gathered = [(group, coefs, group.gather(coefs)) for group in groups]
        weights: dict[str, Tensor] = {}
        for group, _, full in gathered:
            weights.update(zip(group.names, group.split(full), strict=True))
        for item in installs:
            setattr(item.module, item.attr, weights[item.name])
        if resharder is not None:
            resharder.enter(unit, gathered)

    def release(module: nn.Module, args: Any, output: Any) -> None:
        for item in installs:
            setattr(item.module, item.attr, item.placeholder)
        if resharder is not None:
            resharder.exit(unit)

    # always_call: an exception in the unit's forward must still pop the saved-tensor hooks.
    return [
        unit.register_forward_pre_hook(install),
        unit.register_forward_hook(release, always_call=True),
    ]


class _Regather:
    """One gather of one unit's weights, repeated in backward for the views autograd saved.

    The gathered entries are kept from the first unpacked view until every view
    packed in the forward pass has been unpacked, so a unit whose backward reads
    several of its weights gathers once.
    """

    def __init__(self, group: ShardedBends, coefs: list[float], dtype: torch.dtype) -> None:
        self.group, self.coefs, self.dtype = group, coefs, dtype
        self.versions = group.versions()
        self.saved = self.unpacked = 0
        self.full: Tensor | None = None

    def view(self, size: torch.Size, stride: tuple[int, ...], offset: int) -> Tensor:
        """The saved view, from the unit's weights gathered again (collective)."""
        if self.full is None:
            if self.group.versions() != self.versions:
                raise ModeConnError(
                    "the sharded bends were changed in place between the forward and the "
                    "backward pass (e.g. an optimizer step), so their gathered weights cannot be "
                    "rebuilt; step after backward, or shard with reshard_after_forward=False."
                )
            with torch.no_grad():
                self.full = self.group.gather(self.coefs)
        view = self.full.as_strided(size, stride, offset)
        self.unpacked += 1
        if self.unpacked % self.saved == 0:  # every saved view unpacked, once per backward
            self.full = None
        return view


@dataclass(frozen=True)
class _Saved:
    """What autograd keeps of a saved view of gathered weights: where it lies in them."""

    regather: _Regather
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


class _Resharder:
    """Saved-tensor hooks that let autograd keep no gathered weight between forward and backward.

    While a unit runs, the flat weights it gathered are registered by their
    storage; a tensor autograd saves from that storage (a layer's weight, its
    transpose) is packed as a :class:`_Saved` instead, and unpacked in the
    backward pass by gathering the unit's weights again. The gathers run in the
    order autograd unpacks, the same on every rank, and give the same values.
    The cost is one all-gather more per unit and training step. Units nest (a
    module owning a parameter around the blocks), so registrations and hooks
    form a stack.
    """

    def __init__(self) -> None:
        self.live: dict[int, _Regather] = {}
        self.stack: list[tuple[nn.Module, saved_tensors_hooks, list[int]]] = []

    def enter(
        self, unit: nn.Module, gathered: list[tuple[ShardedBends, list[float], Tensor]]
    ) -> None:
        """Register a unit's gathered flat weights and push the hooks (before its forward)."""
        keys = []
        for group, coefs, full in gathered:
            keys.append(full.untyped_storage().data_ptr())
            self.live[keys[-1]] = _Regather(group, coefs, full.dtype)
        hooks = saved_tensors_hooks(self.pack, self.unpack)
        hooks.__enter__()
        self.stack.append((unit, hooks, keys))

    def exit(self, unit: nn.Module) -> None:
        """Pop the hooks and forget the registrations of ``unit`` (after its forward)."""
        if not self.stack or self.stack[-1][0] is not unit:
            return  # its pre-hook raised before entering
        _, hooks, keys = self.stack.pop()
        hooks.__exit__(None, None, None)
        for key in keys:
            del self.live[key]

    def pack(self, tensor: Tensor) -> Tensor | _Saved:
        """A saved view of gathered weights as a :class:`_Saved`; any other tensor unchanged."""
        if type(tensor) is not Tensor or tensor.layout != torch.strided:
            return tensor
        regather = self.live.get(tensor.untyped_storage().data_ptr())
        if regather is None or tensor.dtype != regather.dtype:
            return tensor
        regather.saved += 1
        return _Saved(regather, tensor.shape, tensor.stride(), tensor.storage_offset())

    @staticmethod
    def unpack(packed: Tensor | _Saved) -> Tensor:
        """The saved tensor back: a :class:`_Saved` view from a new gather (collective)."""
        if isinstance(packed, Tensor):
            return packed
        return packed.regather.view(packed.size, packed.stride, packed.offset)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (no storage); buffers copied."""
    memo: dict[int, object] = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class FullCopy:
    """Builds a plain copy of a model whose curved weights are sharded bends.

    The curve's ``export`` then writes the weights at ``t`` (gathered on every
    rank) into the copy; frozen parameters are copied from the template.
    """

    skeleton: nn.Module
    template: nn.Module
    device: Callable[[], torch.device]

    def __call__(self) -> nn.Module:
        """A new model of the template's class, frozen weights filled, curved ones empty."""
        # Fresh storage through deepcopy's memo, so tied parameters stay tied (to_empty would
        # untie them).
        device = self.device()
        memo: dict[int, object] = {
            id(p): nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
            for p in self.skeleton.parameters()
        }
        model = copy.deepcopy(self.skeleton, memo)
        with torch.no_grad():
            for name, param in self.template.named_parameters():
                model.get_parameter(name).copy_(param)
        return model
