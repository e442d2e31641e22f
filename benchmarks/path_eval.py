"""Cost of evaluating a path, and of MCU end to end, measured side by side.

1. ``evaluate_path`` at 21 points of a BatchNorm CNN's curve vs the same work on a
   plain model: 21 times (re-estimate BatchNorm statistics on the same loader, then
   one evaluation pass per split). The ratio is the overhead of the curve (weights
   at ``t``, export, path length); target <= 1.1. The two are interleaved round by
   round, and the median ratio over rounds is reported, in CPU time (the process's
   own, which other processes on a shared machine disturb little) and wall time.
2. MCU end to end (layer mask, curve training, path evaluation, choice of ``t``,
   export) on top of a random-label θ_u, vs retraining from scratch on the retain
   set, with the settings of ``benchmarks/mcu_table.py`` (Fashion-MNIST subset,
   SmallCNN width 16, random 10% forgetting, seed 0).

Usage:
    python benchmarks/path_eval.py             # writes benchmarks/results/path_eval.*
    python benchmarks/path_eval.py --quick     # smoke run (< 60 s), writes nothing
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn.zoo import SmallCNN

sys.path.insert(0, str(Path(__file__).parent))
from mcu_table import QUICK, Config, Seconds, cosine, load_data, probe_subset, timed

RESULTS = Path(__file__).parent / "results"
POINTS = 21


def loader(data: Any) -> DataLoader[Any]:
    return DataLoader(data, batch_size=256, shuffle=False)


def plain_passes(model: nn.Module, splits: dict[str, DataLoader[Any]], bn: DataLoader[Any]) -> None:
    """What evaluate_path does at each t, on a plain model: BN re-estimation, one pass per split."""
    for _ in range(POINTS):
        mcu.update_bn(model, bn)
        for data in splits.values():
            mcu.evaluate(model, data)


def path_overhead(cfg: Config, rounds: int, sizes: dict[str, int]) -> dict[str, Any]:
    train, test, channels = load_data(cfg)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    splits = {
        "retain": loader(Subset(retain, range(sizes["retain"]))),
        "forget": loader(Subset(forget, range(min(sizes["forget"], len(forget))))),
        "test": loader(Subset(test, range(sizes["test"]))),
    }
    bn = splits["retain"]
    torch.manual_seed(0)
    start, end = SmallCNN(channels, 10, width=cfg.width), SmallCNN(channels, 10, width=cfg.width)
    curve = mcu.CurveModel(start, start=start, end=end)
    plain = copy.deepcopy(start)
    times: dict[str, list[Seconds]] = {"path": [], "plain": []}
    for _ in range(rounds):
        _, seconds = timed(
            lambda: mcu.evaluate_path(curve, splits, ts=POINTS, bn_loader=bn, progress=False)
        )
        times["path"].append(seconds)
        _, seconds = timed(lambda: plain_passes(plain, splits, bn))
        times["plain"].append(seconds)
    result: dict[str, Any] = {
        "points": POINTS,
        "samples": {name: len(data.dataset) for name, data in splits.items()},  # type: ignore[arg-type]
        "bn_samples": len(bn.dataset),  # type: ignore[arg-type]
        "rounds": rounds,
    }
    for kind in ("cpu", "wall"):
        path = [getattr(s, kind) for s in times["path"]]
        plain_ = [getattr(s, kind) for s in times["plain"]]
        ratios = [p / q for p, q in zip(path, plain_, strict=True)]
        result[kind] = {
            "evaluate_path_s": path,
            "plain_passes_s": plain_,
            "ratios": ratios,
            "ratio_median": statistics.median(ratios),
        }
    return result


def mcu_vs_retrain(cfg: Config) -> dict[str, Any]:
    train, _, channels = load_data(cfg)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    probe = probe_subset(retain, cfg.probe_size, 0)
    common = {"batch_size": cfg.batch_size, "seed": 0, "progress": False}

    def make_model() -> nn.Module:
        return SmallCNN(channels, 10, width=cfg.width)

    train_args = {"epochs": cfg.epochs, "lr": cfg.lr, "scheduler": cosine(cfg.epochs), **common}
    original = mcu.retrain(make_model, train, **train_args)
    retrained, retrain_s = timed(lambda: mcu.retrain(make_model, retain, **train_args))
    targets = (mcu.evaluate(retrained, probe).accuracy, mcu.evaluate(retrained, forget).accuracy)
    epochs, lr = next((e, lr) for name, e, lr in cfg.base if name == "RL")
    theta_u, base_s = timed(
        lambda: mcu.unlearn(
            original,
            retain,
            forget,
            loss=mcu.losses.random_label(10),
            epochs=epochs,
            lr=lr,
            **common,
        )
    )

    stages: dict[str, Seconds] = {}
    mask, stages["layer_mask"] = timed(
        lambda: mcu.layer_mask(original, retain, forget, k=cfg.mask_k, kr=cfg.mask_kr)
    )
    curve = mcu.CurveModel(original, start=original, end=theta_u, mask=mask)
    beta = mcu.AdaptiveBeta(*targets, low=cfg.beta_low, high=cfg.beta_high)
    _, stages["fit_curve"] = timed(
        lambda: mcu.fit_curve(
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
    )

    def choose() -> nn.Module:
        ts = np.linspace(cfg.t_range[0], cfg.t_range[1], cfg.path_points).tolist()
        report = mcu.evaluate_path(
            curve, {"retain": probe, "forget": forget}, ts=ts, bn_loader=probe, progress=False
        )
        best = mcu.find_optimal_t(
            report.t,
            report.acc("retain"),
            report.acc("forget"),
            retain_target=targets[0],
            forget_target=targets[1],
            t_range=cfg.t_range,
            kind=cfg.interpolation,  # type: ignore[arg-type]
        )
        return curve.export(best.t, bn_loader=loader(probe))

    _, stages["evaluate_path+select+export"] = timed(choose)
    mcu_s = Seconds(0.0, 0.0)
    for seconds in stages.values():
        mcu_s = mcu_s + seconds
    result: dict[str, Any] = {}
    for kind in ("cpu", "wall"):
        result[kind] = {
            "retrain_s": getattr(retrain_s, kind),
            "base_rl_s": getattr(base_s, kind),
            "mcu_s": getattr(mcu_s, kind),
            "mcu_stages_s": {name: getattr(s, kind) for name, s in stages.items()},
            "mcu_over_retrain": getattr(mcu_s, kind) / getattr(retrain_s, kind),
            "rl_plus_mcu_over_retrain": getattr(base_s + mcu_s, kind) / getattr(retrain_s, kind),
        }
    return result


def sizes_text(overhead: dict[str, Any]) -> str:
    return ", ".join(f"{count} {name}" for name, count in overhead["samples"].items())


def rows(overhead: dict[str, Any], end_to_end: dict[str, Any]) -> list[str]:
    lines = []
    for kind in ("cpu", "wall"):
        o, e = overhead[kind], end_to_end[kind]
        lines += [
            f"| evaluate_path, {POINTS} points (s, median) | {kind} | "
            f"{statistics.median(o['evaluate_path_s']):.2f} | |",
            f"| {POINTS} plain BN re-estimations + evaluation passes (s, median) | {kind} | "
            f"{statistics.median(o['plain_passes_s']):.2f} | |",
            f"| **evaluate_path / plain** (median of {overhead['rounds']} paired rounds) | "
            f"{kind} | **{o['ratio_median']:.3f}** | <= 1.1 |",
            f"| retrain from scratch (s) | {kind} | {e['retrain_s']:.1f} | |",
            f"| RL, the base method (s) | {kind} | {e['base_rl_s']:.1f} | |",
            "| MCU end to end (s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in e["mcu_stages_s"].items())
            + f" | {kind} | {e['mcu_s']:.1f} | |",
            f"| **MCU / retrain** | {kind} | **{e['mcu_over_retrain']:.2f}** | < 1 |",
            f"| (RL + MCU) / retrain | {kind} | {e['rl_plus_mcu_over_retrain']:.2f} | < 1 |",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, writes nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dataset", choices=("fashion", "digits"), default="fashion")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(
        QUICK if args.quick else Config(), threads=args.threads, dataset=args.dataset
    )
    sizes = (
        {"retain": 200, "forget": 50, "test": 100}
        if args.quick
        else {"retain": 1000, "forget": 500, "test": 1000}
    )
    overhead = path_overhead(cfg, rounds=1 if args.quick else 3, sizes=sizes)
    end_to_end = mcu_vs_retrain(cfg)
    table = "\n".join(
        [
            "| measurement | time | value | target |",
            "|---|---|---:|---:|",
            *rows(overhead, end_to_end),
        ]
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n{table}")
    if args.quick:
        return
    command = "python benchmarks/path_eval.py" + (
        " " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""
    )
    result = {
        "command": command,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": dataclasses.asdict(cfg),
        "path_overhead": overhead,
        "mcu_vs_retrain": end_to_end,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "path_eval.json").write_text(json.dumps(result, indent=2))
    (args.out / "path_eval.md").write_text(
        f"Command: `{command}` (torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        "shared 2-core CPU). Path overhead: SmallCNN width "
        f"{cfg.width} (BatchNorm) on Fashion-MNIST, splits of {sizes_text(overhead)} images, "
        f"BatchNorm statistics re-estimated on the {overhead['bn_samples']} retain samples at "
        "every point by both sides. End to end: the settings of mcu_table.py, random 10% "
        "forgetting, seed 0. CPU time is the process's own (one thread), which other "
        "processes on the machine disturb far less than wall time.\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
