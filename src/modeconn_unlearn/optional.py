"""Optional dependencies, imported on first use with one install hint.

matplotlib (``plot``), the Hugging Face stack and peft (``lm``), ``datasets``
(``hf-data``) and pytorch-optimizer (``second-order``) are not needed to import
:mod:`modeconn_unlearn`. Every function that uses one imports it through
:func:`require`, which names the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, extra: str, *, feature: str) -> ModuleType:
    """Import ``module``, or say which extra of the package installs it.

    Args:
        module: Dotted module name, e.g. ``"rouge_score.rouge_scorer"``.
        extra: The extra of ``pyproject.toml`` that installs it, e.g. ``"lm"``.
        feature: What needs it, for the message.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: The module is not installed (an ``ImportError``
            and a ``ModeConnError``).

    Example:
        >>> require("math", "plot", feature="arithmetic").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{feature} needs the optional package {top!r}, which is not installed; "
            f'install it with: pip install "modeconn-unlearn[{extra}]" '
            f'(from a clone: pip install -e ".[{extra}]")'
        ) from error
