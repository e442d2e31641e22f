"""Train/eval modes: the helpers, and that no public function changes the user's model.

A user fine-tuning a model freezes a BatchNorm (eval mode, no gradients) and disables a
dropout inside a model that is in training mode. Every public function that runs such a
model must hand it back exactly so: each submodule's mode, every parameter, buffer,
``requires_grad`` flag and gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import assert_unchanged, model_state
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn.batchnorm import with_bn_from
from modeconn_unlearn.lm import lm_outputs
from modeconn_unlearn.mia import svc_mia, threshold_attack
from modeconn_unlearn.modes import evaluating, keeping_modes
from modeconn_unlearn.recipe import Targets, mcu_unlearn, user_targets


def frozen_bn_model() -> nn.Module:
    """A training model whose BatchNorm is frozen (eval, no grad) and dropout disabled."""
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    ).train()
    model[1].eval().requires_grad_(False)
    model[3].eval()
    with torch.no_grad():  # statistics that are not the defaults, so a reset would show
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    return model


class TinyLM(nn.Module):
    """Plain next-token logits; its dropout is disabled while the model trains."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        self.drop = nn.Dropout(0.5).eval()
        self.head = nn.Linear(8, 6)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head(self.drop(self.embed(input_ids)))


torch.manual_seed(0)
DATA = TensorDataset(torch.randn(24, 4), torch.randint(0, 3, (24,)))
LM_DATA = [(torch.tensor([0, 1, 2, 3]), torch.tensor([-100, 1, 2, 3])) for _ in range(4)]
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.01, "progress": False}

#: (name, model factory, call, whether the call keeps the buffers)
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module], object], bool]] = [
    ("saliency_mask", frozen_bn_model, lambda m: mcu.saliency_mask(m, DATA), True),
    ("layer_mask", frozen_bn_model, lambda m: mcu.layer_mask(m, DATA, DATA), True),
    # Re-estimating the statistics is update_bn's job: only its buffers may change.
    ("update_bn", frozen_bn_model, lambda m: mcu.update_bn(m, DataLoader(DATA, 8)), False),
    ("evaluate", frozen_bn_model, lambda m: mcu.evaluate(m, DATA), True),
    (
        "unlearn",
        frozen_bn_model,
        lambda m: mcu.unlearn(m, DATA, DATA, loss=mcu.losses.random_label(3), **TRAIN),
        True,
    ),
    (
        "unlearn_with_the_model_as_reference",
        frozen_bn_model,
        lambda m: mcu.unlearn(m, DATA, DATA, loss=mcu.losses.npo(reference=m), **TRAIN),
        True,
    ),
    (
        "unlearning_scores",
        frozen_bn_model,
        lambda m: mcu.unlearning_scores(m, retain=DATA, forget=DATA, test=DATA),
        True,
    ),
    (
        "svc_mia",
        frozen_bn_model,
        lambda m: svc_mia(m, shadow_train=DATA, shadow_test=DATA, target_train=DATA),
        True,
    ),
    (
        "threshold_attack",
        frozen_bn_model,
        lambda m: threshold_attack(m, member=DATA, nonmember=DATA),
        True,
    ),
    ("user_targets", frozen_bn_model, lambda m: user_targets(m, DATA, DATA), True),
    (
        "CurveModel_export",
        frozen_bn_model,
        lambda m: mcu.CurveModel(m, end=m).export(0.5, bn_loader=DataLoader(DATA, 8)),
        True,
    ),
    (
        "path_ensemble",
        frozen_bn_model,
        lambda m: mcu.path_ensemble(mcu.CurveModel(m, end=m), [0.3, 0.6]),
        True,
    ),
    (
        "mcu_unlearn",
        frozen_bn_model,
        lambda m: mcu_unlearn(m, m, DATA, DATA, targets=Targets(90.0, 50.0, "random")),
        True,
    ),
    ("lm_outputs", TinyLM, lambda m: lm_outputs(m, LM_DATA), True),
    ("with_bn_from", frozen_bn_model, lambda m: with_bn_from(m, DataLoader(DATA, 8)), True),
    ("loss_barrier", frozen_bn_model, lambda m: mcu.loss_barrier(m, m, {"retain": DATA}), True),
    (
        "search_path",
        frozen_bn_model,
        lambda m: mcu.search_path(
            mcu.CurveModel(m, end=m),
            {"retain": DATA, "forget": DATA},
            retain_target=90.0,
            forget_target=50.0,
            progress=False,
        ),
        True,
    ),
]


@pytest.mark.parametrize(
    ("make", "call", "keeps_buffers"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_public_functions_leave_the_users_model_as_it_was(
    make: Callable[[], nn.Module], call: Callable[[nn.Module], object], keeps_buffers: bool
) -> None:
    model = make()
    before = model_state(model)
    call(model)
    assert_unchanged(model, before, buffers=keeps_buffers)


def test_evaluating_restores_each_submodule_after_an_error() -> None:
    model = frozen_bn_model()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="inside"), evaluating(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert_unchanged(model, before)


def test_keeping_modes_restores_what_the_block_switched() -> None:
    model = frozen_bn_model().eval()
    model[4].train()  # a child in train mode under a parent in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    with keeping_modes(model) as kept:
        assert kept is model
        model.train()
        model[4].eval()
    assert {name: m.training for name, m in model.named_modules()} == modes
