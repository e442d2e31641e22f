from __future__ import annotations

import torch
from torch import nn

from modeconn_unlearn.batchnorm import batch_inputs, has_batchnorm, update_bn


def test_update_bn_is_exact_average_over_loader() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    net[1].momentum = 0.3
    batches = [torch.randn(10, 4) * 2 + 1 for _ in range(4)]
    net.eval()
    update_bn(net, [(x, torch.zeros(10)) for x in batches])
    with torch.no_grad():
        feats = [net[0](x) for x in batches]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert net[1].momentum == 0.3 and not net.training
    assert int(net[1].num_batches_tracked) == 4


def test_no_batchnorm_means_no_pass() -> None:
    calls = []

    class Spy(nn.Module):
        def forward(self, x):
            calls.append(x)
            return x

    update_bn(Spy(), [torch.zeros(2)])
    assert calls == [] and not has_batchnorm(Spy())
    assert has_batchnorm(nn.BatchNorm2d(3))


def test_batch_inputs() -> None:
    x = torch.zeros(2)
    assert batch_inputs(x) is x
    assert batch_inputs([x, 1]) is x


def test_a_dataset_is_batched_not_iterated_sample_by_sample() -> None:
    from torch.utils.data import TensorDataset

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    images = torch.randn(20, 1, 6, 6) * 2 + 1
    update_bn(net, TensorDataset(images, torch.zeros(20)))
    with torch.no_grad():
        features = net[0](images)
    torch.testing.assert_close(net[1].running_mean, features.mean((0, 2, 3)))
