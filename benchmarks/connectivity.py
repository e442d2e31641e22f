"""Mode connectivity of unlearned models on Fashion-MNIST.

A BatchNorm SmallCNN is trained on a subset of Fashion-MNIST; a random 10% forget set
is then unlearned with FT, GA, NegGrad+, RL, SalUn and retraining from scratch, two
seeds each (12 models). The script reports:

1. the accuracies of every model (retain, forget, test);
2. the linear and the trained-curve barrier matrices (mean cross-entropy) on the retain,
   forget and test data, and whether same-method/different-seed pairs are more
   connected than cross-method pairs;
3. relearning speed: forget accuracy while fine-tuning on a few forget samples, at the
   original model, at every unlearned model, and along an MCU path (masked curve from
   the original to the SalUn model, trained with the adaptive-β MCU objective).

Results go to ``benchmarks/results/connectivity[_quick].{json,md}``.

Usage:
    python benchmarks/connectivity.py            # full: about 15 minutes on 2 CPU cores
    python benchmarks/connectivity.py --quick    # smoke run, under a minute

Sized for a small CPU machine: 10k training images, a 16-channel CNN, a few epochs;
numbers are for comparison between methods, not state-of-the-art accuracies.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from modeconn_unlearn import losses
from modeconn_unlearn.connectivity import (
    ConnectivityMatrix,
    connectivity_matrix,
    relearn_attack,
    relearn_path,
)
from modeconn_unlearn.curve_model import CurveModel
from modeconn_unlearn.data import forget_retain_split
from modeconn_unlearn.datasets import load_fashion_mnist
from modeconn_unlearn.evaluation import evaluate, evaluate_path
from modeconn_unlearn.masks import layer_mask, saliency_mask
from modeconn_unlearn.selection import find_optimal_t
from modeconn_unlearn.training import fit_curve, retrain, unlearn
from modeconn_unlearn.zoo import SmallCNN

RESULTS = Path(__file__).parent / "results"
METHODS = ("FT", "GA", "NegGrad+", "RL", "SalUn", "retrain")
log = logging.getLogger("benchmarks.connectivity")


@dataclass(frozen=True)
class Config:
    train_size: int  # Fashion-MNIST training images used (forget = 10% of them)
    test_size: int
    width: int  # SmallCNN width
    epochs: int  # original model and retraining
    lr: float
    eval_size: int  # retain images for evaluation and BatchNorm re-estimation
    ts: int  # points per path (both ends included)
    curve_train_size: int  # retain images a pair's curve is trained on
    curve_epochs: int
    curve_lr: float
    relearn_samples: int
    relearn_steps: int
    relearn_lr: float
    mcu_epochs: int
    seeds: tuple[int, ...] = (0, 1)
    forget_ratio: float = 0.1
    forget_class: int = 0  # class-wise scenario of the relearning study (0 = T-shirt/top)


FULL = Config(
    train_size=10_000,
    test_size=1_000,
    width=16,
    epochs=6,
    lr=0.05,
    eval_size=500,
    ts=5,
    curve_train_size=2_000,
    curve_epochs=1,
    curve_lr=0.02,
    relearn_samples=50,
    relearn_steps=10,
    relearn_lr=0.005,
    mcu_epochs=2,
)
QUICK = Config(
    train_size=1_500,
    test_size=300,
    width=4,
    epochs=1,
    lr=0.05,
    eval_size=200,
    ts=3,
    curve_train_size=200,
    curve_epochs=1,
    curve_lr=0.02,
    relearn_samples=20,
    relearn_steps=3,
    relearn_lr=0.01,
    mcu_epochs=1,
)


def subset(dataset: Dataset[Any], size: int, seed: int) -> Subset[Any]:
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[: min(size, n)].tolist())


def cosine(epochs: int) -> Callable[[torch.optim.Optimizer], Any]:
    def factory(optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    return factory


def accuracies(model: nn.Module, splits: dict[str, Any]) -> dict[str, float]:
    return {name: round(evaluate(model, data).accuracy, 2) for name, data in splits.items()}


def fresh_model(cfg: Config) -> Callable[[], nn.Module]:
    return lambda: SmallCNN(1, 10, width=cfg.width)


def train_original(cfg: Config, train: Dataset[Any]) -> nn.Module:
    model = retrain(
        fresh_model(cfg),
        train,
        epochs=cfg.epochs,
        lr=cfg.lr,
        seed=100,
        scheduler=cosine(cfg.epochs),
        progress=False,
    )
    return model.eval()


def unlearn_models(
    cfg: Config,
    original: nn.Module,
    retain: Dataset[Any],
    forget: Dataset[Any],
    *,
    methods: tuple[str, ...] = METHODS,
    seeds: tuple[int, ...] = (0,),
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """``{"method/s<seed>": model}`` and ``{name: method}`` for every method and seed."""
    common: dict[str, Any] = {"progress": False}
    salun_mask = saliency_mask(original, forget, sparsity=0.5) if "SalUn" in methods else None
    recipes: dict[str, Callable[[int], nn.Module]] = {
        "FT": lambda s: unlearn(
            original, retain, forget, loss=losses.finetune(), epochs=2, lr=0.02, seed=s, **common
        ),
        "GA": lambda s: unlearn(
            original,
            retain,
            forget,
            loss=losses.gradient_ascent(),
            epochs=1,
            lr=3e-3,
            seed=s,
            **common,
        ),
        "NegGrad+": lambda s: unlearn(
            original,
            retain,
            forget,
            loss=losses.neggrad_plus(0.9),
            epochs=1,
            lr=0.02,
            seed=s,
            **common,
        ),
        "RL": lambda s: unlearn(
            original,
            retain,
            forget,
            loss=losses.random_label(10),
            epochs=1,
            lr=0.02,
            seed=s,
            **common,
        ),
        "SalUn": lambda s: unlearn(
            original,
            retain,
            forget,
            loss=losses.random_label(10),
            epochs=1,
            lr=0.02,
            mask=salun_mask,
            seed=s,
            **common,
        ),
        "retrain": lambda s: retrain(
            fresh_model(cfg),
            retain,
            epochs=cfg.epochs,
            lr=cfg.lr,
            seed=s,
            scheduler=cosine(cfg.epochs),
            **common,
        ),
    }
    models: dict[str, nn.Module] = {}
    groups: dict[str, str] = {}
    for method, seed in itertools.product(methods, seeds):
        start = time.perf_counter()
        name = f"{method}/s{seed}"
        models[name] = recipes[method](seed).eval()
        groups[name] = method
        log.info("trained %s in %.1fs", name, time.perf_counter() - start)
    return models, groups


def group_means(matrix: ConnectivityMatrix, groups: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Mean barrier of same-method pairs, cross-method pairs, and pairs with retraining."""
    names = matrix.names
    kinds: dict[str, list[tuple[int, int]]] = {"same_method": [], "cross_method": [], "retrain": []}
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = groups[names[i]], groups[names[j]]
        if a == b:
            kinds["same_method"].append((i, j))
        elif "retrain" in (a, b):
            kinds["retrain"].append((i, j))
        else:
            kinds["cross_method"].append((i, j))
    out: dict[str, dict[str, Any]] = {}
    for split in matrix.splits:
        m = matrix[split]
        out[split] = {
            kind: float(np.mean([m[i, j] for i, j in pairs])) if pairs else None
            for kind, pairs in kinds.items()
        }
        same_unlearned = [m[i, j] for i, j in kinds["same_method"] if groups[names[i]] != "retrain"]
        out[split]["same_method_without_retrain"] = (
            float(np.mean(same_unlearned)) if same_unlearned else None
        )
    return out


def mcu_path(
    cfg: Config,
    original: nn.Module,
    end: nn.Module,
    retain: Dataset[Any],
    forget: Dataset[Any],
    splits: dict[str, Any],
    targets: dict[str, float],
) -> tuple[CurveModel, dict[str, Any]]:
    """MCU: a masked Bezier curve from the original to ``end`` with the adaptive-β objective."""
    mask_data = subset(retain, 1_000, seed=7)
    mask = layer_mask(original, mask_data, forget, k=0.5, kr=0.1)
    curve = CurveModel(original, start=original, end=end, num_bends=3, mask=mask)
    beta = losses.AdaptiveBeta(retain_target=targets["retain"], forget_target=targets["forget"])
    history = fit_curve(
        curve,
        retain,
        forget,
        loss=losses.mcu_objective(beta),
        epochs=cfg.mcu_epochs,
        lr=0.01,
        retain_ratio=0.5,
        seed=0,
        progress=False,
    )
    report = evaluate_path(
        curve, splits, ts=11 if cfg.ts > 3 else 5, bn_loader=splits["retain"], progress=False
    )
    best = find_optimal_t(
        report.t,
        report.acc("retain"),
        report.acc("forget"),
        retain_target=targets["retain"],
        forget_target=targets["forget"],
    )
    summary = {
        "t": report.t.tolist(),
        "accuracy": {s: report.acc(s).round(2).tolist() for s in splits},
        "optimal_t": best.t,
        "optimal_avg_gap": best.avg_gap,
        "targets": targets,
        "fit_history": history.to_dict(),
    }
    return curve, summary


def relearning_study(
    cfg: Config,
    original: nn.Module,
    models: dict[str, nn.Module],
    retain: Dataset[Any],
    forget: Dataset[Any],
    splits: dict[str, Any],
    *,
    mcu_end: str,
) -> dict[str, Any]:
    """Relearning at the original and every unlearned model, then along an MCU path."""
    attack: dict[str, Any] = {
        "steps": cfg.relearn_steps,
        "lr": cfg.relearn_lr,
        "samples": cfg.relearn_samples,
        "seed": 0,
    }
    endpoints = {
        name: relearn_attack(model, forget, **attack).to_dict()
        for name, model in {"original": original, **models}.items()
    }
    retrained = [m for name, m in models.items() if name.startswith("retrain/")]
    targets = {
        split: float(np.mean([evaluate(m, splits[split]).accuracy for m in retrained]))
        for split in ("retain", "forget")
    }
    curve, summary = mcu_path(cfg, original, models[mcu_end], retain, forget, splits, targets)
    ts = sorted({0.0, 0.5, round(summary["optimal_t"], 3), 1.0})
    along = relearn_path(curve, ts, forget, bn_loader=splits["retain"], progress=False, **attack)
    return {
        "endpoints": endpoints,
        "mcu_path": {**summary, "end": mcu_end, "relearn": along.to_dict()},
    }


def run(cfg: Config, quick: bool) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now
        log.info("%s done in %.1fs", name, timings[name])

    train = load_fashion_mnist(limit=cfg.train_size)
    test = load_fashion_mnist(train=False, limit=cfg.test_size)
    retain, forget = forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    retain_eval = subset(retain, cfg.eval_size, seed=1)
    splits = {"retain": retain_eval, "forget": forget, "test": test}

    original = train_original(cfg, train)
    models, groups = unlearn_models(cfg, original, retain, forget, seeds=cfg.seeds)
    lap("train_models")
    model_acc = {"original": accuracies(original, splits)}
    model_acc.update({name: accuracies(model, splits) for name, model in models.items()})
    lap("evaluate_models")

    linear = connectivity_matrix(
        models, splits, ts=cfg.ts, bn_loader=retain_eval, progress=not quick
    )
    lap("linear_matrix")
    curve = connectivity_matrix(
        models,
        splits,
        path="curve",
        ts=cfg.ts,
        bn_loader=retain_eval,
        retain_data=subset(retain, cfg.curve_train_size, seed=2),
        epochs=cfg.curve_epochs,
        lr=cfg.curve_lr,
        progress=not quick,
    )
    lap("curve_matrix")

    relearn_random = relearning_study(
        cfg, original, models, retain, forget, splits, mcu_end=f"SalUn/s{cfg.seeds[0]}"
    )
    lap("relearn_random")

    # Class-wise forgetting, where a relearning attack has something to bring back.
    retain_c, forget_c = forget_retain_split(train, forget_class=cfg.forget_class, seed=0)
    splits_c = {"retain": subset(retain_c, cfg.eval_size, seed=1), "forget": forget_c, "test": test}
    models_c, _ = unlearn_models(
        cfg, original, retain_c, forget_c, methods=("RL", "SalUn", "retrain")
    )
    model_acc_c = {"original": accuracies(original, splits_c)}
    model_acc_c.update({name: accuracies(model, splits_c) for name, model in models_c.items()})
    lap("train_models_classwise")
    relearn_class = relearning_study(
        cfg, original, models_c, retain_c, forget_c, splits_c, mcu_end="SalUn/s0"
    )
    lap("relearn_classwise")

    return {
        "config": asdict(cfg),
        "quick": quick,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "timings_s": {**timings, "total": round(sum(timings.values()), 1)},
        "accuracy": model_acc,
        "linear": linear.to_dict(),
        "curve": curve.to_dict(),
        "group_means": {
            "linear": group_means(linear, groups),
            "curve": group_means(curve, groups),
        },
        "relearn": {
            "random": relearn_random,
            "classwise": {
                "forget_class": cfg.forget_class,
                "accuracy": model_acc_c,
                **relearn_class,
            },
        },
        "matrices_markdown": {"linear": linear.to_markdown(), "curve": curve.to_markdown()},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _relearn_row(label: str, accuracy: list[float]) -> str:
    mid = (len(accuracy) - 1) // 2
    return (
        f"| {label} | {accuracy[0]:.2f} | {accuracy[1]:.2f} | {accuracy[mid]:.2f} | "
        f"{accuracy[-1]:.2f} |"
    )


def _relearn_section(
    cfg: dict[str, Any], title: str, study: dict[str, Any], accuracy: dict[str, Any] | None
) -> list[str]:
    steps = cfg["relearn_steps"]
    header = [
        f"| model | before | 1 step | {steps // 2} steps | {steps} steps |",
        "|---|---|---|---|---|",
    ]
    lines = [
        "",
        f"## {title}",
        "",
        f"Fine-tuning a copy on {cfg['relearn_samples']} forget samples (SGD, lr "
        f"{cfg['relearn_lr']}); accuracy (%) on the other forget samples.",
        "",
        *header,
    ]
    lines += [_relearn_row(name, r["accuracy"]) for name, r in study["endpoints"].items()]
    mcu = study["mcu_path"]
    targets = mcu["targets"]
    lines += [
        "",
        f"MCU path: original → {mcu['end']} (masked Bezier, adaptive β; targets from "
        f"retraining: retain {targets['retain']:.2f}, forget {targets['forget']:.2f}); "
        f"optimal t = {mcu['optimal_t']:.3f} (avg gap {mcu['optimal_avg_gap']:.2f}).",
        "",
        "| t | retain | forget | test |",
        "|---|---|---|---|",
    ]
    for i, t in enumerate(mcu["t"]):
        cells = " | ".join(f"{mcu['accuracy'][s][i]:.2f}" for s in ("retain", "forget", "test"))
        lines.append(f"| {t:.2f} | {cells} |")
    lines += ["", "Relearning along the MCU path:", "", *header]
    along = mcu["relearn"]
    lines += [
        _relearn_row(f"t = {t:.3f}", acc)
        for t, acc in zip(along["t"], along["accuracy"], strict=True)
    ]
    if accuracy is not None:
        lines += ["", "Model accuracies (%):", "", "| model | retain | forget | test |"]
        lines.append("|---|---|---|---|")
        for name, acc in accuracy.items():
            cells = " | ".join(f"{acc[s]:.2f}" for s in ("retain", "forget", "test"))
            lines.append(f"| {name} | {cells} |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Connectivity of unlearned models (Fashion-MNIST, SmallCNN with BatchNorm)",
        "",
        f"{cfg['train_size']} training images, {int(cfg['forget_ratio'] * 100)}% random forget "
        f"set, SmallCNN width {cfg['width']}, {cfg['epochs']} epochs for the original and "
        f"retrained models; barriers in mean cross-entropy over {cfg['ts']} points per path, "
        f"BatchNorm re-estimated at each point on {cfg['eval_size']} retain images. "
        f"Total time {result['timings_s']['total']} s "
        f"({result['environment']['threads']} threads, torch {result['environment']['torch']}).",
        "",
        "## Models (accuracy %)",
        "",
        "| model | retain | forget | test |",
        "|---|---|---|---|",
    ]
    for name, acc in result["accuracy"].items():
        lines.append(f"| {name} | {acc['retain']:.2f} | {acc['forget']:.2f} | {acc['test']:.2f} |")
    lines += [
        "",
        "## Mean barrier by pair kind",
        "",
        "same method = the two seeds of one method; cross method = two different methods, "
        "neither retraining; retrain = retrained vs approximately unlearned.",
        "",
        "| path | split | same method | same method (no retrain) | cross method | retrain |",
        "|---|---|---|---|---|---|",
    ]
    for path, per_split in result["group_means"].items():
        for split, means in per_split.items():
            lines.append(
                f"| {path} | {split} | {_fmt(means['same_method'])} | "
                f"{_fmt(means['same_method_without_retrain'])} | {_fmt(means['cross_method'])} | "
                f"{_fmt(means['retrain'])} |"
            )
    for path in ("linear", "curve"):
        lines += [
            "",
            f"## {path.capitalize()} barrier matrices",
            "",
            result["matrices_markdown"][path],
        ]
    random_study = result["relearn"]["random"]
    lines += _relearn_section(cfg, "Relearning, 10% random forget set", random_study, None)
    class_study = result["relearn"]["classwise"]
    lines += _relearn_section(
        cfg,
        f"Relearning, class-wise forgetting (class {class_study['forget_class']})",
        class_study,
        class_study["accuracy"],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (under a minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = QUICK if args.quick else FULL
    result = run(cfg, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "connectivity_quick" if args.quick else "connectivity"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = to_markdown(result)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
