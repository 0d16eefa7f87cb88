"""Analytic NTK / NNGP of kernels.infinite (docs/theory.md section 1)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.infinite import KernelSpec, kernel
from tolerance import assert_close

# neural-tangents compiles each distinct spec once (test_matches_neural_tangents), so the draws stay few.
specs = st.builds(
    KernelSpec,
    depth=st.integers(0, 3),
    activation=st.sampled_from(["relu", "erf"]),
    W_std=st.sampled_from([1.0, math.sqrt(2.0), 1.7]),
    b_std=st.sampled_from([0.0, 0.1, 0.5]),
    kind=st.sampled_from(["ntk", "nngp"]),
)


def _inputs(seed, n, d=3):
    return np.random.default_rng(seed).normal(size=(n, d))


def _oracle(spec, x1, x2):
    """Layer recursion written independently of neural-tangents.

    ReLU: arc-cosine kernel of degree 1 (and degree 0 for the derivative);
    erf: the arcsine kernel and its derivative, for u, v ~ N(0, [[q1, s], [s, q2]]).
    """
    d = x1.shape[1]
    W2, b2 = spec.W_std ** 2, spec.b_std ** 2
    q1 = W2 * np.sum(x1 * x1, axis=1)[:, None] / d + b2
    q2 = W2 * np.sum(x2 * x2, axis=1)[None, :] / d + b2
    s = W2 * (x1 @ x2.T) / d + b2
    ntk = s.copy()
    for _ in range(spec.depth):
        if spec.activation == "relu":
            cos = np.clip(s / np.sqrt(q1 * q2), -1.0, 1.0)
            theta = np.arccos(cos)
            e_act = np.sqrt(q1 * q2) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
            e_deriv = (np.pi - theta) / (2 * np.pi)
            q1, q2 = q1 / 2, q2 / 2
        else:
            norm = (1 + 2 * q1) * (1 + 2 * q2)
            e_act = 2 / np.pi * np.arcsin(2 * s / np.sqrt(norm))
            e_deriv = 4 / np.pi / np.sqrt(norm - 4 * s * s)
            q1 = 2 / np.pi * np.arcsin(2 * q1 / (1 + 2 * q1))
            q2 = 2 / np.pi * np.arcsin(2 * q2 / (1 + 2 * q2))
        s = W2 * e_act + b2
        q1, q2 = W2 * q1 + b2, W2 * q2 + b2
        ntk = s + W2 * e_deriv * ntk
    return ntk if spec.kind == "ntk" else s


@settings(max_examples=10)
@given(spec=specs, n=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_symmetric_and_psd(spec, n, seed):
    K = kernel(spec, _inputs(seed, n))
    assert_close(K, K.T)
    eigenvalues = np.linalg.eigvalsh(K)
    assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


@settings(max_examples=6)
@given(spec=specs, n=st.integers(2, 12), block_rows=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_blocks_equal_one_evaluation(spec, n, block_rows, seed):
    x1, x2 = _inputs(seed, n), _inputs(seed + 1, 5)
    assert_close(kernel(spec, x1, x2, block_rows=block_rows), kernel(spec, x1, x2, block_rows=n))
    assert_close(kernel(spec, x1, block_rows=block_rows), kernel(spec, x1, x1))
    assert kernel(spec, x1[:0], x2, block_rows=block_rows).shape == (0, 5)


@settings(max_examples=12)
@given(spec=specs, seed=st.integers(0, 2**16))
def test_matches_independent_recursion(spec, seed):
    x1, x2 = _inputs(seed, 6), _inputs(seed + 1, 4)
    assert_close(kernel(spec, x1, x2), _oracle(spec, x1, x2))
    # The diagonal sits at arccos(1), where clipping conventions differ by
    # O(sqrt(eps)) in the angle: the ReLU derivative term is only that accurate
    # (measured relative gap up to 3e-9 at depth 1-3; erf stays at 1e-15).
    assert_close(kernel(spec, x1), _oracle(spec, x1, x1), rtol=1e-7)


@settings(max_examples=8, deadline=None)
@given(spec=specs, seed=st.integers(0, 2**16))
def test_matches_neural_tangents(spec, seed):
    """The numpy recursion against neural-tangents' own ``stax`` kernel function of the same layers."""
    from kernels.infinite import stax_network

    x1, x2 = _inputs(seed, 7), _inputs(seed + 1, 5)
    kernel_fn = stax_network(spec)[2]
    assert_close(kernel(spec, x1, x2), np.asarray(kernel_fn(x1, x2, get=spec.kind)), rtol=1e-12)
    # On the diagonal, as against the recursion above: the ReLU angle there is O(sqrt(eps)).
    assert_close(kernel(spec, x1), np.asarray(kernel_fn(x1, x1, get=spec.kind)), rtol=1e-7)


def test_depth_one_relu_closed_form():
    """Depth-1 ReLU in one formula: ``NNGP = W^2 sqrt(q q') J1(theta) / (2 pi) + b^2``."""
    spec = KernelSpec(depth=1, activation="relu", W_std=1.3, b_std=0.4, kind="ntk")
    x = _inputs(7, 5, d=4)
    q = 1.3 ** 2 * np.sum(x * x, axis=1) / 4 + 0.4 ** 2
    sigma0 = 1.3 ** 2 * (x @ x.T) / 4 + 0.4 ** 2
    theta = np.arccos(np.clip(sigma0 / np.sqrt(np.outer(q, q)), -1, 1))
    arc_cosine = (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    nngp = 1.3 ** 2 * np.sqrt(np.outer(q, q)) * arc_cosine + 0.4 ** 2
    ntk = nngp + 1.3 ** 2 * (np.pi - theta) / (2 * np.pi) * sigma0
    off_diagonal = ~np.eye(5, dtype=bool)
    assert_close(kernel(spec, x)[off_diagonal], ntk[off_diagonal])
    assert_close(kernel(KernelSpec(depth=1, W_std=1.3, b_std=0.4, kind="nngp"), x), nngp)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_memory_beyond_the_output_is_bounded_by_the_block(activation):
    """Intermediates hold a few arrays of one block's entries, whatever the kernel's size."""
    import tracemalloc

    spec = KernelSpec(depth=3, activation=activation)
    x1, x2 = _inputs(0, 400), _inputs(1, 3000)
    rows = 20
    tracemalloc.start()
    try:
        K = kernel(spec, x1, x2, block_rows=rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    block_bytes = rows * len(x2) * 8
    assert peak - K.nbytes < 12 * block_bytes, (peak - K.nbytes) / block_bytes
