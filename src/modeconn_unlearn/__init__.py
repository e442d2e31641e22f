"""Machine unlearning through mode connectivity, for any ``nn.Module``."""

from __future__ import annotations

from .batchnorm import update_bn
from .checkpoint import load_checkpoint, save_checkpoint
from .curve_model import CurveModel
from .errors import IncompatibleModelsError, ModeConnError, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "CurveModel",
    "IncompatibleModelsError",
    "ModeConnError",
    "NonFiniteLossError",
    "__version__",
    "load_checkpoint",
    "save_checkpoint",
    "update_bn",
]
