"""Training loops: base unlearning methods and the MCU path search.

* :func:`unlearn` runs any objective (FT, GA, NegGrad+, RL, SalUn with a mask,
  your own) on a **copy** of a model and returns it.
* :func:`retrain` trains a freshly initialised model on the retain set (the
  unlearning gold standard).
* :func:`fit_curve` trains a :class:`~modeconn_unlearn.curve_model.CurveModel`
  **in place** (its middle bends) with ``t`` drawn per batch, and returns its
  :class:`History`.

All three share one loop: deterministic given ``seed`` (the global RNGs are
seeded inside the call and restored afterwards, the data order comes from its
own ``torch.Generator``), a checkpoint written atomically after every epoch
when ``checkpoint_dir`` is given, bit-identical continuation with
``resume=True``, a :class:`~modeconn_unlearn.errors.NonFiniteLossError` before
any update with a NaN/inf loss, tqdm progress (``progress=False`` turns it
off) and per-epoch ``logging`` at INFO level.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .curve_model import CurveModel
from .data import move_to_device, unlearn_loader
from .errors import ModeConnError, NonFiniteLossError
from .losses import UnlearnLoss, finetune
from .masks import validate_mask

__all__ = ["EpochRecord", "History", "fit_curve", "retrain", "unlearn"]

logger = logging.getLogger(__name__)

OptimizerSpec = str | Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]
Callback = Callable[["EpochRecord", nn.Module], None]

_CHECKPOINT_FORMAT = 1
_STANDARD_STATS = ("n_retain", "n_forget", "retain_acc", "forget_acc", "beta")


# --------------------------------------------------------------------------- history
@dataclass
class EpochRecord:
    """What one training epoch did.

    Attributes:
        epoch: Epoch number, from 1.
        loss: Mean of the objective over the epoch's steps.
        retain_acc: Accuracy (percent) on the retain samples of the training
            batches, weighted by their count (NaN if the objective records none).
        forget_acc: Same on the forget samples.
        beta: Mean ``beta`` used per step (NaN if the objective has none).
        lr: Learning rate of the epoch.
        time_s: Wall-clock seconds of the epoch.
        steps: Optimizer steps taken.
        extra: Means of any other numbers the objective put in ``last_stats``.
    """

    epoch: int
    loss: float
    retain_acc: float
    forget_acc: float
    beta: float
    lr: float
    time_s: float
    steps: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class History:
    """Per-epoch records of a training run (a sequence of :class:`EpochRecord`).

    Example:
        >>> h = History([EpochRecord(1, 0.5, 90.0, 80.0, 0.01, 0.1, 1.2, 10)])
        >>> len(h), h[-1].forget_acc, h.to_dict()["retain_acc"]
        (1, 80.0, [90.0])
    """

    records: list[EpochRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> EpochRecord:
        return self.records[index]

    def to_dict(self) -> dict[str, list[float]]:
        """Column-wise dict: one list per field (``extra`` keys become columns too).

        Returns:
            ``{"epoch": [...], "loss": [...], ..., **extra}``; a column of an
            ``extra`` key absent from some epochs holds NaN there.
        """
        columns: dict[str, list[float]] = {
            name: [] for name in EpochRecord.__dataclass_fields__ if name != "extra"
        }
        extra_keys = sorted({key for r in self.records for key in r.extra})
        columns.update({key: [] for key in extra_keys})
        for r in self.records:
            for name, value in asdict(r).items():
                if name != "extra":
                    columns[name].append(value)
            for key in extra_keys:
                columns[key].append(r.extra.get(key, math.nan))
        return columns

    def _state(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    @classmethod
    def _from_state(cls, state: Sequence[Mapping[str, Any]]) -> History:
        return cls([EpochRecord(**dict(r)) for r in state])


class _EpochMeter:
    """Accumulates per-step loss and ``last_stats`` into an :class:`EpochRecord`."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss_sum = 0.0
        self.acc = {"retain": [0.0, 0.0], "forget": [0.0, 0.0]}  # weighted sum, weight
        self.beta = [0.0, 0]
        self.extra: dict[str, list[float]] = {}

    def update(self, loss: float, stats: Mapping[str, Any]) -> None:
        self.steps += 1
        self.loss_sum += loss
        for part in ("retain", "forget"):
            value = stats.get(f"{part}_acc")
            if value is not None:
                weight = float(stats.get(f"n_{part}", 1.0))
                self.acc[part][0] += float(value) * weight
                self.acc[part][1] += weight
        if stats.get("beta") is not None:
            self.beta[0] += float(stats["beta"])
            self.beta[1] += 1
        for key, value in stats.items():
            if key not in _STANDARD_STATS and isinstance(value, (int, float)):
                total = self.extra.setdefault(key, [0.0, 0.0])
                total[0] += float(value)
                total[1] += 1.0

    def record(self, epoch: int, lr: float, seconds: float) -> EpochRecord:
        def mean(pair: Sequence[float]) -> float:
            return pair[0] / pair[1] if pair[1] else math.nan

        return EpochRecord(
            epoch=epoch,
            loss=self.loss_sum / self.steps if self.steps else math.nan,
            retain_acc=mean(self.acc["retain"]),
            forget_acc=mean(self.acc["forget"]),
            beta=mean(self.beta),
            lr=lr,
            time_s=seconds,
            steps=self.steps,
            extra={key: mean(pair) for key, pair in self.extra.items()},
        )


# --------------------------------------------------------------------------- RNG handling
@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch/numpy/python RNGs inside the block and restore the caller's states after."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _rng_state(device: torch.device) -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(int(v) for v in py_state["internal"]), py_state["gauss"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- helpers
def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModeConnError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _check_lr(lr: Any) -> float:
    value = float(lr)
    if not (math.isfinite(value) and value > 0.0):
        raise ModeConnError(f"lr must be a positive number, got {lr!r}.")
    return value


def _resolve_device(module: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def _make_optimizer(
    spec: OptimizerSpec,
    params: list[nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> Optimizer:
    if callable(spec):
        optimizer = spec(params, lr=lr)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "optimizer must be 'sgd', 'adam', 'adamw' or a callable (params, lr=...) -> "
                f"torch.optim.Optimizer; the callable returned {type(optimizer).__name__}."
            )
        return optimizer
    name = str(spec).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ModeConnError(
        f"unknown optimizer {spec!r}; use 'sgd', 'adam', 'adamw' or a callable "
        "(params, lr=...) -> torch.optim.Optimizer such as torch.optim.RMSprop."
    )


def _loader_for(
    loss: Any,
    retain_data: Any,
    forget_data: Any,
    *,
    batch_size: int,
    retain_ratio: float,
    seed: int,
) -> DataLoader[Any]:
    """A shuffled UnlearnBatch loader over the parts of the data the objective ``needs``."""
    needs = tuple(getattr(loss, "needs", ("retain", "forget")))
    retain = retain_data if "retain" in needs else None
    forget = forget_data if "forget" in needs else None
    if retain is None and forget is None:
        wanted = " and ".join(f"{part}_data" for part in needs)
        raise ModeConnError(f"{loss!r} trains on {wanted}, which was not given.")
    return unlearn_loader(
        retain, forget, batch_size=batch_size, retain_ratio=retain_ratio, shuffle=True, seed=seed
    )


@contextmanager
def _masked(
    model: nn.Module, mask: Mapping[str, Tensor | bool] | None
) -> Iterator[tuple[list[nn.Parameter], Callable[[], None]]]:
    """Trainable parameters under ``mask`` and a hook that re-pins masked-out entries.

    Fully masked-out parameters are excluded from the optimizer (``requires_grad``
    is switched off during training and restored after). Partly masked ones are
    trained, and after every optimizer step their masked-out entries are written
    back from a saved copy, so momentum and weight decay cannot move them: they
    stay bit-exactly at their initial values.
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

        yield trainable, repin
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
    model = copy.deepcopy(model_or_factory)
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
        listed = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ModeConnError(
            f"cannot re-initialise {listed}: no module owning them has reset_parameters(). "
            "Pass a factory instead, e.g. retrain(lambda: MyModel(), retain_data, ...)."
        )
    return model


def _check_callbacks(callbacks: Sequence[Callback]) -> tuple[Callback, ...]:
    result = tuple(callbacks)
    for cb in result:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables (record, model) -> None, got {cb!r}.")
    return result


# --------------------------------------------------------------------------- the loop
def _train(
    *,
    kind: str,
    module: nn.Module,
    loss: UnlearnLoss,
    loader: DataLoader[Any],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epochs: int,
    after_step: Callable[[], None],
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool,
    callbacks: tuple[Callback, ...],
    config: dict[str, Any],
) -> History:
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{kind}.pt"
    if resume and path is None:
        raise ModeConnError("resume=True needs checkpoint_dir, the directory of the checkpoint.")
    generator = loader.generator
    if generator is None:  # unlearn_loader always sets one; guard for a changed helper
        raise ModeConnError("internal: the training loader has no generator.")
    history = History()
    start = 0
    with _seeded(seed, device):
        if resume and path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            _check_resumable(state, kind, config, epochs, path)
            module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["loader_rng"])
            _set_rng_state(state["rng"], device)
            history = History._from_state(state["history"])
            start = int(state["epoch"])
            logger.info("%s: resuming from %s after epoch %d", kind, path, start)
        elif resume:
            logger.info("%s: no checkpoint at %s; starting from epoch 1", kind, path)

        steps = len(loader)
        bar = tqdm(
            total=epochs * steps,
            initial=start * steps,
            desc=kind,
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            for epoch in range(start + 1, epochs + 1):
                module.train()
                meter = _EpochMeter()
                began = time.perf_counter()
                lr = float(optimizer.param_groups[0]["lr"])
                for step, batch in enumerate(loader, start=1):
                    value = loss(module, move_to_device(batch, device))
                    scalar = _checked_scalar(value, kind, epoch, epochs, step, steps, module)
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
                    after_step()
                    stats = getattr(loss, "last_stats", None)
                    meter.update(scalar, stats if isinstance(stats, Mapping) else {})
                    bar.update(1)
                    bar.set_postfix(loss=f"{scalar:.4f}", refresh=False)
                if scheduler is not None:
                    scheduler.step()
                record = meter.record(epoch, lr, time.perf_counter() - began)
                history.records.append(record)
                logger.info(
                    "%s epoch %d/%d: loss=%.4f retain_acc=%.2f forget_acc=%.2f beta=%.4g (%.1fs)",
                    kind,
                    epoch,
                    epochs,
                    record.loss,
                    record.retain_acc,
                    record.forget_acc,
                    record.beta,
                    record.time_s,
                )
                if path is not None:
                    save_checkpoint(
                        {
                            "format": _CHECKPOINT_FORMAT,
                            "kind": kind,
                            "epoch": epoch,
                            "config": config,
                            "model": module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": None if scheduler is None else scheduler.state_dict(),
                            "loader_rng": generator.get_state(),
                            "rng": _rng_state(device),
                            "history": history._state(),
                        },
                        path,
                    )
                for callback in callbacks:
                    callback(record, module)
        finally:
            bar.close()
    return history


def _checked_scalar(
    value: Any, kind: str, epoch: int, epochs: int, step: int, steps: int, module: nn.Module
) -> float:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ModeConnError(
            f"the objective must return a scalar tensor, got {type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
            + "; reduce it with .mean()."
        )
    scalar = float(value.detach())
    if not math.isfinite(scalar):
        error = NonFiniteLossError(
            f"{kind}: the loss is {scalar} at epoch {epoch}/{epochs}, step {step}/{steps}; no "
            "update was made with it, so the model keeps its last finite state. Lower lr, use "
            "fewer epochs, or a bounded objective (e.g. neggrad_plus, or mcu_objective with a "
            "smaller beta).",
            model=module,
        )
        raise error
    if not value.requires_grad:
        raise ModeConnError(
            f"{kind}: the loss at epoch {epoch}, step {step} does not depend on any trainable "
            "parameter; check that the objective runs the model it is given."
        )
    return scalar


def _check_resumable(
    state: Mapping[str, Any], kind: str, config: Mapping[str, Any], epochs: int, path: Path
) -> None:
    if state.get("format") != _CHECKPOINT_FORMAT or state.get("kind") != kind:
        raise ModeConnError(
            f"{path} is not a {kind} checkpoint of this library (kind={state.get('kind')!r}); "
            "point checkpoint_dir elsewhere or pass resume=False to start over."
        )
    saved = state["config"]
    changed = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in config.items()
        if saved.get(key) != value
    ]
    if changed:
        raise ModeConnError(
            f"cannot resume from {path}: settings differ from the interrupted run "
            f"({'; '.join(changed)}). Resume with the same settings, or pass resume=False."
        )
    if int(state["epoch"]) > epochs:
        raise ModeConnError(
            f"the checkpoint {path} is at epoch {state['epoch']}, past epochs={epochs}."
        )


def _config(
    *,
    seed: int,
    batch_size: int,
    retain_ratio: float,
    lr: float,
    optimizer: OptimizerSpec,
    momentum: float,
    weight_decay: float,
    num_samples: int,
) -> dict[str, Any]:
    return {
        "seed": int(seed),
        "batch_size": int(batch_size),
        "retain_ratio": float(retain_ratio),
        "lr": float(lr),
        "optimizer": optimizer if isinstance(optimizer, str) else "callable",
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "num_samples": int(num_samples),
    }


def _optimize(
    kind: str,
    module: nn.Module,
    params: list[nn.Parameter],
    retain_data: Any,
    forget_data: Any,
    *,
    after_step: Callable[[], None],
    loss: UnlearnLoss,
    epochs: int,
    lr: float,
    optimizer: OptimizerSpec,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    retain_ratio: float,
    scheduler: SchedulerFactory | None,
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool,
    callbacks: tuple[Callback, ...],
) -> History:
    """Build the loader, optimizer and scheduler for ``params`` and run :func:`_train`."""
    loader = _loader_for(
        loss, retain_data, forget_data, batch_size=batch_size, retain_ratio=retain_ratio, seed=seed
    )
    opt = _make_optimizer(optimizer, params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return _train(
        kind=kind,
        module=module,
        loss=loss,
        loader=loader,
        optimizer=opt,
        scheduler=None if scheduler is None else scheduler(opt),
        epochs=epochs,
        after_step=after_step,
        seed=seed,
        device=device,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=callbacks,
        config=_config(
            seed=seed,
            batch_size=batch_size,
            retain_ratio=retain_ratio,
            lr=lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            num_samples=len(loader.dataset),  # type: ignore[arg-type]
        ),
    )


def _fit_model(
    kind: str,
    model: nn.Module,
    retain_data: Any,
    forget_data: Any,
    *,
    loss: UnlearnLoss,
    epochs: int,
    lr: float,
    optimizer: OptimizerSpec,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    retain_ratio: float,
    mask: Mapping[str, Tensor | bool] | None,
    scheduler: SchedulerFactory | None,
    seed: int,
    device: torch.device | str | None,
    progress: bool,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool,
    callbacks: Sequence[Callback],
) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if isinstance(model, CurveModel):
        raise ModeConnError(f"{kind}() trains a plain model; train a CurveModel with fit_curve().")
    epochs = _check_positive_int(epochs, "epochs")
    lr = _check_lr(lr)
    hooks = _check_callbacks(callbacks)
    target = _resolve_device(model, device)
    work = copy.deepcopy(model).to(target)
    for p in work.parameters():
        p.grad = None  # deepcopy copies stale gradients
    with _masked(work, mask) as (params, repin):
        _optimize(
            kind,
            work,
            params,
            retain_data,
            forget_data,
            after_step=repin,
            loss=loss,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            retain_ratio=retain_ratio,
            scheduler=scheduler,
            seed=seed,
            device=target,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            callbacks=hooks,
        )
    return work.train(model.training)


# --------------------------------------------------------------------------- public API
def unlearn(
    model: nn.Module,
    retain_data: Any,
    forget_data: Any,
    *,
    loss: UnlearnLoss,
    epochs: int,
    lr: float,
    optimizer: OptimizerSpec = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    retain_ratio: float = 1.0,
    mask: Mapping[str, Tensor | bool] | None = None,
    scheduler: SchedulerFactory | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> nn.Module:
    """Run an unlearning method on a copy of ``model`` and return the copy (θ_u).

    Each epoch goes once over a shuffled mix of retain and forget samples as
    :class:`~modeconn_unlearn.data.UnlearnBatch` batches; an objective whose
    ``needs`` names one part only (``gradient_ascent``: forget, ``finetune``:
    retain) gets only that part. ``model`` itself is never modified.

    Args:
        model: The original model θ_o (any ``nn.Module`` returning logits).
        retain_data: Retain set (``Dataset`` or ``DataLoader`` of ``(x, y)``; only
            its dataset is used) or ``None``.
        forget_data: Forget set (same) or ``None``.
        loss: The objective ``loss(model, batch) -> Tensor``, e.g.
            ``losses.random_label(10)``.
        epochs: Number of epochs.
        lr: Learning rate.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"``, ``"adamw"``, or a
            callable ``(params, lr=...) -> Optimizer`` (``momentum`` and
            ``weight_decay`` then do not apply).
        momentum: SGD momentum.
        weight_decay: Weight decay.
        batch_size: Samples per batch.
        retain_ratio: Fraction in (0, 1] of the retain set used (a fixed random subset).
        mask: ``{param_name: bool tensor | bool}`` of trainable entries (e.g.
            from :func:`~modeconn_unlearn.masks.saliency_mask`: SalUn). Masked-out
            entries stay bit-exactly fixed, also under momentum and weight decay;
            parameters not named are frozen.
        scheduler: Optional factory ``optimizer -> LRScheduler``, stepped once per epoch.
        seed: Seed of the data order, the retain subsample and the global RNGs
            during training (restored afterwards).
        device: Where to train; defaults to the model's device.
        progress: Show a tqdm progress bar.
        checkpoint_dir: If given, ``unlearn.pt`` there is (over)written after every epoch.
        resume: Continue from the checkpoint in ``checkpoint_dir`` if there is one;
            the result is bit-identical to an uninterrupted run.
        callbacks: Callables ``(record, model)`` run after each epoch (after the checkpoint).

    Returns:
        The unlearned model: a new module of ``model``'s class, in ``model``'s
        train/eval mode, on ``device``.

    Raises:
        NonFiniteLossError: The loss became NaN/inf; the message names the epoch
            and step, and ``error.model`` holds the copy at its last finite state.
        ModeConnError: Bad settings, mask or data, or a checkpoint of other settings.

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
    return _fit_model(
        "unlearn",
        model,
        retain_data,
        forget_data,
        loss=loss,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        retain_ratio=retain_ratio,
        mask=mask,
        scheduler=scheduler,
        seed=seed,
        device=device,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=callbacks,
    )


def retrain(
    model_or_factory: nn.Module | Callable[[], nn.Module],
    retain_data: Any,
    *,
    epochs: int,
    lr: float,
    seed: int = 0,
    optimizer: OptimizerSpec = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    scheduler: SchedulerFactory | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> nn.Module:
    """Train a freshly initialised model on the retain set: the unlearning gold standard.

    The fresh model is a factory's output, or a copy of the given model on which
    every submodule's ``reset_parameters()`` is called; both draws are seeded by
    ``seed``. A parameter no such method re-initialises (e.g. a bare
    ``nn.Parameter`` class token) is an error: pass a factory then.

    Args:
        model_or_factory: An ``nn.Module`` (never modified) or a callable
            ``() -> nn.Module``.
        retain_data: Retain set (``Dataset`` or ``DataLoader`` of ``(x, y)``).
        epochs: Number of epochs.
        lr: Learning rate.
        seed: Seed of the initialisation, the data order and the global RNGs.
        optimizer: As in :func:`unlearn`.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        batch_size: Samples per batch.
        scheduler: Optional factory ``optimizer -> LRScheduler``, stepped once per epoch.
        device: Where to train; defaults to the model's device.
        progress: Show a tqdm progress bar.
        checkpoint_dir: If given, ``retrain.pt`` there is written after every epoch.
        resume: Continue from that checkpoint (bit-identical result).
        callbacks: Callables ``(record, model)`` run after each epoch.

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
    with _seeded(seed, torch.device("cpu")):
        fresh = _fresh_model(model_or_factory)
    return _fit_model(
        "retrain",
        fresh,
        retain_data,
        None,
        loss=finetune(),
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        retain_ratio=1.0,
        mask=None,
        scheduler=scheduler,
        seed=seed,
        device=device,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=callbacks,
    )


def fit_curve(
    curve: CurveModel,
    retain_data: Any,
    forget_data: Any,
    *,
    loss: UnlearnLoss,
    epochs: int,
    lr: float,
    retain_ratio: float = 1.0,
    t_sampler: Callable[[], float] | tuple[float, float] | None = None,
    optimizer: OptimizerSpec = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    scheduler: SchedulerFactory | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train a curve's middle bends (the MCU path search); the curve is trained **in place**.

    Each batch runs ``loss(curve, batch)``, whose single forward draws one ``t``
    from the curve's sampler, so every step trains the point θ(t) of a random
    ``t``. Only ``curve.parameters()`` are optimized (the masked entries of the
    middle bends); the ends and the masked-out entries do not move.

    Args:
        curve: The :class:`~modeconn_unlearn.curve_model.CurveModel` to train
            (modified in place and left in its previous train/eval mode).
        retain_data: Retain set (``Dataset`` or ``DataLoader`` of ``(x, y)``) or ``None``.
        forget_data: Forget set (same) or ``None``.
        loss: The objective, e.g. ``losses.mcu_objective(AdaptiveBeta(99.0, 92.0))``.
        epochs: Number of epochs.
        lr: Learning rate.
        retain_ratio: Fraction in (0, 1] of the retain set used (a fixed random subset).
        t_sampler: For this call only, a callable returning ``t`` or a
            ``(low, high)`` range for U(low, high); default: the curve's own sampler.
        optimizer: As in :func:`unlearn`.
        momentum: SGD momentum.
        weight_decay: Weight decay; 0 by default, since decaying a bend pulls it
            towards the zero weights rather than towards the ends.
        batch_size: Samples per batch.
        scheduler: Optional factory ``optimizer -> LRScheduler``, stepped once per epoch.
        seed: Seed of the data order, the retain subsample and the ``t`` draws.
        device: Where to train; defaults to the curve's device (the curve is moved).
        progress: Show a tqdm progress bar.
        checkpoint_dir: If given, ``fit_curve.pt`` there is written after every epoch.
        resume: Continue from that checkpoint (bit-identical result).
        callbacks: Callables ``(record, curve)`` run after each epoch (after the checkpoint).

    Returns:
        The :class:`History` of the epochs run (with ``resume``, of all epochs).

    Raises:
        NonFiniteLossError: The loss became NaN/inf (the curve keeps its last
            finite state; the message names epoch and step).
        ModeConnError: The curve has nothing to train, or bad settings.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from modeconn_unlearn.curve_model import CurveModel
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
    epochs = _check_positive_int(epochs, "epochs")
    lr = _check_lr(lr)
    hooks = _check_callbacks(callbacks)
    params = list(curve.parameters())
    if not params:
        raise ModeConnError(
            "the curve has no trainable parameter (num_bends=2 with fixed ends, or an empty "
            "mask); use num_bends >= 3 or free an end."
        )
    target = _resolve_device(curve, device)
    curve.to(target)
    previous_sampler = curve.t_sampler
    was_training = curve.training
    if t_sampler is not None:
        curve.t_sampler = t_sampler
    try:
        return _optimize(
            "fit_curve",
            curve,
            params,
            retain_data,
            forget_data,
            after_step=lambda: None,
            loss=loss,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            retain_ratio=retain_ratio,
            scheduler=scheduler,
            seed=seed,
            device=target,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            callbacks=hooks,
        )
    finally:
        curve.t_sampler = previous_sampler
        curve.train(was_training)
