"""One set of argument checks, with one message per kind of mistake."""

from __future__ import annotations

import numpy as np
import pytest

from modeconn_unlearn.checks import as_float, check_percentages, positive_int
from modeconn_unlearn.errors import ModeConnError


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_integers_pass(value: object) -> None:
    positive_int(value, "epochs")


@pytest.mark.parametrize("value", [0, -2, 1.0, 1.5, True, "3", None])
def test_anything_else_is_refused_with_its_name(value: object) -> None:
    with pytest.raises(ModeConnError, match=r"^epochs must be a positive integer, got "):
        positive_int(value, "epochs")


def test_optional_allows_none_and_says_so() -> None:
    positive_int(None, "limit", optional=True)
    with pytest.raises(ModeConnError, match=r"limit must be a positive integer or None, got 0\."):
        positive_int(0, "limit", optional=True)


def test_a_minimum_above_one_is_named() -> None:
    positive_int(2, "num_classes", minimum=2)
    with pytest.raises(ModeConnError, match=r"num_classes must be an integer >= 2, got 1\."):
        positive_int(1, "num_classes", minimum=2)


def test_as_float_reads_numbers_and_refuses_the_rest() -> None:
    assert as_float("0.5", "beta") == 0.5 and as_float(3, "beta") == 3.0
    for value, message in [
        ("a", "beta must be a real number"),
        (None, "beta must be a real number"),
        (float("nan"), "beta must be a finite number"),
        (True, "beta must be a finite number"),
    ]:
        with pytest.raises(ModeConnError, match=message):
            as_float(value, "beta")


def test_as_float_ranges() -> None:
    assert as_float(0.0, "alpha", nonnegative=True) == 0.0
    with pytest.raises(ModeConnError, match=r"alpha must be >= 0, got -1"):
        as_float(-1, "alpha", nonnegative=True)
    with pytest.raises(ModeConnError, match=r"lr must be > 0, got 0"):
        as_float(0, "lr", positive=True)


def test_fractions_are_refused_as_percentages() -> None:
    check_percentages({"retain": 99.0, "forget": 0.0})
    check_percentages({"retain": 0.0, "forget": 0.0})
    with pytest.raises(ModeConnError, match=r"did you mean 99\.0 and 50\.0"):
        check_percentages({"retain": 0.99, "forget": 0.5})
