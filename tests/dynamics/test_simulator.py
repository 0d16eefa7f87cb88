"""The exact simulator against independent oracles (docs/theory.md section 2, claims C1-C4, C10), and its
state-and-step interface."""

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_problems import feature_problem
from tolerance import assert_close

import dynamics.operators as operators
import dynamics.simulator
from dynamics.simulator import (CACHE_AFFECTED_JAX, DivergenceError, FeatureKernel, KernelBlocks, MetaConfig, init,
                                meta_score, outputs_at, predict_test, simulate, simulate_many, step)
from phases.claims import c4_bound


def _linear_blocks(problem):
    return KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)


# Every new shape compiles the simulator's loop anew (about a second): whole-run properties draw fewer examples.
whole_runs = settings(max_examples=4)

problems = st.builds(
    lambda seed, n, m_extra, p, C, D: feature_problem(np.random.default_rng(seed), n, C + m_extra, p, C, D),
    seed=st.integers(0, 2**16), n=st.integers(4, 24), m_extra=st.integers(0, 6), p=st.integers(1, 8),
    C=st.integers(2, 4), D=st.integers(3, 40))


def _loss(loss, F, Y):
    if loss == "mse":
        return 0.5 * jnp.sum((F - Y) ** 2, axis=-1)
    return -jnp.sum(Y * jax.nn.log_softmax(F, axis=-1), axis=-1)


def _parameter_space_run(problem, loss, eta, beta, gamma, w0, steps):
    """Docs/theory.md section 2 steps 1-4, literally, for ``f(x) = x @ theta``, with autodiff through the look-ahead."""
    C = problem.num_classes
    X, V, T = (jnp.asarray(a) for a in (problem.X, problem.X_meta, problem.X_test))
    Y, Y_meta = jnp.eye(C)[problem.y_noisy], jnp.eye(C)[problem.y_meta]
    m = V.shape[0]

    def train_objective(theta, w):
        return jnp.sum(w * _loss(loss, X @ theta, Y)) + gamma * jnp.sum(_loss(loss, V @ theta, Y_meta))

    def meta_objective(w, theta):
        theta_hat = theta - eta * jax.grad(train_objective)(theta, w)
        return jnp.sum(_loss(loss, V @ theta_hat, Y_meta)) / m

    theta = jnp.zeros((X.shape[1], C))
    w = jnp.full(X.shape[0], w0)
    ws, meta_losses = [], []
    for _ in range(steps):
        ws.append(w)
        meta_losses.append(jnp.mean(_loss(loss, V @ theta, Y_meta)))
        w = jnp.clip(w - beta / eta * jax.grad(meta_objective)(w, theta), 0.0, 1.0)
        theta = theta - eta * jax.grad(train_objective)(theta, w)
    ws.append(w)
    meta_losses.append(jnp.mean(_loss(loss, V @ theta, Y_meta)))
    return np.array(ws), np.array(meta_losses), np.asarray(T @ theta)


@whole_runs
@given(problem=problems, loss=st.sampled_from(["mse", "ce"]), gamma=st.sampled_from([0.0, 0.7]),
       beta=st.floats(0.1, 20.0))
def test_c1_trajectory_equals_parameter_space_autodiff(problem, loss, gamma, beta):
    """C1, whole runs: the function-space simulator equals bi-level autodiff in parameter space."""
    blocks = _linear_blocks(problem)
    eta = 0.5 / blocks.lambda_max(gamma)
    steps = 6
    ws, meta_losses, test_outputs = _parameter_space_run(problem, loss, eta, beta, gamma, 0.5, steps)
    run = simulate(problem, blocks, MetaConfig(loss=loss, eta=eta, beta=beta, gamma=gamma, steps=steps, perturb_draws=0))
    assert_close(run.w, ws, rtol=1e-10, atol=1e-12)
    assert_close(run.clean_loss, meta_losses, rtol=1e-10, atol=1e-14)
    assert_close(run.test_outputs, test_outputs, rtol=1e-10, atol=1e-12)


@settings(max_examples=6)  # each example compiles its gradient anew (about a second)
@given(problem=problems, loss=st.sampled_from(["mse", "ce"]), gamma=st.sampled_from([0.0, 1.3]),
       seed=st.integers(0, 2**16))
def test_c1_meta_gradient_equals_autodiff_at_any_state(problem, loss, gamma, seed):
    """C1, one step from a random state: ``dL_meta/dw = -(eta/m) * score`` by autodiff and by finite differences."""
    rng = np.random.default_rng(seed)
    n, m, _ = problem.sizes
    C = problem.num_classes
    X, V = jnp.asarray(problem.X), jnp.asarray(problem.X_meta)
    Y, Y_meta = jnp.eye(C)[problem.y_noisy], jnp.eye(C)[problem.y_meta]
    theta, w, eta = jnp.asarray(rng.standard_normal((X.shape[1], C))), jnp.asarray(rng.random(n)), 0.3

    def meta_objective(w):
        train = lambda th: jnp.sum(w * _loss(loss, X @ th, Y)) + gamma * jnp.sum(_loss(loss, V @ th, Y_meta))
        return jnp.mean(_loss(loss, V @ (theta - eta * jax.grad(train)(theta)), Y_meta))

    blocks = _linear_blocks(problem)
    F, F_meta = X @ theta, V @ theta
    residual = (lambda F, Y: F - Y) if loss == "mse" else (lambda F, Y: jax.nn.softmax(F, axis=-1) - Y)
    score, _ = meta_score(loss, eta, gamma, w, residual(F, Y), residual(F_meta, Y_meta), F_meta, Y_meta,
                          blocks.K_VX, blocks.K_VV)
    assert_close(jax.grad(meta_objective)(w), -(eta / m) * score, rtol=1e-8, atol=1e-13)
    step = 1e-6
    basis = np.eye(n)[rng.integers(n)]
    central = (meta_objective(w + step * basis) - meta_objective(w - step * basis)) / (2 * step)
    # Central differences carry O(step^2) truncation and O(eps/step) rounding: about 1e-9 here.
    assert_close(central, -(eta / m) * score @ basis, rtol=1e-6, atol=1e-9)


@whole_runs
@given(problem=problems, variant=st.sampled_from(["meta", "l2rw", "fixed"]), loss=st.sampled_from(["mse", "ce"]),
       batch=st.integers(1, 24), meta_batch=st.integers(1, 6), seed=st.integers(0, 100))
def test_c2_weights_stay_in_the_box(problem, variant, loss, batch, meta_batch, seed):
    n, m, _ = problem.sizes
    config = MetaConfig(loss=loss, variant=variant, beta=50.0, steps=15, batch_size=min(batch, n),
                        meta_batch_size=min(meta_batch, m), perturb_draws=0)
    run = simulate(problem, _linear_blocks(problem), config, seed=seed)
    assert run.w.min() >= 0.0 and run.w.max() <= 1.0
    if variant == "l2rw":
        # Each step's batch weights sum to 1 (or are all 0 when no score is positive); the other weights keep their
        # values. The batches are redrawn as the simulator documents (SimState.key).
        key = jax.random.split(jax.random.PRNGKey(seed))[0]
        for t in range(config.steps):
            batch = np.asarray(jax.random.choice(jax.random.fold_in(key, 2 * t), n, (config.batch_size,),
                                                 replace=False))
            others = np.setdiff1d(np.arange(n), batch)
            batch_weights = run.w[t + 1][batch]
            assert np.all(batch_weights == 0.0) or batch_weights.sum() == pytest.approx(1.0, rel=1e-12)
            np.testing.assert_array_equal(run.w[t + 1][others], run.w[t][others])


@whole_runs
@given(problem=problems)
def test_c3_first_step_tends_to_label_signed_similarity(problem):
    """C3: with zero outputs and MSE the first score tends to ``a`` linearly in eta."""
    blocks = _linear_blocks(problem)
    Y_meta = np.eye(problem.num_classes)[problem.y_meta]
    a = np.array([sum(blocks.K_VX[j, i] * (problem.y_noisy[i] == problem.y_meta[j]) for j in range(len(Y_meta)))
                  for i in range(problem.sizes[0])])
    errors = []
    for eta in (1e-3, 1e-4):
        run = simulate(problem, blocks, MetaConfig(eta=eta, steps=1, perturb_draws=0))
        assert_close(run.label_similarity, a)
        errors.append(np.abs(run.score[0] - a).max())
    assert errors[1] <= errors[0] / 9.0 + 1e-14  # first order in eta


def test_c3_cross_entropy_residual_ratio():
    """C3: at uniform outputs the CE residual inner products are 1 - 1/C and -1/C (autodiff oracle)."""
    for C in range(2, 8):
        grad = jax.vmap(jax.grad(lambda f, y: -jax.nn.log_softmax(f)[y]), in_axes=(None, 0))(jnp.zeros(C), jnp.arange(C))
        gram = np.asarray(grad @ grad.T)
        assert_close(np.diag(gram), np.full(C, 1 - 1 / C))
        assert_close(gram[0, 1] / gram[0, 0], -1 / (C - 1))


@whole_runs
@given(problem=problems, loss=st.sampled_from(["mse", "ce"]), gamma=st.sampled_from([0.0, 1.0]))
def test_c4_velocity_bound_at_every_step(problem, loss, gamma):
    run = simulate(problem, _linear_blocks(problem), MetaConfig(loss=loss, gamma=gamma, beta=5.0, steps=30,
                                                                perturb_draws=0))
    assert np.all(np.abs(run.score) <= c4_bound(run) * (1 + 1e-12) + 1e-300)


@whole_runs
@given(problem=problems)
def test_c4_coupling_norm_is_root_of_lookahead_loss(problem):
    """For MSE ``||R_meta_hat||_F = sqrt(2 m L_meta_hat)``; L_meta_hat from a parameter-space look-ahead."""
    blocks = _linear_blocks(problem)
    m = problem.sizes[1]
    run = simulate(problem, blocks, MetaConfig(steps=1, perturb_draws=0))
    eta, C = run.config["eta"], problem.num_classes
    Y, Y_meta = np.eye(C)[problem.y_noisy], np.eye(C)[problem.y_meta]
    theta_hat = eta * (0.5 * problem.X.T @ Y + problem.X_meta.T @ Y_meta)  # one step from theta = 0, w = 1/2
    lookahead_loss = 0.5 * np.sum((problem.X_meta @ theta_hat - Y_meta) ** 2) / m
    assert_close(run.coupling_norm[0], np.sqrt(2 * m * lookahead_loss))


@whole_runs
@given(problem=problems, gamma=st.sampled_from([0.0, 0.5, 1.0]), w0=st.floats(0.0, 1.0))
def test_c10_fixed_weights_equal_matrix_power(problem, gamma, w0):
    """C10: beta = 0 is weighted kernel GD, ``F_t = Y + (I - eta K diag(w, gamma))^t (F_0 - Y)``."""
    n, m, _ = problem.sizes
    blocks = _linear_blocks(problem)
    steps = 25
    run = simulate(problem, blocks, MetaConfig(variant="fixed", w0=w0, gamma=gamma, steps=steps, perturb_draws=0))
    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]])
    D = np.diag(np.concatenate([np.full(n, w0), np.full(m, gamma)]))
    Y = np.eye(problem.num_classes)[np.concatenate([problem.y_noisy, problem.y_meta])]
    F = Y - np.linalg.matrix_power(np.eye(n + m) - run.config["eta"] * K @ D, steps) @ Y
    assert_close(run.outputs, F[:n], atol=1e-12)
    assert_close(run.meta_outputs, F[n:], atol=1e-12)


def test_c10_small_eta_limit_is_neural_tangents_gradient_descent():
    from kernels._nt import nt

    problem = feature_problem(np.random.default_rng(3), 20, 8, 6, 3, 12)
    n, m, _ = problem.sizes
    blocks = _linear_blocks(problem)
    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]])
    Y = np.eye(3)[np.concatenate([problem.y_noisy, problem.y_meta])]
    time = 2.0 / np.linalg.eigvalsh(K)[-1] * 40
    # neural-tangents normalises the MSE by y_train.size; our training loss is a sum.
    predict = nt.predict.gradient_descent_mse(K, Y, learning_rate=Y.size)
    _, limit = predict(time, np.zeros_like(Y), np.zeros((6, 3)), np.hstack([blocks.K_TX, blocks.K_TV]))
    errors = []
    for steps in (100, 1000):
        run = simulate(problem, blocks, MetaConfig(variant="fixed", w0=1.0, gamma=1.0, eta=time / steps, steps=steps,
                                                   perturb_draws=0))
        errors.append(np.abs(run.test_outputs - limit).max())
    assert errors[1] < errors[0] / 8  # Euler steps converge at first order
    assert errors[1] < 1e-3 * np.abs(limit).max()


@whole_runs
@given(problem=problems, loss=st.sampled_from(["mse", "ce"]), seed=st.integers(0, 100))
def test_minibatch_of_everything_equals_full_batch(problem, loss, seed):
    n, m, _ = problem.sizes
    blocks = _linear_blocks(problem)
    full = simulate(problem, blocks, MetaConfig(loss=loss, steps=10, perturb_draws=0), seed=seed)
    mini = simulate(problem, blocks, MetaConfig(loss=loss, steps=10, batch_size=n, meta_batch_size=m, perturb_draws=0),
                    seed=seed)
    assert_close(mini.w, full.w)
    assert_close(mini.clean_loss, full.clean_loss)
    assert_close(mini.test_outputs, full.test_outputs)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(-2**63, 2**63 - 1), partitionable=st.booleans())
def test_the_batch_key_is_jax_split_of_the_seed_key(seed, partitionable):
    """SimState.key, computed in Python (Threefry-2x32), against JAX's own split of the seed's key, under both
    of JAX's split schemes."""
    from dynamics.simulator import _batch_key

    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        expected = np.asarray(jax.random.split(jax.random.PRNGKey(seed))[0])
        key = _batch_key(seed)
        assert np.array_equal(_batch_key(np.int64(seed)), key)  # numpy's integers too
    finally:
        jax.config.update("jax_threefry_partitionable", before)
    assert key.dtype == np.uint32 and np.array_equal(key, expected)


def test_same_seed_same_trajectory_bit_for_bit(tmp_path):
    problem = feature_problem(np.random.default_rng(0), 30, 10, 5, 3, 8)
    blocks = _linear_blocks(problem)
    config = MetaConfig(steps=40, batch_size=7, meta_batch_size=4, record_every=3, perturb_draws=2)
    first, second = simulate(problem, blocks, config, seed=5), simulate(problem, blocks, config, seed=5)
    other = simulate(problem, blocks, config, seed=6)
    for name in ("w", "score", "clean_loss", "flip_rate", "test_outputs"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.w, other.w)
    assert list(first.step) == list(range(0, 37, 3)) + [40]  # 13 chunks of 3 steps, then the last state
    first.save(tmp_path / "run.npz")
    loaded = type(first).load(tmp_path / "run.npz")
    for name in ("clean_loss", "flip_rate", "noisy", "outputs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(first, name))
    for name in ("w", "score"):  # stored as float32 (Trajectory.save)
        np.testing.assert_array_equal(getattr(loaded, name), getattr(first, name).astype(np.float32))
    assert loaded.config == first.config


def test_divergence_names_the_step_and_the_remedy():
    problem = feature_problem(np.random.default_rng(1), 20, 6, 4, 3, 10)
    blocks = _linear_blocks(problem)
    with pytest.raises(DivergenceError, match=r"diverged by step \d+.*eta below"):
        simulate(problem, blocks, MetaConfig(eta=50.0 / blocks.lambda_max(1.0), steps=400, record_every=10,
                                             perturb_draws=0))


def test_default_eta_is_stable_and_follows_theory():
    problem = feature_problem(np.random.default_rng(2), 40, 10, 4, 3, 30)
    blocks = _linear_blocks(problem)
    run = simulate(problem, blocks, MetaConfig(steps=5, perturb_draws=0))
    assert run.config["eta"] * run.config["lambda_joint"] < 2.0
    assert run.config["eta"] == pytest.approx(1 / np.linalg.eigvalsh(blocks.K_XX)[-1], rel=1e-9) or \
        run.config["eta"] == pytest.approx(1 / run.config["lambda_joint"], rel=1e-9)


@settings(max_examples=4)
@given(problem=problems, variant=st.sampled_from(["meta", "l2rw", "fixed"]), loss=st.sampled_from(["mse", "ce"]),
       mini=st.booleans(), features=st.booleans(), seed=st.integers(0, 100))
def test_init_and_step_reproduce_simulate(problem, variant, loss, mini, features, seed):
    """``init`` then ``step`` T times passes through every state ``simulate`` recorded (weights and outputs bit for
    bit)."""
    n, m, _ = problem.sizes
    operator = FeatureKernel(problem.X, problem.X_meta, problem.X_test) if features else _linear_blocks(problem)
    config = MetaConfig(loss=loss, variant=variant, beta=5.0, steps=6, batch_size=max(1, n // 2) if mini else None,
                        meta_batch_size=max(1, m // 2) if mini else None, perturb_draws=0)
    run = simulate(problem, operator, config, seed=seed)
    config = dataclasses.replace(config, eta=run.config["eta"])
    Y_meta = np.eye(problem.num_classes)[problem.y_meta]
    state = init(problem, operator, config, seed=seed)
    device_operator = jax.device_put(operator)
    for t in range(config.steps + 1):
        assert int(state.t) == run.step[t] == t
        np.testing.assert_array_equal(np.asarray(state.w), run.w[t])
        meta_outputs = np.asarray(state.F)[n:]
        losses = (0.5 * np.sum((meta_outputs - Y_meta) ** 2, axis=1) if loss == "mse" else
                  -np.sum(Y_meta * (meta_outputs - np.log(np.exp(meta_outputs).sum(axis=1, keepdims=True))), axis=1))
        assert_close(losses.mean(), run.clean_loss[t])
        if t < config.steps:
            state = step(state, problem, device_operator, config)
    np.testing.assert_array_equal(np.asarray(state.F), np.concatenate([run.outputs, run.meta_outputs]))
    # The test outputs are recovered by a separate jitted product, which XLA may fuse differently: to rounding.
    assert_close(predict_test(state, operator, config), run.test_outputs)


def test_c7_flip_rate_equals_its_definition_with_the_documented_draws():
    """docs/theory.md, C7: at each recorded step, perturb F and F_meta by Gaussian directions of norm eps
    ||Y_meta||_F each, drawn from ``default_rng([seed, C7_STREAM, t])``, and count the examples whose weight step
    changes sign; numpy against the states that ``init`` and ``step`` pass through."""
    problem = feature_problem(np.random.default_rng(3), 12, 5, 4, 3, 6)
    n, m, _ = problem.sizes
    blocks = _linear_blocks(problem)
    seed, draws, eps, gamma = 4, 3, 0.5, 1.0
    config = MetaConfig(steps=7, record_every=2, perturb_draws=draws, perturb_eps=eps, gamma=gamma, beta=5.0)
    run = simulate(problem, blocks, config, seed=seed)
    config = dataclasses.replace(config, eta=run.config["eta"])
    eta = config.eta
    C = problem.num_classes
    Y, Y_meta = np.eye(C)[problem.y_noisy], np.eye(C)[problem.y_meta]
    K_VX, K_VV = np.asarray(blocks.K_VX), np.asarray(blocks.K_VV)

    def score(F, F_meta, w):  # mse: residuals are F - Y (docs/theory.md section 2)
        R, R_meta = F - Y, F_meta - Y_meta
        R_meta_hat = F_meta - eta * (K_VX @ (w[:, None] * R) + gamma * K_VV @ R_meta) - Y_meta
        return np.sum(R * (K_VX.T @ R_meta_hat), axis=1)

    state, rates = init(problem, blocks, config, seed=seed), []
    for t in range(config.steps + 1):
        if t in run.step:
            F, w = np.asarray(state.F), np.asarray(state.w)
            base = np.sign(score(F[:n], F[n:], w))
            noise = np.random.default_rng([seed, dynamics.simulator.C7_STREAM, t]).standard_normal(
                (draws, n + m, C), np.float32)
            size = eps * np.linalg.norm(Y_meta)
            flips = []
            for Z in noise:
                Z_train, Z_meta = Z[:n] / np.linalg.norm(Z[:n]), Z[n:] / np.linalg.norm(Z[n:])
                perturbed = score(F[:n] + size * Z_train.astype(np.float64),
                                  F[n:] + size * Z_meta.astype(np.float64), w)
                flips.append(np.mean(np.sign(perturbed) != base))
            rates.append(np.mean(flips))
        if t < config.steps:
            state = step(state, problem, blocks, config)
    np.testing.assert_array_equal(run.step, [0, 2, 4, 7])  # every 2 steps, then the last state
    # The same count of flipped steps at every record (the trajectory keeps the rate in float32).
    np.testing.assert_array_equal(np.round(run.flip_rate * n * draws), np.round(np.asarray(rates) * n * draws))
    assert 0 < np.max(rates) < 1  # the perturbation is large enough to flip some steps, and not all


@settings(max_examples=1)  # three compilations per example; the diverging-run test below adds a second case
@given(problem=problems, variant=st.sampled_from(["meta", "l2rw"]), loss=st.sampled_from(["mse", "ce"]),
       mini=st.booleans(), features=st.booleans(), seed=st.integers(0, 100))
def test_runs_advanced_together_equal_the_runs_alone(problem, variant, loss, mini, features, seed):
    """simulate_many: one pass over the kernel for S runs with their own labels, seeds, eta, beta, gamma and w0;
    each run equals the same run alone to 1e-12 (the batched products sum in another order)."""
    n, m, _ = problem.sizes
    operator = FeatureKernel(problem.X, problem.X_meta, problem.X_test) if features else _linear_blocks(problem)
    rng = np.random.default_rng(seed)
    problems = [dataclasses.replace(problem, y_noisy=rng.integers(0, problem.num_classes, n)) for _ in range(2)]
    shared = dict(loss=loss, variant=variant, steps=8, record_every=3, perturb_draws=2,
                  batch_size=max(1, n // 2) if mini else None, meta_batch_size=max(1, m // 2) if mini else None)
    eta = 0.5 / operator.lambda_max(1.0)
    configs = [MetaConfig(**shared), MetaConfig(**shared, eta=eta, beta=3.0, gamma=0.5, w0=0.3)]
    together = simulate_many(problems, operator, configs, [seed, seed + 1])
    for problem, config, run_seed, batched in zip(problems, configs, [seed, seed + 1], together):
        alone = simulate(problem, operator, config, seed=run_seed)
        assert batched.config == alone.config
        for name in ("w", "score", "clean_loss", "coupling_norm", "outputs", "meta_outputs", "test_outputs"):
            assert_close(getattr(batched, name), getattr(alone, name), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(batched.step, alone.step)
        np.testing.assert_array_equal(batched.label_similarity, alone.label_similarity)


def test_runs_advanced_together_keep_going_past_a_diverging_one_and_share_their_loop(monkeypatch):
    problem = feature_problem(np.random.default_rng(1), 20, 6, 4, 3, 10)
    blocks = _linear_blocks(problem)
    shared = dict(steps=400, record_every=10, perturb_draws=2)
    configs = [MetaConfig(**shared), MetaConfig(**shared, eta=50.0 / blocks.lambda_max(1.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the host's products overflow silently, as XLA's do
        stable, diverged = simulate_many([problem, problem], blocks, configs, [0, 0])
    assert isinstance(diverged, DivergenceError) and "eta below" in str(diverged)
    # Full-batch runs advanced together multiply on the host (dynamics.operators.host_products), C7's draws
    # (a vmap inside the runs' vmap) included: to 1e-12.
    alone = simulate(problem, blocks, configs[0])
    for name in ("w", "score", "outputs", "test_outputs", "flip_rate"):
        np.testing.assert_allclose(getattr(stable, name), getattr(alone, name), rtol=0, atol=1e-12)

    def interrupted(*args):  # Ctrl-C, or a signal handler's exception, raised inside a host product
        raise KeyboardInterrupt

    monkeypatch.setattr(operators, "_host_products_of", interrupted)
    with pytest.raises(KeyboardInterrupt):  # unwinds from the caller, not as an XLA runtime error
        simulate_many([problem, problem], blocks, configs, [0, 0])
    assert not operators._HOST_BLOCKS and not operators._HOST_INTERRUPTS
    with pytest.raises(ValueError, match="differs from run 0 in steps"):
        simulate_many([problem, problem], blocks, [MetaConfig(steps=3), MetaConfig(steps=4)], [0, 1])
    with pytest.raises(ValueError, match="one config, seed and initial outputs per problem"):
        simulate_many([problem], blocks, [MetaConfig(), MetaConfig()], [0])
    signed = dataclasses.replace(problem, num_classes=2, targets="signed", y_noisy=problem.y_noisy % 2,
                                 y_true=problem.y_true % 2, y_meta=problem.y_meta % 2, y_test=problem.y_test % 2,
                                 transition=np.eye(2))
    with pytest.raises(ValueError, match="same classes and targets"):
        simulate_many([problem, signed], blocks, [MetaConfig(), MetaConfig()], [0, 1])


_COMPILATIONS = [0]  # XLA compilations in this process so far
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: _COMPILATIONS.__setitem__(0, _COMPILATIONS[0] + 1)
    if event == "/jax/core/compile/backend_compile_duration" else None)


def test_outputs_at_a_step_come_from_the_run_s_own_compiled_loop():
    """C5''s state at T_filter: outputs_at equals the run stopped there, and reuses the run's compiled loop."""
    problem = feature_problem(np.random.default_rng(3), 30, 8, 6, 3, 12)
    blocks = _linear_blocks(problem)
    config = MetaConfig(steps=50, record_every=1, eta=0.5 / blocks.lambda_max(1.0))
    kept = []
    run = simulate(problem, blocks, config, seed=2, keep_outputs=kept)
    compiled = dynamics.simulator._segment._cache_size()
    outputs = outputs_at(problem, blocks, config, 17, seed=2)
    other = dataclasses.replace(config, eta=0.5 * config.eta, beta=3.0, gamma=0.5)
    outputs_at(problem, blocks, other, 17, seed=2)  # eta, beta and gamma are traced: still the same loop
    # From any output kept during the run before step 17 (at most KEPT_OUTPUTS of them): the same outputs, to
    # the last bit, by the same loop.
    assert [t for t, _ in kept] == list(range(0, 50, 4)) and len(kept) <= dynamics.simulator.KEPT_OUTPUTS
    assert dynamics.simulator._segment._cache_size() == compiled
    before = _COMPILATIONS[0]
    for t, F in kept[:5]:
        np.testing.assert_array_equal(outputs_at(problem, blocks, config, 17, seed=2, start=(t, F, run.w[t])), outputs)
    assert _COMPILATIONS[0] == before  # (new numpy leaves add entries to jit's dispatch cache, not programs)
    stopped = simulate(problem, blocks, dataclasses.replace(config, steps=17), seed=2)
    np.testing.assert_allclose(outputs, np.concatenate([stopped.outputs, stopped.meta_outputs]), rtol=0, atol=1e-12)
    t, F = kept[3]  # a kept output is the state of the run at its step: the run stopped there ends with it
    at_t = simulate(problem, blocks, dataclasses.replace(config, steps=t), seed=2)
    np.testing.assert_allclose(F, np.concatenate([at_t.outputs, at_t.meta_outputs]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="needs config.eta"):
        outputs_at(problem, blocks, MetaConfig(steps=50), 17)
    with pytest.raises(ValueError, match="0 <= t <= steps"):
        outputs_at(problem, blocks, config, 17, seed=2, start=(20, *kept[-1][1:], run.w[20]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_loop_compiled_ahead_is_the_one_simulate_runs(dtype):
    """lower_loop lowers, before the kernel exists, the very program simulate runs, and compiling it on another
    thread leaves simulate nothing to compile, whatever its eta, beta, w0 and seed."""
    problem = feature_problem(np.random.default_rng(5), 23, 7, 9, 3, 6)  # sizes no other test compiles
    config = MetaConfig(steps=30, record_every=2, perturb_draws=1, beta=4.0, w0=0.3)
    started = _COMPILATIONS[0]
    thread = concurrent.futures.ThreadPoolExecutor(1)
    thread.submit(dynamics.simulator.lower_loop(problem, config, dtype).compile).result()
    thread.shutdown()
    assert _COMPILATIONS[0] > started
    blocks = KernelBlocks.from_problem(problem, lambda a, b: (a @ b.T).astype(dtype))
    before = _COMPILATIONS[0]
    run = simulate(problem, blocks, dataclasses.replace(config, eta=0.3 / blocks.lambda_max(1.0)), seed=4)
    assert _COMPILATIONS[0] == before  # (the first call adds an entry to jit's dispatch cache, not a program)
    assert run.w.shape == (16, 23) and np.isfinite(run.flip_rate).all()


def test_step_needs_a_resolved_eta_and_a_matching_operator():
    problem = feature_problem(np.random.default_rng(0), 10, 4, 3, 2, 5)
    blocks = _linear_blocks(problem)
    state = init(problem, blocks, MetaConfig())
    with pytest.raises(ValueError, match="needs config.eta"):
        step(state, problem, blocks, MetaConfig())
    other = feature_problem(np.random.default_rng(0), 11, 4, 3, 2, 5)
    with pytest.raises(ValueError, match=r"operator is for \(n, m, p\) = \(10, 4, 3\)"):
        simulate(other, blocks, MetaConfig(steps=2))
    with pytest.raises(TypeError, match="kernel operator"):
        init(problem, blocks.arrays(), MetaConfig())


def test_progress_reports_between_segments_without_recompiling():
    problem = feature_problem(np.random.default_rng(4), 12, 5, 3, 3, 6)
    blocks = _linear_blocks(problem)
    config = MetaConfig(steps=450, record_every=2, perturb_draws=1)
    calls = []
    first = simulate(problem, blocks, config, progress=calls.append)
    compiled = dynamics.simulator._segment._cache_size()
    second = simulate(problem, blocks, config, progress=lambda t: calls.append(-t))
    assert dynamics.simulator._segment._cache_size() == compiled  # a new callable is not a new program
    np.testing.assert_array_equal(first.w, second.w)
    reports = calls[:len(calls) // 2]
    assert 50 <= len(reports) <= 101 and reports == sorted(reports) and reports[-1] == config.steps
    assert calls[len(calls) // 2:] == [-t for t in reports]


def test_float64_without_switching_jax_to_x64_for_the_process():
    """No global x64 switch at import, yet float64 results: the precision is scoped to each call."""
    code = (
        "import jax, numpy as np\n"
        "from dynamics.problem import gaussian_mixture\n"
        "from dynamics.simulator import KernelBlocks, MetaConfig, init, step, meta_score\n"
        "problem = gaussian_mixture(np.random.default_rng(0), n=8, m=4, p=2, num_classes=2, dim=3)\n"
        "blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)\n"
        "config = MetaConfig(eta=0.01)\n"
        "state = step(init(problem, blocks, config), problem, blocks, config)\n"
        "assert state.F.dtype == state.w.dtype == np.float64, (state.F.dtype, state.w.dtype)\n"
        "score, _ = meta_score('ce', 0.1, 1.0, np.ones(8), np.ones((8, 2)), np.ones((4, 2)), np.ones((4, 2)),\n"
        "                      np.eye(2)[[0, 1, 0, 1]], blocks.K_VX, blocks.K_VV)\n"
        "assert score.dtype == np.float64, score.dtype\n"
        "assert not jax.config.jax_enable_x64\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


_CACHED_LOOP = """
import jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

@jax.jit
def loop(x, A, start, stop):
    return jax.lax.fori_loop(start, stop, lambda t, y: A @ y + 1.0, x)

print(loop(jnp.zeros(4), jnp.eye(4) * 0.5, 0, 3).tolist())
"""

_CACHED_SIMULATION = """
import numpy as np
from dynamics.problem import gaussian_mixture
from dynamics.simulator import CompilationCacheError, KernelBlocks, MetaConfig, simulate
problem = gaussian_mixture(np.random.default_rng(0), n=20, m=8, p=5, dim=4)
blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)
try:
    simulate(problem, blocks, MetaConfig(steps=5, perturb_draws=0))
    print("ran")
except CompilationCacheError as error:
    print("refused:", error)
"""


def test_the_persistent_cache_is_refused(tmp_path):
    """jax 0.5.3 loads a cached loop of traced bounds that leaves its input unchanged; the simulator refuses."""
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", _CACHED_LOOP], env=env, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    fresh, cached = (json.loads(run.stdout.strip()) for run in runs)
    assert fresh == [1.75] * 4
    if jax.__version__ in CACHE_AFFECTED_JAX:
        assert cached == [0.0] * 4, "the bug is gone: CACHE_AFFECTED_JAX can drop this version"
    guarded = subprocess.run([sys.executable, "-c", _CACHED_SIMULATION], env=env, capture_output=True, text=True,
                             timeout=120)
    expected = "refused:" if jax.__version__ in CACHE_AFFECTED_JAX else "ran"
    assert guarded.stdout.startswith(expected), guarded.stdout + guarded.stderr
