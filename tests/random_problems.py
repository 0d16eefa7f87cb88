"""Small random problems for the simulator tests, whose inputs are explicit features (their linear kernel is
``phi phi^T``), so that the dense and the feature routes can run on the same problem."""

import numpy as np

from dynamics.problem import Problem


def feature_problem(rng: np.random.Generator, n: int, m: int, p: int, C: int, D: int) -> Problem:
    """``n, m, p`` examples of ``D`` standard normal features scaled by ``1/sqrt(D)``, ``C`` classes, 30% of the
    training labels redrawn at random, every class in the clean subset (``m >= C``)."""
    y_true = rng.integers(0, C, n)
    y_noisy = np.where(rng.random(n) < 0.3, rng.integers(0, C, n), y_true)
    y_meta = np.concatenate([np.arange(C), rng.integers(0, C, m - C)])
    return Problem(rng.standard_normal((n, D)) / np.sqrt(D), y_noisy, y_true, rng.standard_normal((m, D)) / np.sqrt(D),
                   y_meta, rng.standard_normal((p, D)) / np.sqrt(D), rng.integers(0, C, p), C, np.eye(C))
