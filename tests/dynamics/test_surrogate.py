"""The surrogate reweighter and the C11 identities (docs/theory.md section 6), in float64.

Every identity is checked against an oracle written independently of
``dynamics.surrogate``: the explicit ``(n, m)`` kernel matrix averaged per
class with plain loops, a brute-force row shift, the procedural weight rule.
"""

import dataclasses
import doctest
import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tolerance import assert_close

import dynamics.surrogate
from dynamics.problem import gaussian_mixture
from dynamics.surrogate import (
    RULES,
    ReweightResult,
    alpha0_schedule,
    class_similarities,
    clean_reference,
    modulated_scores,
    reweight,
    sign_agreement,
    weights_from_scores,
)
from kernels.infinite import KernelSpec, kernel


@st.composite
def problems(draw):
    """``(labels (n,), features (n, D), meta_labels (m,), meta_features (m, D), C)``, every class clean."""
    C = draw(st.integers(2, 6))
    n, m, D = draw(st.integers(1, 25)), draw(st.integers(C, C + 15)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    meta_labels = rng.permutation(np.arange(m) % C)
    return rng.integers(0, C, n), rng.standard_normal((n, D)), meta_labels, rng.standard_normal((m, D)), C


def _similarities_by_loops(features, meta_features, meta_labels, C, k=np.dot):
    class_means = [np.mean(meta_features[meta_labels == c], axis=0) for c in range(C)]
    mu = np.mean(class_means, axis=0)
    K = np.array([[k(phi - mu, psi - mu) for psi in meta_features] for phi in features])  # (n, m)
    return np.stack([np.mean(K[:, meta_labels == c], axis=1) for c in range(C)], axis=1)


def _modulated_by_loops(S, labels, alpha0):
    d = []
    for row, y in zip(S, labels):
        second = sorted(row)[-2]
        shifted = [s - second for s in row]
        d.append(shifted[y] - alpha0 * sum(s for k, s in enumerate(shifted) if k != y))
    return np.array(d)


def _reference_by_procedure(d):
    """The paper's code, step by step: every weight starts at 1/2; over the negative scores the step that brings
    score j to 0 is ``t_j = 0.5 / |d_j|``; sorted, the LARGEST is taken (every negative example reaches 0);
    weights move by ``t * d``, are clipped to [0, 1], and those ``<= 1/2`` are zeroed."""
    negative = [x for x in d if x < 0]
    if not negative:
        return np.array([1.0 if x > 0 else 0.0 for x in d])
    step = sorted(0.5 / abs(x) for x in negative)[-1]
    clipped = [min(max(0.5 + step * x, 0.0), 1.0) for x in d]
    return np.array([0.0 if w <= 0.5 else w for w in clipped])


@given(problems())
def test_class_similarities_equal_explicit_kernel_matrix_and_rows_sum_to_zero(problem):
    labels, features, meta_labels, meta_features, C = problem
    S = class_similarities(features, meta_labels, meta_features, C)
    assert S.shape == (len(features), C)
    assert_close(S, _similarities_by_loops(features, meta_features, meta_labels, C))
    assert_close(S.sum(axis=1), np.zeros(len(S)))


@given(problems(), st.integers(1, 7))
def test_linear_path_equals_generic_kernel_path(problem, block_rows):
    labels, features, meta_labels, meta_features, C = problem
    linear = class_similarities(features, meta_labels, meta_features, C)
    generic = class_similarities(features, meta_labels, meta_features, C, lambda a, b: a @ b.T, block_rows=block_rows)
    assert_close(generic, linear)


@given(problems(), st.floats(0.0, 2.0))
def test_modulated_scores_equal_brute_force_row_shift(problem, alpha0):
    labels, features, meta_labels, meta_features, C = problem
    S = class_similarities(features, meta_labels, meta_features, C)
    assert_close(modulated_scores(S, labels, alpha0), _modulated_by_loops(S, labels, alpha0))


@given(problems())
def test_alpha0_one_over_c_minus_one_makes_shift_void_and_d_proportional_to_own_similarity(problem):
    labels, features, meta_labels, meta_features, C = problem
    S = class_similarities(features, meta_labels, meta_features, C)
    alpha0 = 1 / (C - 1)
    d = modulated_scores(S, labels, alpha0)
    own = S[np.arange(len(S)), labels]
    unshifted = own - alpha0 * (S.sum(axis=1) - own)
    assert_close(d, unshifted)
    assert_close(d, C / (C - 1) * own)


@given(problems())
def test_alpha0_zero_gives_top1_minus_top2_margin(problem):
    labels, features, meta_labels, meta_features, C = problem
    S = class_similarities(features, meta_labels, meta_features, C)
    d = modulated_scores(S, labels, 0.0)
    strict_argmax = np.array([all(row[y] > row[k] for k in range(C) if k != y) for row, y in zip(S, labels)])
    np.testing.assert_array_equal(d > 0, strict_argmax)
    top = np.sort(S, axis=1)
    assert_close(d[strict_argmax], (top[:, -1] - top[:, -2])[strict_argmax])


# Magnitudes in [1e-3, 1e3]: the procedure adds d * step to 1/2, which rounds a relatively tiny d > 0 to
# exactly 1/2 and then zeroes it, where the closed form (exact arithmetic) keeps 1/2.
finite_scores = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


@given(st.lists(finite_scores, min_size=1, max_size=30))
def test_reference_rule_closed_form_equals_procedure(d):
    d = np.array(d)
    w = weights_from_scores(d)
    assert_close(w, _reference_by_procedure(d))
    assert np.all((w >= 0) & (w <= 1))
    np.testing.assert_array_equal(weights_from_scores(d, "sign"), (d > 0).astype(float))


@pytest.mark.parametrize("rule", ["reference", "sign"])
@given(
    problem=problems(),
    # A subnormal alpha0 times a scaled similarity can round to 0 and flip the sign of d.
    alpha0=st.one_of(st.just(0.0), st.floats(1e-3, 1.0)),
    offset_scale=st.floats(0.0, 10.0),
    scale=st.floats(1e-2, 1e2),
    seed=st.integers(0, 2**32 - 1),
)
def test_weights_invariant_to_translation_rotation_scaling_and_class_names(rule, problem, alpha0, offset_scale, scale, seed):
    labels, features, meta_labels, meta_features, C = problem
    rng = np.random.default_rng(seed)
    D = features.shape[1]
    offset = offset_scale * rng.standard_normal(D)
    rotation = np.linalg.qr(rng.standard_normal((D, D)))[0]
    renaming = rng.permutation(C)
    base = reweight(labels, features, meta_labels, meta_features, alpha0=alpha0, rule=rule)
    transformed = {
        "translation": (labels, features + offset, meta_labels, meta_features + offset),
        "rotation": (labels, features @ rotation, meta_labels, meta_features @ rotation),
        "scaling": (labels, scale * features, meta_labels, scale * meta_features),
        "class names": (renaming[labels], features, renaming[meta_labels], meta_features),
    }
    for name, args in transformed.items():
        # d / min|d_j < 0| divides rounding errors of order eps * max|d| by min|d_j < 0|.
        assert_close(reweight(*args, alpha0=alpha0, rule=rule).weights, base.weights, atol=1e-8, err_msg=name)


@given(problems(), st.integers(0, 2**32 - 1))
def test_weights_equivariant_to_training_order_and_invariant_to_clean_order(problem, seed):
    labels, features, meta_labels, meta_features, C = problem
    rng = np.random.default_rng(seed)
    order, meta_order = rng.permutation(len(labels)), rng.permutation(len(meta_labels))
    base = reweight(labels, features, meta_labels, meta_features)
    permuted = reweight(labels[order], features[order], meta_labels[meta_order], meta_features[meta_order])
    assert_close(permuted.weights, base.weights[order])
    assert_close(permuted.score, base.score[order])


@given(problems())
def test_result_fields_are_consistent(problem):
    labels, features, meta_labels, meta_features, C = problem
    result = reweight(labels, features, meta_labels, meta_features, num_classes=C)
    assert result.alpha0 == 1 / (C - 1) and result.num_classes == C
    assert np.all((result.weights >= 0) & (result.weights <= 1))
    np.testing.assert_array_equal(result.is_label_issue, result.weights == 0)
    assert_close(result.score, modulated_scores(result.similarities, labels, result.alpha0))


def test_ntk_kernel_path_gives_weights_in_unit_interval():
    problem = gaussian_mixture(np.random.default_rng(0), n=60, m=20, p=1, dim=8)
    ntk = functools.partial(kernel, KernelSpec())
    result = reweight(problem.y_noisy, problem.X, problem.y_meta, problem.X_meta, kernel=ntk)
    assert np.all(np.isfinite(result.score))
    assert np.all((result.weights >= 0) & (result.weights <= 1))
    S = _similarities_by_loops(problem.X[:5], problem.X_meta, problem.y_meta, problem.num_classes,
                               lambda a, b: ntk(a[None], b[None])[0, 0])
    assert_close(result.similarities[:5], S)


def test_alpha0_schedule():
    assert [alpha0_schedule(epoch, 5, warmup_epochs=2) for epoch in range(4)] == [0.25, 0.25, 0.0, 0.0]


def test_docstring_example():
    assert doctest.testmod(dynamics.surrogate).failed == 0


_VALID = dict(labels=np.array([0, 1, 2]), features=np.ones((3, 2)), meta_labels=np.array([0, 1, 2]),
              meta_features=np.eye(3)[:, :2])


@pytest.mark.parametrize("change, argument", [
    (dict(features=np.ones(3)), "features"),
    (dict(features=np.ones((0, 2)), labels=np.array([], dtype=int)), "features"),
    (dict(features=np.array([[np.nan, 0.0]] * 3)), "features"),
    (dict(meta_features=np.full((3, 2), np.inf)), "meta_features"),
    (dict(meta_features=np.ones((0, 2)), meta_labels=np.array([], dtype=int)), "meta_features"),
    (dict(meta_features=np.ones((3, 3))), "meta_features"),
    (dict(labels=np.array([0, 1])), "labels"),
    (dict(labels=np.array([0.0, 0.5, 2.0])), "labels"),
    (dict(labels=np.array([0.0, np.nan, 2.0])), "labels"),
    (dict(labels=np.array(["a", None, "b"], dtype=object)), "labels"),
    (dict(labels=np.array(["a", float("nan"), "b"], dtype=object)), "labels"),
    (dict(labels=np.array([0, -1, 2])), "labels"),
    (dict(labels=np.array([0, 1, 3]), num_classes=3), "labels"),
    # A training label (2) that the clean subset lacks: the classes are the clean subset's, so labels is at fault.
    (dict(meta_labels=np.array([0, 1, 1])), "labels"),
    (dict(meta_labels=np.array([0, 1, 1]), labels=np.array([0, 1, 1]), num_classes=3), "meta_labels"),
    (dict(num_classes=4), "meta_labels"),
    (dict(meta_labels=np.array(["a", "b", "c"]), labels=np.array(["a", "b", "c"]), num_classes=2), "num_classes"),
    (dict(features=np.array([["x", "y"]] * 3)), "features"),
    (dict(meta_labels=np.array([0, 1])), "meta_labels"),
    (dict(labels=np.zeros(3, dtype=int), meta_labels=np.zeros(3, dtype=int)), "num_classes"),
    (dict(alpha0=-1.0), "alpha0"),
    (dict(alpha0=np.nan), "alpha0"),
    (dict(rule="soft"), "rule"),
    (dict(kernel=lambda a, b: np.ones((len(a), len(b) + 1))), "kernel"),
])
def test_invalid_inputs_raise_value_error_naming_the_argument(change, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        reweight(**{**_VALID, **change})


@pytest.mark.parametrize("seed", range(5))
def test_surrogate_score_agrees_in_sign_with_initial_meta_gradient(seed):
    """C3/C11 link on the default mixture, linear kernel on class-balanced centred features.

    ``a_i = sum_j k(x_i, x^v_j) <e(y_i), e(y^v_j)> = m_{y_i} S[i, y_i]`` and, at
    ``alpha0 = 1/(C-1)``, ``d_i = C/(C-1) S[i, y_i]``: the signs agree for every
    example, so the justified threshold is 1. Later (``alpha0 = 0``) ``d_i > 0``
    means ``y_i`` is the arg-max of a row summing to 0, hence ``a_i > 0``; the
    converse fails for labels with positive but not top similarity, so that
    agreement is only reported (0.80-0.87 over seeds 0-39).
    """
    problem = gaussian_mixture(np.random.default_rng(seed))
    C = problem.num_classes
    class_means = [problem.X_meta[problem.y_meta == c].mean(axis=0) for c in range(C)]
    mu = np.mean(class_means, axis=0)
    k_meta_train = (problem.X - mu) @ (problem.X_meta - mu).T
    a = np.sum(k_meta_train * (np.eye(C)[problem.y_noisy] @ np.eye(C)[problem.y_meta].T), axis=1)
    result = reweight(problem.y_noisy, problem.X, problem.y_meta, problem.X_meta)
    late_score = modulated_scores(result.similarities, problem.y_noisy, 0.0)
    rate, late_rate = sign_agreement(result.score, a), sign_agreement(late_score, a)
    print(f"seed {seed}: sign agreement {rate:.3f} at alpha0=1/(C-1), {late_rate:.3f} at alpha0=0")
    assert rate == 1.0
    assert np.all(a[late_score > 0] > 0)


# ----------------------------------------------------------------------------- what a practitioner has


@given(problems(), st.integers(0, 2**32 - 1))
def test_class_names_of_any_kind_give_the_integer_coded_result_and_come_back_in_result_classes(problem, seed):
    labels, features, meta_labels, meta_features, C = problem
    rng = np.random.default_rng(seed)
    base = reweight(labels, features, meta_labels, meta_features)
    names = np.array([f"class {k}" for k in rng.permutation(100)[:C]])
    codings = {
        "integer-valued floats": (labels.astype(float), meta_labels.astype(float)),
        "numbered 1..C": (labels + 1, meta_labels + 1),
        "sparse integers": (10 * labels - 7, 10 * meta_labels - 7),
        "strings": (names[labels], names[meta_labels]),
        "strings as objects": (names[labels].astype(object), names[meta_labels].astype(object)),
        "python lists": (names[labels].tolist(), names[meta_labels].tolist()),
    }
    for coding, (named_labels, named_meta) in codings.items():
        result = reweight(named_labels, features, named_meta, meta_features)
        assert_close(result.weights, base.weights, atol=1e-8, err_msg=coding)
        assert_close(result.score, base.score, atol=1e-8, err_msg=coding)
        # The classes are the clean subset's distinct names, sorted; column k of S is classes[k].
        distinct = sorted(set(np.asarray(named_meta).tolist()))
        assert result.classes.tolist() == distinct, coding
        code_of = dict(zip(np.asarray(named_meta).tolist(), meta_labels.tolist()))
        order = [code_of[name] for name in distinct]
        assert_close(result.similarities, base.similarities[:, order], atol=1e-12, err_msg=coding)
        assert result.num_classes == C


def test_unorderable_names_keep_first_appearance_order():
    features, meta_features = np.array([[2.0, 0.0], [-1.0, 0.0]]), np.array([[1.0, 0.0], [-1.0, 0.0]])
    mixed = reweight(np.array(["b", 1], dtype=object), features, np.array(["b", 1], dtype=object), meta_features)
    coded = reweight([0, 1], features, [0, 1], meta_features)
    assert mixed.classes.tolist() == ["b", 1]
    assert_close(mixed.weights, coded.weights)


def test_a_training_label_absent_from_the_clean_subset_names_it():
    with pytest.raises(ValueError, match=r"^labels hold 1 class\(es\) that meta_labels .* such as \['dog'\]"):
        reweight(["cat", "dog", "cat"], np.ones((3, 2)), ["cat", "bird"], np.eye(2))


def test_pandas_inputs_equal_numpy_inputs_and_misaligned_indexes_are_refused():
    pd = pytest.importorskip("pandas")
    problem = gaussian_mixture(np.random.default_rng(1), n=50, m=20, p=1, dim=5)
    base = reweight(problem.y_noisy, problem.X, problem.y_meta, problem.X_meta)
    names = np.array(["ant", "bee", "cat", "dog"])
    frame = pd.DataFrame(problem.X, columns=[f"f{k}" for k in range(5)], index=np.arange(100, 150))
    labels = pd.Series(names[problem.y_noisy], index=frame.index, dtype="category")
    meta = pd.DataFrame(problem.X_meta)
    result = reweight(labels, frame, pd.Series(names[problem.y_meta]), meta)
    assert_close(result.weights, base.weights)
    assert result.classes.tolist() == names.tolist()
    with pytest.raises(ValueError, match=r"^labels and features are pandas objects with different indexes"):
        reweight(labels.sort_index(ascending=False), frame, problem.y_meta, meta)


@pytest.mark.parametrize("linear", [True, False])
def test_sparse_features_equal_dense_features(linear):
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((40, 12)) * (rng.random((40, 12)) < 0.3)
    meta_dense = rng.standard_normal((12, 12)) * (rng.random((12, 12)) < 0.5)
    labels, meta_labels = rng.integers(0, 3, 40), np.arange(12) % 3
    kernel_ = None if linear else (lambda a, b: (a @ b.T + 1.0) ** 2)
    base = reweight(labels, dense, meta_labels, meta_dense, kernel=kernel_)
    for as_sparse in (sparse.csr_matrix, sparse.csc_array, sparse.coo_matrix):
        result = reweight(labels, as_sparse(dense), meta_labels, as_sparse(meta_dense), kernel=kernel_)
        assert_close(result.similarities, base.similarities, err_msg=as_sparse.__name__)
        assert_close(result.weights, base.weights, err_msg=as_sparse.__name__)
    with pytest.raises(ValueError, match="^features contains non-finite values"):
        reweight(labels, sparse.csr_matrix(np.where(dense != 0, np.inf, 0.0)), meta_labels, meta_dense)


def test_repr_is_one_short_line():
    rng = np.random.default_rng(3)
    result = reweight(rng.integers(0, 50, 20_000), rng.standard_normal((20_000, 4)), np.arange(100) % 50,
                      rng.standard_normal((100, 4)))
    text = repr(result)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("ReweightResult(n=20000, kept=") and "classes=[0, 1, 2, ..., 47, 48, 49] (50)" in text


# ----------------------------------------------------------------------------- centring without the centred copy


def _centred_copy_similarities(features, meta_features, meta_labels, C):
    """The implementation before the rank-one fold: centre an (n, D) copy, then multiply."""
    class_means = np.stack([meta_features[meta_labels == k].mean(axis=0) for k in range(C)])
    mu = class_means.mean(axis=0)
    return (features - mu) @ (class_means - mu).T


@pytest.mark.parametrize("seed", range(3))
def test_rank_one_centring_equals_the_centred_copy_to_1e_12(seed):
    problem = gaussian_mixture(np.random.default_rng(seed), n=2000, m=200, p=1, dim=32, num_classes=5)
    X, X_meta = problem.X + 3.0, problem.X_meta + 3.0  # an offset, so that centring matters
    S_copy = _centred_copy_similarities(X, X_meta, problem.y_meta, 5)
    # Both round the same mathematical quantity differently: agreement to ~1e-12 relative to the scale of S.
    S = class_similarities(X, problem.y_meta, X_meta)
    assert_close(S, S_copy, rtol=0, atol=1e-12 * np.abs(S_copy).max())
    for alpha0 in (0.25, 0.0):
        result = reweight(problem.y_noisy, X, problem.y_meta, X_meta, alpha0=alpha0)
        expected = weights_from_scores(modulated_scores(S_copy, problem.y_noisy, alpha0))
        assert_close(result.weights, expected, rtol=1e-12, atol=1e-12)
    # float32 features: cast a block at a time, same numbers as casting the whole array first.
    S32 = class_similarities(X.astype(np.float32), problem.y_meta, X_meta.astype(np.float32), block_rows=300)
    assert_close(S32, _centred_copy_similarities(X.astype(np.float32).astype(np.float64),
                                                 X_meta.astype(np.float32).astype(np.float64), problem.y_meta, 5),
                 rtol=0, atol=1e-12 * np.abs(S_copy).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_path_allocates_no_copy_of_the_features(dtype):
    """Peak memory of the linear path stays far below one (n, D) float64 array (the centred copy it avoids)."""
    import tracemalloc

    rng = np.random.default_rng(4)
    n, D, C = 10_000, 256, 10
    features = rng.standard_normal((n, D)).astype(dtype)
    meta_features, meta_labels = rng.standard_normal((500, D)).astype(dtype), np.arange(500) % C
    labels = rng.integers(0, C, n)
    tracemalloc.start()
    try:
        reweight(labels, features, meta_labels, meta_features)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_copy = n * D * 8
    # What remains: (n, C) outputs and temporaries, O(D C), one block of rows cast to float64 for float32 input.
    assert peak < one_copy / 3, f"peak {peak / 1e6:.1f} MB against {one_copy / 1e6:.1f} MB for one copy"



def test_reweight_at_n_50000_and_d_512_peaks_under_50_mb_beyond_its_inputs():
    """The issue's check: O(D C) beyond the inputs and the (n, C) outputs; the centred copy alone would be 205 MB."""
    import tracemalloc

    rng = np.random.default_rng(5)
    n, D, C, m = 50_000, 512, 10, 1000
    features = np.tile(rng.standard_normal((1000, D)), (n // 1000, 1))  # a realistic layout, cheaper to draw
    meta_features, meta_labels, labels = rng.standard_normal((m, D)), np.arange(m) % C, rng.integers(0, C, n)
    reference = clean_reference(meta_labels, meta_features)
    for call in (lambda: reweight(labels, features, meta_labels, meta_features),
                 lambda: reference.reweight(labels, features)):
        tracemalloc.start()
        try:
            call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The outputs S (n, C) and the row shift's (n, C) are 4 MB each; the rest is (n,) vectors and O(D C).
        assert peak < 50e6, f"peak {peak / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- the clean side built once


def _assert_same_result(result, expected):
    for field in dataclasses.fields(ReweightResult):
        got, want = getattr(result, field.name), getattr(expected, field.name)
        assert np.array_equal(got, want) and np.asarray(got).dtype == np.asarray(want).dtype, field.name


@given(problems(), st.sampled_from([None, 0.0, 0.3]), st.sampled_from(RULES))
def test_clean_reference_gives_the_result_of_reweight_bit_for_bit(problem, alpha0, rule):
    labels, features, meta_labels, meta_features, C = problem
    expected = reweight(labels, features, meta_labels, meta_features, alpha0=alpha0, rule=rule)
    reference = clean_reference(meta_labels, meta_features, num_classes=C)
    _assert_same_result(reference.reweight(labels, features, alpha0=alpha0, rule=rule), expected)
    assert np.array_equal(reference.similarities(features), expected.similarities)
    assert reference.num_classes == C and reference.directions.shape == (features.shape[1], C)


def test_clean_reference_with_names_float32_offsets_and_sparse_features_equals_reweight():
    sparse = pytest.importorskip("scipy.sparse")
    problem = gaussian_mixture(np.random.default_rng(6), n=1500, m=120, p=1, dim=24, num_classes=5)
    names = np.array(["ant", "bee", "cat", "dog", "eel"])
    X, X_meta = (problem.X + 2.0).astype(np.float32), (problem.X_meta + 2.0).astype(np.float32)
    y, y_meta = names[problem.y_noisy], names[problem.y_meta]
    reference = clean_reference(y_meta, X_meta)
    for features in (X, sparse.csr_matrix(np.where(np.abs(X) > 1.5, X, 0))):
        for alpha0 in (None, 0.0):
            _assert_same_result(reference.reweight(y, features, alpha0=alpha0),
                                reweight(y, features, y_meta, X_meta, alpha0=alpha0))
    assert repr(reference) == "CleanReference(D=24, classes=['ant', 'bee', 'cat', 'dog', 'eel'])"


@pytest.mark.parametrize("build, apply, argument", [
    (dict(meta_labels=[0, 0, 0]), {}, "num_classes"),
    (dict(meta_features=np.full((3, 2), np.nan)), {}, "meta_features"),
    (dict(meta_labels=[0, 1]), {}, "meta_labels"),
    (dict(num_classes=4), {}, "meta_labels"),
    ({}, dict(features=np.ones((3, 3))), "features"),
    ({}, dict(features=np.ones(3)), "features"),
    ({}, dict(labels=[0, 1, 3]), "labels"),
    ({}, dict(labels=[0, 1]), "labels"),
    ({}, dict(alpha0=-1.0), "alpha0"),
    ({}, dict(rule="soft"), "rule"),
])
def test_clean_reference_refuses_bad_inputs_naming_the_argument(build, apply, argument):
    built = dict(meta_labels=_VALID["meta_labels"], meta_features=_VALID["meta_features"])
    applied = dict(labels=_VALID["labels"], features=_VALID["features"])
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        clean_reference(**{**built, **build}).reweight(**{**applied, **apply})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clean_reference_names_non_finite_features_even_where_the_clean_side_ignores_them(bad):
    """CleanReference.reweight checks S, not the (n, D) features; a NaN or inf in features must still be named as
    such, also in a feature the clean classes do not tell apart (a zero row of the directions: inf * 0 = NaN)."""
    meta_features = np.column_stack([np.eye(3)[:, :2], np.full(3, 5.0)])  # column 2: the same for every class
    reference = clean_reference(np.arange(3), meta_features)
    assert not reference.directions[2].any()
    for column in range(3):
        features = np.ones((4, 3))
        features[1, column] = bad
        with pytest.raises(ValueError, match="^features contains non-finite values"):
            reference.reweight(np.array([0, 1, 2, 0]), features)


def test_surrogate_imports_and_runs_with_numpy_alone():
    """The lightweight install: dynamics.surrogate needs neither torch, JAX, neural-tangents, pandas, scipy nor
    scikit-learn (the ``kernels`` package itself loads nothing heavy until a kernel is asked for)."""
    import subprocess
    import sys

    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "jax", "jaxlib", "neural_tangents", "pandas", "scipy", "sklearn",
                                  "matplotlib"} or name in {"kernels.infinite", "kernels.empirical", "kernels._nt"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from dynamics import reweight
r = reweight(["a", "b", "a"], np.eye(3)[:, :2], ["a", "b"], np.eye(2))
print(r.classes.tolist(), r.weights.tolist())
"""
    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.dirname(
        __import__("os").path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("['a', 'b']")


def test_features_whose_similarities_overflow_are_refused_not_flagged():
    features = np.full((6, 2), 1e200)
    features[:, 1] = np.arange(6) * 1e200
    with pytest.raises(ValueError, match="overflow float64; rescale them"):
        reweight(np.array([0, 1, 0, 1, 0, 1]), features, np.array([0, 1]), features[:2])
