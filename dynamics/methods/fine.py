"""FINE (Kim et al. 2021; docs/theory.md section 7): clean examples align with their class's principal direction."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from dynamics.methods.base import Context, Method, MethodState, predict_features


@dataclasses.dataclass(frozen=True)
class FineParams:
    """Settings of ``fine``: ``threshold``, the clean posterior above which an example is kept, in ``(0, 1)``."""

    threshold: float = 0.5

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")


def fine_clean_probability(features: np.ndarray, labels: np.ndarray, num_classes: int,
                           rng: np.random.Generator) -> np.ndarray:
    """FINE's clean posterior of every example (Kim et al. 2021; docs/theory.md section 7).

    Per class ``k``: rows ``phi_i / ||phi_i||`` of the examples labelled ``k``
    (uncentred, as in FINE), their top right singular vector ``u_k`` (the top
    eigenvector of the ``(D, D)`` Gram matrix), the alignment score
    ``<u_k, phi_i / ||phi_i||>^2``, and a 2-component Gaussian mixture on the
    class's scores; the clean posterior is that of the higher-mean component.
    A class with fewer than 4 examples or constant scores is kept whole (1).

    Parameters
    ----------
    features : (n, D) penultimate features.
    labels : (n,) int observed labels in ``[0, C)``.
    num_classes : C.
    rng : seeds the mixture fits.

    Returns
    -------
    (n,) float64 in ``[0, 1]``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    normed = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    probability = np.ones(len(labels))
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < 4:
            continue
        block = normed[members]
        # The top right singular vector of the block is the top eigenvector of its (D, D) Gram matrix.
        top = np.linalg.eigh(block.T @ block)[1][:, -1]
        scores = (block @ top) ** 2
        if np.ptp(scores) < 1e-12:
            continue
        mixture = GaussianMixture(2, covariance_type="full", tol=1e-6, max_iter=100,
                                  random_state=int(rng.integers(2 ** 31)))
        with warnings.catch_warnings():
            # FINE's tol=1e-6 often stops at max_iter on near-degenerate classes; the fit is still usable.
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(scores[:, None])
        clean_component = int(np.argmax(mixture.means_[:, 0]))
        probability[members] = mixture.predict_proba(scores[:, None])[:, clean_component]
    return probability


class FINE(Method):
    """ERM for the warm-up epochs; then, before every epoch, keep the examples FINE finds clean.

    The clean posterior (:func:`fine_clean_probability`) of the first
    network's penultimate features is the clean score; ``w = 1[posterior > threshold]``.
    """

    name = "fine"
    Params = FineParams

    def on_epoch(self, state: MethodState, epoch: int, context: Context) -> MethodState:
        if epoch < context.budget.warmup_epochs:
            return state
        data = context.data
        features = predict_features(context.networks[0], data.X, context.budget.eval_batch_size)
        probability = fine_clean_probability(features, data.y_noisy.cpu().numpy(), data.num_classes, context.rng)
        keep = (probability > self.params.threshold).astype(np.float64)
        return MethodState(torch.as_tensor(keep, device=data.X.device, dtype=data.X.dtype), probability)
