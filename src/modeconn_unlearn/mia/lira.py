"""LiRA: the per-example likelihood-ratio attack with reference models (Carlini et al., 2022).

Population attacks alone overestimate how private an unlearned model is; LiRA
is the stronger test. :func:`train_reference_models` trains the reference
models with :func:`modeconn_unlearn.training.retrain`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ..checks import positive_int
from ..errors import ModeConnError
from ..evaluation.features import class_probs, logit_confidence
from ..evaluation.outputs import DataLike, DeviceLike, Outputs, collect_outputs
from ..progress import progress_bar
from ..tasks import Task
from ..training import retrain

__all__ = ["ReferenceModels", "lira", "lira_scores", "lira_statistic", "train_reference_models"]

logger = logging.getLogger(__name__)

_MIN_STD = 1e-8


def lira_statistic(outputs: Outputs) -> NDArray[np.float64]:
    """The per-example statistic LiRA fits Gaussians to.

    The logit-scaled confidence ``log(p_y / (1 - p_y))`` when a classification
    task collected class logits, else the negated per-sample loss (for a
    language model, minus the answer NLL: its log-likelihood).

    Example:
        >>> loss = torch.tensor([0.5, 2.0], dtype=torch.float64)
        >>> lira_statistic(Outputs(loss, torch.ones(2))).tolist()
        [-0.5, -2.0]
    """
    logits = outputs.signals.get("logits")
    if logits is not None and logits.ndim == 2:
        logits, _, labels = class_probs(outputs, needed_for="LiRA")
        return logit_confidence(logits, labels).numpy()
    return (-outputs.loss.double()).numpy()


def lira_scores(
    target: NDArray[np.float64],
    reference: NDArray[np.float64],
    in_mask: NDArray[np.bool_],
    *,
    online: bool,
    fix_variance: bool,
) -> NDArray[np.float64]:
    """LiRA member scores from precomputed statistics (see :func:`lira_statistic`).

    Args:
        target: ``(n,)`` statistics of the target model.
        reference: ``(k, n)`` statistics of the reference models.
        in_mask: ``(k, n)``: whether reference model ``j`` trained on example ``i``.
        online: Use IN and OUT Gaussians; ``False`` uses OUT only.
        fix_variance: One pooled standard deviation instead of one per example.

    Returns:
        ``(n,)`` scores, higher meaning "member".

    Example:
        >>> reference = np.array([[0.0, 1.0], [2.0, 3.0], [1.0, 0.0], [3.0, 2.0]])
        >>> in_mask = np.array([[True, False], [True, False], [False, True], [False, True]])
        >>> scores = lira_scores(np.array([1.0, 2.0]), reference, in_mask, online=False,
        ...                      fix_variance=True)
        >>> [round(v, 4) for v in scores.tolist()]  # (1 - 2) / sqrt(2), (2 - 2) / sqrt(2)
        [-0.7071, 0.0]
    """
    k, n = reference.shape
    if target.shape != (n,) or in_mask.shape != (k, n):
        raise ModeConnError(
            f"Shapes do not match: target ({target.shape}), reference confidences "
            f"({reference.shape}) and in_mask ({in_mask.shape}) must be (n,), (k, n), (k, n)."
        )

    def gaussian(mask: NDArray[np.bool_], role: str) -> tuple[NDArray[np.float64], ...]:
        counts = mask.sum(axis=0)
        needed = 1 if fix_variance else 2
        short = np.flatnonzero(counts < needed)
        if len(short):
            raise ModeConnError(
                f"{len(short)} examples (e.g. positions {short[:5].tolist()}) have fewer than "
                f"{needed} {role} reference models; train more reference models "
                "(train_reference_models balances IN/OUT per example) or pass fix_variance=True."
            )
        mean = np.where(mask, reference, 0.0).sum(axis=0) / counts
        squares = np.where(mask, (reference - mean) ** 2, 0.0)
        if fix_variance:
            dof = max(int(counts.sum() - n), 1)
            std = np.full(n, math.sqrt(squares.sum() / dof))
        else:
            std = np.sqrt(squares.sum(axis=0) / counts)
        return mean, np.maximum(std, _MIN_STD)

    mean_out, std_out = gaussian(~in_mask, "OUT")
    if not online:
        return (target - mean_out) / std_out
    mean_in, std_in = gaussian(in_mask, "IN")
    ratio = norm.logpdf(target, mean_in, std_in) - norm.logpdf(target, mean_out, std_out)
    return np.asarray(ratio, dtype=np.float64)


def lira(
    target_model: nn.Module,
    reference_models: Sequence[nn.Module],
    data: DataLike,
    in_mask: ArrayLike,
    *,
    online: bool = True,
    fix_variance: bool = False,
    task: Task | None = None,
    device: DeviceLike = None,
) -> NDArray[np.float64]:
    """Per-example likelihood-ratio membership scores (LiRA, Carlini et al., 2022).

    For each example the logit-scaled confidence ``φ = log(p_y / (1 - p_y))``
    (for tasks without class logits, minus the per-sample loss; see
    :func:`lira_statistic`) of the reference models that trained on it (IN)
    and that did not (OUT) is fitted by a Gaussian. Online: the score is
    ``log N(φ_target; mean_in, std_in) - log N(φ_target; mean_out, std_out)``.
    Offline (OUT models only): ``(φ_target - mean_out) / std_out``, monotone in
    the one-sided test ``Φ(·)`` of the paper. Higher means "member"; feed the
    scores of members and non-members (e.g. forget vs test examples) to
    :func:`~modeconn_unlearn.mia.roc_metrics`.

    Args:
        target_model: The model under attack.
        reference_models: ``k`` models of the same kind trained on random
            halves (see :func:`train_reference_models`).
        data: The ``n`` candidate examples, in a fixed order.
        in_mask: Bool array ``(k, n)``: whether reference model ``j`` trained
            on example ``i``.
        online: Use IN and OUT models (stronger); ``False`` uses OUT only.
        fix_variance: One pooled variance for all examples instead of one per
            example (more stable with few reference models).
        task: How outputs are read (default: classification).
        device: Where to run the models.

    Returns:
        Scores of shape ``(n,)``.

    Raises:
        ModeConnError: Mismatched shapes, a shuffling loader, or examples with
            too few IN/OUT reference models.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
        >>> refs = [nn.Linear(3, 2) for _ in range(4)]
        >>> mask = [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]] * 2
        >>> lira(nn.Linear(3, 2), refs, data, mask).shape
        (6,)
    """
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise ModeConnError(
            "data is a shuffling DataLoader; LiRA matches examples across models by "
            "position, so pass the Dataset or a DataLoader with shuffle=False."
        )
    if len(reference_models) == 0:
        raise ModeConnError("lira needs reference models; see train_reference_models().")
    mask = np.asarray(in_mask)
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ModeConnError("in_mask must be a boolean (or 0/1) array of shape (k, n).")
        mask = mask.astype(bool)

    def confidences(model: nn.Module, name: str) -> NDArray[np.float64]:
        outputs = collect_outputs(model, data, task=task, signals=True, device=device, name=name)
        return lira_statistic(outputs)

    target = confidences(target_model, "data")
    reference = np.stack(
        [confidences(model, f"data (reference {j})") for j, model in enumerate(reference_models)]
    )
    return lira_scores(target, reference, mask, online=online, fix_variance=fix_variance)


class ReferenceModels(NamedTuple):
    """Reference models for :func:`lira` and which examples each trained on."""

    models: list[nn.Module]
    in_mask: NDArray[np.bool_]


def train_reference_models(
    model_factory: Callable[[], nn.Module],
    data: DataLike,
    *,
    k: int = 8,
    train_fn: Callable[[nn.Module, Dataset[Any]], nn.Module | None] | None = None,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> ReferenceModels:
    """Train ``k`` reference models, each on a random half of ``data``.

    The halves are balanced: every example is IN for exactly ``k // 2`` models
    and OUT for the rest, so each example has IN and OUT models for
    :func:`lira`.

    Args:
        model_factory: Returns a fresh, untrained model (called ``k`` times,
            with the torch seed set to ``seed + j`` before call ``j``).
        data: A map-style Dataset (or a DataLoader over one) of ``n`` examples,
            in the same order as later passed to :func:`lira`.
        k: Number of reference models (at least 2; use 4 or more for online LiRA).
        train_fn: ``train_fn(model, subset)`` trains in place (or returns the
            trained model). Default: :func:`~modeconn_unlearn.training.retrain`
            (SGD, momentum 0.9, weight decay 5e-4, cross-entropy) for ``epochs`` epochs.
        epochs: Epochs of the built-in loop.
        lr: Learning rate of the built-in loop.
        batch_size: Batch size of the built-in loop.
        seed: Seed of the halves, the model initialisations and the shuffling.
        progress: Show a progress bar over the models.
        device: Where to train with the built-in loop (default: CPU or the
            factory's device).

    Returns:
        ``ReferenceModels(models, in_mask)`` with ``in_mask`` of shape ``(k, n)``;
        the models are in eval mode.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
        >>> refs = train_reference_models(lambda: nn.Linear(3, 2), data, k=2, epochs=1,
        ...                               progress=False)
        >>> refs.in_mask.shape, refs.in_mask.sum(axis=0).tolist() == [1] * 10
        ((2, 10), True)
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "train_reference_models needs a map-style Dataset (or a DataLoader over one) to "
            f"draw random halves from, got {type(data).__name__}."
        )
    positive_int(k, "k", minimum=2)
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ModeConnError(f"Need at least 2 examples to split into halves, got {n}.")
    rng = np.random.default_rng(seed)
    # Per example, a random ranking of the models; the first k // 2 train on it.
    in_mask = rng.random((k, n)).argsort(axis=0).argsort(axis=0) < k // 2
    models: list[nn.Module] = []
    for j in progress_bar(progress, range(k), desc="reference models"):
        subset = Subset(dataset, np.flatnonzero(in_mask[j]).tolist())
        if train_fn is None:
            # retrain seeds the RNGs with seed + j before calling the factory.
            model = retrain(
                model_factory,
                subset,
                epochs=epochs,
                lr=lr,
                seed=seed + j,
                momentum=0.9,
                weight_decay=5e-4,
                batch_size=batch_size,
                device=device,
                progress=False,
            )
        else:
            torch.manual_seed(seed + j)
            model = model_factory()
            trained = train_fn(model, subset)
            if isinstance(trained, nn.Module):
                model = trained
        models.append(model.eval())
    logger.debug("trained %d reference models on halves of %d examples", k, n)
    return ReferenceModels(models, in_mask)
