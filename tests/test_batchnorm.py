from __future__ import annotations

import torch
from torch import nn

from modeconn_unlearn.batchnorm import has_batchnorm, update_bn


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


def test_a_dataset_is_batched_not_iterated_sample_by_sample() -> None:
    from torch.utils.data import TensorDataset

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    images = torch.randn(20, 1, 6, 6) * 2 + 1
    update_bn(net, TensorDataset(images, torch.zeros(20)))
    with torch.no_grad():
        features = net[0](images)
    torch.testing.assert_close(net[1].running_mean, features.mean((0, 2, 3)))


class DictNet(nn.Module):
    """Keyword inputs, as a Hugging Face model takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, features, scale=None):
        return self.bn(self.lin(features) * (1.0 if scale is None else scale))


def test_dict_batches_are_read_by_the_task_and_passed_as_keywords() -> None:
    from modeconn_unlearn.tasks import ClassificationTask

    net = DictNet()
    batches = [torch.randn(8, 4) + 3 for _ in range(2)]
    loader = [
        {"features": x, "scale": torch.tensor(2.0), "labels": torch.zeros(8)} for x in batches
    ]
    update_bn(net, loader, task=ClassificationTask())
    with torch.no_grad():
        mean = torch.stack([(net.lin(x) * 2.0).mean(0) for x in batches]).mean(0)
    torch.testing.assert_close(net.bn.running_mean, mean)
    assert ClassificationTask().split(loader[0]).inputs.keys() == {"features", "scale"}


def test_curve_update_bn_reads_batches_through_the_task() -> None:
    from modeconn_unlearn.curve import CurveModel
    from modeconn_unlearn.tasks import ClassificationTask

    a, b = (
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
    )
    curve = CurveModel(a, start=a, end=b)
    x = torch.randn(16, 4) * 3
    update_bn(curve, [{"input": x, "labels": torch.zeros(16)}], t=0.0, task=ClassificationTask())
    with torch.no_grad():
        expected = a[0](x).mean(0)
    torch.testing.assert_close(curve.buffers_at(0.0)["1.running_mean"], expected)


def test_with_bn_from_re_estimates_a_copy_and_leaves_the_model_alone() -> None:
    from modeconn_unlearn.batchnorm import with_bn_from

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    data = [torch.randn(16, 3) + 5.0, torch.randn(16, 3) - 1.0]
    copy = with_bn_from(net, data)
    expected = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    expected.load_state_dict(net.state_dict())
    update_bn(expected, data)
    torch.testing.assert_close(copy[1].running_mean, expected[1].running_mean)
    torch.testing.assert_close(copy[1].running_var, expected[1].running_var)
    assert copy is not net and not net.training and not copy.training
    assert torch.count_nonzero(net[1].running_mean) == 0  # the user's model kept its statistics
    plain = nn.Linear(3, 4)
    assert with_bn_from(plain, data) is not plain
