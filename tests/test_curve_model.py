from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from helpers import assert_unchanged, model_state
from torch import nn
from torch.nn.utils import parametrizations

import modeconn_unlearn as mcu
from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import IncompatibleModelsError, ModeConnError


class TiedTransformer(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens)))).mean(1)


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x)
        return self.fc(hidden[-1])


class TokenModel(nn.Module):
    """A bare nn.Parameter (a ViT-style class token) used beside a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.proj = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.proj(tokens).mean(1)


def bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def weight_norm_mlp() -> nn.Module:
    return nn.Sequential(parametrizations.weight_norm(nn.Linear(5, 7)), nn.Tanh(), nn.Linear(7, 3))


def hf_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


@dataclass
class Arch:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x, **kw: m(x, **kw)


def _bert_call(model: nn.Module, x: torch.Tensor, **kw: object) -> torch.Tensor:
    return model(input_ids=x, **kw).logits


ARCHS = [
    Arch(
        "mlp",
        lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)),
        lambda: torch.randn(5, 6),
    ),
    Arch("bn_cnn", bn_cnn, lambda: torch.randn(5, 1, 8, 8)),
    Arch("tied_transformer", TiedTransformer, lambda: torch.randint(0, 20, (4, 7))),
    Arch("gru", GRUClassifier, lambda: torch.randn(4, 5, 6)),
    Arch("bare_parameter", TokenModel, lambda: torch.randn(3, 4, 8)),
    Arch("weight_norm", weight_norm_mlp, lambda: torch.randn(5, 5)),
    Arch("hf_bert", hf_bert, lambda: torch.randint(0, 30, (3, 6)), _bert_call),
]


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in other.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
    return other


def _endpoints(arch: Arch) -> tuple[nn.Module, nn.Module, nn.Module]:
    model = arch.build()
    return model, _perturbed(model, 1), _perturbed(model, 2)


def _average(a: nn.Module, b: nn.Module) -> nn.Module:
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for (_, pm), (_, pa), (_, pb) in zip(
            mid.named_parameters(), a.named_parameters(), b.named_parameters(), strict=True
        ):
            pm.copy_(0.5 * pa + 0.5 * pb)
        for (_, bm), (_, ba), (_, bb) in zip(
            mid.named_buffers(), a.named_buffers(), b.named_buffers(), strict=True
        ):
            if bm.is_floating_point():
                bm.copy_(0.5 * ba + 0.5 * bb)
    return mid


@pytest.fixture(params=ARCHS, ids=[a.name for a in ARCHS])
def arch(request: pytest.FixtureRequest) -> Arch:
    return request.param


def test_endpoints_reproduce_models(arch: Arch) -> None:
    model, start, end = _endpoints(arch)
    curve = CurveModel(model, start=start, end=end).eval()
    for m in (start, end):
        m.eval()
    x = arch.inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            arch.call(curve, x, t=0.0), arch.call(start, x), rtol=0, atol=1e-6
        )
        torch.testing.assert_close(arch.call(curve, x, t=1.0), arch.call(end, x), rtol=0, atol=1e-6)


def test_linear_init_bezier_midpoint_is_average(arch: Arch) -> None:
    model, start, end = _endpoints(arch)
    curve = CurveModel(model, start=start, end=end, num_bends=3).eval()
    average = _average(start, end).eval()
    x = arch.inputs()
    with torch.no_grad():
        torch.testing.assert_close(arch.call(curve, x, t=0.5), arch.call(average, x))


def test_only_trainable_tensors_get_gradients_and_step_moves_middle_only(arch: Arch) -> None:
    model, start, end = _endpoints(arch)
    before = model_state(model)
    curve = CurveModel(model, start=start, end=end).train()
    trainable = list(curve.parameters())
    assert trainable and all(p.requires_grad for p in trainable)
    x = arch.inputs()
    arch.call(curve, x, t=0.3).float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in curve.template.parameters())
    assert all(not b.requires_grad for b in curve.buffers())

    curve.eval()
    with torch.no_grad():
        outs = {t: arch.call(curve, x, t=t).clone() for t in (0.0, 0.5, 1.0)}
    torch.optim.SGD(curve.parameters(), lr=0.5).step()
    with torch.no_grad():
        assert torch.equal(arch.call(curve, x, t=0.0), outs[0.0])
        assert torch.equal(arch.call(curve, x, t=1.0), outs[1.0])
        assert not torch.allclose(arch.call(curve, x, t=0.5), outs[0.5])
    assert_unchanged(model, before)


def test_export_matches_curve_output(arch: Arch) -> None:
    model, start, end = _endpoints(arch)
    curve = CurveModel(model, start=start, end=end)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(0.05 * torch.randn_like(p))
    curve.eval()
    exported = curve.export(0.3)
    assert type(exported) is type(model)
    assert not exported.training
    x = arch.inputs()
    with torch.no_grad():
        torch.testing.assert_close(arch.call(exported, x), arch.call(curve, x, t=0.3))


def test_tied_weights_stay_tied() -> None:
    model = TiedTransformer()
    curve = CurveModel(model, start=model, end=_perturbed(model, 1))
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(torch.randn_like(p))
    exported = curve.export(0.4)
    assert exported.head.weight is exported.embed.weight
    assert "head.weight" not in curve.weights_at(0.4)


def test_polychain_passes_through_bends() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = CurveModel(a, start=a, end=b, curve="polychain", num_bends=3)
    with torch.no_grad():
        (middle,) = curve.parameters()
        middle.copy_(torch.randn_like(middle))
    w = curve.weights_at(0.5)
    flat = torch.cat([w["weight"].reshape(-1), w["bias"]])
    torch.testing.assert_close(flat, middle[0])
    quarter = curve.weights_at(0.25)["bias"]
    torch.testing.assert_close(quarter, 0.5 * a.bias + 0.5 * w["bias"])


@pytest.mark.parametrize("num_bends", [2, 3, 5])
def test_bezier_weights_match_hand_computation(num_bends: int) -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = CurveModel(a, start=a, end=b, num_bends=num_bends)
    with torch.no_grad():
        for p in curve.parameters():
            p.copy_(torch.randn_like(p))
    t = 0.3
    bends = [torch.cat([a.weight.reshape(-1), a.bias])]
    bends += list(next(iter(curve.parameters()))) if num_bends > 2 else []
    bends.append(torch.cat([b.weight.reshape(-1), b.bias]))
    n = num_bends - 1
    expected = sum(
        torch.tensor(float(__import__("math").comb(n, j) * t**j * (1 - t) ** (n - j))) * bend
        for j, bend in enumerate(bends)
    )
    w = curve.weights_at(t)
    torch.testing.assert_close(torch.cat([w["weight"].reshape(-1), w["bias"]]), expected)


def test_free_ends_are_trainable() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = CurveModel(a, start=a, end=b, fix_start=False, fix_end=False)
    names = {name for name, _ in curve.named_parameters()}
    assert names == {"groups.float32.start", "groups.float32.end", "groups.float32.middle"}
    curve(torch.randn(4, 3), t=0.0).sum().backward()
    grads = dict(curve.named_parameters())
    assert grads["groups.float32.start"].grad.abs().sum() > 0
    assert grads["groups.float32.end"].grad.abs().sum() == 0


def test_training_mode_draws_t_from_sampler() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = CurveModel(a, start=a, end=b, t_sampler=(0.75, 1.0)).train()
    seen = []
    for _ in range(20):
        curve(torch.randn(2, 3))
        seen.append(curve.last_t)
    assert all(0.75 <= t <= 1.0 for t in seen) and len(set(seen)) > 1
    curve.t_sampler = lambda: 0.125
    curve(torch.randn(2, 3))
    assert curve.last_t == 0.125
    curve(torch.randn(2, 3), t=torch.tensor(0.5))
    assert curve.last_t == 0.5


def test_plain_training_loop_runs_unchanged(digits) -> None:
    train, _ = digits
    a = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    b = _perturbed(a, 3)
    curve = CurveModel(a, start=a, end=b)
    optimizer = torch.optim.SGD(curve.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    x, y = train.tensors

    def accuracy_at_middle() -> float:
        with torch.no_grad():
            return (curve.eval()(x, t=0.5).argmax(1) == y).float().mean().item()

    before = accuracy_at_middle()
    curve.train()
    for _ in range(3):
        for inputs, targets in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(curve(inputs), targets).backward()
            optimizer.step()
    assert accuracy_at_middle() > before + 0.25


# --- masks -----------------------------------------------------------------------------


def _mlp_pair() -> tuple[nn.Module, nn.Module]:
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return a, _perturbed(a, 5)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=0.1),
    ],
    ids=["sgd_momentum_wd", "adam_wd", "adamw"],
)
def test_masked_entries_stay_bit_exact(make_optimizer) -> None:
    a, b = _mlp_pair()
    gen = torch.Generator().manual_seed(0)
    mask = {"0.weight": torch.rand(8, 6, generator=gen) < 0.3, "2.bias": True}
    curve = CurveModel(a, start=a, end=b, mask=mask)
    initial = {k: v.detach().clone() for k, v in curve.weights_at(0.5).items()}
    optimizer = make_optimizer(curve.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        curve(torch.randn(16, 6), t=0.5).pow(2).sum().backward()
        optimizer.step()
    after = curve.weights_at(0.5)
    for name in initial:
        trainable = mask.get(name, False)
        trainable = (
            torch.full_like(initial[name], trainable, dtype=torch.bool)
            if isinstance(trainable, bool)
            else trainable
        )
        assert torch.equal(after[name][~trainable], initial[name][~trainable]), name
        if trainable.any():
            assert not torch.equal(after[name][trainable], initial[name][trainable]), name


def test_masked_curve_matches_unmasked_curve_on_masked_entries() -> None:
    a, b = _mlp_pair()
    mask = {"0.weight": torch.rand(8, 6) < 0.5}
    masked = CurveModel(a, start=a, end=b, mask=mask)
    full = CurveModel(a, start=a, end=b)
    assert sum(p.numel() for p in masked.parameters()) == int(mask["0.weight"].sum())
    (values,) = masked.parameters()
    values_update = torch.randn_like(values)
    with torch.no_grad():
        values.add_(values_update)
        (middle,) = full.parameters()
        flat = middle[0, :48].view(8, 6)
        flat[mask["0.weight"]] += values_update[0]
    x = torch.randn(4, 6, requires_grad=False)
    for t in (0.2, 0.5, 0.9):
        torch.testing.assert_close(masked(x, t=t), full(x, t=t))
    masked(x, t=0.4).sum().backward()
    full(x, t=0.4).sum().backward()
    torch.testing.assert_close(values.grad[0], middle.grad[0, :48].view(8, 6)[mask["0.weight"]])


def test_mask_errors_name_the_problem() -> None:
    a, b = _mlp_pair()
    with pytest.raises(ModeConnError, match=r"'conv\.weight'"):
        CurveModel(a, start=a, end=b, mask={"conv.weight": True})
    with pytest.raises(ModeConnError, match=r"shape \(3, 3\)"):
        CurveModel(a, start=a, end=b, mask={"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ModeConnError, match="bool"):
        CurveModel(a, start=a, end=b, mask={"0.weight": torch.ones(8, 6)})


def test_mask_accepts_tied_alias() -> None:
    model = TiedTransformer()
    curve = CurveModel(model, start=model, end=_perturbed(model, 1), mask={"head.weight": True})
    assert sum(p.numel() for p in curve.parameters()) == model.embed.weight.numel()


# --- bad input -------------------------------------------------------------------------


def test_mismatched_endpoints_name_offending_keys() -> None:
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    wider = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
    deeper = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    with pytest.raises(IncompatibleModelsError, match=r"'0.weight': \(9, 6\) vs \(8, 6\)"):
        CurveModel(a, start=a, end=wider)
    with pytest.raises(IncompatibleModelsError, match=r"unexpected keys '3\.bias', '3\.weight'"):
        CurveModel(a, start=a, end=deeper)
    with pytest.raises(IncompatibleModelsError, match=r"missing keys '2\.bias'"):
        state = a.state_dict()
        del state["2.bias"]
        CurveModel(a, start=a, end=state)
    with pytest.raises(IncompatibleModelsError, match="dtype"):
        CurveModel(a, start=a, end=copy.deepcopy(a).double())


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), float("inf")])
def test_t_outside_unit_interval(t: float) -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b)
    with pytest.raises(ModeConnError, match=r"\[0, 1\]"):
        curve(torch.randn(2, 6), t=t)
    with pytest.raises(ModeConnError, match=r"\[0, 1\]"):
        curve.export(t)


def test_other_bad_arguments() -> None:
    a, b = _mlp_pair()
    with pytest.raises(ModeConnError, match="num_bends"):
        CurveModel(a, start=a, end=b, num_bends=1)
    with pytest.raises(ModeConnError, match="Unknown curve 'spline'"):
        CurveModel(a, start=a, end=b, curve="spline")
    with pytest.raises(ModeConnError, match="eval mode"):
        CurveModel(a, start=a, end=b).eval()(torch.randn(2, 6))
    with pytest.raises(TypeError):
        CurveModel("not a model", start=a, end=b)  # type: ignore[arg-type]


def test_prefixed_state_dicts_and_checkpoint_paths(tmp_path) -> None:
    a, b = _mlp_pair()
    prefixed = {f"module.{k}": v for k, v in b.state_dict().items()}
    path = tmp_path / "end.pt"
    mcu.save_checkpoint(prefixed, path)
    for end in (prefixed, path, str(path)):
        curve = CurveModel(a, start=a.state_dict(), end=end).eval()
        x = torch.randn(3, 6)
        torch.testing.assert_close(curve(x, t=1.0), b(x))


# --- state, devices, distributed, compile ----------------------------------------------


def test_state_dict_round_trip(tmp_path) -> None:
    a, b = _mlp_pair()
    mask = {"0.weight": torch.rand(8, 6) < 0.5, "2.weight": True}
    curve = CurveModel(a, start=a, end=b, mask=mask)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(torch.randn_like(p))
    mcu.save_checkpoint(curve.state_dict(), tmp_path / "curve.pt")
    fresh = CurveModel(a, start=a, end=b, mask=mask)
    fresh.load_state_dict(torch.load(tmp_path / "curve.pt", weights_only=True))
    x = torch.randn(4, 6)
    torch.testing.assert_close(fresh.eval()(x, t=0.37), curve.eval()(x, t=0.37))


def test_to_moves_and_casts_everything() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b).to(torch.float64)
    out = curve(torch.randn(2, 6, dtype=torch.float64), t=0.5)
    assert out.dtype == torch.float64
    assert curve.export(0.5)[0].weight.dtype == torch.float64


def test_update_bn_pins_statistics() -> None:
    model = bn_cnn()
    curve = CurveModel(model, start=model, end=_perturbed(model, 1))
    data = [torch.randn(16, 1, 8, 8) * 3 + 2 for _ in range(3)]
    mcu.update_bn(curve, data, t=0.4)
    exported = curve.export(0.4)
    reference = curve.export(0.4, bn_loader=data)
    torch.testing.assert_close(exported[1].running_mean, reference[1].running_mean)
    interpolated = curve.export(0.6)[1].running_mean
    assert not torch.allclose(interpolated, reference[1].running_mean)
    with pytest.raises(ModeConnError, match="t="):
        mcu.update_bn(curve, data)


def test_torch_compile_runs() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b)
    compiled = torch.compile(curve, backend="aot_eager")
    x = torch.randn(4, 6)
    out = compiled(x, t=0.3)
    torch.testing.assert_close(out, curve(x, t=0.3))
    out.sum().backward()
    assert next(iter(curve.parameters())).grad is not None


def test_pinned_statistics_expire_when_bends_change() -> None:
    model = bn_cnn()
    curve = CurveModel(model, start=model, end=_perturbed(model, 1))
    data = [torch.randn(16, 1, 8, 8) * 3 + 2]
    mcu.update_bn(curve, data, t=0.5)
    pinned = curve.buffers_at(0.5)["1.running_mean"]
    assert not torch.allclose(pinned, curve.model_buffers[0].at(0.5))
    optimizer = torch.optim.SGD(curve.parameters(), lr=0.1)
    curve.train()(torch.randn(4, 1, 8, 8), t=0.5).sum().backward()
    optimizer.step()
    torch.testing.assert_close(
        curve.buffers_at(0.5)["1.running_mean"], curve.model_buffers[0].at(0.5)
    )


# --- per-tensor masks: constants cost no weight gradient ---------------------------------


class _MatmulCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matrix products run while active (forward or backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _backward_matmuls(curve: CurveModel, x: torch.Tensor) -> int:
    loss = curve(x, t=0.4).pow(2).sum()
    with _MatmulCounter() as counter:
        loss.backward()
    return counter.count


def test_per_tensor_mask_gives_constants_and_skips_their_weight_gradients() -> None:
    a, b = _mlp_pair()
    mask = {"2.weight": True, "2.bias": True}
    masked = CurveModel(a, start=a, end=b, mask=mask)
    full = CurveModel(a, start=a, end=b)
    weights = masked.weights_at(0.4)
    assert weights["2.weight"].requires_grad and weights["2.bias"].requires_grad
    assert weights["0.weight"].grad_fn is None and not weights["0.weight"].requires_grad
    assert weights["0.bias"].grad_fn is None
    x = torch.randn(4, 6)
    # Masked: layer 2's weight gradient only; nothing before it needs a gradient, since
    # layer 0's weight is a constant. Full: both weight gradients and layer 2's input gradient.
    assert _backward_matmuls(masked, x) == 1
    assert _backward_matmuls(full, x) == 3
    (values,) = masked.parameters()
    (middle,) = full.parameters()
    torch.testing.assert_close(values.grad[0], middle.grad[0, -27:])


def test_constant_tensors_still_pass_the_input_gradient() -> None:
    a, b = _mlp_pair()
    masked = CurveModel(a, start=a, end=b, mask={"0.weight": True})
    full = CurveModel(a, start=a, end=b)
    x = torch.randn(4, 6, requires_grad=True)
    masked(x, t=0.7).sum().backward()
    masked_grad = x.grad.clone()
    x.grad = None
    full(x, t=0.7).sum().backward()
    torch.testing.assert_close(masked_grad, x.grad)


# --- frozen parameters ------------------------------------------------------------------


def _frozen_pair() -> tuple[nn.Module, nn.Module]:
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    a[0].requires_grad_(False)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[2].weight.add_(1.0)
    return a, b


def test_frozen_parameters_are_not_curved_and_stored_once() -> None:
    a, b = _frozen_pair()
    curve = CurveModel(a, start=a, end=b)
    assert sum(p.numel() for p in curve.parameters()) == a[2].weight.numel() + a[2].bias.numel()
    held = sum(t.numel() for t in itertools.chain(curve.parameters(), curve.buffers()))
    assert held == 3 * (8 * 3 + 3)  # two anchors and one middle bend of the trainable layer
    assert set(curve.weights_at(0.5)) == {"2.weight", "2.bias"}
    frozen = curve.template[0].weight
    assert not frozen.requires_grad and torch.equal(frozen, a[0].weight)
    seen = []
    hook = curve.template[0].register_forward_pre_hook(
        lambda module, _: seen.append(module.weight.data_ptr())
    )
    optimizer = torch.optim.SGD(curve.parameters(), lr=0.5, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        curve(torch.randn(4, 6)).pow(2).sum().backward()
        optimizer.step()
    hook.remove()
    assert seen == [frozen.data_ptr()] * 3
    assert torch.equal(curve.export(0.5)[0].weight, a[0].weight)
    assert not torch.equal(curve.weights_at(0.5)["2.weight"], 0.5 * (a[2].weight + b[2].weight))


def test_frozen_parameters_that_differ_between_ends_are_refused() -> None:
    a, b = _frozen_pair()
    with torch.no_grad():
        b[0].bias.add_(1.0)
    with pytest.raises(IncompatibleModelsError, match=r"frozen parameters '0\.bias'"):
        CurveModel(a, start=a, end=b)


def test_frozen_values_come_from_start() -> None:
    a, b = _frozen_pair()
    start = copy.deepcopy(a)
    with torch.no_grad():
        start[0].weight.mul_(2.0)
        b[0].weight.mul_(2.0)
    curve = CurveModel(a, start=start, end=b).eval()
    x = torch.randn(3, 6)
    torch.testing.assert_close(curve(x, t=0.0), start(x))
    assert torch.equal(a[0].weight * 2.0, curve.template[0].weight)


def test_mask_on_frozen_parameter_and_all_frozen_model_are_refused() -> None:
    a, b = _frozen_pair()
    with pytest.raises(ModeConnError, match=r"frozen parameters.*'0\.weight'"):
        CurveModel(a, start=a, end=b, mask={"0.weight": True})
    curve = CurveModel(a, start=a, end=b, mask={"0.weight": False, "2.bias": True})
    assert sum(p.numel() for p in curve.parameters()) == 3
    with pytest.raises(ModeConnError, match="requires_grad=True"):
        CurveModel(a.requires_grad_(False), start=a, end=a)


def test_template_shares_storage_with_the_start_anchor() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b)
    for dtype in (torch.float32, torch.float64):
        curve = curve.to(dtype)
        anchors = curve.groups["float32"].anchors
        low, high = anchors.data_ptr(), anchors.data_ptr() + anchors[0].nbytes
        for param in curve.template.parameters():
            assert param.dtype == dtype and low <= param.data_ptr() < high
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(curve.eval()(x, t=0.0), a.double()(x))


# --- robustness ---------------------------------------------------------------------------


def test_end_must_be_given_by_keyword() -> None:
    a, b = _mlp_pair()
    with pytest.raises(ModeConnError, match="end="):
        CurveModel(a, b)  # type: ignore[misc]
    with pytest.raises(ModeConnError, match="end="):
        CurveModel(a, start=a)


def _spectral_norm_model() -> nn.Module:
    return nn.Sequential(
        torch.nn.utils.spectral_norm(nn.Linear(6, 8)),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def test_spectral_norm_model_after_a_forward_with_grads() -> None:
    model = _spectral_norm_model()
    model(torch.randn(5, 6)).sum().backward()  # leaves a non-leaf `weight` attribute behind
    end = _spectral_norm_model()
    end(torch.randn(5, 6)).sum().backward()
    curve = CurveModel(model, start=model, end=end)
    curve(torch.randn(5, 6)).sum().backward()
    assert all(p.grad is not None for p in curve.parameters())
    data = [torch.randn(16, 6) for _ in range(2)]
    curve.update_bn(data, t=0.5)
    exported = curve.eval().export(0.5)
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), curve(x, t=0.5))
    interpolated = curve.model_buffers[curve._buffer_names.index("1.running_mean")].at(0.5)
    assert not torch.allclose(exported[1].running_mean, interpolated)


# --- torch.compile ----------------------------------------------------------------------


@pytest.mark.parametrize("mask", [None, "elements", "tensors"])
def test_compiled_training_compiles_once_for_all_t(mask: str | None) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    specs = {
        None: None,
        "elements": {"0.weight": torch.rand(8, 6) < 0.5, "3.bias": True},
        "tensors": {"3.weight": True},
    }
    curve = CurveModel(model, start=model, end=_perturbed(model, 1), mask=specs[mask]).train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(curve, backend=counter, fullgraph=True)
    x = torch.randn(5, 6)
    seen = set()
    for _ in range(4):
        out = compiled(x)
        out.pow(2).sum().backward()
        seen.add(curve.last_t)
        grads = [p.grad.clone() for p in curve.parameters()]
        curve.zero_grad()
        reference = curve(x, t=curve.last_t)
        reference.pow(2).sum().backward()
        torch.testing.assert_close(out, reference)
        for grad, p in zip(grads, curve.parameters(), strict=True):
            torch.testing.assert_close(grad, p.grad)
        curve.zero_grad()
    assert len(seen) == 4
    assert counter.frame_count == 1


def test_compiled_template_is_unwrapped() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(torch.compile(a), start=torch.compile(a), end=b).eval()
    assert type(curve.template) is nn.Sequential
    assert type(curve.export(0.5)) is nn.Sequential
    x = torch.randn(3, 6)
    torch.testing.assert_close(curve(x, t=1.0), b(x))


def test_sampler_draws_zero_dim_tensors_with_float_arithmetic() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b, t_sampler=(0.25, 0.75))
    torch.manual_seed(3)
    drawn = curve.t_sampler()
    torch.manual_seed(3)
    expected = 0.25 + 0.5 * float(torch.rand(()))
    assert isinstance(drawn, torch.Tensor) and drawn.dim() == 0
    assert float(drawn) == expected


@pytest.mark.parametrize("fix_start", [True, False])
@pytest.mark.parametrize("num_bends", [3, 4])
def test_per_tensor_mask_slices_match_the_general_masked_path(
    fix_start: bool, num_bends: int
) -> None:
    a, b = _mlp_pair()
    mask = {"0.bias": True, "2.weight": True}
    sliced = CurveModel(a, start=a, end=b, mask=mask, num_bends=num_bends, fix_start=fix_start)
    general = copy.deepcopy(sliced)
    assert sliced.groups["float32"].runs is not None
    general.groups["float32"].runs = None  # gathers and scatters by index instead
    with torch.no_grad():
        for p, q in zip(sliced.parameters(), general.parameters(), strict=True):
            p.add_(torch.randn_like(p))
            q.copy_(p)
    x = torch.randn(4, 6)
    for t in (0.0, 0.3, 0.8):
        out_sliced, out_general = sliced(x, t=t), general(x, t=t)
        torch.testing.assert_close(out_sliced, out_general)
        out_sliced.pow(2).sum().backward()
        out_general.pow(2).sum().backward()
    for p, q in zip(sliced.parameters(), general.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    if fix_start:  # the unmasked tensors stay on the straight line between the fixed ends
        line = CurveModel(a, start=a, end=b, num_bends=2).weights_at(0.3)
        torch.testing.assert_close(sliced.weights_at(0.3)["0.weight"], line["0.weight"])


def test_two_forwards_before_one_backward() -> None:
    a, b = _mlp_pair()
    curve = CurveModel(a, start=a, end=b)
    x = torch.randn(4, 6)
    (curve(x, t=0.2).pow(2).sum() + curve(x, t=0.8).pow(2).sum()).backward()
    (middle,) = curve.parameters()
    together = middle.grad.clone()
    middle.grad = None
    curve(x, t=0.2).pow(2).sum().backward()
    curve(x, t=0.8).pow(2).sum().backward()
    torch.testing.assert_close(together, middle.grad)


@pytest.mark.parametrize(
    "coefficients",
    [lambda t, n: [1.0 - t, t, t], lambda t, n: [1.0 - t, 2.0 * t, -t]],
    ids=["sum_not_one", "negative"],
)
def test_custom_coefficients_by_hand(coefficients) -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = CurveModel(a, start=a, end=b, curve=coefficients)
    with torch.no_grad():
        (middle,) = curve.parameters()
        middle.copy_(torch.randn_like(middle))
    flat = [torch.cat([m.weight.reshape(-1), m.bias]) for m in (a, b)]
    c0, c1, c2 = coefficients(0.3, 3)
    expected = c0 * flat[0] + c1 * middle[0] + c2 * flat[1]
    w = curve.weights_at(0.3)
    torch.testing.assert_close(torch.cat([w["weight"].reshape(-1), w["bias"]]), expected)


def test_a_template_on_the_meta_device_builds_the_same_curve_without_a_host_copy(tmp_path):
    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    torch.manual_seed(0)
    a, b = net(), net()
    for model in (a, b):  # the first layer frozen and shared, as a PEFT base is
        model[0].weight.requires_grad_(False)
    b[0].weight.data.copy_(a[0].weight)
    torch.save(b.state_dict(), tmp_path / "end.pt")
    with torch.device("meta"):
        template = net()
    template[0].weight.requires_grad_(False)
    mask = {"3.weight": torch.rand(3, 8) > 0.5}
    curve = CurveModel(template, start=a.state_dict(), end=tmp_path / "end.pt", mask=mask)
    reference = CurveModel(a, end=b, mask=mask)
    x = torch.randn(6, 4)
    for mode in ("train", "eval"):
        curve.train(mode == "train")
        reference.train(mode == "train")
        for t in (0.0, 0.35, 1.0):
            torch.testing.assert_close(curve(x, t=t), reference(x, t=t))
    torch.testing.assert_close(curve.export(0.6).eval()(x), reference.export(0.6).eval()(x))
    assert all(p.is_meta for p in template.parameters())  # the user's template is left alone
    # The curved weights of the curve's own template are views of the anchors, not copies.
    anchors = curve.groups["float32"].anchors
    lo, hi = anchors.data_ptr(), anchors.data_ptr() + anchors.numel() * anchors.element_size()
    curved = [p for p in curve.template.parameters() if p.requires_grad]
    assert curved and all(lo <= p.data_ptr() < hi for p in curved)
    assert not curve.template[0].weight.is_meta  # the frozen weight came from the start
    with pytest.raises(ModeConnError, match="meta device"):
        CurveModel(template, end=b.state_dict())
