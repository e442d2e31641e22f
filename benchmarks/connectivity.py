"""Mode connectivity of unlearned models where unlearning has to move: a memorising original.

Regime: the world of ``benchmarks/mcu_table.py`` (Fashion-MNIST, the first 5000 training
images with 10 % carved off before training, a BatchNorm CNN with a dense head, width 16,
SGD lr 0.05 momentum 0.9, weight decay 5e-4, cosine, batch 64, 12 epochs: the original
memorises its training set). Retraining from scratch on the retain set with the same recipe
is the reference; the regime numbers (UA, RA, TA of the original and of retraining) are
printed and saved.

Study (the conditions of the mode-connectivity-in-unlearning analysis):

* forget set: random 1 %, random 10 %, one whole class (0, T-shirt/top);
* optimisation condition of the unlearning run (options of ``mcu.unlearn``):
  ``default`` (shuffled mini-batch SGD), ``curriculum`` (``curriculum="easy_first"``: the
  forget samples in ascending order of the original's per-sample loss, spread evenly over
  the epoch; the retain samples stay shuffled) and ``sophia`` (``optimizer="sophiah"``,
  ``create_graph=True``: pytorch-optimizer's SophiaH, a clipped second-order method with a
  Hutchinson estimate of the Hessian diagonal);
* methods: FT, GA, NegGrad+, RL, SalUn under the default condition (the settings
  ``mcu_table.py`` tuned), GA, NegGrad+, RL, SalUn under the other two (FT uses no forget
  sample, so a curriculum of forget samples does not apply to it), two seeds (data
  order; SophiaH's Hessian probes) each, plus retraining with two seeds per forget set: seed
  0 draws the original's initialisation (as ``mcu_table.py``'s retraining does), seed 1 a
  new one.

For every forget set and condition the barrier (mean cross-entropy, and error in %) is
measured on the retain, forget and test data along the straight line and along a trained
quadratic Bezier curve (middle bend trained on retain data with both ends fixed) between
these pairs: ``same`` (the two seeds of one method), ``cross`` (two methods, seed 0),
``retrain_same_init`` / ``retrain_new_init`` (a method, seed 0, vs retraining from the
original's initialisation / from a new one), ``original`` (a method vs the original), and,
once per forget set, ``retrain_seeds`` (the two retrained models). Every point, the ends
included, is scored with BatchNorm statistics re-estimated on a retain subset.

SophiaH's learning rate is chosen per forget set and method before the study, on an
unreported seed (100), as the value of a small grid whose forget accuracy is closest to that
of the default run: the two optimisers then forget about as much, and a difference in
barriers comes from the optimiser rather than from the step size. The curriculum keeps the
default's learning rate (how much it forgets is part of its effect).

Results go to ``benchmarks/results/connectivity[_quick].{json,md}``.

Usage:
    python benchmarks/connectivity.py            # full: about 25 minutes, one thread
    python benchmarks/connectivity.py --quick    # smoke run, under a minute
    python benchmarks/connectivity.py --aggregate  # tables again from the saved JSON
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from _harness import (
    METHODS,
    Base,
    configure,
    cosine,
    environment,
    forget_split,
    loader,
    model_factory,
    parser,
    random_subset,
    table,
    tuned_lrs,
    write_json,
    write_text,
)
from torch import nn
from torch.utils.data import DataLoader

import modeconn_unlearn as mcu
from modeconn_unlearn import BarrierResult, CurveModel, carve_holdout, connect, evaluate
from modeconn_unlearn.batchnorm import with_bn_from
from modeconn_unlearn.connectivity.barriers import barriers_by_metric, linear_curve
from modeconn_unlearn.datasets import load_fashion_mnist

log = logging.getLogger("benchmarks.connectivity")
SPLITS = ("retain", "forget", "test")
PATHS = ("linear", "curve")
#: The barrier metrics, in the order ``point_scores`` lists them.
METRICS = ("loss", "error")
KINDS = ("same", "cross", "retrain_same_init", "retrain_new_init", "original", "retrain_seeds")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every size and hyperparameter of a run (saved with the results)."""

    pool_size: int = 5000
    holdout_fraction: float = 0.1
    test_size: int = 2000
    width: int = 16
    epochs: int = 12
    lr: float = 0.05
    weight_decay: float = 5e-4
    batch_size: int = 64
    world_seed: int = 0
    scenarios: tuple[str, ...] = ("random1", "random10", "class")
    conditions: tuple[str, ...] = ("default", "curriculum", "sophia")
    methods: tuple[str, ...] = METHODS
    extra_methods: tuple[str, ...] = tuple(m for m in METHODS if m != "FT")
    seeds: tuple[int, ...] = (0, 1)
    retrain_seeds: tuple[int, ...] = (0, 1)
    # the epochs of mcu_table.py's tuned settings; their learning rates come from its tuning
    # file (batch 128, SGD momentum 0.9, weight decay 5e-4)
    unlearn_epochs: int = 1
    unlearn_batch_size: int = 128
    salun_sparsity: float = 0.5
    sophia_grid: tuple[float, ...] = (0.02, 0.06, 0.2, 0.6)
    sophia_tune_seed: int = 100
    eval_size: int = 500  # retain images: BatchNorm re-estimation and the retain split
    path_test_size: int = 500  # test images scored along the paths
    ts: int = 5  # points per path, both ends included
    curve_train_size: int = 2000  # retain images a pair's curve is trained on
    curve_epochs: int = 1
    curve_lr: float = 0.02
    threads: int = 1


FULL = Config()
QUICK = dataclasses.replace(
    Config(),
    pool_size=600,
    test_size=200,
    width=4,
    epochs=2,
    scenarios=("random10", "class"),
    methods=("GA", "RL"),
    extra_methods=("GA",),
    sophia_grid=(0.06,),
    eval_size=100,
    path_test_size=100,
    ts=3,
    curve_train_size=100,
)


# --------------------------------------------------------------------------- models
def train_model(cfg: Config, data: Any, seed: int) -> nn.Module:
    """The original's recipe, on ``data`` from a fresh initialisation drawn with ``seed``."""
    return mcu.retrain(
        model_factory("cnn", cfg.width),
        data,
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        scheduler=cosine(cfg.epochs),
        seed=seed,
        progress=False,
    ).eval()


def condition_options(condition: str, method: str, sophia_lr: dict[str, float]) -> dict[str, Any]:
    """The ``unlearn`` keywords of an optimisation condition."""
    if condition == "default":
        return {}
    if condition == "curriculum":
        return {"curriculum": "easy_first"}
    if condition == "sophia":
        return {"optimizer": "sophiah", "create_graph": True, "lr": sophia_lr[method]}
    raise ValueError(f"unknown condition {condition!r}")


def unlearn_one(
    cfg: Config, sc: Scenario, method: str, tuned: float, original: nn.Module, **options: Any
) -> nn.Module:
    """``method`` on ``sc`` at its ``tuned`` lr, with ``Base.run``'s ``options`` (seed, lr...)."""
    base = Base(method, cfg.unlearn_epochs, tuned, salun_sparsity=cfg.salun_sparsity)
    return base.run(
        original,
        sc.retain,
        sc.forget,
        saliency=sc.saliency,
        batch_size=cfg.unlearn_batch_size,
        **options,
    ).eval()


# --------------------------------------------------------------------------- scoring
def point_scores(model: nn.Module, splits: dict[str, DataLoader[Any]]) -> dict[str, list[float]]:
    """``{split: [loss, error %]}`` of a model that is already BatchNorm-re-estimated."""
    out = {}
    for name, data in splits.items():
        metrics = evaluate(model, data)
        out[name] = [float(metrics.loss), 100.0 - float(metrics.accuracy)]
    return out


def accuracies(scores: dict[str, list[float]]) -> dict[str, float]:
    """UA, RA and TA (%) of a model's :func:`point_scores`."""
    return {
        "UA": scores["forget"][1],
        "RA": 100.0 - scores["retain"][1],
        "TA": 100.0 - scores["test"][1],
    }


def end_scores(
    model: nn.Module, splits: dict[str, DataLoader[Any]], bn: DataLoader[Any]
) -> dict[str, list[float]]:
    """Scores of a model exactly as at a path end: a copy, BatchNorm re-estimated on ``bn``."""
    return point_scores(with_bn_from(model, bn).eval(), splits)


def path_barriers(
    curve: CurveModel,
    ends: tuple[dict[str, list[float]], dict[str, list[float]]],
    splits: dict[str, DataLoader[Any]],
    bn: DataLoader[Any],
    ts: np.ndarray,
) -> dict[str, dict[str, BarrierResult]]:
    """``{metric: {split: BarrierResult}}`` along ``curve`` (interior points evaluated once)."""
    return barriers_by_metric(
        curve,
        splits,
        ts,
        metrics=METRICS,
        bn_loader=bn,
        task=None,
        device=None,
        progress=False,
        named=True,
        ends={
            metric: ({s: ends[0][s][k] for s in splits}, {s: ends[1][s][k] for s in splits})
            for k, metric in enumerate(METRICS)
        },
    )


# --------------------------------------------------------------------------- study
@dataclasses.dataclass
class Scenario:
    """One forget set: its data, retrained models and the scoring loaders."""

    name: str
    retain: Any
    forget: Any
    test: Any
    splits: dict[str, DataLoader[Any]]
    bn: DataLoader[Any]
    curve_data: Any
    retrained: dict[str, nn.Module]
    saliency: dict[str, torch.Tensor]  # SalUn's mask: one per forget set


def pairs_of(
    names: dict[str, str], seeds: tuple[int, ...], retrain_seeds: tuple[int, ...]
) -> Iterator[tuple[str, str, str]]:
    """``(kind, a, b)`` for the pairs of one condition (``names``: model name -> method)."""
    methods = sorted({m for m in names.values() if m not in ("original", "retrain")})
    first, second = seeds[0], seeds[-1]
    for method in methods:
        if second != first:
            yield "same", f"{method}/s{first}", f"{method}/s{second}"
    for a, b in itertools.combinations(methods, 2):
        yield "cross", f"{a}/s{first}", f"{b}/s{first}"
    for method in methods:
        yield "retrain_same_init", f"{method}/s{first}", f"retrain/s{retrain_seeds[0]}"
    if len(retrain_seeds) > 1:
        for method in methods:
            yield "retrain_new_init", f"{method}/s{first}", f"retrain/s{retrain_seeds[1]}"
    for method in methods:
        yield "original", "original", f"{method}/s{first}"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models have bit-identical states (parameters and buffers)."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        torch.equal(state_a[k], state_b[k]) for k in state_a
    )


def measure_pairs(
    cfg: Config,
    pairs: list[tuple[str, str, str]],
    models: dict[str, nn.Module],
    ends: dict[str, dict[str, list[float]]],
    sc: Scenario,
    label: str,
) -> list[dict[str, Any]]:
    """Linear and curve barriers of every pair; one record per pair."""
    ts = np.linspace(0.0, 1.0, cfg.ts)
    records = []
    for kind, a, b in pairs:
        began = time.perf_counter()
        record: dict[str, Any] = {"kind": kind, "a": a, "b": b}
        if same_weights(models[a], models[b]):
            # e.g. GA on a forget set that fits in one batch, or under a curriculum: the
            # seed changes nothing, and the barrier is 0 by construction (left out of means)
            record["identical"] = True
            records.append(record)
            log.info("%s %s %s-%s: identical models", label, kind, a, b)
            continue
        line = linear_curve(models[a], models[a], models[b])
        curve = connect(
            models[a],
            models[b],
            sc.curve_data,
            epochs=cfg.curve_epochs,
            lr=cfg.curve_lr,
            seed=0,
            progress=False,
        )
        for path, along in (("linear", line), ("curve", curve)):
            found = path_barriers(along, (ends[a], ends[b]), sc.splits, sc.bn, ts)
            record[path] = {
                metric: {split: r.to_dict() for split, r in per_split.items()}
                for metric, per_split in found.items()
            }
        record["seconds"] = round(time.perf_counter() - began, 2)
        line_loss, curve_loss = record["linear"]["loss"], record["curve"]["loss"]
        log.info(
            f"{label} {kind} {a}-{b}: linear retain {line_loss['retain']['height']:.3f} forget "
            f"{line_loss['forget']['height']:.3f} | curve retain "
            f"{curve_loss['retain']['height']:.3f} forget {curve_loss['forget']['height']:.3f} "
            f"({record['seconds']:.1f}s)"
        )
        records.append(record)
    return records


def pick_sophia_lr(
    cfg: Config,
    lrs: dict[str, float],
    original: nn.Module,
    sc: Scenario,
) -> dict[str, Any]:
    """Per method: the SophiaH lr whose forget accuracy is closest to the default run's.

    Runs on ``sc``'s forget set with the unreported seed ``cfg.sophia_tune_seed``.
    """
    forget_loader = loader(sc.forget)

    def forget_acc(model: nn.Module) -> float:
        return float(evaluate(with_bn_from(model, sc.bn).eval(), forget_loader).accuracy)

    seed = cfg.sophia_tune_seed
    chosen: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for method in cfg.extra_methods:
        args = (cfg, sc, method, lrs[method], original)
        target = forget_acc(unlearn_one(*args, seed=seed))
        scores = {}
        for lr in cfg.sophia_grid:
            options = {"optimizer": "sophiah", "create_graph": True, "lr": lr}
            scores[lr] = forget_acc(unlearn_one(*args, seed=seed, **options))
            records.append({"method": method, "lr": lr, "forget_acc": scores[lr]})
        chosen[method] = min(scores, key=lambda lr: (abs(scores[lr] - target), lr))
        records.append({"method": method, "lr": None, "default_forget_acc": target})
        log.info(
            f"{sc.name}: SophiaH lr for {method}: {chosen[method]:g} "
            f"(forget acc {scores[chosen[method]]:.2f} vs default {target:.2f})"
        )
    return {"chosen": chosen, "records": records}


def method_of(label: str) -> str:
    """``"GA/s0"`` -> ``"GA"``; ``"original"`` -> ``"original"``."""
    return label.split("/")[0]


def summarise(
    records: list[dict[str, Any]], methods: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """``{path: {metric: {split: {kind: {"mean", "n", "min", "max"}}}}`` over the records.

    With ``methods``, only pairs whose unlearned ends are all of those methods count, so
    that conditions run with different method sets are compared on the same pairs.
    """
    if methods is not None:
        allowed = {*methods, "original", "retrain"}
        records = [r for r in records if {method_of(r["a"]), method_of(r["b"])} <= allowed]
    measured = [r for r in records if not r.get("identical")]

    def per_kind(path: str, metric: str, split: str) -> dict[str, Any]:
        found = {}
        for kind in KINDS:
            heights = [r[path][metric][split]["height"] for r in measured if r["kind"] == kind]
            if heights:
                found[kind] = {
                    "mean": float(np.mean(heights)),
                    "n": len(heights),
                    "min": float(np.min(heights)),
                    "max": float(np.max(heights)),
                }
        return found

    return {
        path: {m: {split: per_kind(path, m, split) for split in SPLITS} for m in METRICS}
        for path in PATHS
    }


def run(cfg: Config, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    env = environment()  # the commit the run starts from
    tuned_lr = tuned_lrs()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now
        log.info("%s done in %.1fs (%.0fs in all)", name, timings[name], now - started)

    pool = load_fashion_mnist(train=True, limit=cfg.pool_size)
    test_full = load_fashion_mnist(train=False, limit=cfg.test_size)
    train, holdout = carve_holdout(pool, fraction=cfg.holdout_fraction, seed=cfg.world_seed)
    original = train_model(cfg, train, cfg.world_seed)
    regime: dict[str, Any] = {
        "original": {
            "train_acc": float(evaluate(original, train).accuracy),
            "holdout_acc": float(evaluate(original, holdout).accuracy),
            "test_acc": float(evaluate(original, test_full).accuracy),
        }
    }
    lap("original")
    log.info("original: %s", regime["original"])

    scenarios: dict[str, Scenario] = {}
    for name in cfg.scenarios:
        retain, forget, test = forget_split(train, test_full, name, cfg.world_seed)
        eval_retain = random_subset(retain, cfg.eval_size, seed=1)
        bn = loader(eval_retain)
        splits = {
            "retain": bn,
            "forget": loader(forget),
            "test": loader(random_subset(test, cfg.path_test_size, seed=2)),
        }
        retrained = {f"retrain/s{s}": train_model(cfg, retain, s) for s in cfg.retrain_seeds}
        curve_data = random_subset(retain, cfg.curve_train_size, seed=3)
        # SalUn's mask depends only on the original and the forget set: one per forget set
        saliency = mcu.saliency_mask(original, forget, sparsity=cfg.salun_sparsity)
        scenarios[name] = Scenario(
            name, retain, forget, test, splits, bn, curve_data, retrained, saliency
        )
        full = {"retain": loader(retain), "forget": loader(forget), "test": loader(test)}
        regime[name] = {}
        for label, model in {"original": original, **retrained}.items():
            regime[name][label] = accuracies(end_scores(model, full, bn))
            log.info("regime %s %s: %s", name, label, regime[name][label])
        lap(f"retrain_{name}")

    sophia: dict[str, Any] = {
        "rule": "per forget set and method: the lr of the grid whose forget accuracy is "
        "closest to the default (SGD) run's, ties to the smaller lr",
        "seed": cfg.sophia_tune_seed,
        "grid": list(cfg.sophia_grid),
        "per_forget_set": {},
    }
    for name, sc in scenarios.items():
        sophia["per_forget_set"][name] = pick_sophia_lr(cfg, tuned_lr[name], original, sc)
    lap("sophia_lr")

    results: dict[str, Any] = {}
    retrain_seed_records: dict[str, list[dict[str, Any]]] = {}
    for name, sc in scenarios.items():
        ends = {label: end_scores(m, sc.splits, sc.bn) for label, m in sc.retrained.items()}
        ends["original"] = end_scores(original, sc.splits, sc.bn)
        if len(cfg.retrain_seeds) > 1:
            a, b = (f"retrain/s{s}" for s in (cfg.retrain_seeds[0], cfg.retrain_seeds[-1]))
            retrain_seed_records[name] = measure_pairs(
                cfg, [("retrain_seeds", a, b)], sc.retrained, ends, sc, name
            )
        results[name] = {}
        sophia_lr = sophia["per_forget_set"][name]["chosen"]
        for condition in cfg.conditions:
            methods = cfg.methods if condition == "default" else cfg.extra_methods
            models: dict[str, nn.Module] = {"original": original, **sc.retrained}
            groups: dict[str, str] = {"original": "original"}
            groups.update({label: "retrain" for label in sc.retrained})
            seconds: dict[str, float] = {}
            for method, seed in itertools.product(methods, cfg.seeds):
                label = f"{method}/s{seed}"
                began = time.perf_counter()
                options = condition_options(condition, method, sophia_lr)
                models[label] = unlearn_one(
                    cfg, sc, method, tuned_lr[name][method], original, seed=seed, **options
                )
                seconds[label] = round(time.perf_counter() - began, 2)
                groups[label] = method
                ends[label] = end_scores(models[label], sc.splits, sc.bn)
            accuracy = {label: accuracies(ends[label]) for label in models}
            lap(f"unlearn_{name}_{condition}")
            records = measure_pairs(
                cfg,
                list(pairs_of(groups, cfg.seeds, cfg.retrain_seeds)),
                models,
                ends,
                sc,
                f"{name}/{condition}",
            )
            records += retrain_seed_records.get(name, [])
            results[name][condition] = {
                "unlearn_seconds": seconds,
                "accuracy": accuracy,
                "pairs": records,
                "summary": summarise(records),
                "summary_shared": summarise(records, cfg.extra_methods),
                "sophia_lr": sophia_lr if condition == "sophia" else None,
            }
            lap(f"barriers_{name}_{condition}")
            for label in list(ends):
                if label in groups and groups[label] not in ("original", "retrain"):
                    del ends[label]

    return {
        "command": "python benchmarks/connectivity.py" + (" --quick" if quick else ""),
        "config": dataclasses.asdict(cfg),
        "quick": quick,
        "tuned_lr": tuned_lr,
        "environment": env,
        "regime": regime,
        "sophia_lr_selection": sophia,
        "results": results,
        "timings_s": {**timings, "total": round(time.perf_counter() - started, 1)},
    }


# --------------------------------------------------------------------------- report
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def barrier_table(result: dict[str, Any], path: str, metric: str) -> list[str]:
    """Mean barrier per pair kind: one row per forget set and condition, retain/forget/test."""
    digits = 3 if metric == "loss" else 1
    rows = []
    for name, per_condition in result["results"].items():
        for condition, res in per_condition.items():
            summaries = [(condition, res["summary_shared"])]
            if condition == "default":
                summaries.append((f"{condition}, with FT", res["summary"]))
            for label, summary in summaries:
                cells = []
                for kind in KINDS:
                    parts = [
                        summary[path][metric][split].get(kind, {}).get("mean") for split in SPLITS
                    ]
                    cells.append(" / ".join(_fmt(p, digits) for p in parts))
                rows.append([name, label, *cells])
    header = "forget set | condition | " + " | ".join(f"{kind} R / F / T" for kind in KINDS)
    return table(header, rows, align="ll" + "r" * len(KINDS))


def aggregate(result: dict[str, Any]) -> dict[str, Any]:
    """Recompute the per-kind summaries of a saved result from its per-pair records."""
    methods = tuple(result["config"]["extra_methods"])
    for per_condition in result["results"].values():
        for res in per_condition.values():
            res["summary"] = summarise(res["pairs"])
            res["summary_shared"] = summarise(res["pairs"], methods)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    env = result["environment"]
    regime = result["regime"]
    sophia = result["sophia_lr_selection"]
    total_min = result["timings_s"]["total"] / 60.0
    lines = [
        "# Connectivity of unlearned models in the memorising regime",
        "",
        f"Command: `{result['command']}` ({total_min:.1f} min wall time, one process, "
        f"{env['threads']} torch thread(s), torch {env['torch']}, {env['cpus']} shared CPUs, "
        f"git {env['git_commit'][:7]}); `--aggregate` recomputes the summaries and tables "
        "from the per-pair records of the JSON file, without training.",
        "",
        f"World (as `benchmarks/mcu_table.py`): Fashion-MNIST, first {cfg['pool_size']} "
        f"training images, {int(cfg['holdout_fraction'] * 100)} % held out before training, "
        f"DenseHeadCNN width {cfg['width']}, {cfg['epochs']} epochs SGD lr {cfg['lr']} "
        f"momentum 0.9, weight decay {cfg['weight_decay']}, cosine, batch {cfg['batch_size']}; "
        f"world seed {cfg['world_seed']}. Unlearning: {cfg['unlearn_epochs']} epoch, batch "
        f"{cfg['unlearn_batch_size']}, the learning rates `mcu_table.py` tuned "
        "(SGD momentum 0.9, weight decay 5e-4); seeds "
        f"{list(cfg['seeds'])}; retraining seeds {list(cfg['retrain_seeds'])}.",
        "",
        "## Regime",
        "",
        f"Original: train accuracy {regime['original']['train_acc']:.2f} %, held-out "
        f"{regime['original']['holdout_acc']:.2f} %, test {regime['original']['test_acc']:.2f} %.",
        "",
        *table(
            "forget set | model | UA | RA | TA",
            (
                [name, label, *(f"{s[k]:.2f}" for k in ("UA", "RA", "TA"))]
                for name in cfg["scenarios"]
                for label, s in regime[name].items()
            ),
            align="llrrr",
        ),
        "",
        "UA = 100 - forget accuracy, RA = retain accuracy, TA = test accuracy (class 0: the "
        "other classes), all with BatchNorm statistics re-estimated on "
        f"{cfg['eval_size']} retain images.",
        "",
        "## Optimisation conditions",
        "",
        "- default: shuffled mini-batch SGD;",
        '- curriculum: `curriculum="easy_first"` (forget samples in ascending order of the '
        "original's per-sample loss, spread evenly over the epoch; retain samples shuffled);",
        '- sophia: `optimizer="sophiah", create_graph=True` (pytorch-optimizer\'s SophiaH); '
        f"lr per forget set and method from {sophia['grid']}, on the unreported seed "
        f"{sophia['seed']} (forget accuracy closest to the default run's): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{m} {lr:g}" for m, lr in pick["chosen"].items())
            for name, pick in sophia["per_forget_set"].items()
        )
        + ".",
        "",
        "## Mean barrier per pair kind",
        "",
        "Pair kinds: same = the two seeds of one method; cross = two methods (seed 0); "
        "retrain same / new init = a method (seed 0) vs retraining from the original's "
        "initialisation (retrain/s0) / from a new one (retrain/s1); original = a method vs "
        "the original; "
        "retrain_seeds = the two retrained models (the same pair in every condition of a "
        f"forget set). R / F / T = retain ({cfg['eval_size']} images) / forget (all) / test "
        f"({cfg['path_test_size']} images); {cfg['ts']} points per path. Curve: a quadratic "
        f"Bezier curve whose middle bend is trained for {cfg['curve_epochs']} epoch on "
        f"{cfg['curve_train_size']} retain images (lr {cfg['curve_lr']}), both ends fixed.",
        "",
        "Every row compares the same pairs: those among "
        + ", ".join(cfg["extra_methods"])
        + ", the original and retraining (the methods of every condition); the row "
        "'default, with FT' adds the pairs with FT. A barrier is the largest excess of the "
        "metric over the straight line between its end values; on the forget data a "
        "positive one means the path forgets more in between than its ends.",
        "",
        "Means over few pairs (per kind: 4-6, retrain_seeds: 1), one world seed and two "
        "seeds per method: no intervals; a mean can come from one pair (the per-pair "
        "heights are in the JSON file).",
    ]
    for path in PATHS:
        for metric, unit in (("loss", "mean cross-entropy"), ("error", "error, %")):
            lines += ["", f"### {path.capitalize()} path, {unit}", ""]
            lines += barrier_table(result, path, metric)
    identical = [
        f"{name}/{condition}: {r['a']} = {r['b']}"
        for name, per_condition in result["results"].items()
        for condition, res in per_condition.items()
        for r in res["pairs"]
        if r.get("identical")
    ]
    lines += [
        "",
        "Pairs of bit-identical models (the seed changed nothing: GA sees only forget "
        "samples, in one batch or in the curriculum's fixed order) are left out of the means: "
        + ("; ".join(identical) if identical else "none")
        + ".",
    ]
    lines += ["", "## Models (UA / RA / TA, %, on the path splits)", ""]
    for name, per_condition in result["results"].items():
        for condition, res in per_condition.items():
            cells = [
                f"{label} {s['UA']:.1f}/{s['RA']:.1f}/{s['TA']:.1f}"
                for label, s in res["accuracy"].items()
            ]
            lines.append(f"- {name}, {condition}: " + "; ".join(cells))
    lines += [
        "",
        "Per-pair barriers (every split, both metrics, the values along each path) are in "
        "the JSON file next to this one.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__, quick="tiny settings (under a minute)")
    cli.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    cli.add_argument(
        "--aggregate",
        action="store_true",
        help="no training: recompute the summaries and the tables from the saved JSON",
    )
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cfg = configure(args.quick, FULL, QUICK, threads=args.threads)
    torch.manual_seed(0)
    stem = "connectivity_quick" if args.quick else "connectivity"
    if args.aggregate:
        result = aggregate(json.loads((args.out / f"{stem}.json").read_text()))
    else:
        result = run(cfg, args.quick)
    write_json(args.out / f"{stem}.json", result)
    markdown = to_markdown(result)
    write_text(args.out / f"{stem}.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
