"""Executes examples/connectivity_analysis.ipynb with small settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import CELL_TIMEOUT, output_text, run_notebook

pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "connectivity_analysis.ipynb"
SMALL = {
    "EPOCHS": 3,
    "UNLEARN_EPOCHS": 1,
    "CURVE_EPOCHS": 2,
    "TS": 5,
    "SEEDS": (0, 1),
    "RELEARN_STEPS": 3,
}


def _with_small_parameters(notebook: Any) -> None:
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    source = cell.source
    for name, value in SMALL.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert count == 1, f"parameter {name} not found in the notebook's parameters cell"
    cell.source = source


@pytest.mark.slow
@pytest.mark.timeout(2 * CELL_TIMEOUT)
def test_connectivity_notebook_runs(tmp_path):
    notebook = run_notebook(NOTEBOOK, cwd=tmp_path, edit=_with_small_parameters)
    outputs = output_text(notebook)
    assert "barrier: linear" in outputs
    assert "mean retain barrier" in outputs
    assert "after 3 steps" in outputs
    figures = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(figures) >= 3
