"""Named studies (docs/theory.md section 9): their grids, the eta_scale knob, the command and its band table."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tolerance import assert_close

from phases import study as study_module
from phases.detect import readmitted_share
from phases.experiments import SimulationConfig, run_simulation
from phases.study import QUANTITIES, STUDIES, band_table
from phases.sweep import parse_grid, validate_runs

TINY = {"perturb_draws": 0, "n": 40, "m": 16, "p": 20, "dim": 8, "steps": 60}


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_quick_study_varies_its_knob_over_valid_runs(name):
    study = STUDIES[name]
    runs = study.runs(True, [0, 1])
    validate_runs(runs)
    points = {tuple(point.values()) for _, point in runs}
    series = len(study.series_values) if study.series else 1
    assert len(runs) == 2 * len(study.quick_values) * series == 2 * len(points)
    assert {getattr(config, study.knob) for config, _ in runs} == set(study.quick_values)
    assert all(config.n == 200 and config.steps == 400 and config.perturb_draws == 0 for config, _ in runs)


def test_clean_size_runs_m_from_the_class_count_to_a_tenth_of_n():
    for quick in (True, False):
        runs = STUDIES["clean-size"].runs(quick, [0])
        sizes = [config.m for config, _ in runs]
        n, classes = runs[0][0].n, runs[0][0].classes
        assert sizes == sorted(set(sizes)) and sizes[0] == classes and sizes[-1] == n // 10
        assert len(sizes) >= 3


def _joint_lambda(train, meta, gamma):
    """Top eigenvalue of the joint kernel [[K_XX, sqrt(g) K_VX^T], [sqrt(g) K_VX, g K_VV]], dense, by numpy."""
    root = np.sqrt(gamma)
    joint = np.block([[train[0], root * train[1].T], [root * train[1], gamma * meta]])
    return np.linalg.eigvalsh(joint)[-1]


@pytest.mark.parametrize("scale,gamma", [(1.0, 1.0), (0.3, 0.5)])
def test_eta_scale_is_the_fraction_of_the_stability_limit_of_the_joint_kernel(scale, gamma):
    config = SimulationConfig(n=30, m=8, p=10, dim=8, steps=3, perturb_draws=0, gamma=gamma, eta_scale=scale)
    result = run_simulation(config, claims=False)
    blocks = result.blocks
    lam = _joint_lambda((np.asarray(blocks.K_XX), np.asarray(blocks.K_VX)), np.asarray(blocks.K_VV), gamma)
    # Lanczos (tol 1e-12) against a dense eigvalsh: agreement to about 1e-10 relative.
    assert_close(result.trajectory.config["eta"], scale * 2.0 / lam, rtol=1e-9)


def test_eta_scale_on_features_uses_the_features_joint_kernel(tmp_path):
    rng = np.random.default_rng(3)
    X, X_meta, X_test = rng.standard_normal((30, 5)), rng.standard_normal((6, 5)), rng.standard_normal((10, 5))
    path = tmp_path / "features.npz"
    np.savez(path, X=X, y_noisy=rng.integers(0, 3, 30), X_meta=X_meta, y_meta=np.arange(6) % 3, X_test=X_test,
             y_test=rng.integers(0, 3, 10), y_true=rng.integers(0, 3, 30))
    config = SimulationConfig(dataset="features", features=str(path), steps=3, perturb_draws=0, eta_scale=0.5)
    result = run_simulation(config, problem=config.validate(), claims=False)
    lam = _joint_lambda((X @ X.T, X_meta @ X.T), X_meta @ X_meta.T, 1.0)
    assert_close(result.trajectory.config["eta"], 0.5 * 2.0 / lam, rtol=1e-9)


def test_eta_scale_excludes_eta_and_is_a_sweep_knob(tmp_path, capsys):
    from phases.simulate import main as simulate_main

    with pytest.raises(ValueError, match="give one of them"):
        SimulationConfig(eta=0.1, eta_scale=0.5)
    assert SimulationConfig(eta_scale=0.5).argv() == ["--eta-scale", "0.5"]
    assert parse_grid(["eta-scale=0.25,0.95"]) == {"eta_scale": [0.25, 0.95]}
    assert simulate_main(["--eta", "0.1", "--eta-scale", "0.5", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "eta_scale" in err
    assert os.listdir(tmp_path) == []


def test_readmitted_share_counts_filtered_noisy_examples_that_leave_zero_later():
    noisy = np.array([True, True, True, True, False])
    w = np.array([[0.5, 0.5, 0.5, 0.5, 0.5],
                  [0.0, 0.0, 0.0, 0.2, 0.0],    # T_filter: noisy 0, 1, 2 at w = 0 (the clean one does not count)
                  [0.0, 0.1, 0.0, 0.0, 0.3],    # noisy 1 re-admitted
                  [0.0, 0.0, 0.0, 0.0, 0.3]])   # and filtered again: re-admitted once is re-admitted
    run = SimpleNamespace(step=np.arange(4) * 5, w=w, noisy=noisy)  # T_filter in steps: record index times 5
    assert readmitted_share(run, 5) == pytest.approx(1 / 3)
    assert readmitted_share(run, 15) == 0.0
    assert readmitted_share(run, 0) is None


def test_an_unknown_study_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    from figures.studies import main

    assert main(["no-such-study", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no-such-study" in err and "clean-size" in err
    assert os.listdir(tmp_path) == []


def test_a_study_writes_its_figure_and_one_row_of_seed_statistics_per_knob_value(tmp_path, monkeypatch, capsys):
    from figures.studies import main

    monkeypatch.setattr(study_module, "QUICK", TINY)
    out = tmp_path / "clean-noise"
    assert main(["clean-noise", "--quick", "--seeds", "2", "--workers", "1", "--out", str(out)]) == 0
    assert {"records.jsonl", "summary.csv", "clean-noise.png", "clean-noise.csv"} <= set(os.listdir(out))
    with open(out / "records.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    table = pd.read_csv(out / "clean-noise.csv")
    values = list(STUDIES["clean-noise"].quick_values)
    assert table["clean_noise"].tolist() == values and table["runs"].tolist() == [2] * len(values)
    for value, row in zip(values, table.itertuples()):
        mine = [record for record in records if record["point"]["clean_noise"] == value]
        assert sorted(record["seed"] for record in mine) == [0, 1]
        for name, outer, inner in (("T_filter", "boundaries", "T_filter"), ("test_accuracy", "final", "test_accuracy"),
                                   ("noisy_zero_at_filter", "at_filter", "frac_noisy_zero")):
            # A run without the quantity (no T_filter: no plateau at this size) is left out of its point's statistics.
            seeds = np.array([record[outer][inner] for record in mine if record[outer][inner] is not None])
            mean = seeds.mean() if len(seeds) else np.nan
            std = seeds.std(ddof=1) if len(seeds) > 1 else np.nan
            # The CSV keeps 6 significant digits.
            assert_close(getattr(row, f"{name}_mean"), mean, rtol=1e-5)
            assert_close(getattr(row, f"{name}_std"), std, rtol=1e-5, atol=1e-6)
        assert row.no_T_filter == sum(record["boundaries"]["T_filter"] is None for record in mine)
    assert set(f"{name}_{stat}" for name in QUANTITIES for stat in ("mean", "std")) <= set(table.columns)
    assert_close(band_table(records, STUDIES["clean-noise"])["auc_mean"].to_numpy(), table["auc_mean"].to_numpy(),
                 rtol=1e-5)
