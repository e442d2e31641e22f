"""Base unlearning methods vs MCU(base) on Fashion-MNIST with a BatchNorm CNN.

Two scenarios: a random 10% of the training subset forgotten, and one whole
class forgotten. Retraining from scratch on the retain set is the reference.
For each base method (FT, GA, NegGrad+, RL, SalUn) the script runs the method
on the original model (θ_u), then MCU on top of it: a quadratic Bezier curve
θ_o -> θ_u whose control point is trained, on the tensors of a layer mask, with
``CE(retain) - β·CE(forget)`` and β from ``AdaptiveBeta``. The point ``t`` is
chosen from the retain and forget accuracies along the path and their targets
(the retrained model's accuracies) only; the test split plays no part in it.

Reported per cell, mean ± sample standard deviation over seeds: UA, RA, TA,
MIA-efficacy, Avg. Gap to the retrained model (the mean absolute difference of
those four numbers) and the wall time (RTE) in seconds. For MCU(base) the RTE
is the base method's time plus the layer mask, curve training, path evaluation
and export.

The sizes are chosen for a 2-core CPU (the default run takes about 20-25
minutes with one thread); they are printed and saved with the results.

Usage:
    python benchmarks/mcu_table.py             # full run, writes benchmarks/results/mcu_table.*
    python benchmarks/mcu_table.py --quick     # smoke run (< 60 s), writes nothing
    python benchmarks/mcu_table.py --quick --dataset digits   # without the Fashion-MNIST files
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, Dataset, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn.datasets import FASHION_MNIST_CLASSES, load_digits, load_fashion_mnist
from modeconn_unlearn.zoo import SmallCNN

RESULTS = Path(__file__).parent / "results"
METHODS = ("FT", "GA", "NegGrad+", "RL", "SalUn")
SCENARIOS = ("random", "class")
METRICS = ("ua", "ra", "ta", "mia", "avg_gap", "rte", "cpu")

logger = logging.getLogger("mcu_table")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every size and hyperparameter of a run (saved with the results)."""

    dataset: str = "fashion"
    train_size: int = 10_000
    test_size: int = 2_000
    width: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    forget_ratio: float = 0.1
    forget_class: int = 0
    batch_size: int = 128
    # original model and retrain: SGD, momentum 0.9, weight decay 5e-4, cosine schedule
    epochs: int = 5
    lr: float = 0.1
    # base methods: (epochs, lr); GA runs on the forget set only
    base: tuple[tuple[str, int, float], ...] = (
        ("FT", 2, 0.01),
        ("GA", 2, 1e-3),
        ("NegGrad+", 2, 0.01),
        ("RL", 2, 0.01),
        ("SalUn", 2, 0.01),
    )
    neggrad_beta: float = 0.9
    salun_sparsity: float = 0.5
    # MCU
    mask_k: float = 0.5
    mask_kr: float = 0.1
    curve_epochs: int = 2
    curve_lr: float = 0.01
    retain_ratio: float = 0.5
    beta_low: float = 0.01
    beta_high: float = 0.5
    t_range: tuple[float, float] = (0.5, 1.0)
    path_points: int = 11
    interpolation: str = "pchip"
    # retain subset for BatchNorm re-estimation and the retain accuracy along the path
    probe_size: int = 1_500
    threads: int = 1


QUICK = Config(
    train_size=1_000,
    test_size=400,
    width=4,
    seeds=(0,),
    epochs=2,
    base=tuple((name, 1, lr) for name, _, lr in Config.base),
    curve_epochs=1,
    path_points=5,
    probe_size=300,
)


# --------------------------------------------------------------------------- data
def load_data(cfg: Config) -> tuple[Dataset[Any], Dataset[Any], int]:
    """Training and test subsets, and the number of input channels."""
    if cfg.dataset == "digits":
        train, test = load_digits(flatten=False)
        return train, test, 1
    train = load_fashion_mnist(train=True, limit=cfg.train_size)
    test = load_fashion_mnist(train=False, limit=cfg.test_size)
    return train, test, 1


def labels_of(dataset: Any) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return dataset.tensors[1]  # type: ignore[no-any-return]


def probe_subset(retain: Subset[Any], size: int, seed: int) -> Subset[Any]:
    """A fixed random subset of the retain set (BatchNorm statistics, path retain accuracy)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    picked = torch.randperm(len(retain), generator=generator)[: min(size, len(retain))]
    return Subset(retain, sorted(picked.tolist()))


# --------------------------------------------------------------------------- methods
def cosine(epochs: int) -> Callable[[Optimizer], LRScheduler]:
    return lambda optimizer: CosineAnnealingLR(optimizer, T_max=epochs)


def base_loss(cfg: Config, method: str) -> mcu.UnlearnLoss:
    return {
        "FT": mcu.losses.finetune,
        "GA": mcu.losses.gradient_ascent,
        "NegGrad+": lambda: mcu.losses.neggrad_plus(cfg.neggrad_beta),
        "RL": lambda: mcu.losses.random_label(10),
        "SalUn": lambda: mcu.losses.random_label(10),
    }[method]()


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


def score_row(scores: mcu.UnlearningScores, seconds: Seconds, **extra: Any) -> dict[str, Any]:
    row = {
        "ua": scores.ua,
        "ra": scores.ra,
        "ta": scores.ta,
        "mia": scores.mia,
        "avg_gap": scores.avg_gap,
        "rte": seconds.wall,
        "cpu": seconds.cpu,
    }
    row.update(extra)
    return row


def run_scenario(
    cfg: Config,
    scenario: str,
    seed: int,
    *,
    original: nn.Module,
    original_time: float,
    make_model: Callable[[], nn.Module],
    train: Dataset[Any],
    test: Dataset[Any],
) -> dict[str, dict[str, Any]]:
    """Retrain, the five base methods and MCU on each, for one scenario and seed."""
    if scenario == "random":
        retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=seed)
    else:
        retain, forget = mcu.forget_retain_split(train, forget_class=cfg.forget_class)
        # Test accuracy and MIA non-members on the remaining classes only.
        keep = torch.nonzero(labels_of(test) != cfg.forget_class).flatten().tolist()
        test = Subset(test, keep)
    probe = probe_subset(retain, cfg.probe_size, seed)
    splits = {"retain": retain, "forget": forget, "test": test}
    common = {"batch_size": cfg.batch_size, "seed": seed, "progress": False}

    retrained, retrain_time = timed(
        lambda: mcu.retrain(
            make_model,
            retain,
            epochs=cfg.epochs,
            lr=cfg.lr,
            scheduler=cosine(cfg.epochs),
            **common,
        )
    )
    probe_loader = DataLoader(probe, batch_size=256)

    def scored(model: nn.Module) -> nn.Module:
        """A copy with BatchNorm statistics re-estimated on the retain probe.

        Every model is scored this way, as the points of a path are, so that MCU's
        point at t = 1 is exactly θ_u and a difference in the table comes from the
        path, not from how BatchNorm statistics were estimated.
        """
        model = copy.deepcopy(model)
        mcu.update_bn(model, probe_loader)
        return model

    retrained = scored(retrained)
    reference = mcu.unlearning_scores(retrained, **splits, seed=seed)
    # MCU's targets: the retrained model's accuracy on the retain probe and the forget set.
    retain_target = mcu.evaluate(retrained, probe).accuracy
    forget_target = mcu.evaluate(retrained, forget).accuracy
    rows: dict[str, dict[str, Any]] = {
        "Retrain": score_row(
            mcu.unlearning_scores(retrained, **splits, reference=reference, seed=seed), retrain_time
        ),
        "Original": score_row(
            mcu.unlearning_scores(scored(original), **splits, reference=reference, seed=seed),
            original_time,
        ),
    }
    logger.info(
        "seed %d %s: retrain %.1fs, targets retain %.2f forget %.2f",
        seed,
        scenario,
        retrain_time.wall,
        retain_target,
        forget_target,
    )

    mask, mask_time = timed(
        lambda: mcu.layer_mask(original, retain, forget, k=cfg.mask_k, kr=cfg.mask_kr)
    )
    ts = np.linspace(cfg.t_range[0], cfg.t_range[1], cfg.path_points).tolist()
    for method, epochs, lr in cfg.base:

        def run_base(method: str = method, epochs: int = epochs, lr: float = lr) -> nn.Module:
            saliency = (
                mcu.saliency_mask(original, forget, sparsity=cfg.salun_sparsity)
                if method == "SalUn"
                else None
            )
            return mcu.unlearn(
                original,
                retain,
                forget,
                loss=base_loss(cfg, method),
                epochs=epochs,
                lr=lr,
                mask=saliency,
                **common,
            )

        theta_u, base_time = timed(run_base)
        rows[method] = score_row(
            mcu.unlearning_scores(scored(theta_u), **splits, reference=reference, seed=seed),
            base_time,
        )

        def run_mcu(theta_u: nn.Module = theta_u) -> tuple[nn.Module, Any, list[float]]:
            curve = mcu.CurveModel(original, start=original, end=theta_u, mask=mask)
            beta = mcu.AdaptiveBeta(
                retain_target, forget_target, low=cfg.beta_low, high=cfg.beta_high
            )
            mcu.fit_curve(
                curve,
                retain,
                forget,
                loss=mcu.losses.mcu_objective(beta),
                epochs=cfg.curve_epochs,
                lr=cfg.curve_lr,
                retain_ratio=cfg.retain_ratio,
                t_sampler=cfg.t_range,
                **common,
            )
            report = mcu.evaluate_path(
                curve,
                {"retain": probe, "forget": forget},
                ts=ts,
                bn_loader=probe,
                progress=False,
            )
            best = mcu.find_optimal_t(
                report.t,
                report.acc("retain"),
                report.acc("forget"),
                retain_target=retain_target,
                forget_target=forget_target,
                t_range=cfg.t_range,
                kind=cfg.interpolation,  # type: ignore[arg-type]
            )
            # export() iterates bn_loader as batches: pass a DataLoader, not a Dataset.
            model = curve.export(best.t, bn_loader=probe_loader)
            return model, best, report.acc("forget").tolist()

        (mcu_model, best, path_forget), mcu_time = timed(run_mcu)
        rows[f"MCU({method})"] = score_row(
            mcu.unlearning_scores(mcu_model, **splits, reference=reference, seed=seed),
            base_time + mask_time + mcu_time,
            t=best.t,
            region=best.region,
            mcu_time=(mask_time + mcu_time).wall,
            path_forget_acc=path_forget,
        )
        logger.info(
            "seed %d %s %s: gap %.2f -> MCU %.2f at t=%.3f (base %.1fs, MCU +%.1fs)",
            seed,
            scenario,
            method,
            rows[method]["avg_gap"],
            rows[f"MCU({method})"]["avg_gap"],
            best.t,
            base_time.wall,
            (mask_time + mcu_time).wall,
        )
    return rows


# --------------------------------------------------------------------------- tables
def aggregate(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every metric."""
    summary: dict[str, Any] = {}
    for scenario, by_model in runs.items():
        summary[scenario] = {}
        for model, rows in by_model.items():
            cell = {}
            for metric in METRICS:
                values = [float(r[metric]) for r in rows]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cell[metric] = {"mean": statistics.fmean(values), "std": std}
            summary[scenario][model] = cell
    return summary


def markdown(summary: dict[str, Any], cfg: Config) -> str:
    lines = []
    titles = {
        "random": f"Random forgetting ({cfg.forget_ratio:.0%} of the training subset)",
        "class": f"Class-wise forgetting (class {cfg.forget_class}"
        + (f", {FASHION_MNIST_CLASSES[cfg.forget_class]})" if cfg.dataset == "fashion" else ")"),
    }
    for scenario, cells in summary.items():
        lines += [
            f"**{titles[scenario]}**",
            "",
            "| method | UA | RA | TA | MIA-efficacy | Avg. Gap ↓ | RTE (s) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        order = ["Retrain", "Original"]
        for method in METHODS:
            order += [method, f"MCU({method})"]
        for model in order:
            cell = cells[model]
            values = [
                f"{cell[m]['mean']:.2f} ± {cell[m]['std']:.2f}" for m in ("ua", "ra", "ta", "mia")
            ]
            gap = cell["avg_gap"]
            gap_text = f"{gap['mean']:.2f} ± {gap['std']:.2f}"
            if model.startswith("MCU("):
                base = cells[model[4:-1]]["avg_gap"]["mean"]
                gap_text = f"**{gap_text}**" if gap["mean"] < base else gap_text
            rte = cell["rte"]
            name = "Original (θ_o)" if model == "Original" else model
            lines.append(
                f"| {name} | {' | '.join(values)} | {gap_text} | "
                f"{rte['mean']:.1f} ± {rte['std']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def verdicts(summary: dict[str, Any]) -> list[str]:
    """One line per scenario: the methods whose Avg. Gap MCU lowered, and those it did not."""
    lines = []
    for scenario, cells in summary.items():
        better = [
            m
            for m in METHODS
            if cells[f"MCU({m})"]["avg_gap"]["mean"] < cells[m]["avg_gap"]["mean"]
        ]
        worse = [m for m in METHODS if m not in better]
        ratios = {
            kind: [
                cells[f"MCU({m})"][kind]["mean"] / cells["Retrain"][kind]["mean"] for m in METHODS
            ]
            for kind in ("rte", "cpu")
        }
        lines.append(
            f"{scenario}: MCU lowers the mean Avg. Gap of {', '.join(better) or 'no method'}"
            + (f"; not of {', '.join(worse)}" if worse else "")
            + ". MCU(base) time / retrain time: "
            + f"wall {min(ratios['rte']):.2f}-{max(ratios['rte']):.2f}, "
            + f"CPU {min(ratios['cpu']):.2f}-{max(ratios['cpu']):.2f}."
        )
    return lines


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    parser.add_argument("--dataset", choices=("fashion", "digits"), help="default fashion")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the results")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)

    cfg = QUICK if args.quick else Config()
    overrides: dict[str, Any] = {}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.threads:
        overrides["threads"] = args.threads
    cfg = dataclasses.replace(cfg, **overrides)
    # One thread per process: on a small shared machine, intra-op threads fighting other
    # processes for cores are slower than one thread (about 15x on 2 busy cores).
    torch.set_num_threads(cfg.threads)

    began = time.perf_counter()
    train, test, channels = load_data(cfg)
    sizes = {"train": len(train), "test": len(test)}  # type: ignore[arg-type]
    logger.info("config: %s; sizes %s", cfg, sizes)

    def make_model() -> nn.Module:
        return SmallCNN(channels, 10, width=cfg.width)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in SCENARIOS}
    for seed in cfg.seeds:
        original, original_time = timed(
            lambda seed=seed: mcu.retrain(
                make_model,
                train,
                epochs=cfg.epochs,
                lr=cfg.lr,
                scheduler=cosine(cfg.epochs),
                batch_size=cfg.batch_size,
                seed=seed,
                progress=False,
            )
        )
        logger.info(
            "seed %d: original %.1fs, test accuracy %.2f",
            seed,
            original_time.wall,
            mcu.evaluate(original, test).accuracy,
        )
        for scenario in SCENARIOS:
            rows = run_scenario(
                cfg,
                scenario,
                seed,
                original=original,
                original_time=original_time,
                make_model=make_model,
                train=train,
                test=test,
            )
            for model, row in rows.items():
                runs[scenario].setdefault(model, []).append({"seed": seed, **row})

    summary = aggregate(runs)
    table = markdown(summary, cfg)
    notes = verdicts(summary)
    total = time.perf_counter() - began
    print(table)
    print("\n".join(notes))
    print(f"total wall time: {total / 60:.1f} min")
    if args.quick:
        return
    command = "python benchmarks/mcu_table.py" + (
        " " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""
    )
    result = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "sizes": sizes,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "total_wall_time_s": total,
        "summary": summary,
        "verdicts": notes,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcu_table.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    (args.out / "mcu_table.md").write_text(header(cfg, sizes, command, total) + table + "\n")


def header(cfg: Config, sizes: dict[str, int], command: str, total: float) -> str:
    base = ", ".join(f"{name} {epochs} ep lr {lr:g}" for name, epochs, lr in cfg.base)
    return (
        f"Command: `{command}` (torch {torch.__version__}, {cfg.threads} thread(s), "
        f"{total / 60:.1f} min on a shared 2-core CPU; wall times are noisy).\n\n"
        + (
            f"Fashion-MNIST: {sizes['train']} training images (the first of the official "
            f"training file), {sizes['test']} test images"
            if cfg.dataset == "fashion"
            else f"scikit-learn digits: {sizes['train']} training, {sizes['test']} test images"
        )
        + f"; SmallCNN width {cfg.width} "
        f"(BatchNorm). Original and retrained models: {cfg.epochs} epochs, SGD lr {cfg.lr:g} "
        f"cosine, batch {cfg.batch_size}. Base methods: {base}; NegGrad+ β "
        f"{cfg.neggrad_beta:g}; SalUn sparsity {cfg.salun_sparsity:g}. MCU: Bezier, 3 bends, "
        f"layer mask k={cfg.mask_k:g} kr={cfg.mask_kr:g}, {cfg.curve_epochs} epochs lr "
        f"{cfg.curve_lr:g}, retain ratio {cfg.retain_ratio:g}, AdaptiveBeta({cfg.beta_low:g}, "
        f"{cfg.beta_high:g}), t drawn from and chosen in {list(cfg.t_range)} on "
        f"{cfg.path_points} points ({cfg.interpolation}), path retain accuracy on a "
        f"{cfg.probe_size}-sample retain subset. Every model is scored with BatchNorm "
        "statistics re-estimated on that subset (as the points of a path are; so MCU at "
        "t = 1 is exactly θ_u). Targets: the retrained model's retain and forget accuracies "
        f"(never the test split). Class-wise: TA and MIA non-members on the test images of "
        f"the other classes. Mean ± sample std "
        f"over seeds {list(cfg.seeds)}; bold: MCU lowers the base method's Avg. Gap. RTE of "
        "MCU(base) includes the base method.\n\n"
    )


if __name__ == "__main__":
    main()
