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

from dynamics.checks import integer, real

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
        (before row shifting); column ``k`` is class ``classes[k]``.
    alpha0 : the modulation used.
    rule : the weight rule used, one of :data:`RULES`.
    num_classes : C.
    classes : (C,) the class names, the distinct labels of the clean subset,
        sorted (in order of first appearance when they cannot be sorted):
        ``classes[S.argmax(axis=1)]`` maps column indices back to names.
    """

    weights: np.ndarray
    is_label_issue: np.ndarray
    score: np.ndarray
    similarities: np.ndarray
    alpha0: float
    rule: str
    num_classes: int
    classes: np.ndarray

    def __repr__(self) -> str:
        # Whole arrays of n entries would bury the summary; the fields stay one attribute away.
        n = len(self.weights)
        kept = int(np.count_nonzero(self.weights > 0))
        return (f"ReweightResult(n={n}, kept={kept} ({kept / n:.1%}), label_issues={n - kept}, "
                f"mean_weight={float(np.mean(self.weights)):.3f}, classes={_short_list(self.classes)}, "
                f"alpha0={self.alpha0:.4g}, rule={self.rule!r})")


def _short_list(values, head: int = 3) -> str:
    names = np.asarray(values).tolist()  # Python scalars: 'cat', not np.str_('cat')
    if len(names) <= 2 * head:
        return repr(names)
    return f"[{', '.join(map(repr, names[:head]))}, ..., {', '.join(map(repr, names[-head:]))}] ({len(names)})"


# ----------------------------------------------------------------------------- inputs


def _is_sparse(x) -> bool:
    # Without importing scipy: the surrogate alone needs only numpy.
    return type(x).__module__.startswith("scipy.sparse")


def _as_features(name: str, x, *, check_finite: bool = True):
    """``x`` as a checked 2-D float array (not copied when already floating) or a CSR matrix.

    Accepts arrays, nested lists, pandas DataFrames and scipy sparse matrices or arrays. Without
    ``check_finite`` the caller checks its result instead (one pass over ``(n, C)``, not ``(n, D)``) and calls
    :func:`_check_finite` only to name the culprit.
    """
    if _is_sparse(x):
        x = x.tocsr()
        if x.dtype.kind not in "f":
            x = x.astype(np.float64)
    else:
        x = np.asarray(x)
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
        elif x.dtype.kind != "f":
            try:
                x = x.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must hold numbers, got dtype {x.dtype} "
                                 "(encode categorical columns first)") from None
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (examples, features), got shape {x.shape}")
    if check_finite:
        _check_finite(name, x)
    return x


def _check_finite(name: str, x) -> None:
    values = x.data if _is_sparse(x) else x
    # min and max propagate NaN and reach +-inf: a finiteness check without an (n, D) temporary.
    if values.size and not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise ValueError(f"{name} contains non-finite values")


def _label_values(name: str, labels, size: int) -> np.ndarray:
    """``labels`` as a ``(size,)`` array of class names; integer-valued floats become int64.

    Accepts arrays, lists, pandas Series and Categoricals. Missing labels (None, NaN, pandas NA) and
    non-integer floats are a ``ValueError`` naming ``name``.
    """
    values = np.asarray(labels)
    if values.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), one label per example, got {values.shape}")
    kind = values.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contains missing (NaN) or infinite labels")
        if not np.all(values == np.round(values)):
            example = values[values != np.round(values)][0]
            raise ValueError(f"{name} must hold class names or integer class indices, got non-integer numbers "
                             f"such as {example}")
        return values.astype(np.int64)
    if kind == "c":
        raise ValueError(f"{name} must hold class names or integer class indices, got dtype {values.dtype}")
    if kind == "O":
        for value in values.tolist():
            # pandas' NA has no truth value, so test the type before comparing a value with itself (NaN).
            if value is None or type(value).__name__ in ("NAType", "NaTType") or (
                    isinstance(value, float) and value != value):
                raise ValueError(f"{name} contains missing labels ({value!r})")
    return values


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(classes, indices, sorted)``: the distinct values and each value's index among them."""
    try:
        classes, indices = np.unique(values, return_inverse=True)
        return classes, indices.reshape(-1).astype(np.int64), True
    except TypeError:  # names that cannot be ordered (e.g. str and int mixed): first-appearance order
        lookup: dict = {}
        indices = np.array([lookup.setdefault(value, len(lookup)) for value in values.tolist()], dtype=np.int64)
        classes = np.empty(len(lookup), dtype=object)
        classes[:] = list(lookup)
        return classes, indices, False


def _indices_in(values: np.ndarray, classes: np.ndarray, classes_sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, found)``: the index of each of ``values`` in ``classes`` (arbitrary where absent), and whether
    it is there."""
    if classes_sorted and values.dtype.kind == classes.dtype.kind and values.dtype.kind in "iuUS":
        position = classes.searchsorted(values)
        return position, classes.take(position, mode="clip") == values
    lookup = {name: index for index, name in enumerate(classes.tolist())}
    try:
        position = np.array([lookup.get(value, -1) for value in values.tolist()], dtype=np.int64)
    except TypeError:
        raise ValueError("labels must hold hashable class names") from None
    return position, position >= 0


def _encode_meta(meta_values: np.ndarray, num_classes) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(classes (C,), y_meta (m,), sorted)``: the classes are the clean subset's distinct labels."""
    classes, y_meta, classes_sorted = _distinct(meta_values)
    C = len(classes)
    if C < 2:
        raise ValueError(f"num_classes must be at least 2, but meta_labels (the clean subset) holds the single "
                         f"class {classes.tolist()[0]!r}")
    if num_classes is not None and num_classes != C:
        if classes.dtype.kind in "iu" and classes.min() >= 0 and classes.max() < num_classes:
            missing = sorted(set(range(int(num_classes))) - set(classes.tolist()))
            raise ValueError(f"meta_labels (the clean subset) has no example of classes {missing}; "
                             "every class needs at least one")
        raise ValueError(f"num_classes is {num_classes}, but meta_labels (the clean subset) holds {C} classes "
                         f"{_short_list(classes)}")
    return classes, y_meta, classes_sorted


def _encode_training(values: np.ndarray, classes: np.ndarray, classes_sorted: bool) -> np.ndarray:
    """``y (n,)``: each training label's index among the clean classes; a label they lack is a ``ValueError``."""
    y, found = _indices_in(values, classes, classes_sorted)
    if not found.all():
        absent = list(dict.fromkeys(values[~found].tolist()))
        raise ValueError(f"labels hold {len(absent)} class(es) that meta_labels (the clean subset) has no "
                         f"example of, such as {_short_list(absent[:3])}; every training label needs a clean "
                         f"example of its class (clean classes: {_short_list(classes)})")
    return y


def _encode_labels(meta_labels, m: int, num_classes, labels=None, n: int = 0):
    """``(classes (C,), y_meta (m,), y (n,) or None, sorted)``: the classes are the clean subset's distinct labels."""
    if num_classes is not None:
        num_classes = integer("num_classes", num_classes, 2)
    meta_values = _label_values("meta_labels", meta_labels, m)
    values = None if labels is None else _label_values("labels", labels, n)
    classes, y_meta, classes_sorted = _encode_meta(meta_values, num_classes)
    y = None if values is None else _encode_training(values, classes, classes_sorted)
    return classes, y_meta, y, classes_sorted


def _check_aligned(labels_name: str, labels, features_name: str, features) -> None:
    """Pandas inputs are paired by position: refuse two pandas indexes that disagree."""
    index, other = getattr(labels, "index", None), getattr(features, "index", None)
    if index is None or other is None or not hasattr(index, "equals") or not hasattr(other, "equals"):
        return
    if not index.equals(other):
        raise ValueError(f"{labels_name} and {features_name} are pandas objects with different indexes; rows are "
                         f"paired by position, so align them first (e.g. {labels_name}.loc[{features_name}.index])")


def _validated(features, meta_features, meta_labels, num_classes, labels=None):
    """``(Phi, Psi, y_meta, y, C, classes)``: checked features and class indices; every label has clean examples."""
    Phi = _as_features("features", features)
    Psi = _as_features("meta_features", meta_features)
    if Phi.shape[1] != Psi.shape[1]:
        raise ValueError(f"meta_features has {Psi.shape[1]} features per example, features has {Phi.shape[1]}")
    classes, y_meta, y, _ = _encode_labels(meta_labels, Psi.shape[0], num_classes, labels, Phi.shape[0])
    return Phi, Psi, y_meta, y, len(classes), classes


def _times(Phi, matrix: np.ndarray, block_rows: int) -> np.ndarray:
    """``Phi @ matrix`` in float64, ``(n, k)``, with no ``(n, D)`` temporary."""
    if _is_sparse(Phi):
        return np.asarray(Phi @ matrix)
    if Phi.dtype == np.float64:
        return Phi @ matrix
    # numpy would cast the whole of a float32 Phi to float64 first: do it a block of rows at a time.
    out = np.empty((len(Phi), matrix.shape[1]))
    for start in range(0, len(Phi), block_rows):
        out[start:start + block_rows] = Phi[start:start + block_rows].astype(np.float64) @ matrix
    return out


def _dense_rows(Phi, start: int, stop: int) -> np.ndarray:
    block = Phi[start:stop]
    return block.toarray() if _is_sparse(block) else np.asarray(block, dtype=np.float64)


def _clean_means(Psi, y_meta, C, block_rows):
    """``(class_average (m, C), mu (D,), class_means (C, D))`` of the clean features (section 6, step 1)."""
    one_hot = np.eye(C)[y_meta]
    class_average = one_hot / one_hot.sum(axis=0)  # (m, C): column k averages over clean class k
    class_means = _times(Psi.T, class_average, block_rows).T if _is_sparse(Psi) else class_average.T @ Psi  # (C, D)
    mu = class_means.mean(axis=0)  # class-balanced, so an unbalanced clean subset does not tilt the centre
    return class_average, mu, class_means


def _linear_clean_side(Psi, y_meta, C, block_rows):
    """``(directions (D, C), offset (C,))`` with ``S = Phi @ directions - offset`` for the linear kernel.

    ``(Phi - mu) @ (M - mu).T = Phi @ (M - mu).T - mu @ (M - mu).T``: the centring is a rank-one correction, so
    the centred ``(n, D)`` copy is never formed (memory ``O(D C)`` beyond inputs and output).
    """
    _, mu, class_means = _clean_means(Psi, y_meta, C, block_rows)
    directions = (class_means - mu).T  # (D, C)
    with np.errstate(over="ignore", invalid="ignore"):
        offset = mu @ directions
    return directions, offset


def _linear_similarities(Phi, directions, offset, block_rows):
    """``S = Phi @ directions - offset``, ``(n, C)`` float64; refuses an overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        S = _times(Phi, directions, block_rows)
        S -= offset
    if not np.all(np.isfinite(S)):
        _check_finite("features", Phi)  # not checked by the caller: NaN or inf in Phi make S non-finite too
        raise ValueError("features are so large that their similarities overflow float64; rescale them "
                         "(the weights do not change under scaling)")
    return S


def _class_similarities(Phi, Psi, y_meta, C, kernel, block_rows):
    if kernel is None:
        return _linear_similarities(Phi, *_linear_clean_side(Psi, y_meta, C, block_rows), block_rows)
    class_average, mu, _ = _clean_means(Psi, y_meta, C, block_rows)
    Psi_c = (Psi.toarray() if _is_sparse(Psi) else np.asarray(Psi, dtype=np.float64)) - mu
    S = np.empty((Phi.shape[0], C))
    for start in range(0, Phi.shape[0], block_rows):
        block = _dense_rows(Phi, start, start + block_rows) - mu
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
    and each row of ``S`` sums to 0 over classes (C11). The centring is
    folded into a rank-one correction, ``S = Phi @ (M - mu).T - mu @ (M -
    mu).T``, so neither is the centred ``(n, D)`` copy: memory beyond the
    inputs and the output is ``O(D C)`` (plus ``O(block_rows D)`` for
    features that are not float64), and sparse ``features`` stay sparse.

    Parameters
    ----------
    features : (n, D) training features ``Phi``: an array, a pandas
        DataFrame or a scipy sparse matrix.
    meta_labels : (m,) clean labels, class names of any hashable kind
        (integers, integer-valued floats, strings, ...); the classes are
        their distinct values, sorted, and are the columns of ``S``.
    meta_features : (m, D) clean features ``Psi``.
    num_classes : None, or C as a check: the number of distinct clean labels.
    kernel : None for the linear kernel, else a callable ``kernel(a, b)``
        returning the ``(len(a), len(b))`` kernel matrix, e.g.
        ``functools.partial(kernels.kernel, KernelSpec())`` for the NTK.
    block_rows : rows of ``features`` per kernel call (or per float64 cast);
        memory is ``O(block_rows * m)`` beyond the output.

    Returns
    -------
    S : (n, C) float64, column ``k`` for the ``k``-th sorted clean class.
    """
    Phi, Psi, y_meta, _, C, _ = _validated(features, meta_features, meta_labels, num_classes)
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
    # Keep only the (n,) runner-up, so that the (n, C) partitioned copy is freed before the shifted one exists.
    runner_up = np.partition(S, -2, axis=1)[:, -2].copy()
    own = S[np.arange(len(S)), labels] - runner_up
    if alpha0 == 0:  # the other classes have no weight: no need to shift them
        return own
    return own - alpha0 * ((S - runner_up[:, None]).sum(axis=1) - own)


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
    least_negative = -np.max(d, where=d < 0, initial=-np.inf)
    if least_negative == np.inf:  # no negative score
        return (d > 0).astype(np.float64)
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


@dataclasses.dataclass(frozen=True, eq=False)
class CleanReference:
    """The clean subset's side of the linear-kernel surrogate, computed once (docs/theory.md section 6, steps 1-2).

    With the clean class means ``M (C, D)`` and their class-balanced mean
    ``mu``, the centred similarities of any features ``Phi (n, D)`` are
    ``S = Phi @ directions - offset``, ``directions = (M - mu).T`` and
    ``offset = mu @ directions``. :func:`reweight` computes these from the
    clean subset on every call; build them once with :func:`clean_reference`
    (once per epoch when the features are a network's, as the reference code
    does) and weight any number of batches with :meth:`reweight`, which gives
    :func:`reweight`'s result on the same inputs bit for bit.

    Attributes
    ----------
    classes : (C,) the class names, as :attr:`ReweightResult.classes`.
    directions : (D, C) float64.
    offset : (C,) float64.
    classes_sorted : whether ``classes`` are sorted (labels are then looked up by binary search).
    """

    classes: np.ndarray
    directions: np.ndarray
    offset: np.ndarray
    classes_sorted: bool = True

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.classes)

    def __repr__(self) -> str:
        return f"CleanReference(D={self.directions.shape[0]}, classes={_short_list(self.classes)})"

    def similarities(self, features) -> np.ndarray:
        """``S (n, C)`` float64 of ``features (n, D)`` (an array, a DataFrame or a scipy sparse matrix)."""
        return _linear_similarities(self._features(features), self.directions, self.offset, _BLOCK_ROWS)

    def _features(self, features):
        Phi = _as_features("features", features, check_finite=False)  # S's finiteness check covers Phi's
        if Phi.shape[1] != self.directions.shape[0]:
            raise ValueError(f"features has {Phi.shape[1]} features per example, the clean subset (meta_features) "
                             f"has {self.directions.shape[0]}")
        return Phi

    def reweight(self, labels, features, *, alpha0: float | None = None, rule: str = "reference") -> ReweightResult:
        """:func:`reweight` of ``labels (n,)`` and ``features (n, D)`` against this clean subset (linear kernel).

        ``labels`` must be classes of :attr:`classes`; ``alpha0`` and ``rule`` as in :func:`reweight`.
        Costs ``O(n D C)``; nothing of the clean subset is recomputed.
        """
        _check_aligned("labels", labels, "features", features)
        Phi = self._features(features)
        y = _encode_training(_label_values("labels", labels, Phi.shape[0]), self.classes, self.classes_sorted)
        alpha0, rule = _checked_rule(alpha0, rule, self.num_classes)
        S = _linear_similarities(Phi, self.directions, self.offset, _BLOCK_ROWS)
        return _result(S, y, alpha0, rule, self.num_classes, self.classes)


def clean_reference(meta_labels, meta_features, *, num_classes: int | None = None) -> CleanReference:
    """The clean subset's class directions for the linear kernel, once: :class:`CleanReference`.

    ``clean_reference(meta_labels, meta_features).reweight(labels, features, ...)`` equals
    ``reweight(labels, features, meta_labels, meta_features, ...)``; the clean side costs ``O(m D C)`` once
    instead of on every call (every mini-batch in :func:`dynamics.recipes.surrogate_batch_weights`).

    Parameters
    ----------
    meta_labels : (m,) clean labels; their distinct values are the classes.
    meta_features : (m, D) clean features: an array, a pandas DataFrame or a scipy sparse matrix.
    num_classes : None, or C as a check.
    """
    _check_aligned("meta_labels", meta_labels, "meta_features", meta_features)
    Psi = _as_features("meta_features", meta_features)
    classes, y_meta, _, classes_sorted = _encode_labels(meta_labels, Psi.shape[0], num_classes)
    directions, offset = _linear_clean_side(Psi, y_meta, len(classes), _BLOCK_ROWS)
    return CleanReference(classes, directions, offset, classes_sorted)


def _checked_rule(alpha0, rule, C):
    alpha0 = 1.0 / (C - 1) if alpha0 is None else real("alpha0", alpha0, 0.0)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return alpha0, rule


def _result(S, y, alpha0, rule, C, classes) -> ReweightResult:
    d = modulated_scores(S, y, alpha0)
    w = weights_from_scores(d, rule)
    return ReweightResult(w, w == 0, d, S, alpha0, rule, C, classes)


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
    labels : (n,) observed (possibly noisy) labels: class names of any
        hashable kind (integers, integer-valued floats, strings, a pandas
        Series or Categorical), each one a class of the clean subset.
    features : (n, D) training features (inputs or a network's embeddings):
        an array, a pandas DataFrame or a scipy sparse matrix (kept sparse on
        the linear path).
    meta_labels : (m,) clean labels, of the same kind as ``labels``; their
        distinct values are the classes (``result.classes``), so labels
        numbered ``1..C``, or names, need no re-coding.
    meta_features : (m, D) clean features.
    num_classes : None, or C as a check: the number of distinct clean labels.
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
        Naming the argument: wrong shapes, unequal feature counts, missing or
        non-integer float labels, a training label absent from the clean
        subset, fewer than two clean classes, non-numeric, non-finite or empty
        features, pandas inputs whose indexes disagree, a bad ``alpha0`` or
        ``rule``.

    Notes
    -----
    Pandas inputs are paired by position; when a label Series and a feature
    DataFrame both carry an index, the two must be equal. To weight many
    batches against one clean subset, build its side once with
    :func:`clean_reference` and call :meth:`CleanReference.reweight` (same
    result, without recomputing the clean class means on every call).

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

    Class names need no re-coding; the result carries them:

    >>> named = reweight(["cat", "cat", "dog", "dog"], features, ["cat", "dog"], meta_features)
    >>> named
    ReweightResult(n=4, kept=3 (75.0%), label_issues=1, mean_weight=0.667, classes=['cat', 'dog'], alpha0=1, rule='reference')
    >>> named.classes[named.similarities.argmax(axis=1)]
    array(['cat', 'cat', 'dog', 'cat'], dtype='<U3')
    """
    _check_aligned("labels", labels, "features", features)
    _check_aligned("meta_labels", meta_labels, "meta_features", meta_features)
    Phi, Psi, y_meta, y, C, classes = _validated(features, meta_features, meta_labels, num_classes, labels)
    alpha0, rule = _checked_rule(alpha0, rule, C)
    return _result(_class_similarities(Phi, Psi, y_meta, C, kernel, _BLOCK_ROWS), y, alpha0, rule, C, classes)
