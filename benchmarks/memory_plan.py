"""Memory per GPU of a curve over a 7B and a 70B Llama, computed from the layout.

Nothing is measured: the parameter counts come from the Llama-2 architectures
(untied embeddings), and the bytes from what a 3-bend curve with fixed ends
keeps (two ends, one control point, the control point's gradient and its two
Adam moments, all in one dtype of ``b`` bytes per entry):

* full-parameter curve under ``shard_curve``, its bends sharded along their entries:
  ``b * (3P + P + 2P) / W`` = ``6bP / W`` (measured on CPU by ``fsdp_memory.py``);
* full-parameter curve replicated (one GPU, or DDP today): ``6bP``;
* LoRA curve under ``shard_curve``: the frozen base sharded, the adapter bends
  replicated: ``b * (P / W + 6A)``;

where ``P`` counts the model's parameters, ``A`` the adapters' and ``W`` the
GPUs. Not counted: activations, the block FSDP gathers in flight (``b`` times one
block's parameters, twice with prefetch), the gathered weights at ``t`` of a
sharded full-parameter curve (one block's at a time without gradients; during a training
step autograd keeps every block's until backward), communication buffers and the CUDA
context.

Usage:
    python benchmarks/memory_plan.py    # prints the markdown table of docs/scale_out.md
"""

from __future__ import annotations

from dataclasses import dataclass

#: Adapters on every linear projection of a decoder block.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 16
DTYPES = {"bf16": 2, "fp32": 4}
WORLDS = (8, 64)
GB = 1e9


@dataclass(frozen=True)
class Llama:
    """The sizes of a Llama architecture that fix its parameter count."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    def projections(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` features of each linear projection of one decoder block."""
        kv = self.hidden // self.heads * self.kv_heads
        h, m = self.hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, m),
            "up_proj": (h, m),
            "down_proj": (m, h),
        }

    def block_params(self) -> int:
        """One decoder block: its projections and two RMSNorm weights."""
        return sum(i * o for i, o in self.projections().values()) + 2 * self.hidden

    def params(self) -> int:
        """``P``: embeddings, the blocks, the final norm and the (untied) head."""
        return self.layers * self.block_params() + 2 * self.vocab * self.hidden + self.hidden

    def lora_params(self, rank: int = LORA_RANK, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        """``A``: ``rank * (in + out)`` per adapted projection, in every block."""
        projections = self.projections()
        return self.layers * sum(rank * sum(projections[name]) for name in targets)


LLAMA_7B = Llama("Llama-2-7B", hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32)
LLAMA_70B = Llama("Llama-2-70B", hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8)


def full_curve_bytes(params: int, dtype_bytes: int, world: int) -> float:
    """``6bP / W``: ends, control point, its gradient and Adam moments, sharded over ``world``."""
    return dtype_bytes * 6 * params / world


def lora_curve_bytes(params: int, adapters: int, dtype_bytes: int, world: int) -> float:
    """``b (P / W + 6A)``: the frozen base sharded, the adapter bends and their state replicated."""
    return dtype_bytes * (params / world + 6 * adapters)


def table() -> str:
    """The markdown table: GB (1e9 bytes) per GPU, replicated and over 8 and 64 GPUs."""
    header = ["model", "curve", "dtype", "replicated (1 GPU / DDP)"]
    header += [f"{w} GPUs" for w in WORLDS]
    rows = [header, ["---"] * len(header)]
    for model in (LLAMA_7B, LLAMA_70B):
        p, a = model.params(), model.lora_params()
        for curve in ("full", f"LoRA r={LORA_RANK}"):
            for dtype, b in DTYPES.items():
                if curve == "full":
                    cells = [full_curve_bytes(p, b, w) for w in (1, *WORLDS)]
                else:
                    cells = [lora_curve_bytes(p, a, b, w) for w in (1, *WORLDS)]
                rows.append([model.name, curve, dtype, *(f"{c / GB:.1f}" for c in cells)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def counts() -> str:
    """``P`` and ``A`` of each model, as the doc quotes them."""
    return "\n".join(
        f"- {m.name}: P = {m.params():,} parameters, A = {m.lora_params():,} adapter "
        f"parameters (r={LORA_RANK}, all 7 projections), one block = {m.block_params():,}."
        for m in (LLAMA_7B, LLAMA_70B)
    )


if __name__ == "__main__":
    print(counts())
    print()
    print(table())
