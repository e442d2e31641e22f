"""Shared fixtures: the seed and sklearn digits data (helpers to import are in ``helpers``).

The test process runs torch on one thread, and the subprocesses it starts (notebooks,
multi-process and kill-and-resume tests) inherit ``OMP_NUM_THREADS=1``: torch's default of
one thread per core oversubscribes a busy machine, where the suite then takes ten times as
long. An ``OMP_NUM_THREADS`` set by the caller is kept for the subprocesses.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Subset, TensorDataset

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> tuple[TensorDataset, TensorDataset]:
    """Digits as (train, test) TensorDatasets of flat float inputs in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


@pytest.fixture()
def tiny() -> tuple[Subset[Any], Subset[Any]]:
    """48 random 64-feature samples of 10 classes: 40 retain, 8 forget."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g))
    return Subset(data, list(range(40))), Subset(data, list(range(40, 48)))
