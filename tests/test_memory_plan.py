"""benchmarks/memory_plan.py: parameter counts against transformers/peft, bytes by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_plan():
    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks/memory_plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


plan = _load_plan()


@pytest.mark.parametrize("model", [plan.LLAMA_7B, plan.LLAMA_70B], ids=lambda m: m.name)
def test_counts_match_a_meta_device_llama_with_lora(model) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        hidden_size=model.hidden,
        intermediate_size=model.intermediate,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        num_key_value_heads=model.kv_heads,
        vocab_size=model.vocab,
    )
    with torch.device("meta"):
        llama = transformers.LlamaForCausalLM(config)
    assert sum(p.numel() for p in llama.parameters()) == model.params()
    assert sum(p.numel() for p in llama.model.layers[0].parameters()) == model.block_params()
    lora = peft.LoraConfig(r=plan.LORA_RANK, target_modules=list(plan.LORA_TARGETS))
    adapted = peft.get_peft_model(llama, lora)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == model.lora_params()


def test_bytes_by_hand() -> None:
    assert plan.LLAMA_7B.params() == 6_738_415_616  # Llama-2-7B
    # start + control + end + gradient + 2 Adam moments, bf16, over 8 GPUs
    assert plan.full_curve_bytes(6_738_415_616, 2, 8) == 2 * 6 * 6_738_415_616 / 8
    # LoRA r=16 on 7 projections of a 4096/11008 block: 4 x 16 x 8192 + 3 x 16 x 15104
    assert plan.LLAMA_7B.lora_params() == 32 * (4 * 16 * 8192 + 3 * 16 * 15104)
    assert plan.lora_curve_bytes(800, 10, 4, 8) == 4 * (100 + 60)


def test_the_scale_out_page_shows_the_computed_table() -> None:
    page = (ROOT / "docs/scale_out.md").read_text(encoding="utf-8")
    assert plan.table() in page
    for model in (plan.LLAMA_7B, plan.LLAMA_70B):
        assert f"{model.name}: P = {model.params():,}, A = {model.lora_params():,}" in page
