"""One unwrap for DistributedDataParallel and torch.compile, nested in any order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.wrappers import module_device, unwrap


@pytest.fixture
def one_process_group(tmp_path) -> Iterator[None]:  # type: ignore[no-untyped-def]
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_a_plain_module_is_itself() -> None:
    layer = nn.Linear(2, 2)
    assert unwrap(layer) is layer


def test_a_compiled_module_is_the_original() -> None:
    layer = nn.Linear(2, 2)
    assert unwrap(torch.compile(layer)) is layer


def test_ddp_and_compile_in_either_order(one_process_group: None) -> None:
    layer = nn.Linear(2, 2)
    assert unwrap(DistributedDataParallel(layer)) is layer
    assert unwrap(torch.compile(DistributedDataParallel(layer))) is layer
    assert unwrap(DistributedDataParallel(torch.compile(layer))) is layer


def test_a_curve_takes_the_user_module_out_of_ddp(one_process_group: None) -> None:
    start, end = nn.Linear(2, 2), nn.Linear(2, 2)
    curve = CurveModel(DistributedDataParallel(start), end=DistributedDataParallel(end)).eval()
    assert type(curve.template) is nn.Linear
    x = torch.randn(3, 2)
    torch.testing.assert_close(curve(x, t=0.0), start(x))
    torch.testing.assert_close(curve(x, t=1.0), end(x))


def test_module_device_reads_the_first_parameter_then_buffer_else_cpu() -> None:
    assert module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = nn.Module()
    buffers_only.register_buffer("running", torch.zeros(2, device="meta"))
    assert module_device(buffers_only) == torch.device("meta")
    assert module_device(nn.ReLU()) == torch.device("cpu")
