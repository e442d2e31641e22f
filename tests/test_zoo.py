from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.zoo import (
    MLP,
    ResNet,
    ResNet8,
    ResNet20,
    SmallCNN,
    resnet8,
    resnet20,
)

# name -> (factory, input shape without batch, number of classes)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mlp-digits": (lambda: MLP(64, (32, 16), num_classes=10), (64,), 10),
    "mlp-images": (lambda: MLP(64, (), num_classes=3), (1, 8, 8), 3),
    "smallcnn-digits": (lambda: SmallCNN(1, 10, width=4), (1, 8, 8), 10),
    "smallcnn-fashion": (lambda: SmallCNN(1, 10, width=4), (1, 28, 28), 10),
    "smallcnn-rgb": (lambda: SmallCNN(3, 5, width=4), (3, 32, 32), 5),
    "resnet8-cifar": (lambda: resnet8(num_classes=10, in_channels=3), (3, 32, 32), 10),
    "resnet8-fashion": (lambda: ResNet8(10, 1), (1, 28, 28), 10),
    "resnet20-digits": (lambda: resnet20(num_classes=7, in_channels=1), (1, 8, 8), 7),
    "resnet14": (lambda: ResNet(14, 4, in_channels=2, width=4), (2, 16, 16), 4),
}


def conv_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out  # 3x3 kernel, no bias


def bn_params(c: int) -> int:
    return 2 * c


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shape_and_one_training_step(name: str) -> None:
    factory, shape, classes = MODELS[name]
    model = factory()
    x = torch.rand(6, *shape)
    y = torch.arange(6) % classes
    assert model(x).shape == (6, classes)

    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    optimizer.step()
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k, _ in model.named_parameters())
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(x), y) < loss
    # BatchNorm running statistics moved during the training-mode forward passes.
    for key, value in after.items():
        if key.endswith("running_mean"):
            assert not torch.equal(before[key], value), key

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_models_work_with_functional_call_and_deepcopy(name: str) -> None:
    # The library runs models through torch.func.functional_call on deep copies.
    factory, shape, _ = MODELS[name]
    model = factory().eval()
    x = torch.rand(3, *shape)
    clone = copy.deepcopy(model)
    params = {k: v.detach() * 0.5 for k, v in model.named_parameters()}
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))
        clone.load_state_dict({**model.state_dict(), **params})
        torch.testing.assert_close(functional_call(model, params, (x,)), clone(x))


def test_resnet20_has_the_standard_parameter_count() -> None:
    # stem + 3 stages of 3 blocks (two conv-BN each) + linear head; shortcuts are parameter-free.
    def stage(c_in: int, c_out: int, blocks: int) -> int:
        first = conv_params(c_in, c_out) + conv_params(c_out, c_out) + 2 * bn_params(c_out)
        other = 2 * conv_params(c_out, c_out) + 2 * bn_params(c_out)
        return first + (blocks - 1) * other

    def expected(blocks: int, classes: int = 10, c_in: int = 3) -> int:
        stem = conv_params(c_in, 16) + bn_params(16)
        head = 64 * classes + classes
        return stem + stage(16, 16, blocks) + stage(16, 32, blocks) + stage(32, 64, blocks) + head

    assert expected(3) == 269_722  # the 0.27M of He et al. (2016), table 6
    assert num_params(ResNet20()) == expected(3)
    assert num_params(resnet20(num_classes=100, in_channels=1)) == expected(3, 100, 1)
    assert num_params(ResNet8()) == expected(1)
    assert num_params(ResNet(32)) == expected(5)
    assert sum(isinstance(m, nn.Conv2d) for m in ResNet20().modules()) + 1 == 20


def test_mlp_and_smallcnn_parameter_counts() -> None:
    assert num_params(MLP(64, (32,), num_classes=10)) == 64 * 32 + 32 + 32 * 10 + 10
    assert num_params(MLP(784, (), num_classes=10)) == 7850
    w = 8
    expected = (
        conv_params(1, w) + bn_params(w)
        + conv_params(w, 2 * w) + bn_params(2 * w)
        + conv_params(2 * w, 4 * w) + bn_params(4 * w)
        + 4 * w * 10 + 10
    )  # fmt: skip
    assert num_params(SmallCNN(1, 10, width=w)) == expected
    assert sum(isinstance(m, nn.BatchNorm2d) for m in SmallCNN().modules()) == 3


def test_resnet_downsamples_with_zero_padded_shortcut() -> None:
    # With all convolutions zeroed, each block is relu(bn(0) + shortcut(x)); BN in eval mode
    # with default stats and zero bias gives 0, so the output is relu of the shortcut.
    model = ResNet8(10, 3).eval()
    block = model.layer2[0]
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


def test_resnet20_subclasses_keep_their_class() -> None:
    assert type(resnet20()) is ResNet20 and isinstance(resnet20(), ResNet)
    assert type(resnet8()) is ResNet8
    assert type(copy.deepcopy(resnet8())) is ResNet8


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ResNet(21), "6n \\+ 2"),
        (lambda: ResNet(2), "6n \\+ 2"),
        (lambda: ResNet(20, 0), "num_classes"),
        (lambda: MLP(64, (32, 0)), "hidden"),
        (lambda: MLP(0), "in_features"),
        (lambda: SmallCNN(1, 10, width=0), "width"),
        (lambda: SmallCNN(True), "in_channels"),
    ],
)
def test_bad_arguments(build: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises(ModeConnError, match=message):
        build()
