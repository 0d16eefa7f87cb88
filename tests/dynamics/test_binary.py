"""The binary setting (docs/theory.md section 9): two classes on ONE output with targets +-1, under MSE or the
logistic loss, on digit pairs and on CIFAR-10N class pairs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from random_problems import feature_problem
from tolerance import assert_close

from dynamics.cifar import DEFAULT_DATA_DIR
from dynamics.embeddings import CacheInfo, Embeddings, cifar10n_feature_problem, pair_split, reference_split
from dynamics.problem import Problem, check_pair, digits, target_codebook
from dynamics.simulator import KernelBlocks, MetaConfig, simulate


def _binary_problem(seed, n=10, m=4, p=5, D=6):
    """A two-class feature problem (30% of the labels redrawn) on one output with +-1 targets."""
    return dataclasses.replace(feature_problem(np.random.default_rng(seed), n, m, p, 2, D), targets="signed")


def test_signed_targets_are_one_output_of_plus_and_minus_one():
    problem = _binary_problem(0)
    assert problem.outputs == 1 and problem.num_classes == 2
    assert_close(problem.codebook, np.array([[1.0], [-1.0]]))
    assert_close(problem.encode([0, 1, 1, 0]), np.array([[1.0], [-1.0], [-1.0], [1.0]]))
    assert dataclasses.replace(problem, targets="one-hot").outputs == 2
    arrays = problem.arrays()
    assert str(arrays["targets"]) == "signed" and "targets" not in dataclasses.replace(problem, targets="one-hot").arrays()
    again = Problem.from_arrays(arrays)
    assert again.targets == "signed" and again.outputs == 1
    with pytest.raises(ValueError, match="two classes"):
        target_codebook("signed", 3)
    with pytest.raises(ValueError, match="targets must be one of"):
        target_codebook("ordinal", 2)
    with pytest.raises(ValueError, match="two classes"):
        dataclasses.replace(feature_problem(np.random.default_rng(0), 9, 3, 2, 3, 4), targets="signed")


@pytest.mark.parametrize("pair, message", [((3, 3), "two different classes"), ((1, 10), r"in \[0, 9\]"),
                                           ((-1, 2), r"in \[0, 9\]"), ("17", "two class indices"),
                                           ((1, 2, 3), "two class indices")])
def test_a_bad_pair_is_refused(pair, message):
    with pytest.raises(ValueError, match=message):
        check_pair(pair, 10)


def test_a_digit_pair_keeps_the_two_digits_on_one_output():
    from sklearn.datasets import load_digits

    problem = digits(np.random.default_rng(3), n=100, m=10, noise_rate=0.3, pair=(1, 7))
    assert problem.targets == "signed" and problem.outputs == 1 and problem.num_classes == 2
    assert problem.sizes == (100, 10, 361 - 110)  # digits has 182 ones and 179 sevens
    assert np.bincount(problem.y_meta).tolist() == [5, 5]
    assert 0.1 < problem.noise_rate < 0.5 and set(problem.y_noisy) <= {0, 1}
    # Every input is an image of its true class: 0 -> digit 1 (target +1), 1 -> digit 7 (target -1), standardised
    # over all 1797 images as the 10-class problem is.
    data = load_digits()
    X_all = (data.data - data.data.mean(axis=0)) / (data.data.std(axis=0) + 1e-8)
    X_all *= 8.0 / np.linalg.norm(X_all, axis=1, keepdims=True)
    digit_of = {row.tobytes(): digit for row, digit in zip(X_all, data.target)}
    for X, y in ((problem.X, problem.y_true), (problem.X_meta, problem.y_meta), (problem.X_test, problem.y_test)):
        assert [digit_of.get(row.tobytes()) for row in X] == np.where(y == 0, 1, 7).tolist()


def _logistic_or_mse(loss, F, Y):
    return 0.5 * jnp.sum((F - Y) ** 2, axis=-1) if loss == "mse" else jnp.sum(jnp.log1p(jnp.exp(-Y * F)), axis=-1)


@functools.partial(jax.jit, static_argnames="loss")
def _parameter_space_step(w, theta, X, V, Y, Y_meta, eta, beta, gamma, loss):
    """Docs/theory.md section 2 steps 1-4, literally, for ``f(x) = x @ theta``, ``theta (D, 1)``, by autodiff
    through the look-ahead."""

    def train_objective(theta, w):
        return jnp.sum(w * _logistic_or_mse(loss, X @ theta, Y)) + gamma * jnp.sum(_logistic_or_mse(loss, V @ theta,
                                                                                                       Y_meta))

    def meta_objective(w, theta):
        return jnp.mean(_logistic_or_mse(loss, V @ (theta - eta * jax.grad(train_objective)(theta, w)), Y_meta))

    w = jnp.clip(w - beta / eta * jax.grad(meta_objective)(w, theta), 0.0, 1.0)
    return w, theta - eta * jax.grad(train_objective)(theta, w)


def _parameter_space_run(problem, loss, eta, beta, gamma, steps):
    """:func:`_parameter_space_step` from zero outputs and ``w = 1/2``, with targets ``+1`` (class 0) and ``-1``
    (class 1): the weights, clean-subset losses and test accuracies (sign agreement) at steps ``0..steps``."""
    X, V, T = (jnp.asarray(a) for a in (problem.X, problem.X_meta, problem.X_test))
    Y, Y_meta = (jnp.asarray(1.0 - 2.0 * y)[:, None] for y in (problem.y_noisy, problem.y_meta))
    theta, w = jnp.zeros((X.shape[1], 1)), jnp.full(X.shape[0], 0.5)
    ws, meta_losses, accuracy = [], [], []
    for t in range(steps + 1):
        ws.append(w)
        meta_losses.append(jnp.mean(_logistic_or_mse(loss, V @ theta, Y_meta)))
        accuracy.append(np.mean(np.where(np.asarray(T @ theta)[:, 0] >= 0, 0, 1) == problem.y_test))
        if t < steps:
            w, theta = _parameter_space_step(w, theta, X, V, Y, Y_meta, eta, beta, gamma, loss)
    return np.array(ws), np.array(meta_losses), np.array(accuracy), np.asarray(T @ theta)


# One shape and one (eta, beta, gamma): the simulator's loop and the oracle compile once; no shrinking.
@settings(max_examples=3, phases=[Phase.explicit, Phase.generate])
@given(seed=st.integers(0, 2**16))
def test_a_binary_run_equals_parameter_space_autodiff(seed):
    """C1 on one output: the simulator with +-1 targets and cross-entropy, the logistic loss, equals bi-level autodiff
    of a linear model, weights, clean-subset loss, test outputs and test accuracy (sign agreement) alike. (MSE on
    one output is the same code as on C outputs, which tests/dynamics/test_simulator.py checks; the binary MSE run
    of the main command is tests/phases/test_sign_pattern.py's.)"""
    problem = _binary_problem(seed)
    blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)
    loss, eta, beta, gamma, steps = "ce", 0.05, 8.0, 0.7, 5
    assert eta * blocks.lambda_max(gamma) < 2  # stable
    ws, meta_losses, accuracy, test_outputs = _parameter_space_run(problem, loss, eta, beta, gamma, steps)
    run = simulate(problem, blocks, MetaConfig(loss=loss, eta=eta, beta=beta, gamma=gamma, steps=steps,
                                               perturb_draws=0))
    assert run.test_outputs.shape == (5, 1) and run.outputs.shape == (10, 1)
    assert_close(run.w, ws, rtol=1e-10, atol=1e-12)
    assert_close(run.clean_loss, meta_losses, rtol=1e-10, atol=1e-14)
    assert_close(run.test_outputs, test_outputs, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.round(run.test_accuracy * 5), np.round(accuracy * 5))  # of the 5 test examples
    # a_i = sum_j k(x_i, v_j) y_i y_j with the +-1 labels (docs/theory.md section 3)
    signs, meta_signs = 1.0 - 2.0 * problem.y_noisy, 1.0 - 2.0 * problem.y_meta
    assert_close(run.label_similarity, signs * (blocks.K_VX.T @ meta_signs), rtol=1e-12, atol=1e-14)
    assert 0 < np.count_nonzero(run.w[1] != run.w[0])  # the weights moved


def test_pair_split_keeps_true_and_human_labels_inside_the_pair():
    rng = np.random.default_rng(0)
    clean = np.repeat(np.arange(10), 300)  # 3,000 "training" images, 300 per class
    noisy = np.where(rng.random(len(clean)) < 0.4, rng.integers(0, 10, len(clean)), clean)
    test_labels = np.repeat(np.arange(10), 50)
    split, test_index = pair_split(clean, noisy, test_labels, (3, 5), rng, n=None, m=40, p=None, held_out=500)
    assert split.drawn == 500 and split.dropped == split.drawn - len(split.train)  # 250 per class left after holding out
    assert set(clean[split.train]) == {3, 5} and set(noisy[split.train]) <= {3, 5}
    assert split.dropped == np.count_nonzero(~np.isin(noisy[np.isin(clean, (3, 5))], (3, 5))) - \
        np.count_nonzero(~np.isin(noisy[split.held_out][np.isin(clean[split.held_out], (3, 5))], (3, 5)))
    assert np.bincount(clean[split.meta], minlength=10)[[3, 5]].tolist() == [20, 20]
    assert set(split.meta) <= set(split.held_out) and not set(split.train) & set(split.held_out)
    assert sorted(test_index) == sorted(np.flatnonzero(np.isin(test_labels, (3, 5))))
    small, small_test = pair_split(clean, noisy, test_labels, (3, 5), np.random.default_rng(1), n=100, m=10, p=20,
                                   held_out=500)
    assert small.drawn == 100 and np.bincount(test_labels[small_test], minlength=10)[[3, 5]].tolist() == [10, 10]
    for sizes, message in (({"n": 501}, r"n must lie in \[1, 500\]"), ({"m": 101}, r"m must lie in \[2, 100\]"),
                           ({"p": 101}, r"p must lie in \[1, 100\]")):
        with pytest.raises(ValueError, match=message):
            pair_split(clean, noisy, test_labels, (3, 5), rng, **({"n": None, "m": 10, "p": None} | sizes),
                       held_out=500)


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / "SHA256SUMS").is_file(), reason=f"no data in {DEFAULT_DATA_DIR}")
def test_a_cifar10n_pair_on_embeddings_has_signed_targets_and_the_pair_s_images():
    from dynamics.cifar import load_cifar10n_labels

    labels = load_cifar10n_labels(DEFAULT_DATA_DIR / "cifar10n" / "CIFAR-10_human.pt")
    rng = np.random.default_rng(0)
    info = CacheInfo("hit", "fake.npz", {"extractor": "tiny", "settings": {}, "source": {"name": "fake"}}, 1.0, 1.0, 1)
    embeddings = Embeddings(rng.normal(size=(50_000, 3)).astype(np.float32),
                            rng.normal(size=(10_000, 3)).astype(np.float32), np.repeat(np.arange(10), 1000), info)
    problem, split, test_index = cifar10n_feature_problem("worse", embeddings, labels, np.random.default_rng(1),
                                                          m=400, pair=(3, 5))
    clean, worse = labels["clean_label"], labels["worse_label"]
    assert problem.targets == "signed" and problem.num_classes == 2 and problem.problem().outputs == 1
    assert split.drawn == 9_000 and problem.sizes == (9_000 - split.dropped, 400, 2_000)
    np.testing.assert_array_equal(problem.y_true, (clean[split.train] == 5).astype(int))
    np.testing.assert_array_equal(problem.y_noisy, (worse[split.train] == 5).astype(int))
    assert set(worse[split.train]) == {3, 5} and np.bincount(problem.y_meta).tolist() == [200, 200]
    np.testing.assert_array_equal(problem.y_test, (embeddings.test_labels[test_index] == 5).astype(int))
    assert problem.source["pair"] == [3, 5] and problem.source["classes"] == ["cat", "dog"]
    # the held-out images of the 10-class problem of the same seed: the pair's images are a subset of its splits
    np.testing.assert_array_equal(split.held_out, reference_split(clean, np.random.default_rng(1)).held_out)
    assert str(problem.label_arrays()["targets"]) == "signed"
