"""Cost of evaluating a path, of the adaptive path search, and of MCU end to end.

1. ``evaluate_path`` at 21 points of a BatchNorm CNN's curve vs the same work on a
   plain model: 21 times (re-estimate BatchNorm statistics on the same loader, then
   one evaluation pass per split). The ratio is the overhead of the curve (weights
   at ``t``, export, path length); target <= 1.1. The two are interleaved round by
   round, and the median ratio over rounds is reported, in CPU time (the process's
   own, which other processes on a shared machine disturb little) and wall time.
2. Path search: a dense 21-point ``evaluate_path`` + ``find_optimal_t`` vs
   ``mcu.path_search.search_path`` on the same trained curve: points evaluated,
   time, and the difference of the chosen ``t``.
3. MCU end to end (``mcu.recipe.mcu_unlearn``: layer mask, curve training, path
   search, export) on top of a random-label θ_u, vs retraining from scratch on the
   retain set, in the regime of ``benchmarks/mcu_table.py`` (memorising BatchNorm
   CNN, random 10 % forgetting, seed 0, targets from ``user_targets``).

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

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn.datasets import load_digits, load_fashion_mnist
from modeconn_unlearn.path_search import search_path
from modeconn_unlearn.recipe import RecipeConfig, carve_holdout, mcu_unlearn, user_targets
from modeconn_unlearn.zoo import SmallCNN

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, Seconds, cosine, model_factory, random_subset, timed

POINTS = 21


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes (the regime of mcu_table.py for part 3)."""

    dataset: str = "fashion"
    pool_size: int = 5000
    test_size: int = 2000
    width: int = 16
    epochs: int = 12
    lr: float = 0.05
    batch_size: int = 64
    forget_ratio: float = 0.1
    probe_size: int = 1000
    threads: int = 1


QUICK = dataclasses.replace(Config(), dataset="digits", width=4, epochs=2, probe_size=300)


def load_data(cfg: Config) -> tuple[Any, Any, int]:
    if cfg.dataset == "digits":
        train, test = load_digits(flatten=False)
        return train, test, 1
    train = load_fashion_mnist(train=True, limit=cfg.pool_size)
    return train, load_fashion_mnist(train=False, limit=cfg.test_size), 1


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


def make_model(cfg: Config) -> nn.Module:
    if cfg.dataset == "digits":
        return SmallCNN(1, 10, width=cfg.width)
    return model_factory("cnn", cfg.width)()


def mcu_vs_retrain(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    pool, _, _ = load_data(cfg)
    train, holdout = carve_holdout(pool, fraction=0.1, seed=0)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    probe = random_subset(retain, cfg.probe_size, 0)
    common = {"batch_size": cfg.batch_size, "seed": 0, "progress": False}
    train_args = {"epochs": cfg.epochs, "lr": cfg.lr, "scheduler": cosine(cfg.epochs), **common}
    original = mcu.retrain(lambda: make_model(cfg), train, **train_args)
    _, retrain_s = timed(lambda: mcu.retrain(lambda: make_model(cfg), retain, **train_args))
    targets = user_targets(original, probe, holdout)
    theta_u, base_s = timed(
        lambda: mcu.unlearn(
            original,
            retain,
            forget,
            loss=mcu.losses.random_label(10),
            epochs=1,
            lr=0.01,
            **common,
        )
    )
    result, mcu_s = timed(
        lambda: mcu_unlearn(
            original,
            theta_u,
            retain,
            forget,
            targets=targets,
            # The CNN's dense head holds 96 % of the entries: kr > 0 would exclude every
            # tensor (see mcu_table.py).
            config=RecipeConfig(mask_kr=0.0),
            probe=probe,
        )
    )

    # Path search: the same trained curve, dense 21-point grid vs the adaptive search.
    splits = {"retain": DataLoader(probe, batch_size=256), "forget": forget}
    bn = splits["retain"]
    dense_report, dense_s = timed(
        lambda: mcu.evaluate_path(result.curve, splits, ts=POINTS, bn_loader=bn, progress=False)
    )
    dense = mcu.find_optimal_t(
        dense_report.t,
        dense_report.acc("retain"),
        dense_report.acc("forget"),
        retain_target=targets.retain,
        forget_target=targets.forget,
        t_range=(0.5, 1.0),
    )
    adaptive, adaptive_s = timed(
        lambda: search_path(
            result.curve,
            splits,
            retain_target=targets.retain,
            forget_target=targets.forget,
            t_range=(0.5, 1.0),
            bn_loader=bn,
        )
    )
    search = {
        "dense": {"points": POINTS, "t": dense.t, "wall_s": dense_s.wall, "cpu_s": dense_s.cpu},
        "adaptive": {
            "points": adaptive.evaluations,
            "rounds": [list(r) for r in adaptive.rounds],
            "t": adaptive.best.t,
            "wall_s": adaptive_s.wall,
            "cpu_s": adaptive_s.cpu,
        },
        "t_difference": abs(adaptive.best.t - dense.t),
    }
    end_to_end: dict[str, Any] = {"targets": targets.to_dict(), "t": result.t}
    for kind in ("cpu", "wall"):
        end_to_end[kind] = {
            "retrain_s": getattr(retrain_s, kind),
            "base_rl_s": getattr(base_s, kind),
            "mcu_s": getattr(mcu_s, kind),
            "mcu_over_retrain": getattr(mcu_s, kind) / getattr(retrain_s, kind),
            "rl_plus_mcu_over_retrain": getattr(base_s + mcu_s, kind) / getattr(retrain_s, kind),
        }
    end_to_end["wall"]["mcu_stages_s"] = dict(result.seconds)
    return end_to_end, search


def sizes_text(overhead: dict[str, Any]) -> str:
    return ", ".join(f"{count} {name}" for name, count in overhead["samples"].items())


def rows(overhead: dict[str, Any], end_to_end: dict[str, Any], search: dict[str, Any]) -> list[str]:
    d, a = search["dense"], search["adaptive"]
    lines = [
        f"| dense grid: {d['points']} points, t = {d['t']:.3f} (s) | wall | {d['wall_s']:.2f} | |",
        f"| adaptive search: {a['points']} points, t = {a['t']:.3f} (s) | wall | "
        f"{a['wall_s']:.2f} | |",
        f"| **adaptive / dense points; abs t difference** | | **{a['points'] / d['points']:.2f}; "
        f"{search['t_difference']:.3f}** | <= 0.5; <= 0.01 |",
    ]
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
            "| MCU end to end (s)"
            + (
                ": " + ", ".join(f"{k} {v:.1f}" for k, v in e["mcu_stages_s"].items())
                if "mcu_stages_s" in e
                else ""
            )
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
    end_to_end, search = mcu_vs_retrain(cfg)
    table = "\n".join(
        [
            "| measurement | time | value | target |",
            "|---|---|---:|---:|",
            *rows(overhead, end_to_end, search),
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
        "path_search": search,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "path_eval.json").write_text(json.dumps(result, indent=2))
    (args.out / "path_eval.md").write_text(
        f"Command: `{command}` (torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        "shared 2-core CPU). Path overhead: SmallCNN width "
        f"{cfg.width} (BatchNorm) on Fashion-MNIST, splits of {sizes_text(overhead)} images, "
        f"BatchNorm statistics re-estimated on the {overhead['bn_samples']} retain samples at "
        "every point by both sides. Path search and end to end: the regime of mcu_table.py "
        "(memorising BatchNorm CNN), random 10% forgetting, seed 0, mcu_unlearn defaults. "
        "CPU time is the process's own (one thread), which other processes on the machine "
        "disturb far less than wall time.\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
