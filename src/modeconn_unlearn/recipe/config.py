"""The settings of the MCU recipe: :class:`RecipeConfig`, per forgetting scenario and per task."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..checks import as_float, positive_int
from ..errors import ModeConnError
from ..selection import Interpolation
from ..tasks import Task
from ..training import SchedulerFactory, StepSchedulerFactory, TrainConfig
from .targets import Scenario

__all__ = ["RecipeConfig"]

MaskKind = Literal["layer", "saliency", "all"]
Objective = Literal["ascent", "match", "auto"]
OptimizerName = Literal["sgd", "adam", "adamw"]

#: Settings per task name; where they come from: :meth:`RecipeConfig.for_task`.
_TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "classification": {},
    "causal_lm": {
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "lr": 1e-3,
        "mask": "all",
        "epochs": 5,
        "retain_ratio": 0.1,
        "batch_size": 32,
        "probe_size": 200,
        "objective": "auto",
        "privacy_weight": 0.5,
    },
}


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of :func:`mcu_unlearn` (defaults picked on tuning seeds, see docs/benchmarks.md).

    Attributes:
        curve: Curve family (``"bezier"`` or ``"polychain"``).
        num_bends: Bends of the curve (3: one trained control point; 2: the
            straight line θ_o → θ_u, nothing trained, the ablation that asks
            whether the trained curve is needed at all).
        mask: ``"layer"`` (MCU's per-tensor :func:`~modeconn_unlearn.layer_mask`),
            ``"saliency"`` (element-wise SalUn mask) or ``"all"`` (every trainable
            entry; parameters with ``requires_grad=False``, such as the frozen base
            of a PEFT model, stay fixed).
        mask_k: Fraction of entries made trainable (``"layer"``, ``"saliency"``).
        mask_kr: Fraction of retain-critical entries never trained (``"layer"``).
        epochs: Epochs of curve training.
        lr: Learning rate of curve training.
        optimizer: Optimizer of curve training: ``"sgd"`` (momentum 0.9),
            ``"adam"`` or ``"adamw"``.
        weight_decay: Weight decay of curve training (>= 0; decay pulls the
            control point towards zero weights, not towards the ends).
        grad_accumulation: Batches of ``batch_size`` averaged per optimizer step
            (an effective batch of ``batch_size * grad_accumulation``).
        scheduler: Learning-rate schedule of curve training, as in
            :class:`~modeconn_unlearn.training.TrainConfig`: a factory
            ``optimizer -> LRScheduler`` (``scheduler_interval="epoch"``) or
            ``(optimizer, total_steps) -> LRScheduler`` (``"step"``), e.g.
            ``warmup_schedule(0.1, decay="cosine")``; ``None``: a constant ``lr``.
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        max_grad_norm: Clip the gradient of the control point to this norm
            before every optimizer step (``None``: no clipping).
        precision: ``"fp32"`` or ``"bf16"`` (curve training's forward pass under
            bfloat16 autocast; the path search and the export stay in float32).
        retain_ratio: Fraction of the retain set used per epoch of curve training.
        batch_size: Batch size of curve training.
        beta_low: ``AdaptiveBeta.low`` (``objective="ascent"``).
        beta_high: ``AdaptiveBeta.high`` (``objective="ascent"``).
        beta_match: Constant weight of the matching term (``objective="match"``);
            the term limits itself, so no per-batch rule is needed.
        t_range: Range of ``t`` searched when choosing the model.
        train_t_range: Range ``t`` is drawn from in training (default: ``t_range``).
        coarse_points: First grid of the path search.
        max_points: Most points of the curve evaluated.
        tol: Precision in ``t`` of the search.
        interpolation: Interpolation of :func:`~modeconn_unlearn.find_optimal_t`.
        probe_size: Size of the fixed random retain subset that the mask is
            scored on, the path is evaluated on and BatchNorm statistics come
            from (``None``: the whole retain set).
        bn_samples: BatchNorm statistics of every evaluated point and of the
            exported model come from a fixed random subset of the probe this
            large (``None``: the whole probe).
        forget_samples: The path search scores forget accuracy on a fixed
            random subset of the forget set this large (``None``: all of it).
            The mask and curve training always use the whole forget set.
        objective: ``"ascent"``: ``CE(retain) - β·CE(forget)``, forgetting
            rewarded without bound; ``"match"``: ``CE(retain) + β·|CE(forget) - τ|``
            with τ the original's mean held-out loss (:attr:`Targets.forget_loss`),
            so the curve is pulled to how a model treats data it never saw;
            ``"auto"``: ``"match"`` when the targets carry ``forget_loss``
            (random forgetting), else ``"ascent"`` (a forgotten class).
        repair_ratio: After the choice of ``t``, one pass of the matching objective
            ``CE(retain) + beta_match·|CE(forget) - τ|`` over this fraction of the
            retain set (and the whole forget set) on the chosen point, with
            ``optimizer``, ``weight_decay`` and ``batch_size`` (``0``: no repair).
            The curve pulls its point towards the targets within the path between
            θ_o and θ_u; the repair moves it off that path. It needs
            :attr:`Targets.forget_loss` (random forgetting); the keep rule then
            compares the repaired model with θ_u.
        repair_lr: Learning rate of the repair pass.
        privacy_weight: Weight λ of the privacy term in the choice of ``t``: each
            evaluated point costs ``100·λ·|AUC - 0.5|`` percentage points on top of
            its gap to the targets, AUC being a membership attack's ROC AUC of the
            forget set against the user's held-out data (Min-K%++ for a causal LM,
            the per-sample loss for a classifier;
            :mod:`~modeconn_unlearn.recipe.privacy`). A retrained model scores
            about 0.5; a point that still knows the forget set scores above, one
            that forgot too hard below. It needs ``mcu_unlearn(holdout=...)``;
            ``0`` (the default) chooses on accuracies alone.
        keep_base: Return θ_u (``t = 1``) unless the chosen point's gap to the
            targets (with the privacy term, when on) is smaller than θ_u's by more
            than one standard error of the difference (sampling error of the
            measured accuracies, the AUCs and the targets); the result says so in
            ``kept_base`` and ``notes``.
        merged: Export a PEFT (LoRA) curve's point with its adapters merged into
            the base weights (the base model's class, ``merge_and_unload``);
            ``False`` returns the PEFT model.
        shard: Shard the recipe's curve over the ranks of the ``torch.distributed``
            process group with :func:`~modeconn_unlearn.training.shard_curve` (run
            under ``torchrun``; a LoRA curve's frozen base under FSDP2, a
            full-parameter curve's bends sharded). Every rank runs the recipe with
            the same models and data, and every rank returns the same result;
            ``mcu_unlearn`` refuses it when no process group is initialised.

    The training settings are checked as :class:`~modeconn_unlearn.training.TrainConfig`
    checks them.
    """

    curve: str = "bezier"
    num_bends: int = 3
    mask: MaskKind = "layer"
    mask_k: float = 0.5
    mask_kr: float = 0.1
    epochs: int = 1
    lr: float = 0.01
    retain_ratio: float = 0.5
    batch_size: int = 64
    beta_low: float = 0.01
    beta_high: float = 0.5
    beta_match: float = 1.0
    t_range: tuple[float, float] = (0.5, 1.0)
    train_t_range: tuple[float, float] | None = None
    coarse_points: int = 4
    max_points: int = 6
    tol: float = 0.01
    interpolation: Interpolation = "pchip"
    probe_size: int | None = 2000
    bn_samples: int | None = 256
    forget_samples: int | None = None
    objective: Objective = "ascent"
    repair_ratio: float = 0.0
    repair_lr: float = 0.002
    privacy_weight: float = 0.0
    keep_base: bool = True
    optimizer: OptimizerName = "sgd"
    weight_decay: float = 0.0
    grad_accumulation: int = 1
    merged: bool = False
    scheduler: SchedulerFactory | StepSchedulerFactory | None = None
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    max_grad_norm: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    shard: bool = False

    def __post_init__(self) -> None:
        if self.mask not in ("layer", "saliency", "all"):
            raise ModeConnError(f'mask must be "layer", "saliency" or "all", got {self.mask!r}.')
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ModeConnError(
                f'optimizer must be "sgd", "adam" or "adamw", got {self.optimizer!r}; for another '
                "optimizer, run the steps yourself (fit_curve takes any torch optimizer)."
            )
        if self.objective not in ("ascent", "match", "auto"):
            raise ModeConnError(
                f'objective must be "ascent", "match" or "auto", got {self.objective!r}.'
            )
        for name in ("keep_base", "merged", "shard"):
            if not isinstance(getattr(self, name), bool):
                raise ModeConnError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in (
            "num_bends",
            "epochs",
            "batch_size",
            "coarse_points",
            "max_points",
            "grad_accumulation",
        ):
            positive_int(getattr(self, name), name)
        if self.coarse_points < 2 or self.max_points < self.coarse_points:
            raise ModeConnError(
                f"coarse_points must be >= 2 and max_points >= coarse_points, got "
                f"coarse_points={self.coarse_points}, max_points={self.max_points}."
            )
        for name in ("lr", "tol", "repair_lr"):
            object.__setattr__(self, name, as_float(getattr(self, name), name, positive=True))
        for name in (
            "beta_low",
            "beta_high",
            "beta_match",
            "weight_decay",
            "repair_ratio",
            "privacy_weight",
        ):
            value = as_float(getattr(self, name), name, nonnegative=True)
            object.__setattr__(self, name, value)
        if not 0.0 < self.mask_k <= 1.0 or not 0.0 <= self.mask_kr < 1.0:
            raise ModeConnError(
                f"mask_k must be in (0, 1] and mask_kr in [0, 1), got {self.mask_k}, "
                f"{self.mask_kr} (fractions, not percentages)."
            )
        if not 0.0 < self.retain_ratio <= 1.0:
            raise ModeConnError(f"retain_ratio must be in (0, 1], got {self.retain_ratio}.")
        if self.repair_ratio > 1.0:
            raise ModeConnError(
                f"repair_ratio must be in [0, 1] (a fraction of the retain set), got "
                f"{self.repair_ratio}."
            )
        if self.repair_ratio and self.privacy_weight:
            raise ModeConnError(
                "repair_ratio > 0 with privacy_weight > 0 is not supported: the repair pass moves "
                "the chosen point off the curve the privacy term was measured on; set one to 0."
            )
        if self.repair_ratio and self.shard:
            raise ModeConnError(
                "repair_ratio > 0 with shard=True is not supported: the repair pass trains the "
                "exported model on one process; set repair_ratio=0 or run the repair yourself."
            )
        for name in ("t_range", "train_t_range"):
            value = getattr(self, name)
            if value is None and name == "train_t_range":
                continue
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError) as error:
                raise ModeConnError(f"{name} must be a pair (low, high), got {value!r}.") from error
            if not 0.0 <= low < high <= 1.0:
                raise ModeConnError(f"{name} must be (low, high) with 0 <= low < high <= 1.")
            # A list (e.g. read back from JSON) becomes the tuple the training loop expects.
            object.__setattr__(self, name, (low, high))
        for name in ("probe_size", "bn_samples", "forget_samples"):
            positive_int(getattr(self, name), name, optional=True)
        TrainConfig(**self._train_settings())

    def _train_settings(self) -> dict[str, Any]:
        """Curve training's :class:`~modeconn_unlearn.training.TrainConfig` fields.

        Every field the two configs share is a setting of curve training, passed on as it is.
        """
        shared = TrainConfig.__dataclass_fields__.keys() & self.__dataclass_fields__.keys()
        settings = {name: getattr(self, name) for name in shared}
        return {**settings, "t_sampler": self.train_t_range or self.t_range}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the scheduler, a callable, as its ``repr``).

        Example:
            >>> from modeconn_unlearn.training import warmup_schedule
            >>> RecipeConfig(scheduler=warmup_schedule(10), scheduler_interval="step").to_dict()[
            ...     "scheduler"]
            "warmup_schedule(10, decay='linear')"
        """
        fields = asdict(self)
        if self.scheduler is not None:
            fields["scheduler"] = repr(self.scheduler)
        return fields

    @classmethod
    def for_scenario(cls, scenario: Scenario, **overrides: Any) -> RecipeConfig:
        """The settings the benchmarks' tuning picked for a forgetting scenario.

        Random forgetting: the matching objective (``objective="match"``,
        ``beta_match=1``) trained for 3 epochs over the whole retain set, with
        ``mask_kr=0``. On the tuning seed of ``benchmarks/mcu_strong.py``
        (an MLP memorising 18k Fashion-MNIST images, a 2k holdout) it beat the
        ascent objective, a cheaper budget and a larger β; on 5 reported seeds it
        lowered the gap to retraining for all five base methods (4 of 5 paired
        wins, SalUn a tie) where the ascent objective made RL and SalUn worse.
        A forgotten class: the ascent objective with ``t`` trained and chosen
        over the whole path (``t_range=(0, 1)``) and ``mask_kr=0``, from
        ``benchmarks/mcu_table.py``'s tuning seed (memorising BatchNorm CNN). See
        docs/benchmarks.md for the evidence and its limits.

        Args:
            scenario: ``"random"`` or ``"class"``.
            **overrides: Fields to set on top.

        Returns:
            A :class:`RecipeConfig`.

        Raises:
            ModeConnError: An unknown scenario or field.

        Example:
            >>> RecipeConfig.for_scenario("class").t_range
            (0.0, 1.0)
        """
        tuned: dict[str, dict[str, Any]] = {
            "random": {
                "mask_kr": 0.0,
                "objective": "match",
                "beta_match": 1.0,
                "epochs": 3,
                "retain_ratio": 1.0,
            },
            "class": {"mask_kr": 0.0, "t_range": (0.0, 1.0)},
        }
        if scenario not in tuned:
            raise ModeConnError(f'scenario must be "random" or "class", got {scenario!r}.')
        return cls._with(tuned[scenario], overrides)

    @classmethod
    def for_task(cls, task: str | Task, **overrides: Any) -> RecipeConfig:
        """The settings for a task: ``"classification"`` (the defaults) or ``"causal_lm"``.

        ``"causal_lm"`` takes the MCU settings of ``benchmarks/lm_unlearning.py``
        (fixed before its run, not tuned; MCU lowered the mean Gap to retraining
        in every cell of its table): AdamW without weight decay (the
        benchmark's Adam at decay 0, the same update), ``lr=1e-3``,
        ``mask="all"`` (the benchmark trained every entry of the control point),
        5 epochs on a 10 % retain subsample per epoch, batches of 32 and a
        200-example retain probe. For a curve of LoRA adapters the benchmark
        used ``lr=1e-2``: pass it as an override. The curve and the choice of
        ``t`` are the benchmark's best column: the matching objective
        (``objective="auto"``, which matches when the targets carry the held-out
        loss, as :func:`user_targets` with held-out entities gives) and the
        privacy term ``privacy_weight=0.5`` (λ chosen on tuning seeds; on 5
        reported seeds it lowered the mean Gap to retraining against the
        matching curve alone in 15 of 16 cells and brought Min-K%++ AUC nearer
        retraining's), so ``mcu_unlearn`` needs ``holdout=`` (the held-out
        entities; ``privacy_weight=0`` turns the term off). β and the ``t``
        range are not task-specific and keep the defaults. So do the
        schedule (a constant ``lr``), clipping (none) and precision (float32):
        the benchmark's table was measured without them; for a larger model,
        ``scheduler=warmup_schedule(0.1, decay="cosine")``,
        ``scheduler_interval="step"``, ``max_grad_norm=1.0`` and
        ``precision="bf16"`` are the usual overrides.

        Args:
            task: A task name, or a task whose ``name`` is one
                (:class:`~modeconn_unlearn.tasks.CausalLMTask`).
            **overrides: Fields to set on top.

        Returns:
            A :class:`RecipeConfig`.

        Raises:
            ModeConnError: An unknown task or field.

        Example:
            >>> config = RecipeConfig.for_task("causal_lm", lr=1e-2)
            >>> config.optimizer, config.mask, config.lr, config.objective, config.privacy_weight
            ('adamw', 'all', 0.01, 'auto', 0.5)
        """
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if name not in _TASK_SETTINGS:
            raise ModeConnError(
                f"no settings for task {name!r}; known tasks: {sorted(_TASK_SETTINGS)} (or build "
                "RecipeConfig(...) yourself)."
            )
        return cls._with(_TASK_SETTINGS[name], overrides)

    @classmethod
    def _with(cls, settings: dict[str, Any], overrides: dict[str, Any]) -> RecipeConfig:
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModeConnError(f"Unknown RecipeConfig fields {unknown}.")
        return cls(**{**settings, **overrides})
