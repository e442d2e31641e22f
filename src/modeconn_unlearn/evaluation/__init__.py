"""Evaluation of models and of whole paths: accuracy, loss, unlearning scores, PathReport.

One forward pass per split and model (or per split and ``t`` along a curve)
produces everything, through the outputs layer
(:func:`~modeconn_unlearn.evaluation.outputs.collect_outputs`): per-sample
loss and correctness from the task (:mod:`modeconn_unlearn.tasks`) and, when
asked, the signals the membership-inference attacks need. Every pass runs
under :func:`torch.no_grad` in eval mode and leaves the model's train/eval
mode as it was.

Modules:

* :mod:`~modeconn_unlearn.evaluation.outputs`: the forward-pass collector.
* :mod:`~modeconn_unlearn.evaluation.features`: per-sample membership features.
* :mod:`~modeconn_unlearn.evaluation.efficacy`: MIA-efficacy (the SVC score).
* :mod:`~modeconn_unlearn.evaluation.bn`: which data re-estimates BatchNorm.
* :mod:`~modeconn_unlearn.evaluation.scores`: :func:`evaluate`, :func:`unlearning_scores`.
* :mod:`~modeconn_unlearn.evaluation.report`: :class:`PathReport` and its files.
* :mod:`~modeconn_unlearn.evaluation.options`: the keyword options every path function shares.
* :mod:`~modeconn_unlearn.evaluation.paths`: the path walker and :func:`evaluate_path`.
"""

from __future__ import annotations

from .options import PathOptions, PathSettings
from .outputs import DataLike, Metrics, Outputs, collect_outputs
from .paths import evaluate_path, walk_path
from .report import PathReport
from .scores import UnlearningScores, evaluate, unlearning_scores

__all__ = [
    "DataLike",
    "Metrics",
    "Outputs",
    "PathOptions",
    "PathReport",
    "PathSettings",
    "UnlearningScores",
    "collect_outputs",
    "evaluate",
    "evaluate_path",
    "unlearning_scores",
    "walk_path",
]
