"""Noisy-label problems: a validated container, noise models, and generators.

A :class:`Problem` holds what docs/theory.md section 0 names: training inputs with
observed (noisy) and true labels, a small clean ("meta") subset and a test
set. The noise mask ``y_noisy != y_true`` is for scoring only; no method reads
it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dynamics.checks import integer, real

NOISE_TYPES = ("symmetric", "pair", "instance")
#: How labels become the regression targets of the network's outputs (docs/theory.md sections 0 and 9):
#: ``one-hot``, ``C`` outputs and the row ``e(y)``; ``signed``, the binary setting of the paper's theory, two
#: classes on ONE output with targets ``+1`` (class 0) and ``-1`` (class 1).
TARGETS = ("one-hot", "signed")


def target_codebook(targets: str, num_classes: int) -> np.ndarray:
    """``(C, K)`` float64: row ``c`` is the target of class ``c`` on the ``K`` outputs (one-hot: ``I_C``;
    signed: ``[[+1], [-1]]``, ``C = 2``, ``K = 1``).

    Decoding is the other way round: the predicted class of an output ``f (K,)`` is ``argmax_c <code_c, f>``,
    i.e. the argmax of ``f`` for one-hot targets and the sign of ``f`` for signed ones (class 0 when ``f >= 0``).
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if targets == "one-hot":
        return np.eye(num_classes)
    if num_classes != 2:
        raise ValueError(f"signed (+-1) targets are for two classes, got {num_classes}")
    return np.array([[1.0], [-1.0]])


def class_labels(name: str, labels, size: int, num_classes: int | None = None) -> np.ndarray:
    """``labels`` as ``(size,)`` int64 class indices in ``[0, num_classes)`` (``None``: only ``>= 0``).

    The one label check of the package: a wrong shape, a non-integer dtype or an index out of range is a
    ``ValueError`` naming ``name``, with the offending range, never the array itself.
    """
    labels = np.asarray(labels)
    if labels.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), one label per example, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        bound = "non-negative" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(f"{name} must be class indices {bound}, got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


class Splits:
    """What every labelled problem shares: the noise mask, its rate, and the sizes ``(n, m, p)``.

    Subclasses name their training, clean and test inputs in ``_INPUTS`` and hold ``y_noisy`` and ``y_true``
    (numpy arrays or torch tensors).
    """

    _INPUTS = ("X", "X_meta", "X_test")

    @property
    def noisy(self) -> np.ndarray:
        """(n,) bool, the noise mask ``y_noisy != y_true`` (for scoring only)."""
        mask = self.y_noisy != self.y_true
        return mask.cpu().numpy() if hasattr(mask, "cpu") else np.asarray(mask)

    @property
    def noise_rate(self) -> float:
        return float(self.noisy.mean())

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(n, m, p)``."""
        return tuple(len(getattr(self, name)) for name in self._INPUTS)


@dataclasses.dataclass(frozen=True)
class Problem(Splits):
    """A noisy-label classification problem (docs/theory.md section 0).

    Attributes
    ----------
    X : (n, d) float64, training inputs.
    y_noisy : (n,) int64, observed labels in ``[0, C)``.
    y_true : (n,) int64, true labels (known in simulation only).
    X_meta : (m, d) float64, clean subset inputs.
    y_meta : (m,) int64, clean subset labels.
    X_test : (p, d) float64, test inputs.
    y_test : (p,) int64, test labels.
    num_classes : C.
    transition : (C, C) float64, ``T[a, b] = P(y_noisy = b | y_true = a)`` of the
        noise model that produced ``y_noisy`` (identity for real noise of unknown law).
    name : short description used in reports.
    targets : ``one-hot`` (``C`` outputs) or ``signed`` (two classes, one output, ``+1`` for class 0 and
        ``-1`` for class 1; the binary setting); :attr:`codebook`, :meth:`encode`.
    """

    X: np.ndarray
    y_noisy: np.ndarray
    y_true: np.ndarray
    X_meta: np.ndarray
    y_meta: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    transition: np.ndarray
    name: str = "problem"
    targets: str = "one-hot"

    def __post_init__(self):
        for field in ("X", "X_meta", "X_test"):
            value = np.asarray(getattr(self, field), dtype=np.float64)
            if value.ndim != 2 or value.shape[0] == 0:
                raise ValueError(f"{field} must be a non-empty 2-D array, got shape {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{field} contains non-finite values")
            object.__setattr__(self, field, value)
        d = self.X.shape[1]
        for field in ("X_meta", "X_test"):
            if getattr(self, field).shape[1] != d:
                raise ValueError(f"{field} has {getattr(self, field).shape[1]} features, X has {d}")
        C = integer("num_classes", self.num_classes, 2)
        object.__setattr__(self, "num_classes", C)
        for field, inputs in (("y_noisy", "X"), ("y_true", "X"), ("y_meta", "X_meta"), ("y_test", "X_test")):
            object.__setattr__(self, field, class_labels(field, getattr(self, field), getattr(self, inputs).shape[0], C))
        missing = sorted(set(range(C)) - set(self.y_meta.tolist()))
        if missing:
            shown = f"{missing[:10]}" + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"y_meta (the clean subset) has no example of classes {shown}; it needs every class")
        transition = np.asarray(self.transition, dtype=np.float64)
        if transition.shape != (C, C) or np.any(transition < 0) or not np.allclose(transition.sum(axis=1), 1.0):
            raise ValueError(f"transition must be a ({C}, {C}) row-stochastic matrix (non-negative rows summing to 1)")
        object.__setattr__(self, "transition", transition)
        target_codebook(self.targets, C)  # checks the encoding against C

    @property
    def codebook(self) -> np.ndarray:
        """``(C, K)`` the target of each class on the ``K`` outputs (:func:`target_codebook`)."""
        return target_codebook(self.targets, self.num_classes)

    @property
    def outputs(self) -> int:
        """``K``, the number of network outputs: ``C`` for one-hot targets, 1 for signed ones."""
        return self.codebook.shape[1]

    def encode(self, labels) -> np.ndarray:
        """``(k, K)`` float64 targets of ``labels (k,)``: one-hot rows, or ``+-1`` in one column."""
        return self.codebook[np.asarray(labels)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``problem.npz`` (``targets`` only when it is not one-hot, so older files stay as they were)."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("num_classes", "name", "targets")}
        return arrays if self.targets == "one-hot" else arrays | {"targets": np.array(self.targets)}

    @classmethod
    def from_arrays(cls, arrays, name: str = "problem") -> Problem:
        y_all = np.concatenate([arrays["y_noisy"], arrays["y_true"], arrays["y_meta"], arrays["y_test"]])
        num_classes = int(arrays["transition"].shape[0]) if "transition" in arrays else int(y_all.max()) + 1
        transition = arrays["transition"] if "transition" in arrays else np.eye(num_classes)
        targets = str(arrays["targets"]) if "targets" in arrays else "one-hot"
        fields = ("X", "y_noisy", "y_true", "X_meta", "y_meta", "X_test", "y_test")
        return cls(**{f: np.asarray(arrays[f]) for f in fields}, num_classes=num_classes, transition=transition, name=name,
                   targets=targets)


def _check_rate(noise_rate: float, num_classes: int, noise_type: str) -> None:
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    if not 0.0 <= noise_rate < 1.0:  # NaN fails this too
        raise ValueError(f"noise_rate must lie in [0, 1), got {noise_rate}")
    if noise_type == "symmetric":
        limit = (num_classes - 1) / num_classes
        if noise_rate >= limit:
            raise ValueError(
                f"noise_rate must lie in [0, {limit:.4g}) for symmetric noise with {num_classes} classes "
                f"(at (C-1)/C the labels carry no information), got {noise_rate}"
            )
    elif noise_rate >= 0.5:
        raise ValueError(
            f"noise_rate must lie in [0, 0.5) for {noise_type} noise (at 0.5 the flipped class is as likely "
            f"as the true one), got {noise_rate}"
        )


def transition_matrix(noise_type: str, noise_rate: float, num_classes: int) -> np.ndarray:
    """(C, C) expected transition matrix ``T[a, b] = P(noisy = b | true = a)``.

    For instance-dependent noise the per-example flip probabilities vary but
    average to ``noise_rate``; the flipped label is uniform over the other
    classes, so the expected matrix is that of symmetric noise.
    """
    _check_rate(noise_rate, num_classes, noise_type)
    C = num_classes
    if noise_type == "pair":
        T = (1 - noise_rate) * np.eye(C) + noise_rate * np.roll(np.eye(C), 1, axis=1)
    else:
        T = (1 - noise_rate) * np.eye(C) + noise_rate / (C - 1) * (1 - np.eye(C))
    return T


def corrupt_labels(
    y_true: np.ndarray,
    noise_rate: float,
    num_classes: int,
    rng: np.random.Generator,
    noise_type: str = "symmetric",
    X: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw noisy labels; return ``(y_noisy (n,), transition (C, C))``.

    - ``symmetric``: each label flips with probability ``noise_rate`` to a
      different class drawn uniformly.
    - ``pair``: class ``c`` flips to ``(c + 1) mod C`` with probability ``noise_rate``.
    - ``instance``: the flip probability of example i is ``noise_rate * 2 *
      sigmoid-rank`` of a random linear projection of ``X[i]`` (mean
      ``noise_rate``, capped at 1), so examples on one side of the input space
      are corrupted more; the new label is uniform over the other classes.

    Every example flips independently, so the realised rate is binomial
    around the request. The returned transition is the law the labels were
    drawn from; for instance noise it is the expectation given ``X``: class
    ``a`` keeps its label with probability ``1 - mean_{i: y_i = a} p_i``.
    """
    _check_rate(noise_rate, num_classes, noise_type)
    n = np.shape(y_true)[0]
    y_true = class_labels("y_true", y_true, n, num_classes)
    if noise_type == "instance":
        if X is None or np.shape(X)[0] != n:
            raise ValueError(f"instance-dependent noise needs the inputs X with one row per label ({n})")
        projection = np.asarray(X, dtype=np.float64) @ rng.standard_normal(np.shape(X)[1])
        ranks = np.argsort(np.argsort(projection)) / max(n - 1, 1)  # uniform on [0, 1]
        flip_probability = np.clip(noise_rate * 2 * ranks, 0.0, 1.0)
    else:
        flip_probability = np.full(n, noise_rate)
    flip = rng.random(n) < flip_probability
    if noise_type == "pair":
        new_label = (y_true + 1) % num_classes
    else:
        new_label = (y_true + rng.integers(1, num_classes, size=n)) % num_classes
    y_noisy = np.where(flip, new_label, y_true)
    if noise_type != "instance":
        return y_noisy, transition_matrix(noise_type, noise_rate, num_classes)
    C = num_classes
    stay = np.array([1.0 - flip_probability[y_true == a].mean() if np.any(y_true == a) else 1.0 for a in range(C)])
    transition = stay[:, None] * np.eye(C) + ((1.0 - stay) / (C - 1))[:, None] * (1 - np.eye(C))
    return y_noisy, transition


def _balanced_labels(size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(size) % num_classes
    return rng.permutation(labels)


def imbalanced_class_sizes(size: int, num_classes: int, imbalance: float) -> np.ndarray:
    """(C,) int64 class sizes summing to ``size``, geometric from class 0 down to class ``C - 1``.

    Class ``c`` gets a share proportional to ``imbalance ** (-c / (C - 1))``, so
    the largest class is ``imbalance`` times the smallest (before rounding;
    the shares are rounded by largest remainder, ties to the lower class).
    ``imbalance = 1`` is the balanced split (up to one example). A size too
    small for every class to keep an example is a ``ValueError``.
    """
    imbalance = real("imbalance", imbalance, 1.0)
    shares = imbalance ** (-np.arange(num_classes) / (num_classes - 1))
    exact = size * shares / shares.sum()
    sizes = np.floor(exact).astype(np.int64)
    remainder = exact - sizes
    order = np.lexsort((np.arange(num_classes), -remainder))  # largest remainder first, then the lower class
    sizes[order[: size - int(sizes.sum())]] += 1
    if sizes.min() < 1:
        raise ValueError(f"imbalance {imbalance:g} over {num_classes} classes leaves class {int(sizes.argmin())} "
                         f"of {size} examples empty; lower the imbalance or raise the size")
    return sizes


def gaussian_mixture(
    rng: np.random.Generator,
    *,
    n: int = 1000,
    m: int = 100,
    p: int = 1000,
    num_classes: int = 4,
    dim: int = 32,
    separation: float = 3.0,
    spread: float = 1.0,
    noise_rate: float = 0.4,
    noise_type: str = "symmetric",
    imbalance: float = 1.0,
    clean_noise: float = 0.0,
) -> Problem:
    """The default synthetic problem of docs/theory.md section 5.

    ``C`` class means of norm ``separation`` in random directions, isotropic
    Gaussian spread ``spread``, inputs rescaled to norm ``sqrt(dim)``. Training
    and test labels are class-balanced (up to one example), the clean subset of
    size ``m >= C`` exactly balanced up to rounding.

    The two referee questions of docs/theory.md section 9: ``imbalance`` makes
    the training classes geometric, the largest ``imbalance`` times the
    smallest (:func:`imbalanced_class_sizes`; the clean subset and the test set
    stay balanced), and ``clean_noise`` flips the clean subset's labels
    symmetrically at that rate (:func:`noisy_clean_subset`). At their defaults
    (1 and 0) the draw is the same as without them.
    """
    num_classes = integer("num_classes", num_classes, 2)
    n, m, p, dim = (integer(name, value, low) for name, value, low in
                    (("n", n, 1), ("m", m, num_classes), ("p", p, 1), ("dim", dim, 1)))
    separation = real("separation", separation, 0.0)
    spread = real("spread", spread, 0.0, strict_low=True)
    directions = rng.standard_normal((num_classes, dim))
    means = separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)

    train_sizes = imbalanced_class_sizes(n, num_classes, imbalance) if imbalance != 1 else None

    def draw(size, class_sizes=None):
        if class_sizes is None:
            labels = _balanced_labels(size, num_classes, rng)
        else:
            labels = rng.permutation(np.repeat(np.arange(num_classes), class_sizes))
        x = means[labels] + spread * rng.standard_normal((size, dim))
        x *= np.sqrt(dim) / np.linalg.norm(x, axis=1, keepdims=True)
        return x, labels

    X, y_true = draw(n, train_sizes)
    X_meta, y_meta = draw(m)
    X_test, y_test = draw(p)
    y_noisy, transition = corrupt_labels(y_true, noise_rate, num_classes, rng, noise_type, X)
    y_meta, clean = noisy_clean_subset(y_meta, clean_noise, num_classes, rng)
    extra = ("" if train_sizes is None else f", imbalance {imbalance:g}") + clean
    return Problem(X, y_noisy, y_true, X_meta, y_meta, X_test, y_test, num_classes, transition,
                   name=f"gmm(C={num_classes}, d={dim}, {noise_type} {noise_rate}{extra})")


def noisy_clean_subset(y_meta: np.ndarray, clean_noise: float, num_classes: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, str]:
    """The clean subset's labels ``(m,)`` with symmetric noise at rate ``clean_noise`` (docs/theory.md section 9),
    and the words a problem's name adds for it.

    ``clean_noise = 0`` returns ``y_meta`` unchanged and draws nothing from ``rng``, so a problem without it is
    the same draw as before the knob existed. The flips are drawn after every other draw of the problem: for one
    seed, the inputs and the training labels do not depend on ``clean_noise``. The realised rate is in the name
    (the :class:`Problem` keeps only the labels a method sees).
    """
    limit = (num_classes - 1) / num_classes
    if real("clean_noise", clean_noise, 0.0) >= limit:
        raise ValueError(f"clean_noise must lie in [0, {limit:.4g}) for {num_classes} classes (at (C-1)/C the "
                         f"clean labels carry no information), got {clean_noise}")
    if clean_noise == 0:
        return y_meta, ""
    y_noisy, _ = corrupt_labels(y_meta, clean_noise, num_classes, rng, "symmetric")
    return y_noisy, f", clean noise {clean_noise:g} (realised {float(np.mean(y_noisy != y_meta)):.3f})"


def digits(
    rng: np.random.Generator,
    *,
    n: int = 1000,
    m: int = 100,
    noise_rate: float = 0.4,
    noise_type: str = "symmetric",
    clean_noise: float = 0.0,
    pair: tuple[int, int] | None = None,
) -> Problem:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes, no download).

    Pixels are standardised and each input rescaled to norm ``sqrt(64)``. The
    clean subset (``m`` examples, class-balanced) and the training set (``n``)
    are drawn from a random permutation; the rest is the test set.
    ``clean_noise``: as in :func:`gaussian_mixture`.

    ``pair = (a, b)``: the binary setting (docs/theory.md section 9): only the images of digits ``a`` and ``b``
    (about 360), relabelled 0 (``a``, target ``+1``) and 1 (``b``, target ``-1``) on one output (``targets =
    "signed"``); the noise flips labels within the pair (symmetric noise with ``C = 2``). The pixels are
    standardised over all 1797 images, as without ``pair``, so the inputs are those of the 10-class problem.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X_all = data.data.astype(np.float64)
    y_all = data.target.astype(np.int64)
    num_classes = 10
    if pair is not None:
        pair = check_pair(pair, num_classes)
    n, m = integer("n", n, 1), integer("m", m, num_classes if pair is None else 2)
    if n + m >= len(y_all):
        raise ValueError(f"n + m must be below {len(y_all)} (digits has {len(y_all)} images), got n={n}, m={m}")
    X_all = (X_all - X_all.mean(axis=0)) / (X_all.std(axis=0) + 1e-8)
    X_all *= 8.0 / np.linalg.norm(X_all, axis=1, keepdims=True)
    if pair is not None:
        keep = np.isin(y_all, pair)
        X_all, y_all, num_classes = X_all[keep], (y_all[keep] == pair[1]).astype(np.int64), 2
        if n + m >= len(y_all):
            raise ValueError(f"n + m must be below {len(y_all)} (digits {pair[0]} and {pair[1]} have "
                             f"{len(y_all)} images), got n={n}, m={m}")
    order = rng.permutation(len(y_all))
    per_class = [order[y_all[order] == c] for c in range(num_classes)]
    smallest = min(len(idx) for idx in per_class)
    if m > smallest * num_classes:
        raise ValueError(f"m must be at most {smallest * num_classes} for a class-balanced clean subset of digits "
                         f"(its smallest class has {smallest} images), got {m}")
    meta_idx = np.concatenate([idx[: m // num_classes + (c < m % num_classes)] for c, idx in enumerate(per_class)])
    rest = np.setdiff1d(order, meta_idx, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    train_idx, test_idx = rest[:n], rest[n:]
    y_noisy, transition = corrupt_labels(y_all[train_idx], noise_rate, num_classes, rng, noise_type, X_all[train_idx])
    y_meta, clean = noisy_clean_subset(y_all[meta_idx], clean_noise, num_classes, rng)
    if pair is not None:
        return Problem(X_all[train_idx], y_noisy, y_all[train_idx], X_all[meta_idx], y_meta,
                       X_all[test_idx], y_all[test_idx], num_classes, transition,
                       name=f"digits {pair[0]} vs {pair[1]} (+-1, {noise_type} {noise_rate}{clean})", targets="signed")
    return Problem(X_all[train_idx], y_noisy, y_all[train_idx], X_all[meta_idx], y_meta,
                   X_all[test_idx], y_all[test_idx], num_classes, transition,
                   name=f"digits({noise_type} {noise_rate}{clean})")


def check_pair(pair, num_classes: int) -> tuple[int, int]:
    """``pair`` (two integers, or the text ``"a,b"``) as two distinct class indices ``(a, b)`` in
    ``[0, num_classes)``; a one-line ``ValueError`` else."""
    try:
        a, b = (int(value) for value in (pair.split(",") if isinstance(pair, str) else pair))
    except (TypeError, ValueError):
        raise ValueError(f"pair must be two class indices a,b, got {pair!r}") from None
    if not (0 <= a < num_classes and 0 <= b < num_classes):
        raise ValueError(f"pair must name two classes in [0, {num_classes - 1}], got {a},{b}")
    if a == b:
        raise ValueError(f"pair must name two different classes, got {a},{b}")
    return a, b
