"""Every fenced ``python`` block of ``docs/*.md`` and of the README runs.

A page's blocks run in order in one namespace, in a temporary working directory
(files a snippet writes land there). A block preceded by ``<!-- no-run -->`` is
shown but not run; use that only for code that cannot run here (a download, a
GPU, a placeholder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"

#: A fenced python block, and whether a ``<!-- no-run -->`` comment comes right before it.
_BLOCK = re.compile(
    r"(?P<marker><!--\s*no-run\s*-->\s*\n)?^```python[^\n]*\n(?P<code>.*?)^```\s*$",
    re.MULTILINE | re.DOTALL,
)


def blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` for each fenced python block of a markdown page."""
    return [
        (text.count("\n", 0, match.start("code")) + 1, match["code"], match["marker"] is None)
        for match in _BLOCK.finditer(text)
    ]


def run_page(page: Path) -> int:
    """Run the page's blocks in order in one namespace; return how many ran."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for line, code, runs in blocks(page.read_text(encoding="utf-8")):
        if not runs:
            continue
        compiled = compile("\n" * (line - 1) + code, str(page), "exec")
        exec(compiled, namespace)  # the documentation's own examples
        ran += 1
    return ran


PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_of_the_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not any(runs for _, _, runs in blocks(page.read_text(encoding="utf-8"))):
        pytest.skip(f"{page.name} has no python block to run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    assert run_page(page) > 0


def test_python_blocks_of_the_readme_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")  # the language-model block
    monkeypatch.chdir(tmp_path)
    assert run_page(README) > 0


# --------------------------------------------------------------------------- the runner itself
def test_blocks_are_found_in_order_and_no_run_is_honoured() -> None:
    text = (
        "intro\n```python\na = 1\n```\n\n<!-- no-run -->\n```python\nraise SystemExit\n```\n"
        "```text\nnot python\n```\n```python\nb = a + 1\n```\n"
    )
    found = blocks(text)
    assert [(code, runs) for _, code, runs in found] == [
        ("a = 1\n", True),
        ("raise SystemExit\n", False),
        ("b = a + 1\n", True),
    ]
    assert found[0][0] == 3  # the code's first line in the page


def test_a_failing_block_reports_its_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n\ny = undefined_name\n```\n", encoding="utf-8")
    with pytest.raises(NameError) as error:
        run_page(page)
    frame = error.traceback[-1]
    assert frame.path == page or str(frame.path) == str(page)
    assert frame.lineno + 1 == 6


def test_every_page_is_in_the_navigation() -> None:
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES if p.name not in nav]
    assert not missing, f"pages missing from the mkdocs.yml nav: {missing}"
    assert os.path.isfile(DOCS / "architecture.md")
