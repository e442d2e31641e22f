from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import PathReport
from modeconn_unlearn.plotting import plot_path

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def report() -> PathReport:
    t = np.linspace(0.0, 1.0, 11)
    forget = np.array([100, 100, 100, 99, 93, 43, 5, 2, 1, 0, 0], dtype=float)
    retain = np.array([100, 100, 100, 99.9, 99.2, 98.6, 99.0, 99.9, 100, 100, 100])
    return PathReport(
        t,
        {"retain": {"acc": retain}, "forget": {"acc": forget}, "test": {"acc": retain - 10}},
        segment_lengths=np.ones(10),
    )


def legend_labels(figure: object) -> list[str]:
    axes = figure.axes[0]  # type: ignore[attr-defined]
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_saves_png_and_pdf_without_touching_the_backend(report: PathReport, tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    png = tmp_path / "figs" / "path.png"
    figure = plot_path(
        report, targets={"retain": 99.5, "forget": 60.0}, path=png, optimal_t=0.47, kind="pchip"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = legend_labels(figure)
    assert {"retain", "forget", "test", "effective region", "optimal t = 0.470"} <= set(labels)
    assert "forget target (60)" in labels
    pdf = tmp_path / "path.pdf"
    plot_path(report, path=pdf)
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert matplotlib.get_backend() == backend


def test_region_is_shaded_only_with_both_targets(report: PathReport, tmp_path: Path) -> None:
    spans = (
        plot_path(
            report, targets={"retain": 99.5, "forget": 60.0}, path=tmp_path / "a.png", kind="linear"
        )
        .axes[0]
        .patches
    )
    # linear: avg_gap(t) < avg_gap(1) = 30.25 from t = 0 to where forget falls below ~1.
    assert len(spans) == 1
    no_targets = plot_path(report, targets={"retain": 99.5}, path=tmp_path / "b.png")
    assert "effective region" not in legend_labels(no_targets)
    off = plot_path(
        report, targets={"retain": 99.5, "forget": 60.0}, region=False, path=tmp_path / "c.png"
    )
    assert "effective region" not in legend_labels(off)


def test_report_plot_delegates(report: PathReport, tmp_path: Path) -> None:
    figure = report.plot(splits=["forget"], path=tmp_path / "d.svg", title="forget only")
    assert figure.axes[0].get_title() == "forget only"
    assert legend_labels(figure) == ["forget"]


def test_draws_into_given_axes(report: PathReport) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    returned = plot_path(report, metric="acc", splits=["retain"], ax=right)
    assert returned is figure
    assert len(right.lines) == 2 and len(left.lines) == 0  # interpolated line + markers


def test_bad_requests(report: PathReport, tmp_path: Path) -> None:
    with pytest.raises(ModeConnError, match="suffix"):
        plot_path(report, path=tmp_path / "path.jpg2")
    with pytest.raises(ModeConnError, match="not in the report"):
        plot_path(report, targets={"val": 1.0}, path=tmp_path / "e.png")
    with pytest.raises(ModeConnError, match="available"):
        plot_path(report, metric="loss", path=tmp_path / "f.png")


def test_missing_matplotlib_gives_an_install_hint(
    report: PathReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "modeconn-unlearn\[plot\]"'):
        plot_path(report, path=tmp_path / "g.png")
