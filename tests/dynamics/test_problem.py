"""Problems, noise models and generators (docs/theory.md section 0, ``dynamics/problem.py``).

Statistical assertions use exact binomial tails at the probability of a
4.5-standard-deviation normal excursion, ``q = 3.4e-6`` per side (see
:func:`_assert_binomial`), so each holds for every seed in a range, not for a
lucky one: a false alarm has probability below 7e-6 per assertion (the default
profile makes a few thousand, and being derandomised in ``conftest.py`` it
runs the same ones every time; a random profile of 150 examples per test,
some 40,000 assertions, passed as well).
``test_realised_rate_holds_for_every_seed_in_a_range`` sweeps a fixed seed
range explicitly.

"""

import re

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from tolerance import assert_close

from dynamics.problem import NOISE_TYPES, Problem, corrupt_labels, digits, gaussian_mixture, transition_matrix

# One-sided tail of a 4.5-sigma normal excursion: 3.4e-6.
_TAIL = float(scipy.stats.norm.sf(4.5))
_DIGITS_SIZE = 1797

seeds = st.integers(0, 2**32 - 1)


def _assert_binomial(count, trials, probability, what=""):
    """``count`` is a plausible draw of ``Binomial(trials, probability)``.

    The interval is exact (binomial quantiles at ``_TAIL`` on each side), not a
    normal approximation, so it stays valid for small expected counts. It is
    also valid for a Poisson-binomial count of the same mean (instance noise,
    where the probabilities differ per example): an interval ``[b, c]`` with
    ``b <= mean - 1`` and ``c >= mean`` holds it at least as often as it holds
    the binomial (Hoeffding 1956, theorem 4).
    """
    low = scipy.stats.binom.ppf(_TAIL, trials, probability)
    high = scipy.stats.binom.isf(_TAIL, trials, probability)
    assert low <= count <= high, (
        f"{what}: {count} of {trials} is outside the 4.5-sigma binomial interval [{low:.0f}, {high:.0f}] "
        f"around {trials * probability:.1f} (probability {probability:.4g})")


def _rate_limit(noise_type, C):
    return (C - 1) / C if noise_type == "symmetric" else 0.5


@st.composite
def noise_requests(draw, noise_types=NOISE_TYPES, n_min=500, n_max=5000, rate_min=0.0):
    """``(noise_type, C, n, rate, seed)``: a request every noise model must honour."""
    noise_type = draw(st.sampled_from(noise_types))
    C = draw(st.integers(2, 10))
    n = draw(st.integers(n_min, n_max))
    limit = _rate_limit(noise_type, C)
    rate = draw(st.floats(min(rate_min, 0.9 * limit), limit, exclude_max=True))
    return noise_type, C, n, rate, draw(seeds)


def _corrupt(noise_type, C, n, rate, seed, dim=3):
    """Class-balanced true labels, Gaussian inputs, and one draw of the noise model."""
    rng = np.random.default_rng(seed)
    y_true = rng.permutation(np.arange(n) % C)
    X = rng.standard_normal((n, dim))
    y_noisy, T = corrupt_labels(y_true, rate, C, rng, noise_type, X)
    return X, y_true, y_noisy, T


def _transition_counts(y_true, y_noisy, C):
    counts = np.zeros((C, C), dtype=np.int64)
    np.add.at(counts, (y_true, y_noisy), 1)
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Noise models


@given(request=noise_requests())
def test_realised_rate_is_within_binomial_error_of_the_request(request):
    noise_type, C, n, rate, seed = request
    _, y_true, y_noisy, _ = _corrupt(noise_type, C, n, rate, seed)
    assert y_noisy.shape == y_true.shape and y_noisy.dtype == np.int64
    assert y_noisy.min() >= 0 and y_noisy.max() < C
    _assert_binomial(np.sum(y_noisy != y_true), n, rate, f"{noise_type} noise, C={C}")


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_realised_rate_holds_for_every_seed_in_a_range(noise_type):
    """scikit-learn's ``global_random_seed`` idea: no seed in 0..299 may miss the 4.5-sigma interval."""
    n, C, rate = 2000, 5, 0.3
    for seed in range(300):
        _, y_true, y_noisy, _ = _corrupt(noise_type, C, n, rate, seed)
        _assert_binomial(np.sum(y_noisy != y_true), n, rate, f"{noise_type} noise, seed {seed}")


@given(request=noise_requests(noise_types=("symmetric",), n_min=20000, n_max=40000, rate_min=0.2))
def test_symmetric_flips_change_the_label_and_spread_uniformly(request):
    """Each flip moves to another class, uniformly.

    A flip that could keep its label would realise the rate ``r (C - 1) / C``
    instead of ``r``: at ``n >= 20000`` and ``r >= 0.2`` the gap ``n r / C``
    exceeds the 4.5-sigma interval for every ``C <= 10``, so the rate check
    below also tests that flips never keep the label.
    """
    _, C, n, rate, seed = request
    _, y_true, y_noisy, _ = _corrupt("symmetric", C, n, rate, seed)
    flipped = y_noisy != y_true
    _assert_binomial(flipped.sum(), n, rate, "symmetric flips")
    offsets = (y_noisy - y_true)[flipped] % C
    counts = np.bincount(offsets, minlength=C)
    assert counts[0] == 0
    for offset in range(1, C):
        _assert_binomial(counts[offset], flipped.sum(), 1 / (C - 1), f"flips by +{offset} mod {C}")
    if C > 2:
        statistic, _ = scipy.stats.chisquare(counts[1:])
        assert statistic <= scipy.stats.chi2.isf(2 * _TAIL, C - 2)


@given(request=noise_requests(noise_types=("pair",)))
def test_pair_noise_maps_each_class_to_the_next_only(request):
    _, C, n, rate, seed = request
    _, y_true, y_noisy, _ = _corrupt("pair", C, n, rate, seed)
    flipped = y_noisy != y_true
    np.testing.assert_array_equal(y_noisy[flipped], (y_true[flipped] + 1) % C)
    for c in range(C):
        in_class = y_true == c
        _assert_binomial(flipped[in_class].sum(), in_class.sum(), rate, f"pair flips of class {c}")


@given(C=st.integers(2, 10), n=st.integers(4000, 12000), rate=st.floats(0.1, 0.5, exclude_max=True), seed=seeds)
def test_instance_noise_rate_follows_the_projection_yet_averages_to_the_request(C, n, rate, seed):
    """Instance noise flips example i with probability ``2 r rank_i / (n - 1)`` of a linear projection.

    With one-dimensional inputs every projection ranks the examples by ``x``
    or by ``-x``, so the law is known up to that sign without reading the
    generator's random direction: low and high tenths of the ranks must flip
    at their own rates (expected 0.1 r and 1.9 r), and the mean at ``r``.
    """
    rng = np.random.default_rng(seed)
    y_true = rng.permutation(np.arange(n) % C)
    x = rng.standard_normal((n, 1))
    y_noisy, _ = corrupt_labels(y_true, rate, C, rng, "instance", x)
    flipped = y_noisy != y_true
    _assert_binomial(flipped.sum(), n, rate, "instance noise, overall")
    rank = np.argsort(np.argsort(x[:, 0])) / (n - 1)
    upper = rank >= 0.5
    # The sign of the projection: the half that flips more is the one ranked high (expected 1.5 r against 0.5 r,
    # 7 standard deviations apart at n >= 4000, r >= 0.1).
    if flipped[upper].mean() < flipped[~upper].mean():
        rank = 1 - rank
    probability = 2 * rate * rank
    for tenth in range(10):
        bucket = np.floor(rank * 10).clip(0, 9) == tenth
        mean_probability = probability[bucket].mean()
        _assert_binomial(flipped[bucket].sum(), bucket.sum(), mean_probability, f"instance flips, tenth {tenth}")
    assert np.corrcoef(flipped, rank)[0, 1] > 0.1
    # Where it flips, the new label is uniform over the other classes, as for symmetric noise.
    offsets = np.bincount((y_noisy - y_true)[flipped] % C, minlength=C)
    assert offsets[0] == 0
    for offset in range(1, C):
        _assert_binomial(offsets[offset], flipped.sum(), 1 / (C - 1), f"instance flips by +{offset}")


@given(noise_type=st.sampled_from(NOISE_TYPES), C=st.integers(2, 12), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_transition_matrix_is_row_stochastic_with_the_requested_off_diagonal_mass(noise_type, C, fraction):
    rate = fraction * _rate_limit(noise_type, C)
    T = transition_matrix(noise_type, rate, C)
    assert T.shape == (C, C) and T.dtype == np.float64
    assert T.min() >= 0.0
    assert_close(T.sum(axis=1), np.ones(C))
    assert_close(np.diag(T), np.full(C, 1 - rate))
    assert_close(T.sum(axis=1) - np.diag(T), np.full(C, rate), atol=1e-15)
    off_diagonal = T[~np.eye(C, dtype=bool)].reshape(C, C - 1)
    if noise_type == "pair":
        assert_close(T[np.arange(C), (np.arange(C) + 1) % C], np.full(C, rate))
        assert np.count_nonzero(off_diagonal) == (C if rate > 0 else 0)
    else:
        assert_close(off_diagonal, np.full((C, C - 1), rate / (C - 1)))
    if noise_type != "instance":  # instance noise returns the class-conditional law given X (tested below)
        _, T_drawn = corrupt_labels(np.arange(C), rate, C, np.random.default_rng(0), noise_type, np.eye(C))
        np.testing.assert_array_equal(T_drawn, T)


@given(request=noise_requests(noise_types=("symmetric", "pair"), n_min=2000, n_max=20000))
def test_empirical_transition_frequencies_match_the_matrix(request):
    noise_type, C, n, rate, seed = request
    _, y_true, y_noisy, T = _corrupt(noise_type, C, n, rate, seed)
    counts = _transition_counts(y_true, y_noisy, C)
    for a in range(C):
        for b in range(C):
            if T[a, b] == 0:
                assert counts[a, b] == 0, f"{noise_type}: {a} -> {b} has probability 0 but occurred"
            else:
                _assert_binomial(counts[a, b], counts[a].sum(), T[a, b], f"{noise_type} {a} -> {b}")


def test_instance_transition_is_the_class_conditional_law():
    """``Problem.transition`` is documented as ``P(y_noisy = b | y_true = a)``.

    Failing input: ``gaussian_mixture(np.random.default_rng(0), n=4000, noise_type="instance",
    noise_rate=0.4)``: class 1 flips at 0.21 and class 3 at 0.63 while every
    diagonal entry says 0.6 stays.
    """
    problem = gaussian_mixture(np.random.default_rng(0), n=4000, noise_type="instance", noise_rate=0.4)
    counts = _transition_counts(problem.y_true, problem.y_noisy, problem.num_classes)
    for a in range(problem.num_classes):
        _assert_binomial(counts[a, a], counts[a].sum(), problem.transition[a, a], f"class {a} kept")


# ---------------------------------------------------------------------------------------------------------------
# Impossible requests


def _message_names_the_range(argument, low, high):
    return rf"{argument} must lie in {re.escape(f'[{low}, {high})')}"


# The negative side stops at -1e-300: a bound of 0.0 excluded could still draw -0.0, which is in [0, 1).
@given(noise_type=st.sampled_from(NOISE_TYPES), C=st.integers(2, 10),
       rate=st.one_of(st.floats(max_value=-1e-300), st.floats(min_value=1.0),
                      st.sampled_from([np.nan, np.inf, -np.inf])))
def test_rate_outside_the_unit_interval_is_refused(noise_type, C, rate):
    pattern = _message_names_the_range("noise_rate", 0, 1)
    with pytest.raises(ValueError, match=pattern):
        transition_matrix(noise_type, rate, C)
    with pytest.raises(ValueError, match=pattern):
        corrupt_labels(np.zeros(4, dtype=int), rate, C, np.random.default_rng(0), noise_type, np.ones((4, 2)))


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
@pytest.mark.parametrize("rate", [1.0, -5e-324])  # the boundary and the float just below 0
def test_rate_at_the_unit_interval_boundary_is_refused(noise_type, rate):
    with pytest.raises(ValueError, match=_message_names_the_range("noise_rate", 0, 1)):
        transition_matrix(noise_type, rate, 3)
    assert_close(transition_matrix(noise_type, 0.0, 3), np.eye(3))


@given(noise_type=st.sampled_from(NOISE_TYPES), C=st.integers(2, 10), excess=st.floats(0.0, 1.0, exclude_max=True))
def test_rate_at_or_beyond_the_noise_models_limit_is_refused(noise_type, C, excess):
    """Symmetric noise stops carrying information at ``(C - 1) / C``; pair and instance noise at 1/2."""
    limit = _rate_limit(noise_type, C)
    rate = min(limit + excess * (1 - limit), np.nextafter(1.0, 0.0))  # at 1 the [0, 1) message comes first
    pattern = rf"noise_rate must lie in {re.escape(f'[0, {limit:.4g})')}.*got {re.escape(str(rate))}"
    with pytest.raises(ValueError, match=pattern):
        transition_matrix(noise_type, rate, C)
    with pytest.raises(ValueError, match=pattern):
        gaussian_mixture(np.random.default_rng(0), n=10, m=C, p=1, num_classes=C, noise_rate=rate,
                         noise_type=noise_type)


@pytest.mark.parametrize("noise_type", ["uniform", "Symmetric", "", "asymmetric"])
def test_unknown_noise_type_is_refused_with_the_known_ones(noise_type):
    pattern = re.escape(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    with pytest.raises(ValueError, match=pattern):
        transition_matrix(noise_type, 0.1, 3)
    with pytest.raises(ValueError, match=pattern):
        corrupt_labels(np.zeros(3, dtype=int), 0.1, 3, np.random.default_rng(0), noise_type)
    with pytest.raises(ValueError, match=pattern):
        gaussian_mixture(np.random.default_rng(0), n=10, m=4, p=1, noise_type=noise_type)
    with pytest.raises(ValueError, match=pattern):
        digits(np.random.default_rng(0), n=10, m=10, noise_type=noise_type)


def test_instance_noise_without_inputs_is_refused():
    with pytest.raises(ValueError, match="instance-dependent noise needs the inputs X"):
        corrupt_labels(np.zeros(3, dtype=int), 0.1, 3, np.random.default_rng(0), "instance")


@given(C=st.integers(2, 10), m=st.integers(0, 9), seed=seeds)
def test_fewer_clean_examples_than_classes_is_refused(C, m, seed):
    m = m % C
    with pytest.raises(ValueError, match=rf"^m must be at least {C}, got {m}$"):
        gaussian_mixture(np.random.default_rng(seed), n=20, m=m, p=5, num_classes=C)
    with pytest.raises(ValueError, match=r"^m must be at least 10, got"):
        digits(np.random.default_rng(seed), n=20, m=m)


@pytest.mark.parametrize("argument", ["n", "p", "dim"])
@pytest.mark.parametrize("value", [0, -3])
def test_empty_gaussian_mixture_sets_are_refused(argument, value):
    with pytest.raises(ValueError, match=rf"^{argument} must be at least 1, got {value}$"):
        gaussian_mixture(np.random.default_rng(0), **{argument: value})


@pytest.mark.parametrize("num_classes", [1, 0, -2])
def test_fewer_than_two_classes_is_refused(num_classes):
    with pytest.raises(ValueError, match=rf"num_classes must be at least 2, got {num_classes}"):
        gaussian_mixture(np.random.default_rng(0), num_classes=num_classes, m=4)


@pytest.mark.parametrize("separation, spread, message", [
    (-1.0, 1.0, "separation must be at least 0.0"), (3.0, 0.0, "spread must be > 0"), (3.0, -1.0, "spread must be > 0"),
    (np.nan, 1.0, "separation must be a finite number"), (3.0, np.inf, "spread must be a finite number")])
def test_negative_separation_or_non_positive_spread_is_refused(separation, spread, message):
    with pytest.raises(ValueError, match=message):
        gaussian_mixture(np.random.default_rng(0), separation=separation, spread=spread)


@pytest.mark.parametrize("n, m", [(1700, 97), (1787, 10), (2000, 10)])
def test_digits_sizes_beyond_the_data_set_are_refused(n, m):
    """Digits has 1797 images; the training set must leave a test set."""
    with pytest.raises(ValueError, match=rf"n \+ m must be below {_DIGITS_SIZE}.*got n={n}, m={m}"):
        digits(np.random.default_rng(0), n=n, m=m)


@pytest.mark.parametrize("n, m, message", [(0, 100, "n must be at least 1, got 0"), (-1, 100, "n must be at least 1"),
                                           (10.5, 100, "n must be an integer, got 10.5"),
                                           (100, 20.0001, "m must be an integer")])
def test_sizes_must_be_whole_and_positive(n, m, message):
    for make in (digits, gaussian_mixture):
        with pytest.raises(ValueError, match=re.escape(message)):
            make(np.random.default_rng(0), n=n, m=m)


def test_non_integral_class_counts_are_refused_not_truncated():
    with pytest.raises(ValueError, match="num_classes must be an integer, got 4.7"):
        gaussian_mixture(np.random.default_rng(0), num_classes=4.7)


# ---------------------------------------------------------------------------------------------------------------
# Problem validation


@st.composite
def problem_arrays(draw):
    """Keyword arguments of a valid :class:`Problem` (every class in the clean subset)."""
    C = draw(st.integers(2, 6))
    n, m = draw(st.integers(1, 30)), draw(st.integers(C, C + 10))
    p, d = draw(st.integers(1, 10)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(seeds))
    y_true = rng.integers(0, C, n)
    return dict(X=rng.standard_normal((n, d)), y_noisy=rng.integers(0, C, n), y_true=y_true,
                X_meta=rng.standard_normal((m, d)), y_meta=rng.permutation(np.arange(m) % C),
                X_test=rng.standard_normal((p, d)), y_test=rng.integers(0, C, p), num_classes=C,
                transition=transition_matrix("symmetric", 0.3 * (C - 1) / C, C))


@given(arrays=problem_arrays())
def test_a_valid_problem_is_stored_in_canonical_dtypes(arrays):
    arrays = dict(arrays, X=arrays["X"].astype(np.float32), y_meta=arrays["y_meta"].astype(np.int32))
    problem = Problem(**arrays)
    for field in ("X", "X_meta", "X_test", "transition"):
        assert getattr(problem, field).dtype == np.float64
    for field in ("y_noisy", "y_true", "y_meta", "y_test"):
        assert getattr(problem, field).dtype == np.int64
    n, m, p = problem.sizes
    assert (n, m, p) == (len(arrays["y_true"]), len(arrays["y_meta"]), len(arrays["y_test"]))
    np.testing.assert_array_equal(problem.noisy, arrays["y_noisy"] != arrays["y_true"])
    assert problem.noise_rate == pytest.approx(np.mean(arrays["y_noisy"] != arrays["y_true"]))
    again = Problem.from_arrays(problem.arrays())
    for name, value in problem.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), value)


_LABEL_FIELDS = {"y_noisy": "X", "y_true": "X", "y_meta": "X_meta", "y_test": "X_test"}


@given(arrays=problem_arrays(), field=st.sampled_from(sorted(_LABEL_FIELDS)), change=st.sampled_from([-1, 1]))
def test_labels_of_the_wrong_length_are_refused(arrays, field, change):
    labels = arrays[field]
    labels = np.concatenate([labels, labels[:1]]) if change > 0 else labels[:-1]
    expected = len(arrays[_LABEL_FIELDS[field]])
    with pytest.raises(ValueError, match=re.escape(f"{field} must have shape ({expected},), one label per example, got ({len(labels)},)")):
        Problem(**dict(arrays, **{field: labels}))


@given(arrays=problem_arrays(), field=st.sampled_from(["X_meta", "X_test"]), extra=st.integers(1, 3))
def test_inputs_with_a_different_feature_count_are_refused(arrays, field, extra):
    inputs = np.hstack([arrays[field], np.zeros((len(arrays[field]), extra))])
    d = arrays["X"].shape[1]
    with pytest.raises(ValueError, match=rf"{field} has {d + extra} features, X has {d}"):
        Problem(**dict(arrays, **{field: inputs}))


@given(arrays=problem_arrays(), field=st.sampled_from(["X", "X_meta", "X_test"]))
def test_inputs_that_are_not_non_empty_matrices_are_refused(arrays, field):
    for bad in (arrays[field][:0], arrays[field][:, 0], arrays[field][None]):
        with pytest.raises(ValueError, match=rf"{field} must be a non-empty 2-D array, got shape"):
            Problem(**dict(arrays, **{field: bad}))


@given(arrays=problem_arrays(), field=st.sampled_from(["X", "X_meta", "X_test"]),
       value=st.sampled_from([np.nan, np.inf, -np.inf]), seed=seeds)
def test_non_finite_inputs_are_refused(arrays, field, value, seed):
    inputs = arrays[field].copy()
    rng = np.random.default_rng(seed)
    inputs[rng.integers(inputs.shape[0]), rng.integers(inputs.shape[1])] = value
    with pytest.raises(ValueError, match=rf"{field} contains non-finite values"):
        Problem(**dict(arrays, **{field: inputs}))


@given(arrays=problem_arrays(), field=st.sampled_from(sorted(_LABEL_FIELDS)), above=st.booleans(), seed=seeds)
def test_labels_out_of_range_are_refused(arrays, field, above, seed):
    labels = arrays[field].copy()
    C = arrays["num_classes"]
    labels[np.random.default_rng(seed).integers(len(labels))] = C if above else -1
    with pytest.raises(ValueError, match=rf"{field} must be class indices in \[0, {C}\), got range"):
        Problem(**dict(arrays, **{field: labels}))


@given(arrays=problem_arrays(), field=st.sampled_from(sorted(_LABEL_FIELDS)))
def test_non_integer_labels_are_refused(arrays, field):
    with pytest.raises(ValueError, match=rf"{field} must hold integer class indices"):
        Problem(**dict(arrays, **{field: arrays[field].astype(np.float64)}))


@given(arrays=problem_arrays(), seed=seeds)
def test_a_class_missing_from_the_clean_subset_is_refused(arrays, seed):
    C = arrays["num_classes"]
    missing = int(np.random.default_rng(seed).integers(C))
    y_meta = arrays["y_meta"].copy()
    y_meta[y_meta == missing] = (missing + 1) % C
    with pytest.raises(ValueError, match=re.escape(f"has no example of classes [{missing}]")):
        Problem(**dict(arrays, y_meta=y_meta))


@given(arrays=problem_arrays())
def test_a_transition_of_the_wrong_shape_or_not_row_stochastic_is_refused(arrays):
    C = arrays["num_classes"]
    pattern = re.escape(f"transition must be a ({C}, {C}) row-stochastic matrix")
    for bad in (np.eye(C + 1), np.eye(C)[:, :-1], 0.5 * np.eye(C), np.full((C, C), np.nan)):
        with pytest.raises(ValueError, match=pattern):
            Problem(**dict(arrays, transition=bad))


@pytest.mark.parametrize("num_classes", [1, 0])
def test_problem_with_fewer_than_two_classes_is_refused(num_classes):
    arrays = dict(X=np.zeros((2, 1)), y_noisy=np.zeros(2, int), y_true=np.zeros(2, int), X_meta=np.zeros((1, 1)),
                  y_meta=np.zeros(1, int), X_test=np.zeros((1, 1)), y_test=np.zeros(1, int),
                  num_classes=num_classes, transition=np.eye(max(num_classes, 1)))
    with pytest.raises(ValueError, match=rf"num_classes must be at least 2, got {num_classes}"):
        Problem(**arrays)


def test_a_transition_with_negative_entries_is_refused():
    """Failing input: ``transition=[[1.5, -0.5], [0, 1]]`` (rows sum to 1) is accepted."""
    arrays = dict(X=np.zeros((2, 1)), y_noisy=np.array([0, 1]), y_true=np.array([0, 1]), X_meta=np.zeros((2, 1)),
                  y_meta=np.array([0, 1]), X_test=np.zeros((1, 1)), y_test=np.array([0]), num_classes=2,
                  transition=np.array([[1.5, -0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="transition"):
        Problem(**arrays)


def test_instance_noise_with_inputs_of_the_wrong_length_is_refused():
    """Failing input: ``corrupt_labels(np.zeros(100, int), 0.4, 3, rng, "instance", np.ones((1, 2)))``."""
    with pytest.raises(ValueError, match="X"):
        corrupt_labels(np.zeros(100, dtype=int), 0.4, 3, np.random.default_rng(0), "instance", np.ones((1, 2)))


def test_corrupt_labels_refuses_true_labels_out_of_range():
    """Failing input: ``corrupt_labels(np.array([5, 7]), 0.2, 3, rng)`` returns ``[5, 7]``."""
    with pytest.raises(ValueError, match="y_true"):
        corrupt_labels(np.array([5, 7]), 0.2, 3, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# Generators


@given(n=st.integers(1, 3000), C=st.integers(2, 8), m_extra=st.integers(0, 200), p=st.integers(1, 300),
       dim=st.integers(1, 40), noise_type=st.sampled_from(NOISE_TYPES), fraction=st.floats(0.0, 0.95), seed=seeds)
def test_gaussian_mixture_shapes_norms_balance_and_rate(n, C, m_extra, p, dim, noise_type, fraction, seed):
    m = C + m_extra
    rate = fraction * _rate_limit(noise_type, C)
    problem = gaussian_mixture(np.random.default_rng(seed), n=n, m=m, p=p, num_classes=C, dim=dim,
                               noise_rate=rate, noise_type=noise_type)
    assert problem.sizes == (n, m, p) and problem.num_classes == C
    assert problem.X.shape == (n, dim) and problem.X_meta.shape == (m, dim) and problem.X_test.shape == (p, dim)
    for inputs in (problem.X, problem.X_meta, problem.X_test):
        assert_close(np.linalg.norm(inputs, axis=1), np.full(len(inputs), np.sqrt(dim)))
    # Clean, training and test labels are class-balanced: every count within 1 of size / C.
    for labels, size in ((problem.y_meta, m), (problem.y_true, n), (problem.y_test, p)):
        counts = np.bincount(labels, minlength=C)
        assert counts.sum() == size and np.all(np.abs(counts - size / C) < 1), counts
    if noise_type != "instance":  # instance noise carries its class-conditional law given X
        np.testing.assert_array_equal(problem.transition, transition_matrix(noise_type, rate, C))
    if noise_type != "instance" or n > 1:  # one example ranks 0 under instance noise, whatever the rate
        _assert_binomial(problem.noisy.sum(), n, rate, f"gaussian_mixture {noise_type} noise")


@given(seed=seeds, noise_type=st.sampled_from(NOISE_TYPES))
def test_gaussian_mixture_same_seed_same_problem(seed, noise_type):
    def draw(s):
        return gaussian_mixture(np.random.default_rng(s), n=200, m=20, p=50, noise_type=noise_type, noise_rate=0.3)

    first, second, other = draw(seed), draw(seed), draw(seed + 1)
    for name, value in first.arrays().items():
        np.testing.assert_array_equal(getattr(second, name), value)
    assert first.name == second.name
    assert not np.array_equal(first.X, other.X)


def _rows(inputs):
    return {row.tobytes() for row in np.ascontiguousarray(inputs)}


@given(n=st.integers(1, 1500), m=st.integers(10, 200), noise_type=st.sampled_from(NOISE_TYPES),
       fraction=st.floats(0.0, 0.95), seed=seeds)
def test_digits_shapes_classes_disjoint_sets_and_rate(n, m, noise_type, fraction, seed):
    m = min(m, _DIGITS_SIZE - 1 - n)
    if m < 10:
        n, m = _DIGITS_SIZE - 1 - 10, 10
    rate = fraction * _rate_limit(noise_type, 10)
    problem = digits(np.random.default_rng(seed), n=n, m=m, noise_rate=rate, noise_type=noise_type)
    assert problem.num_classes == 10
    assert problem.sizes == (n, m, _DIGITS_SIZE - n - m)
    assert problem.X.shape[1] == problem.X_meta.shape[1] == problem.X_test.shape[1] == 64
    for inputs in (problem.X, problem.X_meta, problem.X_test):
        assert_close(np.linalg.norm(inputs, axis=1), np.full(len(inputs), 8.0))
    assert np.all(np.abs(np.bincount(problem.y_meta, minlength=10) - m / 10) < 1)
    train, meta, test = _rows(problem.X), _rows(problem.X_meta), _rows(problem.X_test)
    # The 1797 images are distinct, so disjoint index sets mean no row repeats across sets.
    assert len(train) == n and len(meta) == m and len(test) == _DIGITS_SIZE - n - m
    assert not (train & meta) and not (train & test) and not (meta & test)
    if noise_type != "instance":  # instance noise carries its class-conditional law given X
        np.testing.assert_array_equal(problem.transition, transition_matrix(noise_type, rate, 10))
    if noise_type != "instance" or n > 1:
        _assert_binomial(problem.noisy.sum(), n, rate, f"digits {noise_type} noise")


def test_digits_same_seed_same_problem():
    first, second = (digits(np.random.default_rng(7), n=300, m=50) for _ in range(2))
    for name, value in first.arrays().items():
        np.testing.assert_array_equal(getattr(second, name), value)


def test_digits_clean_subset_has_the_requested_size_or_is_refused():
    """Failing input: ``digits(np.random.default_rng(0), n=5, m=1780)`` has 1775 clean examples."""
    try:
        problem = digits(np.random.default_rng(0), n=5, m=1780)
    except ValueError:
        return
    assert problem.sizes[1] == 1780


# --------------------------------------------------------------------------------------------------------------
# The two problem knobs of docs/theory.md section 9: class imbalance, noise inside the clean subset.


@given(C=st.integers(2, 10), size=st.integers(20, 5000), imbalance=st.floats(1.0, 50.0))
def test_imbalanced_class_sizes_are_geometric_with_the_requested_ratio(C, size, imbalance):
    from dynamics.problem import imbalanced_class_sizes

    try:
        sizes = imbalanced_class_sizes(size, C, imbalance)
    except ValueError as error:
        assert "empty" in str(error) and size / C < imbalance  # only a class share below one example empties
        return
    shares = imbalance ** (-np.arange(C) / (C - 1))
    exact = size * shares / shares.sum()  # exact[0] / exact[-1] == imbalance
    assert sizes.sum() == size and sizes.min() >= 1
    assert np.all(np.abs(sizes - exact) < 1)  # each share rounded to a neighbouring integer
    assert np.all(np.diff(sizes) <= 0)


def test_imbalance_one_is_the_balanced_split():
    from dynamics.problem import imbalanced_class_sizes

    assert imbalanced_class_sizes(10, 4, 1.0).tolist() == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="imbalance must be .*1.*got 0.5"):
        imbalanced_class_sizes(10, 4, 0.5)
    with pytest.raises(ValueError, match="leaves class 2 of 10 examples empty"):
        imbalanced_class_sizes(10, 4, 100.0)


@given(seed=seeds, imbalance=st.floats(1.5, 20.0))
def test_an_imbalanced_mixture_has_those_training_classes_and_balanced_clean_and_test_sets(seed, imbalance):
    from dynamics.problem import imbalanced_class_sizes

    problem = gaussian_mixture(np.random.default_rng(seed), n=400, m=40, p=80, noise_rate=0.2, imbalance=imbalance)
    assert np.bincount(problem.y_true, minlength=4).tolist() == imbalanced_class_sizes(400, 4, imbalance).tolist()
    assert np.bincount(problem.y_meta).tolist() == [10] * 4 and np.bincount(problem.y_test).tolist() == [20] * 4
    assert f"imbalance {imbalance:g}" in problem.name


@given(seed=seeds, C=st.integers(2, 10), clean_noise=st.floats(0.05, 0.5))
def test_clean_noise_flips_only_the_clean_labels_at_its_rate(seed, C, clean_noise):
    clean_noise = min(clean_noise, 0.9 * (C - 1) / C)
    m = 2000
    plain = gaussian_mixture(np.random.default_rng(seed), n=50, m=m, p=20, num_classes=C)
    noisy = gaussian_mixture(np.random.default_rng(seed), n=50, m=m, p=20, num_classes=C, clean_noise=clean_noise)
    for name in ("X", "y_noisy", "y_true", "X_meta", "X_test", "y_test", "transition"):
        assert np.array_equal(getattr(plain, name), getattr(noisy, name)), name  # drawn after everything else
    flipped = noisy.y_meta != plain.y_meta
    _assert_binomial(int(flipped.sum()), m, clean_noise, "clean-subset flips")
    assert f"clean noise {clean_noise:g} (realised {flipped.mean():.3f})" in noisy.name


def test_clean_noise_on_digits_and_its_bounds():
    plain = digits(np.random.default_rng(0), n=300, m=200)
    noisy = digits(np.random.default_rng(0), n=300, m=200, clean_noise=0.3)
    assert np.array_equal(plain.y_noisy, noisy.y_noisy) and np.array_equal(plain.X_meta, noisy.X_meta)
    assert 0.15 < np.mean(plain.y_meta != noisy.y_meta) < 0.45
    with pytest.raises(ValueError, match=re.escape("clean_noise must lie in [0, 0.75) for 4 classes")):
        gaussian_mixture(np.random.default_rng(0), n=40, m=8, p=8, clean_noise=0.75)
    with pytest.raises(ValueError, match="clean_noise must be .*got -0.1"):
        gaussian_mixture(np.random.default_rng(0), n=40, m=8, p=8, clean_noise=-0.1)
