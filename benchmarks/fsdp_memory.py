"""Per-rank memory of a full-parameter curve: sharded bends against replicated ones.

Measured, not computed: for world sizes 1 and 2 (CPU processes, gloo backend,
started here with ``torch.multiprocessing``), each rank builds the same curve
over a stack of blocks, then either shards its bends (``shard_curve``) or keeps
them whole (wrapped in ``DistributedDataParallel`` past one rank, as
``fit_curve`` does), and runs a few Adam steps. Every (layout, world size) runs
in fresh processes, so the peaks do not mix. Per rank it reports:

* bends, gradients and optimizer state: the bytes of the local tensors
  (the curve's parameters and buffers, their ``.grad``, Adam's moments);
* resident memory (RSS, from ``/proc/self/statm``) above the process's
  baseline after ``import torch``: after the steps, and the peak during them
  (sampled every millisecond), and the peak over the whole run, which includes
  building the whole curve before sharding it. Between building and training,
  freed memory is handed back to the system (``malloc_trim``), in both layouts.

Usage:
    python benchmarks/fsdp_memory.py              # full run, results committed
    python benchmarks/fsdp_memory.py --quick      # < 1 min smoke run
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _harness import PeakMemory, command, parser, rss, table, timed, write_json, write_text
from torch import nn

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.training import shard_curve

WORLDS = (1, 2)
LAYOUTS = ("replicated", "sharded")
MB = 2**20


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


def worker(rank: int, world: int, port: int, layout: str, config: dict, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    try:
        baseline = rss()
        torch.manual_seed(0)
        start = Blocks(config["width"], config["depth"])
        end = Blocks(config["width"], config["depth"])
        curve = CurveModel(start, start=start, end=end)
        del start, end
        model: nn.Module = curve
        if layout == "sharded":
            shard_curve(curve)
        elif world > 1:
            model = nn.parallel.DistributedDataParallel(curve, broadcast_buffers=False)
        # Give the unsharded build's freed memory back to the system (glibc keeps it otherwise),
        # so that RSS shows what the layout holds; done for both layouts.
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        optimizer = torch.optim.Adam(curve.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1 + rank)
        batch = config["batch"] // world
        curve.train()
        with PeakMemory(every_s=0.001) as sampler:
            for _ in range(config["steps"]):
                x = torch.randn(batch, 64, generator=gen)
                y = torch.randint(0, 10, (batch,), generator=gen)
                optimizer.zero_grad(set_to_none=False)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(config: dict, scratch: Path) -> list[dict]:
    rows = []
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
    return rows


def markdown(rows: list[dict], config: dict, command: str) -> str:
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
    lines = [
        f"Command: `{command}`; torch {torch.__version__}, CPU, gloo.",
        "",
        f"Full-parameter curve (3 bends, fixed ends) over a {config['depth']}-block MLP of "
        f"width {config['width']}: P = {params:,} parameters (fp32); "
        f"{config['steps']} Adam steps at a global batch of {config['batch']}. "
        "MiB (2^20 bytes) per rank, the rank that holds most.",
        "",
        *table(header, cells, align="llrrrrr"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, quick="small model, < 1 min").parse_args(argv)
    config = (
        {"width": 256, "depth": 4, "steps": 3, "batch": 32}
        if args.quick
        else {"width": 1024, "depth": 16, "steps": 5, "batch": 64}
    )
    config["params"] = sum(p.numel() for p in Blocks(config["width"], config["depth"]).parameters())
    args.out.mkdir(parents=True, exist_ok=True)
    name = "fsdp_memory_quick" if args.quick else "fsdp_memory"
    scratch = args.out / f".{name}_ranks"
    scratch.mkdir(exist_ok=True)
    rows, took = timed(lambda: measure(config, scratch))
    shutil.rmtree(scratch)
    run = command("fsdp_memory.py", argv)
    text = markdown(rows, config, run)
    print(text)
    result = {"command": run, "torch": torch.__version__, "config": config, "rows": rows}
    result["seconds"] = round(took.wall, 1)
    write_json(args.out / f"{name}.json", result)
    write_text(args.out / f"{name}.md", f"# Per-rank memory of a full-parameter curve\n\n{text}")


if __name__ == "__main__":
    main()
