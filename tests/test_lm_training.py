"""The loop's language-model settings: per-step schedules, gradient clipping, bf16 autocast.

Each is checked against a hand computation: the learning rate of every optimizer
step against the schedule's formula, the applied update against a clipped
gradient computed here, the dtype a forward hook sees under autocast, and a run
killed after an epoch and resumed against the uninterrupted run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import Stop, make_mlp, same_state, snapshot, stop_at, tensors
from torch import nn

import modeconn_unlearn as mcu
from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.losses import finetune
from modeconn_unlearn.recipe import RecipeConfig
from modeconn_unlearn.training import (
    TrainConfig,
    fit_curve,
    unlearn,
    warmup_schedule,
)
from modeconn_unlearn.training.loop import step_plan


def recording(lrs: list[float], optimizer_class: type = torch.optim.SGD):
    """An optimizer factory that records the learning rate of every step, as the step applies it."""

    def make(params, lr):  # type: ignore[no-untyped-def]
        optimizer = optimizer_class(params, lr=lr)
        optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
        return optimizer

    return make


def expected_lr(k: int, *, lr: float, warmup: int, total: int, decay: str) -> float:
    """The documented schedule: step k (from 1) of a run of ``total`` steps."""
    if k <= warmup:
        return lr * k / warmup
    if decay == "linear":
        return lr * (total - k + 1) / (total - warmup)
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (k - 1 - warmup) / (total - warmup)))
    return lr


# --------------------------------------------------------------------------- per-step schedules
@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
def test_every_optimizer_step_runs_at_the_hand_computed_warmup_schedule(tiny, decay):
    retain, _ = tiny  # 40 samples in batches of 8: 5 batches, 3 optimizer steps per epoch
    lrs: list[float] = []
    unlearn(
        make_mlp(0),
        retain,
        None,
        loss=finetune(),
        lr=0.2,
        epochs=3,
        batch_size=8,
        grad_accumulation=2,
        optimizer=recording(lrs),
        scheduler=warmup_schedule(2, decay=decay),
        scheduler_interval="step",
        progress=False,
    )
    total = 3 * 3
    assert len(lrs) == total
    want = [expected_lr(k, lr=0.2, warmup=2, total=total, decay=decay) for k in range(1, 10)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.2)


def test_a_step_schedule_spans_max_steps_and_a_fraction_of_it(tiny):
    retain, _ = tiny
    lrs: list[float] = []
    totals: list[int] = []

    def factory(optimizer, total_steps):  # type: ignore[no-untyped-def]
        totals.append(total_steps)
        return warmup_schedule(0.25)(optimizer, total_steps)

    unlearn(
        make_mlp(0),
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        max_steps=8,  # 5 batches per epoch: the run stops in its second epoch
        batch_size=8,
        optimizer=recording(lrs),
        scheduler=factory,
        scheduler_interval="step",
        progress=False,
    )
    assert totals == [8]
    want = [expected_lr(k, lr=0.1, warmup=2, total=8, decay="linear") for k in range(1, 9)]
    assert lrs == pytest.approx(want)


def test_an_epoch_schedule_still_steps_once_per_epoch(tiny):
    retain, _ = tiny
    lrs: list[float] = []
    unlearn(
        make_mlp(0),
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        epochs=2,
        batch_size=20,
        optimizer=recording(lrs),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        progress=False,
    )
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_a_run_killed_after_an_epoch_resumes_its_step_schedule_exactly(tiny, tmp_path):
    retain, forget = tiny  # 48 samples in batches of 8, 2 per step: 3 optimizer steps per epoch
    common = dict(
        loss=mcu.losses.neggrad_plus(0.5),
        epochs=3,
        lr=0.05,
        batch_size=8,
        grad_accumulation=2,
        scheduler=warmup_schedule(0.3, decay="cosine"),  # 3 warm-up steps of 9
        scheduler_interval="step",
        max_grad_norm=0.5,
        seed=2,
        progress=False,
    )
    full_lrs: list[float] = []
    adamw = recording(full_lrs, torch.optim.AdamW)
    full = unlearn(make_mlp(0), retain, forget, optimizer=adamw, **common)
    assert full_lrs == pytest.approx(
        [expected_lr(k, lr=0.05, warmup=3, total=9, decay="cosine") for k in range(1, 10)]
    )
    cut_lrs: list[float] = []
    with pytest.raises(Stop):
        unlearn(
            make_mlp(0),
            retain,
            forget,
            optimizer=recording(cut_lrs, torch.optim.AdamW),
            checkpoint_dir=tmp_path,
            callbacks=[stop_at(1)],
            **common,
        )
    saved = torch.load(tmp_path / "unlearn.pt", weights_only=True)
    assert saved["step"] == 3 and saved["scheduler"]["last_epoch"] == 3
    resumed_lrs: list[float] = []
    resumed = unlearn(
        make_mlp(0),  # a new process starts from a fresh model
        retain,
        forget,
        optimizer=recording(resumed_lrs, torch.optim.AdamW),
        checkpoint_dir=tmp_path,
        resume=True,
        **common,
    )
    assert cut_lrs + resumed_lrs == full_lrs
    assert same_state(snapshot(full), snapshot(resumed))


def test_resume_refuses_other_clipping_or_precision(tiny, tmp_path):
    retain, _ = tiny
    common = dict(loss=finetune(), epochs=2, lr=0.1, batch_size=20, progress=False)
    with pytest.raises(Stop):
        unlearn(
            make_mlp(0),
            retain,
            None,
            checkpoint_dir=tmp_path,
            callbacks=[stop_at(1)],
            max_grad_norm=1.0,
            **common,
        )
    for changed in ({"max_grad_norm": 2.0}, {"max_grad_norm": 1.0, "precision": "bf16"}):
        with pytest.raises(ModeConnError, match="settings differ"):
            unlearn(
                make_mlp(0), retain, None, checkpoint_dir=tmp_path, resume=True, **common, **changed
            )


# --------------------------------------------------------------------------- clipping
def manual_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def one_sgd_step(retain, **overrides) -> tuple[nn.Module, nn.Module]:  # type: ignore[no-untyped-def]
    """The model before and after one full-batch SGD step of lr 1 (no momentum, no decay)."""
    before = make_mlp(0)
    after = unlearn(
        before,
        retain,
        None,
        loss=finetune(),
        lr=1.0,
        max_steps=1,
        batch_size=len(retain),
        momentum=0.0,
        weight_decay=0.0,
        progress=False,
        **overrides,
    )
    return before, after


@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_clipping_scales_the_applied_gradient_as_clip_grad_norm_does(tiny, max_norm):
    retain, _ = tiny
    before, after = one_sgd_step(retain, max_grad_norm=max_norm)
    grads = manual_gradient(make_mlp(0), *tensors(retain))
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    scale = min(1.0, max_norm / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_'s coefficient
    params = dict(after.named_parameters())
    applied = {n: p.detach() - params[n].detach() for n, p in before.named_parameters()}
    for name, grad in grads.items():
        torch.testing.assert_close(applied[name], scale * grad, rtol=1e-4, atol=1e-7)
    applied_norm = math.sqrt(sum(float(d.pow(2).sum()) for d in applied.values()))
    assert applied_norm == pytest.approx(min(norm, max_norm), rel=1e-4)
    if max_norm > norm:  # a bound above the norm changes nothing, bit for bit
        _, unclipped = one_sgd_step(retain)
        assert same_state(snapshot(unclipped), snapshot(after))


def test_clipping_measures_only_the_entries_a_mask_lets_move(tiny):
    retain, _ = tiny
    model = make_mlp(0)
    keep = torch.zeros_like(model[0].weight, dtype=torch.bool)
    keep[:, :32] = True  # half of the first layer's entries train; every other tensor is frozen
    mask = {"0.weight": keep}
    before, after = one_sgd_step(retain, max_grad_norm=0.01, mask=mask)
    grad = manual_gradient(make_mlp(0), *tensors(retain))["0.weight"]
    moved = before[0].weight.detach() - after[0].weight.detach()
    assert torch.equal(moved[~keep], torch.zeros_like(moved[~keep]))
    # The whole step is the bound: the fixed entries' gradient took no share of it.
    assert float(moved.norm()) == pytest.approx(0.01, rel=1e-4)
    scale = 0.01 / (float(grad[keep].norm()) + 1e-6)
    torch.testing.assert_close(moved[keep], scale * grad[keep], rtol=1e-4, atol=1e-8)


def test_clipping_bounds_a_curves_step_over_its_trained_entries(tiny):
    retain, _ = tiny
    a, b = make_mlp(0), make_mlp(1)
    curve = CurveModel(a, start=a, end=b, t_sampler=lambda: 0.5)
    before = [p.detach().clone() for p in curve.parameters()]
    fit_curve(
        curve,
        retain,
        None,
        loss=finetune(),
        lr=1.0,
        max_steps=1,
        batch_size=len(retain),
        momentum=0.0,
        max_grad_norm=0.02,
        progress=False,
    )
    moved = [p.detach() - q for p, q in zip(curve.parameters(), before, strict=True)]
    assert math.sqrt(sum(float(m.pow(2).sum()) for m in moved)) == pytest.approx(0.02, rel=1e-4)


# --------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_bf16_runs_the_forward_under_autocast_and_keeps_float32_weights(tiny, precision, dtype):
    retain, forget = tiny
    seen: set[torch.dtype] = set()

    def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if module.training:  # the loop's forward passes, not the curriculum's scoring
            seen.add(output.dtype)

    model = make_mlp(0)
    handle = model[0].register_forward_hook(record)
    try:
        result = unlearn(
            model,
            retain,
            forget,
            loss=mcu.losses.neggrad_plus(0.5),
            lr=0.05,
            epochs=1,
            batch_size=16,
            precision=precision,
            progress=False,
        )
    finally:
        handle.remove()
    assert seen == {dtype}
    assert all(p.dtype == torch.float32 for p in result.parameters())
    assert not same_state(snapshot(result), snapshot(make_mlp(0)))


def test_bf16_is_refused_where_autocast_is_not_available(tiny, monkeypatch):
    retain, _ = tiny
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ModeConnError, match="precision='fp32'"):
        unlearn(
            make_mlp(0),
            retain,
            None,
            loss=finetune(),
            lr=0.1,
            epochs=1,
            precision="bf16",
            progress=False,
        )


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    reason="needs a CUDA device with bfloat16",
)
def test_bf16_on_a_gpu_runs_the_forward_in_bfloat16(tiny):
    retain, _ = tiny
    seen: set[torch.dtype] = set()
    model = make_mlp(0)
    model[0].register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    result = unlearn(
        model,
        retain,
        None,
        loss=finetune(),
        lr=0.1,
        epochs=1,
        batch_size=16,
        precision="bf16",
        max_grad_norm=1.0,
        device="cuda",
        progress=False,
    )
    assert seen == {torch.bfloat16}
    assert {p.device.type for p in result.parameters()} == {"cuda"}
    assert all(p.dtype == torch.float32 for p in result.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_a_gpu_without_bfloat16_is_refused(tiny, monkeypatch):
    retain, _ = tiny
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ModeConnError, match="is_bf16_supported"):
        unlearn(
            make_mlp(0),
            retain,
            None,
            loss=finetune(),
            lr=0.1,
            epochs=1,
            precision="bf16",
            device="cuda",
            progress=False,
        )


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheduler_interval": "batch"}, "scheduler_interval must be 'epoch' or 'step'"),
        ({"scheduler_interval": "step"}, "needs a scheduler"),
        ({"scheduler": warmup_schedule(2)}, "pass scheduler_interval='step'"),
        (
            {"scheduler": lambda opt: None, "scheduler_interval": "step"},
            "needs scheduler_interval='epoch'",
        ),
        ({"scheduler": 3}, "scheduler must be a factory"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm must be a finite"),
        ({"precision": "fp16"}, "precision must be 'fp32' or 'bf16'"),
        ({"create_graph": True, "max_grad_norm": 1.0}, "drop max_grad_norm"),
    ],
)
def test_train_config_checks_the_lm_fields(kwargs, message):
    with pytest.raises(ModeConnError, match=message):
        TrainConfig(lr=0.1, epochs=1, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1.0,), {}, r"lie in \[0, 1\)"),
        ((-1,), {}, "warmup must be an integer >= 0"),
        (("10",), {}, "warmup must be a number"),
        ((True,), {}, "warmup must be a number"),
        ((0,), {"decay": "exp"}, "decay must be"),
    ],
)
def test_warmup_schedule_checks_its_arguments(args, kwargs, message):
    with pytest.raises(ModeConnError, match=message):
        warmup_schedule(*args, **kwargs)


def test_warmup_schedule_refuses_a_warmup_as_long_as_the_run():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ModeConnError, match="leaves none of the run's 4"):
        warmup_schedule(4)(optimizer, 4)
    assert repr(warmup_schedule(0.1, decay="cosine")) == "warmup_schedule(0.1, decay='cosine')"
    assert warmup_schedule(3) == warmup_schedule(3)


def test_a_factory_that_returns_no_scheduler_is_named(tiny):
    retain, _ = tiny
    with pytest.raises(ModeConnError, match="returned NoneType"):
        unlearn(
            make_mlp(0),
            retain,
            None,
            loss=finetune(),
            lr=0.1,
            epochs=1,
            scheduler=lambda optimizer, total: None,
            scheduler_interval="step",
            progress=False,
        )


def test_step_plan_counts_optimizer_steps():
    assert step_plan(TrainConfig(lr=0.1, epochs=2), batches=5) == (2, 5, 10)
    assert step_plan(TrainConfig(lr=0.1, epochs=2, grad_accumulation=2), batches=5) == (2, 3, 6)
    assert step_plan(TrainConfig(lr=0.1, epochs=4, max_steps=7), batches=3) == (4, 3, 7)


# --------------------------------------------------------------------------- the recipe
def test_the_recipe_hands_schedule_clipping_and_precision_to_curve_training(tiny, monkeypatch):
    from modeconn_unlearn.recipe import run as recipe_run

    retain, forget = tiny
    seen: dict[str, object] = {}
    real = recipe_run.fit_curve

    def spy(curve, retain_data, forget_data, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        return real(curve, retain_data, forget_data, **kwargs)

    monkeypatch.setattr(recipe_run, "fit_curve", spy)
    schedule = warmup_schedule(0.2, decay="cosine")
    config = RecipeConfig(
        epochs=2,
        batch_size=16,
        optimizer="adamw",
        scheduler=schedule,
        scheduler_interval="step",
        max_grad_norm=0.5,
        precision="bf16",
        mask="all",
    )
    original, theta_u = make_mlp(0), make_mlp(1)
    targets = mcu.user_targets(original, retain, scenario="class")
    result = mcu.mcu_unlearn(original, theta_u, retain, forget, targets=targets, config=config)
    assert seen["scheduler"] is schedule and seen["scheduler_interval"] == "step"
    assert seen["max_grad_norm"] == 0.5 and seen["precision"] == "bf16"
    assert len(result.history) == 2
    assert json.loads(json.dumps(config.to_dict()))["scheduler"] == repr(schedule)


def test_recipe_config_checks_the_training_fields_as_train_config_does():
    with pytest.raises(ModeConnError, match="needs a scheduler"):
        RecipeConfig(scheduler_interval="step")
    with pytest.raises(ModeConnError, match="max_grad_norm must be > 0"):
        RecipeConfig(max_grad_norm=-1.0)
    with pytest.raises(ModeConnError, match="precision"):
        RecipeConfig(precision="half")
    lm = RecipeConfig.for_task("causal_lm")
    assert (lm.scheduler, lm.max_grad_norm, lm.precision) == (None, None, "fp32")
    assert RecipeConfig().to_dict()["scheduler"] is None
