"""recipe.targets: what carve_holdout refuses (the rest of the recipe is in test_recipe.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.recipe import carve_holdout


def test_carve_holdout_refuses_a_loader_and_column_tensors_with_the_fix() -> None:
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    with pytest.raises(ModeConnError, match=r"DataLoader; .*\(loader\.dataset\)"):
        carve_holdout(DataLoader(TensorDataset(x, y), batch_size=4))
    with pytest.raises(ModeConnError, match=r"TensorDataset\(X, Y\)"):
        carve_holdout((x, y))
