"""The MCU recipe a user can run: targets from data the user holds, then MCU in one call.

A user who needs unlearning has the original model θ_o, its training data and a
pre-unlearned model θ_u, but **no retrained model**. :func:`user_targets` gives
MCU's targets from what the user holds: the original's accuracy on retain data,
and for the forget set its accuracy on a held-out split carved from the training
data before training (:func:`carve_holdout`; random forgetting) or 0 (a forgotten
class). :func:`mcu_unlearn` then runs the recipe: layer mask → curve θ_o → θ_u →
curve training with the MCU objective → adaptive path search
(:func:`~modeconn_unlearn.selection.search_path`) → the chosen ``t`` → export.
Selection reads the retain and forget accuracies of points of the curve and,
with ``RecipeConfig(privacy_weight=...)``, a membership attack's AUC of the forget
set against the user's held-out data (:mod:`~modeconn_unlearn.recipe.privacy`);
no test split and no retrained model take part. Every step is also public on its
own (``layer_mask``, ``CurveModel``, ``fit_curve``, ``search_path``,
``find_optimal_t``, ``CurveModel.export``), and every step takes the task: with
``task=CausalLMTask()`` the same two calls serve a language model (token
accuracies, answer NLLs, held-out entities as the holdout; settings from
:meth:`RecipeConfig.for_task`).
"""

from .config import RecipeConfig
from .run import RecipeResult, mcu_unlearn
from .targets import Targets, carve_holdout, user_targets

__all__ = [
    "RecipeConfig",
    "RecipeResult",
    "Targets",
    "carve_holdout",
    "mcu_unlearn",
    "user_targets",
]
