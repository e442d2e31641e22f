"""The MCU recipe in one call: :func:`mcu_unlearn` and its :class:`RecipeResult`.

The steps and what selection may read are described in the package docstring
(:mod:`modeconn_unlearn.recipe`); every step is also public on its own. The
settings are a :class:`~modeconn_unlearn.recipe.config.RecipeConfig`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..batchnorm import update_bn
from ..curve import CurveModel
from ..data import as_dataset, as_loader, seeded_subset
from ..errors import ModeConnError
from ..evaluation import DataLike, PathReport, evaluate, evaluate_path
from ..losses import AdaptiveBeta, UnlearnLoss, mcu_objective
from ..masks import layer_mask, saliency_mask
from ..selection import OptimalT, PathSearch, avg_gap, merge_reports, search_path
from ..tasks import Task, resolve_task, task_collate
from ..training import History, fit_curve, shard_curve, unlearn
from .config import RecipeConfig
from .privacy import auc_standard_error, privacy_auc, privacy_penalty
from .targets import Targets

__all__ = ["RecipeConfig", "RecipeResult", "mcu_unlearn"]


@dataclass(frozen=True)
class RecipeResult:
    """The outcome of :func:`mcu_unlearn`.

    Attributes:
        model: The exported unlearned model at ``t``: the user's own class (the
            base model's class for a PEFT curve exported with ``merged=True``).
        t: The ``t`` of ``model``: the search's optimum, or 1.0 when θ_u was kept.
        kept_base: ``True`` when no point of the curve beat θ_u on the targets
            by more than their sampling error, so ``model`` is θ_u (``t = 1``).
        notes: What a user should know about the choice (θ_u kept, ``t`` on
            the edge of the searched range).
        curve: The trained :class:`~modeconn_unlearn.CurveModel`.
        search: The path search (merged report, rounds).
        targets: The targets used.
        mask: The mask of trainable entries of the control point.
        history: Curve-training history.
        seconds: Wall time of each part (``mask``, ``fit``, ``search``, then
            ``repair`` with its export, or ``export``) and their ``total``.
        gap: The measured gap to the targets of the model the keep rule weighed
            against θ_u: the search's optimum, or its repair; with the privacy
            term on (``RecipeConfig.privacy_weight``) the term is included.
        base_gap: The measured gap of θ_u (``t = 1``) to the targets, with the
            privacy term when on.
        margin: One standard error of the difference between θ_u's gap and ``gap``.
        repaired: ``True`` when ``model`` is the chosen point after the repair
            pass (``RecipeConfig.repair_ratio``).
        aucs: With the privacy term on, the attack's AUC (forget against the
            holdout) at every evaluated ``t`` and at the optimum (measured there
            when the search interpolated it); empty otherwise.
    """

    model: nn.Module = field(repr=False)
    t: float
    kept_base: bool
    notes: tuple[str, ...]
    curve: CurveModel = field(repr=False)
    search: PathSearch = field(repr=False)
    targets: Targets = field(repr=False)
    mask: dict[str, Tensor] = field(repr=False)
    history: History = field(repr=False)
    seconds: dict[str, float] = field(repr=False)
    gap: float = math.nan
    base_gap: float = math.nan
    margin: float = math.nan
    repaired: bool = False
    aucs: dict[float, float] = field(default_factory=dict, repr=False)

    @property
    def beats_base(self) -> bool:
        """Whether the optimum (or its repair) beats θ_u on the targets by more than ``margin``.

        The keep rule returns θ_u exactly when this is ``False``; with
        ``keep_base=False`` it says what the rule would have done.
        """
        return _beats(self.base_gap, self.gap, self.margin)

    @property
    def best(self) -> OptimalT:
        """The search's optimum (:class:`~modeconn_unlearn.OptimalT`), kept or not."""
        return self.search.best

    @property
    def report(self) -> PathReport:
        """Accuracies at every evaluated point of the curve."""
        return self.search.report

    def summary(self) -> str:
        """The targets, θ_u and the optimum of the search, as a small table with the notes.

        Returns:
            A multi-line string.
        """
        best = self.search.best
        rows = [
            ("targets", math.nan, self.targets.retain, self.targets.forget, 0.0, 0.5),
            ("θ_u (t = 1)", 1.0, *_end_accuracies(self.search.report), self.base_gap),
            (
                "optimum",
                best.t,
                best.retain_acc,
                best.forget_acc,
                self.gap if self.aucs else best.avg_gap,
            ),
        ]
        auc = " AUC" if self.aucs else ""
        lines = [f"{'':<13} {'t':>6} {'retain':>7} {'forget':>7} {'gap':>6}{auc:>7}"]
        for name, t, retain, forget, gap, *target_auc in rows:
            t_text = "" if math.isnan(t) else f"{t:.3f}"
            line = f"{name:<13} {t_text:>6} {retain:7.2f} {forget:7.2f} {gap:6.2f}"
            if self.aucs:
                value = target_auc[0] if target_auc else self.aucs.get(t, math.nan)
                line += f" {value:6.3f}"
            lines.append(line)
        chosen = "θ_u (kept)" if self.kept_base else f"t = {self.t:.3f}"
        lines.append(f"returned: {chosen}; margin {self.margin:.2f} (one standard error)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _make_mask(
    config: RecipeConfig,
    original: nn.Module,
    retain: DataLike,
    forget: DataLike,
    task: Task,
    progress: bool,
) -> dict[str, Tensor]:
    if config.mask == "layer":
        return dict(
            layer_mask(
                original,
                retain,
                forget,
                k=config.mask_k,
                kr=config.mask_kr,
                task=task,
                progress=progress,
            )
        )
    if config.mask == "saliency":
        sparsity = 1.0 - config.mask_k
        mask = saliency_mask(original, forget, sparsity=sparsity, task=task, progress=progress)
        return dict(mask)
    # Every trainable entry: a frozen parameter (a PEFT model's base) is no part of the curve.
    return {
        name: torch.full_like(p, p.requires_grad, dtype=torch.bool)
        for name, p in original.named_parameters()
    }


def mcu_unlearn(
    original: nn.Module,
    theta_u: nn.Module | Mapping[str, Tensor],
    retain: DataLike,
    forget: DataLike,
    *,
    targets: Targets,
    config: RecipeConfig | None = None,
    mask: Mapping[str, Tensor] | None = None,
    probe: DataLike | None = None,
    holdout: DataLike | None = None,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    task: Task | None = None,
) -> RecipeResult:
    """Run MCU end to end on θ_o and a pre-unlearned θ_u; return the model at the chosen ``t``.

    1. mask: ``config.mask`` on θ_o, scored on the retain probe and the forget
       set (or the given ``mask``);
    2. a :class:`~modeconn_unlearn.CurveModel` θ_o → θ_u (ends fixed);
    3. :func:`~modeconn_unlearn.fit_curve` with ``CE(retain) - β·CE(forget)``
       and β from :class:`~modeconn_unlearn.AdaptiveBeta` on ``targets`` (or the
       matching form, ``config.objective``), ``t`` drawn from ``config.train_t_range``;
    4. :func:`~modeconn_unlearn.selection.search_path` on a fixed retain
       subset (``probe``; BatchNorm statistics from ``config.bn_samples`` of it)
       and the forget set (or ``config.forget_samples`` of it);
    5. the exported model at the chosen ``t`` (adapters merged with
       ``config.merged``), BatchNorm statistics from the same samples.

    Under ``torchrun`` with ``config.shard`` the curve of step 2 is sharded with
    :func:`~modeconn_unlearn.training.shard_curve` before training; every rank
    must call this with the same models and data, and every rank returns the
    same result (the exported model whole on every rank). See ``docs/scale_out.md``.

    Every step reads and scores batches with ``task``: for a language model
    pass :class:`~modeconn_unlearn.tasks.CausalLMTask` (accuracies are answer
    token accuracies, losses answer NLLs; variable-length examples are padded),
    targets from ``user_targets(..., task=task)`` and settings from
    :meth:`RecipeConfig.for_task`. A PEFT model's curve holds its adapters
    only (the frozen base is stored once).

    Selection reads only the curve's retain and forget accuracies and
    ``targets`` (see :func:`user_targets`), and with ``config.privacy_weight``
    an attack's AUC of the forget set against ``holdout``; there is no
    parameter for a retrained model or a test split.

    Args:
        original: θ_o.
        theta_u: The pre-unlearned model (any MU method's output), or its state dict.
        retain: Retain data.
        forget: Forget data.
        targets: From :func:`user_targets`.
        config: :class:`RecipeConfig` (default settings when ``None``).
        mask: A custom ``{name: bool tensor}`` mask instead of ``config.mask``.
        probe: The retain data the path is evaluated on (default: a random
            ``config.probe_size`` subset of ``retain`` drawn from ``seed``).
        holdout: Held-out data the original never trained on (the split
            :func:`user_targets` read), the non-members of the privacy term;
            needed exactly when ``config.privacy_weight > 0``.
        seed: Seed of curve training and of the probe.
        progress: Show a bar for every long step (mask, curve training, path search).
        device: Where to train and evaluate.
        task: How every step reads batches and scores outputs (default:
            classification; :class:`~modeconn_unlearn.tasks.CausalLMTask` for
            language models).

    Returns:
        :class:`RecipeResult` (model, curve, search, chosen ``t``, wall times).

    Raises:
        ModeConnError: Bad settings, data or models (from the steps),
            ``config.merged`` for a model that is not a PEFT model,
            ``config.shard`` without a ``torch.distributed`` process group, or
            ``holdout`` given without ``config.privacy_weight`` or missing with it.
        TypeError: ``task`` is not a task.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from modeconn_unlearn.data import forget_retain_split
        >>> from modeconn_unlearn.losses import random_label
        >>> from modeconn_unlearn.recipe import user_targets
        >>> from modeconn_unlearn.training import unlearn
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(60, 4), torch.randint(0, 3, (60,)))
        >>> retain, forget = forget_retain_split(data, forget_class=0)
        >>> original = nn.Linear(4, 3)
        >>> theta_u = unlearn(original, retain, forget, loss=random_label(3), epochs=1,
        ...                   lr=0.01, progress=False)
        >>> targets = user_targets(original, retain, scenario="class")
        >>> result = mcu_unlearn(original, theta_u, retain, forget, targets=targets)
        >>> 0.5 <= result.t <= 1.0, type(result.model).__name__
        (True, 'Linear')
    """
    config = config or RecipeConfig()
    if not isinstance(config, RecipeConfig):
        raise ModeConnError(f"config must be a RecipeConfig, got {type(config).__name__}.")
    if not isinstance(targets, Targets):
        raise ModeConnError(
            "targets must be Targets (from user_targets(original, retain, holdout)), got "
            f"{type(targets).__name__}."
        )
    task = resolve_task(task)
    if config.repair_ratio and targets.forget_loss is None:  # refused before any training
        raise ModeConnError(
            "repair_ratio > 0 pulls the forget loss to Targets.forget_loss, which these targets "
            "lack; get them from user_targets(original, retain, holdout) (random forgetting), "
            "or set repair_ratio=0 (a forgotten class)."
        )
    if config.privacy_weight and holdout is None:
        raise ModeConnError(
            f"privacy_weight={config.privacy_weight} (RecipeConfig.for_task('causal_lm') turns "
            "it on) scores each point by an attack on the forget set against held-out data; pass "
            "holdout= (the split user_targets read), or set privacy_weight=0."
        )
    if holdout is not None and not config.privacy_weight:
        raise ModeConnError(
            "holdout= is read only by the privacy term, which is off (privacy_weight=0); set "
            "RecipeConfig(privacy_weight=...) (0.5 is for_task('causal_lm')'s) or drop holdout."
        )
    if config.shard and not (dist.is_available() and dist.is_initialized()):
        raise ModeConnError(
            "RecipeConfig(shard=True) shards the curve over the ranks of a torch.distributed "
            "process group, and none is initialised: run under torchrun and call "
            "torch.distributed.init_process_group first, or leave shard=False."
        )
    if config.merged and not callable(getattr(original, "merge_and_unload", None)):
        raise ModeConnError(
            f"merged=True merges PEFT adapters into the base model, but the original is a "
            f"{type(original).__name__}; leave merged=False for a model without adapters."
        )
    seconds: dict[str, float] = {}
    collate = task_collate(task)
    if probe is None:
        probe = seeded_subset(as_dataset(retain, "retain"), config.probe_size, seed, salt=10_000)
    probe_loader = as_loader(probe, name="probe", collate_fn=collate)
    bn_samples = seeded_subset(as_dataset(probe, "probe"), config.bn_samples, seed, salt=20_000)
    bn_loader = as_loader(bn_samples, name="probe", collate_fn=collate)
    forget_set = as_dataset(forget, "forget")
    forget_scored = seeded_subset(forget_set, config.forget_samples, seed, salt=30_000)
    line = config.num_bends == 2
    if line and mask is not None:
        raise ModeConnError(
            "num_bends=2 is the straight line θ_o → θ_u, which has no control point to mask; "
            "drop mask= or use num_bends >= 3."
        )
    began = time.perf_counter()
    if mask is not None:
        chosen_mask = dict(mask)
    elif line:
        chosen_mask = {}
    else:
        chosen_mask = _make_mask(config, original, probe_loader, forget, task, progress)
    seconds["mask"] = time.perf_counter() - began

    began = time.perf_counter()
    curve = CurveModel(
        original,
        start=original,
        end=theta_u,
        curve=config.curve,
        num_bends=config.num_bends,
        mask=chosen_mask or None,
    )
    if device is not None:
        curve.to(device)
    if config.shard:
        shard_curve(curve)  # moved first: FSDP shards what each rank holds
    history = (
        History()
        if line
        else fit_curve(
            curve,
            retain,
            forget,
            loss=_objective(config, targets, task),
            task=task,
            seed=seed,
            progress=progress,
            device=device,
            **config._train_settings(),
        )
    )
    seconds["fit"] = time.perf_counter() - began

    began = time.perf_counter()
    scored = {"retain": probe_loader, "forget": forget_scored}
    aucs: dict[float, float] = {}
    privacy: Callable[[float, nn.Module], float] | None = None
    if holdout is not None:
        forget_loader = as_loader(forget_scored, name="forget", collate_fn=collate)
        holdout_loader = as_loader(holdout, name="holdout", collate_fn=collate)

        def privacy(t: float, model: nn.Module) -> float:
            aucs[t] = privacy_auc(model, forget_loader, holdout_loader, task=task, device=device)
            return privacy_penalty(aucs[t], config.privacy_weight)

    search = search_path(
        curve,
        scored,
        retain_target=targets.retain,
        forget_target=targets.forget,
        t_range=config.t_range,
        coarse=config.coarse_points,
        max_points=config.max_points,
        tol=config.tol,
        kind=config.interpolation,
        bn_loader=bn_loader,
        task=task,
        device=device,
        progress=progress,
        penalty=privacy,
    )
    if not np.any(search.report.t == 1.0):
        end = evaluate_path(
            curve,
            scored,
            ts=[1.0],
            bn_loader=bn_loader,
            task=task,
            progress=False,
            device=device,
            each_point=privacy,
        )
        search = replace(search, report=merge_reports(curve, [search.report, end]))
    seconds["search"] = time.perf_counter() - began

    best = search.best
    gap, accuracies, model = best.avg_gap, (best.retain_acc, best.forget_acc), None
    if config.repair_ratio:
        began = time.perf_counter()
        data = (retain, forget)
        model = _repaired(curve, best.t, data, config, targets, bn_loader, task, seed, device)
        accuracies = (
            evaluate(model, probe_loader, task=task, device=device).accuracy,
            evaluate(model, forget_scored, task=task, device=device).accuracy,
        )
        gap = float(
            avg_gap(*accuracies, retain_target=targets.retain, forget_target=targets.forget)
        )
        seconds["repair"] = time.perf_counter() - began
    base_gap, margin = _compare_with_base(search, targets, accuracies)
    if privacy is not None:
        if model is None and best.t not in aucs:  # an interpolated optimum: measure it
            began = time.perf_counter()
            model = _export(curve, best.t, config, bn_loader, task)
            privacy(best.t, model)
            seconds["export"] = time.perf_counter() - began
        counts = (len(forget_scored), len(as_dataset(holdout, "holdout")))
        gap = best.avg_gap + privacy_penalty(aucs[best.t], config.privacy_weight)  # measured
        base_gap += privacy_penalty(aucs[1.0], config.privacy_weight)
        margin = _privacy_margin(aucs, best.t, config.privacy_weight, counts, margin)
    kept = config.keep_base and not _beats(base_gap, gap, margin)
    t = 1.0 if kept else best.t
    if model is None or kept:
        began = time.perf_counter()
        model = _export(curve, t, config, bn_loader, task)
        seconds["export"] = time.perf_counter() - began + seconds.get("export", 0.0)
    seconds["total"] = sum(seconds.values())
    return RecipeResult(
        model=model,
        t=t,
        kept_base=kept,
        notes=_notes(search, config, kept=kept, gaps=(gap, base_gap), margin=margin),
        curve=curve,
        search=search,
        targets=targets,
        mask=chosen_mask,
        history=history,
        seconds=seconds,
        gap=gap,
        base_gap=base_gap,
        margin=margin,
        repaired=bool(config.repair_ratio) and not kept,
        aucs=dict(sorted(aucs.items())),
    )


def _export(
    curve: CurveModel, t: float, config: RecipeConfig, bn_loader: DataLike, task: Task
) -> nn.Module:
    """The model at ``t`` (adapters merged with ``config.merged``), BatchNorm from ``bn_loader``."""
    model = curve.export(t, merged=config.merged)
    update_bn(model, bn_loader, task=task)  # a no-op without BatchNorm
    return model


def _repaired(
    curve: CurveModel,
    t: float,
    data: tuple[DataLike, DataLike],
    config: RecipeConfig,
    targets: Targets,
    bn_loader: DataLike,
    task: Task,
    seed: int,
    device: torch.device | str | None,
) -> nn.Module:
    """The point at ``t`` after one pass of the matching objective (``config.repair_ratio``)."""
    assert targets.forget_loss is not None  # mcu_unlearn refuses the repair without it
    model = unlearn(
        _export(curve, t, config, bn_loader, task),
        *data,
        loss=mcu_objective(config.beta_match, forget_loss=targets.forget_loss, task=task),
        task=task,
        epochs=1,
        lr=config.repair_lr,
        retain_ratio=config.repair_ratio,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        seed=seed,
        device=device,
        progress=False,
    )
    update_bn(model, bn_loader, task=task)
    return model.eval()


def _objective(config: RecipeConfig, targets: Targets, task: Task) -> UnlearnLoss:
    """The curve objective: the ascent form with the alignment rule, or the matching form."""
    if config.objective != "ascent" and targets.forget_loss is not None:
        return mcu_objective(config.beta_match, forget_loss=targets.forget_loss, task=task)
    if config.objective == "match":
        raise ModeConnError(
            'objective="match" pulls the forget loss to Targets.forget_loss, which these '
            "targets lack; get them from user_targets(original, retain, holdout) (random "
            'forgetting), or use objective="ascent" or "auto" (a forgotten class).'
        )
    beta = AdaptiveBeta(targets.retain, targets.forget, low=config.beta_low, high=config.beta_high)
    return mcu_objective(beta, task=task)


def _end_accuracies(report: PathReport) -> tuple[float, float]:
    """Retain and forget accuracy measured at ``t = 1`` (θ_u)."""
    at = int(np.argmin(np.abs(report.t - 1.0)))
    return float(report.acc("retain")[at]), float(report.acc("forget")[at])


def _beats(base_gap: float, best_gap: float, margin: float) -> bool:
    return base_gap - best_gap > margin


def _standard_error(accuracy: float, count: int | None) -> float:
    """The binomial standard error of an accuracy in percent (0 when the count is unknown)."""
    if not count:
        return 0.0
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / count)


def _compare_with_base(
    search: PathSearch, targets: Targets, candidate: tuple[float, float]
) -> tuple[float, float]:
    """θ_u's measured gap to the targets, and one standard error of ``gap(θ_u) - gap(candidate)``.

    ``candidate`` holds the retain and forget accuracy of the model the rule weighs
    against θ_u: the search's optimum, or its repair.

    The four accuracies (retain and forget of the candidate and at ``t = 1``) are
    treated as independent binomial estimates, which overstates the error of
    a difference measured on the same samples (a conservative margin). A
    target's own error shifts both gaps alike unless it lies between the two
    points' accuracies, where it moves the difference twice as fast
    (a first-order, delta-method account).
    """
    report = search.report
    retain, forget = candidate
    base_retain, base_forget = _end_accuracies(report)
    base_gap = float(
        avg_gap(
            base_retain, base_forget, retain_target=targets.retain, forget_target=targets.forget
        )
    )
    n_retain = report.meta.get("counts", {}).get("retain")
    n_forget = report.meta.get("counts", {}).get("forget")
    variance = sum(
        _standard_error(acc, n) ** 2
        for acc, n in (
            (retain, n_retain),
            (base_retain, n_retain),
            (forget, n_forget),
            (base_forget, n_forget),
        )
    )
    for target, count, chosen, base in (
        (targets.retain, targets.counts.get("retain"), retain, base_retain),
        (targets.forget, targets.counts.get("holdout"), forget, base_forget),
    ):
        if min(chosen, base) < target < max(chosen, base):
            variance += (2.0 * _standard_error(target, count)) ** 2
    return base_gap, 0.5 * math.sqrt(variance)


def _privacy_margin(
    aucs: Mapping[float, float],
    t: float,
    weight: float,
    counts: tuple[int, int],
    margin: float,
) -> float:
    """``margin`` widened by the sampling error of the privacy term at ``t`` and at θ_u.

    The two AUCs are treated as independent (Hanley and McNeil's standard error for each).
    """
    errors = [auc_standard_error(aucs[at], *counts) for at in (t, 1.0)]
    return math.hypot(margin, 100.0 * weight * math.hypot(*errors))


def _notes(
    search: PathSearch,
    config: RecipeConfig,
    *,
    kept: bool,
    gaps: tuple[float, float],
    margin: float,
) -> tuple[str, ...]:
    """``gaps``: the candidate's (the optimum or its repair) and θ_u's, to the targets."""
    best, (gap, base_gap) = search.best, gaps
    privacy = " and the privacy term" if config.privacy_weight else ""
    notes: list[str] = []
    repair = f"one pass of the matching objective over {config.repair_ratio:g} of the retain set"
    if config.repair_ratio and not kept:
        notes.append(
            f"The point at t = {best.t:.3f} was repaired ({repair}): gap {gap:.2f} to the "
            f"targets, {best.avg_gap:.2f} before the repair."
        )
    if kept and best.t == 1.0 and not config.repair_ratio:
        notes.append(
            f"The curve's best point is θ_u itself (gap {base_gap:.2f} to the targets); θ_u is "
            "returned (t = 1)."
        )
    elif kept:
        what = f"t = {best.t:.3f}" + (f", repaired ({repair})" if config.repair_ratio else "")
        notes.append(
            f"No point of the curve beats θ_u on the targets{privacy} by more than their "
            "sampling error "
            f"(gap {gap:.2f} at {what} against θ_u's {base_gap:.2f}, margin {margin:.2f}); θ_u "
            "is returned (t = 1)."
        )
    low = config.t_range[0]
    if not kept and best.t <= low + config.tol:
        notes.append(
            f"t = {best.t:.3f} sits on the low edge of t_range {config.t_range}: the optimum may "
            "lie closer to θ_o; widen t_range to search there."
        )
    return tuple(notes)
