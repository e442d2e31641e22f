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

import copy
import dataclasses
import statistics
from typing import Any

import torch
from _harness import (
    Base,
    Seconds,
    command,
    configure,
    cosine,
    loader,
    model_factory,
    parser,
    random_subset,
    table,
    timed,
    write_json,
    write_text,
)
from torch import nn
from torch.utils.data import DataLoader, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn import RecipeConfig, carve_holdout, mcu_unlearn, search_path, user_targets
from modeconn_unlearn.datasets import load_digits, load_fashion_mnist
from modeconn_unlearn.zoo import SmallCNN

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


def load_data(cfg: Config) -> tuple[Any, Any]:
    if cfg.dataset == "digits":
        return load_digits(flatten=False)
    train = load_fashion_mnist(train=True, limit=cfg.pool_size)
    return train, load_fashion_mnist(train=False, limit=cfg.test_size)


def plain_passes(model: nn.Module, splits: dict[str, DataLoader[Any]], bn: DataLoader[Any]) -> None:
    """What evaluate_path does at each t, on a plain model: BN re-estimation, one pass per split."""
    for _ in range(POINTS):
        mcu.update_bn(model, bn)
        for data in splits.values():
            mcu.evaluate(model, data)


def path_overhead(cfg: Config, rounds: int, sizes: dict[str, int]) -> dict[str, Any]:
    train, test = load_data(cfg)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    splits = {
        "retain": loader(Subset(retain, range(sizes["retain"]))),
        "forget": loader(Subset(forget, range(min(sizes["forget"], len(forget))))),
        "test": loader(Subset(test, range(sizes["test"]))),
    }
    bn = splits["retain"]
    torch.manual_seed(0)
    start, end = SmallCNN(1, 10, width=cfg.width), SmallCNN(1, 10, width=cfg.width)
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
    pool, _ = load_data(cfg)
    train, holdout = carve_holdout(pool, fraction=0.1, seed=0)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=cfg.forget_ratio, seed=0)
    probe = random_subset(retain, cfg.probe_size, 0)
    common = {"batch_size": cfg.batch_size, "seed": 0, "progress": False}
    train_args = {"epochs": cfg.epochs, "lr": cfg.lr, "scheduler": cosine(cfg.epochs), **common}
    original = mcu.retrain(lambda: make_model(cfg), train, **train_args)
    _, retrain_s = timed(lambda: mcu.retrain(lambda: make_model(cfg), retain, **train_args))
    targets = user_targets(original, probe, holdout)
    theta_u, base_s = timed(
        lambda: Base("RL", 1, 0.01).run(original, retain, forget, seed=0, batch_size=cfg.batch_size)
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
    splits = {"retain": loader(probe), "forget": forget}
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


def rows(
    overhead: dict[str, Any], end_to_end: dict[str, Any], search: dict[str, Any]
) -> list[tuple[str, str, str, str]]:
    """The table's rows: measurement, time (wall or cpu), value, target."""
    d, a = search["dense"], search["adaptive"]
    ratio = f"**{a['points'] / d['points']:.2f}; {search['t_difference']:.3f}**"
    dense = f"dense grid: {d['points']} points, t = {d['t']:.3f} (s)"
    adaptive = f"adaptive search: {a['points']} points, t = {a['t']:.3f} (s)"
    out = [
        (dense, "wall", f"{d['wall_s']:.2f}", ""),
        (adaptive, "wall", f"{a['wall_s']:.2f}", ""),
        ("**adaptive / dense points; abs t difference**", "", ratio, "<= 0.5; <= 0.01"),
    ]
    for kind in ("cpu", "wall"):
        o, e = overhead[kind], end_to_end[kind]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in e.get("mcu_stages_s", {}).items())
        median_path, median_plain = (
            statistics.median(o[k]) for k in ("evaluate_path_s", "plain_passes_s")
        )
        paired = f"**evaluate_path / plain** (median of {overhead['rounds']} paired rounds)"
        plain = f"{POINTS} plain BN re-estimations + evaluation passes (s, median)"
        end_to_end_mcu = "MCU end to end (s)" + (f": {stages}" if stages else "")
        out += [
            (f"evaluate_path, {POINTS} points (s, median)", kind, f"{median_path:.2f}", ""),
            (plain, kind, f"{median_plain:.2f}", ""),
            (paired, kind, f"**{o['ratio_median']:.3f}**", "<= 1.1"),
            ("retrain from scratch (s)", kind, f"{e['retrain_s']:.1f}", ""),
            ("RL, the base method (s)", kind, f"{e['base_rl_s']:.1f}", ""),
            (end_to_end_mcu, kind, f"{e['mcu_s']:.1f}", ""),
            ("**MCU / retrain**", kind, f"**{e['mcu_over_retrain']:.2f}**", "< 1"),
            ("(RL + MCU) / retrain", kind, f"{e['rl_plus_mcu_over_retrain']:.2f}", "< 1"),
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    cli = parser(__doc__, quick="tiny smoke run, writes nothing")
    cli.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    cli.add_argument("--dataset", choices=("fashion", "digits"), default="fashion")
    args = cli.parse_args(argv)
    cfg = configure(args.quick, Config(), QUICK, threads=args.threads, dataset=args.dataset)
    sizes = (
        {"retain": 200, "forget": 50, "test": 100}
        if args.quick
        else {"retain": 1000, "forget": 500, "test": 1000}
    )
    overhead = path_overhead(cfg, rounds=1 if args.quick else 3, sizes=sizes)
    end_to_end, search = mcu_vs_retrain(cfg)
    text = "\n".join(
        table(
            "measurement | time | value | target",
            rows(overhead, end_to_end, search),
            align="llrr",
        )
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n{text}")
    if args.quick:
        return
    line = command(__file__, argv)
    result = {
        "command": line,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": dataclasses.asdict(cfg),
        "path_overhead": overhead,
        "mcu_vs_retrain": end_to_end,
        "path_search": search,
    }
    write_json(args.out / "path_eval.json", result)
    write_text(
        args.out / "path_eval.md",
        f"Command: `{line}` (torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        "shared 2-core CPU). Path overhead: SmallCNN width "
        f"{cfg.width} (BatchNorm) on Fashion-MNIST, splits of {sizes_text(overhead)} images, "
        f"BatchNorm statistics re-estimated on the {overhead['bn_samples']} retain samples at "
        "every point by both sides. Path search and end to end: the regime of mcu_table.py "
        "(memorising BatchNorm CNN), random 10% forgetting, seed 0, mcu_unlearn defaults. "
        "CPU time is the process's own (one thread), which other processes on the machine "
        "disturb far less than wall time.\n\n" + text + "\n",
    )


if __name__ == "__main__":
    main()
