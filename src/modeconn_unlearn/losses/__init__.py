"""Unlearning objectives: ``loss(model, batch) -> Tensor``.

An objective is any callable taking the model (a plain ``nn.Module`` or a
:class:`~modeconn_unlearn.curve.CurveModel`) and an
:class:`~modeconn_unlearn.data.UnlearnBatch` and returning a scalar tensor to
minimise. Users pass their own functions the same way.

The built-ins take ``task=`` (default: classification), read each batch with
the task and run one forward pass through it:

* classic methods (:mod:`.classic`): :func:`gradient_ascent`, :func:`finetune`,
  :func:`neggrad_plus`, :func:`random_label` (classification only) and the MCU
  objective :func:`mcu_objective` with :class:`AdaptiveBeta`;
* preference-style objectives for language models and classifiers alike
  (:mod:`.preference`): :func:`gradient_difference`, :func:`npo`,
  :func:`simnpo` and :func:`idk`;
* representation misdirection (:mod:`.representation`): :func:`rmu`, which
  steers one hidden layer's activations on forget samples.
"""

from .base import UnlearnLoss
from .classic import (
    AdaptiveBeta,
    finetune,
    gradient_ascent,
    mcu_objective,
    neggrad_plus,
    random_label,
)
from .preference import gradient_difference, idk, npo, simnpo
from .representation import rmu

__all__ = [
    "AdaptiveBeta",
    "UnlearnLoss",
    "finetune",
    "gradient_ascent",
    "gradient_difference",
    "idk",
    "mcu_objective",
    "neggrad_plus",
    "npo",
    "random_label",
    "rmu",
    "simnpo",
]
