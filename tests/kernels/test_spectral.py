"""Spectral tools (docs/theory.md claim C9)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels.spectral import class_mean_kernel, eigh_kernel, energy_profile, top_energy_share
from tolerance import assert_close

sizes = st.integers(2, 20)
seeds = st.integers(0, 2**16)


def _kernel_with_gapped_spectrum(rng, n):
    """PSD ``(n, n)`` matrix with eigenvalues 2^0, 2^-1, ..., so every top-k span is well defined."""
    basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return basis @ np.diag(2.0 ** -np.arange(n)) @ basis.T


@given(n=sizes, seed=seeds)
def test_eigh_kernel_descending_and_reconstructs(n, seed):
    K = _kernel_with_gapped_spectrum(np.random.default_rng(seed), n)
    eigenvalues, eigenvectors = eigh_kernel(K)
    assert eigenvalues.shape == (n,) and eigenvectors.shape == (n, n)
    assert np.all(np.diff(eigenvalues) <= 0)
    assert_close(eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T, K)
    assert_close(eigenvectors.T @ eigenvectors, np.eye(n))


@given(n=sizes, num_classes=st.integers(1, 5), seed=seeds, data=st.data())
def test_energy_shares_match_svd_projection(n, num_classes, seed, data):
    rng = np.random.default_rng(seed)
    K = _kernel_with_gapped_spectrum(rng, n)
    Y = rng.normal(size=(n, num_classes))
    _, eigenvectors = eigh_kernel(K)
    profile = energy_profile(eigenvectors, Y)
    assert profile.shape == (n,)
    assert np.all(np.diff(profile) >= -1e-12)
    assert np.all((profile >= 0) & (profile <= 1 + 1e-12))
    assert_close(profile[-1], 1.0)

    k = data.draw(st.integers(0, n), label="k")
    left_singular, _, _ = np.linalg.svd(K)  # for PSD K: the eigenvectors, descending
    projection = left_singular[:, :k] @ left_singular[:, :k].T
    expected = np.linalg.norm(projection @ Y) ** 2 / np.linalg.norm(Y) ** 2
    share = top_energy_share(eigenvectors, Y, k)
    assert_close(share, expected)
    if k > 0:
        assert_close(profile[k - 1], share)


@given(n=sizes, seed=seeds)
def test_energy_of_an_eigenvector_and_of_zero(n, seed):
    _, eigenvectors = eigh_kernel(_kernel_with_gapped_spectrum(np.random.default_rng(seed), n))
    # A 1-D target along the top eigenvector has all its energy at k = 1.
    assert_close(top_energy_share(eigenvectors, 3.0 * eigenvectors[:, 0], 1), 1.0)
    assert np.isnan(top_energy_share(eigenvectors, np.zeros((n, 2)), 1))
    assert np.all(np.isnan(energy_profile(eigenvectors, np.zeros(n))))
    with pytest.raises(ValueError):
        top_energy_share(eigenvectors, np.ones(n), n + 1)


@given(n1=st.integers(1, 15), n2=st.integers(1, 15), num_classes=st.integers(1, 4), seed=seeds)
def test_class_mean_kernel_equals_loop(n1, n2, num_classes, seed):
    rng = np.random.default_rng(seed)
    K = rng.normal(size=(n1, n2))
    y_row, y_col = rng.integers(0, num_classes, n1), rng.integers(0, num_classes, n2)
    expected = np.full((num_classes, num_classes), np.nan)
    for a in range(num_classes):
        for b in range(num_classes):
            values = [K[i, j] for i in range(n1) for j in range(n2) if y_row[i] == a and y_col[j] == b]
            if values:
                expected[a, b] = np.mean(values)
    assert_close(class_mean_kernel(K, y_row, y_col, num_classes), expected)
