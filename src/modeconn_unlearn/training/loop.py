"""The one training loop behind :func:`unlearn`, :func:`retrain` and :func:`fit_curve`.

Deterministic given the seed (the global RNGs are seeded inside the run and
restored after it; the data order comes from its own generator), a checkpoint
written atomically after every epoch, bit-identical continuation on resume,
and a failed step (a NaN/inf loss or gradient, an exception in the objective
or in a callback) leaves the module at its last good state: no update is made
with a non-finite value, and the buffers a failed forward pass changed (e.g.
BatchNorm running statistics) are put back.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..curve import CurveModel
from ..data import move_to_device
from ..errors import ModeConnError, NonFiniteLossError
from ..losses import UnlearnLoss
from ..progress import progress_bar
from .config import TrainConfig
from .distributed import all_reduce_sum, barrier, is_distributed, no_forward_buffer_sync, rank
from .fsdp import checkpoint_file, grad_norm, has_sharded_bends, is_sharded
from .history import EpochMeter, History
from .loaders import RunLoader
from .state import check_resumable, load_state, rng_state, seeded, set_rng_state, write_state

__all__ = ["Run", "make_scheduler", "step_plan", "train"]

logger = logging.getLogger("modeconn_unlearn.training")


@dataclass
class Run:
    """Everything one training run needs (built by the public functions).

    Attributes:
        kind: ``"unlearn"``, ``"retrain"`` or ``"fit_curve"`` (names the checkpoint file).
        module: The module being trained; its ``state_dict`` is checkpointed.
        loss: The objective.
        data: The run's loader.
        optimizer: Over the trainable parameters of ``module``.
        scheduler: Stepped after every epoch or every optimizer step
            (``config.scheduler_interval``), or ``None``.
        config: The run's settings.
        device: Where the batches go.
        after_step: Called after every optimizer step (re-pins masked-out entries).
        settings: The settings a resumed run must share with the checkpoint.
        updated_grads: The gradient entries the optimizer's step changes, whose
            norm ``config.max_grad_norm`` bounds (``None``: every gradient of the
            optimizer's parameters; a partial mask leaves its fixed entries out).
    """

    kind: str
    module: nn.Module
    loss: UnlearnLoss
    data: RunLoader
    optimizer: Optimizer
    scheduler: LRScheduler | None
    config: TrainConfig
    device: torch.device
    after_step: Callable[[], None]
    settings: dict[str, Any]
    updated_grads: Callable[[], list[Tensor]] | None = None


def step_plan(config: TrainConfig, batches: int) -> tuple[int, int, int]:
    """Epochs, optimizer steps per epoch and optimizer steps in all of a run.

    Args:
        config: The run's settings (``epochs``, ``max_steps``, ``grad_accumulation``).
        batches: Batches per epoch (on this rank).

    Example:
        >>> step_plan(TrainConfig(lr=0.1, epochs=3, grad_accumulation=2), batches=5)
        (3, 3, 9)
        >>> step_plan(TrainConfig(lr=0.1, max_steps=4), batches=3)
        (2, 3, 4)
    """
    updates = -(-batches // int(config.grad_accumulation))
    max_steps = config.max_steps
    epochs = config.epochs if config.epochs is not None else -(-int(max_steps or 0) // updates)
    total = epochs * updates if max_steps is None else min(epochs * updates, max_steps)
    return epochs, updates, total


def make_scheduler(config: TrainConfig, optimizer: Optimizer, batches: int) -> LRScheduler | None:
    """The run's scheduler: ``config.scheduler(optimizer)``, or with the total steps.

    A per-step schedule (``scheduler_interval="step"``) is built as
    ``config.scheduler(optimizer, total_steps)`` with the run's number of
    optimizer steps (:func:`step_plan`).

    Raises:
        ModeConnError: The factory did not return an ``LRScheduler``.

    Example:
        >>> from modeconn_unlearn.training import warmup_schedule
        >>> layer = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        >>> config = TrainConfig(lr=1.0, epochs=2, scheduler=warmup_schedule(2),
        ...                      scheduler_interval="step")
        >>> type(make_scheduler(config, opt, batches=4)).__name__, opt.param_groups[0]["lr"]
        ('SequentialLR', 0.5)
    """
    factory = config.scheduler
    if factory is None:
        return None
    if config.scheduler_interval == "step":
        scheduler = factory(optimizer, step_plan(config, batches)[2])  # type: ignore[call-arg]
    else:
        scheduler = factory(optimizer)  # type: ignore[call-arg]
    if not isinstance(scheduler, LRScheduler):
        raise ModeConnError(
            f"the scheduler factory returned {type(scheduler).__name__}, not a "
            "torch.optim.lr_scheduler.LRScheduler."
        )
    return scheduler


def _forward_module(run: Run) -> nn.Module:
    """The module the objective is called with: DDP- and/or ``torch.compile``-wrapped."""
    module: nn.Module = run.module
    # A sharded curve averages its bends' gradients itself (shard_curve), so no DDP on top.
    if is_distributed() and not is_sharded(run.module):
        device_ids = [run.device] if run.device.type == "cuda" else None
        # A curve's buffers are identical on every rank: never synced in forward.
        options = no_forward_buffer_sync() if isinstance(run.module, CurveModel) else {}
        module = DistributedDataParallel(module, device_ids=device_ids, **options)
    if run.config.compile and has_sharded_bends(run.module):
        raise ModeConnError(
            "compile=True cannot compile a curve whose bends shard_curve sharded (its blocks "
            "gather their weights in hooks during the forward pass); train it without compile."
        )
    if run.config.compile:
        backend = run.config.compile if isinstance(run.config.compile, str) else "inductor"
        module = torch.compile(module, backend=backend)  # type: ignore[assignment]
    return module


def _checked_scalar(value: Any, where: str, module: nn.Module) -> float:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ModeConnError(
            f"the objective must return a scalar tensor, got {type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
            + "; reduce it with .mean()."
        )
    scalar = float(value.detach())
    finite = math.isfinite(scalar)
    if is_distributed():
        # Every rank must stop together, or the others would wait forever in backward().
        flags = all_reduce_sum(torch.tensor([0.0 if finite else 1.0], dtype=torch.float64))
        finite = float(flags[0]) == 0.0
    if not finite:
        raise NonFiniteLossError(
            f"{where}: the loss is {scalar}"
            + (" here but not finite on another rank" if math.isfinite(scalar) else "")
            + "; no update was made with it, so the model keeps its "
            "last finite state. Lower lr, use fewer epochs, or a bounded objective (e.g. "
            "neggrad_plus, or mcu_objective with a smaller beta).",
            model=module,
        )
    if not value.requires_grad:
        raise ModeConnError(
            f"{where}: the loss does not depend on any trainable parameter; check that the "
            "objective runs the model it is given."
        )
    return scalar


def _check_gradients(params: list[Tensor], where: str, module: nn.Module) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    # Sharded bends: the norm over every rank's shard, so that all ranks stop together.
    sharded = has_sharded_bends(module)
    if (grads or sharded) and not bool(torch.isfinite(grad_norm(module, grads))):
        raise NonFiniteLossError(
            f"{where}: the loss is finite but its gradient is not (NaN or inf); no update was "
            "made, so the model keeps its last finite state. Lower lr or clip the objective.",
            model=module,
        )


def _clip(run: Run, params: list[Tensor]) -> None:
    """Scale the gradients so that the norm of what the step updates is at most the bound."""
    max_norm = run.config.max_grad_norm
    if max_norm is None:
        return
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad] if run.updated_grads is None else run.updated_grads()
    if (not with_grad or not grads) and not has_sharded_bends(run.module):
        return
    norm = grad_norm(run.module, grads)  # over every rank's shard for sharded bends
    torch.nn.utils.clip_grads_with_norm_(with_grad, float(max_norm), norm)


def _check_precision(run: Run) -> None:
    if run.config.precision == "fp32":
        return
    kind = run.device.type
    if not torch.amp.is_autocast_available(kind):
        raise ModeConnError(
            f"precision='bf16' autocasts the forward pass, which torch does not support on "
            f"{kind!r}; train in precision='fp32' there."
        )
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModeConnError(
            f"precision='bf16' needs a GPU with bfloat16 support, and {run.device} has none "
            "(torch.cuda.is_bf16_supported() is False); use precision='fp32'."
        )


def _backward(value: Tensor, create_graph: bool) -> None:
    if not create_graph:
        value.backward()  # type: ignore[no-untyped-call]
        return
    with warnings.catch_warnings():
        # torch warns of the parameter <-> gradient reference cycle; _step breaks it by
        # clearing the gradients after every optimizer step.
        warnings.filterwarnings("ignore", message=".*create_graph=True.*", category=UserWarning)
        value.backward(create_graph=True)  # type: ignore[no-untyped-call]


def _optimizer_step(run: Run, where: str) -> None:
    try:
        run.optimizer.step()
    except RuntimeError as error:
        if run.config.create_graph or "does not have a grad_fn" not in str(error):
            raise
        raise ModeConnError(
            f"{where}: {type(run.optimizer).__name__}.step() differentiates the gradients "
            "again (e.g. a Hutchinson Hessian estimate), but they carry no graph; pass "
            f"create_graph=True. ({error})"
        ) from error


@dataclass(frozen=True)
class _Part:
    """Where a batch sits in its accumulation group of ``size`` batches."""

    first: bool
    last: bool
    size: int


def _part(index: int, steps: int, accumulation: int) -> _Part:
    """The group of batch ``index`` (from 1) of an epoch of ``steps`` batches."""
    start = (index - 1) // accumulation * accumulation
    size = min(accumulation, steps - start)
    return _Part(first=index - 1 == start, last=index == start + size, size=size)


def _step(
    run: Run, forward: nn.Module, batch: Any, params: list[Tensor], where: str, part: _Part
) -> float:
    """One batch's backward, and the optimizer step on the last batch of its group.

    The gradients of a group's batches are averaged (each loss is divided by the
    group's size). On any failure the module's buffers are restored, the
    accumulated gradients dropped, and nothing moves.
    """
    buffers = [(b, b.detach().clone()) for b in run.module.buffers()]
    create_graph = run.config.create_graph
    try:
        bf16 = run.config.precision == "bf16"
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16):
            value = run.loss(forward, move_to_device(batch, run.device))
        scalar = _checked_scalar(value, where, run.module)
        if part.first:
            run.optimizer.zero_grad(set_to_none=True)
        _backward(value / part.size if part.size > 1 else value, create_graph)
        if part.last:
            _check_gradients(params, where, run.module)
            _clip(run, params)
            _optimizer_step(run, where)
    except BaseException:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        run.optimizer.zero_grad(set_to_none=True)
        raise
    if part.last:
        if create_graph:
            run.optimizer.zero_grad(set_to_none=True)  # the gradients hold the graph
        run.after_step()
    return scalar


def _resume(run: Run, path: Path | None, epochs: int) -> tuple[History, int, int]:
    """History, epoch and global step to continue from (empty, 0, 0 without a checkpoint)."""
    if not run.config.resume or path is None:
        return History(), 0, 0
    if not path.is_file():
        logger.info("%s: no checkpoint at %s; starting from epoch 1", run.kind, path)
        return History(), 0, 0
    state = load_state(path)
    check_resumable(state, run.kind, run.settings, path)
    if int(state["epoch"]) > epochs:
        raise ModeConnError(
            f"the checkpoint {path} is at epoch {state['epoch']}, past epochs={epochs}."
        )
    run.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    if run.data.generator is not None:
        run.data.generator.set_state(state["loader_rng"])
    set_rng_state(state["rng"], run.device)
    start = int(state["epoch"])
    logger.info("%s: resuming from %s after epoch %d", run.kind, path, start)
    return History.from_state(state["history"]), start, int(state.get("step", 0))


def _save(run: Run, path: Path, epoch: int, step: int, history: History) -> None:
    if rank() == 0 or has_sharded_bends(run.module):  # sharded bends: a file per rank
        generator = run.data.generator
        write_state(
            path,
            {
                "kind": run.kind,
                "epoch": epoch,
                "step": step,
                "config": run.settings,
                "model": run.module.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
                "loader_rng": torch.zeros(0) if generator is None else generator.get_state(),
                "rng": rng_state(run.device),
                "history": history.state(),
            },
        )
    barrier()


def train(run: Run) -> History:
    """Run the loop; returns the :class:`History` (of all epochs, with ``resume``)."""
    config = run.config
    steps = len(run.data.loader)
    if steps == 0:
        raise ModeConnError(f"{run.kind}: the training data gives no batch.")
    accumulation = int(config.grad_accumulation)
    max_steps = config.max_steps
    epochs, updates, total = step_plan(config, steps)
    per_step = run.scheduler is not None and config.scheduler_interval == "step"
    _check_precision(run)
    directory = config.checkpoint_dir
    path = None if directory is None else Path(directory) / checkpoint_file(run.module, run.kind)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    if config.create_graph and is_distributed():
        raise ModeConnError(
            "create_graph=True is not supported under torchrun (DistributedDataParallel does "
            "not support double backward); run a second-order optimizer in one process."
        )
    with seeded(int(config.seed), run.device):
        history, start, step = _resume(run, path, epochs)
        forward = _forward_module(run)
        bar = progress_bar(
            config.progress and rank() == 0,
            total=total,
            initial=min(start * updates, total) if max_steps is None else min(step, total),
            desc=run.kind,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            for epoch in range(start + 1, epochs + 1):
                if max_steps is not None and step >= max_steps:
                    break
                run.module.train()
                run.data.start_epoch(epoch)
                meter = EpochMeter()
                began = time.perf_counter()
                lr = float(run.optimizer.param_groups[0]["lr"])
                for index, batch in enumerate(run.data.loader, start=1):
                    where = f"{run.kind} epoch {epoch}/{epochs}, step {index}/{steps}"
                    part = _part(index, steps, accumulation)
                    scalar = _step(run, forward, batch, params, where, part)
                    stats = getattr(run.loss, "last_stats", None)
                    meter.update(scalar, stats if isinstance(stats, Mapping) else {})
                    if not part.last:
                        continue
                    step += 1
                    if per_step:
                        run.scheduler.step()  # type: ignore[union-attr]
                    bar.update(1)
                    bar.set_postfix(loss=f"{scalar:.4f}", refresh=False)
                    if config.step_callback is not None:
                        config.step_callback(step, run.module)
                    if max_steps is not None and step >= max_steps:
                        break
                if run.scheduler is not None and not per_step:
                    run.scheduler.step()
                record = meter.record(epoch, lr, time.perf_counter() - began)
                history.records.append(record)
                logger.info(
                    "%s epoch %d/%d: loss=%.4f retain_acc=%.2f forget_acc=%.2f beta=%.4g (%.1fs)",
                    run.kind,
                    epoch,
                    epochs,
                    record.loss,
                    record.retain_acc,
                    record.forget_acc,
                    record.beta,
                    record.time_s,
                )
                if path is not None:
                    _save(run, path, epoch, step, history)
                for callback in config.callbacks:
                    callback(record, run.module)
        finally:
            bar.close()
    return history
