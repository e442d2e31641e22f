from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import assert_unchanged, model_state
from torch import nn

from modeconn_unlearn.cloning import clone_module


def _spectral() -> nn.Module:
    return nn.Sequential(torch.nn.utils.spectral_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 2))


def _weight_norm() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hook-based API is deprecated
        layer = torch.nn.utils.weight_norm(nn.Linear(4, 5))
    return nn.Sequential(layer, nn.Tanh(), nn.Linear(5, 2))


@pytest.mark.parametrize("build", [_spectral, _weight_norm], ids=["spectral_norm", "weight_norm"])
def test_clone_after_backward_is_equal_and_independent(build) -> None:
    model = build()
    x = torch.randn(3, 4)
    model(x).sum().backward()
    assert model[0].weight.grad_fn is not None  # the non-leaf attribute deepcopy refuses
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)
    clone = clone_module(model)
    assert clone[0].weight.grad_fn is None
    before = model_state(model)
    assert clone.state_dict().keys() == model.state_dict().keys()
    for key, value in clone.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
        assert value.data_ptr() != model.state_dict()[key].data_ptr(), key
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), model.eval()(x))
        for p in clone.parameters():
            p.add_(1.0)
    assert_unchanged(model.train(), before)
    clone.train()
    clone(x).sum().backward()
    assert all(p.grad is not None for p in clone.parameters())
    assert clone[0].weight is not model[0].weight


def test_clone_of_plain_module_is_a_deep_copy() -> None:
    model = nn.Linear(3, 2)
    clone = clone_module(model)
    assert type(clone) is nn.Linear and clone.weight is not model.weight
    assert torch.equal(clone.weight, model.weight)
