"""Path ensembles: the average of a curve's models at several t."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_mlp
from torch import nn
from torch.utils.data import TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn.errors import ModeConnError


def test_ensemble_returns_the_log_of_the_mean_probability() -> None:
    curve = mcu.CurveModel(make_mlp(0), end=make_mlp(1))
    ts = [0.2, 0.6, 1.0]
    ensemble = mcu.path_ensemble(curve, ts)
    x = torch.randn(7, 64)
    with torch.no_grad():
        probs = [torch.softmax(curve(x, t=t), dim=-1) for t in ts]
        expected = torch.log(sum(probs) / 3)  # type: ignore[arg-type]
        torch.testing.assert_close(ensemble(x), expected)
    assert ensemble.ts == (0.2, 0.6, 1.0) and len(ensemble.members) == 3


def test_a_single_member_ensemble_predicts_like_its_model() -> None:
    curve = mcu.CurveModel(make_mlp(0), end=make_mlp(1))
    x = torch.randn(5, 64)
    with torch.no_grad():
        out = mcu.path_ensemble(curve, [0.5])(x)
        torch.testing.assert_close(out, curve(x, t=0.5).log_softmax(-1))
    assert torch.allclose(out.exp().sum(-1), torch.ones(5))


def test_members_are_trainable_copies_so_relearning_moves_them_all() -> None:
    torch.manual_seed(0)
    curve = mcu.CurveModel(make_mlp(0), end=make_mlp(1))
    ensemble = mcu.path_ensemble(curve, [0.4, 0.9])
    forget = TensorDataset(torch.randn(20, 64), torch.randint(0, 10, (20,)))
    result = mcu.relearn_attack(ensemble, forget, steps=3, lr=0.5, samples=10)
    assert result.train_loss[-2] < result.train_loss[0]  # the members learn
    # The curve itself is untouched by the attack on its ensemble.
    torch.testing.assert_close(
        curve.export(0.4).state_dict()["0.weight"],
        ensemble.members[0].state_dict()["0.weight"],
    )


def test_outputs_with_logits_keep_their_type() -> None:
    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.inner = make_mlp(seed)

        def forward(self, x: torch.Tensor) -> Output:
            return Output(self.inner(x))

    a, b = Wrapped(0), Wrapped(1)
    x = torch.randn(3, 64)
    out = mcu.PathEnsemble([a, b])(x)
    assert isinstance(out, Output)
    mean = (a(x).logits.softmax(-1) + b(x).logits.softmax(-1)) / 2
    torch.testing.assert_close(out.logits, mean.log())
    assert math.isclose(float(out.logits.detach().exp().sum()), 3.0, rel_tol=1e-5)


def test_bad_input_is_refused() -> None:
    curve = mcu.CurveModel(make_mlp(0), end=make_mlp(1))
    with pytest.raises(ModeConnError, match="at least one t"):
        mcu.path_ensemble(curve, [])
    with pytest.raises(ModeConnError, match="CurveModel"):
        mcu.path_ensemble(make_mlp(0), [0.5])  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="at least one member"):
        mcu.PathEnsemble([])

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(ModeConnError, match="logits tensor"):
        mcu.PathEnsemble([Pair()])(torch.randn(2, 3))
