"""Griffe extension for the API reference: render the house docstring style.

The project's docstrings are Google style with a singular ``Example:`` heading
and Sphinx cross-reference roles (``:func:`name```, ``:class:`~pkg.Name```).
Griffe parses only the plural ``Examples:`` as an examples section (doctest
lines rendered as code; under a singular heading they would be read as
Markdown), and Markdown has no roles. This extension rewrites both when the
docstrings are loaded, so the sources keep the house style:

- ``Example:`` headings become ``Examples:``;
- a role becomes a code span of its target, shortened to the last component
  when the target starts with ``~`` (as Sphinx displays it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class HouseDocstrings(griffe.Extension):
    """Rewrite ``Example:`` headings and Sphinx roles in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of one loaded object."""
        if obj.docstring is not None:
            text = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_code_span, text)
