"""The language-model pipeline end to end on a tiny causal LM built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import modeconn_unlearn as mcu
from modeconn_unlearn import lm
from modeconn_unlearn.data import UnlearnDataset
from modeconn_unlearn.tasks import CausalLMTask

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TASK = CausalLMTask()
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    """8 entities x 2 facts; 2 entities forgotten, 2 held out; an original that memorised."""
    pairs = lm.fictitious_qa(num_entities=12, facts_per_entity=2, num_perturbed=2, seed=0)
    tok = lm.train_tokenizer(lm.qa_texts(pairs))
    data = lm.QADataset(pairs, tok, max_length=MAX_LENGTH, pad_to_max_length=True)
    train, holdout = lm.group_split(data, forget_groups=[p.group for p in pairs[-4:]])
    train = data.subset(train.indices)
    holdout = data.subset(holdout.indices)
    retain, forget = lm.group_split(train, forget_groups=[p.group for p in pairs[:4]])
    model = lm.tiny_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(lm.as_lm_loader(train, batch_size=len(train))))
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    return {
        "tok": tok,
        "train": train,
        "retain": retain,
        "forget": forget,
        "holdout": holdout,
        "model": model,
    }


def test_the_original_memorised_its_training_data(world) -> None:  # type: ignore[no-untyped-def]
    out = lm.lm_outputs(world["model"], world["train"])
    assert out.token_accuracy.mean() > 0.95
    assert lm.lm_outputs(world["model"], world["holdout"]).nll.mean() > 2 * out.nll.mean()


def test_trainer_trains_a_curve_with_an_mcu_objective(world) -> None:  # type: ignore[no-untyped-def]
    """The recipe of docs/language_models.md: a Trainer whose compute_loss calls an objective."""
    model = world["model"]
    end = lm.tiny_causal_lm(len(world["tok"]), hidden_size=32, num_layers=1, num_heads=2, seed=9)
    curve = mcu.CurveModel(model, start=model, end=end)
    objective = mcu.losses.mcu_objective(0.0, task=TASK)  # beta 0: retain NLL only

    class CurveTrainer(transformers.Trainer):  # type: ignore[misc]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            loss = objective(model, inputs)
            return (loss, None) if return_outputs else loss

    args = transformers.TrainingArguments(
        output_dir=str(ROOT / "examples" / "outputs" / "trainer"),
        per_device_train_batch_size=8,
        num_train_epochs=8,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )

    def retain_nll(t: float) -> float:
        return float(lm.lm_outputs(lambda **x: curve(**x, t=t), world["retain"]).nll.mean())

    ends = [p.detach().clone() for p in curve.state_dict().values()]
    before = retain_nll(0.5)
    trainer = CurveTrainer(
        model=curve,
        args=args,
        train_dataset=UnlearnDataset(world["retain"], world["forget"]),
        data_collator=lm.PadCollator(world["tok"].pad_token_id, as_dict=True),
    )
    trainer.train()
    curve.eval()
    assert retain_nll(0.5) < 0.5 * before  # the middle of the path learned the retain set
    ids = next(iter(lm.as_lm_loader(world["retain"], batch_size=4)))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(curve(ids, t=0.0).logits, model(ids).logits)
        torch.testing.assert_close(curve(ids, t=1.0).logits, end.eval()(ids).logits)
    changed = [
        not torch.equal(a, b) for a, b in zip(ends, curve.state_dict().values(), strict=True)
    ]
    assert any(changed)


def test_language_model_notebook_runs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("peft")
    path = ROOT / "examples" / "03_language_model.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "03_language_model.ipynb is committed with outputs; clear them"
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert "optimal t = " in text, text
    assert "LlamaForCausalLM" in text  # the merged export is the user's model class
    rows = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.startswith(("original", "NPO", "MCU"))
    }
    assert {"original", "NPO", "MCU"} <= set(rows), text
    assert "forget ROUGE-L recall" in text
