"""MCU's cost against its quality: what a cheaper path search and curve training give up.

Two measurements, in the memorising regime of ``benchmarks/mcu_table.py`` (its world,
targets, tuned base methods and tuned MCU settings, read from ``mcu_table_tuning.json``):

1. **Frontier** (tuning seed only, never a reported seed): for each budget of the recipe
   (BatchNorm samples, points of the path search, probe size, retain ratio of curve
   training), MCU on every base method of the three scenarios: mean Avg. Gap to retraining
   and MCU's CPU time as a fraction of retraining's (median, min, max over the 15 cells).
2. **Scale**: the same recipe on growing training pools (random 10 % forgetting, the GA
   base): the fraction of retraining's CPU time that MCU costs, from 3 MCU runs each. MCU
   evaluates a fixed-size probe and trains one epoch, so its share falls as the data grows.

CPU time (``time.process_time``) is used because other jobs on a shared machine disturb it
far less than wall time; every ratio is measured within one process.

Usage:
    python benchmarks/mcu_cost.py            # about 40 CPU-minutes, one thread
    python benchmarks/mcu_cost.py --quick    # smoke run on digits, writes nothing
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _harness import (
    METHODS,
    TUNING_TIMEOUT_S,
    Base,
    command,
    configure,
    environment,
    parser,
    table,
    wait_for_json,
    write_json,
    write_text,
)
from mcu_table import QUICK, Config, load_data, make_scenario, make_world, run_base, run_mcu

from modeconn_unlearn import RecipeConfig

Tuning = Callable[[], dict[str, Any]]  # the tuning results (may wait for a tuning run)
logger = logging.getLogger("benchmarks.mcu_cost")

# Budgets of the frontier: overrides on top of the tuned MCU settings. "probe" is the size
# of the retain probe (mcu_table's default: 1000).
BUDGETS: tuple[dict[str, Any], ...] = (
    {"label": "previous defaults", "bn_samples": None, "coarse_points": 5, "max_points": 10},
    {"label": "defaults", "bn_samples": 256, "coarse_points": 4, "max_points": 6},
    {
        "label": "lean",
        "bn_samples": 256,
        "coarse_points": 4,
        "max_points": 6,
        "probe": 500,
        "retain_ratio": 0.25,
    },
    {
        "label": "leanest",
        "bn_samples": 256,
        "coarse_points": 3,
        "max_points": 5,
        "probe": 500,
        "forget_samples": 250,
        "retain_ratio": 0.25,
    },
)
POOLS = (5000, 20000)


def frontier(
    cfg: Config, get_tuning: Tuning, seed: int, budgets: tuple[dict[str, Any], ...]
) -> list[dict[str, Any]]:
    pool, test = load_data(cfg)
    world = make_world(cfg, seed, pool, test)
    scenarios = [make_scenario(cfg, world, name, cfg.arch) for name in cfg.scenarios]
    tuning = get_tuning()
    cells = []
    for name, sc in zip(cfg.scenarios, scenarios, strict=True):
        for method, (epochs, lr) in tuning["chosen_base"][name].items():
            theta_u, row = run_base(world, sc, Base(method, int(epochs), float(lr)))
            cells.append((name, method, sc, theta_u, row["avg_gap"]))
    rows = []
    for budget in budgets:
        fields = {k: v for k, v in budget.items() if k not in ("label", "probe")}
        gaps: dict[str, list[float]] = {}
        fractions, per_cell = [], {}
        for name, method, sc, theta_u, base_gap in cells:
            tuned = {**tuning["chosen_mcu"][name], **fields}
            config = dataclasses.replace(RecipeConfig(), **tuned)
            probe = sc.probe
            if "probe" in budget:
                probe = torch.utils.data.Subset(sc.probe, range(min(budget["probe"], len(probe))))
            row, _ = run_mcu(world, sc, theta_u, config, probe)
            gap = row["avg_gap"]
            gaps.setdefault(name, []).append(gap)
            fractions.append(row["cpu_fraction_of_retrain"])
            per_cell[f"{name}/{method}"] = {
                "base_gap": base_gap,
                "mcu_gap": gap,
                "t": row["t"],
                "evaluations": row["evaluations"],
                "cpu_fraction": row["cpu_fraction_of_retrain"],
                "parts_wall_s": row["parts"],
            }
        rows.append(
            {
                "budget": budget,
                "mean_gap": {k: float(np.mean(v)) for k, v in gaps.items()},
                "mean_gap_all": float(np.mean([g for v in gaps.values() for g in v])),
                "cpu_fraction": {
                    "median": float(np.median(fractions)),
                    "min": float(np.min(fractions)),
                    "max": float(np.max(fractions)),
                },
                "cells": per_cell,
            }
        )
        logger.info(
            "budget %s: gap %.2f, CPU fraction %.3f",
            budget["label"],
            rows[-1]["mean_gap_all"],
            rows[-1]["cpu_fraction"]["median"],
        )
    rows.insert(0, {"base_gap_all": float(np.mean([c[4] for c in cells]))})
    return rows


def scale(cfg: Config, get_tuning: Tuning, seed: int, pools: tuple[int, ...]) -> list[Any]:
    rows = []
    for size in pools:
        sized = dataclasses.replace(cfg, pool_size=size, scenarios=("random10",))
        pool, test = load_data(sized)
        world = make_world(sized, seed, pool, test)
        sc = make_scenario(sized, world, "random10", sized.arch)
        tuning = get_tuning()
        epochs, lr = tuning["chosen_base"]["random10"]["GA"]
        theta_u, _ = run_base(world, sc, Base("GA", int(epochs), float(lr)))
        config = dataclasses.replace(RecipeConfig(), **tuning["chosen_mcu"]["random10"])
        fractions = [
            run_mcu(world, sc, theta_u, config)[0]["cpu_fraction_of_retrain"] for _ in range(3)
        ]
        rows.append(
            {
                "pool": size,
                "retain": len(sc.retain),
                "forget": len(sc.forget),
                "retrain_cpu_s": sc.retrain_time.cpu,
                "mcu_cpu_fraction": fractions,
            }
        )
        logger.info("pool %d: MCU CPU fraction %s", size, [f"{f:.3f}" for f in fractions])
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Command: `{result['command']}` ({result['wall_time_s'] / 60:.0f} min wall, torch "
        f"{result['environment']['torch']}, 1 thread, shared 2-core CPU).",
        "",
        f"**Frontier** (tuning seed {result['seed']}, never reported; 15 cells: 5 base methods "
        "x random 10 %, random 1 %, class; mean base-method Avg. Gap "
        f"{result['frontier'][0]['base_gap_all']:.2f})",
        "",
    ]
    frontier = []
    for row in result["frontier"][1:]:
        budget = {k: v for k, v in row["budget"].items() if k != "label"}
        gap, cpu = row["mean_gap"], row["cpu_fraction"]
        frontier.append(
            [
                row["budget"]["label"],
                f"`{json.dumps(budget)}`",
                *(f"{gap[name]:.2f}" for name in ("random10", "random1", "class")),
                f"{row['mean_gap_all']:.2f}",
                f"{cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f})",
            ]
        )
    header = (
        "budget | settings | Avg. Gap random10 | random1 | class | all | "
        "MCU CPU / retrain: median (min-max)"
    )
    lines += table(header, frontier, align="llrrrrr")
    lines += ["", "**Scale** (default recipe, GA base, random 10 %; 3 MCU runs per pool)", ""]
    lines += table(
        "training pool | retain | forget | retrain CPU s | MCU CPU / retrain",
        (
            [
                row["pool"],
                row["retain"],
                row["forget"],
                f"{row['retrain_cpu_s']:.0f}",
                ", ".join(f"{f:.3f}" for f in row["mcu_cpu_fraction"]),
            ]
            for row in result["scale"]
        ),
        align="rrrrl",
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, quick="tiny smoke run, writes nothing").parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    small = dataclasses.replace(QUICK, scenarios=("random10", "random1", "class"))
    cfg = configure(args.quick, Config(second_scenarios=()), small)
    began = time.perf_counter()
    if args.quick:
        pools, budgets = (600,), BUDGETS[:2]
        quick_tuning = {
            "chosen_base": {name: {m: [1, 0.01] for m in METHODS} for name in cfg.scenarios},
            "chosen_mcu": {name: {"mask_kr": 0.0} for name in cfg.scenarios},
        }

        def get_tuning() -> dict[str, Any]:
            return quick_tuning
    else:
        pools, budgets = POOLS, BUDGETS

        def get_tuning() -> dict[str, Any]:  # written by `mcu_table.py --phase tune`
            return wait_for_json(args.out / "mcu_table_tuning.json", timeout_s=TUNING_TIMEOUT_S)

    seed = cfg.tune_seeds[0]
    result = {
        "command": command(__file__, argv),
        "environment": environment(args.out),
        "seed": seed,
        "scale": scale(cfg, get_tuning, seed, pools),
        "frontier": frontier(cfg, get_tuning, seed, budgets),
    }
    result["wall_time_s"] = time.perf_counter() - began
    print(markdown(result))
    if not args.quick:
        write_json(args.out / "mcu_cost.json", result)
        write_text(args.out / "mcu_cost.md", markdown(result))


if __name__ == "__main__":
    main()
