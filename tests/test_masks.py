from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.masks import (
    layer_mask,
    load_mask,
    random_mask,
    saliency_mask,
    save_mask,
    validate_mask,
)


class TwoHead(nn.Module):
    """logits = A x[:, :2] + a + B x[:, 2:]: gradients have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
            self.a.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
            self.b.weight.copy_(0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :2]) + self.b(x[:, 2:])


def data(seed: int, n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def hand_gradients(model: TwoHead, dataset: TensorDataset) -> dict[str, np.ndarray]:
    """Σ_i ∇ CE_i in numpy: dCE/dlogits = softmax - onehot."""
    x, y = (t.numpy().astype(np.float64) for t in dataset.tensors)
    x = x.astype(np.float64)
    a_w = model.a.weight.detach().numpy().astype(np.float64)
    a_b = model.a.bias.detach().numpy().astype(np.float64)
    b_w = model.b.weight.detach().numpy().astype(np.float64)
    z = x[:, :2] @ a_w.T + a_b + x[:, 2:] @ b_w.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p - np.eye(3)[y.astype(int)]
    return {"a.weight": g.T @ x[:, :2], "a.bias": g.sum(0), "b.weight": g.T @ x[:, 2:]}


def make_model() -> TwoHead:
    return TwoHead().float()


def count(mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


# --------------------------------------------------------------------------- saliency
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_saliency_mask_matches_hand_computation(sparsity):
    model, forget = make_model(), data(0)
    grads = hand_gradients(model, forget)
    names = ["a.weight", "a.bias", "b.weight"]
    scores = np.concatenate([np.abs(grads[n]).ravel() for n in names])
    total = scores.size  # 6 + 3 + 12 = 21
    keep = total - round(sparsity * total)
    top = np.argsort(-scores, kind="stable")[:keep]
    expected_flat = np.zeros(total, dtype=bool)
    expected_flat[top] = True

    mask = saliency_mask(model, forget, sparsity=sparsity)
    assert list(mask) == names
    got_flat = np.concatenate([mask[n].numpy().ravel() for n in names])
    np.testing.assert_array_equal(got_flat, expected_flat)
    assert count(mask) == keep
    assert all(
        mask[n].dtype == torch.bool and mask[n].shape == p.shape
        for n, p in model.named_parameters()
    )


def test_saliency_sparsity_means_fraction_frozen_and_keeps_largest_gradients():
    model, forget = make_model(), data(0, n=30)
    mask = saliency_mask(model, forget, sparsity=0.5)
    grads = hand_gradients(model, forget)
    kept = np.concatenate([np.abs(grads[n])[mask[n].numpy()] for n in mask])
    dropped = np.concatenate([np.abs(grads[n])[~mask[n].numpy()] for n in mask])
    assert kept.size == 11 and dropped.size == 10  # 21 - round(10.5) trainable
    assert kept.min() >= dropped.max()


def test_saliency_does_not_depend_on_batching_and_leaves_model_untouched():
    model, forget = make_model(), data(0, n=20)
    model.train()
    by_dataset = saliency_mask(model, forget, sparsity=0.6)
    by_loader = saliency_mask(model, DataLoader(forget, batch_size=3), sparsity=0.6)
    assert all(torch.equal(by_dataset[n], by_loader[n]) for n in by_dataset)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- layer mask
def layer_scores(model, retain, forget):
    rg, fg = hand_gradients(model, retain), hand_gradients(model, forget)
    return (
        {n: np.linalg.norm(g) / g.size for n, g in rg.items()},
        {n: np.linalg.norm(g) / g.size for n, g in fg.items()},
    )


def test_layer_mask_matches_hand_computation():
    model, retain, forget = make_model(), data(1, n=40), data(2, n=10)
    retain_score, forget_score = layer_scores(model, retain, forget)
    numel = {"a.weight": 6, "a.bias": 3, "b.weight": 12}
    by_forget = sorted(numel, key=lambda n: -forget_score[n])
    by_retain = sorted(numel, key=lambda n: -retain_score[n])

    def expected(k: float, kr: float) -> set[str]:
        excluded, covered = set(), 0
        for n in by_retain:
            if covered >= kr * 21:
                break
            excluded.add(n)
            covered += numel[n]
        chosen, covered = set(), 0
        for n in by_forget:
            if n in excluded:
                continue
            if covered >= k * 21:
                break
            chosen.add(n)
            covered += numel[n]
        return chosen

    for k, kr in [
        (0.1, 0.0),
        (0.3, 0.0),
        (0.5, 0.0),
        (1.0, 0.0),
        (0.5, 0.1),
        (0.8, 0.1),
        (0.5, 0.4),
    ]:
        mask = layer_mask(model, retain, forget, k=k, kr=kr)
        trainable = {n for n, m in mask.items() if bool(m.all())}
        frozen = {n for n, m in mask.items() if not bool(m.any())}
        assert trainable | frozen == set(numel)  # whole tensors only
        assert trainable == expected(k, kr), (k, kr)
    # Spelled out: the smallest k takes exactly the tensor with the largest forget score.
    assert by_forget[0] == "a.bias" and by_retain[0] == "a.bias"
    assert expected(0.8, 0.1) == {"b.weight", "a.weight"}
    with pytest.raises(ModeConnError, match="excludes every parameter tensor"):
        layer_mask(model, retain, forget, k=0.5, kr=0.6)
    # Spelled out for the smallest k: exactly the tensor with the largest forget score.
    mask = layer_mask(model, retain, forget, k=0.1)
    assert [n for n, m in mask.items() if m.all()] == [by_forget[0]]


def test_layer_mask_retain_exclusion():
    model, retain, forget = make_model(), data(1, n=40), data(2, n=10)
    retain_score, _ = layer_scores(model, retain, forget)
    top_retain = max(retain_score, key=retain_score.get)
    mask = layer_mask(model, retain, forget, k=1.0, kr=0.01)
    assert not bool(mask[top_retain].any())
    assert all(bool(m.all()) for n, m in mask.items() if n != top_retain)


@pytest.mark.parametrize(("k", "kr"), [(0.0, 0.0), (1.5, 0.0), (0.5, 1.0), (0.5, -0.1)])
def test_layer_mask_argument_errors(k, kr):
    with pytest.raises(ModeConnError):
        layer_mask(make_model(), data(1), data(2), k=k, kr=kr)


# --------------------------------------------------------------------------- random, errors
def test_random_mask_counts_and_seed():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 3))  # 143 entries
    mask = random_mask(model, sparsity=0.3, seed=1)
    assert count(mask) == 143 - round(0.3 * 143)
    again = random_mask(model, sparsity=0.3, seed=1)
    other = random_mask(model, sparsity=0.3, seed=2)
    assert all(torch.equal(mask[n], again[n]) for n in mask)
    assert any(not torch.equal(mask[n], other[n]) for n in mask)


def test_masks_refuse_bad_input():
    model = make_model()
    with pytest.raises(ModeConnError, match=r"\[0, 1\)"):
        saliency_mask(model, data(0), sparsity=1.0)
    with pytest.raises(ModeConnError, match="empty"):
        saliency_mask(model, torch.utils.data.Subset(data(0), []))
    curve = CurveModel(model, end=make_model())
    with pytest.raises(ModeConnError, match="original model"):
        saliency_mask(curve, data(0))
    with pytest.raises(ModeConnError, match="sparsity"):
        random_mask(model, sparsity=-0.1)


def test_masks_plug_into_curve_model():
    model = make_model()
    mask = saliency_mask(model, data(0), sparsity=0.5)
    curve = CurveModel(model, end=make_model(), num_bends=3, mask=mask)
    assert sum(p.numel() for p in curve.parameters()) == count(mask)
    lmask = layer_mask(model, data(1), data(2), k=0.3)
    curve = CurveModel(model, end=make_model(), num_bends=3, mask=lmask)
    assert sum(p.numel() for p in curve.parameters()) == count(lmask)


# --------------------------------------------------------------------------- save / load / validate
def test_save_and_load_round_trip(tmp_path):
    model = make_model()
    mask = saliency_mask(model, data(0), sparsity=0.5)
    path = tmp_path / "mask.pt"
    save_mask(mask, path)
    loaded = load_mask(path)
    assert list(loaded) == list(mask)
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    assert torch.load(path, weights_only=True).keys() == mask.keys()


def test_save_and_load_refuse_non_bool(tmp_path):
    with pytest.raises(ModeConnError, match="not bool tensors"):
        save_mask({"w": torch.ones(2)}, tmp_path / "m.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "float.pt")
    with pytest.raises(ModeConnError, match="'w'"):
        load_mask(tmp_path / "float.pt")
    with pytest.raises(ModeConnError, match="does not exist"):
        load_mask(tmp_path / "missing.pt")


def test_validate_mask():
    model = nn.Linear(2, 2)
    full = validate_mask({"weight": torch.tensor([[True, False], [False, True]])}, model)
    assert full["weight"].tolist() == [[True, False], [False, True]]
    assert not bool(full["bias"].any())
    with pytest.raises(ModeConnError, match="'wieght'"):
        validate_mask({"wieght": True}, model)
    with pytest.raises(ModeConnError, match="shape"):
        validate_mask({"weight": torch.ones(3, dtype=torch.bool)}, model)
    with pytest.raises(ModeConnError, match="bool"):
        validate_mask({"weight": torch.ones(2, 2)}, model)


# --------------------------------------------------------------------------- task layer
class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 5)
        self.head = nn.Linear(5, 7)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids))


class LMExamples(torch.utils.data.Dataset):
    """Dict items (input_ids, attention_mask, labels) as language-model datasets give them."""

    def __init__(self, n: int = 6) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(0, 7, (n, 5), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:2] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(5), "labels": labels}


def test_saliency_mask_scores_the_task_loss_of_a_language_model():
    from modeconn_unlearn.tasks import CausalLMTask

    model, examples = TinyLM(), LMExamples()
    mask = saliency_mask(model, examples, sparsity=0.9, task=CausalLMTask())
    total = torch.zeros(())
    for i in range(len(examples)):
        item = examples[i]
        logits = model(item["input_ids"][None])[0]
        answer = [(pos, int(item["labels"][pos])) for pos in range(1, 5)]
        nll = [-torch.log_softmax(logits[pos - 1], -1)[y] for pos, y in answer if y != -100]
        total = total + torch.stack(nll).mean()
    grads = torch.autograd.grad(total, list(model.parameters()))
    scores = torch.cat([g.abs().reshape(-1) for g in grads])
    keep = scores.numel() - round(0.9 * scores.numel())
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    got = torch.cat([mask[n].reshape(-1) for n, _ in model.named_parameters()])
    assert torch.equal(got, expected)


def test_mask_errors_name_the_empty_argument():
    model = make_model()
    empty = TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ModeConnError, match="forget_data is empty"):
        saliency_mask(model, empty)
    with pytest.raises(ModeConnError, match="retain_data is empty"):
        layer_mask(model, empty, data(0))
    with pytest.raises(ModeConnError, match="forget_data is empty"):
        layer_mask(model, data(0), empty)
    with pytest.raises(ModeConnError, match="forget_data is None"):
        layer_mask(model, data(0), None)


@pytest.mark.parametrize("kind", ["saliency", "layer", "random"])
def test_masks_never_select_frozen_parameters(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)  # a frozen base, as under LoRA
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    if kind == "saliency":
        mask = saliency_mask(model, data, sparsity=0.0)
    elif kind == "layer":
        mask = layer_mask(model, data, data, k=1.0)
    else:
        mask = random_mask(model, sparsity=0.0)
    assert list(mask) == [n for n, _ in model.named_parameters()]
    assert not bool(mask["0.weight"].any())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(bool(mask[n].all()) for n in trainable)  # fractions count trainable entries only
    CurveModel(model, start=model, end=model, mask=mask)  # accepted by a curve
