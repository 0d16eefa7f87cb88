"""Trusted-classifier agreement (docs/theory.md sections 6 and 7): a classifier fitted on the clean subset alone
keeps the training examples whose observed label it predicts; the network then trains on those.

The classifier reads the inputs as given (flattened): for the feature profiles
these are the frozen embeddings, the features on which section 6 compares the
surrogate with these references.
"""

from __future__ import annotations

import numpy as np
import torch

from dynamics.methods.base import Context, Method, MethodState


def _flat(X: torch.Tensor) -> np.ndarray:
    return X.reshape(len(X), -1).double().cpu().numpy()


def logistic_agreement(X: np.ndarray, y: np.ndarray, X_meta: np.ndarray, y_meta: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, score)``: scikit-learn's ``LogisticRegression(max_iter=1000)`` fitted on ``(X_meta (m, D), y_meta)``;
    ``keep (n,)`` is ``predict(X) == y``, ``score (n,)`` the predicted probability of the observed label ``y``."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=1000).fit(X_meta, y_meta)
    probability = classifier.predict_proba(X)
    column = np.searchsorted(classifier.classes_, y)
    return classifier.classes_[probability.argmax(axis=1)] == y, probability[np.arange(len(y)), column]


def nearest_mean_agreement(X: np.ndarray, y: np.ndarray, X_meta: np.ndarray, y_meta: np.ndarray, num_classes: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, score)``: ``keep (n,)`` where the clean class mean nearest to ``X (n, D)`` (Euclidean) is that of
    the observed label ``y``; ``score = min_k ||x - mu_k||^2 - ||x - mu_y||^2`` (0 when kept, negative otherwise)."""
    means = np.stack([X_meta[y_meta == k].mean(axis=0) for k in range(num_classes)])
    distances = (X ** 2).sum(axis=1, keepdims=True) - 2 * X @ means.T + (means ** 2).sum(axis=1)
    own = distances[np.arange(len(y)), y]
    return distances.argmin(axis=1) == y, distances.min(axis=1) - own


class _Trusted(Method):
    """Weights fixed before training: 1 where the trusted classifier agrees with the observed label."""

    def agreement(self, X, y, X_meta, y_meta, num_classes) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def init(self, context: Context) -> MethodState:
        data = context.data
        keep, score = self.agreement(_flat(data.X), data.y_noisy.cpu().numpy(), _flat(data.X_meta),
                                     data.y_meta.cpu().numpy(), data.num_classes)
        return MethodState(torch.as_tensor(keep, device=data.X.device, dtype=data.X.dtype), score)


class TrustedLR(_Trusted):
    """Keep the examples whose label a logistic regression fitted on the clean subset predicts.

    See :func:`logistic_agreement`.
    """

    name = "trusted-lr"

    def agreement(self, X, y, X_meta, y_meta, num_classes):
        return logistic_agreement(X, y, X_meta, y_meta)


class TrustedMean(_Trusted):
    """Keep the examples whose label's clean class mean is the nearest (:func:`nearest_mean_agreement`)."""

    name = "trusted-mean"

    def agreement(self, X, y, X_meta, y_meta, num_classes):
        return nearest_mean_agreement(X, y, X_meta, y_meta, num_classes)
