"""A curve over LoRA adapters vs a plain LoRA training step, measured side by side.

A small Llama causal LM (built from a config, random weights) is wrapped with a PEFT
LoRA config. The script times, interleaved in one run on the same tokens, one AdamW step
(zero_grad, forward with labels, backward, step) of

* ``lora``: the plain PEFT model (only the adapters are trainable),
* ``curve``: a 3-bend Bezier CurveModel between two adapters on the same frozen base.

Each round runs both back to back (alternating the order); the table gives the median
ratio over the rounds with its spread (min-max). It also counts the bytes of distinct
tensor storages the curve holds (template parameters and buffers, bends, gradients) against
the budget ``base once + 4 x adapters`` (two anchors, one middle bend, its gradient; the
template's adapters share the start anchor), with the optimizer state listed apart
(AdamW keeps 2 x the trained tensors for both steps). Activations are not counted.

With one thread, ``--clock cpu`` (the default there) times the process's CPU time
(``time.process_time``), which leaves out the time it waits for a core on a busy machine.

Usage:
    python benchmarks/lora_step.py            # full run
    python benchmarks/lora_step.py --quick    # smoke run for CI (< 1 minute)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterable

import peft
import torch
import transformers
from _harness import parser, table, write_json, write_text
from torch import nn

from modeconn_unlearn import CurveModel


def lora_model(hidden: int, layers: int, vocab: int, rank: int) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    base = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
    )
    return peft.get_peft_model(base, lora)


def make_step(
    module: nn.Module, params: Iterable[nn.Parameter], tokens: torch.Tensor
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    return step, optimizer


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure(args: argparse.Namespace) -> dict[str, object]:
    start = lora_model(args.hidden, args.layers, args.vocab, args.rank)
    end = copy.deepcopy(start)
    with torch.no_grad():
        for p in end.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02)
    plain = copy.deepcopy(start)
    curve = CurveModel(start, start=start, end=end)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
    steps = {}
    optimizers = {}
    for key, module, params in (
        ("lora", plain, [p for p in plain.parameters() if p.requires_grad]),
        ("curve", curve, list(curve.parameters())),
    ):
        steps[key], optimizers[key] = make_step(module, params, tokens)
    for step in steps.values():
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for index in range(args.rounds):
        for key in order if index % 2 == 0 else order[::-1]:
            begin = clock()
            for _ in range(args.repeats):
                steps[key]()
            times[key].append((clock() - begin) / args.repeats)
    ratios = [c / p for c, p in zip(times["curve"], times["lora"], strict=True)]

    adapters = [p for p in start.parameters() if p.requires_grad]
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapters)
    base_bytes = sum(
        p.numel() * p.element_size() for p in start.parameters() if not p.requires_grad
    )
    buffers_bytes = sum(b.numel() * b.element_size() for b in start.buffers())
    template = curve.template
    held = storage_bytes(
        [
            *template.parameters(),
            *template.buffers(),
            *curve.parameters(),
            *curve.buffers(),
            *(p.grad for p in curve.parameters() if p.grad is not None),
        ]
    )
    optimizer_bytes = {
        key: storage_bytes(
            v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0
        )
        for key, opt in optimizers.items()
    }
    budget = base_bytes + 2 * buffers_bytes + 4 * adapter_bytes
    return {
        "model": f"Llama {args.layers}x{args.hidden}, vocab {args.vocab}, LoRA r={args.rank} "
        "on q/k/v/o",
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "lora_ms": 1e3 * statistics.median(times["lora"]),
        "curve_ms": 1e3 * statistics.median(times["curve"]),
        "curve_over_lora": statistics.median(ratios),
        "curve_over_lora_min": min(ratios),
        "curve_over_lora_max": max(ratios),
        "ratios": ratios,
        "base_bytes": base_bytes,
        "adapter_bytes": adapter_bytes,
        "model_buffer_bytes": buffers_bytes,
        "curve_held_bytes": held,
        "budget_bytes": budget,
        "held_over_budget": held / budget,
        "optimizer_state_bytes": optimizer_bytes,
    }


def main() -> None:
    cli = parser(__doc__, quick="smoke run for CI (< 1 minute)")
    cli.add_argument("--threads", type=int, default=2)
    cli.add_argument("--rounds", type=int, default=9)
    cli.add_argument("--repeats", type=int, default=2)
    cli.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="wall time, or the process's CPU time (default: cpu with 1 thread, else wall)",
    )
    args = cli.parse_args()
    args.clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    torch.set_num_threads(args.threads)
    args.hidden, args.layers, args.vocab, args.rank, args.batch, args.seq = (
        (64, 2, 256, 4, 2, 16) if args.quick else (256, 4, 2000, 8, 4, 128)
    )
    if args.quick:
        args.rounds, args.repeats = 3, 1
    row = measure(args)
    mib = 2**20
    load = os.getloadavg()
    setting = (
        f"torch {torch.__version__}, peft {peft.__version__}, {torch.get_num_threads()} threads, "
        f"CPU only (no GPU), {args.clock} clock, median of {args.rounds} interleaved rounds "
        "(min-max in "
        f"parentheses); load average at the end {load[0]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        "model | batch x seq | LoRA step ms | curve step ms | curve/LoRA (target <= 1.15) | "
        "curve holds MiB | budget MiB (base + 4 x adapters) | held/budget"
    )
    cells = [
        row["model"],
        f"{row['batch']} x {row['seq']}",
        f"{row['lora_ms']:.1f}",
        f"{row['curve_ms']:.1f}",
        f"{row['curve_over_lora']:.3f} "
        f"({row['curve_over_lora_min']:.2f}-{row['curve_over_lora_max']:.2f})",
        f"{row['curve_held_bytes'] / mib:.2f}",
        f"{row['budget_bytes'] / mib:.2f}",
        f"{row['held_over_budget']:.3f}",
    ]
    text = "\n".join(table(header, [cells], align="l" * len(cells)))
    detail = (
        f"Base {row['base_bytes'] / mib:.2f} MiB, adapters {row['adapter_bytes'] / mib:.3f} MiB, "
        f"model buffers {row['model_buffer_bytes'] / mib:.3f} MiB (kept at both ends, counted "
        "twice in the budget); optimizer state (not in the budget): "
        + ", ".join(f"{k} {v / mib:.3f} MiB" for k, v in row["optimizer_state_bytes"].items())
    )
    print(f"{setting}\n{text}\n{detail}")
    if not args.quick:
        write_json(args.out / "lora_step.json", row)
        write_text(
            args.out / "lora_step.md",
            f"Command: `python benchmarks/lora_step.py --threads {args.threads}`\n\n"
            f"{setting}\n\n{text}\n\n{detail}\n",
        )


if __name__ == "__main__":
    main()
