"""Spectral tools for kernel matrices (docs/theory.md claim C9).

The eigendecomposition is the expensive part; ``eigh_kernel`` does it once
and the share functions take its eigenvectors (docs/architecture.md, convention 2).
"""

from __future__ import annotations

import numpy as np


def eigh_kernel(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric kernel matrix, largest eigenvalue first.

    Parameters
    ----------
    K : (n, n) symmetric, e.g. ``K_XX``.

    Returns
    -------
    eigenvalues : (n,) float64, descending.
    eigenvectors : (n, n) float64, column ``i`` belongs to ``eigenvalues[i]``.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got shape {K.shape}")
    # Blocked kernel evaluation can leave round-off asymmetry; eigh would
    # silently read only one triangle, so symmetrise explicitly.
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (K + K.T))
    return eigenvalues[::-1].copy(), eigenvectors[:, ::-1].copy()


def _as_targets(eigenvectors: np.ndarray, Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.ndim != 2 or Y.shape[0] != eigenvectors.shape[0]:
        raise ValueError(f"Y must have {eigenvectors.shape[0]} rows, got shape {Y.shape}")
    return Y


def energy_profile(eigenvectors: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Cumulative share of ``||Y||_F^2`` in the top-k eigen-directions, k = 1..r.

    ``profile[k-1] = ||U_k^T Y||_F^2 / ||Y||_F^2`` with ``U_k`` the first k
    columns of ``eigenvectors``. Claim C9 compares the profile of ``Y_true``
    with that of ``Y_noisy - Y_true``.

    Parameters
    ----------
    eigenvectors : (n, r) orthonormal columns, descending eigenvalue order
        (from ``eigh_kernel``; r = n gives a profile ending at 1).
    Y : (n, C) or (n,) targets.

    Returns
    -------
    (r,) float64, non-decreasing in [0, 1]; all NaN when ``Y`` is zero
    (no energy to share, e.g. no noisy label).
    """
    Y = _as_targets(eigenvectors, Y)
    energy_per_direction = np.sum((eigenvectors.T @ Y) ** 2, axis=1)
    total = np.sum(Y * Y)
    if total == 0.0:
        return np.full(eigenvectors.shape[1], np.nan)
    return np.cumsum(energy_per_direction) / total


def top_energy_share(eigenvectors: np.ndarray, Y: np.ndarray, k: int) -> float:
    """Share of ``||Y||_F^2`` in the span of the top-``k`` eigenvectors.

    Parameters
    ----------
    eigenvectors : (n, r) orthonormal columns, descending eigenvalue order, r >= k.
    Y : (n, C) or (n,) targets.
    k : number of leading directions, 0 <= k <= r.

    Returns
    -------
    float in [0, 1]; NaN when ``Y`` is zero.
    """
    if not 0 <= k <= eigenvectors.shape[1]:
        raise ValueError(f"k must be in [0, {eigenvectors.shape[1]}], got {k}")
    Y = _as_targets(eigenvectors, Y)
    total = np.sum(Y * Y)
    if total == 0.0:
        return float("nan")
    return float(np.sum((eigenvectors[:, :k].T @ Y) ** 2) / total)


def class_mean_kernel(K: np.ndarray, y_row: np.ndarray, y_col: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean kernel value between classes.

    ``M[a, b] = mean of K[i, j] over i with y_row[i] = a and j with y_col[j] = b``.

    Parameters
    ----------
    K : (n1, n2) kernel block, e.g. ``K_VX``.
    y_row : (n1,) integer classes in ``[0, C)`` of the rows.
    y_col : (n2,) integer classes in ``[0, C)`` of the columns.
    num_classes : ``C``.

    Returns
    -------
    (C, C) float64; NaN where a class has no row or no column.
    """
    K = np.asarray(K, dtype=np.float64)
    y_row, y_col = np.asarray(y_row), np.asarray(y_col)
    if K.shape != (y_row.shape[0], y_col.shape[0]):
        raise ValueError(f"K of shape {K.shape} does not match labels of lengths {y_row.shape[0]} and {y_col.shape[0]}")
    onehot_row = np.eye(num_classes)[y_row]  # (n1, C)
    onehot_col = np.eye(num_classes)[y_col]  # (n2, C)
    sums = onehot_row.T @ K @ onehot_col
    counts = np.outer(onehot_row.sum(axis=0), onehot_col.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


__all__ = ["eigh_kernel", "energy_profile", "top_energy_share", "class_mean_kernel"]
