"""Curves past one GPU: a LoRA curve's frozen base under FSDP2, or a full curve's bends sharded.

A :class:`~modeconn_unlearn.curve.CurveModel` over a PEFT model curves only
the adapters; the base weights are frozen and live once, in the curve's template.
:func:`shard_curve` shards that base with PyTorch's FSDP2
(:func:`torch.distributed.fsdp.fully_shard`), one unit per decoder block plus one
for the rest (embeddings, head), so each rank holds ``1/world`` of it. The curved
adapter parameters are left out of FSDP's management (``ignored_params``): the
curve swaps them for the weights at ``t`` with
:func:`torch.func.functional_call`, which FSDP2 cannot follow. The bends are
small, so every rank keeps all of them and their gradients are averaged over
the ranks right after they are accumulated; the optimizer step is then the same
on every rank and the ranks stay identical.

A full-parameter curve (every weight curved) has no frozen base; there
:func:`shard_curve` shards the bends themselves along their entries, block by
block (:mod:`.sharded_bends`), and each rank writes its own checkpoint
(:func:`checkpoint_file`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ..curve import CurveModel
from ..errors import ModeConnError
from ..wrappers import module_device
from .sharded_bends import FullCopy, ShardedBends, meta_copy, shard_bends

__all__ = ["checkpoint_file", "grad_norm", "has_sharded_bends", "is_sharded", "shard_curve"]

#: Where a sharded curve keeps the callable that builds an unsharded copy of its model
#: (read by ``CurveModel.export``).
UNSHARDED_COPY = "_unsharded_copy"


def is_sharded(curve: nn.Module) -> bool:
    """Whether :func:`shard_curve` was called on ``curve``.

    Example:
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> is_sharded(CurveModel(a, start=a, end=b))
        False
    """
    return UNSHARDED_COPY in curve.__dict__


def shard_curve(
    curve: CurveModel,
    mesh: DeviceMesh | None = None,
    *,
    blocks: Callable[[nn.Module], Iterable[nn.Module]] | None = None,
    reshard_after_forward: bool = True,
) -> CurveModel:
    """Shard a curve over the ranks; in place.

    A curve with frozen parameters (a LoRA curve) has its frozen base sharded
    with FSDP2, the bends replicated (below). A full-parameter curve (every
    parameter curved) has its bends sharded instead: each rank keeps its slice
    of every bend, grouped per block (each of ``blocks``, and each other module
    that owns parameters), and gathers one block's weights at ``t`` when that
    block runs (:mod:`~modeconn_unlearn.training.sharded_bends`); its gradients
    are reduce-scattered and averaged, and the optimizer holds only the local
    slices. See ``docs/scale_out.md``.

    ``reshard_after_forward`` (as in FSDP2) frees each unit's gathered weights
    when its forward pass ends and gathers them again in the backward pass, so a
    training step holds about one unit's full weights at a time instead of every
    unit's (autograd saves a layer's weight for the input's gradient), for one
    all-gather more per unit and step. The gradients are the same either way.

    For a LoRA curve, each block of the curve's model (by default the children of its largest
    ``nn.ModuleList``, e.g. a Llama's decoder layers) and then the model itself
    are ``fully_shard``-ed on ``mesh`` with the curved parameters in
    ``ignored_params``. The bends stay whole on every rank: they are broadcast
    from the mesh's first rank once, and their gradients are averaged over the
    mesh during every backward pass, so any optimizer keeps the ranks
    identical. :func:`~modeconn_unlearn.training.fit_curve` then runs the
    curve without wrapping it in ``DistributedDataParallel``; in your own loop
    do not wrap it either.

    Every rank must call this (and later :meth:`CurveModel.export`, which
    gathers the base back into a plain copy of the model on every rank) at the
    same point. Move the curve to its device before sharding it.

    Args:
        curve: A curve whose model has frozen parameters, e.g. two adapters
            over one base (``peft.get_peft_model``), or a full-parameter curve.
        mesh: A 1-D device mesh; default ``init_device_mesh(<curve's device
            type>, (world_size,))`` over the default process group.
        blocks: ``model -> blocks`` to shard one by one; default the children
            of the ``nn.ModuleList`` that holds most parameters (for a
            full-parameter curve, none: then every module owning parameters is
            a unit of its own).
        reshard_after_forward: Free the gathered weights after each unit's
            forward pass and gather them again for its backward pass (a LoRA
            curve passes it to ``fully_shard``). ``False`` keeps them until
            the backward pass: faster, but every unit's full weights are alive
            at the end of the forward pass.

    Returns:
        ``curve`` itself, sharded.

    Raises:
        TypeError: ``curve`` is not a :class:`CurveModel`.
        ModeConnError: No process group, a mesh that is not 1-D, not over
            every rank or not on the curve's device type, a curve already
            sharded, no blocks found in a LoRA curve, ``blocks`` that are not
            disjoint submodules of the model, or a ``reshard_after_forward``
            that is not a bool.

    Example:
        >>> import torch.distributed as dist
        >>> dist.init_process_group("gloo")  # doctest: +SKIP
        >>> curve = shard_curve(CurveModel(lora_o, start=lora_o, end=lora_u))  # doctest: +SKIP
        >>> fit_curve(curve, retain, forget, batch_size=32)  # doctest: +SKIP
    """
    if not isinstance(curve, CurveModel):
        raise TypeError(f"shard_curve takes a CurveModel, got {type(curve).__name__}.")
    if is_sharded(curve):
        raise ModeConnError("shard_curve was already called on this curve; call it once.")
    if not isinstance(reshard_after_forward, bool):
        raise ModeConnError(
            f"reshard_after_forward must be True or False, got {reshard_after_forward!r}."
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise ModeConnError(
            "shard_curve needs a torch.distributed process group: run under torchrun and call "
            "torch.distributed.init_process_group first."
        )
    mesh = _checked_mesh(curve, mesh)
    template = curve.template
    if all(p.requires_grad for p in template.parameters()):
        units = list(blocks(template) if blocks is not None else _largest_module_list(template))
        _replicate(curve, mesh)
        skeleton = shard_bends(
            curve, units, mesh.get_group(), reshard_after_forward=reshard_after_forward
        )
        curve.__dict__[UNSHARDED_COPY] = FullCopy(skeleton, template, lambda: module_device(curve))
        return curve
    curved = {p for p in template.parameters() if p.requires_grad}
    units = list(blocks(template) if blocks is not None else _largest_module_list(template))
    if not units:
        raise ModeConnError(
            f"no blocks to shard in {type(template).__name__}: it has no nn.ModuleList of "
            "layers; pass blocks=lambda model: <its decoder layers>."
        )
    _replicate(curve, mesh)
    skeleton = meta_copy(template)
    for module in [*units, template]:
        fully_shard(
            module, mesh=mesh, ignored_params=curved, reshard_after_forward=reshard_after_forward
        )
    group, world = mesh.get_group(), mesh.size()
    for param in curve.parameters():
        param.register_post_accumulate_grad_hook(_averaging_hook(group, world))
    curve.__dict__[UNSHARDED_COPY] = _UnshardedCopy(skeleton, template)
    return curve


def checkpoint_file(module: nn.Module, kind: str) -> str:
    """The name of a run's checkpoint file: one per rank when ``module`` has sharded bends.

    Example:
        >>> checkpoint_file(nn.Linear(2, 1), "fit_curve")
        'fit_curve.pt'
    """
    if not has_sharded_bends(module):
        return f"{kind}.pt"
    return f"{kind}.rank{dist.get_rank()}-of-{dist.get_world_size()}.pt"


def grad_norm(module: nn.Module, grads: list[Tensor]) -> Tensor:
    """The 2-norm of ``grads``, over every rank's shard when ``module`` has sharded bends.

    With sharded bends this is a collective: every rank calls it, also with no gradient.

    Example:
        >>> grad_norm(nn.Linear(2, 1), [torch.tensor([3.0, 4.0])]).item()
        5.0
    """
    norm = (
        torch.nn.utils.get_total_norm(grads)
        if grads
        else torch.zeros((), device=module_device(module))
    )
    if not has_sharded_bends(module):
        return norm
    squared = norm.to(torch.float64).square()
    dist.all_reduce(squared)
    return squared.sqrt().to(norm.dtype)


def has_sharded_bends(module: nn.Module) -> bool:
    """Whether ``module`` is a full-parameter curve whose bends :func:`shard_curve` sharded.

    Each rank then holds other bends and optimizer state, and writes its own checkpoint.

    Example:
        >>> has_sharded_bends(nn.Linear(2, 1))
        False
    """
    return isinstance(module, CurveModel) and any(
        isinstance(group, ShardedBends) for group in module.groups.values()
    )


def _checked_mesh(curve: CurveModel, mesh: DeviceMesh | None) -> DeviceMesh:
    device = module_device(curve)
    if mesh is None:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if mesh.ndim != 1:
        raise ModeConnError(
            f"shard_curve takes a 1-D device mesh, got {mesh.ndim} dimensions "
            f"{tuple(mesh.shape)}; hybrid sharding is not supported."
        )
    if mesh.size() != dist.get_world_size():
        raise ModeConnError(
            f"the mesh spans {mesh.size()} of the {dist.get_world_size()} ranks; the batches are "
            "split over every rank, so the gradients must be averaged over every rank: build the "
            f"mesh with init_device_mesh({device.type!r}, (world_size,)), or pass none."
        )
    if mesh.device_type != device.type:
        raise ModeConnError(
            f"the mesh is on {mesh.device_type!r} but the curve is on {device.type!r}; move the "
            f"curve with curve.to(...) first, or build the mesh with "
            f"init_device_mesh({device.type!r}, (world_size,))."
        )
    if mesh.device_type != "cpu" and not torch.get_device_module(mesh.device_type).is_available():
        raise ModeConnError(
            f"the mesh is on {mesh.device_type!r} but this machine has no such device; use a "
            "'cpu' mesh with the gloo backend."
        )
    return mesh


def _largest_module_list(model: nn.Module) -> list[nn.Module]:
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))


def _replicate(curve: CurveModel, mesh: DeviceMesh) -> None:
    """Make every rank start from the mesh's first rank's bends (as DDP does)."""
    group = mesh.get_group()
    source = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for tensor in [*curve.parameters(), *curve.buffers()]:
            dist.broadcast(tensor, src=source, group=group)


def _averaging_hook(group: dist.ProcessGroup, world: int) -> Callable[[Tensor], None]:
    def average(param: Tensor) -> None:
        if param.grad is not None:
            dist.all_reduce(param.grad, group=group)
            param.grad.div_(world)

    return average


@dataclass(frozen=True)
class _UnshardedCopy:
    """Builds a plain copy of a sharded model: the skeleton, filled with gathered weights."""

    skeleton: nn.Module
    sharded: nn.Module

    def __call__(self) -> nn.Module:
        # full_tensor() is a collective: every rank walks the parameters in the same order.
        full = {
            name: p.full_tensor() if isinstance(p, DTensor) else p.detach().clone()
            for name, p in self.sharded.named_parameters()
        }
        model = copy.deepcopy(self.skeleton)
        filled = {
            id(p): nn.Parameter(full[name].detach(), requires_grad=p.requires_grad)
            for name, p in model.named_parameters()
        }
        for module in model.modules():
            for key, param in list(module.named_parameters(recurse=False)):
                setattr(module, key, filled[id(param)])
        return model
