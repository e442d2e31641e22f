"""benchmarks/_harness.py: intervals, verdicts, tables, timing, files and the method registry."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import modeconn_unlearn as mcu

ROOT = Path(__file__).resolve().parents[1]


def _load_harness():
    spec = importlib.util.spec_from_file_location("_harness", ROOT / "benchmarks/_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


def test_mean_ci_is_scipys_t_interval_of_the_paired_differences() -> None:
    after, before = [1.0, 2.5, 0.5, 3.0], [2.0, 2.0, 1.5, 4.5]
    rows = [{"new": {"gap": a}, "old": {"gap": b}} for a, b in zip(after, before, strict=True)]
    diffs = harness.paired_differences(rows, "new", "old", "gap")
    cell = harness.mean_ci(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=cell["mean"], scale=stats.sem(diffs))
    assert diffs == [a - b for a, b in zip(after, before, strict=True)]
    assert cell["n"] == 4
    assert cell["ci"] == pytest.approx((high - low) / 2)
    assert math.isnan(harness.mean_ci([1.0])["ci"])


def test_paired_differences_to_a_reference_compare_distances() -> None:
    rows = [{"new": {"mia": 12.0}, "old": {"mia": 20.0}, "Retrain": {"mia": 10.0}}]
    assert harness.paired_differences(rows, "new", "old", "mia", reference="Retrain") == [-8.0]


def test_verdict_needs_the_interval_on_one_side_of_zero() -> None:
    assert harness.verdict({"mean": -1.0, "ci": 0.5, "n": 5}) == "win"
    assert harness.verdict({"mean": 1.0, "ci": 0.5, "n": 5}) == "loss"
    assert harness.verdict({"mean": -1.0, "ci": 2.0, "n": 5}) == "tie"
    assert harness.verdict({"mean": -1.0, "ci": math.nan, "n": 1}) == "tie"


def test_mean_cells_leave_out_scores_a_seed_lacks() -> None:
    rows = [{"GA": {"gap": 1.0, "cpu": None}}, {"GA": {"gap": 3.0, "cpu": 2.0}}]
    cells = harness.mean_cells(rows, ("gap", "cpu"))
    assert list(cells["GA"]) == ["gap"]
    assert cells["GA"]["gap"]["mean"] == 2.0


def test_fmt_and_table() -> None:
    assert harness.fmt({"mean": 1.234, "ci": 0.5}) == "1.23 ± 0.50"
    assert harness.fmt({"mean": 1.234, "ci": math.nan}, sign=True) == "+1.23"
    assert harness.table("a | b", [[1, ""]], align="lr") == ["| a | b |", "|---|---:|", "| 1 | |"]
    with pytest.raises(ValueError, match="2 columns"):
        harness.table("a | b", [], align="l")


def test_mean_where_averages_the_matching_records() -> None:
    records = [
        {"scenario": "class", "method": "GA", "gap": 1.0},
        {"scenario": "class", "method": "GA", "gap": 2.0},
        {"scenario": "class", "method": "RL", "gap": 9.0},
        {"scenario": "random10", "method": "GA", "gap": 7.0},
    ]
    assert harness.mean_where(records, "gap", scenario="class", method="GA") == 1.5
    assert harness.mean_where(records, "gap", method="GA") == pytest.approx(10.0 / 3)
    assert harness.mean_where(records, "gap") == pytest.approx(19.0 / 4)


def test_marked_writes_a_paired_difference_with_its_verdict() -> None:
    assert harness.marked({"mean": -1.0, "ci": 0.5, "n": 5}) == "**-1.00 ± 0.50**"
    assert harness.marked({"mean": 1.0, "ci": 0.5, "n": 5}) == "_+1.00 ± 0.50_"
    assert harness.marked({"mean": 0.25, "ci": 1.0, "n": 5}, 1) == "+0.2 ± 1.0"
    assert harness.marked({"mean": -1.0, "ci": math.nan, "n": 1}) == "-1.00"


def test_score_table_writes_a_row_per_entry_and_a_column_per_score() -> None:
    rows = {
        "GA": {"gap": {"mean": 1.0, "ci": 0.5}, "time": {"mean": 12.34, "ci": math.nan}},
        "RL": {"gap": {"mean": 2.0, "ci": 0.25}, "time": {"mean": 3.0, "ci": 1.0}, "extra": {}},
    }
    assert harness.score_table("model | gap | s", rows, ["gap", "time"]) == [
        "| model | gap | s |",
        "|---|---:|---:|",
        "| GA | 1.00 ± 0.50 | 12.34 |",
        "| RL | 2.00 ± 0.25 | 3.00 ± 1.00 |",
    ]
    custom = harness.score_table(
        "model | s",
        rows,
        ["time"],
        cell=lambda score, cell: f"{score} {cell['mean']:.0f}",
        label=str.lower,
    )
    assert custom[2:] == ["| ga | time 12 |", "| rl | time 3 |"]
    with pytest.raises(ValueError, match="3 columns"):
        harness.score_table("model | gap | s", rows, ["gap"])


def test_wait_for_json_times_out_and_reads_a_written_file(tmp_path: Path) -> None:
    path = tmp_path / "tuning.json"
    with pytest.raises(TimeoutError, match="did not appear"):
        harness.wait_for_json(path, timeout_s=0.0, poll_s=0.0)
    harness.write_json(path, {"chosen": [1, 0.04]})
    assert harness.wait_for_json(path, timeout_s=0.0) == {"chosen": [1, 0.04]}
    assert [p.name for p in tmp_path.iterdir()] == ["tuning.json"]  # no temporary file left


def test_tuned_lrs_read_mcu_tables_tuning_file() -> None:
    chosen = json.loads(harness.TABLE_TUNING.read_text())["chosen_base"]
    lrs = harness.tuned_lrs()
    assert lrs.keys() == chosen.keys()
    assert all(lrs[s][m] == lr for s in chosen for m, (_, lr) in chosen[s].items())


def test_every_method_builds_its_objective() -> None:
    task = mcu.CausalLMTask()
    for method in harness.OBJECTIVES:
        lm_method = method in ("GradDiff", "NPO", "SimNPO")
        built = harness.objective(method, task=task if lm_method else None)
        assert isinstance(built, mcu.UnlearnLoss)
    salun, rl = harness.objective("SalUn"), harness.objective("RL")
    assert type(salun) is type(rl)  # SalUn: RL's objective; Base.run adds the saliency mask


def test_write_json_writes_numpy_values_as_pythons(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    data = {
        "auc": np.float32(0.25),
        "n": np.int64(3),
        "win": np.bool_(True),
        "path": np.array([0.5, 1.0]),
        "ci": math.nan,
    }
    harness.write_json(path, data)
    read = json.loads(path.read_text())
    assert {k: read[k] for k in ("auc", "n", "win", "path")} == {
        "auc": 0.25,
        "n": 3,
        "win": True,
        "path": [0.5, 1.0],
    }
    assert type(read["n"]) is int and type(read["win"]) is bool
    assert math.isnan(read["ci"])
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        harness.write_json(path, {"model": object()})


def test_timed_measures_peak_memory_on_request() -> None:
    result, took = harness.timed(lambda: 7)
    assert result == 7 and took.peak_mb is None and took.wall >= 0.0

    # 64 MiB, written, and still held when the measurement ends (no reliance on sampling)
    block, took = harness.timed(lambda: np.ones(8 * 2**20), peak_memory=True)
    assert block.nbytes == 2**26
    assert took.peak_mb is not None
    if Path("/proc/self/statm").exists():
        assert took.peak_mb >= 32.0
    total = took + harness.Seconds(1.0, 0.5, peak_mb=1.0)
    assert total.wall == took.wall + 1.0 and total.peak_mb == max(took.peak_mb, 1.0)
    assert (harness.Seconds(1.0, 1.0) + harness.Seconds(2.0, 1.0)).peak_mb is None
