from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import PathReport
from modeconn_unlearn.plotting import plot_path
from modeconn_unlearn.selection import find_optimal_t

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
    figure = plot_path(report, targets={"retain": 99.5, "forget": 60.0}, save=png, optimal_t=0.47)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = legend_labels(figure)
    assert {"retain", "forget", "test", "optimal t = 0.470"} <= set(labels)
    assert "effective region (closer to the targets than t = 1)" in labels
    assert {"forget target (60.0)", "retain target (99.5)"} <= set(labels)
    pdf = tmp_path / "path.pdf"
    plot_path(report, save=pdf)
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert matplotlib.get_backend() == backend


def test_region_is_shaded_only_with_both_targets(report: PathReport, tmp_path: Path) -> None:
    linear = find_optimal_t(
        report.t,
        report.acc("retain"),
        report.acc("forget"),
        retain_target=99.5,
        forget_target=60.0,
        kind="linear",
    )
    spans = (
        plot_path(
            report,
            targets={"retain": 99.5, "forget": 60.0},
            save=tmp_path / "a.png",
            optimal_t=linear,
        )
        .axes[0]
        .patches
    )
    # linear: avg_gap(t) < avg_gap(1) = 30.25 from t = 0 to where forget falls below ~1.
    assert len(spans) == 1
    no_targets = plot_path(report, targets={"retain": 99.5}, save=tmp_path / "b.png")
    assert not any(label.startswith("effective region") for label in legend_labels(no_targets))
    off = plot_path(
        report, targets={"retain": 99.5, "forget": 60.0}, region=False, save=tmp_path / "c.png"
    )
    assert not any(label.startswith("effective region") for label in legend_labels(off))


def test_report_plot_delegates(report: PathReport, tmp_path: Path) -> None:
    figure = report.plot(splits=["forget"], save=tmp_path / "d.svg", title="forget only")
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
    with pytest.raises(ModeConnError, match="ending in one of"):
        plot_path(report, save=tmp_path / "path.jpg2")
    with pytest.raises(ModeConnError, match="not in the report"):
        plot_path(report, targets={"val": 1.0}, save=tmp_path / "e.png")
    with pytest.raises(ModeConnError, match="available"):
        plot_path(report, metric="loss", save=tmp_path / "f.png")


def test_missing_matplotlib_gives_an_install_hint(
    report: PathReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "modeconn-unlearn\[plot\]"'):
        plot_path(report, save=tmp_path / "g.png")


def test_shaded_region_is_the_optimal_t_region_by_default(report: PathReport) -> None:
    from modeconn_unlearn.selection import find_optimal_t

    targets = {"retain": 99.5, "forget": 60.0}
    best = find_optimal_t(
        report.t,
        report.acc("retain"),
        report.acc("forget"),
        retain_target=targets["retain"],
        forget_target=targets["forget"],
    )
    figure = plot_path(report, targets=targets, save=None)
    spans = [patch.get_x() for patch in figure.axes[0].patches]
    widths = [patch.get_width() for patch in figure.axes[0].patches]
    assert best.region is not None and len(spans) == len(best.region)
    for (start, end), x, width in zip(best.region, spans, widths, strict=True):
        assert x == pytest.approx(start) and x + width == pytest.approx(end)
    with_best = plot_path(report, targets=targets, optimal_t=best, save=None)
    assert f"optimal t = {best.t:.3f}" in legend_labels(with_best)


def test_end_labels_mia_axis_and_curves_above_targets(report: PathReport, tmp_path: Path) -> None:
    measured = {
        "retain": {"acc": report.acc("retain")},
        "forget": {"acc": report.acc("forget"), "mia_confidence": 100 - report.acc("forget")},
    }
    with_mia = PathReport(report.t, measured, segment_lengths=report.segment_lengths)
    figure = plot_path(
        with_mia,
        targets={"retain": 99.5, "forget": 2.125},
        end_labels=("original", "RL"),
        save=tmp_path / "q.png",
    )
    main, twin = figure.axes
    ticks = [label.get_text() for label in main.get_xticklabels()]
    assert ticks[0] == "0\noriginal" and ticks[-1] == "1\nRL"
    assert twin.get_ylabel() == "MIA-efficacy (%)"
    labels = legend_labels(figure)
    assert "forget MIA-efficacy, confidence (right axis)" in labels
    mia_line = twin.lines[0]
    np.testing.assert_array_equal(mia_line.get_ydata(), 100 - report.acc("forget"))
    low, high = twin.get_ylim()
    assert low <= mia_line.get_ydata().min() and mia_line.get_ydata().max() <= high  # in view
    assert "forget target (2.12)" in labels and "retain target (99.5)" in labels
    assert "effective region (closer to the targets than RL)" in labels
    curves = {line.get_label(): line for line in main.lines}
    targets = [line for line in main.lines if line.get_label().endswith(")")]
    assert all(t.get_zorder() < curves["forget"].get_zorder() for t in targets)
    assert all(t.get_linestyle() == "--" and t.get_linewidth() < 1.0 for t in targets)
    no_mia = plot_path(with_mia, mia=False, save=tmp_path / "r.png")
    assert len(no_mia.axes) == 1
    with pytest.raises(ModeConnError, match="no MIA scores"):
        plot_path(report, mia=True, save=tmp_path / "s.png")


def test_path_is_a_deprecated_alias_of_save(report: PathReport, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="save="):
        plot_path(report, path=tmp_path / "old.png")
    assert (tmp_path / "old.png").is_file()
    with pytest.raises(ModeConnError, match="once"):
        plot_path(report, path=tmp_path / "a.png", save=tmp_path / "b.png")
    with pytest.warns(DeprecationWarning, match="save=") as caught:
        report.plot(path=tmp_path / "older.png")
    assert (tmp_path / "older.png").is_file()
    assert caught[0].filename == __file__  # the warning points at the caller


def test_kind_is_deprecated_and_unknown_keywords_are_refused(
    report: PathReport, tmp_path: Path
) -> None:
    targets = {"retain": 99.5, "forget": 60.0}
    with pytest.warns(DeprecationWarning, match="find_optimal_t") as caught:
        old = plot_path(report, targets=targets, save=tmp_path / "k.png", kind="linear")
    assert caught[0].filename == __file__

    def forget_line(figure: object) -> np.ndarray:
        lines = figure.axes[0].get_lines()  # type: ignore[attr-defined]
        return next(line for line in lines if line.get_label() == "forget").get_xydata()

    # kind="linear" still draws straight segments between the measured points; the default
    # (the selection's pchip) does not.
    t, drawn = forget_line(old).T
    assert np.allclose(drawn, np.interp(t, report.t, report.acc("forget")))
    t, default = forget_line(plot_path(report, save=tmp_path / "p.png")).T
    assert not np.allclose(default, np.interp(t, report.t, report.acc("forget")))
    with pytest.raises(ModeConnError, match=r"unexpected keyword.*'colour'"):
        plot_path(report, colour="red")
