"""One install hint for every optional dependency."""

from __future__ import annotations

import sys

import pytest

from modeconn_unlearn.errors import MissingDependencyError, ModeConnError
from modeconn_unlearn.optional import require

HINT = r'pip install "modeconn-unlearn\[lm\]" \(from a clone: pip install -e "\.\[lm\]"\)'


def test_an_installed_module_is_returned() -> None:
    import math

    assert require("math", "lm", feature="x") is math


def test_a_missing_module_names_the_extra_for_an_index_and_a_clone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("rouge_score", "rouge_score.rouge_scorer"):  # import fails, even if imported
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=HINT) as caught:
        require("rouge_score.rouge_scorer", "lm", feature="rouge_l_recall")
    message = str(caught.value)
    assert message.startswith("rouge_l_recall needs the optional package 'rouge_score'")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ModeConnError)
    assert isinstance(caught.value.__cause__, ImportError)


@pytest.mark.parametrize("extra", ["plot", "lm", "second-order"])
def test_every_extra_gets_the_same_wording(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    monkeypatch.setitem(sys.modules, "absent", None)
    with pytest.raises(ImportError) as caught:
        require("absent", extra, feature="f")
    assert str(caught.value) == (
        "f needs the optional package 'absent', which is not installed; install it with: "
        f'pip install "modeconn-unlearn[{extra}]" (from a clone: pip install -e ".[{extra}]")'
    )
