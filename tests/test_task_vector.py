from __future__ import annotations

import pytest
import torch
from helpers import assert_unchanged, make_mlp, model_state
from torch import nn

from modeconn_unlearn.errors import IncompatibleModelsError, ModeConnError
from modeconn_unlearn.task_vector import negate_task_vector


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    other = type(model)() if not isinstance(model, nn.Sequential) else make_mlp(0)
    other.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for b in other.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    return other


def test_matches_hand_computation_and_keeps_original():
    original = make_mlp(0)
    finetuned = perturbed(original, 1)
    before = model_state(original)
    negated = negate_task_vector(original, finetuned, coef=0.7)
    assert type(negated) is type(original) and negated is not original
    for (name, p), o, f in zip(
        negated.named_parameters(), original.parameters(), finetuned.parameters(), strict=True
    ):
        expected = o.detach().numpy() - 0.7 * (f.detach().numpy() - o.detach().numpy())
        assert torch.allclose(p.detach(), torch.from_numpy(expected), atol=1e-6), name
    assert_unchanged(original, before)


def test_buffers_come_from_the_original():
    original = BNNet()
    with torch.no_grad():
        original.bn.running_mean.fill_(0.5)
    finetuned = perturbed(original, 2)
    negated = negate_task_vector(original, finetuned, coef=1.0)
    assert torch.equal(negated.bn.running_mean, original.bn.running_mean)
    assert torch.equal(negated.bn.running_var, original.bn.running_var)
    assert torch.equal(negated.bn.num_batches_tracked, original.bn.num_batches_tracked)
    expected = 2 * original.bn.weight - finetuned.bn.weight
    assert torch.allclose(negated.bn.weight, expected)


def test_coef_zero_is_a_copy_and_state_dicts_are_accepted():
    original = make_mlp(0)
    finetuned = perturbed(original, 3)
    copy0 = negate_task_vector(original, finetuned, coef=0.0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(copy0.state_dict().values(), original.state_dict().values(), strict=True)
    )
    wrapped = {f"module.{k}": v for k, v in finetuned.state_dict().items()}
    a = negate_task_vector(original, wrapped, coef=0.5)
    b = negate_task_vector(original, finetuned, coef=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_lowers_forget_accuracy_on_digits(digits):
    # NegTV: fine-tune on the forget set, then subtract the task vector.
    train, _ = digits
    x, y = train.tensors
    forget = torch.arange(len(y))[:100]
    model = make_mlp(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    finetuned = make_mlp(0)
    finetuned.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(finetuned.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(finetuned(x[forget]), y[forget]).backward()
        optimizer.step()

    def forget_acc(m):
        with torch.no_grad():
            return float((m(x[forget]).argmax(1) == y[forget]).float().mean())

    negated = negate_task_vector(model, finetuned, coef=3.0)
    assert forget_acc(negated) < forget_acc(model) - 0.05


def test_mismatches_name_the_keys():
    original = make_mlp(0)
    state = original.state_dict()
    missing = {k: v for k, v in state.items() if k != "2.bias"}
    with pytest.raises(IncompatibleModelsError, match=r"missing from finetuned: '2\.bias'"):
        negate_task_vector(original, missing)
    extra = {**state, "head.weight": torch.zeros(1)}
    with pytest.raises(IncompatibleModelsError, match=r"not in original: 'head\.weight'"):
        negate_task_vector(original, extra)
    reshaped = {**state, "0.weight": torch.zeros(3, 3)}
    with pytest.raises(IncompatibleModelsError, match=r"'0\.weight' \(3, 3\) vs \(32, 64\)"):
        negate_task_vector(original, reshaped)
    doubled = {**state, "0.bias": state["0.bias"].double()}
    with pytest.raises(IncompatibleModelsError, match="dtype"):
        negate_task_vector(original, doubled)
    with pytest.raises(ModeConnError, match="coef"):
        negate_task_vector(original, state, coef=float("nan"))


def test_spectral_norm_models_are_copied_after_a_forward_with_gradients():
    original = nn.utils.spectral_norm(nn.Linear(3, 2))
    original(torch.randn(4, 3)).sum().backward()  # leaves a non-leaf `weight` attribute
    finetuned = {k: v.detach() + 0.1 for k, v in original.state_dict().items()}
    negated = negate_task_vector(original, finetuned, coef=1.0)
    expected = original.weight_orig.detach() - 0.1
    torch.testing.assert_close(negated.weight_orig.detach(), expected)
