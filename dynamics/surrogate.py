"""The surrogate reweighter: weights without bi-level optimisation (docs/theory.md section 6).

Each training example is compared with the clean subset through a kernel,
class by class; the label-signed comparison ``d`` is a score (higher = more
likely clean) and a closed-form rule turns it into weights in ``[0, 1]``.
The pieces are public so that each identity of claim C11 can be checked on
its own; :func:`reweight` chains them for practitioners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from dynamics.problem import class_labels

RULES = ("reference", "sign")
_BLOCK_ROWS = 1024

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ReweightResult:
    """What :func:`reweight` found (docs/theory.md section 6).

    Attributes
    ----------
    weights : (n,) float64 in ``[0, 1]``, per-example training weights.
    is_label_issue : (n,) bool, ``weights == 0``: the examples filtered out.
    score : (n,) float64, the modulated score ``d``; higher means more likely
        clean, so it ranks examples.
    similarities : (n, C) float64, centred class-mean similarities ``S``
        (before row shifting).
    alpha0 : the modulation used.
    rule : the weight rule used, one of :data:`RULES`.
    num_classes : C.
    """

    weights: np.ndarray
    is_label_issue: np.ndarray
    score: np.ndarray
    similarities: np.ndarray
    alpha0: float
    rule: str
    num_classes: int


def _as_features(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (examples, features), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _validated(features, meta_features, meta_labels, num_classes, labels=None):
    """Checked float64 / int64 arrays and ``C``; every clean class must be present."""
    Phi = _as_features("features", features)
    Psi = _as_features("meta_features", meta_features)
    if Phi.shape[1] != Psi.shape[1]:
        raise ValueError(f"meta_features has {Psi.shape[1]} features per example, features has {Phi.shape[1]}")
    y_meta = class_labels("meta_labels", meta_labels, len(Psi))
    y = None if labels is None else class_labels("labels", labels, len(Phi))
    if num_classes is None:
        num_classes = 1 + max(y_meta.max(), -1 if y is None else y.max())
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    C = int(num_classes)
    for name, values in (("labels", y), ("meta_labels", y_meta)):
        if values is not None and values.max() >= C:
            raise ValueError(f"{name} must lie in [0, {C}), got maximum {values.max()}")
    missing = np.flatnonzero(np.bincount(y_meta, minlength=C) == 0)
    if missing.size:
        raise ValueError(f"meta_labels (the clean subset) has no example of classes {missing.tolist()}; "
                         "every class needs at least one")
    return Phi, Psi, y_meta, y, C


def _class_similarities(Phi, Psi, y_meta, C, kernel, block_rows):
    one_hot = np.eye(C)[y_meta]
    class_average = one_hot / one_hot.sum(axis=0)  # (m, C): column k averages over clean class k
    class_means = class_average.T @ Psi  # M : (C, D)
    mu = class_means.mean(axis=0)  # class-balanced, so an unbalanced clean subset does not tilt the centre
    if kernel is None:
        return (Phi - mu) @ (class_means - mu).T
    Psi_c = Psi - mu
    S = np.empty((len(Phi), C))
    for start in range(0, len(Phi), block_rows):
        block = Phi[start:start + block_rows] - mu
        k_block = np.asarray(kernel(block, Psi_c), dtype=np.float64)
        if k_block.shape != (len(block), len(Psi_c)):
            raise ValueError(f"kernel(a, b) must return shape (len(a), len(b)) = {(len(block), len(Psi_c))}, "
                             f"got {k_block.shape}")
        S[start:start + len(block)] = k_block @ class_average
    if not np.all(np.isfinite(S)):
        raise ValueError("kernel returned non-finite values")
    return S


def class_similarities(
    features,
    meta_labels,
    meta_features,
    num_classes: int | None = None,
    kernel: Kernel | None = None,
    *,
    block_rows: int = _BLOCK_ROWS,
) -> np.ndarray:
    """Centred class-mean similarities ``S`` (docs/theory.md section 6, steps 1-2).

    With ``mu_k`` the mean of the clean features of class ``k`` and
    ``mu = mean_k mu_k``, both sets are centred by ``mu`` and
    ``S[i, k] = mean_{j : y_meta_j = k} k(phi_i - mu, psi_j - mu)``.
    For the linear kernel ``S = (Phi - mu) @ (M - mu).T`` with class means
    ``M``, at cost ``O(n D C)``; the ``(n, m)`` kernel matrix is never formed,
    and each row of ``S`` sums to 0 over classes (C11).

    Parameters
    ----------
    features : (n, D) training features ``Phi``.
    meta_labels : (m,) int clean labels in ``[0, C)``; every class present.
    meta_features : (m, D) clean features ``Psi``.
    num_classes : C, or None for ``max(meta_labels) + 1``.
    kernel : None for the linear kernel, else a callable ``kernel(a, b)``
        returning the ``(len(a), len(b))`` kernel matrix, e.g.
        ``functools.partial(kernels.kernel, KernelSpec())`` for the NTK.
    block_rows : rows of ``features`` per kernel call; memory is
        ``O(block_rows * m)`` beyond the output.

    Returns
    -------
    S : (n, C) float64.
    """
    Phi, Psi, y_meta, _, C = _validated(features, meta_features, meta_labels, num_classes)
    return _class_similarities(Phi, Psi, y_meta, C, kernel, block_rows)


def modulated_scores(similarities: np.ndarray, labels: np.ndarray, alpha0: float) -> np.ndarray:
    """Label-signed modulated scores ``d`` (docs/theory.md section 6, steps 3-4).

    Row shifting subtracts each row's second-largest entry, ``S'[i] = S[i] -
    top2(S[i])``; then ``d_i = S'[i, y_i] - alpha0 * sum_{k != y_i} S'[i, k]``.
    With ``alpha0 = 1/(C-1)`` the shift cancels; with ``alpha0 = 0``, ``d_i``
    is ``S[i, y_i]`` minus the runner-up (C11).

    Parameters
    ----------
    similarities : (n, C) ``S``, C >= 2.
    labels : (n,) int observed labels in ``[0, C)``.
    alpha0 : weight of the other classes' similarities.

    Returns
    -------
    d : (n,) float64.
    """
    S = np.asarray(similarities, dtype=np.float64)
    shifted = S - np.partition(S, -2, axis=1)[:, -2:-1]
    own = shifted[np.arange(len(S)), labels]
    return own - alpha0 * (shifted.sum(axis=1) - own)


def weights_from_scores(d: np.ndarray, rule: str = "reference") -> np.ndarray:
    """Weights in ``[0, 1]`` from modulated scores (docs/theory.md section 6, step 5).

    ``reference``, the rule of the paper's public code: start every weight at
    1/2 and take the smallest common step ``c * d`` that sends every
    negative-score example to 0, ``c = 1 / (2 min_{d_j < 0} |d_j|)`` (the
    least negative score reaches 0 exactly, the others are clipped there);
    clip to ``[0, 1]`` and zero every weight ``<= 1/2``. Closed form: ``w_i =
    0`` if ``d_i <= 0``, else ``min(1, 1/2 + d_i / (2 min_{d_j < 0}
    |d_j|))``; with no negative score every ``d_i > 0`` gets 1. In words: an
    example is kept iff ``d_i > 0``, and almost every kept weight saturates at
    1 (only positive scores smaller than the least negative score's magnitude
    stay fractional), so the rule is close to ``sign``.
    ``sign``: ``w_i = 1[d_i > 0]``. Both are unchanged by scaling ``d`` by a
    positive factor, and both keep the same set ``{d > 0}``.

    Parameters
    ----------
    d : (n,) modulated scores.
    rule : one of :data:`RULES`.

    Returns
    -------
    w : (n,) float64.
    """
    d = np.asarray(d, dtype=np.float64)
    if rule == "sign":
        return (d > 0).astype(np.float64)
    if rule != "reference":
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    negative = d < 0
    if not negative.any():
        return (d > 0).astype(np.float64)
    least_negative = -d[negative].max()
    return np.where(d > 0, np.minimum(1.0, 0.5 + d / (2 * least_negative)), 0.0)


def alpha0_schedule(epoch: int, num_classes: int, warmup_epochs: int) -> float:
    """``1/(C-1)`` during the first ``warmup_epochs`` epochs, then 0 (docs/theory.md 6.6).

    ``1/(C-1)`` is the magnitude of the cross-entropy residual ratio at uniform
    outputs (claim C3), so early scores mimic the first meta-gradient step.
    """
    return 1.0 / (num_classes - 1) if epoch < warmup_epochs else 0.0


def sign_agreement(d: np.ndarray, a: np.ndarray) -> float:
    """Fraction of examples where ``sign(d_i) == sign(a_i)``.

    Parameters
    ----------
    d : (n,) surrogate scores.
    a : (n,) meta-gradient label-signed similarities (claim C3).
    """
    d, a = np.asarray(d), np.asarray(a)
    if d.shape != a.shape:
        raise ValueError(f"d and a must have the same shape, got {d.shape} and {a.shape}")
    return float(np.mean(np.sign(d) == np.sign(a)))


def reweight(
    labels,
    features,
    meta_labels,
    meta_features,
    *,
    num_classes: int | None = None,
    kernel: Kernel | None = None,
    alpha0: float | None = None,
    rule: str = "reference",
) -> ReweightResult:
    """Weight noisy training examples by their agreement with a clean subset.

    The surrogate reweighter of docs/theory.md section 6: centred class-mean
    similarities (:func:`class_similarities`), row shifting and label-signed
    modulation (:func:`modulated_scores`), then a weight rule
    (:func:`weights_from_scores`). No model is trained.

    Parameters
    ----------
    labels : (n,) int observed (possibly noisy) labels in ``[0, C)``.
    features : (n, D) training features (inputs or a network's embeddings).
    meta_labels : (m,) int clean labels; every class needs an example.
    meta_features : (m, D) clean features.
    num_classes : C; default ``max(labels, meta_labels) + 1``.
    kernel : None (linear) or a callable ``kernel(a, b) -> (len(a), len(b))``.
    alpha0 : modulation ``>= 0``; default ``1/(C-1)``, see :func:`alpha0_schedule`.
    rule : ``"reference"`` (the paper's code: kept weights mostly 1, see :func:`weights_from_scores`) or
        ``"sign"`` (0/1). Under both an example is kept (``w > 0``) iff ``d > 0``: with ``alpha0 = 1/(C-1)``
        iff its centred feature projects positively on its label's centred clean class mean, with
        ``alpha0 = 0`` iff its label's centred clean class mean has the largest inner product with it.

    Returns
    -------
    ReweightResult

    Raises
    ------
    ValueError
        Naming the argument: wrong shapes, unequal feature counts, non-integer
        or out-of-range labels, a class absent from the clean subset,
        non-finite or empty features, a bad ``alpha0`` or ``rule``.

    Examples
    --------
    >>> import numpy as np
    >>> from dynamics.surrogate import reweight
    >>> meta_features, meta_labels = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0, 1])
    >>> features, labels = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.5, 0.0]]), np.array([0, 0, 1, 1])
    >>> result = reweight(labels, features, meta_labels, meta_features)
    >>> result.score
    array([ 4.,  2.,  2., -3.])
    >>> result.weights.round(3)
    array([1.   , 0.833, 0.833, 0.   ])
    >>> np.flatnonzero(result.is_label_issue)
    array([3])
    """
    Phi, Psi, y_meta, y, C = _validated(features, meta_features, meta_labels, num_classes, labels)
    alpha0 = 1.0 / (C - 1) if alpha0 is None else float(alpha0)
    if not (np.isfinite(alpha0) and alpha0 >= 0):
        raise ValueError(f"alpha0 must be a finite number >= 0, got {alpha0}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    S = _class_similarities(Phi, Psi, y_meta, C, kernel, _BLOCK_ROWS)
    d = modulated_scores(S, y, alpha0)
    w = weights_from_scores(d, rule)
    return ReweightResult(w, w == 0, d, S, alpha0, rule, C)
