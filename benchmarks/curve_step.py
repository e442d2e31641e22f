"""Curve training step vs plain training step, measured side by side.

For each model the script times, interleaved in one run on the same inputs,
one SGD step (zero_grad, forward, cross-entropy, backward, momentum step) of

* ``plain``: the plain model,
* ``curve``: a 3-bend Bezier CurveModel with fixed ends (all middle entries trainable),
* ``tensors``: the same curve with MCU's per-tensor mask (``mcu.layer_mask``, k=0.1, on
  random data): whole tensors trainable, the others constants with no weight gradient,
* ``late``: the same curve with the whole tensors nearest the output trainable, walking
  back until they cover 10 % of the entries (a per-tensor mask whose backward can stop early),
* ``elements``: the same curve with a 10 % element mask (``mcu.random_mask``, sparsity 0.9),
* ``compiled``: the unmasked curve under ``torch.compile`` (inductor), and
  ``compiled_plain``: the plain model under ``torch.compile``, when compiling is on.

Each round runs every variant back to back (rotating the order), so a round's ratios
share the machine's load; the table gives the median ratio over the rounds and its
spread (min-max). The machine may be shared with other jobs: compare ratios, not times.
With one thread, ``--clock cpu`` (the default there) times the process's CPU time
(``time.process_time``), which leaves out the time it waits for a core on a busy machine.

By default every variant runs in a process of its own (``--processes per-variant``) and the
parent asks each in turn for its steps. In one shared process (``--processes shared``) the
variants' allocations share one heap: how often a step gets fresh pages from the kernel
(minor page faults, also reported) then depends on what the other variants allocated
before it, and on ResNet-20 that swings a step's time by tens of percent either way.

Usage:
    python benchmarks/curve_step.py                  # full run, compiles the MLP cases
    python benchmarks/curve_step.py --compile all    # also compile ResNet-20 (slow to compile)
    python benchmarks/curve_step.py --quick          # smoke run for CI (< 1 minute)
    python benchmarks/curve_step.py --processes shared   # all variants in one process
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
from _harness import parser, table, write_json, write_text
from torch import nn
from torch.utils.data import TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn import CurveModel
from modeconn_unlearn.zoo import MLP, resnet20

NOTES = """Notes:

- Ratios compare variants timed in the same round; on a machine shared with other jobs
  (see the load average) the min-max spread is wide, so read the medians with it.
- Each variant runs in a process of its own unless the command says `--processes shared`.
  The page-fault column counts the fresh pages a step got from the kernel (median per step).
  On ResNet-20 the plain step and the curve step both fault on tens of thousands of pages
  per step: the activations' buffers, freed and allocated again by the C allocator every
  step. The curve's own buffers (its combined weights and the bends' gradient, 1 MiB each)
  are a few hundred pages of those. In one shared process the counts of the two differ
  (the variants' allocations interleave on one heap) and so do their times.
- `layer_mask` (MCU's per-tensor mask) on ResNet-20 selects `conv1` and the affine parameters
  of every BatchNorm (small tensors score high per entry), so the backward pass still runs
  through every layer and only part of the weight gradients is skipped. The late-tensor mask
  (whole tensors nearest the output) lets the backward pass stop early.
- Tensors without trainable entries are constants: autograd computes no weight gradient for
  them. Their values still move with t, so every step recombines all weights (one pass per
  bend, as `lerp`s); that pass is what separates the unmasked curve from the plain step on
  the wide MLP, whose weights are large next to its compute.
"""
Step = Callable[[], None]
PROCESSES = {
    "per-variant": "each variant in a process of its own",
    "shared": "all variants in one process",
}


def wide_mlp() -> nn.Module:
    return MLP(3072, (1024, 1024), num_classes=10)


#: The model builders by name, for worker processes.
BUILDERS: dict[str, Callable[[], nn.Module]] = {"resnet20": resnet20, "wide_mlp": wide_mlp}


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    batch: int
    curve_target: float
    compile: bool
    shape: tuple[int, ...] = (3, 32, 32)


def make_step(module: nn.Module, params: Iterable[nn.Parameter], x, y) -> tuple[Step, object]:
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()

    return step, optimizer


def state_numel(module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = sum(p.numel() for p in module.parameters())
    states = sum(
        v.numel() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return params + states


def late_tensor_mask(model: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    mask, count = {}, 0
    for name, p in reversed(params):
        mask[name] = torch.full(p.shape, count < fraction * total, dtype=torch.bool)
        count += p.numel() if mask[name].all() else 0
    return mask


def covered(mask: dict[str, torch.Tensor]) -> float:
    return sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())


def variants(case: Case) -> tuple[dict[str, Step], dict[str, object]]:
    """Every variant's step on the same models and inputs (deterministic from seed 0)."""
    torch.manual_seed(0)
    start, end, plain = case.build(), case.build(), case.build()
    x, y = torch.randn(case.batch, *case.shape), torch.randint(0, 10, (case.batch,))
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(32, *case.shape, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    )
    tensor_mask = mcu.layer_mask(start, data, data, k=0.1)
    element_mask = mcu.random_mask(start, sparsity=0.9, seed=0)
    late_mask = late_tensor_mask(start, 0.1)
    modules = {
        "plain": plain,
        "curve": CurveModel(start, start=start, end=end),
        "tensors": CurveModel(start, start=start, end=end, mask=tensor_mask),
        "late": CurveModel(start, start=start, end=end, mask=late_mask),
        "elements": CurveModel(start, start=start, end=end, mask=element_mask),
    }
    steps: dict[str, Step] = {}
    optimizers = {}
    for key, module in modules.items():
        steps[key], optimizers[key] = make_step(module, module.parameters(), x, y)
    if case.compile:
        compiled_curve = CurveModel(start, start=start, end=end)
        for key, module in (("compiled", compiled_curve), ("compiled_plain", case.build())):
            steps[key], _ = make_step(torch.compile(module), module.parameters(), x, y)
    facts = {
        "tensor_mask_fraction": covered(tensor_mask),
        "late_mask_fraction": covered(late_mask),
        "element_mask_fraction": covered(element_mask),
        "elements_state/curve_state": state_numel(modules["elements"], optimizers["elements"])
        / state_numel(modules["curve"], optimizers["curve"]),
    }
    return steps, facts


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages the kernel had to map)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Runner:
    """Runs one variant's steps on request: here, or in a process of its own."""

    def __init__(self, step: Step, clock: Callable[[], float]) -> None:
        self.step, self.clock = step, clock
        begin = time.perf_counter()
        step()  # compiles, for a compiled variant
        self.first_seconds = time.perf_counter() - begin
        for _ in range(2):
            step()

    def run(self, repeats: int) -> tuple[float, float]:
        """Seconds and minor page faults per step over ``repeats`` steps."""
        faults, begin = minor_faults(), self.clock()
        for _ in range(repeats):
            self.step()
        return (self.clock() - begin) / repeats, (minor_faults() - faults) / repeats


def serve(spec: dict[str, Any], key: str, connection: Connection) -> None:
    """Worker process: build the variants, keep ``key``'s, time it whenever asked."""
    torch.set_num_threads(spec["threads"])
    case = Case(spec["name"], BUILDERS[spec["build"]], spec["batch"], 0.0, spec["compile"])
    steps, _ = variants(case)
    step = steps.pop(key)
    del steps
    gc.collect()
    runner = Runner(step, time.process_time if spec["clock"] == "cpu" else time.perf_counter)
    connection.send(runner.first_seconds)
    while (repeats := connection.recv()) is not None:
        connection.send(runner.run(repeats))


class Remote:
    """A :class:`Runner` in a process of its own, so variants share no heap."""

    def __init__(self, spec: dict[str, Any], key: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(spec, key, child), daemon=True)
        self.process.start()
        self.first_seconds = self.connection.recv()

    def run(self, repeats: int) -> tuple[float, float]:
        self.connection.send(repeats)
        return self.connection.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.connection.send(None)
        self.process.join()


#: The ratios of step times, ``numerator/denominator`` by variant.
RATIOS = ("curve/plain", "tensors/plain", "late/plain", "elements/curve")
COMPILED_RATIOS = ("compiled/curve", "compiled/plain", "compiled_plain/plain")


def measure(
    case: Case,
    repeats: int,
    rounds: int,
    clock_name: str,
    threads: int,
    processes: str,
) -> dict[str, object]:
    steps, facts = variants(case)
    if processes == "per-variant":
        spec = {
            "name": case.name,
            "build": case.build.__name__,
            "batch": case.batch,
            "compile": case.compile,
            "threads": threads,
            "clock": clock_name,
        }
        keys = list(steps)
        del steps
        gc.collect()
        runners: dict[str, Runner | Remote] = {key: Remote(spec, key) for key in keys}
    else:
        clock = time.process_time if clock_name == "cpu" else time.perf_counter
        runners = {key: Runner(step, clock) for key, step in steps.items()}
    compile_seconds = {k: r.first_seconds for k, r in runners.items() if k.startswith("compiled")}
    order = list(runners)
    times: dict[str, list[float]] = {k: [] for k in runners}
    faults: dict[str, list[float]] = {k: [] for k in runners}
    for index in range(rounds):
        shift = index % len(order)
        for key in order[shift:] + order[:shift]:
            seconds, fault_count = runners[key].run(repeats)
            times[key].append(seconds)
            faults[key].append(fault_count)
    for runner in runners.values():
        if isinstance(runner, Remote):
            runner.close()
    labels = [*RATIOS, *(COMPILED_RATIOS if case.compile else ())]
    ratios = {
        label: [a / b for a, b in zip(times[num], times[den], strict=True)]
        for label in labels
        for num, den in [label.split("/")]
    }
    return {
        "model": case.name,
        "batch": case.batch,
        "rounds": rounds,
        "repeats": repeats,
        "processes": processes,
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
        "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "ratio_min": {k: min(v) for k, v in ratios.items()},
        "ratio_max": {k: max(v) for k, v in ratios.items()},
        "ratios": ratios,
        **facts,
        "compile_seconds": compile_seconds,
        "curve_target": case.curve_target,
    }


def cell(row: dict, label: str) -> str:
    if label not in row["ratio_median"]:
        return "-"
    return (
        f"{row['ratio_median'][label]:.3f} "
        f"({row['ratio_min'][label]:.2f}-{row['ratio_max'][label]:.2f})"
    )


COLUMNS = (
    "model | batch | plain ms | curve ms | curve/plain (target) | per-tensor mask/plain "
    "(target <= 0.85): layer_mask | late tensors | element mask/curve (target <= 1) | "
    "element mask state/curve (target <= 0.12) | compiled curve/eager curve | "
    "compiled curve/plain | compiled plain/plain | page faults per step: plain, curve"
)


def markdown(rows: list[dict]) -> str:
    return "\n".join(
        table(
            COLUMNS,
            (
                [
                    r["model"],
                    r["batch"],
                    f"{r['ms']['plain']:.1f}",
                    f"{r['ms']['curve']:.1f}",
                    f"{cell(r, 'curve/plain')} (<= {r['curve_target']})",
                    f"{cell(r, 'tensors/plain')} [{100 * r['tensor_mask_fraction']:.0f} % of "
                    "entries]",
                    f"{cell(r, 'late/plain')} [{100 * r['late_mask_fraction']:.0f} %]",
                    cell(r, "elements/curve"),
                    f"{r['elements_state/curve_state']:.3f}",
                    cell(r, "compiled/curve"),
                    cell(r, "compiled/plain"),
                    cell(r, "compiled_plain/plain"),
                    f"{r['faults_per_step']['plain']:.0f}, {r['faults_per_step']['curve']:.0f}",
                ]
                for r in rows
            ),
            align="l" * 13,
        )
    )


def main() -> None:
    cli = parser(__doc__, quick="smoke run for CI (< 1 minute)")
    cli.add_argument("--threads", type=int, default=2)
    cli.add_argument("--rounds", type=int, default=9)
    cli.add_argument("--cases", choices=["all", "resnet", "mlp"], default="all")
    cli.add_argument(
        "--processes",
        choices=["per-variant", "shared"],
        default="per-variant",
        help="time each variant in a process of its own (default), or all in this one",
    )
    cli.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="wall time, or the process's CPU time (default: cpu with 1 thread, else wall)",
    )
    cli.add_argument(
        "--compile",
        choices=["none", "mlp", "all"],
        default="mlp",
        help="which cases also time torch.compile (ResNet-20 takes minutes to compile)",
    )
    args = cli.parse_args()
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    cases = [
        Case("ResNet-20", resnet20, 128, 1.03, args.compile == "all"),
        Case("MLP 3072-1024-1024-10", wide_mlp, 128, 1.25, args.compile != "none"),
        Case("MLP 3072-1024-1024-10", wide_mlp, 32, 1.5, args.compile != "none"),
    ]
    if args.cases != "all":
        cases = [c for c in cases if c.name.lower().startswith(args.cases)]
    repeats = {"ResNet-20": 1}
    rounds = args.rounds
    if args.quick:
        cases = [Case("MLP 3072-1024-1024-10", wide_mlp, 8, 1.5, False)]
        rounds = 3
    rows = [
        measure(
            c,
            1 if args.quick else repeats.get(c.name, 3),
            rounds,
            clock_name,
            args.threads,
            args.processes,
        )
        for c in cases
    ]
    load = os.getloadavg()
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU only (no GPU), "
        f"{clock_name} clock, median of {rounds} interleaved rounds (min-max in parentheses), "
        f"{PROCESSES[args.processes]}; "
        f"load average at the end {load[0]:.1f} on {os.cpu_count()} cores"
    )
    text = markdown(rows)
    print(f"{header}\n{text}")
    if not args.quick:
        write_json(args.out / "curve_step.json", rows)
        command = "python benchmarks/curve_step.py" + "".join(
            f" --{name} {getattr(args, name)}"
            for name in ("threads", "rounds", "compile", "cases", "processes", "clock")
            if getattr(args, name) != cli.get_default(name)
        )
        write_text(
            args.out / "curve_step.md", f"Command: `{command}`\n\n{header}\n\n{text}\n\n{NOTES}"
        )


if __name__ == "__main__":
    main()
