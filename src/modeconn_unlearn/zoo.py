"""Small reference models for examples, tests and benchmarks.

The library itself never depends on these classes: every function takes any
``nn.Module``. They are plain PyTorch modules written from scratch (no
torchvision), sized for CPU experiments on :mod:`modeconn_unlearn.datasets`:

- :class:`MLP`: fully connected ReLU network; flattens its input.
- :class:`SmallCNN`: three conv-BatchNorm-ReLU stages and a linear head.
- :class:`ResNet`, :class:`ResNet8`, :class:`ResNet20`: the CIFAR ResNets of
  He et al. (2016), depth ``6n + 2``, widths 16-32-64, BatchNorm and
  parameter-free shortcuts (ResNet-20 has 0.27M parameters).

Every model ends in global average pooling or flattening, so the image models
accept any input size of at least 8x8 (digits 8x8, Fashion-MNIST 28x28,
CIFAR 32x32) and all return logits of shape ``(batch, num_classes)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import positive_int
from .errors import ModeConnError

__all__ = ["MLP", "ResNet", "ResNet8", "ResNet20", "SmallCNN", "resnet8", "resnet20"]


class MLP(nn.Module):
    """Fully connected network ``in_features -> hidden... -> num_classes`` with ReLU.

    The input is flattened first, so images work as well as vectors.

    Args:
        in_features: Number of input features after flattening (64 for digits,
            784 for Fashion-MNIST).
        hidden: Widths of the hidden layers; empty for a linear classifier.
        num_classes: Number of output logits.

    Example:
        >>> model = MLP(64, (32,), num_classes=10)
        >>> model(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
        >>> sum(p.numel() for p in model.parameters())  # 64*32+32 + 32*10+10
        2410
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (128, 64), *, num_classes: int = 10
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        positive_int(in_features, "in_features")
        positive_int(num_classes, "num_classes")
        for width in hidden:
            positive_int(width, "hidden")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        return self.net(x)  # type: ignore[no-any-return]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class SmallCNN(nn.Module):
    """A small BatchNorm CNN: three 3x3 conv-BN-ReLU stages, global pooling, linear head.

    Channels are ``width``, ``2*width``, ``4*width``; the first two stages end
    with 2x2 max pooling. With the default ``width=32`` it has 94k parameters;
    the cost of a forward pass scales with ``width**2``.

    Args:
        in_channels: Channels of the input images (1 for grey, 3 for colour).
        num_classes: Number of output logits.
        width: Channels of the first stage.

    Example:
        >>> model = SmallCNN(1, 10, width=8)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *, width: int = 32) -> None:
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(num_classes, "num_classes")
        positive_int(width, "width")
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class _PadShortcut(nn.Module):
    """Parameter-free shortcut (option A): subsample by ``stride``, zero-pad channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _PadShortcut(stride, out_channels - in_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth ``6n + 2`` (He et al., 2016, section 4.2).

    A 3x3 stem with ``width`` channels, three stages of ``n`` basic blocks with
    ``width``, ``2*width`` and ``4*width`` channels (stride 2 at the start of
    the second and third), global average pooling and a linear head. Every
    convolution is followed by BatchNorm; shortcuts that change shape subsample
    and zero-pad channels, so they have no parameters ("option A").

    Args:
        depth: Number of weighted layers, ``6n + 2`` (8, 14, 20, 32, 44, 56, ...).
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        width: Channels of the stem and first stage (16 in the paper).

    Raises:
        ModeConnError: If ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.

    Example:
        >>> model = ResNet(14, 10, in_channels=1)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, depth: int = 20, num_classes: int = 10, *, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        positive_int(num_classes, "num_classes")
        positive_int(in_channels, "in_channels")
        positive_int(width, "width")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or depth % 6 != 2:
            raise ModeConnError(
                f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}."
            )
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)  # type: ignore[no-any-return]


class ResNet8(ResNet):
    """ResNet-8: one basic block per stage (75k parameters with 10 classes and RGB input).

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Example:
        >>> ResNet8(10, 3)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(8, num_classes, in_channels=in_channels)


class ResNet20(ResNet):
    """ResNet-20: three basic blocks per stage (0.27M parameters with 10 classes, RGB).

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Example:
        >>> model = ResNet20(10, 3)
        >>> sum(p.numel() for p in model.parameters())
        269722
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(20, num_classes, in_channels=in_channels)


def resnet8(num_classes: int = 10, in_channels: int = 3) -> ResNet8:
    """Build a :class:`ResNet8`.

    Example:
        >>> resnet8(num_classes=10, in_channels=1)(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    return ResNet8(num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet20:
    """Build a :class:`ResNet20`.

    Example:
        >>> resnet20(num_classes=100).fc.out_features
        100
    """
    return ResNet20(num_classes, in_channels)
