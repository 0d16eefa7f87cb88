"""Kernel operators: explicit features against dense blocks and against parameter space (docs/theory.md section 8)."""

import dataclasses
import pickle

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_problems import feature_problem
from tolerance import assert_close

import dynamics.simulator
from dynamics.operators import FeatureKernel, KernelBlocks
from dynamics.simulator import MetaConfig, default_eta, init, simulate, step


problems = st.builds(
    lambda seed, n, m_extra, p, C, D: feature_problem(np.random.default_rng(seed), n, C + m_extra, p, C, D),
    seed=st.integers(0, 2**16), n=st.integers(4, 24), m_extra=st.integers(0, 6), p=st.integers(1, 8),
    C=st.integers(2, 4), D=st.integers(1, 40))


def _features(problem):
    return FeatureKernel(problem.X, problem.X_meta, problem.X_test)


def _blocks(features):
    """The dense blocks of ``k = phi . phi``, formed here from the features (``K = Phi Phi^T`` and so on)."""
    Phi, Psi, Phi_test = features.Phi, features.Psi, features.Phi_test
    return KernelBlocks(Phi @ Phi.T, Psi @ Phi.T, Psi @ Psi.T, Phi_test @ Phi.T, Phi_test @ Psi.T)


def _config(problem, data, **knobs):
    """Knobs drawn for ``problem``: loss, variant, gamma in {0, 1}, full batches or mini-batches."""
    n, m, _ = problem.sizes
    mini = data.draw(st.booleans(), label="mini-batches")
    return MetaConfig(loss=data.draw(st.sampled_from(["mse", "ce"]), label="loss"),
                      variant=data.draw(st.sampled_from(["meta", "l2rw", "fixed"]), label="variant"),
                      gamma=data.draw(st.sampled_from([0.0, 1.0]), label="gamma"),
                      batch_size=data.draw(st.integers(1, n), label="batch") if mini else None,
                      meta_batch_size=data.draw(st.integers(1, m), label="meta batch") if mini else None,
                      perturb_draws=0, **knobs)


# Every drawn configuration compiles the simulator's loop anew (about a second per route): few examples.
@settings(max_examples=6)
@given(problem=problems, data=st.data(), beta=st.floats(0.5, 20.0), seed=st.integers(0, 100))
def test_feature_route_equals_dense_route(problem, data, beta, seed):
    """Section 8: the feature route is the kernel route with ``K = Phi Phi^T``, every recorded series."""
    features = _features(problem)
    blocks = _blocks(features)
    eta = 0.5 / blocks.lambda_max(1.0)  # one step size for both: the default's eigen-solves are compared below
    config = _config(problem, data, eta=eta, beta=beta, steps=12)
    dense, feature = simulate(problem, blocks, config, seed=seed), simulate(problem, features, config, seed=seed)
    for name in ("w", "score", "residual_norm", "clean_loss", "coupling_norm", "train_loss_clean",
                 "train_loss_noisy", "test_loss", "test_accuracy", "outputs", "meta_outputs", "test_outputs",
                 "label_similarity", "k_meta_norm"):
        assert_close(getattr(feature, name), getattr(dense, name), err_msg=name)
    assert feature.config.keys() == dense.config.keys()
    for name, value in dense.config.items():
        if name in ("lambda_joint", "eta_stable_below"):  # Lanczos on K against an eigen-solve of (D, D)
            assert_close(feature.config[name], value, err_msg=name)
        else:
            assert feature.config[name] == value, name


@settings(max_examples=30)
@given(problem=problems, gamma=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_feature_spectra_and_meta_columns_come_from_features(problem, gamma, seed):
    """Eigenvalues from ``(D, D)`` Gram matrices, ``K_VX^T R`` and the column norms of ``K_VX`` from features,
    against the dense blocks (numpy ``eigvalsh`` of the explicit joint kernel as the oracle)."""
    n, m, _ = problem.sizes
    features = _features(problem)
    blocks = _blocks(features)
    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]])
    weights = np.sqrt(np.concatenate([np.ones(n), np.full(m, gamma)]))
    joint = np.linalg.eigvalsh(weights[:, None] * K * weights[None, :])[-1]
    scale = np.linalg.eigvalsh(K)[-1]  # eigenvalues are accurate relative to the largest one
    assert_close(features.lambda_max(gamma), joint, atol=1e-12 * scale)
    assert_close(blocks.lambda_max(gamma), joint, atol=1e-12 * scale)
    assert_close(features.lambda_max_train(), np.linalg.eigvalsh(blocks.K_XX)[-1], atol=1e-12 * scale)
    assert_close(default_eta(features, gamma), default_eta(blocks, gamma))
    R_meta = np.random.default_rng(seed).standard_normal((m, problem.num_classes))
    assert_close(features.transpose_meta(R_meta), blocks.K_VX.T @ R_meta)
    # sqrt(phi^T (Psi^T Psi) phi) loses relative accuracy where ||Psi phi|| << ||Psi|| ||phi||: absolute tolerance.
    norms = np.linalg.norm(features.Psi, 2) * np.linalg.norm(features.Phi, axis=1)
    assert_close(features.k_meta_norm(), np.linalg.norm(blocks.K_VX, axis=0), atol=1e-7 * norms.max())
    assert_close(features.k_meta_norm(rows_per_block=3), features.k_meta_norm())


def _residual(loss, F, Y):
    if loss == "mse":
        return F - Y
    P = np.exp(F - F.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True) - Y


def _losses(loss, F, Y):
    if loss == "mse":
        return 0.5 * np.sum((F - Y) ** 2, axis=1)
    shifted = F - F.max(axis=1, keepdims=True)
    return -np.sum(Y * (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))), axis=1)


def _parameter_space_run(problem, config, seed):
    """Docs/theory.md section 8 in parameter space, in numpy: ``F = Phi Theta``, ``Theta (D, C)`` moved by gradient
    steps. Batches follow the simulator's documented draw (``SimState.key``): training batch of step ``t`` from
    ``fold_in(key, 2 t)``, clean batch from ``fold_in(key, 2 t + 1)``, ``key`` the first half of ``split(PRNGKey(
    seed))``. Returns weights ``(T + 1, n)``, clean losses ``(T + 1,)`` and final test outputs ``(p, C)``."""
    Phi, Psi, Phi_test = problem.X, problem.X_meta, problem.X_test
    n, m, _ = problem.sizes
    C = problem.num_classes
    Y, Y_meta = np.eye(C)[problem.y_noisy], np.eye(C)[problem.y_meta]
    eta, gamma, loss = config.eta, config.gamma, config.loss
    key = jax.random.split(jax.random.PRNGKey(seed))[0]

    def draw(index, size, total):
        if size is None:
            return np.arange(total)
        return np.asarray(jax.random.choice(jax.random.fold_in(key, index), total, (size,), replace=False))

    Theta = np.zeros((Phi.shape[1], C))
    w = np.full(n, config.w0)
    weights, clean_losses = [w.copy()], [_losses(loss, Psi @ Theta, Y_meta).mean()]
    for t in range(config.steps):
        B, M = draw(2 * t, config.batch_size, n), draw(2 * t + 1, config.meta_batch_size, m)
        R = _residual(loss, Phi[B] @ Theta, Y[B])
        R_meta = _residual(loss, Psi[M] @ Theta, Y_meta[M])
        if config.variant != "fixed":
            w_lookahead = np.zeros(len(B)) if config.variant == "l2rw" else w[B]
            Theta_hat = Theta - eta * (Phi[B].T @ (w_lookahead[:, None] * R) + gamma * Psi[M].T @ R_meta)
            R_meta_hat = _residual(loss, Psi[M] @ Theta_hat, Y_meta[M])
            score = np.sum(R * (Phi[B] @ (Psi[M].T @ R_meta_hat)), axis=1)
            if config.variant == "meta":
                w[B] = np.clip(w[B] + config.beta / len(M) * score, 0.0, 1.0)
            else:
                positive = np.maximum(score, 0.0)
                w[B] = positive / positive.sum() if positive.sum() > 0 else 0.0
        Theta = Theta - eta * (Phi[B].T @ (w[B][:, None] * R) + gamma * Psi[M].T @ R_meta)
        weights.append(w.copy())
        clean_losses.append(_losses(loss, Psi @ Theta, Y_meta).mean())
    return np.array(weights), np.array(clean_losses), Phi_test @ Theta


@settings(max_examples=6)
@given(problem=problems, data=st.data(), beta=st.floats(0.5, 20.0), w0=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_feature_route_equals_numpy_parameter_space(problem, data, beta, w0, seed):
    """Section 8 against an independent numpy implementation in parameter space, whole runs."""
    features = _features(problem)
    config = _config(problem, data, eta=0.5 / features.lambda_max(1.0), beta=beta, w0=w0, steps=8)
    run = simulate(problem, features, config, seed=seed)
    weights, clean_losses, test_outputs = _parameter_space_run(problem, config, seed)
    assert_close(run.w, weights)
    assert_close(run.clean_loss, clean_losses)
    assert_close(run.test_outputs, test_outputs)


def _shapes(jaxpr):
    """Shapes of every value a jaxpr (and the jaxprs nested in it: loops, conditionals, jits) computes."""
    for eqn in jaxpr.eqns:
        yield from (tuple(var.aval.shape) for var in eqn.outvars if hasattr(var.aval, "shape"))
        for param in eqn.params.values():
            for item in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(item, "jaxpr", item)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _shapes(inner)


def test_feature_route_never_forms_a_kernel_matrix():
    """Memory O((n + m + p) D): no value of a step or of a recorded segment has two of the dims n, m, p."""
    n, m, p, C, D = 37, 11, 7, 3, 5
    problem = feature_problem(np.random.default_rng(0), n, m, p, C, D)
    features = _features(problem)
    sizes = (n, m, p, n + m)
    forbidden = {(a, b) for a in sizes for b in sizes}
    for config in (MetaConfig(eta=0.1), MetaConfig(eta=0.1, loss="ce", batch_size=9, meta_batch_size=4)):
        state = init(problem, features, config)
        step_jaxpr = jax.make_jaxpr(lambda s: step(s, problem, features, config))(state).jaxpr
        rule = dynamics.simulator._Rule.of(config, config.eta)
        data = dynamics.simulator._run_data(problem)
        noise = np.ones((4, config.perturb_draws, n + m, C), np.float32)
        segment_jaxpr = jax.make_jaxpr(lambda s: dynamics.simulator._segment(rule, features, data, s, jnp.ones(3),
                                                                            jnp.ones(3, int), 2, noise))(state).jaxpr
        shapes = list(_shapes(step_jaxpr)) + list(_shapes(segment_jaxpr))
        assert len(shapes) > 50
        assert not [shape for shape in shapes if any(shape[i:i + 2] in forbidden for i in range(len(shape) - 1))]


def test_dense_blocks_store_the_stacked_columns_once():
    rng = np.random.default_rng(0)
    n, m, p = 6, 3, 2
    K_XX, K_VX, K_VV, K_TX, K_TV = (rng.standard_normal(shape) for shape in ((n, n), (m, n), (m, m), (p, n), (p, m)))
    blocks = KernelBlocks(K_XX, K_VX, K_VV, K_TX, K_TV)
    for name, block in zip(("K_XX", "K_VX", "K_VV", "K_TX", "K_TV"), (K_XX, K_VX, K_VV, K_TX, K_TV)):
        np.testing.assert_array_equal(getattr(blocks, name), block)
    assert np.shares_memory(blocks.K_XX, blocks.K_X) and np.shares_memory(blocks.K_VX, blocks.K_X)
    assert np.shares_memory(blocks.K_VV, blocks.K_V)
    np.testing.assert_array_equal(blocks.K_V[:n], K_VX.T)
    assert blocks.sizes == (n, m, p)
    for copy in (pickle.loads(pickle.dumps(blocks)), jax.tree.map(np.asarray, jax.device_put(blocks))):
        assert isinstance(copy, KernelBlocks)
        for name, array in blocks.arrays().items():
            np.testing.assert_array_equal(getattr(copy, name), array)
    with pytest.raises(dataclasses.FrozenInstanceError):
        blocks.K_X = K_XX
    with pytest.raises(ValueError, match="read-only"):
        blocks.K_VX[0, 0] = 1.0
    with pytest.raises(ValueError, match="K_VX has shape"):
        KernelBlocks(K_XX, K_VX.T, K_VV, K_TX, K_TV)


def test_feature_kernel_checks_its_widths_and_round_trips():
    rng = np.random.default_rng(0)
    features = FeatureKernel(rng.standard_normal((5, 3)), rng.standard_normal((2, 3)), rng.standard_normal((4, 3)))
    assert features.sizes == (5, 2, 4) and features.D == 3
    for copy in (pickle.loads(pickle.dumps(features)), jax.tree.map(np.asarray, jax.device_put(features))):
        np.testing.assert_array_equal(copy.Phi, features.Phi)
        assert copy.lambda_max(0.5) == features.lambda_max(0.5)
    with pytest.raises(ValueError, match="same number of features"):
        FeatureKernel(features.Phi, features.Psi[:, :2], features.Phi_test)
    with pytest.raises(ValueError, match="2-d array"):
        FeatureKernel(features.Phi[0], features.Psi, features.Phi_test)


def test_float32_blocks_multiply_in_float32_and_return_float64():
    rng = np.random.default_rng(5)
    n, m, p, C = 30, 6, 4, 3
    A = rng.standard_normal((n + m + p, 8))
    K = A @ A.T
    blocks64 = KernelBlocks(K[:n, :n], K[n:n + m, :n], K[n:n + m, n:n + m], K[n + m:, :n], K[n + m:, n:n + m])
    blocks32 = KernelBlocks(*(block.astype(np.float32) for block in blocks64.arrays().values()))
    mixed = KernelBlocks(*(block.astype(np.float32) if name != "K_TV" else block
                           for name, block in blocks64.arrays().items()))
    assert blocks32.dtype == np.float32 and mixed.dtype == np.float64  # all float32, or float64
    G, R = rng.standard_normal((n, C)), rng.standard_normal((m, C))
    exact = blocks64.select(None, None).apply(jnp.asarray(G), jnp.asarray(R), 0.7)
    rounded = blocks32.select(None, None).apply(jnp.asarray(G), jnp.asarray(R), 0.7)
    single = K[:n + m, :n].astype(np.float32) @ G.astype(np.float32) + np.float32(0.7) * (
        K[:n + m, n:n + m].astype(np.float32) @ R.astype(np.float32))  # an independent float32 product
    assert rounded.dtype == jnp.float64
    assert_close(np.asarray(rounded), single.astype(np.float64), rtol=1e-5, atol=1e-4)
    assert 0 < np.abs(np.asarray(rounded) - np.asarray(exact)).max() < 1e-4 * np.abs(np.asarray(exact)).max()
    assert blocks32.lambda_max_train() == pytest.approx(blocks64.lambda_max_train(), rel=1e-6)
    assert blocks32.lambda_max(0.5) == pytest.approx(blocks64.lambda_max(0.5), rel=1e-6)
