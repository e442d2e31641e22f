"""One seeded subset: the same draw for one seed and salt, independent of the global RNG."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from modeconn_unlearn.data import seeded_order, seeded_subset


def test_the_order_is_torchs_randperm_on_a_private_generator() -> None:
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(10_003)).tolist()
    state = torch.random.get_rng_state()
    assert seeded_order(20, 3, salt=10_000) == expected
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched


def test_a_subset_is_sorted_fixed_by_seed_and_salt() -> None:
    data = TensorDataset(torch.arange(50))
    subset = seeded_subset(data, 7, seed=1, salt=20_000)
    assert isinstance(subset, Subset) and subset.dataset is data
    assert subset.indices == sorted(seeded_order(50, 1, salt=20_000)[:7])
    assert seeded_subset(data, 7, seed=1, salt=20_000).indices == subset.indices  # type: ignore[attr-defined]
    assert seeded_subset(data, 7, seed=1, salt=30_000).indices != subset.indices  # type: ignore[attr-defined]


def test_no_size_or_a_size_past_the_end_keeps_everything() -> None:
    data = TensorDataset(torch.arange(5))
    assert seeded_subset(data, None, seed=0) is data
    assert seeded_subset(data, 5, seed=0) is data
    assert len(DataLoader(seeded_subset(data, 2, seed=0), batch_size=8).dataset) == 2  # type: ignore[arg-type]
