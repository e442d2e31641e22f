"""End-to-end: the quickstart script and the example notebooks run and print sane numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CELL_TIMEOUT, output_text, run_notebook

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROW = re.compile(
    r"^(original|retrain|GA|MCU\(GA\))\s+"
    r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
    re.MULTILINE,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * CELL_TIMEOUT)]


def test_quickstart_script_prints_the_table_and_saves_the_figure(tmp_path: Path) -> None:
    figure = tmp_path / "path.png"
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "quickstart.py"),
            "--no-progress",
            "--out",
            str(figure),
        ],
        capture_output=True,
        text=True,
        timeout=CELL_TIMEOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr
    rows = {m.group(1): [float(v) for v in m.groups()[1:]] for m in ROW.finditer(result.stdout)}
    assert list(rows) == ["original", "retrain", "GA", "MCU(GA)"], result.stdout
    for name, (ua, ra, ta, mia, gap, seconds) in rows.items():
        assert all(0.0 <= v <= 100.0 for v in (ua, ra, ta, mia)), name
        assert gap >= 0.0 and seconds >= 0.0, name
    for name in ("original", "retrain", "MCU(GA)"):
        assert rows[name][1] > 80.0 and rows[name][2] > 80.0, f"{name}: {result.stdout}"
    assert rows["retrain"][4] == 0.0  # the reference's gap to itself
    # The retrained model never saw the digit 0; the original recognises it.
    assert rows["retrain"][0] > 95.0 and rows["original"][0] < 10.0, result.stdout
    # The showcase: gradient ascent over-forgets (it wrecks the retain set) and MCU repairs it.
    assert rows["MCU(GA)"][4] < rows["GA"][4], result.stdout
    found = re.search(r"returned: (?:t = ([\d.]+)|θ_u \(kept\))", result.stdout)
    assert found, result.stdout
    assert found.group(1) is None or 0.0 <= float(found.group(1)) <= 1.0
    found = re.search(r"after (\d+) path points", result.stdout)
    assert found and int(found.group(1)) <= 10  # the adaptive search, not a 21-point grid
    # MCU's targets come from the original (and 0 for a forgotten class), not from retraining.
    assert "from the targets only (0 (forgotten class) as the forget target)" in result.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_progress_bar_of_the_original_is_labelled_original(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    import torch
    from torch.utils.data import TensorDataset

    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    assert spec is not None and spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    sys.modules["quickstart"] = quickstart  # dataclasses look their module up there
    try:
        spec.loader.exec_module(quickstart)
    finally:
        del sys.modules["quickstart"]
    data = TensorDataset(torch.randn(32, 64), torch.randint(0, 10, (32,)))
    setup = quickstart.Setup(data, data, lambda: torch.nn.Linear(64, 10), lr=0.1, epochs=2)
    quickstart.train_from_scratch(setup, data, name="original", epochs=2, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "original" in err and "retrain" not in err, err


def test_quickstart_script_rejects_bad_flags() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--method", "nope"],
        capture_output=True,
        text=True,
        timeout=CELL_TIMEOUT,
    )
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


def test_quickstart_notebook_runs() -> None:
    text = output_text(run_notebook(EXAMPLES / "01_quickstart.ipynb"))
    assert "optimal t = " in text
    assert re.search(r"^MCU\(RL\)\s+[\d.]+", text, re.MULTILINE), text
    assert "MLP" in text  # export gives the user's class back


def test_bring_your_own_model_notebook_runs() -> None:
    text = output_text(run_notebook(EXAMPLES / "02_bring_your_own_model.ipynb"))
    assert "DigitNet" in text
    try:
        import transformers  # noqa: F401
    except ImportError:
        assert "skipping this part" in text
    else:
        assert "RowTransformer BertForSequenceClassification" in text, text
