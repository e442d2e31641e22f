"""The public training functions: :func:`unlearn`, :func:`retrain` and :func:`fit_curve`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..cloning import clone_module
from ..curve import CurveModel
from ..errors import ModeConnError, listed
from ..losses import UnlearnLoss, finetune
from ..masks import validate_mask
from ..modes import keeping_modes
from ..tasks import Task, resolve_task
from ..wrappers import module_device
from .config import TrainConfig, make_optimizer, resolve_config
from .distributed import is_distributed, world_size
from .history import History
from .loaders import build_loader
from .loop import Run, make_scheduler, train
from .state import seeded

__all__ = ["fit_curve", "retrain", "unlearn"]

_BUILT_INS = (
    "finetune(), gradient_ascent(), neggrad_plus(beta), random_label(num_classes), "
    "mcu_objective(beta), gradient_difference(), npo(beta), simnpo(beta), idk()"
)
_UNLEARN_DECAY = 5e-4
_CURVE_DECAY = 0.0


def _check_objective(loss: Any) -> UnlearnLoss:
    """Refuse what is not an objective ``loss(model, batch)``, e.g. ``nn.CrossEntropyLoss()``."""
    if isinstance(loss, nn.modules.loss._Loss) or not callable(loss):
        what = type(loss).__name__
        raise ModeConnError(
            f"loss={what}{'()' if isinstance(loss, nn.Module) else ''} is not an unlearning "
            "objective: an objective is a callable loss(model, batch) -> scalar Tensor that runs "
            "the model itself on an UnlearnBatch(inputs, targets, is_forget). Use a built-in from "
            f"modeconn_unlearn.losses ({_BUILT_INS}); cross-entropy on the retain set is "
            "losses.finetune()."
        )
    return loss  # type: ignore[no-any-return]


def _task_of(loss: Any, task: Task | None) -> Task:
    return resolve_task(task if task is not None else getattr(loss, "task", None))


def _device(module: nn.Module, config: TrainConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if is_distributed() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return module_device(module)


def _settings(config: TrainConfig, num_samples: int, weight_decay: float) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint (new fields only when set)."""
    settings: dict[str, Any] = {
        "seed": int(config.seed),
        "batch_size": int(config.batch_size),
        "retain_ratio": float(config.retain_ratio),
        "lr": float(config.lr),
        "optimizer": config.optimizer if isinstance(config.optimizer, str) else "callable",
        "momentum": float(config.momentum),
        "weight_decay": float(weight_decay),
        "num_samples": int(num_samples),
    }
    if config.max_steps is not None:
        settings["max_steps"] = int(config.max_steps)
    if config.curriculum is not None:
        settings["curriculum"] = config.curriculum
    if config.create_graph:
        settings["create_graph"] = True
    if config.grad_accumulation > 1:
        settings["grad_accumulation"] = int(config.grad_accumulation)
    if config.scheduler_interval != "epoch":
        settings["scheduler_interval"] = config.scheduler_interval
    if config.max_grad_norm is not None:
        settings["max_grad_norm"] = float(config.max_grad_norm)
    if config.precision != "fp32":
        settings["precision"] = config.precision
    if world_size() > 1:
        settings["world_size"] = world_size()
    return settings


def _optimize(
    kind: str,
    module: nn.Module,
    params: list[nn.Parameter],
    data: tuple[Any, Any],
    *,
    loss: UnlearnLoss,
    config: TrainConfig,
    task: Task,
    weight_decay: float,
    after_step: Callable[[], None],
    device: torch.device,
    updated_grads: Callable[[], list[Tensor]] | None = None,
) -> History:
    """Build the loader, optimizer and scheduler for ``params`` and run the loop."""
    loader = build_loader(kind, loss, *data, config=config, task=task, model=module, device=device)
    optimizer = make_optimizer(config, params, weight_decay=weight_decay)
    run = Run(
        kind=kind,
        module=module,
        loss=loss,
        data=loader,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, len(loader.loader)),
        config=config,
        device=device,
        after_step=after_step,
        settings=_settings(config, len(loader.loader.dataset), weight_decay),  # type: ignore[arg-type]
        updated_grads=updated_grads,
    )
    return train(run)


@dataclass(frozen=True)
class _Trainable:
    """What :func:`_masked` gives a run."""

    params: list[nn.Parameter]
    repin: Callable[[], None]
    updated_grads: Callable[[], list[Tensor]]


@contextmanager
def _masked(model: nn.Module, mask: Mapping[str, Tensor | bool] | None) -> Iterator[_Trainable]:
    """Trainable parameters under ``mask`` and a hook that re-pins masked-out entries.

    Fully masked-out parameters are excluded from the optimizer (``requires_grad``
    is switched off during training and restored after). Partly masked ones are
    trained, and after every optimizer step their masked-out entries are written
    back from a saved copy, so momentum and weight decay cannot move them: they
    stay bit-exactly at their initial values. The gradient norm that
    ``max_grad_norm`` bounds counts only the entries a step updates.
    """
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    pinned: list[tuple[nn.Parameter, Tensor, Tensor]] = []
    try:
        if mask is not None:
            full = validate_mask(mask, model)
            for name, p in params.items():
                keep = full[name]
                if not bool(keep.any()):
                    p.requires_grad_(False)
                elif not bool(keep.all()) and p.requires_grad:
                    frozen = ~keep
                    pinned.append((p, frozen, p.detach()[frozen].clone()))
        trainable = [p for p in params.values() if p.requires_grad]
        if not trainable:
            raise ModeConnError(
                "no parameter is trainable: the mask selects nothing (or every parameter has "
                "requires_grad=False)."
            )

        def repin() -> None:
            with torch.no_grad():
                for p, frozen, values in pinned:
                    p.masked_scatter_(frozen, values)

        kept = {id(p): ~frozen for p, frozen, _ in pinned}

        def updated_grads() -> list[Tensor]:
            return [
                p.grad[kept[id(p)]] if id(p) in kept else p.grad
                for p in trainable
                if p.grad is not None
            ]

        yield _Trainable(trainable, repin, updated_grads)
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])


def _fresh_model(model_or_factory: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """A new model with fresh weights: a factory's output, or a re-initialised copy."""
    if not isinstance(model_or_factory, nn.Module):
        if not callable(model_or_factory):
            raise TypeError(
                "retrain needs an nn.Module or a factory () -> nn.Module, got "
                f"{type(model_or_factory).__name__}."
            )
        model = model_or_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned {type(model).__name__}, not nn.Module.")
        return model
    model = clone_module(model_or_factory)
    covered: set[int] = set()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None) or getattr(
            module, "_reset_parameters", None
        )
        if callable(reset):
            reset()
            covered.update(id(p) for p in module.parameters(recurse=False))
    missing = [name for name, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise ModeConnError(
            f"cannot re-initialise {listed(missing)}: no module owning them has "
            "reset_parameters(). Pass a factory instead, e.g. retrain(lambda: MyModel(), "
            "retain_data, ...)."
        )
    return model


def _fit_model(
    kind: str,
    model: nn.Module,
    data: tuple[Any, Any],
    *,
    loss: UnlearnLoss,
    config: TrainConfig,
    task: Task | None,
    mask: Mapping[str, Tensor | bool] | None = None,
) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if isinstance(model, CurveModel):
        raise ModeConnError(f"{kind}() trains a plain model; train a CurveModel with fit_curve().")
    work = clone_module(model)
    for p in work.parameters():
        p.grad = None  # a deep copy copies stale gradients
    device = _device(work, config)
    work.to(device)
    with _masked(work, mask) as trainable:
        _optimize(
            kind,
            work,
            trainable.params,
            data,
            loss=loss,
            config=config,
            task=_task_of(loss, task),
            weight_decay=config.decay(_UNLEARN_DECAY),
            after_step=trainable.repin,
            device=device,
            updated_grads=trainable.updated_grads,
        )
    return work.train(model.training)


def unlearn(
    model: nn.Module,
    retain_data: Any,
    forget_data: Any,
    *,
    loss: UnlearnLoss,
    config: TrainConfig | None = None,
    task: Task | None = None,
    mask: Mapping[str, Tensor | bool] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Run an unlearning method on a copy of ``model`` and return the copy (θ_u).

    Each epoch goes once over a shuffled mix of retain and forget samples as
    :class:`~modeconn_unlearn.data.UnlearnBatch` batches; an objective whose
    ``needs`` names one part only (``gradient_ascent``: forget, ``finetune``:
    retain) gets only that part. ``model`` itself is never modified (it is
    copied with :func:`~modeconn_unlearn.cloning.clone_module`, so models with
    ``spectral_norm``/``weight_norm`` work). With ``max_steps`` and
    ``step_callback`` this is also "fine-tune a copy on these samples for k
    steps, looking at every step" (``forget_data=None``, ``loss=finetune()``).

    Args:
        model: The original model θ_o (any ``nn.Module``).
        retain_data: Retain set (``Dataset`` or ``DataLoader``; only its dataset
            is used) or ``None``.
        forget_data: Forget set (same) or ``None``.
        loss: The objective ``loss(model, batch) -> Tensor``, e.g.
            ``losses.random_label(10)`` (not a torch loss module: see Raises).
        config: A :class:`TrainConfig`; the keyword arguments override its fields.
        task: Reads the batches for ``curriculum`` scoring (default: the
            objective's ``task``, else classification).
        mask: ``{param_name: bool tensor | bool}`` of trainable entries (e.g.
            from :func:`~modeconn_unlearn.masks.saliency_mask`: SalUn). Masked-out
            entries stay bit-exactly fixed, also under momentum and weight decay;
            parameters not named are frozen.
        **overrides: Fields of :class:`TrainConfig` (``epochs``, ``lr``,
            ``optimizer``, ``momentum``, ``weight_decay`` (default 5e-4),
            ``batch_size``, ``retain_ratio``, ``scheduler``, ``seed``, ``device``,
            ``progress``, ``checkpoint_dir`` (``unlearn.pt`` there), ``resume``,
            ``callbacks``, ``max_steps``, ``step_callback``, ``compile``,
            ``curriculum``, ``create_graph`` (for second-order optimizers such
            as ``optimizer="sophiah"``), ``grad_accumulation``, ``scheduler_interval``,
            ``max_grad_norm``, ``precision``). Without ``config``, ``lr`` and
            ``epochs`` (or ``max_steps``) are required.

    Returns:
        The unlearned model: a new module of ``model``'s class, in ``model``'s
        train/eval mode, on the training device.

    Raises:
        NonFiniteLossError: The loss or its gradient became NaN/inf; the message
            names the epoch and step, and ``error.model`` holds the copy at its
            last finite state.
        ModeConnError: ``loss`` is not an objective (e.g. ``nn.CrossEntropyLoss()``),
            a part the objective needs is empty (the message names it), an
            unknown keyword (the valid ones are listed), bad settings, mask or
            data, or a checkpoint of other settings.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from modeconn_unlearn.losses import random_label
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> retain, forget = torch.utils.data.random_split(data, [32, 8])
        >>> model = nn.Linear(4, 3)
        >>> theta_u = unlearn(model, retain, forget, loss=random_label(3), epochs=2, lr=0.01,
        ...                   progress=False)
        >>> theta_u is model, type(theta_u).__name__
        (False, 'Linear')
    """
    loss = _check_objective(loss)
    cfg = resolve_config(config, overrides, where="unlearn", exclude=("t_sampler",))
    data = (retain_data, forget_data)
    return _fit_model("unlearn", model, data, loss=loss, config=cfg, task=task, mask=mask)


def retrain(
    model_or_factory: nn.Module | Callable[[], nn.Module],
    retain_data: Any,
    *,
    config: TrainConfig | None = None,
    task: Task | None = None,
    **overrides: Any,
) -> nn.Module:
    """Train a freshly initialised model on the retain set: the unlearning gold standard.

    The fresh model is a factory's output, or a copy of the given model on which
    every submodule's ``reset_parameters()`` is called; both draws are seeded by
    ``seed``. A parameter no such method re-initialises (e.g. a bare
    ``nn.Parameter`` class token) is an error: pass a factory then.

    Args:
        model_or_factory: An ``nn.Module`` (never modified) or a callable
            ``() -> nn.Module``.
        retain_data: Retain set (``Dataset`` or ``DataLoader``).
        config: A :class:`TrainConfig`; the keyword arguments override its fields.
        task: The task of the fine-tuning objective (default: classification).
        **overrides: Fields of :class:`TrainConfig` as in :func:`unlearn`
            (``checkpoint_dir`` writes ``retrain.pt``); ``retain_ratio``,
            ``curriculum`` and ``t_sampler`` do not apply.

    Returns:
        The retrained model.

    Raises:
        ModeConnError: A parameter cannot be re-initialised, or bad settings.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> model = retrain(lambda: nn.Linear(4, 3), data, epochs=1, lr=0.1, progress=False)
        >>> type(model).__name__
        'Linear'
    """
    cfg = resolve_config(
        config, overrides, where="retrain", exclude=("retain_ratio", "curriculum", "t_sampler")
    )
    with seeded(int(cfg.seed), torch.device("cpu")):
        fresh = _fresh_model(model_or_factory)
    loss = finetune(task=task)
    return _fit_model("retrain", fresh, (retain_data, None), loss=loss, config=cfg, task=task)


def fit_curve(
    curve: CurveModel,
    retain_data: Any,
    forget_data: Any,
    *,
    loss: UnlearnLoss,
    config: TrainConfig | None = None,
    task: Task | None = None,
    **overrides: Any,
) -> History:
    """Train a curve's middle bends (the MCU path search); the curve is trained **in place**.

    Each batch runs ``loss(curve, batch)``, whose single forward draws one ``t``
    from the curve's sampler, so every step trains the point θ(t) of a random
    ``t``. Only ``curve.parameters()`` are optimized (the masked entries of the
    middle bends); the ends and the masked-out entries do not move. On any
    failure (a NaN loss, an exception in the objective or a callback) the
    curve keeps its last good state and its sampler and mode are restored.

    Args:
        curve: The :class:`~modeconn_unlearn.curve.CurveModel` to train
            (modified in place and left in its previous train/eval mode).
        retain_data: Retain set (``Dataset`` or ``DataLoader``) or ``None``.
        forget_data: Forget set (same) or ``None``.
        loss: The objective, e.g. ``losses.mcu_objective(AdaptiveBeta(99.0, 92.0))``.
        config: A :class:`TrainConfig`; the keyword arguments override its fields.
        task: Reads the batches for ``curriculum`` scoring (default: the
            objective's ``task``).
        **overrides: Fields of :class:`TrainConfig` as in :func:`unlearn`, plus
            ``t_sampler`` (for this call only: a callable returning ``t`` or a
            ``(low, high)`` range); ``weight_decay`` defaults to 0 here, since
            decaying a bend pulls it towards zero weights rather than the ends;
            ``checkpoint_dir`` writes ``fit_curve.pt``; ``compile=True`` compiles
            the curve; ``create_graph`` does not apply (the curve's fused weight
            combination is differentiable once, so no second-order optimizer).

    Returns:
        The :class:`History` of the epochs run (with ``resume``, of all epochs).

    Raises:
        NonFiniteLossError: The loss became NaN/inf (the curve keeps its last
            finite state; the message names epoch and step).
        ModeConnError: The curve has nothing to train, the objective needs a
            part that is empty (e.g. an empty forget set for ``mcu_objective``),
            or bad settings.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from modeconn_unlearn.curve import CurveModel
        >>> from modeconn_unlearn.losses import mcu_objective
        >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> curve = CurveModel(a, start=a, end=b)
        >>> data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
        >>> retain, forget = torch.utils.data.random_split(data, [32, 8])
        >>> history = fit_curve(curve, retain, forget, loss=mcu_objective(0.1), epochs=2,
        ...                     lr=0.01, progress=False)
        >>> len(history), sorted(history.to_dict())[:3]
        (2, ['beta', 'epoch', 'forget_acc'])
    """
    if not isinstance(curve, CurveModel):
        raise ModeConnError(
            f"fit_curve trains a CurveModel, got {type(curve).__name__}; wrap the models as "
            "CurveModel(model, start=theta_o, end=theta_u), or use unlearn() for a plain model."
        )
    loss = _check_objective(loss)
    cfg = resolve_config(config, overrides, where="fit_curve")
    if cfg.create_graph:
        raise ModeConnError(
            "fit_curve() cannot use create_graph=True: the curve's fused weight combination "
            "is differentiable once only, so a second-order optimizer cannot train a curve. "
            "Use a first-order optimizer ('sgd', 'adam', 'adamw') for the curve."
        )
    params = list(curve.parameters())
    if not params:
        raise ModeConnError(
            "the curve has no trainable parameter (num_bends=2 with fixed ends, or an empty "
            "mask); use num_bends >= 3 or free an end."
        )
    device = _device(curve, cfg)
    curve.to(device)
    previous_sampler = curve.t_sampler
    if cfg.t_sampler is not None:
        curve.t_sampler = cfg.t_sampler
    try:
        with keeping_modes(curve):
            return _optimize(
                "fit_curve",
                curve,
                params,
                (retain_data, forget_data),
                loss=loss,
                config=cfg,
                task=_task_of(loss, task),
                weight_decay=cfg.decay(_CURVE_DECAY),
                after_step=lambda: None,
                device=device,
            )
    finally:
        curve.t_sampler = previous_sampler
