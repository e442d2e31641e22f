"""The training configuration: one validated, frozen dataclass for every loop."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..checks import as_float, positive_int
from ..errors import ModeConnError
from ..optional import require

if TYPE_CHECKING:
    from .history import EpochRecord

__all__ = [
    "Callback",
    "OptimizerSpec",
    "SchedulerFactory",
    "StepCallback",
    "StepSchedulerFactory",
    "TrainConfig",
    "make_optimizer",
    "resolve_config",
    "second_order_optimizer",
]

OptimizerSpec = str | Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]
StepSchedulerFactory = Callable[[Optimizer, int], LRScheduler]
Callback = Callable[["EpochRecord", nn.Module], None]
StepCallback = Callable[[int, nn.Module], None]
TSamplerSpec = Callable[[], float] | tuple[float, float]

_OPTIMIZERS = ("sgd", "adam", "adamw", "sophiah")
_CURRICULA = ("easy_first", "hard_first")
_INTERVALS = ("epoch", "step")
_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (:func:`unlearn`, :func:`retrain`, :func:`fit_curve`).

    Every field is checked when the config is made; a bad value raises
    :class:`~modeconn_unlearn.errors.ModeConnError` naming the field.

    Attributes:
        lr: Learning rate (> 0).
        epochs: Number of epochs; may be ``None`` when ``max_steps`` is given
            (then as many epochs as ``max_steps`` needs).
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"``, ``"adamw"``,
            ``"sophiah"`` (``pytorch_optimizer.SophiaH``, a second-order optimiser
            with a Hutchinson estimate of the Hessian diagonal, from the
            ``second-order`` extra; needs ``create_graph=True``), or a callable
            ``(params, lr=...) -> Optimizer`` (any maintained optimiser;
            ``momentum`` and ``weight_decay`` then do not apply).
        momentum: SGD momentum (>= 0).
        weight_decay: Weight decay (>= 0); ``None`` means the function's default
            (5e-4 for ``unlearn``/``retrain``, 0 for ``fit_curve``, since decaying a
            bend pulls it towards zero weights rather than towards the ends).
        batch_size: Samples per batch (the global batch under ``torchrun``); an
            optimizer step sees ``batch_size * grad_accumulation`` samples.
        retain_ratio: Fraction in (0, 1] of the retain set used (a fixed random subset).
        scheduler: Optional learning-rate schedule, as a factory called once per
            run: ``scheduler(optimizer)`` when ``scheduler_interval="epoch"``,
            ``scheduler(optimizer, total_steps)`` when ``"step"``, where
            ``total_steps`` is the run's number of optimizer steps (epochs x
            optimizer steps per epoch, or ``max_steps`` when it stops the run
            first). :func:`~modeconn_unlearn.training.warmup_schedule` gives the
            usual LM schedule (linear warm-up, linear or cosine decay to 0).
        scheduler_interval: ``"epoch"`` steps the scheduler after every epoch;
            ``"step"`` after every optimizer step (so once per
            ``grad_accumulation`` batches). Its state is checkpointed either way.
        seed: Seed of the data order, the retain subsample and the global RNGs
            during training (restored afterwards).
        device: Where to train; default: the model's device (under ``torchrun``
            with CUDA: ``cuda:LOCAL_RANK``).
        progress: Show a tqdm progress bar.
        checkpoint_dir: If given, a checkpoint is written there atomically after
            every epoch (and when ``max_steps`` stops a run).
        resume: Continue from the checkpoint in ``checkpoint_dir`` (bit-identical).
        callbacks: Callables ``(record, model)`` run after each epoch.
        max_steps: Stop after this many optimizer steps in all (e.g. a short
            relearning run of k steps); ``None``: no limit.
        step_callback: Callable ``(step, model)`` run after every optimizer step
            (``step`` counts from 1 over the whole run).
        compile: ``torch.compile`` the module being trained: ``True`` (default
            backend) or a backend name such as ``"aot_eager"``.
        curriculum: ``None`` (shuffled), ``"easy_first"`` or ``"hard_first"``:
            the forget samples, ordered by the model's initial per-sample loss,
            are spread evenly over each epoch in that order; the retain samples
            stay shuffled.
        t_sampler: ``fit_curve`` only: a callable returning ``t`` or a
            ``(low, high)`` range for U(low, high), for this run.
        create_graph: Backpropagate with ``create_graph=True``, so that the
            optimizer can differentiate the gradients once more (Hessian-vector
            products: ``"sophiah"``, or a callable optimizer such as
            ``functools.partial(pytorch_optimizer.AdaHessian, ...)``). A step
            then costs about twice the time and memory; the gradients, which
            hold the graph, are cleared after every step. Not with ``compile``
            (compiled graphs are differentiated once), under ``torchrun`` (DDP
            does not support double backward) or in ``fit_curve`` (the curve's
            fused weight combination is differentiable once).
        grad_accumulation: Batches whose gradients are averaged before each
            optimizer step (>= 1): a step on ``k`` batches of ``b`` samples equals
            one step on a batch of ``k * b`` (for objectives that average over
            the batch). An epoch's last step averages the batches left over.
            ``max_steps``, ``step_callback`` and the progress bar count
            optimizer steps.
        max_grad_norm: Clip the gradient before every optimizer step (after the
            group's batches are accumulated) to this total L2 norm over the
            entries the optimizer updates (a mask's fixed entries are not
            counted), as ``torch.nn.utils.clip_grad_norm_`` does; ``None``: no
            clipping.
        precision: ``"fp32"``, or ``"bf16"``: the forward pass and the objective
            run under ``torch.autocast(device_type, dtype=torch.bfloat16)``; the
            weights, their gradients and the optimizer stay in float32 (no
            gradient scaling is needed for bfloat16). CPUs support it; on CUDA
            the GPU must (``torch.cuda.is_bf16_supported()``), or the run
            raises before its first step.

    Example:
        >>> config = TrainConfig(lr=0.01, epochs=5)
        >>> config.replace(max_steps=20).max_steps
        20
        >>> config.replace(optimizer="sophiah", create_graph=True).create_graph
        True
        >>> from modeconn_unlearn.training import warmup_schedule
        >>> lm = config.replace(optimizer="adamw", scheduler=warmup_schedule(0.1, decay="cosine"),
        ...                     scheduler_interval="step", max_grad_norm=1.0, precision="bf16")
        >>> lm.scheduler
        warmup_schedule(0.1, decay='cosine')
        >>> TrainConfig(lr=0.01)
        Traceback (most recent call last):
        ...
        modeconn_unlearn.errors.ModeConnError: give epochs=... or max_steps=... (or both).
    """

    lr: float
    epochs: int | None = None
    optimizer: OptimizerSpec = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    batch_size: int = 64
    retain_ratio: float = 1.0
    scheduler: SchedulerFactory | None = None
    seed: int = 0
    device: torch.device | str | None = None
    progress: bool = True
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume: bool = False
    callbacks: Sequence[Callback] = field(default=())
    max_steps: int | None = None
    step_callback: StepCallback | None = None
    compile: bool | str = False
    curriculum: Literal["easy_first", "hard_first"] | None = None
    t_sampler: TSamplerSpec | None = None
    create_graph: bool = False
    grad_accumulation: int = 1
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    max_grad_norm: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        as_float(self.lr, "lr", positive=True)
        positive_int(self.epochs, "epochs", optional=True)
        positive_int(self.max_steps, "max_steps", optional=True)
        if self.epochs is None and self.max_steps is None:
            raise ModeConnError("give epochs=... or max_steps=... (or both).")
        if isinstance(self.optimizer, str):
            if self.optimizer.lower() not in _OPTIMIZERS:
                raise ModeConnError(
                    f"unknown optimizer {self.optimizer!r}; use 'sgd', 'adam', 'adamw', 'sophiah' "
                    "or a callable (params, lr=...) -> torch.optim.Optimizer such as "
                    "torch.optim.RMSprop."
                )
        elif not callable(self.optimizer):
            raise ModeConnError(
                f"optimizer must be a name or a callable (params, lr=...) -> Optimizer, got "
                f"{type(self.optimizer).__name__}."
            )
        as_float(self.momentum, "momentum", nonnegative=True)
        if self.weight_decay is not None:
            as_float(self.weight_decay, "weight_decay", nonnegative=True)
        positive_int(self.batch_size, "batch_size")
        positive_int(self.grad_accumulation, "grad_accumulation")
        ratio = self.retain_ratio
        if isinstance(ratio, bool) or not (
            isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio <= 1.0
        ):
            raise ModeConnError(f"retain_ratio must lie in (0, 1], got {ratio!r}.")
        self._check_scheduler()
        if self.max_grad_norm is not None:
            as_float(self.max_grad_norm, "max_grad_norm", positive=True)
        if self.precision not in _PRECISIONS:
            raise ModeConnError(
                f"precision must be 'fp32' or 'bf16' (autocast in bfloat16), got "
                f"{self.precision!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ModeConnError(f"seed must be an integer, got {self.seed!r}.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ModeConnError(f"device {self.device!r} is not a torch device.") from None
        for name in ("progress", "resume", "create_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ModeConnError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.resume and self.checkpoint_dir is None:
            raise ModeConnError(
                "resume=True needs checkpoint_dir, the directory of the checkpoint."
            )
        callbacks = tuple(self.callbacks) if not callable(self.callbacks) else (self.callbacks,)
        for cb in callbacks:
            if not callable(cb):
                raise ModeConnError(
                    f"callbacks must be callables (record, model) -> None, got {cb!r}."
                )
        object.__setattr__(self, "callbacks", callbacks)
        if self.step_callback is not None and not callable(self.step_callback):
            raise ModeConnError("step_callback must be a callable (step, model) -> None.")
        if not isinstance(self.compile, (bool, str)):
            raise ModeConnError(
                f"compile must be True/False or a torch.compile backend name, got {self.compile!r}."
            )
        if self.curriculum is not None and self.curriculum not in _CURRICULA:
            raise ModeConnError(
                f"curriculum must be None, 'easy_first' or 'hard_first', got {self.curriculum!r}."
            )
        self._check_t_sampler()
        self._check_create_graph()

    def _check_scheduler(self) -> None:
        interval, factory = self.scheduler_interval, self.scheduler
        if interval not in _INTERVALS:
            raise ModeConnError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}.")
        if factory is None:
            if interval != "epoch":
                raise ModeConnError(
                    "scheduler_interval='step' needs a scheduler, e.g. "
                    "scheduler=warmup_schedule(0.1); leave it 'epoch' without one."
                )
            return
        per_epoch = interval == "epoch"
        wanted = (
            "optimizer -> LRScheduler" if per_epoch else "(optimizer, total_steps) -> LRScheduler"
        )
        if not callable(factory):
            raise ModeConnError(f"scheduler must be a factory {wanted} or None.")
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # a callable whose signature Python cannot read
            return
        arguments = (None,) if per_epoch else (None, 0)
        try:
            signature.bind(*arguments)
        except TypeError:
            hint = (
                "it takes (optimizer, total_steps): pass scheduler_interval='step'"
                if per_epoch
                else "a per-epoch factory optimizer -> LRScheduler needs scheduler_interval='epoch'"
            )
            raise ModeConnError(
                f"with scheduler_interval={interval!r} the scheduler is called as a factory "
                f"{wanted}, but {factory!r} cannot be ({hint})."
            ) from None

    def _check_create_graph(self) -> None:
        if self.create_graph and self.max_grad_norm is not None:
            raise ModeConnError(
                "create_graph=True cannot be combined with max_grad_norm: clipping rescales "
                "the gradients in place, which breaks the graph the optimizer differentiates "
                "again (SophiaH clips its own update); drop max_grad_norm."
            )
        if self.create_graph and self.compile is not False:
            raise ModeConnError(
                "create_graph=True cannot be combined with compile=...: a compiled module is "
                "differentiated once only (no double backward). Drop compile for a "
                "second-order optimizer."
            )
        sophia = isinstance(self.optimizer, str) and self.optimizer.lower() == "sophiah"
        if sophia and not self.create_graph:
            raise ModeConnError(
                "optimizer='sophiah' estimates the Hessian from the graph of the gradients: "
                "pass create_graph=True as well."
            )

    def _check_t_sampler(self) -> None:
        sampler = self.t_sampler
        if sampler is None or callable(sampler):
            return
        ok = isinstance(sampler, tuple) and len(sampler) == 2
        if ok:
            low, high = (float(v) for v in sampler)
            ok = 0.0 <= low <= high <= 1.0
        if not ok:
            raise ModeConnError(
                f"t_sampler must be a callable returning t or a (low, high) range with "
                f"0 <= low <= high <= 1, got {sampler!r}."
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        _check_names(changes, "TrainConfig.replace", [f.name for f in dataclasses.fields(self)])
        return dataclasses.replace(self, **changes)

    def decay(self, default: float) -> float:
        """``weight_decay``, or ``default`` when it is ``None``."""
        return default if self.weight_decay is None else float(self.weight_decay)


def _check_names(given: Mapping[str, Any], where: str, valid: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ModeConnError(
            f"{where} got unknown keyword argument(s) {', '.join(map(repr, unknown))}; valid "
            f"ones are: {', '.join(sorted(valid))}."
        )


def resolve_config(
    config: TrainConfig | None,
    overrides: Mapping[str, Any],
    *,
    where: str,
    exclude: Sequence[str] = (),
) -> TrainConfig:
    """The config of a call: ``config`` with ``overrides`` applied, or one built from them.

    Args:
        config: A :class:`TrainConfig`, or ``None``.
        overrides: Keyword arguments of the call (``epochs=5, lr=0.01, ...``).
        where: The function's name, for error messages.
        exclude: Fields that do not apply to this function.

    Raises:
        ModeConnError: An unknown keyword (the message lists the valid ones), a
            field that does not apply, ``lr`` missing, or a bad value.

    Example:
        >>> resolve_config(None, {"lr": 0.1, "epochs": 2}, where="unlearn").epochs
        2
    """
    valid = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in exclude]
    _check_names(overrides, f"{where}()", valid)
    if config is not None and not isinstance(config, TrainConfig):
        raise ModeConnError(f"config must be a TrainConfig, got {type(config).__name__}.")
    if config is not None:
        excluded = [name for name in exclude if getattr(config, name) != _default(name)]
        if excluded:
            raise ModeConnError(f"{where}() does not use {', '.join(excluded)}; leave it unset.")
        return config.replace(**overrides) if overrides else config
    if "lr" not in overrides:
        raise ModeConnError(
            f"{where}() needs lr= and epochs= (or max_steps=), or config=TrainConfig(lr=..., "
            "epochs=...)."
        )
    return TrainConfig(**overrides)


def _default(name: str) -> Any:
    spec = TrainConfig.__dataclass_fields__[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return ()


def make_optimizer(
    config: TrainConfig, params: list[nn.Parameter], *, weight_decay: float
) -> Optimizer:
    """The optimizer the config names, over ``params``.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> opt = make_optimizer(TrainConfig(lr=0.1, epochs=1), list(layer.parameters()),
        ...                      weight_decay=0.0)
        >>> type(opt).__name__
        'SGD'
    """
    spec, lr = config.optimizer, float(config.lr)
    if callable(spec):
        optimizer = spec(params, lr=lr)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "optimizer must be 'sgd', 'adam', 'adamw' or a callable (params, lr=...) -> "
                f"torch.optim.Optimizer; the callable returned {type(optimizer).__name__}."
            )
        return optimizer
    name = spec.lower()
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=float(config.momentum), weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sophiah":
        return second_order_optimizer("SophiaH")(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def second_order_optimizer(name: str) -> Callable[..., Optimizer]:
    """The optimizer class ``name`` of ``pytorch_optimizer`` (the ``second-order`` extra).

    Raises:
        ModeConnError: ``pytorch-optimizer`` is not installed (the message says
            how to install it), or it has no optimizer of that name.

    Example:
        >>> import pytest
        >>> _ = pytest.importorskip("pytorch_optimizer")
        >>> second_order_optimizer("SophiaH").__name__
        'SophiaH'
    """
    pytorch_optimizer = require(
        "pytorch_optimizer", "second-order", feature=f"the optimizer {name}"
    )
    found = getattr(pytorch_optimizer, name, None)
    if not (isinstance(found, type) and issubclass(found, Optimizer)):
        raise ModeConnError(f"pytorch_optimizer has no optimizer named {name!r}.")
    return found
