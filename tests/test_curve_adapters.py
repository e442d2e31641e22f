"""Curves over PEFT/LoRA adapters: only the adapters are curved, the base is stored once."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import IncompatibleModelsError, ModeConnError

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _lora_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    base = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(base, lora)


def _adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _two_adapters() -> tuple[torch.nn.Module, torch.nn.Module]:
    start = _lora_model()
    end = copy.deepcopy(start)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (start, end):
            for p in _adapters(model).values():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return start, end


def _logits(model: torch.nn.Module, tokens: torch.Tensor, **kw: object) -> torch.Tensor:
    return model(input_ids=tokens, **kw).logits


def test_curve_holds_only_adapter_sized_tensors_and_one_base() -> None:
    start, end = _two_adapters()
    adapter_numel = sum(p.numel() for p in _adapters(start).values())
    curve = CurveModel(start, start=start, end=end)
    assert sum(p.numel() for p in curve.parameters()) == adapter_numel
    held = sum(p.numel() for p in curve.groups.parameters()) + sum(
        b.numel() for b in curve.groups.buffers()
    )
    assert held == 3 * adapter_numel  # two anchors and one middle bend
    names = [n for group in curve.groups.values() for n in group.names]
    assert names and all("lora_" in n for n in names)
    # The frozen base weight used at every t is the template's single copy.
    base_layer = curve.template.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    seen = []
    hook = base_layer.register_forward_pre_hook(lambda m, _: seen.append(m.weight.data_ptr()))
    tokens = torch.randint(0, 32, (2, 5))
    for t in (0.1, 0.7):
        _logits(curve.eval(), tokens, t=t)
    hook.remove()
    assert seen == [base_layer.weight.data_ptr()] * 2
    # Template adapters share the start anchor instead of holding another copy.
    anchors = curve.groups["float32"].anchors
    low, high = anchors.data_ptr(), anchors.data_ptr() + anchors[0].nbytes
    assert all(low <= p.data_ptr() < high for p in _adapters(curve.template).values())


def test_training_moves_adapters_only() -> None:
    start, end = _two_adapters()
    curve = CurveModel(start, start=start, end=end).train()
    base_before = {
        n: p.clone() for n, p in curve.template.named_parameters() if not p.requires_grad
    }
    optimizer = torch.optim.AdamW(curve.parameters(), lr=0.05)
    tokens = torch.randint(0, 32, (2, 6))
    mid_before = curve.weights_at(0.5)
    mid_before = {k: v.detach().clone() for k, v in mid_before.items()}
    for _ in range(3):
        optimizer.zero_grad()
        out = curve(input_ids=tokens, labels=tokens)
        out.loss.backward()
        optimizer.step()
    for name, value in curve.template.named_parameters():
        if not value.requires_grad:
            assert torch.equal(value, base_before[name]), name
    moved = curve.weights_at(0.5)
    assert any(not torch.equal(moved[k], mid_before[k]) for k in moved)


def test_export_gives_peft_model_at_t_or_merged_weights() -> None:
    start, end = _two_adapters()
    curve = CurveModel(start, start=start, end=end)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(0.1 * torch.randn_like(p))
    curve.eval()
    tokens = torch.randint(0, 32, (2, 5))
    exported = curve.export(0.3)
    assert isinstance(exported, peft.PeftModel) and not exported.training
    with torch.no_grad():
        expected = _logits(curve, tokens, t=0.3)
        torch.testing.assert_close(_logits(exported, tokens), expected)
        merged = curve.export(0.3, merged=True)
        assert isinstance(merged, transformers.LlamaForCausalLM)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(_logits(merged, tokens), expected, rtol=1e-4, atol=1e-5)
        # The ends come back exactly: adapters at t=1 equal the end model's.
        end_adapters = _adapters(curve.export(1.0))
        for name, value in _adapters(end).items():
            assert torch.equal(end_adapters[name], value), name


def test_adapters_on_different_bases_are_refused() -> None:
    start, end = _two_adapters()
    with torch.no_grad():
        end.base_model.model.model.layers[1].mlp.up_proj.weight.add_(1.0)
    with pytest.raises(IncompatibleModelsError, match=r"frozen parameters .*up_proj"):
        CurveModel(start, start=start, end=end)


def test_merged_needs_a_peft_model_and_peft() -> None:
    plain = torch.nn.Linear(3, 2)
    curve = CurveModel(plain, start=plain, end=torch.nn.Linear(3, 2))
    with pytest.raises(ModeConnError, match="PEFT"):
        curve.export(0.5, merged=True)


def test_missing_peft_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # import fails
    plain = torch.nn.Linear(3, 2)
    curve = CurveModel(plain, start=plain, end=torch.nn.Linear(3, 2))
    with pytest.raises(ModeConnError, match=r"modeconn-unlearn\[lm\]"):
        curve.export(0.5, merged=True)
