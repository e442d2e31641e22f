"""The MCU recipe in one call: :class:`RecipeConfig`, :func:`mcu_unlearn`, :class:`RecipeResult`.

The steps and what selection may read are described in the package docstring
(:mod:`modeconn_unlearn.recipe`); every step is also public on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..curve_model import CurveModel
from ..data import as_dataset, as_loader
from ..errors import ModeConnError
from ..evaluation import DataLike, PathReport
from ..losses import AdaptiveBeta, mcu_objective
from ..masks import layer_mask, saliency_mask
from ..path_search import PathSearch, search_path
from ..selection import Interpolation, OptimalT
from ..training import History, fit_curve
from .targets import Scenario, Targets

__all__ = ["RecipeConfig", "RecipeResult", "mcu_unlearn"]

MaskKind = Literal["layer", "saliency", "all"]


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of :func:`mcu_unlearn` (defaults picked on tuning seeds, see docs/benchmarks.md).

    Attributes:
        curve: Curve family (``"bezier"`` or ``"polychain"``).
        num_bends: Bends of the curve (3: one trained control point).
        mask: ``"layer"`` (MCU's per-tensor :func:`~modeconn_unlearn.layer_mask`),
            ``"saliency"`` (element-wise SalUn mask) or ``"all"`` (every entry).
        mask_k: Fraction of entries made trainable (``"layer"``, ``"saliency"``).
        mask_kr: Fraction of retain-critical entries never trained (``"layer"``).
        epochs: Epochs of curve training.
        lr: Learning rate of curve training (SGD, momentum 0.9).
        retain_ratio: Fraction of the retain set used per epoch of curve training.
        batch_size: Batch size of curve training.
        beta_low: ``AdaptiveBeta.low``.
        beta_high: ``AdaptiveBeta.high``.
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
    t_range: tuple[float, float] = (0.5, 1.0)
    train_t_range: tuple[float, float] | None = None
    coarse_points: int = 4
    max_points: int = 6
    tol: float = 0.01
    interpolation: Interpolation = "pchip"
    probe_size: int | None = 2000
    bn_samples: int | None = 256
    forget_samples: int | None = None

    def __post_init__(self) -> None:
        if self.mask not in ("layer", "saliency", "all"):
            raise ModeConnError(f'mask must be "layer", "saliency" or "all", got {self.mask!r}.')
        for name in ("num_bends", "epochs", "batch_size", "coarse_points", "max_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModeConnError(f"{name} must be a positive int, got {value!r}.")
        if self.coarse_points < 2 or self.max_points < self.coarse_points:
            raise ModeConnError(
                f"coarse_points must be >= 2 and max_points >= coarse_points, got "
                f"coarse_points={self.coarse_points}, max_points={self.max_points}."
            )
        for name in ("lr", "tol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ModeConnError(f"{name} must be a positive number, got {value!r}.")
        for name in ("beta_low", "beta_high"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ModeConnError(f"{name} must be a number >= 0, got {value!r}.")
        if not 0.0 < self.mask_k <= 1.0 or not 0.0 <= self.mask_kr < 1.0:
            raise ModeConnError(
                f"mask_k must be in (0, 1] and mask_kr in [0, 1), got {self.mask_k}, "
                f"{self.mask_kr} (fractions, not percentages)."
            )
        if not 0.0 < self.retain_ratio <= 1.0:
            raise ModeConnError(f"retain_ratio must be in (0, 1], got {self.retain_ratio}.")
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
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ModeConnError(f"{name} must be a positive int or None, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def for_scenario(cls, scenario: Scenario, **overrides: Any) -> RecipeConfig:
        """The settings the benchmark's tuning picked for a forgetting scenario.

        On the tuning seed of ``benchmarks/mcu_table.py`` (memorising BatchNorm
        CNN, Fashion-MNIST), random forgetting was best with a stronger β rule
        (``beta_low=0.05, beta_high=2.0``) and a forgotten class with ``t``
        trained and chosen over the whole path (``t_range=(0, 1)``); both with
        ``mask_kr=0`` (that CNN's dense head holds most entries, so a positive
        ``kr`` excludes every tensor). See docs/benchmarks.md for the evidence and
        where it did not help (RL, SalUn).

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
            "random": {"mask_kr": 0.0, "beta_low": 0.05, "beta_high": 2.0},
            "class": {"mask_kr": 0.0, "t_range": (0.0, 1.0)},
        }
        if scenario not in tuned:
            raise ModeConnError(f'scenario must be "random" or "class", got {scenario!r}.')
        unknown = sorted(set(overrides) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ModeConnError(f"Unknown RecipeConfig fields {unknown}.")
        return cls(**{**tuned[scenario], **overrides})


@dataclass(frozen=True)
class RecipeResult:
    """The outcome of :func:`mcu_unlearn`.

    Attributes:
        model: The exported unlearned model (the user's own class) at ``t``.
        curve: The trained :class:`~modeconn_unlearn.CurveModel`.
        search: The path search (merged report, rounds).
        targets: The targets used.
        mask: The mask of trainable entries of the control point.
        history: Curve-training history.
        seconds: Wall time of each part (``mask``, ``fit``, ``search``,
            ``export``) and their ``total``.
    """

    model: nn.Module
    curve: CurveModel
    search: PathSearch
    targets: Targets
    mask: dict[str, Tensor]
    history: History
    seconds: dict[str, float]

    @property
    def best(self) -> OptimalT:
        """The chosen point (:class:`~modeconn_unlearn.OptimalT`)."""
        return self.search.best

    @property
    def t(self) -> float:
        """The chosen ``t``."""
        return self.search.best.t

    @property
    def report(self) -> PathReport:
        """Accuracies at every evaluated point of the curve."""
        return self.search.report


def _probe(
    data: DataLike, size: int | None, seed: int, *, name: str = "retain", salt: int = 10_000
) -> Dataset[Any]:
    """A fixed random subset of ``size`` samples of ``data`` (all of it when ``None``)."""
    dataset: Dataset[Any] = data.dataset if isinstance(data, DataLoader) else data
    count = len(as_dataset(dataset, name))
    if size is None or size >= count:
        return dataset
    generator = torch.Generator().manual_seed(salt + seed)
    picked = torch.randperm(count, generator=generator)[:size]
    return Subset(dataset, sorted(picked.tolist()))


def _make_mask(
    config: RecipeConfig, original: nn.Module, retain: DataLike, forget: DataLike
) -> dict[str, Tensor]:
    if config.mask == "layer":
        return dict(layer_mask(original, retain, forget, k=config.mask_k, kr=config.mask_kr))
    if config.mask == "saliency":
        return dict(saliency_mask(original, forget, sparsity=1.0 - config.mask_k))
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in original.named_parameters()}


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
    seed: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> RecipeResult:
    """Run MCU end to end on θ_o and a pre-unlearned θ_u; return the model at the chosen ``t``.

    1. mask: ``config.mask`` on θ_o, scored on the retain probe and the forget
       set (or the given ``mask``);
    2. a :class:`~modeconn_unlearn.CurveModel` θ_o → θ_u (ends fixed);
    3. :func:`~modeconn_unlearn.fit_curve` with ``CE(retain) - β·CE(forget)``
       and β from :class:`~modeconn_unlearn.AdaptiveBeta` on ``targets``, ``t``
       drawn from ``config.train_t_range``;
    4. :func:`~modeconn_unlearn.path_search.search_path` on a fixed retain
       subset (``probe``; BatchNorm statistics from ``config.bn_samples`` of it)
       and the forget set (or ``config.forget_samples`` of it);
    5. the exported model at the chosen ``t``, BatchNorm statistics from the
       same samples.

    Selection reads only the curve's retain and forget accuracies and
    ``targets`` (see :func:`user_targets`); there is no parameter for a
    retrained model or a test split.

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
        seed: Seed of curve training and of the probe.
        progress: Show progress bars.
        device: Where to train and evaluate.

    Returns:
        :class:`RecipeResult` (model, curve, search, chosen ``t``, wall times).

    Raises:
        ModeConnError: Bad settings, data or models (from the steps).

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
    seconds: dict[str, float] = {}
    probe_data = probe if probe is not None else _probe(retain, config.probe_size, seed)
    probe_loader = as_loader(probe_data, name="probe")
    bn_loader = as_loader(
        _probe(probe_data, config.bn_samples, seed, name="probe", salt=20_000), name="probe"
    )
    forget_scored = _probe(forget, config.forget_samples, seed, name="forget", salt=30_000)
    began = time.perf_counter()
    chosen_mask = (
        dict(mask) if mask is not None else _make_mask(config, original, probe_loader, forget)
    )
    seconds["mask"] = time.perf_counter() - began

    began = time.perf_counter()
    curve = CurveModel(
        original,
        start=original,
        end=theta_u,
        curve=config.curve,
        num_bends=config.num_bends,
        mask=chosen_mask,
    )
    if device is not None:
        curve.to(device)
    beta = AdaptiveBeta(targets.retain, targets.forget, low=config.beta_low, high=config.beta_high)
    history = fit_curve(
        curve,
        retain,
        forget,
        loss=mcu_objective(beta),
        epochs=config.epochs,
        lr=config.lr,
        retain_ratio=config.retain_ratio,
        t_sampler=config.train_t_range or config.t_range,
        batch_size=config.batch_size,
        seed=seed,
        progress=progress,
        device=device,
    )
    seconds["fit"] = time.perf_counter() - began

    began = time.perf_counter()
    search = search_path(
        curve,
        {"retain": probe_loader, "forget": forget_scored},
        retain_target=targets.retain,
        forget_target=targets.forget,
        t_range=config.t_range,
        coarse=config.coarse_points,
        max_points=config.max_points,
        tol=config.tol,
        kind=config.interpolation,
        bn_loader=bn_loader,
        device=device,
    )
    seconds["search"] = time.perf_counter() - began

    began = time.perf_counter()
    model = curve.export(search.best.t, bn_loader=bn_loader)
    seconds["export"] = time.perf_counter() - began
    seconds["total"] = sum(seconds.values())
    return RecipeResult(
        model=model,
        curve=curve,
        search=search,
        targets=targets,
        mask=chosen_mask,
        history=history,
        seconds=seconds,
    )
