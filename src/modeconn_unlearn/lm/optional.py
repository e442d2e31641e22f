"""Optional dependencies of the language-model tools, imported on first use.

``transformers``, ``tokenizers`` and ``rouge-score`` are not needed to import
:mod:`modeconn_unlearn`; the functions that use them import them through
:func:`require`, which says how to install them when they are missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["INSTALL_HINT", "require"]

#: How to install every optional dependency of :mod:`modeconn_unlearn.lm`.
INSTALL_HINT = 'pip install "modeconn-unlearn[lm]"'


def require(module: str, *, feature: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says how to install it.

    Args:
        module: Dotted module name, e.g. ``"rouge_score.rouge_scorer"``.
        feature: What needs it, for the message.

    Returns:
        The imported module.

    Raises:
        ImportError: The module is not installed.

    Example:
        >>> require("math", feature="arithmetic").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise ImportError(
            f"{feature} needs the optional package {top!r}, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from error
