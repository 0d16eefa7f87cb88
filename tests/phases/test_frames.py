"""Results as pandas DataFrames: ``phases.comparison.results_frame`` and ``phases.sweep.summary_frame``.

Oracle: means and standard deviations (ddof=1) computed with numpy from the
per-seed records, written independently of pandas' groupby.
"""

import math

import numpy as np
import pytest
from tolerance import assert_close

from phases.comparison import METRICS, _summary, results_frame
from phases.sweep import RECORD_FIELDS, summary_frame, summary_table

pd = pytest.importorskip("pandas")


def _runs(rng, methods, seeds):
    runs = []
    for method in methods:
        for seed in seeds:
            run = {"method": method, "seed": seed, **{metric: float(rng.random()) for metric in METRICS}}
            run["score_auc"] = math.nan if method == "erm" else run["score_auc"]  # a metric a method lacks
            runs.append(run)
    return runs


def _mean_std(values):
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    mean = finite.mean() if finite.size else np.nan
    std = finite.std(ddof=1) if finite.size > 1 else np.nan
    return mean, std


@pytest.mark.parametrize("seeds", [[0, 1, 2], [5]])
def test_results_frame_is_the_mean_and_std_over_seeds_per_method_and_metric(seeds):
    rng = np.random.default_rng(0)
    methods = ["erm", "surrogate", "oracle"]
    runs = _runs(rng, methods, seeds)
    results = {"summary": _summary(runs + [{"method": "cleanlab", "seed": 0, "skipped": "not installed"}],
                                   methods + ["cleanlab"])}
    frame = results_frame(results)
    assert list(frame.index) == methods  # the order compared; the skipped method is absent
    assert frame.index.name == "method"
    for method in methods:
        assert frame.loc[method, ("seeds", "count")] == len(seeds)
        for metric in METRICS:
            mean, std = _mean_std([run[metric] for run in runs if run["method"] == method])
            assert_close(frame.loc[method, (metric, "mean")], mean, err_msg=f"{method} {metric}")
            assert_close(frame.loc[method, (metric, "std")], std, err_msg=f"{method} {metric}")
    assert np.isnan(frame.loc["erm", ("score_auc", "mean")])
    assert "test_accuracy" in frame.to_csv()


def _record(rng, noise, seed):
    record = {field: float(rng.random()) for field in RECORD_FIELDS}
    record.update(noise=noise, seed=seed, T_align=int(rng.integers(3, 10)), steps=200)
    if noise == 0.0:  # nothing to filter
        record.update(T_filter=None, frac_noisy_zero_at_filter=None, frac_clean_zero_at_filter=None,
                      test_accuracy_at_filter=None)
    if seed == 1:
        record["plateau"] = None
    return record


def test_summary_frame_is_the_mean_and_std_over_seeds_per_noise_rate():
    rng = np.random.default_rng(1)
    rates, seeds = [0.4, 0.0, 0.2], [0, 1, 2]
    records = [_record(rng, noise, seed) for noise in rates for seed in seeds]
    records.append(_record(rng, 0.6, 0))  # a rate with a single seed: std NaN
    frame = summary_frame(records)
    assert list(frame.index) == [0.0, 0.2, 0.4, 0.6]
    for rate in frame.index:
        group = [r for r in records if r["noise"] == rate]
        assert frame.loc[rate, ("runs", "count")] == len(group)
        assert frame.loc[rate, ("no_plateau", "count")] == sum(r["plateau"] is None for r in group)
        for field in RECORD_FIELDS:
            if field in ("noise", "seed"):
                assert (field, "mean") not in frame.columns
                continue
            mean, std = _mean_std([r[field] for r in group])
            assert_close(frame.loc[rate, (field, "mean")], mean, err_msg=f"{rate} {field}")
            assert_close(frame.loc[rate, (field, "std")], std, err_msg=f"{rate} {field}")
    assert np.isnan(frame.loc[0.0, ("T_filter", "mean")]) and np.isnan(frame.loc[0.6, ("T_align", "std")])
    table = summary_table(records)
    mean, std = _mean_std([r["T_align"] for r in records if r["noise"] == 0.2])
    assert f"{mean:.1f} ± {std:.1f}" in table.splitlines()[3]
    assert "standard deviation" in table
