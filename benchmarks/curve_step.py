"""Curve training step vs plain training step, measured side by side.

For each model the script times, interleaved in one run on the same inputs,
one SGD step (zero_grad, forward, cross-entropy, backward, momentum step) of

* the plain model,
* a 3-bend Bezier CurveModel with fixed ends (all middle entries trainable),
* the same curve with a random 10% element mask on every parameter,

and prints the median ratio to the plain step, plus the trainable and
optimizer-state size of the masked curve relative to the unmasked one.

Usage:
    python benchmarks/curve_step.py            # full (a few minutes on 2 cores)
    python benchmarks/curve_step.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modeconn_unlearn import CurveModel
from modeconn_unlearn.zoo import resnet20

RESULTS = Path(__file__).parent / "results"


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3072, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step._optimizer = optimizer  # type: ignore[attr-defined]
    return step


def state_numel(step: Callable[[], None], model: nn.Module) -> int:
    optimizer = step._optimizer  # type: ignore[attr-defined]
    params = sum(p.numel() for p in model.parameters())
    states = sum(
        v.numel() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return params + states


def random_mask(model: nn.Module, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) < fraction for n, p in model.named_parameters()}


def measure(
    name: str,
    build: Callable[[], nn.Module],
    shape: tuple[int, ...],
    batch: int,
    repeats: int,
    rounds: int,
) -> dict[str, float | str | int]:
    torch.manual_seed(0)
    start, end = build(), build()
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    plain = build()
    curve = CurveModel(start, start=start, end=end)
    masked = CurveModel(start, start=start, end=end, mask=random_mask(start, 0.1, 0))
    steps = {
        "plain": make_step(plain, x, y),
        "curve": make_step(curve, x, y),
        "masked": make_step(masked, x, y),
    }
    for step in steps.values():
        for _ in range(2):
            step()
    # Steps of one round run back to back, so a round's ratios share the machine's load;
    # the median over rounds discards rounds disturbed by other processes.
    ratios: dict[str, list[float]] = {"curve": [], "masked": [], "masked_vs_curve": []}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        took = {}
        for key, step in steps.items():
            begin = time.perf_counter()
            for _ in range(repeats):
                step()
            took[key] = (time.perf_counter() - begin) / repeats
            times[key].append(took[key])
        ratios["curve"].append(took["curve"] / took["plain"])
        ratios["masked"].append(took["masked"] / took["plain"])
        ratios["masked_vs_curve"].append(took["masked"] / took["curve"])
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "batch": batch,
        "plain_ms": 1e3 * median["plain"],
        "curve_ms": 1e3 * median["curve"],
        "masked_ms": 1e3 * median["masked"],
        "curve_over_plain": statistics.median(ratios["curve"]),
        "masked_over_plain": statistics.median(ratios["masked"]),
        "masked_over_curve": statistics.median(ratios["masked_vs_curve"]),
        "masked_state_over_curve_state": state_numel(steps["masked"], masked)
        / state_numel(steps["curve"], curve),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, rounds = (1, 2) if args.quick else (1, 25)
    cases = [
        ("ResNet-20", resnet20, (3, 32, 32), 128, {"curve_over_plain": 1.03}),
        ("MLP 3072-1024-1024-10", mlp, (3, 32, 32), 128, {"curve_over_plain": 1.25}),
        ("MLP 3072-1024-1024-10", mlp, (3, 32, 32), 32, {"curve_over_plain": 1.5}),
    ]
    if args.quick:
        cases = [(n, b, s, 8, t) for n, b, s, _, t in cases[1:2]]
    rows = []
    for name, build, shape, batch, targets in cases:
        row = measure(name, build, shape, batch, repeats, rounds)
        row["target_curve_over_plain"] = targets["curve_over_plain"]
        rows.append(row)
    header = (
        "| model | batch | plain ms | curve ms | curve/plain (target) | masked/curve time "
        "(target <= 1) | masked/curve state (target <= 0.12) |\n|---|---|---|---|---|---|---|"
    )
    lines = [header] + [
        f"| {r['model']} | {r['batch']} | {r['plain_ms']:.1f} | {r['curve_ms']:.1f} | "
        f"{r['curve_over_plain']:.3f} (<= {r['target_curve_over_plain']}) | "
        f"{r['masked_over_curve']:.3f} | {r['masked_state_over_curve_state']:.3f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n{table}")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "curve_step.json").write_text(json.dumps(rows, indent=2))
        (RESULTS / "curve_step.md").write_text(
            f"Command: `python benchmarks/curve_step.py` (torch {torch.__version__}, "
            f"{args.threads} threads)\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
