"""Quickstart: unlearn a random 10% of the training set, then improve it with MCU.

The whole workflow of the library in one script, on scikit-learn's bundled
digits (or Fashion-MNIST with ``--dataset fashion``):

1. train the original model θ_o on the full training set;
2. split off a random 10% forget set and run a base unlearning method on θ_o
   (random labels by default): the pre-unlearned model θ_u;
3. retrain from scratch on the retain set: the reference every unlearned model
   is compared with (its retain and forget accuracies are MCU's targets);
4. connect θ_o and θ_u with a quadratic Bezier curve whose control point is
   trained (only on the tensors chosen by ``layer_mask``) with the MCU
   objective ``CE(retain) - β·CE(forget)``, β adapted per batch;
5. measure the path at 21 points, pick the ``t`` closest to the targets (from
   retain/forget accuracies only, never the test split), and print UA, RA,
   TA, MIA-efficacy and the average gap to retraining for every model;
6. save a figure of the path with the effective region.

Usage:
    python examples/quickstart.py                      # digits, random labels (10-20 s)
    python examples/quickstart.py --method ga          # gradient ascent as the base method
    python examples/quickstart.py --dataset fashion    # Fashion-MNIST (needs the IDX files)
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, Dataset

import modeconn_unlearn as mcu
from modeconn_unlearn.datasets import load_digits, load_fashion_mnist
from modeconn_unlearn.zoo import MLP, SmallCNN

DEFAULT_OUT = Path(__file__).parent / "outputs" / "quickstart_path.png"
METHODS = ("rl", "ga", "neggrad", "salun", "ft")
NAMES = {"rl": "RL", "ga": "GA", "neggrad": "NegGrad+", "salun": "SalUn", "ft": "FT"}
# t is searched (and the curve trained) on the half of the path next to θ_u: a model
# nearer θ_o would carry much of the original's memory of the forget set.
T_RANGE = (0.5, 1.0)
# A shape-preserving interpolation: accuracies on a small forget set move in steps and
# sit on plateaus, where a cubic spline overshoots (e.g. above 100%).
INTERPOLATION = "pchip"


@dataclass(frozen=True)
class Setup:
    """Data, architecture and learning rates of one dataset."""

    train: Dataset[Any]
    test: Dataset[Any]
    make_model: Callable[[], nn.Module]
    lr: float
    epochs: int


def load(dataset: str) -> Setup:
    if dataset == "digits":
        train, test = load_digits()
        return Setup(train, test, lambda: MLP(64, (64,), num_classes=10), lr=0.05, epochs=30)
    # A 5000-image subset keeps the CPU run short; the CNN has BatchNorm.
    train = load_fashion_mnist(train=True, limit=5000)
    test = load_fashion_mnist(train=False, limit=1000)
    return Setup(train, test, lambda: SmallCNN(1, 10, width=8), lr=0.1, epochs=10)


def base_method(
    method: str,
    original: nn.Module,
    retain: Any,
    forget: Any,
    *,
    epochs: int,
    seed: int,
    progress: bool,
) -> nn.Module:
    """Run one of the built-in unlearning methods on a copy of ``original``: θ_u."""
    mask = mcu.saliency_mask(original, forget, sparsity=0.5) if method == "salun" else None
    loss, lr = {
        "rl": (mcu.losses.random_label(10), 0.01),
        "salun": (mcu.losses.random_label(10), 0.01),  # SalUn: random labels on a saliency mask
        "ga": (mcu.losses.gradient_ascent(), 0.01),
        "neggrad": (mcu.losses.neggrad_plus(0.9), 0.01),
        "ft": (mcu.losses.finetune(), 0.01),
    }[method]
    return mcu.unlearn(
        original,
        retain,
        forget,
        loss=loss,
        epochs=epochs,
        lr=lr,
        mask=mask,
        seed=seed,
        progress=progress,
    )


def with_bn_from(model: nn.Module, loader: DataLoader[Any]) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics re-estimated on ``loader``.

    Every model in the table is scored this way, as the points of the path are, so that
    MCU at t = 1 is exactly θ_u (a no-op for models without BatchNorm, such as the MLP).
    """
    model = copy.deepcopy(model)
    mcu.update_bn(model, loader)
    return model


def format_table(rows: dict[str, mcu.UnlearningScores], seconds: dict[str, float]) -> str:
    header = f"{'model':<15}{'UA':>8}{'RA':>8}{'TA':>8}{'MIA':>8}{'Avg. Gap':>10}{'time (s)':>10}"
    lines = [header, "-" * len(header)]
    for name, s in rows.items():
        gap = "-" if s.avg_gap is None else f"{s.avg_gap:.2f}"
        lines.append(
            f"{name:<15}{s.ua:>8.2f}{s.ra:>8.2f}{s.ta:>8.2f}{s.mia:>8.2f}{gap:>10}"
            f"{seconds[name]:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    parser.add_argument("--method", choices=METHODS, default="rl", help="base unlearning method")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the original and retrained models (30 on digits, 10 on fashion); the "
        "base method and the curve get a quarter of them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG of the path")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    progress = not args.no_progress
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    setup = load(args.dataset)
    epochs = args.epochs or setup.epochs
    short = max(1, round(epochs / 4))  # epochs of the base method and of the curve
    retain, forget = mcu.forget_retain_split(setup.train, forget_ratio=0.1, seed=args.seed)
    splits = {"retain": retain, "forget": forget, "test": setup.test}
    seed, base = args.seed, NAMES[args.method]
    seconds: dict[str, float] = {}
    fit = {
        "epochs": epochs,
        "lr": setup.lr,
        "scheduler": lambda optimizer: CosineAnnealingLR(optimizer, T_max=epochs),
        "seed": seed,
        "progress": progress,
    }

    # 1. The original model θ_o: a fresh model trained on the whole training set.
    began = time.perf_counter()
    original = mcu.retrain(setup.make_model, setup.train, **fit)
    seconds["original"] = time.perf_counter() - began

    # 2. The reference: retrained from scratch on the retain set only. Its retain and
    #    forget accuracies are the targets of MCU (the test split plays no part).
    began = time.perf_counter()
    retrained = mcu.retrain(setup.make_model, retain, **fit)
    seconds["retrain"] = time.perf_counter() - began
    reference = mcu.unlearning_scores(
        with_bn_from(retrained, DataLoader(retain, batch_size=256)), **splits, seed=seed
    )
    retain_target, forget_target = reference.ra, 100.0 - reference.ua

    # 3. The base unlearning method: θ_u.
    began = time.perf_counter()
    theta_u = base_method(
        args.method, original, retain, forget, epochs=short, seed=seed, progress=progress
    )
    seconds[base] = time.perf_counter() - began

    # 4. MCU: a Bezier curve θ_o -> θ_u; its control point is trained on the tensors of
    #    a layer mask, with t drawn from the half of the path next to θ_u.
    began = time.perf_counter()
    mask = mcu.layer_mask(original, retain, forget, k=0.5, kr=0.1)
    curve = mcu.CurveModel(original, start=original, end=theta_u, curve="bezier", mask=mask)
    mcu.fit_curve(
        curve,
        retain,
        forget,
        loss=mcu.losses.mcu_objective(mcu.AdaptiveBeta(retain_target, forget_target)),
        epochs=short,
        lr=0.01,
        t_sampler=T_RANGE,
        seed=seed,
        progress=progress,
    )
    # 5. The path at 21 points (BatchNorm statistics re-estimated on the retain set at
    #    each t), and the t closest to the targets.
    report = mcu.evaluate_path(curve, splits, ts=21, bn_loader=retain, mia=True, progress=progress)
    best = mcu.find_optimal_t(
        report.t,
        report.acc("retain"),
        report.acc("forget"),
        retain_target=retain_target,
        forget_target=forget_target,
        t_range=T_RANGE,
        kind=INTERPOLATION,
    )
    # An instance of the model's own class at t, BatchNorm statistics from the retain set.
    retain_loader = DataLoader(retain, batch_size=256)
    mcu_model = curve.export(best.t, bn_loader=retain_loader)
    seconds[f"MCU({base})"] = time.perf_counter() - began

    models = {"original": original, "retrain": retrained, base: theta_u, f"MCU({base})": mcu_model}
    rows = {
        name: mcu.unlearning_scores(
            with_bn_from(model, retain_loader), **splits, reference=reference, seed=seed
        )
        for name, model in models.items()
    }
    print(
        f"\n{args.dataset}: {len(retain)} retain, {len(forget)} forget, {len(setup.test)} test "
        f"samples; targets (retrained model): retain {retain_target:.2f}%, "
        f"forget {forget_target:.2f}%\n"
    )
    print(format_table(rows, seconds))
    region = ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in best.region or []) or "empty"
    print(
        f"\noptimal t = {best.t:.3f} in {T_RANGE} (interpolated retain/forget gap to the "
        f"targets: {best.avg_gap:.2f}); effective region: {region}"
    )

    if not args.no_plot:
        report.plot(
            targets={"retain": retain_target, "forget": forget_target},
            optimal_t=best.t,
            kind=INTERPOLATION,
            path=args.out,
            title=f"MCU({base}) on {args.dataset}: accuracy along the path",
        )
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
