"""Membership-inference attacks for judging unlearning.

Three families, all computed from one forward pass per dataset through the
outputs layer (:func:`~modeconn_unlearn.evaluation.collect_outputs`) and the
per-sample features of :mod:`modeconn_unlearn.evaluation.features`:

* :func:`svc_mia` (:mod:`~modeconn_unlearn.mia.svc`): the MIA-efficacy
  protocol of the unlearning literature: an SVC per per-sample feature
  (correctness, confidence, entropy, modified entropy, probability vector,
  loss) trained on shadow members vs non-members and applied to target data.
* :func:`threshold_attack` (:mod:`~modeconn_unlearn.mia.threshold`):
  population attacks thresholding the loss, confidence or entropy, with ROC
  AUC and TPR at low FPR (:func:`roc_metrics`).
* :func:`lira` (:mod:`~modeconn_unlearn.mia.lira`): the per-example
  likelihood-ratio attack with reference models (:func:`train_reference_models`
  trains them). Population attacks alone overestimate how private an
  unlearned model is; LiRA is the stronger test.

Member scores are oriented so that *higher means more likely a member*. Every
attack takes ``task=``; for a task without class logits (a language model)
the per-sample loss is the signal.
"""

from __future__ import annotations

from ..evaluation.features import (
    FEATURES,
    SIGNALS,
    TASK_FEATURES,
    logit_confidence,
    modified_entropy,
    sample_features,
)
from .lira import ReferenceModels, lira, lira_scores, lira_statistic, train_reference_models
from .svc import svc_mia
from .threshold import RocMetrics, ThresholdAttack, roc_metrics, threshold_attack

__all__ = [
    "FEATURES",
    "SIGNALS",
    "TASK_FEATURES",
    "ReferenceModels",
    "RocMetrics",
    "ThresholdAttack",
    "lira",
    "lira_scores",
    "lira_statistic",
    "logit_confidence",
    "modified_entropy",
    "roc_metrics",
    "sample_features",
    "svc_mia",
    "threshold_attack",
    "train_reference_models",
]
