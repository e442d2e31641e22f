"""Helpers shared by the benchmark scripts: models, data, base methods, timing, statistics."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, Dataset, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn.cloning import clone_module
from modeconn_unlearn.zoo import MLP

RESULTS = Path(__file__).parent / "results"
METHODS = ("FT", "GA", "NegGrad+", "RL", "SalUn")


# --------------------------------------------------------------------------- models
class DenseHeadCNN(nn.Module):
    """A BatchNorm CNN that can memorise a small training set on a CPU budget.

    Two conv-BN-ReLU-maxpool stages (``width``, ``2 * width`` channels) and a
    dense head (``Linear -> BatchNorm1d -> ReLU -> Linear``) on the flattened
    7x7 maps. ``mcu.zoo.SmallCNN`` pools globally before its head (23k
    parameters at width 16) and reached only 93.9 % training accuracy after 20
    epochs on 4000 Fashion-MNIST images, so it cannot play a memorising original
    at this budget; this network has about 210k parameters at width 16 and
    costs less per image.
    """

    def __init__(self, width: int = 16, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * 49, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


def model_factory(arch: str, width: int) -> Callable[[], nn.Module]:
    """``"cnn"``: :class:`DenseHeadCNN`; ``"mlp"``: ``mcu.zoo.MLP`` 784-``4*width``²-10."""
    if arch == "cnn":
        return lambda: DenseHeadCNN(width)
    if arch == "mlp":
        return lambda: MLP(784, (16 * width, 8 * width), num_classes=10)
    raise ValueError(f"unknown arch {arch!r}")


# --------------------------------------------------------------------------- data
def labels_of(dataset: Any) -> torch.Tensor:
    """Labels of a TensorDataset or nested Subsets of one."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return dataset.tensors[1]  # type: ignore[no-any-return]


def random_subset(data: Dataset[Any], size: int, seed: int) -> Subset[Any]:
    """A fixed random subset (sorted indices) of at most ``size`` samples."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    picked = torch.randperm(len(data), generator=generator)[: min(size, len(data))]  # type: ignore[arg-type]
    return Subset(data, sorted(picked.tolist()))


# Forget scenarios: a random fraction of the training data, or a whole class.
FORGET = {"random10": ("ratio", 0.1), "random1": ("ratio", 0.01), "class": ("class", 0)}


def forget_split(train: Any, test: Any, name: str, seed: int) -> tuple[Any, Any, Any]:
    """``(retain, forget, test)`` of scenario ``name``; for a class, test without that class."""
    kind, value = FORGET[name]
    if kind == "ratio":
        retain, forget = mcu.forget_retain_split(train, forget_ratio=value, seed=seed)
        return retain, forget, test
    retain, forget = mcu.forget_retain_split(train, forget_class=int(value))
    keep = torch.nonzero(labels_of(test) != value).flatten().tolist()
    return retain, forget, Subset(test, keep)


def loader(data: Any, batch_size: int = 256) -> DataLoader[Any]:
    return DataLoader(data, batch_size=batch_size, shuffle=False)


# --------------------------------------------------------------------------- training
def cosine(epochs: int) -> Callable[[Optimizer], LRScheduler]:
    return lambda optimizer: CosineAnnealingLR(optimizer, T_max=epochs)


@dataclasses.dataclass(frozen=True)
class Base:
    """A base unlearning method's hyperparameters."""

    method: str
    epochs: int
    lr: float
    neggrad_beta: float = 0.9
    salun_sparsity: float = 0.5

    def loss(self) -> mcu.UnlearnLoss:
        return {
            "FT": mcu.losses.finetune,
            "GA": mcu.losses.gradient_ascent,
            "NegGrad+": lambda: mcu.losses.neggrad_plus(self.neggrad_beta),
            "RL": lambda: mcu.losses.random_label(10),
            "SalUn": lambda: mcu.losses.random_label(10),
        }[self.method]()

    def run(self, original: nn.Module, retain: Any, forget: Any, *, seed: int) -> nn.Module:
        mask = (
            mcu.saliency_mask(original, forget, sparsity=self.salun_sparsity)
            if self.method == "SalUn"
            else None
        )
        return mcu.unlearn(
            original,
            retain,
            forget,
            loss=self.loss(),
            epochs=self.epochs,
            lr=self.lr,
            mask=mask,
            batch_size=128,
            seed=seed,
            progress=False,
        )


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Seconds:
    """Wall-clock and CPU time of a step (CPU time is what other processes disturb least)."""

    wall: float
    cpu: float

    def __add__(self, other: Seconds) -> Seconds:
        return Seconds(self.wall + other.wall, self.cpu + other.cpu)


def timed(fn: Callable[[], Any]) -> tuple[Any, Seconds]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, Seconds(time.perf_counter() - wall, time.process_time() - cpu)


# --------------------------------------------------------------------------- scoring
def with_bn_from(model: nn.Module, data: DataLoader[Any]) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics re-estimated on ``data``.

    Every model is scored this way, as the points of a path are, so that MCU at
    ``t = 1`` is exactly θ_u and a difference comes from the path, not from how
    BatchNorm statistics were estimated.
    """
    model = clone_module(model)
    mcu.update_bn(model, data)
    return model


def score(
    model: nn.Module,
    *,
    retain: Any,
    forget: Any,
    test: Any,
    probe: Any,
    reference: mcu.UnlearningScores | None,
    seed: int,
) -> dict[str, float]:
    """UA, RA, TA, MIA-efficacy (SVC), Avg. Gap and the loss attack's TPR at 1 % FPR.

    The per-example attack thresholds the loss, calibrated on ``probe`` (retain
    members) vs ``test``; its TPR at 1 % FPR on the forget set vs ``test`` says how
    many forget samples still look like members (retraining: near 1 %).
    """
    scores = mcu.unlearning_scores(
        model, retain=retain, forget=forget, test=test, reference=reference, seed=seed
    )
    attack = mcu.threshold_attack(
        model, member=probe, nonmember=test, target=forget, signals=("loss",), fprs=(0.01,)
    )["loss"]
    assert attack.target_tpr_at_fpr is not None
    return {
        "ua": scores.ua,
        "ra": scores.ra,
        "ta": scores.ta,
        "mia": scores.mia,
        "avg_gap": float("nan") if scores.avg_gap is None else scores.avg_gap,
        "tpr1": 100.0 * attack.target_tpr_at_fpr[0.01],
    }


# --------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and the half-width of its t-distribution confidence interval."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean())
    if n < 2:
        return {"mean": mean, "ci": float("nan"), "n": n}
    sem = float(array.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * sem
    return {"mean": mean, "ci": half, "n": n}


# --------------------------------------------------------------------------- provenance
def environment(where: Path | None = None) -> dict[str, Any]:
    """Versions, threads, and the git commit of ``where`` (default: this file's checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=where or Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "git_commit": commit,
        "library": str(Path(mcu.__file__).parent),
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a partial run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    tmp.replace(path)


def copy_model(model: nn.Module) -> nn.Module:
    return clone_module(model)
