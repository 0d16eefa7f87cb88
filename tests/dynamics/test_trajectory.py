"""Weight statistics of a trajectory against scikit-learn's metrics."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from tolerance import assert_close

from dynamics.trajectory import weight_stats


@given(seed=st.integers(0, 2**16), n=st.integers(2, 60), rows=st.integers(1, 4))
def test_weight_stats_match_sklearn(seed, n, rows):
    rng = np.random.default_rng(seed)
    noisy = rng.random(n) < 0.4
    # Weights with exact zeros, ones and ties, as clipped weights have.
    w = np.clip(rng.choice([-0.5, 0.0, 0.3, 0.3, 0.7, 1.0, 1.5], size=(rows, n)), 0, 1)
    stats = weight_stats(w, noisy)
    clean = ~noisy
    for t in range(rows):
        kept = w[t] > 0
        if clean.any() and noisy.any():
            assert_close(stats["auc"][t], roc_auc_score(clean, w[t]))
        else:
            assert np.isnan(stats["auc"][t])
        if kept.any():
            assert_close(stats["precision"][t], precision_score(clean, kept, zero_division=0))
        if clean.any():
            assert_close(stats["recall"][t], recall_score(clean, kept))
            assert_close(stats["mean_w_clean"][t], w[t][clean].mean())
            assert_close(stats["frac_clean_zero"][t], np.mean(w[t][clean] == 0))
        if noisy.any():
            assert_close(stats["frac_noisy_zero"][t], np.mean(w[t][noisy] == 0))
