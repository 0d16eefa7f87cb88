"""The kernel's sign pattern between and within classes (docs/theory.md section 9): what the paper's separation
assumption asks of the kernel, measured on a problem.

For a block of kernel entries ``k(x_i, u_j)`` between the training examples ``x_i`` (rows) and a reference set
``u_j`` (columns: the clean subset, ``K_VX`` read as ``(n, m)``, or the training set itself, ``K_XX`` without
its diagonal), :func:`block_signs` gives the share of entries that are strictly positive

- ``same_class``: over the pairs whose TRUE classes agree (``y_true_i = y_j``);
- ``different_class``: over the pairs whose true classes differ;
- ``label_signed``: the share of entries whose sign is the one the OBSERVED labels ask for: positive where
  ``y_noisy_i = y_j``, negative where they differ. In the binary setting (targets ``+-1``) this is the share of
  ``y_i y_j k(x_i, u_j) > 0``, the sign of the label-signed similarity of claim C3;

each over all rows (``all``) and split by the row's label (``clean``: ``y_noisy_i = y_true_i``; ``noisy``). A
kernel that separates the classes in sign has ``same_class = 1`` and ``different_class = 0``; then
``label_signed`` is 1 on clean rows, and on noisy rows 0 in the binary case. Beside the entries, one statistic
of whole rows:

- ``class_mean_separates``: the share of rows ``i`` whose mean kernel value over the columns of their own true
  class is strictly the largest of the per-class means (a separation by class means, which a kernel can have
  while every entry is positive: in the binary case with a balanced clean subset it is the sign of
  ``y_true_i sum_j k(x_i, v_j) y_j``, so of ``a_i`` on clean rows and of ``-a_i`` on noisy ones).

Each block is measured twice (:func:`sign_pattern`): on the raw kernel, and on the kernel CENTRED at the
class-balanced mean of the clean subset in feature space (the centring of the surrogate, docs/theory.md
section 6), ``k_c(x, x') = <phi(x) - mu, phi(x') - mu>`` with ``mu = (1/C) sum_c mean_{j: y_j = c} phi(v_j)``:
``k_c(x, x') = k(x, x') - b(x) - b(x') + a^T K_VV a``, ``b(x) = k(x, X_meta) a``, ``a_j = 1 / (C |{j': y_j' =
y_j}|)``. The NTK of a ReLU network with a hidden layer is positive for every pair of inputs that are not
antipodal (arc-cosine kernels), so its raw sign pattern carries no class information; its class means and its
centred entries do.

Above :data:`SUBSAMPLE` training (or clean) examples the blocks are measured on a uniform subsample of that many,
drawn with the fixed seed :data:`SUBSAMPLE_SEED` (whatever the run's seed), and the record says so; the centring
always uses the whole clean subset. Nothing here forms an ``(n, n)`` matrix beyond the subsample.
"""

from __future__ import annotations

import numpy as np

#: Training (and clean) examples measured at most; larger sets are subsampled uniformly.
SUBSAMPLE = 2000
#: Seed of the subsample (fixed, so that every run of a problem measures the same examples).
SUBSAMPLE_SEED = 0
STATISTICS = ("same_class", "different_class", "label_signed", "class_mean_separates")
GROUPS = ("all", "clean", "noisy")
BLOCKS = ("K_VX", "K_XX")
KERNELS = ("raw", "centred")


def _share(hits: np.ndarray, mask: np.ndarray) -> float | None:
    total = int(mask.sum())
    return None if total == 0 else float(np.count_nonzero(hits & mask)) / total


def block_signs(K: np.ndarray, y_noisy: np.ndarray, y_true: np.ndarray | None, y_cols: np.ndarray,
                y_cols_true: np.ndarray | None = None, *, skip_diagonal: bool = False) -> dict:
    """Shares of positive entries of one block, by class agreement and by the row's label (module docstring).

    Parameters
    ----------
    K : (r, c) kernel entries ``k(x_i, u_j)``, rows the training examples.
    y_noisy : (r,) observed labels of the rows.  y_true : (r,) their true labels, or ``None`` when unknown (then
        only ``all.label_signed`` is measured; the rest is ``None``).
    y_cols : (c,) observed labels of the columns (``label_signed``).  y_cols_true : (c,) their true labels (class
        agreement; default ``y_cols``).
    skip_diagonal : leave out the entries ``(i, i)`` (rows and columns are the same examples, ``K_XX``).

    Returns
    -------
    ``{group: {statistic: share or None}}`` for the groups ``all``, ``clean``, ``noisy`` and the statistics
    ``same_class``, ``different_class``, ``label_signed`` (shares of entries) and ``class_mean_separates`` (a
    share of rows); ``None`` where a group or a split has no entry.
    """
    K = np.asarray(K)
    y_cols = np.asarray(y_cols)
    y_cols_true = y_cols if y_cols_true is None else np.asarray(y_cols_true)
    valid = np.ones(K.shape, dtype=bool)
    if skip_diagonal:
        np.fill_diagonal(valid, False)
    positive, negative = K > 0, K < 0
    agree = np.asarray(y_noisy)[:, None] == y_cols[None, :]
    signed = np.where(agree, positive, negative)
    result = {"all": dict.fromkeys(STATISTICS) | {"label_signed": _share(signed, valid)}}
    if y_true is None:
        result |= {group: dict.fromkeys(STATISTICS) for group in ("clean", "noisy")}
        return result
    y_true = np.asarray(y_true)
    same = y_true[:, None] == y_cols_true[None, :]
    clean_rows = (np.asarray(y_noisy) == y_true)[:, None]
    separates = _class_mean_separates(K, valid, y_true, y_cols_true)
    for group, rows in (("all", valid), ("clean", valid & clean_rows), ("noisy", valid & ~clean_rows)):
        members = rows.any(axis=1)
        result[group] = {"same_class": _share(positive, rows & same),
                         "different_class": _share(positive, rows & ~same),
                         "label_signed": _share(signed, rows),
                         "class_mean_separates": _share(separates, members)}
    return result


def _class_mean_separates(K: np.ndarray, valid: np.ndarray, y_true: np.ndarray, y_cols_true: np.ndarray
                          ) -> np.ndarray:
    """``(r,)`` bool: row ``i``'s mean of ``K`` over the valid columns of its true class is strictly larger than
    over those of every other class (classes without a valid column in the row are left out; a row with none of
    its own class does not separate)."""
    classes = np.union1d(y_true, y_cols_true)
    members = (y_cols_true[:, None] == classes[None, :]).astype(np.float64)  # (c, k)
    counts = valid.astype(np.float64) @ members  # (r, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (np.where(valid, K, 0.0) @ members) / counts, -np.inf)
    own = np.searchsorted(classes, y_true)
    own_mean = means[np.arange(len(y_true)), own]
    means[np.arange(len(y_true)), own] = -np.inf
    return (counts[np.arange(len(y_true)), own] > 0) & (own_mean > means.max(axis=1))


def balanced_mean_weights(y_meta: np.ndarray, num_classes: int) -> np.ndarray:
    """``a : (m,)`` with ``a_j = 1 / (C |{j': y_j' = y_j}|)``: ``Psi^T a`` is the class-balanced clean mean ``mu``
    (classes absent from the clean subset are left out of the average)."""
    y_meta = np.asarray(y_meta)
    counts = np.bincount(y_meta, minlength=num_classes).astype(np.float64)
    present = int(np.count_nonzero(counts))
    return 1.0 / (present * counts[y_meta])


def _measure(K_XV, K_XX, K_XV_centred, K_XX_centred, y_noisy, y_true, y_meta) -> dict:
    """:func:`block_signs` of the raw and the centred blocks ``K_XV (r, c)`` (rows training, columns clean) and
    ``K_XX (r, r)`` (the same training examples on both sides)."""
    return {kind: {"K_VX": block_signs(train_clean, y_noisy, y_true, y_meta),
                   "K_XX": block_signs(train_train, y_noisy, y_true, y_noisy, y_true, skip_diagonal=True)}
            for kind, train_clean, train_train in (("raw", K_XV, K_XX), ("centred", K_XV_centred, K_XX_centred))}


def sign_pattern(K_VX: np.ndarray, K_XX: np.ndarray, K_VV: np.ndarray, y_noisy: np.ndarray,
                 y_true: np.ndarray | None, y_meta: np.ndarray, num_classes: int) -> dict:
    """The sign pattern of the dense blocks, raw and centred (module docstring), on every entry.

    Parameters
    ----------
    K_VX : (m, n) clean-train.  K_XX : (n, n) train-train.  K_VV : (m, m) clean-clean.
    y_noisy, y_true : (n,) observed and true training labels (``y_true = None``: unknown).
    y_meta : (m,) clean labels.  num_classes : C.

    Returns
    -------
    ``{"raw": {block: block_signs}, "centred": {block: block_signs}}`` for the blocks ``K_VX`` (rows training,
    columns clean) and ``K_XX`` (off-diagonal).
    """
    K_XV = np.asarray(K_VX, dtype=np.float64).T
    K_XX = np.asarray(K_XX, dtype=np.float64)
    a = balanced_mean_weights(y_meta, num_classes)
    b_train, b_meta = K_XV @ a, np.asarray(K_VV, dtype=np.float64) @ a
    mu_norm = float(a @ b_meta)
    return _measure(K_XV, K_XX, K_XV - b_train[:, None] - b_meta[None, :] + mu_norm,
                    K_XX - b_train[:, None] - b_train[None, :] + mu_norm, y_noisy, y_true, y_meta)


def _subsample(size: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= limit else np.sort(rng.choice(size, limit, replace=False))


def problem_sign_pattern(problem, operator, *, has_y_true: bool = True, limit: int = SUBSAMPLE,
                         seed: int = SUBSAMPLE_SEED) -> dict:
    """``summary.json``'s ``sign_pattern`` of a problem and its kernel operator (the run's own kernel).

    Parameters
    ----------
    problem : a :class:`dynamics.problem.Problem`.
    operator : dense :class:`dynamics.operators.KernelBlocks` (``K_XX``, ``K_VX``, ``K_VV``) or explicit
        features :class:`dynamics.operators.FeatureKernel` (``Phi (n, D)``, ``Psi (m, D)``; the linear kernel,
        its blocks formed on the subsample only).
    has_y_true : whether ``problem.y_true`` is real (a features file may lack it; then only the label-signed
        share over all rows is measured).
    limit, seed : at most ``limit`` training and ``limit`` clean examples are measured, uniform subsamples drawn
        from ``np.random.default_rng(seed)`` beyond that (the centring always uses the whole clean subset).

    Returns
    -------
    ``raw`` and ``centred`` (:func:`sign_pattern`), ``examples`` (the training and clean examples measured, of
    how many, and the subsample's seed, ``None`` when everything was measured), ``binary`` (``+-1`` targets)
    and ``definitions``.
    """
    n, m, _ = problem.sizes
    rng = np.random.default_rng(seed)
    rows, cols = _subsample(n, limit, rng), _subsample(m, limit, rng)
    y_noisy, y_meta = problem.y_noisy[rows], problem.y_meta[cols]
    y_true = problem.y_true[rows] if has_y_true else None
    a = balanced_mean_weights(problem.y_meta, problem.num_classes)
    if hasattr(operator, "Phi"):  # explicit features: the linear kernel, centred in feature space
        Phi, Psi = (np.asarray(operator.Phi, dtype=np.float64)[rows], np.asarray(operator.Psi, dtype=np.float64))
        mu = Psi.T @ a
        Psi = Psi[cols]
        pattern = _measure(Phi @ Psi.T, Phi @ Phi.T, (Phi - mu) @ (Psi - mu).T, (Phi - mu) @ (Phi - mu).T,
                           y_noisy, y_true, y_meta)
    else:
        K_VX = np.asarray(operator.K_VX, dtype=np.float64)
        b_train, b_meta = K_VX.T @ a, np.asarray(operator.K_VV, dtype=np.float64) @ a
        mu_norm = float(a @ b_meta)
        K_XV = K_VX[np.ix_(cols, rows)].T
        K_XX = np.asarray(operator.K_XX[np.ix_(rows, rows)], dtype=np.float64)
        pattern = _measure(K_XV, K_XX, K_XV - b_train[rows, None] - b_meta[None, cols] + mu_norm,
                           K_XX - b_train[rows, None] - b_train[None, rows] + mu_norm, y_noisy, y_true, y_meta)
    subsampled = len(rows) < n or len(cols) < m
    return pattern | {
        "examples": {"train": int(len(rows)), "of_train": int(n), "clean": int(len(cols)), "of_clean": int(m),
                     "subsample_seed": seed if subsampled else None},
        "binary": getattr(problem, "targets", "one-hot") == "signed",
        "definitions": DEFINITIONS,
    }


def config_sign_pattern(config) -> dict:
    """:func:`problem_sign_pattern` of a :class:`phases.experiments.SimulationConfig`'s problem and kernel, without
    simulating: the dense analytic kernel, or the linear kernel of a feature dataset."""
    from dynamics.operators import FeatureKernel, KernelBlocks
    from kernels import kernel

    problem = config.problem()
    if config.on_features:
        return problem_sign_pattern(problem.problem(), FeatureKernel(problem.X, problem.X_meta, problem.X_test),
                                    has_y_true=problem.has_y_true)
    spec = config.kernel_spec()
    return problem_sign_pattern(problem, KernelBlocks.from_problem(problem, lambda a, b: kernel(spec, a, b)))


DEFINITIONS = {
    "share": "share of kernel entries > 0 (label_signed: with the sign the observed labels ask for)",
    "K_VX": "k(x_i, v_j), x_i training (rows), v_j clean (its labels taken as its true classes)",
    "K_XX": "k(x_i, x_k), training pairs i != k",
    "same_class": "pairs whose true classes agree",
    "different_class": "pairs whose true classes differ",
    "label_signed": "k > 0 where the observed labels agree, k < 0 where they differ (binary: y_i y_j k > 0)",
    "class_mean_separates": "share of ROWS whose mean k over the columns of their own true class is strictly the "
                            "largest of the per-class means",
    "groups": "all rows; clean rows (y_noisy = y_true); noisy rows",
    "centred": "k_c(x, x') = <phi(x) - mu, phi(x') - mu>, mu the class-balanced mean of the clean subset in "
               "feature space (docs/theory.md section 6)",
    "examples": f"at most {SUBSAMPLE} training and {SUBSAMPLE} clean examples; beyond, a uniform subsample drawn "
                f"with the fixed seed {SUBSAMPLE_SEED}",
}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def sign_pattern_lines(pattern: dict) -> list[str]:
    """Two lines for the printed report: the clean-train block ``K_VX``, raw and centred, clean / noisy rows."""
    examples = pattern["examples"]
    where = (f"{examples['train']} training x {examples['clean']} clean examples" +
             ("" if examples["subsample_seed"] is None else
              f" (subsample of {examples['of_train']} x {examples['of_clean']}, seed {examples['subsample_seed']})"))
    lines = [f"Kernel sign pattern (docs/theory.md section 9; share of K_VX entries > 0, clean / noisy training "
             f"rows; {where}):"]
    for kind in KERNELS:
        stats = pattern[kind]["K_VX"]
        signed = "y_i y_j k > 0" if pattern["binary"] else "sign as the observed labels ask"
        lines.append(f"  {kind:<8} same class {_fmt(stats['clean']['same_class'])} / "
                     f"{_fmt(stats['noisy']['same_class'])}, different class "
                     f"{_fmt(stats['clean']['different_class'])} / {_fmt(stats['noisy']['different_class'])}; "
                     f"{signed}: {_fmt(stats['clean']['label_signed'])} / {_fmt(stats['noisy']['label_signed'])}; "
                     f"rows whose own class mean is largest: {_fmt(stats['clean']['class_mean_separates'])} / "
                     f"{_fmt(stats['noisy']['class_mean_separates'])}")
    return lines


__all__ = ["BLOCKS", "DEFINITIONS", "GROUPS", "KERNELS", "STATISTICS", "SUBSAMPLE", "SUBSAMPLE_SEED",
           "balanced_mean_weights", "block_signs", "config_sign_pattern", "problem_sign_pattern", "sign_pattern",
           "sign_pattern_lines"]
