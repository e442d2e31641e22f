from __future__ import annotations

import logging
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Stop, make_mlp, same_state, snapshot, stop_at, tensors
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.data import forget_retain_split
from modeconn_unlearn.errors import ModeConnError, NonFiniteLossError
from modeconn_unlearn.losses import (
    AdaptiveBeta,
    finetune,
    gradient_ascent,
    mcu_objective,
    random_label,
)
from modeconn_unlearn.masks import layer_mask, saliency_mask
from modeconn_unlearn.training import EpochRecord, History, TrainConfig, fit_curve, retrain, unlearn


def accuracy(model, dataset, t=None) -> float:
    x, y = tensors(dataset)
    model.eval()
    with torch.no_grad():
        logits = model(x) if t is None else model(x, t=t)
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def full_batch_train(model: nn.Module, x, y, steps: int = 300) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def setup(digits):
    train, test = digits
    retain, forget = forget_retain_split(train, forget_ratio=0.1, seed=0)
    original = full_batch_train(make_mlp(0), *train.tensors)
    return SimpleNamespace(train=train, test=test, retain=retain, forget=forget, original=original)


# --------------------------------------------------------------------------- unlearn
def test_unlearn_returns_a_new_model_and_never_mutates_the_input(setup):
    original = setup.original
    before = snapshot(original)
    original.eval()
    theta_u = unlearn(
        original,
        setup.retain,
        setup.forget,
        loss=random_label(10),
        epochs=1,
        lr=0.05,
        progress=False,
    )
    assert theta_u is not original and type(theta_u) is type(original)
    assert same_state(before, snapshot(original))
    assert all(p.requires_grad and p.grad is None for p in original.parameters())
    assert not theta_u.training  # the input's mode
    assert not same_state(before, snapshot(theta_u))


def test_random_label_and_gradient_ascent_lower_forget_accuracy(setup):
    base = accuracy(setup.original, setup.forget)
    assert base == 100.0
    rl = unlearn(
        setup.original,
        setup.retain,
        setup.forget,
        loss=random_label(10),
        epochs=2,
        lr=0.05,
        progress=False,
    )
    ga = unlearn(
        setup.original,
        setup.retain,
        setup.forget,
        loss=gradient_ascent(),
        epochs=5,
        lr=0.05,
        progress=False,
    )
    assert accuracy(rl, setup.forget) < base - 5
    assert accuracy(ga, setup.forget) < base - 5
    # RL keeps training on the retain set, so it stays useful.
    assert accuracy(rl, setup.test) > 80


def test_salun_changes_only_masked_entries(setup):
    mask = saliency_mask(setup.original, setup.forget, sparsity=0.5)
    theta_u = unlearn(
        setup.original,
        setup.retain,
        setup.forget,
        loss=random_label(10),
        epochs=2,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-3,
        mask=mask,
        progress=False,
    )
    before = dict(setup.original.named_parameters())
    for name, p in theta_u.named_parameters():
        keep = mask[name]
        assert torch.equal(p.detach()[~keep], before[name].detach()[~keep]), name
        assert bool((p.detach()[keep] != before[name].detach()[keep]).any()), name
    assert accuracy(theta_u, setup.forget) < 100.0 - 5


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", torch.optim.RMSprop])
def test_masked_entries_fixed_under_any_optimizer(tiny, optimizer):
    retain, forget = tiny
    model = make_mlp(3)
    g = torch.Generator().manual_seed(0)
    mask = {"0.weight": torch.rand(32, 64, generator=g) < 0.3, "2.bias": True}
    theta_u = unlearn(
        model,
        retain,
        forget,
        loss=mcu_objective(0.5),
        epochs=3,
        lr=0.05,
        optimizer=optimizer,
        weight_decay=0.1,
        mask=mask,
        batch_size=16,
        progress=False,
    )
    new, old = dict(theta_u.named_parameters()), dict(model.named_parameters())
    assert torch.equal(new["0.weight"][~mask["0.weight"]], old["0.weight"][~mask["0.weight"]])
    assert not torch.equal(new["0.weight"][mask["0.weight"]], old["0.weight"][mask["0.weight"]])
    assert torch.equal(new["0.bias"], old["0.bias"]) and torch.equal(
        new["2.weight"], old["2.weight"]
    )
    assert not torch.equal(new["2.bias"], old["2.bias"])
    assert all(p.requires_grad for p in theta_u.parameters())  # flags restored


def test_unlearn_is_deterministic_and_leaves_global_rngs_alone(tiny):
    retain, forget = tiny
    model = make_mlp(0)
    torch_state, py_state, np_state = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
    )
    run = lambda seed: unlearn(  # noqa: E731
        model,
        retain,
        forget,
        loss=random_label(10),
        epochs=2,
        lr=0.05,
        batch_size=16,
        seed=seed,
        progress=False,
    )
    a, b, c = run(1), run(1), run(2)
    assert same_state(snapshot(a), snapshot(b))
    assert not same_state(snapshot(a), snapshot(c))
    assert torch.equal(torch_state, torch.get_rng_state())
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_objectives_get_only_the_parts_they_need(tiny):
    retain, forget = tiny
    seen: list[torch.Tensor] = []

    def spy(model, batch):
        seen.append(batch.is_forget)
        return F.cross_entropy(model(batch.inputs), batch.targets)

    unlearn(make_mlp(0), retain, forget, loss=spy, epochs=1, lr=0.01, progress=False)
    flags = torch.cat(seen)
    assert int(flags.sum()) == 8 and len(flags) == 48
    seen.clear()
    spy.needs = ("forget",)
    unlearn(make_mlp(0), retain, forget, loss=spy, epochs=1, lr=0.01, progress=False)
    assert len(torch.cat(seen)) == 8 and bool(torch.cat(seen).all())
    with pytest.raises(ModeConnError, match="forget_data"):
        unlearn(make_mlp(0), retain, None, loss=gradient_ascent(), epochs=1, lr=0.01)


def test_unlearn_accepts_dataloaders(tiny):
    retain, forget = tiny
    a = unlearn(make_mlp(0), retain, forget, loss=finetune(), epochs=1, lr=0.05, progress=False)
    b = unlearn(
        make_mlp(0),
        DataLoader(retain, batch_size=7),
        DataLoader(forget),
        loss=finetune(),
        epochs=1,
        lr=0.05,
        progress=False,
    )
    assert same_state(snapshot(a), snapshot(b))


# --------------------------------------------------------------------------- resume
def test_unlearn_resume_is_bit_identical(tiny, tmp_path):
    retain, forget = tiny
    model = make_mlp(0)
    common = dict(loss=random_label(10), epochs=4, lr=0.05, batch_size=16, seed=3, progress=False)
    full = unlearn(model, retain, forget, checkpoint_dir=tmp_path / "full", **common)
    with pytest.raises(Stop):
        unlearn(
            model, retain, forget, checkpoint_dir=tmp_path / "cut", callbacks=[stop_at(2)], **common
        )
    epochs_after_resume: list[int] = []
    resumed = unlearn(
        model,
        retain,
        forget,
        checkpoint_dir=tmp_path / "cut",
        resume=True,
        callbacks=[lambda record, _: epochs_after_resume.append(record.epoch)],
        **common,
    )
    assert epochs_after_resume == [3, 4]
    assert same_state(snapshot(full), snapshot(resumed))
    saved = torch.load(tmp_path / "cut" / "unlearn.pt", weights_only=True)
    assert saved["epoch"] == 4 and len(saved["history"]) == 4


def test_fit_curve_resume_is_bit_identical(tiny, tmp_path):
    retain, forget = tiny

    def fresh_curve() -> CurveModel:
        return CurveModel(make_mlp(0), end=make_mlp(1))

    common = dict(
        loss=mcu_objective(AdaptiveBeta(90.0, 10.0)),
        epochs=4,
        lr=0.05,
        batch_size=16,
        seed=1,
        retain_ratio=0.75,
        progress=False,
    )
    full_curve = fresh_curve()
    full = fit_curve(full_curve, retain, forget, checkpoint_dir=tmp_path / "full", **common)
    cut_curve = fresh_curve()
    with pytest.raises(Stop):
        fit_curve(
            cut_curve,
            retain,
            forget,
            checkpoint_dir=tmp_path / "cut",
            callbacks=[stop_at(2)],
            **common,
        )
    resumed_curve = fresh_curve()  # a new process would start from scratch
    resumed = fit_curve(
        resumed_curve, retain, forget, checkpoint_dir=tmp_path / "cut", resume=True, **common
    )
    assert same_state(snapshot(full_curve), snapshot(resumed_curve))
    for key in ("epoch", "loss", "retain_acc", "forget_acc", "beta", "steps"):
        assert full.to_dict()[key] == resumed.to_dict()[key], key


def test_resume_checks(tiny, tmp_path):
    retain, forget = tiny
    common = dict(loss=finetune(), epochs=2, lr=0.05, batch_size=16, progress=False)
    with pytest.raises(ModeConnError, match="checkpoint_dir"):
        unlearn(make_mlp(0), retain, forget, resume=True, **common)
    # resume with no checkpoint yet: a fresh run
    a = unlearn(make_mlp(0), retain, forget, resume=True, checkpoint_dir=tmp_path, **common)
    b = unlearn(make_mlp(0), retain, forget, **common)
    assert same_state(snapshot(a), snapshot(b))
    with pytest.raises(ModeConnError, match=r"lr: 0\.05 -> 0\.1"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            resume=True,
            checkpoint_dir=tmp_path,
            **{**common, "lr": 0.1},
        )
    with pytest.raises(ModeConnError, match="past epochs=1"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            resume=True,
            checkpoint_dir=tmp_path,
            **{**common, "epochs": 1},
        )


# --------------------------------------------------------------------------- non-finite loss
class NaNAt:
    """Cross-entropy, but NaN at the given call; records the parameters it saw then."""

    def __init__(self, call: int) -> None:
        self.call, self.calls = call, 0
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, model, batch):
        self.calls += 1
        loss = F.cross_entropy(model(batch.inputs), batch.targets)
        if self.calls == self.call:
            self.seen = snapshot(model)
            return loss * float("nan")
        return loss


def test_nan_loss_stops_unlearn_at_last_finite_state(tiny):
    retain, forget = tiny
    loss = NaNAt(call=6)  # 48 samples / 16 = 3 steps per epoch: epoch 2, step 3
    model = make_mlp(0)
    before = snapshot(model)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2/3, step 3/3") as info:
        unlearn(model, retain, forget, loss=loss, epochs=3, lr=0.05, batch_size=16, progress=False)
    assert isinstance(info.value, ModeConnError)
    assert same_state(info.value.model.state_dict(), loss.seen)
    assert all(torch.isfinite(p).all() for p in info.value.model.parameters())
    assert same_state(before, snapshot(model))


def test_inf_loss_stops_fit_curve_and_leaves_curve_at_last_finite_state(tiny):
    retain, forget = tiny
    curve = CurveModel(make_mlp(0), end=make_mlp(1))

    class InfAt(NaNAt):
        def __call__(self, model, batch):
            value = super().__call__(model, batch)
            return value if self.calls != self.call else torch.full_like(value, math.inf)

    loss = InfAt(call=2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, step 2/3"):
        fit_curve(
            curve, retain, forget, loss=loss, epochs=2, lr=0.05, batch_size=16, progress=False
        )
    assert same_state(snapshot(curve), loss.seen)


def test_bad_objective_outputs(tiny):
    retain, forget = tiny
    with pytest.raises(ModeConnError, match="scalar"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            loss=lambda m, b: m(b.inputs),
            epochs=1,
            lr=0.1,
            progress=False,
        )
    with pytest.raises(ModeConnError, match="does not depend"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            loss=lambda m, b: torch.tensor(1.0),
            epochs=1,
            lr=0.1,
            progress=False,
        )


# --------------------------------------------------------------------------- fit_curve
def test_fit_curve_mcu_objective_on_digits(setup):
    """The MCU path search: a trained curve to an over-forgetting RL model."""
    original, retain, forget = setup.original, setup.retain, setup.forget
    target = full_batch_train(make_mlp(1), *tensors(retain))  # retrain: the targets
    retain_target, forget_target = accuracy(target, retain), accuracy(target, forget)
    theta_u = unlearn(
        original, retain, forget, loss=random_label(10), epochs=2, lr=0.05, progress=False
    )
    base_retain, base_forget = accuracy(original, retain), accuracy(original, forget)
    line = CurveModel(original, end=theta_u)
    curve = CurveModel(original, end=theta_u, mask=layer_mask(original, retain, forget, k=0.5))
    history = fit_curve(
        curve,
        retain,
        forget,
        loss=mcu_objective(AdaptiveBeta(retain_target, forget_target)),
        epochs=5,
        lr=0.05,
        retain_ratio=0.5,
        seed=0,
        progress=False,
    )
    assert len(history) == 5
    assert all(0.0 < r.beta <= 0.5 for r in history)
    # At t=1 (the unlearned end) forgetting happened.
    assert accuracy(curve, forget, t=1.0) < base_forget
    # Inside the path: forget accuracy below the original's while retain accuracy stays
    # within a few points, unlike the straight line at the same t.
    assert accuracy(curve, forget, t=0.9) < base_forget
    assert accuracy(curve, retain, t=0.9) > base_retain - 3.0
    assert accuracy(curve, retain, t=0.9) > accuracy(line, retain, t=0.9) + 1.0
    assert accuracy(curve, setup.test, t=0.9) > accuracy(line, setup.test, t=0.9)


def test_fit_curve_trains_in_place_and_restores_sampler_and_mode(tiny, caplog, capsys):
    retain, forget = tiny
    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    curve.eval()
    sampler = curve.t_sampler
    before = snapshot(curve)
    drawn: list[float] = []

    def my_sampler() -> float:
        drawn.append(0.3)
        return 0.3

    with caplog.at_level(logging.INFO, logger="modeconn_unlearn.training"):
        history = fit_curve(
            curve,
            retain,
            forget,
            loss=mcu_objective(0.1),
            epochs=2,
            lr=0.05,
            batch_size=16,
            t_sampler=my_sampler,
            progress=True,
        )
    assert len(drawn) == 6 and curve.last_t == 0.3
    assert curve.t_sampler is sampler and not curve.training
    assert not same_state(before, snapshot(curve))
    assert isinstance(history, History) and [r.epoch for r in history] == [1, 2]
    columns = history.to_dict()
    assert set(columns) >= {"epoch", "loss", "retain_acc", "forget_acc", "beta", "time_s", "lr"}
    assert columns["beta"] == pytest.approx([0.1, 0.1]) and all(
        0 <= a <= 100 for a in columns["retain_acc"]
    )
    assert sum(1 for r in caplog.records if "fit_curve epoch" in r.getMessage()) == 2
    assert capsys.readouterr().out == ""


def test_fit_curve_argument_errors(tiny):
    retain, forget = tiny
    with pytest.raises(ModeConnError, match="CurveModel"):
        fit_curve(make_mlp(0), retain, forget, loss=finetune(), epochs=1, lr=0.1)
    line = CurveModel(make_mlp(0), end=make_mlp(1), num_bends=2)
    with pytest.raises(ModeConnError, match="no trainable parameter"):
        fit_curve(line, retain, forget, loss=finetune(), epochs=1, lr=0.1)
    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    with pytest.raises(ModeConnError, match="epochs"):
        fit_curve(curve, retain, forget, loss=finetune(), epochs=0, lr=0.1)
    with pytest.raises(ModeConnError, match="lr"):
        fit_curve(curve, retain, forget, loss=finetune(), epochs=1, lr=-1.0)


# --------------------------------------------------------------------------- retrain, misc
def test_retrain_from_fresh_initialisation(setup):
    original = setup.original
    before = snapshot(original)
    a = retrain(original, setup.retain, epochs=3, lr=0.1, seed=0, progress=False)
    b = retrain(original, setup.retain, epochs=3, lr=0.1, seed=0, progress=False)
    assert same_state(snapshot(a), snapshot(b))
    assert same_state(before, snapshot(original))
    assert accuracy(a, setup.test) > 85
    # It really restarts: with zero epochs of learning signal (lr tiny) the weights are
    # a fresh draw, far from the trained original.
    fresh = retrain(
        original, setup.retain, epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0, progress=False
    )
    assert accuracy(fresh, setup.retain) < 50
    by_factory = retrain(lambda: make_mlp(7), setup.retain, epochs=1, lr=0.1, progress=False)
    assert isinstance(by_factory, nn.Sequential)


def test_retrain_refuses_parameters_it_cannot_reinitialise(tiny):
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(64))
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(x + self.token)

    with pytest.raises(ModeConnError, match=r"'token'.*factory"):
        retrain(WithToken(), tiny[0], epochs=1, lr=0.1)


def test_optimizer_choices(tiny):
    retain, forget = tiny
    model = unlearn(
        make_mlp(0),
        retain,
        forget,
        loss=finetune(),
        epochs=1,
        lr=0.01,
        optimizer=torch.optim.Adam,
        progress=False,
    )
    assert isinstance(model, nn.Sequential)
    with pytest.raises(ModeConnError, match="unknown optimizer 'lbfgs'"):
        unlearn(make_mlp(0), retain, forget, loss=finetune(), epochs=1, lr=0.01, optimizer="lbfgs")
    with pytest.raises(TypeError, match="returned list"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            loss=finetune(),
            epochs=1,
            lr=0.01,
            optimizer=lambda params, lr: list(params),
        )


def test_scheduler_is_stepped_per_epoch_and_resumed(tiny, tmp_path):
    retain, forget = tiny

    def cosine(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)

    lrs: list[float] = []
    common = dict(
        loss=finetune(), epochs=3, lr=0.1, batch_size=16, scheduler=cosine, progress=False
    )
    full = unlearn(make_mlp(0), retain, forget, callbacks=[lambda r, _: lrs.append(r.lr)], **common)
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.075)
    with pytest.raises(Stop):
        unlearn(
            make_mlp(0), retain, forget, checkpoint_dir=tmp_path, callbacks=[stop_at(1)], **common
        )
    resumed = unlearn(make_mlp(0), retain, forget, checkpoint_dir=tmp_path, resume=True, **common)
    assert same_state(snapshot(full), snapshot(resumed))


def test_grad_accumulation_of_two_half_batches_equals_one_full_batch(tiny):
    retain, _ = tiny  # 40 samples: two steps of 20 per epoch
    common = dict(loss=finetune(), lr=0.1, epochs=2, progress=False, seed=3)
    full = unlearn(make_mlp(0), retain, None, batch_size=20, **common)
    halves = unlearn(make_mlp(0), retain, None, batch_size=10, grad_accumulation=2, **common)
    for name, value in snapshot(full).items():
        torch.testing.assert_close(snapshot(halves)[name], value)
    plain = unlearn(make_mlp(0), retain, None, batch_size=10, **common)  # twice the steps
    assert not same_state(snapshot(plain), snapshot(full))
    curve_runs = []
    for batch_size, accumulation in ((20, 1), (10, 2)):
        a, b = make_mlp(0), make_mlp(1)
        curve = CurveModel(a, start=a, end=b, t_sampler=lambda: 0.5)
        fit_curve(
            curve,
            retain,
            None,
            loss=finetune(),
            lr=0.1,
            epochs=1,
            batch_size=batch_size,
            grad_accumulation=accumulation,
            progress=False,
        )
        curve_runs.append(curve.weights_at(0.5))
    for name, value in curve_runs[0].items():
        torch.testing.assert_close(curve_runs[1][name], value)


def test_grad_accumulation_counts_optimizer_steps_and_steps_on_the_leftover_batches(tiny):
    retain, _ = tiny  # 40 samples in batches of 16: 16, 16, 8
    steps: list[int] = []
    records: list[EpochRecord] = []
    unlearn(
        make_mlp(0),
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        epochs=2,
        batch_size=16,
        grad_accumulation=2,  # steps on batches (1, 2) and (3)
        progress=False,
        step_callback=lambda step, _: steps.append(step),
        callbacks=[lambda record, _: records.append(record)],
    )
    assert steps == [1, 2, 3, 4]
    assert len(records) == 2
    capped: list[int] = []
    unlearn(
        make_mlp(0),
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        max_steps=3,
        batch_size=16,
        grad_accumulation=2,
        progress=False,
        step_callback=lambda step, _: capped.append(step),
    )
    assert capped == [1, 2, 3]  # max_steps counts optimizer steps: two epochs' worth


def test_history_to_dict():
    history = History(
        [
            EpochRecord(1, 0.5, 90.0, 10.0, 0.5, 0.1, 1.0, 3, {"t": 0.4}),
            EpochRecord(2, 0.4, 91.0, math.nan, math.nan, 0.1, 1.0, 3),
        ]
    )
    columns = history.to_dict()
    assert columns["epoch"] == [1, 2] and columns["loss"] == [0.5, 0.4]
    assert columns["t"][0] == 0.4 and math.isnan(columns["t"][1])
    assert len(history) == 2 and history[0].retain_acc == 90.0


# --------------------------------------------------------------------------- nothing silently
def test_an_empty_forget_set_is_an_error_when_the_objective_needs_it(tiny):
    retain, _ = tiny
    empty = Subset(retain.dataset, [])
    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    before = snapshot(curve)
    with pytest.raises(ModeConnError, match="FORGET set is empty"):
        fit_curve(curve, retain, empty, loss=mcu_objective(0.1), epochs=1, lr=0.1, progress=False)
    assert same_state(before, snapshot(curve))
    with pytest.raises(ModeConnError, match="FORGET set is empty"):
        unlearn(make_mlp(0), retain, empty, loss=gradient_ascent(), epochs=1, lr=0.1)
    with pytest.raises(ModeConnError, match=r"FORGET set is not given \(None\)"):
        unlearn(make_mlp(0), retain, None, loss=mcu_objective(0.1), epochs=1, lr=0.1)
    with pytest.raises(ModeConnError, match="RETAIN set is empty"):
        unlearn(make_mlp(0), empty, retain, loss=finetune(), epochs=1, lr=0.1)


@pytest.mark.parametrize("bad", [nn.CrossEntropyLoss(), nn.NLLLoss(), "gradient_ascent", 3])
def test_torch_loss_modules_and_non_callables_are_not_objectives(tiny, bad):
    retain, forget = tiny
    with pytest.raises(ModeConnError, match=r"loss\(model, batch\)") as info:
        unlearn(make_mlp(0), retain, forget, loss=bad, epochs=1, lr=0.1)
    assert "gradient_ascent()" in str(info.value) and "finetune()" in str(info.value)


def test_unlearn_copies_spectral_norm_models(tiny):
    retain, forget = tiny
    model = nn.Sequential(nn.utils.spectral_norm(nn.Linear(64, 10)))
    model(torch.randn(2, 64)).sum().backward()  # a non-leaf weight: deepcopy would refuse
    before = model[0].weight_orig.detach().clone()
    result = unlearn(model, retain, forget, loss=finetune(), epochs=1, lr=0.1, progress=False)
    assert not torch.equal(result[0].weight_orig, before)
    assert torch.equal(model[0].weight_orig, before)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x))))


class FailAt:
    """finetune, but at call ``call`` it runs the model (updating BatchNorm) and then fails."""

    def __init__(self, call: int, how: str) -> None:
        self.call, self.calls, self.how = call, 0, how
        self.inner = finetune()
        self.seen: dict[str, torch.Tensor] = {}
        self.needs = self.inner.needs

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.call:
            self.seen = snapshot(model)
        value = self.inner(model, batch)
        if self.calls != self.call:
            return value
        if self.how == "raise":
            raise Stop("objective failed")
        return value * float("nan")


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_a_failed_step_leaves_the_curve_at_its_last_good_state_buffers_included(tiny, how):
    retain, forget = tiny
    a, b = BNNet(), BNNet()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1)
    curve = CurveModel(a, start=a, end=b)
    loss = FailAt(call=3, how=how)
    error = Stop if how == "raise" else NonFiniteLossError
    with pytest.raises(error):
        fit_curve(
            curve, retain, forget, loss=loss, epochs=2, lr=0.05, batch_size=16, progress=False
        )
    assert same_state(snapshot(curve), loss.seen)


def test_a_non_finite_gradient_is_refused_before_the_update(tiny):
    retain, forget = tiny

    class InfGrad:
        needs = ("retain",)

        def __call__(self, model, batch):
            loss = F.cross_entropy(model(batch.inputs), batch.targets)
            return loss + torch.sqrt(loss * 0.0)  # sqrt'(0) = inf: finite value, inf gradient

    model = make_mlp(0)
    with pytest.raises(NonFiniteLossError, match="gradient") as info:
        unlearn(model, retain, forget, loss=InfGrad(), epochs=1, lr=0.1, progress=False)
    assert same_state(snapshot(info.value.model), snapshot(make_mlp(0)))


def test_callback_failures_leave_the_curve_after_its_last_step(tiny):
    retain, _ = tiny
    args = dict(loss=finetune(), lr=0.05, batch_size=16, progress=False)
    reference = CurveModel(make_mlp(0), end=make_mlp(1))
    fit_curve(reference, retain, None, max_steps=4, **args)

    def fail_at_four(step, model):
        if step == 4:
            raise Stop("step callback failed")

    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    with pytest.raises(Stop):
        fit_curve(curve, retain, None, epochs=3, step_callback=fail_at_four, **args)
    assert same_state(snapshot(curve), snapshot(reference))

    def fail(record, model):
        raise Stop("epoch callback failed")

    after_one = CurveModel(make_mlp(0), end=make_mlp(1))
    fit_curve(after_one, retain, None, epochs=1, **args)
    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    with pytest.raises(Stop):
        fit_curve(curve, retain, None, epochs=3, callbacks=[fail], **args)
    assert same_state(snapshot(curve), snapshot(after_one))


def test_a_nan_loss_in_unlearn_puts_back_the_batchnorm_statistics_of_the_failed_pass(tiny):
    retain, forget = tiny
    loss = FailAt(call=3, how="nan")
    with pytest.raises(NonFiniteLossError) as info:
        unlearn(
            BNNet(), retain, forget, loss=loss, epochs=2, lr=0.05, batch_size=16, progress=False
        )
    assert same_state(snapshot(info.value.model), loss.seen)


# --------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.1}, "epochs=... or max_steps"),
        ({"lr": 0.0, "epochs": 1}, "lr must be > 0"),
        ({"lr": float("nan"), "epochs": 1}, "lr must be a finite"),
        ({"lr": 0.1, "epochs": 0}, "epochs must be a positive integer"),
        ({"lr": 0.1, "epochs": 1.5}, "epochs must be a positive integer"),
        ({"lr": 0.1, "max_steps": -2}, "max_steps must be a positive integer"),
        ({"lr": 0.1, "epochs": 1, "optimizer": "lbfgs"}, "unknown optimizer"),
        ({"lr": 0.1, "epochs": 1, "momentum": -0.5}, "momentum must be >= 0"),
        ({"lr": 0.1, "epochs": 1, "weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"lr": 0.1, "epochs": 1, "batch_size": 0}, "batch_size"),
        ({"lr": 0.1, "epochs": 1, "retain_ratio": 1.5}, "retain_ratio"),
        ({"lr": 0.1, "epochs": 1, "seed": 1.0}, "seed must be an integer"),
        ({"lr": 0.1, "epochs": 1, "device": "gpu0"}, "not a torch device"),
        ({"lr": 0.1, "epochs": 1, "resume": True}, "checkpoint_dir"),
        ({"lr": 0.1, "epochs": 1, "callbacks": [1]}, "callbacks must be callables"),
        ({"lr": 0.1, "epochs": 1, "step_callback": 3}, "step_callback"),
        ({"lr": 0.1, "epochs": 1, "curriculum": "random"}, "curriculum"),
        ({"lr": 0.1, "epochs": 1, "t_sampler": (0.8, 0.2)}, "t_sampler"),
        ({"lr": 0.1, "epochs": 1, "compile": 1}, "compile"),
        ({"lr": 0.1, "epochs": 1, "create_graph": 1}, "create_graph must be True or False"),
        ({"lr": 0.1, "epochs": 1, "create_graph": True, "compile": True}, "double backward"),
        ({"lr": 0.1, "epochs": 1, "optimizer": "sophiah"}, "pass create_graph=True"),
        ({"lr": 0.1, "epochs": 1, "grad_accumulation": 0}, "grad_accumulation"),
        ({"lr": 0.1, "epochs": 1, "grad_accumulation": 2.0}, "grad_accumulation"),
    ],
)
def test_train_config_validates_every_field(kwargs, message):
    with pytest.raises(ModeConnError, match=message):
        TrainConfig(**kwargs)


def test_train_config_is_frozen_and_replace_checks_again():
    config = TrainConfig(lr=0.1, epochs=2)
    with pytest.raises(AttributeError):
        config.lr = 0.2  # type: ignore[misc]
    assert config.replace(batch_size=8).batch_size == 8
    with pytest.raises(ModeConnError, match="batch_size"):
        config.replace(batch_size=0)
    with pytest.raises(ModeConnError, match=r"unknown keyword.*'epoch'.*valid ones are"):
        config.replace(epoch=3)


def test_config_and_keywords_give_the_same_run(tiny):
    retain, forget = tiny
    config = TrainConfig(lr=0.05, epochs=2, batch_size=16, progress=False, seed=4)
    by_config = unlearn(make_mlp(0), retain, forget, loss=random_label(10), config=config)
    by_keywords = unlearn(
        make_mlp(0),
        retain,
        forget,
        loss=random_label(10),
        lr=0.05,
        epochs=2,
        batch_size=16,
        progress=False,
        seed=4,
    )
    assert same_state(snapshot(by_config), snapshot(by_keywords))
    overridden = unlearn(make_mlp(0), retain, forget, loss=random_label(10), config=config, seed=5)
    assert not same_state(snapshot(overridden), snapshot(by_config))


def test_unknown_and_inapplicable_keywords_are_errors(tiny):
    retain, forget = tiny
    with pytest.raises(
        ModeConnError, match=r"unknown keyword.*'epoch'.*valid ones are:.*max_steps"
    ):
        unlearn(make_mlp(0), retain, forget, loss=finetune(), epoch=3, lr=0.1)
    with pytest.raises(ModeConnError, match="t_sampler"):
        unlearn(make_mlp(0), retain, forget, loss=finetune(), epochs=1, lr=0.1, t_sampler=(0, 1))
    with pytest.raises(ModeConnError, match="retain_ratio"):
        retrain(make_mlp(0), retain, epochs=1, lr=0.1, retain_ratio=0.5)
    with pytest.raises(ModeConnError, match="needs lr="):
        unlearn(make_mlp(0), retain, forget, loss=finetune(), epochs=1)


def test_max_steps_and_step_callback_fine_tune_a_copy_for_k_steps(tiny):
    retain, _ = tiny
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    model = make_mlp(0)
    result = unlearn(
        model,
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        max_steps=4,
        batch_size=16,
        progress=False,
        step_callback=lambda step, m: seen.append((step, snapshot(m))),
    )
    assert [step for step, _ in seen] == [1, 2, 3, 4]  # 40 samples / 16: 3 steps per epoch
    assert same_state(seen[-1][1], snapshot(result))
    assert not same_state(seen[0][1], seen[1][1])
    # the same four steps by hand: SGD with momentum over the same batches
    longer = unlearn(
        model,
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        epochs=2,
        batch_size=16,
        progress=False,
        step_callback=lambda step, m: seen.append((step, snapshot(m))),
    )
    assert same_state(seen[4 + 3][1], seen[3][1])  # step 4 of the longer run = the short run
    assert not same_state(snapshot(longer), seen[3][1])


def test_max_steps_with_epochs_stops_at_the_first_limit(tiny):
    retain, forget = tiny
    records: list = []
    unlearn(
        make_mlp(0),
        retain,
        forget,
        loss=finetune(),
        lr=0.1,
        epochs=5,
        max_steps=4,
        batch_size=16,
        progress=False,
        callbacks=[lambda r, m: records.append(r)],
    )
    assert [r.steps for r in records] == [3, 1]


def test_a_callable_optimizer_is_plugged_in(tiny):
    retain, forget = tiny
    made = []

    def factory(params, lr):
        made.append(lr)
        return torch.optim.Adagrad(params, lr=lr)

    by_factory = unlearn(
        make_mlp(0),
        retain,
        forget,
        loss=finetune(),
        lr=0.05,
        epochs=1,
        optimizer=factory,
        progress=False,
    )
    by_name = unlearn(
        make_mlp(0),
        retain,
        forget,
        loss=finetune(),
        lr=0.05,
        epochs=1,
        optimizer=lambda p, lr: torch.optim.Adagrad(p, lr=lr),
        progress=False,
    )
    assert made == [0.05] and same_state(snapshot(by_factory), snapshot(by_name))


@pytest.fixture
def compiled_modules(monkeypatch):
    """The (module class, backend) of every ``torch.compile`` call; the real compile runs."""
    calls: list[tuple[str, str]] = []
    real = torch.compile

    def spy(module, *, backend="inductor", **kwargs):
        calls.append((type(module).__name__, backend))
        return real(module, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def test_compile_gives_the_same_model(tiny, compiled_modules):
    from torch._dynamo.utils import counters

    retain, forget = tiny
    args = dict(loss=finetune(), lr=0.05, epochs=1, batch_size=20, progress=False)
    plain = unlearn(make_mlp(0), retain, forget, **args)
    assert compiled_modules == []
    torch._dynamo.reset()
    counters.clear()
    compiled = unlearn(make_mlp(0), retain, forget, compile="eager", **args)
    assert compiled_modules == [("Sequential", "eager")]  # compile= was not ignored
    assert counters["stats"]["calls_captured"] > 0  # and the compiled module is what ran
    assert type(compiled).__name__ == "Sequential"
    assert set(compiled.state_dict()) == set(plain.state_dict())  # no _orig_mod. prefix
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)


def test_fit_curve_compiles_the_curve(tiny, compiled_modules):
    retain, forget = tiny
    args = dict(loss=mcu_objective(0.1), lr=0.05, epochs=1, batch_size=20, progress=False)
    plain, compiled = (CurveModel(make_mlp(0), end=make_mlp(1)) for _ in range(2))
    fit_curve(plain, retain, forget, **args)
    fit_curve(compiled, retain, forget, compile="eager", **args)
    assert compiled_modules == [("CurveModel", "eager")]
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value)


@pytest.mark.parametrize("curriculum", ["easy_first", "hard_first"])
def test_curriculum_orders_forget_samples_by_the_initial_loss(tiny, curriculum):
    retain, forget = tiny
    model = make_mlp(0)
    x = torch.stack([forget[i][0] for i in range(len(forget))])
    y = torch.tensor([int(forget[i][1]) for i in range(len(forget))])
    with torch.no_grad():
        initial = F.cross_entropy(model(x), y, reduction="none")
    expected = torch.argsort(-initial if curriculum == "hard_first" else initial, stable=True)
    order: list[torch.Tensor] = []

    class Spy:
        needs = ("retain", "forget")

        def __init__(self) -> None:
            self.inner = finetune()

        def __call__(self, m, batch):
            order.extend(batch.inputs[batch.is_forget])
            return self.inner(m, batch)

    unlearn(
        model,
        retain,
        forget,
        loss=Spy(),
        lr=0.01,
        epochs=1,
        batch_size=8,
        curriculum=curriculum,
        progress=False,
    )
    seen = torch.stack(order)
    assert torch.equal(seen, x[expected])


# --------------------------------------------------------------------------- create_graph
class HessianProbe(torch.optim.SGD):
    """SGD that also takes a Hessian-vector product H v (v = 1) of the gradients at each step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.products: list[list[torch.Tensor]] = []
        self.had_graph: list[bool] = []

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        self.had_graph.append(all(g.grad_fn is not None for g in grads))
        ones = [torch.ones_like(p) for p in params]
        self.products.append(list(torch.autograd.grad(grads, params, grad_outputs=ones)))
        return super().step(closure)


def full_batch_loss(model: nn.Module, dataset) -> torch.Tensor:
    x, y = tensors(dataset)
    return F.cross_entropy(model(x), y)


def one_epoch(model: nn.Module, retain, forget, **overrides) -> nn.Module:
    """``unlearn`` for one fine-tuning epoch at lr 0.1, with ``overrides``."""
    settings = dict(loss=finetune(), lr=0.1, epochs=1, progress=False)
    return unlearn(model, retain, forget, **{**settings, **overrides})


def test_create_graph_gives_the_first_order_run_bit_for_bit_and_clears_the_gradients(tiny):
    retain, forget = tiny
    args = dict(loss=random_label(10), lr=0.05, epochs=2, batch_size=8, progress=False)
    plain = unlearn(make_mlp(0), retain, forget, **args)
    with_graph = unlearn(make_mlp(0), retain, forget, create_graph=True, **args)
    assert same_state(snapshot(plain), snapshot(with_graph))
    assert all(p.grad is None for p in with_graph.parameters())  # no graph kept alive


def test_create_graph_lets_the_optimizer_take_hessian_vector_products(tiny):
    retain, _ = tiny
    made: list[HessianProbe] = []

    def probe(params, lr):
        made.append(HessianProbe(params, lr))
        return made[-1]

    model = make_mlp(0)
    unlearn(
        model,
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        max_steps=1,
        batch_size=len(retain),  # one full batch: the loss is the mean CE over the retain set
        weight_decay=0.0,
        optimizer=probe,
        create_graph=True,
        progress=False,
    )
    assert made[0].had_graph == [True]
    params = tuple(p.detach().clone() for p in model.parameters())
    names = [name for name, _ in model.named_parameters()]

    def loss_at(*values):
        state = dict(zip(names, values, strict=True))
        return full_batch_loss(lambda x: torch.func.functional_call(model, state, (x,)), retain)

    _, expected = torch.autograd.functional.hvp(
        loss_at, params, tuple(torch.ones_like(p) for p in params)
    )
    for got, want in zip(made[0].products[0], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_an_optimizer_that_needs_the_graph_without_create_graph_says_so(tiny):
    retain, forget = tiny
    model = make_mlp(0)
    before = snapshot(model)
    with pytest.raises(ModeConnError, match=r"HessianProbe\.step\(\).*pass create_graph=True"):
        one_epoch(model, retain, forget, optimizer=HessianProbe)
    assert same_state(snapshot(model), before)


def test_create_graph_is_refused_where_it_cannot_work(tiny, monkeypatch):
    retain, forget = tiny
    curve = CurveModel(make_mlp(0), end=make_mlp(1))
    with pytest.raises(ModeConnError, match=r"fit_curve.*differentiable once"):
        fit_curve(
            curve,
            retain,
            forget,
            loss=mcu_objective(0.1),
            lr=0.1,
            epochs=1,
            create_graph=True,
            progress=False,
        )
    import modeconn_unlearn.training.loop as loop

    monkeypatch.setattr(loop, "is_distributed", lambda: True)
    with pytest.raises(ModeConnError, match="torchrun"):
        one_epoch(make_mlp(0), retain, forget, create_graph=True)


def test_sophiah_is_pytorch_optimizers_sophiah_under_the_loop(tiny):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    retain, _ = tiny
    args = dict(lr=0.05, max_steps=3, batch_size=len(retain), seed=3, progress=False)
    ours = unlearn(
        make_mlp(0), retain, None, loss=finetune(), optimizer="sophiah", create_graph=True, **args
    )
    # By hand: the same full batch, SophiaH's defaults and the loop's weight decay, with the
    # global RNG (the Hutchinson probes) seeded as the loop seeds it.
    model = make_mlp(0)
    optimizer = pytorch_optimizer.SophiaH(model.parameters(), lr=0.05, weight_decay=5e-4)
    torch.manual_seed(3)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        full_batch_loss(model, retain).backward(create_graph=True)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    moved = sum(
        float((a - b).abs().sum())
        for a, b in zip(snapshot(ours).values(), snapshot(make_mlp(0)).values(), strict=True)
    )
    assert moved > 0.0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_sophiah_without_the_package_gives_an_install_hint(tiny, monkeypatch):
    import sys

    retain, forget = tiny
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import fails
    with pytest.raises(ModeConnError, match=r'pip install "modeconn-unlearn\[second-order\]"'):
        one_epoch(make_mlp(0), retain, forget, optimizer="sophiah", create_graph=True)


# --------------------------------------------------------------------------- language models
class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.head = nn.Linear(8, 11)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids))


class Examples(torch.utils.data.Dataset):
    """Dict items as language-model datasets give them; the answer is the last 3 tokens."""

    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, 11, (n, 6), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:3] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6), "labels": labels}


def test_unlearn_a_language_model_with_npo_on_dict_examples():
    from modeconn_unlearn.losses import npo
    from modeconn_unlearn.tasks import CausalLMTask

    task = CausalLMTask()
    retain, forget = Examples(12, 0), Examples(6, 1)
    model = TinyLM()

    def forget_nll(m):
        batch = [forget[i] for i in range(len(forget))]
        ids = torch.stack([b["input_ids"] for b in batch])
        labels = torch.stack([b["labels"] for b in batch])
        with torch.no_grad():
            return float(task(m, {"input_ids": ids}, labels).loss.mean())

    loss = npo(0.5, reference=model, retain_weight=1.0, task=task)
    records: list = []
    result = unlearn(
        model,
        retain,
        forget,
        loss=loss,
        lr=0.5,
        epochs=5,
        batch_size=6,
        progress=False,
        callbacks=[lambda r, m: records.append(r)],
    )
    assert forget_nll(result) > forget_nll(model) + 0.1
    assert all(0.0 <= r.forget_acc <= 100.0 for r in records)


def pad_examples(items):
    """Right-pad input_ids/attention_mask with 0 and labels with -100 (variable lengths)."""
    width = max(len(item["input_ids"]) for item in items)

    def pad(values, fill):
        return torch.stack(
            [torch.cat([v, torch.full((width - len(v),), fill, dtype=v.dtype)]) for v in values]
        )

    return {
        "input_ids": pad([i["input_ids"] for i in items], 0),
        "attention_mask": pad([i["attention_mask"] for i in items], 0),
        "labels": pad([i["labels"] for i in items], -100),
    }


class RaggedExamples(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(4, 8, (n,), generator=g)
        self.ids = [torch.randint(0, 11, (int(k),), generator=g) for k in lengths]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:2] = -100
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(len(self.ids[i]), dtype=torch.long),
            "labels": labels,
        }


def test_a_loader_with_its_own_collate_fn_keeps_it():
    from modeconn_unlearn.losses import gradient_difference
    from modeconn_unlearn.tasks import CausalLMTask

    retain = DataLoader(RaggedExamples(10, 0), batch_size=4, collate_fn=pad_examples)
    forget = RaggedExamples(4, 1)
    seen = []
    inner = gradient_difference(task=CausalLMTask())

    def spy(model, batch):
        seen.append(batch)
        return inner(model, batch)

    unlearn(TinyLM(), retain, forget, loss=spy, lr=0.1, epochs=1, batch_size=7, progress=False)
    assert [len(b.is_forget) for b in seen] == [7, 7]
    for batch in seen:
        assert set(batch.inputs) == {"input_ids", "attention_mask"}
        assert batch.targets.shape == batch.inputs["input_ids"].shape
        assert bool((batch.targets[batch.inputs["attention_mask"] == 0] == -100).all())


def test_resume_of_a_step_limited_run_is_bit_identical(tiny, tmp_path):
    retain, forget = tiny
    args = dict(loss=random_label(10), lr=0.05, batch_size=16, max_steps=5, progress=False)
    whole = unlearn(make_mlp(0), retain, forget, **args)

    def stop_after_first_epoch(record, model):
        if record.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            checkpoint_dir=tmp_path,
            callbacks=[stop_after_first_epoch],
            **args,
        )
    resumed = unlearn(make_mlp(0), retain, forget, checkpoint_dir=tmp_path, resume=True, **args)
    assert same_state(snapshot(resumed), snapshot(whole))
    again = unlearn(make_mlp(0), retain, forget, checkpoint_dir=tmp_path, resume=True, **args)
    assert same_state(snapshot(again), snapshot(whole))  # finished: nothing left to do
    with pytest.raises(ModeConnError, match="max_steps: 5 -> 6"):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            checkpoint_dir=tmp_path,
            resume=True,
            **{**args, "max_steps": 6},
        )


def test_a_curve_curriculum_ranks_forget_samples_by_the_curve_start(tiny):
    retain, forget = tiny
    start = make_mlp(0)
    curve = CurveModel(start, start=start, end=make_mlp(1))
    x = torch.stack([forget[i][0] for i in range(len(forget))])
    y = torch.tensor([int(forget[i][1]) for i in range(len(forget))])
    with torch.no_grad():
        expected = torch.argsort(F.cross_entropy(start(x), y, reduction="none"), stable=True)
    order: list[torch.Tensor] = []
    inner = mcu_objective(0.1)

    def spy(model, batch):
        order.extend(batch.inputs[batch.is_forget])
        return inner(model, batch)

    fit_curve(
        curve,
        retain,
        forget,
        loss=spy,
        lr=0.01,
        epochs=1,
        batch_size=8,
        curriculum="easy_first",
        progress=False,
    )
    assert torch.equal(torch.stack(order), x[expected])


# --------------------------------------------------------------------------- last batch
def _net(batchnorm: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    norm = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
    return nn.Sequential(nn.Linear(4, 8), norm, nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_an_epoch_ending_in_one_sample_drops_it_only_for_batchnorm(batchnorm):
    # 9 retain + 4 forget samples in batches of 4: both epochs end in a one-sample batch,
    # which BatchNorm cannot train on ("Expected more than 1 value per channel").
    data = TensorDataset(torch.randn(13, 4), torch.randint(0, 3, (13,)))
    retain, forget = Subset(data, range(9)), Subset(data, range(9, 13))
    model = _net(batchnorm, 0)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    retrain(model, retain, epochs=1, lr=0.01, batch_size=4, progress=False)
    assert sizes == ([4, 4] if batchnorm else [4, 4, 1])
    curve = CurveModel(model, start=model, end=_net(batchnorm, 1))
    sizes.clear()
    fit_curve(
        curve,
        retain,
        forget,
        loss=mcu_objective(1.0),
        epochs=1,
        lr=0.01,
        batch_size=4,
        progress=False,
    )
    assert sizes == ([4, 4, 4] if batchnorm else [4, 4, 4, 1])


def test_the_training_loader_batches_as_unlearn_loader_does():
    # build_loader's one-process order is documented as unlearn_loader's, bit for bit.
    from modeconn_unlearn.data import unlearn_loader
    from modeconn_unlearn.tasks import resolve_task
    from modeconn_unlearn.training.loaders import build_loader

    data = TensorDataset(torch.arange(26.0).reshape(13, 2), torch.arange(13) % 3)
    retain, forget = Subset(data, range(9)), Subset(data, range(9, 13))
    config = TrainConfig(lr=0.1, epochs=2, batch_size=4, retain_ratio=0.8, seed=5)
    built = build_loader(
        "unlearn",
        mcu_objective(1.0),
        retain,
        forget,
        config=config,
        task=resolve_task(None),
        model=_net(False, 0),
        device=torch.device("cpu"),
    ).loader
    plain = unlearn_loader(retain, forget, batch_size=4, retain_ratio=0.8, seed=5)
    for _ in range(2):  # two epochs: the generator carries on alike
        for ours, theirs in zip(built, plain, strict=True):
            assert torch.equal(ours.inputs, theirs.inputs)
            assert torch.equal(ours.is_forget, theirs.is_forget)
