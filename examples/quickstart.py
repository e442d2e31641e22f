"""Quickstart: make a trained model forget part of its training data, then improve it with MCU.

The whole workflow of the library in one script, on scikit-learn's bundled
digits (or Fashion-MNIST with ``--dataset fashion``), with only what a user has:

1. carve a validation split off the training data, then train the original
   model θ_o on the rest;
2. choose the forget set (by default every training image of the digit 0; with
   ``--scenario random`` a random 10 %) and run a base unlearning method on θ_o
   (fine-tuning on the retain set by default): the pre-unlearned model θ_u;
3. MCU's targets from the original and the held-out split
   (``mcu.recipe.user_targets``: the original's retain accuracy, and as the
   forget target 0 for a forgotten class or the original's accuracy on the
   held-out split for a random forget set);
4. ``mcu.recipe.mcu_unlearn``: a quadratic Bezier curve θ_o -> θ_u whose
   control point is trained, an adaptive search for the ``t`` closest to the
   targets, and the model at that ``t`` (or θ_u itself when no point of the
   curve beats it by more than the targets' sampling error);
5. only to score the result: retrain from scratch on the retain set, and print
   for every model the scores of unlearning papers, each in percent:

   * UA, unlearning accuracy: 100 - accuracy on the forget set;
   * RA, retain accuracy; TA, test accuracy (for a forgotten class, on the
     other classes' test images);
   * MIA, MIA-efficacy: the share of forget samples a membership-inference
     attack (an SVC on the model's confidence) calls "never seen";
   * Avg. Gap: the mean of |score - retrained model's score| over the four,
     the distance to the gold standard (lower is better);
6. save a figure of the path with the effective region and MIA-efficacy.

Usage:
    python examples/quickstart.py                      # digits, forget the digit 0, FT (~10 s)
    python examples/quickstart.py --method rl          # random labels as the base method
    python examples/quickstart.py --scenario random    # forget a random 10 % instead
    python examples/quickstart.py --dataset fashion    # Fashion-MNIST (needs the IDX files)
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import modeconn_unlearn as mcu
from modeconn_unlearn.batchnorm import with_bn_from
from modeconn_unlearn.datasets import load_digits, load_fashion_mnist
from modeconn_unlearn.recipe import RecipeConfig, carve_holdout, mcu_unlearn, user_targets
from modeconn_unlearn.zoo import MLP, SmallCNN

DEFAULT_OUT = Path(__file__).parent / "outputs" / "quickstart_path.png"
METHODS = ("ga", "ft", "rl", "neggrad", "salun")
NAMES = {"rl": "RL", "ga": "GA", "neggrad": "NegGrad+", "salun": "SalUn", "ft": "FT"}
FORGOTTEN_CLASS = 0


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


def train_from_scratch(
    setup: Setup, data: Any, *, name: str, epochs: int, seed: int, progress: bool
) -> nn.Module:
    """``mcu.retrain`` (a fresh model trained on ``data``) with a progress bar called ``name``."""
    bar = tqdm(total=epochs, desc=name, unit="epoch", disable=not progress)
    model = mcu.retrain(
        setup.make_model,
        data,
        epochs=epochs,
        lr=setup.lr,
        scheduler=lambda optimizer: CosineAnnealingLR(optimizer, T_max=epochs),
        seed=seed,
        progress=False,
        callbacks=[lambda record, model: bar.update(1)],
    )
    bar.close()
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
    parser.add_argument("--method", choices=METHODS, default="ga", help="base unlearning method")
    parser.add_argument(
        "--scenario",
        choices=("class", "random"),
        default="class",
        help=f"forget every image of the digit {FORGOTTEN_CLASS}, or a random 10%% of them all",
    )
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
    seed, base = args.seed, NAMES[args.method]
    seconds: dict[str, float] = {}
    run = {"epochs": epochs, "seed": seed, "progress": progress}

    # 1. A validation split the original never trains on, then the original model θ_o.
    train, holdout = carve_holdout(setup.train, fraction=0.1, seed=seed)
    began = time.perf_counter()
    original = train_from_scratch(setup, train, name="original", **run)
    seconds["original"] = time.perf_counter() - began
    if args.scenario == "class":
        retain, forget = mcu.forget_retain_split(train, forget_class=FORGOTTEN_CLASS)
        # Test accuracy of a model that forgot a class is measured on the other classes.
        test = Subset(
            setup.test,
            [i for i in range(len(setup.test)) if int(setup.test[i][1]) != FORGOTTEN_CLASS],
        )
    else:
        retain, forget = mcu.forget_retain_split(train, forget_ratio=0.1, seed=seed)
        test = setup.test
    splits = {"retain": retain, "forget": forget, "test": test}

    # 2. The base unlearning method: θ_u.
    began = time.perf_counter()
    theta_u = base_method(
        args.method, original, retain, forget, epochs=short, seed=seed, progress=progress
    )
    seconds[base] = time.perf_counter() - began

    # 3. MCU's targets from what a user holds: the original and the held-out split.
    targets = user_targets(original, retain, holdout, scenario=args.scenario)

    # 4. MCU in one call: layer mask, curve θ_o -> θ_u trained with the MCU objective,
    #    adaptive search for the t closest to the targets, the model at that t.
    began = time.perf_counter()
    result = mcu_unlearn(
        original,
        theta_u,
        retain,
        forget,
        targets=targets,
        config=RecipeConfig.for_scenario(args.scenario, epochs=short),
        seed=seed,
        progress=progress,
    )
    seconds[f"MCU({base})"] = time.perf_counter() - began

    # 5. Only to score the result: retraining from scratch on the retain set. MCU never
    #    saw this model.
    began = time.perf_counter()
    retrained = train_from_scratch(setup, retain, name="retrain (reference)", **run)
    seconds["retrain"] = time.perf_counter() - began
    retain_loader = DataLoader(retain, batch_size=256)
    reference = mcu.unlearning_scores(with_bn_from(retrained, retain_loader), **splits, seed=seed)
    models = {
        "original": original,
        "retrain": retrained,
        base: theta_u,
        f"MCU({base})": result.model,
    }
    rows = {
        name: mcu.unlearning_scores(
            with_bn_from(model, retain_loader), **splits, reference=reference, seed=seed
        )
        for name, model in models.items()
    }
    what = (
        f"every image of the digit {FORGOTTEN_CLASS}"
        if args.scenario == "class"
        else "a random 10% of the training images"
    )
    print(
        f"\n{args.dataset}: forget {what}; {len(retain)} retain, {len(forget)} forget, "
        f"{len(holdout)} held-out, {len(test)} test samples\n"
    )
    print(format_table(rows, seconds))
    print(
        "\nUA = 100 - forget accuracy, RA/TA = retain/test accuracy, MIA = share of forget "
        "samples an attack calls unseen (all %); Avg. Gap = mean |score - retrain's score| "
        "(lower is better; retrain is the gold standard MCU never sees)."
    )
    region = ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in result.best.region or []) or "empty"
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items() if k != "total")
    print(
        f"\nMCU's choice, from the targets only ({targets.source['forget']} as the forget "
        f"target), after {result.search.evaluations} path points; effective region "
        f"{region}; MCU time: {parts}\n{result.summary()}"
    )

    if not args.no_plot:
        # For the figure only (the choice is made): test accuracy and MIA-efficacy at the
        # points the search evaluated.
        shown = mcu.evaluate_path(
            result.curve, splits, ts=result.report.t.tolist(), mia=True, progress=False
        )
        shown.plot(
            targets={"retain": targets.retain, "forget": targets.forget},
            optimal_t=result.t,
            end_labels=("original", base),
            mia=True,
            save=args.out,
            title=f"MCU({base}) on {args.dataset}: accuracy along the path",
        )
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
