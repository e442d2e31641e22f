"""Start from files: a model and tokenizer from ``from_pretrained``, MCU, and the result saved back.

A tiny model built from a config is saved with ``save_pretrained`` into a folder with
its tokenizer; everything after that starts from the folder (``local_files_only``, so
nothing can be downloaded). The recipe's exported model, a ``PeftModel`` (adapter only)
or the user's model class (a full checkpoint), is saved and loaded back, and the loaded
model gives the logits of the curve's point at the chosen ``t``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import modeconn_unlearn as mcu
from modeconn_unlearn import lm
from modeconn_unlearn.tasks import CausalLMTask

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TASK = CausalLMTask()
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def user_folder(tmp_path: Path, arch: str) -> Path:
    """A user's model and tokenizer, as ``save_pretrained`` leaves them in a folder."""
    pairs = lm.fictitious_qa(num_entities=8, facts_per_entity=2, seed=0)
    tokenizer = lm.train_tokenizer(lm.qa_texts(pairs))  # a PreTrainedTokenizerFast
    model = lm.tiny_causal_lm(
        len(tokenizer), arch=arch, hidden_size=16, num_layers=1, num_heads=2, tokenizer=tokenizer
    )
    folder = tmp_path / "user_model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_from(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def from_folder(folder: Path) -> tuple[Any, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model_from(folder), tokenizer


def splits(tokenizer: Any) -> tuple[Any, Any, Any]:
    """Retain, forget and held-out QA examples tokenized by the loaded tokenizer."""
    pairs = lm.fictitious_qa(num_entities=8, facts_per_entity=2, seed=0)
    data = lm.QADataset(pairs, tokenizer, max_length=24)
    train, holdout = lm.group_split(data, forget_groups=[p.group for p in pairs[-4:]])
    train, holdout = data.subset(train.indices), data.subset(holdout.indices)
    retain, forget = lm.group_split(train, forget_groups=[p.group for p in pairs[:4]])
    return retain, forget, holdout


def recipe(original: Any, theta_u: Any, data: tuple[Any, Any, Any], **fields: Any) -> Any:
    retain, forget, holdout = data
    targets = mcu.user_targets(original, retain, holdout, task=TASK)
    config = mcu.RecipeConfig.for_task(
        TASK, epochs=1, lr=1e-2, retain_ratio=1.0, batch_size=8, keep_base=False, **fields
    )
    return mcu.mcu_unlearn(
        original,
        theta_u,
        retain,
        forget,
        targets=targets,
        task=TASK,
        config=config,
        holdout=holdout,
    )


def logits(model: Any, batch: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, **kwargs).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_full_model_from_files_goes_through_the_recipe_and_back_to_files(tmp_path, arch):
    folder = user_folder(tmp_path, arch)
    model, tokenizer = from_folder(folder)
    data = splits(tokenizer)
    _, forget, _ = data
    batch = next(iter(lm.as_lm_loader(forget)))
    theta_u = mcu.unlearn(
        model,
        None,
        forget,
        loss=mcu.losses.gradient_ascent(task=TASK),
        epochs=2,
        lr=1e-2,
        optimizer="adamw",
        batch_size=8,
        max_grad_norm=1.0,
        progress=False,
    )
    result = recipe(model, theta_u, data)
    exported = result.model.eval()
    assert isinstance(exported, transformers.PreTrainedModel)
    assert type(exported) is type(model)
    exported.save_pretrained(tmp_path / "unlearned")
    loaded = model_from(tmp_path / "unlearned")
    at_t = logits(result.curve.eval(), batch, t=result.t)
    torch.testing.assert_close(logits(loaded, batch), at_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(loaded, batch), logits(exported, batch))


def test_a_lora_adapter_from_files_is_saved_as_an_adapter_and_merged(tmp_path):
    folder = user_folder(tmp_path, "llama")
    model, tokenizer = from_folder(folder)
    data = splits(tokenizer)
    retain, forget, _ = data
    batch = next(iter(lm.as_lm_loader(forget)))
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS["llama"]
    )
    lora_o = peft.get_peft_model(model, config)
    lora_u = mcu.unlearn(
        lora_o,
        retain,
        forget,
        loss=mcu.losses.npo(beta=0.1, reference=lora_o, task=TASK),
        epochs=2,
        lr=3e-2,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    result = recipe(lora_o, lora_u, data)
    adapter = result.model.eval()
    assert isinstance(adapter, peft.PeftModel)
    adapter.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base = model_from(folder)  # a fresh copy of the user's model
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    at_t = logits(result.curve.eval(), batch, t=result.t)
    torch.testing.assert_close(logits(reloaded, batch), at_t, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits(reloaded, batch), logits(lora_o, batch))  # it moved

    merged = copy.deepcopy(adapter).merge_and_unload()
    assert type(merged) is transformers.LlamaForCausalLM
    merged.save_pretrained(tmp_path / "merged")
    loaded = model_from(tmp_path / "merged")
    torch.testing.assert_close(logits(loaded, batch), at_t, rtol=1e-4, atol=1e-5)
    exported = recipe(lora_o, lora_u, data, merged=True).model.eval()
    assert type(exported) is transformers.LlamaForCausalLM  # what merged=True exports


def test_the_folder_gives_back_the_saved_model_and_tokenizer(tmp_path):
    pairs = lm.fictitious_qa(num_entities=8, facts_per_entity=2, seed=0)
    tokenizer = lm.train_tokenizer(lm.qa_texts(pairs))
    model = lm.tiny_causal_lm(
        len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, tokenizer=tokenizer
    ).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = from_folder(tmp_path)
    text = lm.qa_texts(pairs)[0]
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
