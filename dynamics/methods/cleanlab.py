"""cleanlab's label issues as an external reference (optional: cleanlab is AGPL-3.0, not a dependency).

docs/theory.md section 7: out-of-sample class probabilities, then
``cleanlab.filter.find_label_issues``; flagged examples get ``w = 0``.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import torch

from dynamics.methods.base import Context, Method, MethodState, MethodUnavailable, predict_features


@dataclasses.dataclass(frozen=True)
class CleanlabParams:
    """Settings of ``cleanlab``: ``folds``, the cross-validation folds of the out-of-sample probabilities (>= 2)."""

    folds: int = 5

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int,
                              rng: np.random.Generator) -> np.ndarray | None:
    """Out-of-sample class probabilities ``(n, C)``, cleanlab's standard input (needs scikit-learn only).

    A logistic regression on ``features : (n, D)`` (standardised),
    cross-validated over ``folds`` stratified folds drawn from ``rng``:
    every example's probabilities come from the model fitted without it.
    ``labels : (n,)`` are the observed labels in ``[0, C)``. The folds are
    capped by the smallest class; with fewer than 2 possible, None (and no
    draw from ``rng``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(np.bincount(labels, minlength=num_classes).min()))
    if folds < 2:
        return None
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2 ** 31)))
    return cross_val_predict(classifier, features, labels, cv=splitter, method="predict_proba")


def cleanlab_issues(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int,
                    rng: np.random.Generator) -> np.ndarray:
    """cleanlab's label issues, ``(n,)`` bool, from out-of-sample class probabilities.

    ``cleanlab.filter.find_label_issues`` on :func:`out_of_fold_probabilities`
    (a standardised logistic regression on ``features : (n, D)``,
    cross-validated over ``folds`` stratified folds drawn from ``rng``);
    ``labels : (n,)`` are the observed labels in ``[0, C)``. With fewer than 2
    folds possible (a class too small), nothing is flagged.
    """
    cleanlab_filter = importlib.import_module("cleanlab.filter")
    pred_probs = out_of_fold_probabilities(features, labels, num_classes, folds, rng)
    if pred_probs is None:
        return np.zeros(len(labels), dtype=bool)
    # One process: cleanlab's default pool cannot start inside the comparison's worker processes (daemonic).
    return np.asarray(cleanlab_filter.find_label_issues(labels, pred_probs, n_jobs=1), dtype=bool)


class Cleanlab(Method):
    """ERM for the warm-up epochs; then, before every epoch, ``w = 0`` on cleanlab's label issues.

    The probabilities come from the first network's penultimate features.
    Constructing it raises :class:`MethodUnavailable` when cleanlab is not installed.
    """

    name = "cleanlab"
    Params = CleanlabParams

    def __init__(self, params=None):
        super().__init__(params)
        try:
            importlib.import_module("cleanlab.filter")
        except ImportError:
            raise MethodUnavailable(
                "method 'cleanlab' needs the optional package cleanlab (AGPL-3.0, not a dependency of this "
                "project): pip install cleanlab"
            ) from None

    def on_epoch(self, state: MethodState, epoch: int, context: Context) -> MethodState:
        if epoch < context.budget.warmup_epochs:
            return state
        data = context.data
        features = predict_features(context.networks[0], data.X, context.budget.eval_batch_size)
        issues = cleanlab_issues(features, data.y_noisy.cpu().numpy(), data.num_classes, self.params.folds,
                                 context.rng)
        return MethodState(torch.as_tensor((~issues).astype(np.float64), device=data.X.device, dtype=data.X.dtype))
