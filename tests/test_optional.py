"""One install hint for every optional dependency."""

from __future__ import annotations

import sys

import pytest

from modeconn_unlearn.errors import MissingDependencyError, ModeConnError
from modeconn_unlearn.optional import install_hint, require

HINT = r'pip install "modeconn-unlearn\[lm\]" \(from a clone: pip install -e "\.\[lm\]"\)'


def test_an_installed_module_is_returned() -> None:
    import math

    assert require("math", "lm", feature="x") is math


def test_a_missing_module_names_the_extra_for_an_index_and_a_clone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # import fails
    with pytest.raises(MissingDependencyError, match=HINT) as caught:
        require("rouge_score.rouge_scorer", "lm", feature="rouge_l_recall")
    message = str(caught.value)
    assert message.startswith("rouge_l_recall needs the optional package 'rouge_score'")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ModeConnError)
    assert isinstance(caught.value.__cause__, ImportError)


def test_every_extra_gets_the_same_wording() -> None:
    for extra in ("plot", "lm", "second-order"):
        assert install_hint(extra) == install_hint("lm").replace("[lm]", f"[{extra}]")
