"""Training loops: base unlearning methods and the MCU path search.

* :func:`unlearn` runs any objective (FT, GA, NegGrad+, RL, SalUn with a mask,
  NPO, SimNPO, your own) on a **copy** of a model and returns it.
* :func:`retrain` trains a freshly initialised model on the retain set (the
  unlearning gold standard).
* :func:`fit_curve` trains a :class:`~modeconn_unlearn.curve.CurveModel`
  **in place** (its middle bends) with ``t`` drawn per batch, and returns its
  :class:`History`.

All three take their hyperparameters as a :class:`TrainConfig` (``config=``)
and/or as keyword arguments (for a language model: ``optimizer="adamw"``,
``scheduler=warmup_schedule(0.1, decay="cosine")`` with
``scheduler_interval="step"``, ``max_grad_norm=1.0``, ``grad_accumulation``,
``precision="bf16"``), and share one loop (:mod:`.loop`): deterministic
given ``seed`` (the global RNGs are seeded inside the call and restored
afterwards, the data order comes from its own ``torch.Generator``), a
checkpoint written atomically after every epoch when ``checkpoint_dir`` is
given, bit-identical continuation with ``resume=True``, a
:class:`~modeconn_unlearn.errors.NonFiniteLossError` before any update with a
NaN/inf loss or gradient, tqdm progress (``progress=False`` turns it off),
per-epoch ``logging`` at INFO level, and ``torchrun`` support
(:mod:`.distributed`).
"""

from .api import fit_curve, retrain, unlearn
from .config import (
    Callback,
    OptimizerSpec,
    SchedulerFactory,
    StepCallback,
    StepSchedulerFactory,
    TrainConfig,
)
from .fsdp import shard_curve
from .history import EpochRecord, History
from .schedules import warmup_schedule

__all__ = [
    "Callback",
    "EpochRecord",
    "History",
    "OptimizerSpec",
    "SchedulerFactory",
    "StepCallback",
    "StepSchedulerFactory",
    "TrainConfig",
    "fit_curve",
    "retrain",
    "shard_curve",
    "unlearn",
    "warmup_schedule",
]
