"""MIA-efficacy: the SVC membership attack of the unlearning literature, as a score.

An ``SVC(C=3, gamma="auto", kernel="rbf")`` on one per-sample feature learns
shadow members (retain data) against non-members (test data); the score is
the share of forget samples it calls non-members. :func:`svc_fit_predict` is
the classifier step shared with :func:`modeconn_unlearn.mia.svc_mia`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.svm import SVC

from ..data import seeded_order
from ..errors import ModeConnError
from .features import check_features, feature_arrays
from .outputs import Outputs

__all__ = ["MIN_SHADOW", "mia_efficacy", "svc_fit_predict"]

#: The fewest shadow samples per side the SVC attack accepts.
MIN_SHADOW = 5


def svc_fit_predict(
    shadow_in: NDArray[np.float64],
    shadow_out: NDArray[np.float64],
    target_in: NDArray[np.float64] | None,
    target_out: NDArray[np.float64] | None,
    *,
    seed: int,
) -> float:
    """Fit SVC(C=3, rbf, gamma="auto") on shadow members (1) vs non-members (0).

    Returns the fraction of targets classified correctly: members of
    ``target_in`` predicted 1, non-members of ``target_out`` predicted 0; the
    mean of the two when both are given.

    Example:
        >>> rows = np.linspace(0, 1, 10)[:, None]
        >>> svc_fit_predict(rows + 5, rows, None, rows, seed=0)
        1.0
    """
    for name, rows in (("shadow members", shadow_in), ("shadow non-members", shadow_out)):
        if len(rows) < MIN_SHADOW:
            raise ModeConnError(
                f"The SVC attack needs at least {MIN_SHADOW} {name}, got {len(rows)}; "
                "pass larger shadow_train / shadow_test sets."
            )
    x = np.concatenate([shadow_in, shadow_out])
    if not np.all(np.isfinite(x)):
        raise ModeConnError("The model produced non-finite outputs on the shadow data.")
    y = np.concatenate([np.ones(len(shadow_in)), np.zeros(len(shadow_out))])
    classifier = SVC(C=3, gamma="auto", kernel="rbf", random_state=seed)
    classifier.fit(x, y)
    accuracies = []
    if target_in is not None:
        accuracies.append(float(classifier.predict(target_in).mean()))
    if target_out is not None:
        accuracies.append(1.0 - float(classifier.predict(target_out).mean()))
    return float(np.mean(accuracies))


def mia_efficacy(
    shadow: Outputs,
    test: Outputs,
    forget: Outputs,
    *,
    feature: str,
    subsample: bool,
    seed: int = 0,
) -> float:
    """MIA-efficacy in percent: forget samples an SVC on ``feature`` calls non-members.

    With ``subsample`` the shadow members are a seeded random subset of
    ``shadow`` as large as ``test`` (the same subset for the same sizes).

    Example:
        >>> import torch
        >>> def outs(losses):
        ...     loss = torch.tensor(losses, dtype=torch.float64)
        ...     return Outputs(loss, torch.ones_like(loss))
        >>> member, unseen = outs([0.1 * i for i in range(10)]), outs([5.0 + i for i in range(10)])
        >>> mia_efficacy(member, unseen, unseen, feature="loss", subsample=False)
        100.0
    """
    (feature,) = check_features((feature,))
    members = feature_arrays(shadow, (feature,))[feature]
    if subsample and len(members) > test.count:
        members = members[np.sort(seeded_order(len(members), seed, salt=50_000)[: test.count])]
    nonmembers = feature_arrays(test, (feature,))[feature]
    targets = feature_arrays(forget, (feature,))[feature]
    return 100.0 * svc_fit_predict(members, nonmembers, None, targets, seed=seed)
