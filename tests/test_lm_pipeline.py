"""The language-model pipeline end to end on a tiny causal LM built from a config."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CELL_TIMEOUT, output_text, run_notebook
from torch.utils.data import Subset

import modeconn_unlearn as mcu
from modeconn_unlearn import lm
from modeconn_unlearn.data import UnlearnDataset
from modeconn_unlearn.tasks import CausalLMTask

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TASK = CausalLMTask()
MAX_LENGTH = 24


def with_lora(model):  # type: ignore[no-untyped-def]
    """A PEFT copy of ``model`` with rank-4 LoRA adapters on the attention's q and v."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    return peft.get_peft_model(copy.deepcopy(model), config)


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


class _MeanLossTrainer(transformers.Trainer):  # type: ignore[misc]
    """The docs' CurveTrainer: ``compute_loss`` returns the objective's per-batch mean."""

    loss_is_scaled_for_ga = False
    objective = mcu.losses.finetune(task=TASK)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        loss = self.objective(model, inputs)
        return (loss, None) if return_outputs else loss


class _UnscaledTrainer(_MeanLossTrainer):
    loss_is_scaled_for_ga = None  # transformers' own inference from the curve's **kwargs


@pytest.mark.parametrize("trainer", [_MeanLossTrainer, _UnscaledTrainer])
def test_gradient_accumulation_takes_the_step_of_the_whole_batch(world, trainer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two accumulated batches of 4 make the SGD step of one batch of 8 (same samples, fixed t)."""
    end = lm.tiny_causal_lm(len(world["tok"]), hidden_size=32, num_layers=1, num_heads=2, seed=9)
    data = UnlearnDataset(Subset(world["retain"], range(8)), None)
    middles = []
    for batch, accumulate in ((8, 1), (4, 2)):
        curve = mcu.CurveModel(world["model"], start=world["model"], end=end, t_sampler=(0.5, 0.5))
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulate,
            max_steps=1,
            optim="sgd",
            learning_rate=0.1,
            max_grad_norm=0.0,
            report_to=[],
            save_strategy="no",
            remove_unused_columns=False,
            use_cpu=True,
            disable_tqdm=True,
        )
        collator = lm.PadCollator(world["tok"].pad_token_id, as_dict=True)
        trainer(model=curve, args=args, train_dataset=data, data_collator=collator).train()
        middles.append(torch.cat([p.detach().flatten() for p in curve.parameters()]))
    start = torch.cat(
        [
            p.detach().flatten()
            for p in mcu.CurveModel(world["model"], start=world["model"], end=end).parameters()
        ]
    )
    whole, accumulated = middles[0] - start, middles[1] - start
    if trainer is _MeanLossTrainer:
        torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-4)
    else:  # without the setting the accumulated step is twice as long
        torch.testing.assert_close(accumulated, 2 * whole, atol=1e-6, rtol=1e-4)


def test_unlearn_trains_on_variable_length_examples_through_a_padding_loader(world) -> None:  # type: ignore[no-untyped-def]
    """A DataLoader's PadCollator is kept by mcu.unlearn: no fixed-length padding needed."""
    base = lm.qa_source(world["forget"])[0]
    free = lm.QADataset(base.pairs, world["tok"])  # variable lengths
    retain = free.subset(lm.qa_source(world["retain"])[1])
    forget = free.subset(lm.qa_source(world["forget"])[1])
    collate = lm.PadCollator(world["tok"].pad_token_id)
    theta_u = mcu.unlearn(
        world["model"],
        torch.utils.data.DataLoader(retain, collate_fn=collate),
        torch.utils.data.DataLoader(forget, collate_fn=collate),
        loss=mcu.losses.gradient_difference(task=TASK),
        epochs=3,
        lr=3e-3,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    before = lm.lm_outputs(world["model"], forget).nll.mean()
    assert lm.lm_outputs(theta_u, forget).nll.mean() > before + 0.5


def _variable_length(world, part: str):  # type: ignore[no-untyped-def]
    """``world[part]`` as examples of their own lengths (no padding to ``MAX_LENGTH``)."""
    base, indices = lm.qa_source(world[part])
    return lm.QADataset(base.pairs, world["tok"]).subset(indices)


def test_variable_length_datasets_are_padded_by_the_task_everywhere(world) -> None:  # type: ignore[no-untyped-def]
    """No collator given: unlearn, evaluate, evaluate_path, masks and barriers pad via the task."""
    retain, forget = _variable_length(world, "retain"), _variable_length(world, "forget")
    assert len({len(forget[i][1]) for i in range(len(forget))}) > 1  # lengths differ
    model = world["model"]
    with pytest.raises(mcu.ModeConnError, match=r"task=CausalLMTask\(\)"):
        mcu.evaluate(model, forget)  # the classification default cannot stack them
    metrics = mcu.evaluate(model, forget, task=TASK)
    assert metrics.loss == pytest.approx(float(lm.lm_outputs(model, forget).nll.mean()), rel=1e-5)
    assert metrics.accuracy == pytest.approx(_accuracy(model, forget))
    theta_u = mcu.unlearn(
        model,
        retain,
        forget,
        loss=mcu.losses.gradient_difference(task=TASK),
        epochs=1,
        lr=3e-3,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    mask = mcu.layer_mask(model, retain, forget, k=0.3, task=TASK)
    assert any(bool(m.any()) for m in mask.values())
    curve = mcu.CurveModel(model, start=model, end=theta_u)
    report = mcu.evaluate_path(curve, {"forget": forget}, task=TASK, ts=[1.0], progress=False)
    assert report.acc("forget")[0] == pytest.approx(_accuracy(theta_u, forget))
    barrier = mcu.loss_barrier(model, theta_u, forget, task=TASK, ts=3)
    assert barrier.end == pytest.approx(float(lm.lm_outputs(theta_u, forget).nll.mean()), rel=1e-4)
    relearned = mcu.relearn_attack(theta_u, forget, steps=2, lr=0.05, samples=2, task=TASK)
    assert len(relearned.accuracy) == 3


def test_idk_on_a_refusal_dataset_teaches_the_model_to_refuse() -> None:
    refusal = "I can not say ."
    pairs = lm.fictitious_qa(num_entities=6, facts_per_entity=2, seed=3)
    tok = lm.train_tokenizer([*lm.qa_texts(pairs), refusal])
    data = lm.QADataset(pairs, tok, max_length=MAX_LENGTH, pad_to_max_length=True)
    retain, forget = lm.group_split(data, forget_groups=[pairs[0].group])
    idk_forget = lm.refusal_dataset(forget, [refusal])
    model = lm.tiny_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    theta_u = mcu.unlearn(
        model,
        retain,
        idk_forget,
        loss=mcu.losses.idk(task=TASK),
        epochs=30,
        lr=1e-2,
        optimizer="adam",
        weight_decay=0.0,
        batch_size=12,
        progress=False,
    )
    answers = lm.rouge_l_recall(theta_u, idk_forget)
    assert answers.references == [refusal, refusal]
    assert answers.generations == [refusal, refusal]  # greedy answers are the refusal
    assert lm.rouge_l_recall(theta_u, forget).mean < 0.5  # and not the forgotten facts


def _accuracy(model, data) -> float:  # type: ignore[no-untyped-def]
    return 100.0 * float(lm.lm_outputs(model, data).token_accuracy.mean())


def test_user_targets_of_a_language_model_come_from_the_original_and_held_out_qa(world) -> None:  # type: ignore[no-untyped-def]
    model, retain, holdout = world["model"], world["retain"], world["holdout"]
    targets = mcu.user_targets(model, retain, holdout, task=TASK)
    assert targets.retain == pytest.approx(_accuracy(model, retain))  # answer token accuracy
    assert targets.forget == pytest.approx(_accuracy(model, holdout))
    nll = float(lm.lm_outputs(model, holdout).nll.mean())  # mean answer NLL
    assert targets.forget_loss == pytest.approx(nll, rel=1e-5)
    assert targets.counts == {"retain": len(retain), "holdout": len(holdout)}
    assert targets.forget < targets.retain  # the original never saw the held-out entities


def _recipe(original, theta_u, retain, forget, holdout, **fields):  # type: ignore[no-untyped-def]
    """MCU in one call, with targets from the original and held-out entities only."""
    targets = mcu.user_targets(original, retain, holdout, task=TASK)
    config = mcu.RecipeConfig.for_task(
        TASK, epochs=3, lr=1e-2, retain_ratio=1.0, batch_size=8, **fields
    )
    result = mcu.mcu_unlearn(
        original,
        theta_u,
        retain,
        forget,
        targets=targets,
        task=TASK,
        config=config,
        holdout=holdout,
    )
    assert len(result.history) == 3
    assert 0.5 <= result.t <= 1.0
    # θ_u is measured at t = 1 and scored as lm scores it.
    report = result.report
    assert report.t[-1] == 1.0
    assert report.acc("forget")[-1] == pytest.approx(_accuracy(theta_u, forget))
    assert report.acc("retain")[-1] == pytest.approx(_accuracy(theta_u, retain))
    return result


def test_full_pipeline_on_a_causal_lm(world) -> None:  # type: ignore[no-untyped-def]
    model, retain, forget, holdout = (world[k] for k in ("model", "retain", "forget", "holdout"))
    theta_u = mcu.unlearn(
        model,
        retain,
        forget,
        loss=mcu.losses.npo(beta=0.1, reference=model, task=TASK),
        epochs=4,
        lr=3e-3,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    before = lm.lm_outputs(model, forget).nll.mean()
    assert lm.lm_outputs(theta_u, forget).nll.mean() > before + 1.0  # NPO forgot

    result = _recipe(model, theta_u, retain, forget, holdout)
    assert all(bool(m.all()) for m in result.mask.values())  # mask="all": every entry
    exported, curve = result.model, result.curve.eval()
    assert type(exported) is type(model)
    at_t = lm.lm_outputs(lambda **x: curve(**x, t=result.t), forget)
    np.testing.assert_allclose(lm.lm_outputs(exported, forget).nll, at_t.nll, rtol=1e-5)
    ids = next(iter(lm.as_lm_loader(retain, batch_size=4)))["input_ids"]
    with torch.no_grad():  # the curve's ends stay the original and θ_u
        torch.testing.assert_close(curve(ids, t=0.0).logits, model(ids).logits)
        torch.testing.assert_close(curve(ids, t=1.0).logits, theta_u(ids).logits)

    # The library's threshold attack and lm's LOSS attack are two implementations of one AUC.
    attack = mcu.threshold_attack(
        exported, member=retain, nonmember=holdout, target=forget, signals=("loss",), task=TASK
    )["loss"]
    ours = lm.lm_mia(exported, member=retain, nonmember=holdout, attacks="loss")["loss"]
    assert attack.auc == pytest.approx(ours.auc)
    assert attack.target_auc == pytest.approx(
        lm.lm_mia(exported, member=forget, nonmember=holdout, attacks="loss")["loss"].auc
    )

    barrier = mcu.loss_barrier(
        model, theta_u, {"retain": retain, "forget": forget}, task=TASK, ts=5
    )
    assert barrier["retain"].start == pytest.approx(
        lm.lm_outputs(model, retain).nll.mean(), rel=1e-4
    )
    assert barrier["forget"].end == pytest.approx(
        lm.lm_outputs(theta_u, forget).nll.mean(), rel=1e-4
    )
    # Permuting the MLP's hidden units gives a twin that computes the same function; the
    # straight path to it rises above both ends, so its barrier is positive. Checked
    # against a hand computation from the interpolated weights' mean retain NLL.
    twin = copy.deepcopy(model)
    mlp = twin.model.layers[0].mlp
    perm = torch.randperm(mlp.up_proj.out_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in (mlp.gate_proj, mlp.up_proj):
            layer.weight.copy_(layer.weight[perm])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm])
    ts = np.linspace(0.0, 1.0, 5)
    ends = model.state_dict(), twin.state_dict()
    nll = []
    for t in ts:
        between = copy.deepcopy(model)
        between.load_state_dict({k: (1 - t) * a + t * ends[1][k] for k, a in ends[0].items()})
        nll.append(float(lm.lm_outputs(between, retain).nll.mean()))
    excess = np.array(nll) - ((1 - ts) * nll[0] + ts * nll[-1])
    barrier = mcu.loss_barrier(model, twin, retain, task=TASK, ts=5)
    np.testing.assert_allclose(barrier.values, nll, rtol=1e-4)
    assert barrier.start == pytest.approx(barrier.end, rel=1e-4)  # the same function
    assert barrier.height == pytest.approx(excess.max(), rel=1e-3, abs=1e-6)
    assert barrier.height > barrier.start  # the loss more than doubles on the way
    assert barrier.t_peak == ts[int(np.argmax(excess))]


def test_lora_pipeline_curves_only_the_adapters(world) -> None:  # type: ignore[no-untyped-def]
    """The recipe on two PEFT adapters over one frozen base, on variable-length examples."""
    model = world["model"]
    retain, forget, holdout = (_variable_length(world, k) for k in ("retain", "forget", "holdout"))
    lora_o = with_lora(model)
    adapters = sum(p.numel() for p in lora_o.parameters() if p.requires_grad)
    lora_u = mcu.unlearn(
        lora_o,
        retain,
        forget,
        loss=mcu.losses.npo(beta=0.1, reference=lora_o, task=TASK),
        epochs=4,
        lr=1e-2,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    assert lm.lm_outputs(lora_u, forget).nll.mean() > lm.lm_outputs(model, forget).nll.mean()
    result = _recipe(lora_o, lora_u, retain, forget, holdout, merged=True)
    curve = result.curve.eval()
    assert sum(p.numel() for p in curve.parameters()) == adapters  # one middle bend of adapters
    trainable = {n: p.requires_grad for n, p in lora_o.named_parameters()}
    assert {n: bool(m.all()) for n, m in result.mask.items()} == trainable  # base left out
    assert not any(bool(m.any()) for n, m in result.mask.items() if not trainable[n])
    merged = result.model
    assert type(merged) is type(model)
    at_t = lm.lm_outputs(lambda **x: curve(**x, t=result.t), forget)
    np.testing.assert_allclose(lm.lm_outputs(merged, forget).nll, at_t.nll, rtol=1e-4, atol=1e-5)
    barrier = mcu.loss_barrier(lora_o, lora_u, world["retain"], task=TASK, ts=3)
    assert barrier.start == pytest.approx(
        lm.lm_outputs(model, world["retain"]).nll.mean(), rel=1e-4
    )


@pytest.mark.slow
@pytest.mark.timeout(2 * CELL_TIMEOUT)
def test_language_model_notebook_runs() -> None:
    pytest.importorskip("peft")
    text = output_text(run_notebook(ROOT / "examples" / "03_language_model.ipynb"))
    assert "returned: " in text and "forget loss" in text, text  # the recipe's summary
    assert "LlamaForCausalLM" in text  # the merged export is the user's model class
    rows = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.startswith(("original", "NPO", "MCU"))
    }
    assert {"original", "NPO", "MCU"} <= set(rows), text
    assert "forget ROUGE-L recall" in text


def test_relearning_attack_on_forgotten_facts(world) -> None:  # type: ignore[no-untyped-def]
    model, retain, forget = world["model"], world["retain"], world["forget"]
    theta_u = mcu.unlearn(
        model,
        retain,
        forget,
        loss=mcu.losses.gradient_difference(task=TASK),
        epochs=3,
        lr=3e-3,
        optimizer="adam",
        batch_size=8,
        progress=False,
    )
    before = copy.deepcopy(theta_u.state_dict())
    result = mcu.relearn_attack(theta_u, forget, steps=4, lr=0.05, samples=2, seed=0, task=TASK)
    chosen = set(result.samples.tolist())
    held_out = Subset(forget, [i for i in range(len(forget)) if i not in chosen])
    start = lm.lm_outputs(theta_u, held_out)
    # Step 0 is the unlearned model itself, scored by the LM task on the facts not relearned.
    assert result.accuracy[0] == pytest.approx(100.0 * float(start.token_accuracy.mean()))
    assert result.loss[0] == pytest.approx(float(start.nll.mean()), rel=1e-4)
    assert len(result.accuracy) == 5
    assert result.train_loss[-2] < result.train_loss[0]  # the attack fits its own samples
    for key, value in theta_u.state_dict().items():  # the attacked model is a copy
        assert torch.equal(value, before[key]), key


def test_rmu_trains_a_lora_curve_at_a_decoder_block(world) -> None:  # type: ignore[no-untyped-def]
    model, retain, forget = world["model"], world["retain"], world["forget"]
    lora_o = with_lora(model)
    lora_u = copy.deepcopy(lora_o)
    curve = mcu.CurveModel(lora_o, start=lora_o, end=lora_u)
    block = "base_model.model.model.layers.0"  # a decoder block returns a tuple
    loss = mcu.losses.rmu(block, steering_coef=4.0, alpha=1.0, task=TASK)
    batch = next(iter(lm.lm_unlearn_loader(retain, forget, batch_size=16, seed=0)))
    curve.t_sampler = (0.5, 0.5)
    loss(curve, batch)  # the ends are equal, so every point is the original: no retain term
    before = dict(loss.last_stats)
    assert before["rmu_retain"] == pytest.approx(0.0, abs=1e-10) and before["rmu_forget"] > 0
    curve.t_sampler = (0.0, 1.0)
    mcu.fit_curve(
        curve,
        retain,
        forget,
        loss=loss,
        epochs=10,
        lr=5e-2,
        optimizer="adam",
        batch_size=16,
        progress=False,
    )
    curve.t_sampler = (0.5, 0.5)
    loss(curve, batch)
    assert loss.last_stats["rmu_forget"] < 0.8 * before["rmu_forget"]
