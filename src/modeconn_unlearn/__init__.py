"""Machine unlearning through mode connectivity, for any ``nn.Module``.

Example:
    >>> import modeconn_unlearn as mcu
    >>> callable(mcu.CurveModel) and callable(mcu.find_optimal_t)
    True
"""

from __future__ import annotations

import importlib
import sys

from . import lm, losses
from .batchnorm import update_bn
from .checkpoint import load_checkpoint, save_checkpoint
from .connectivity import (
    BarrierResult,
    ConnectivityMatrix,
    connect,
    connectivity_matrix,
    loss_barrier,
    relearn_attack,
    relearn_path,
)
from .curve import CurveModel
from .data import UnlearnBatch, UnlearnDataset, forget_retain_split, unlearn_loader
from .ensemble import PathEnsemble, path_ensemble
from .errors import IncompatibleModelsError, ModeConnError, NonFiniteLossError
from .evaluation import (
    Metrics,
    PathReport,
    UnlearningScores,
    evaluate,
    evaluate_path,
    unlearning_scores,
)
from .losses import AdaptiveBeta, UnlearnLoss
from .masks import layer_mask, load_mask, random_mask, saliency_mask, save_mask
from .mia import lira, svc_mia, threshold_attack, train_reference_models
from .recipe import RecipeConfig, RecipeResult, Targets, carve_holdout, mcu_unlearn, user_targets
from .selection import (
    OptimalT,
    PathSearch,
    avg_gap,
    effective_region,
    find_optimal_t,
    search_path,
)
from .task_vector import negate_task_vector
from .tasks import CausalLMTask, ClassificationTask, SampleOutputs, Task
from .training import EpochRecord, History, TrainConfig, fit_curve, retrain, shard_curve, unlearn

__version__ = "0.2.0"

#: Module paths of 0.2 that moved into the ``curve`` and ``selection`` subpackages; they stay
#: importable (``from modeconn_unlearn.curve_model import CurveModel``) until 0.3.0.
MOVED_MODULES = {
    "curves": "curve.coefficients",
    "curve_points": "curve.points",
    "curve_bends": "curve.bends",
    "curve_endpoints": "curve.endpoints",
    "curve_model": "curve.model",
    "path_search": "selection.search",
}
for _old, _new in MOVED_MODULES.items():
    sys.modules[f"{__name__}.{_old}"] = importlib.import_module(f".{_new}", __name__)

__all__ = [
    "AdaptiveBeta",
    "BarrierResult",
    "CausalLMTask",
    "ClassificationTask",
    "ConnectivityMatrix",
    "CurveModel",
    "EpochRecord",
    "History",
    "IncompatibleModelsError",
    "Metrics",
    "ModeConnError",
    "NonFiniteLossError",
    "OptimalT",
    "PathEnsemble",
    "PathReport",
    "PathSearch",
    "RecipeConfig",
    "RecipeResult",
    "SampleOutputs",
    "Targets",
    "Task",
    "TrainConfig",
    "UnlearnBatch",
    "UnlearnDataset",
    "UnlearnLoss",
    "UnlearningScores",
    "__version__",
    "avg_gap",
    "carve_holdout",
    "connect",
    "connectivity_matrix",
    "effective_region",
    "evaluate",
    "evaluate_path",
    "find_optimal_t",
    "fit_curve",
    "forget_retain_split",
    "layer_mask",
    "lira",
    "lm",
    "load_checkpoint",
    "load_mask",
    "loss_barrier",
    "losses",
    "mcu_unlearn",
    "negate_task_vector",
    "path_ensemble",
    "random_mask",
    "relearn_attack",
    "relearn_path",
    "retrain",
    "saliency_mask",
    "save_checkpoint",
    "save_mask",
    "search_path",
    "shard_curve",
    "svc_mia",
    "threshold_attack",
    "train_reference_models",
    "unlearn",
    "unlearn_loader",
    "unlearning_scores",
    "update_bn",
    "user_targets",
]
