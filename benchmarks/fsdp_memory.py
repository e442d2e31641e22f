"""Per-rank memory of a full-parameter curve: sharded bends against replicated ones.

Measured, not computed: for world sizes 1 and 2 (CPU processes, gloo backend,
started here with ``torch.multiprocessing``), each rank builds the same curve
over a stack of blocks, then either shards its bends (``shard_curve``, with
``reshard_after_forward`` off: "sharded, kept", or on: "sharded, resharded") or
keeps them whole (wrapped in ``DistributedDataParallel`` past one rank, as
``fit_curve`` does), and runs a few Adam steps. Every (layout, world size) runs
in fresh processes, so the peaks do not mix. Per rank it reports:

* bends, gradients and optimizer state: the bytes of the local tensors
  (the curve's parameters and buffers, their ``.grad``, Adam's moments);
* resident memory (RSS, from ``/proc/self/statm``) above the process's
  baseline after ``import torch``: after the steps, and the peak during them
  (sampled every millisecond), and the peak over the whole run, which includes
  building the whole curve before sharding it. Between building and training,
  freed memory is handed back to the system (``malloc_trim``), in every layout,
  and blocks over 128 KiB are always mapped on their own (a fixed mmap threshold),
  so RSS follows the live tensors;
* for the two sharded layouts, the wall-clock time of a training step (forward,
  backward, Adam), timed apart: both curves in the same processes (no memory sampling,
  glibc's usual allocation), their steps taken in turn, so that other load on the
  machine slows both alike.

Usage:
    python benchmarks/fsdp_memory.py              # full run, results committed
    python benchmarks/fsdp_memory.py --quick      # smoke run, about a minute
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _harness import PeakMemory, command, parser, rss, table, timed, write_json, write_text
from torch import nn

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.training import shard_curve
from modeconn_unlearn.training.distributed import no_forward_buffer_sync

WORLDS = (1, 2)
#: Layout -> ``shard_curve``'s ``reshard_after_forward`` (``None``: not sharded).
LAYOUTS = {"replicated": None, "sharded, kept": False, "sharded, resharded": True}
MB = 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class Blocks(nn.Module):
    """An input projection, ``depth`` residual blocks in a ModuleList, a head."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.inp(x)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build(config: dict, reshard: bool | None, world: int) -> tuple[CurveModel, nn.Module]:
    """The curve over ``Blocks``, sharded (``reshard`` a bool) or not, and what to call."""
    torch.manual_seed(0)
    start = Blocks(config["width"], config["depth"])
    end = Blocks(config["width"], config["depth"])
    curve = CurveModel(start, start=start, end=end)
    del start, end
    if reshard is not None:
        return shard_curve(curve, reshard_after_forward=reshard), curve
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(curve, **no_forward_buffer_sync())
        return curve, ddp
    return curve, curve


def trainer(
    curve: CurveModel, model: nn.Module, batch: int, rank: int
) -> tuple[Callable[[], float], torch.optim.Adam]:
    """A step function (one Adam step on a fresh random batch, its wall-clock seconds)."""
    optimizer = torch.optim.Adam(curve.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1 + rank)
    curve.train()

    def step() -> float:
        x = torch.randn(batch, 64, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - began

    return step, optimizer


def worker(rank: int, world: int, port: int, layout: str, config: dict, out: Path) -> None:
    torch.set_num_threads(1)
    # A fixed mmap threshold: glibc otherwise raises it to the size of the last large block
    # freed, and serves the next ones from a heap it rarely shrinks, so RSS would show the
    # allocator's history rather than the live tensors.
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    try:
        baseline = rss()
        curve, model = build(config, LAYOUTS[layout], world)
        # Give the unsharded build's freed memory back to the system (glibc keeps it otherwise),
        # so that RSS shows what the layout holds; done for every layout.
        gc.collect()
        libc.malloc_trim(0)
        step, optimizer = trainer(curve, model, config["batch"] // world, rank)
        with PeakMemory(every_s=0.001) as sampler:
            for _ in range(config["steps"]):
                step()
        params = list(curve.groups.parameters())
        state = [v for s in optimizer.state.values() for v in s.values() if v.dim() > 0]
        record = {
            "rank": rank,
            "bends_bytes": tensor_bytes([*params, *curve.groups.buffers()]),
            "grad_bytes": tensor_bytes([p.grad for p in params if p.grad is not None]),
            "optimizer_bytes": tensor_bytes(state),
            "rss_after_steps": rss() - baseline,
            "rss_peak_steps": sampler.peak - baseline,
            "rss_peak_run": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline,
        }
        (out / f"{layout}_{world}_{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()
    _leave()


def timing_worker(rank: int, world: int, port: int, config: dict, out: Path) -> None:
    """Both sharded layouts in the same processes, their steps taken in turn (paired)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    try:
        steps = {
            reshard: trainer(*build(config, reshard, world), config["batch"] // world, rank)[0]
            for reshard in (False, True)
        }
        for step in steps.values():  # warm-up: Adam's state, first allocations
            step()
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for turn in range(config["steps"]):
            for reshard in (False, True) if turn % 2 == 0 else (True, False):
                seconds[reshard].append(steps[reshard]())
        record = {"kept": seconds[False], "resharded": seconds[True]}
        (out / f"timing_{world}_{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()
    _leave()


def _leave() -> None:
    """End a worker whose record is written: skip the interpreter's teardown, where gloo's
    threads sometimes abort the process ("terminate called without an active exception")
    after the run has succeeded."""
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(config: dict, scratch: Path) -> tuple[list[dict], list[dict]]:
    """The memory rows (one per world size and layout) and the timing rows (per world)."""
    rows, timings = [], []
    for world in WORLDS:
        for layout in LAYOUTS:
            args = (world, free_port(), layout, config, scratch)
            mp.start_processes(worker, args=args, nprocs=world, join=True, start_method="spawn")
            ranks = [
                json.loads((scratch / f"{layout}_{world}_{r}.json").read_text())
                for r in range(world)
            ]
            # The rank that holds most (the slices are equal; padding is counted).
            worst = max(ranks, key=lambda r: r["bends_bytes"] + r["optimizer_bytes"])
            rows.append({"world": world, "layout": layout, **worst})
        args = (world, free_port(), config, scratch)
        mp.start_processes(timing_worker, args=args, nprocs=world, join=True, start_method="spawn")
        first = json.loads((scratch / f"timing_{world}_0.json").read_text())
        ratios = [b / a for a, b in zip(first["kept"], first["resharded"], strict=True)]
        timings.append(
            {
                "world": world,
                "kept_seconds": statistics.median(first["kept"]),
                "resharded_seconds": statistics.median(first["resharded"]),
                "ratio": statistics.median(ratios),
                "steps": first,
            }
        )
    return rows, timings


def markdown(rows: list[dict], timings: list[dict], config: dict, command: str) -> str:
    params = config["params"]
    header = (
        "world | layout | bends + grad + Adam (tensors) | share of 6bP | RSS after steps | "
        "RSS peak in steps | RSS peak in run"
    )
    cells = []
    for row in rows:
        total = row["bends_bytes"] + row["grad_bytes"] + row["optimizer_bytes"]
        cells.append(
            [
                row["world"],
                row["layout"],
                f"{total / MB:.1f}",
                f"{total / (6 * 4 * params):.2f}",
                f"{row['rss_after_steps'] / MB:.1f}",
                f"{row['rss_peak_steps'] / MB:.1f}",
                f"{row['rss_peak_run'] / MB:.1f}",
            ]
        )
    timing_cells = [
        [
            t["world"],
            f"{t['kept_seconds']:.3f}",
            f"{t['resharded_seconds']:.3f}",
            f"{t['ratio']:.2f}",
        ]
        for t in timings
    ]
    lines = [
        f"Command: `{command}`; torch {torch.__version__}, CPU, gloo.",
        "",
        f"Full-parameter curve (3 bends, fixed ends) over a {config['depth']}-block MLP of "
        f"width {config['width']}: P = {params:,} parameters (fp32); "
        f"{config['steps']} Adam steps at a global batch of {config['batch']}. "
        "MiB (2^20 bytes) per rank, the rank that holds most. "
        "Sharded, kept: `shard_curve(curve, reshard_after_forward=False)`, autograd keeps every "
        "block's gathered weights until backward; resharded: `reshard_after_forward=True` (the "
        "default), they are gathered again in backward.",
        "",
        *table(header, cells, align="llrrrrr"),
        "",
        f"Step time (rank 0, seconds): both sharded layouts in the same processes, "
        f"{config['steps']} steps each taken in turn after one warm-up step; the medians, and "
        "the median of the paired ratios resharded / kept.",
        "",
        *table("world | kept | resharded | ratio", timing_cells, align="lrrr"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, quick="small model, about a minute").parse_args(argv)
    config = (
        {"width": 256, "depth": 4, "steps": 3, "batch": 32}
        if args.quick
        else {"width": 1024, "depth": 16, "steps": 10, "batch": 64}
    )
    config["params"] = sum(p.numel() for p in Blocks(config["width"], config["depth"]).parameters())
    args.out.mkdir(parents=True, exist_ok=True)
    name = "fsdp_memory_quick" if args.quick else "fsdp_memory"
    with tempfile.TemporaryDirectory() as scratch:
        (rows, timings), took = timed(lambda: measure(config, Path(scratch)))
    run = command("fsdp_memory.py", argv)
    text = markdown(rows, timings, config, run)
    print(text)
    result = {"command": run, "torch": torch.__version__, "config": config, "rows": rows}
    result["timings"] = timings
    result["seconds"] = round(took.wall, 1)
    write_json(args.out / f"{name}.json", result)
    write_text(args.out / f"{name}.md", f"# Per-rank memory of a full-parameter curve\n\n{text}")


if __name__ == "__main__":
    main()
