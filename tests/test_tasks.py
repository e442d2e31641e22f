from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.tasks import (
    Batch,
    CausalLMTask,
    ClassificationTask,
    SampleOutputs,
    Task,
    resolve_task,
    task_collate,
)


def _tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=40,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


# --------------------------------------------------------------------------- batches
def test_split_reads_every_batch_form():
    task = ClassificationTask()
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert task.split((x, y)).targets.tolist() == [0, 1]
    three = task.split((x, y, torch.tensor([1, 0])))
    assert three.is_forget.dtype == torch.bool and three.is_forget.tolist() == [True, False]
    bare = task.split(x)
    assert bare.inputs is x and bare.targets is None and bare.is_forget is None
    dict_batch = task.split({"input_ids": x, "labels": y, "is_forget": [False, True]})
    assert set(dict_batch.inputs) == {"input_ids"}
    assert dict_batch.is_forget.tolist() == [False, True]
    moved = task.split([x, [0, 1]], device="cpu")
    assert isinstance(moved, Batch) and moved.targets.tolist() == [0, 1]


def test_split_refuses_unknown_batches():
    with pytest.raises(ModeConnError, match="cannot read a batch of type int"):
        ClassificationTask().split(3)
    with pytest.raises(ModeConnError, match="no model inputs"):
        CausalLMTask().split({"labels": torch.zeros(1, 2)})


# --------------------------------------------------------------------------- classification
def test_classification_matches_cross_entropy_and_argmax():
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(9, 5), torch.randint(0, 4, (9,))
    out = ClassificationTask()(model, x, y, signals=True)
    logits = model(x)
    assert torch.allclose(out.loss, F.cross_entropy(logits, y, reduction="none"))
    assert out.correct.tolist() == (logits.argmax(1) == y).float().tolist()
    assert torch.equal(out.signals["logits"], logits.detach())
    assert out.loss.requires_grad and len(out) == 9


def test_classification_sum_of_per_sample_losses_has_the_same_gradient():
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(33, 5), torch.randint(0, 4, (33,))
    select = torch.rand(33) > 0.4
    ClassificationTask()(model, x, y).loss[select].sum().div(select.sum()).backward()
    per_sample = model.weight.grad.clone()
    model.zero_grad()
    (F.cross_entropy(model(x)[select], y[select], reduction="sum") / select.sum()).backward()
    assert torch.equal(per_sample, model.weight.grad)


@pytest.mark.parametrize(
    ("logits_shape", "targets", "match"),
    [
        ((4, 10, 7), torch.zeros(4, dtype=torch.long), r"\(batch, classes\) = \(4, C\)"),
        ((3, 10), torch.zeros(4, dtype=torch.long), r"got \(3, 10\)"),
        ((4, 10), torch.zeros(4, 7, dtype=torch.long), "CausalLMTask"),
        ((4, 10), torch.zeros(4), "integer class labels"),
    ],
)
def test_classification_refuses_wrong_shapes(logits_shape, targets, match):
    logits = torch.zeros(logits_shape)
    with pytest.raises(ModeConnError, match=match):
        ClassificationTask()(lambda _: logits, torch.zeros(1), targets)


# --------------------------------------------------------------------------- causal LM
def test_causal_lm_matches_the_hugging_face_loss():
    model = _tiny_gpt2()
    ids = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, 8:] = -100  # padding at the end of one sample
    out = CausalLMTask()(model, {"input_ids": ids}, labels, signals=True)
    token_mean = out.signals["nll_sum"].sum() / out.signals["num_tokens"].sum()
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss
    assert torch.allclose(token_mean, expected, atol=1e-5)
    assert out.signals["num_tokens"].tolist() == [6, 6, 4]
    summed = CausalLMTask(reduction="sum")(model, ids, labels)
    assert torch.allclose(summed.loss, out.loss * out.signals["num_tokens"], atol=1e-5)


def test_causal_lm_by_hand():
    # Vocabulary of 3; logits at positions 0 and 1 predict labels 1 and 2.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    out = CausalLMTask()(
        lambda _: logits, torch.zeros(1, 3, dtype=torch.long), labels, signals=True
    )
    lp0 = 2.0 - math.log(math.exp(2.0) + 2.0)  # log p(token 0) at position 0
    lp1 = 0.0 - math.log(2.0 + math.e)  # log p(token 1) at position 1
    assert out.loss.item() == pytest.approx(-(lp0 + lp1) / 2, abs=1e-6)
    assert out.correct.item() == pytest.approx(0.5)  # position 0 right, position 1 wrong
    assert out.signals["token_logprobs"][0].tolist() == pytest.approx([lp0, lp1], abs=1e-6)
    # Min-K%++ at position 0: (log p(x) - mu) / sigma under the next-token distribution.
    p = torch.softmax(logits[0, 0], 0)
    logp = torch.log(p)
    mu = (p * logp).sum()
    sigma = ((p * logp.square()).sum() - mu.square()).sqrt()
    assert out.signals["mink_pp"][0, 0].item() == pytest.approx(((lp0 - mu) / sigma).item(), 1e-5)


def test_causal_lm_hf_output_object_and_dict_inputs():
    model = _tiny_gpt2()
    ids = torch.randint(0, 40, (2, 6))
    labels = ids.clone()
    labels[:, 0] = -100
    mask = torch.ones_like(ids)
    out = CausalLMTask()(model, {"input_ids": ids, "attention_mask": mask}, labels)
    assert out.loss.shape == (2,) and bool((out.correct >= 0).all() and (out.correct <= 1).all())


def test_causal_lm_refuses_bad_input():
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ModeConnError, match=r"\(batch, seq, vocab\) = \(2, 5, V\)"):
        CausalLMTask()(lambda _: torch.zeros(2, 7), ids, ids)
    with pytest.raises(ModeConnError, match="token labels of shape"):
        CausalLMTask()(lambda _: torch.zeros(2, 5, 3), ids, torch.zeros(2, dtype=torch.long))
    no_answer = torch.full((2, 5), -100)
    no_answer[0, 3] = 1
    with pytest.raises(ModeConnError, match=r"samples \[1\]"):
        CausalLMTask()(lambda _: torch.zeros(2, 5, 3), ids, no_answer)
    with pytest.raises(ModeConnError, match="reduction"):
        CausalLMTask(reduction="max")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- protocol
def test_resolve_task_and_user_tasks():
    assert isinstance(resolve_task(None), ClassificationTask)

    class Regression:
        name = "regression"

        def split(self, batch, *, device=None):
            return Batch(batch[0], batch[1], None)

        def __call__(self, model, inputs, targets, *, signals=False):
            err = (model(inputs).squeeze(1) - targets).square()
            return SampleOutputs(loss=err, correct=(err < 0.1).float())

    task = Regression()
    assert isinstance(task, Task) and resolve_task(task) is task
    with pytest.raises(TypeError, match="task must have split"):
        resolve_task(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- input dtypes
def test_a_float64_model_reads_float32_data_in_evaluate_and_unlearn():
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.double().eval()
    x, y = data.tensors
    with torch.no_grad():
        by_hand = F.cross_entropy(model(x.double()), y).item()
    assert mcu.evaluate(model, data).loss == pytest.approx(by_hand, rel=1e-12)
    # random_label runs the model through a wrapper; npo also runs the reference.
    for loss in (mcu.losses.random_label(3), mcu.losses.npo(reference=model)):
        unlearned = mcu.unlearn(
            model, data, data, loss=loss, epochs=1, lr=0.1, batch_size=8, progress=False
        )
        assert {p.dtype for p in unlearned.parameters()} == {torch.float64}
        assert not torch.equal(unlearned[0].weight, model[0].weight)


# --------------------------------------------------------------------------- collate
def test_causal_lm_collate_stacks_one_length_and_pads_different_lengths():
    def item(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": torch.arange(n)}, torch.arange(n)

    task = CausalLMTask(pad_token_id=9)
    same = task.collate([item(3), item(3)])
    assert sorted(same[0]) == ["input_ids"]  # stacked as default_collate does: form kept
    assert same[1].shape == (2, 3)
    padded = task.collate([item(2), item(3)])
    assert padded["input_ids"].tolist() == [[0, 1, 9], [0, 1, 2]]
    assert padded["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert padded["labels"].tolist() == [[0, 1, -100], [0, 1, 2]]
    assert repr(task) == "CausalLMTask(reduction='mean', pad_token_id=9)"
    assert task_collate(task) == task.collate
    assert task_collate(ClassificationTask()) is None and task_collate(None) is None
    assert mcu.lm.PadCollator is mcu.data.PadCollator
