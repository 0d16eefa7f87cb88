"""``python -m phases.simulate --features FILE.npz``: explicit features (docs/theory.md section 8) end to end.

The features route (FeatureKernel, C9 from the features' singular vectors, C5' in parameter space) must equal
the dense route on ``K = Phi Phi^T`` of the same data; a malformed file is one line and exit 2 with nothing
written; without ``y_true`` the scores that need the noise mask are n/a, never invented.
"""

import dataclasses
import json
import math

import numpy as np
import pytest

from dynamics.embeddings import FeaturesError, load_features, save_features
from dynamics.problem import gaussian_mixture
from phases.experiments import SimulationConfig, load_simulation, run_simulation
from phases.simulate import main

STEPS = ["--steps", "300", "--perturb-draws", "2", "--seed", "5"]


def _features(path, n=100, m=20, p=50, dim=8, with_y_true=True, seed=1):
    """A Gaussian mixture whose inputs serve as features (D = dim), saved as a features file."""
    problem = gaussian_mixture(np.random.default_rng(seed), n=n, m=m, p=p, num_classes=3, dim=dim, noise_rate=0.3)
    save_features(path, problem)
    if not with_y_true:
        arrays = dict(np.load(path))
        arrays.pop("y_true")
        np.savez(path, **arrays)
    return problem


def _dense_reference(problem, config):
    """The dense route on K = Phi Phi^T: simulator over KernelBlocks, eigh of K_XX for C9, the dense C5'."""
    from dynamics.simulator import KernelBlocks, simulate
    from kernels import eigh_kernel
    from phases.claims import check_claims, predict_post_filtering_rate
    from phases.detect import detect_phases

    X, V, T = problem.X, problem.X_meta, problem.X_test
    blocks = KernelBlocks(X @ X.T, V @ X.T, V @ V.T, T @ X.T, T @ V.T)
    meta = config.meta_config()
    trajectory = simulate(problem, blocks, meta, seed=config.seed)
    phases = detect_phases(trajectory, config.phase_params())
    head = dataclasses.replace(meta, eta=trajectory.config["eta"], steps=phases.T_filter,
                               record_every=phases.T_filter, perturb_draws=0)
    stopped = simulate(problem, blocks, head, seed=config.seed)
    prediction = predict_post_filtering_rate(problem, blocks, trajectory, phases,
                                             np.concatenate([stopped.outputs, stopped.meta_outputs]))
    claims = check_claims(trajectory, phases, problem=problem, eigenvectors=eigh_kernel(blocks.K_XX)[1],
                          rate_prediction=prediction)
    return trajectory, phases, [dataclasses.asdict(claim) for claim in claims]


def _assert_same(found, expected, where=""):
    """Nested claim measurements equal to 1e-10 (relative or absolute)."""
    if isinstance(expected, dict):
        assert set(found) == set(expected), where
        for key in expected:
            _assert_same(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, float) and math.isfinite(expected):
        assert found == pytest.approx(expected, rel=1e-10, abs=1e-10), where
    else:
        assert found == expected, where


def test_the_features_route_equals_the_dense_route(tmp_path):
    # D = 8 < n + m: the joint kernel has a null space, as real embeddings have (D = 1280 < 47,000). D > n + m is
    # covered by C5''s oracle in tests/phases/test_claims.py.
    problem = _features(tmp_path / "f.npz", n=100, dim=8)
    config = SimulationConfig(dataset="features", features=str(tmp_path / "f.npz"), steps=300, perturb_draws=2, seed=5)
    result = run_simulation(config)
    trajectory, phases, claims = _dense_reference(problem, config)
    for name in ("w", "score", "clean_loss", "test_loss", "test_accuracy", "train_loss_clean", "train_loss_noisy",
                 "coupling_norm", "flip_rate", "label_similarity", "k_meta_norm"):
        np.testing.assert_allclose(getattr(result.trajectory, name), getattr(trajectory, name), rtol=1e-10,
                                   atol=1e-10, err_msg=name)
    assert (result.phases.T_align, result.phases.T_filter, result.phases.T_freeze) == \
        (phases.T_align, phases.T_filter, phases.T_freeze)
    assert phases.T_filter is not None
    found = result.summary["claims"]
    assert [claim["id"] for claim in found] == [claim["id"] for claim in claims]
    for got, want in zip(found, claims):
        assert got["verdict"] == want["verdict"], got["id"]
        _assert_same(got["margin"], want["margin"], got["id"])
        _assert_same(got["measured"], want["measured"], got["id"])
    assert {claim["id"]: claim["verdict"] for claim in found}["C5'"] != "n/a"


def test_the_command_runs_a_features_file_and_saves_no_features(tmp_path, capsys):
    _features(tmp_path / "f.npz")
    out = tmp_path / "run"
    assert main(["--features", str(tmp_path / "f.npz"), *STEPS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Phases" in printed and "C5'" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["dataset"] == "features" and config["kernel"]["kind"] == "linear"
    assert config["problem"]["D"] == 8 and len(config["problem"]["source"]["sha256"]) == 64
    with np.load(out / "problem.npz") as saved:
        assert "X" not in saved.files and set(saved.files) >= {"y_noisy", "y_true", "y_meta", "y_test"}
    loaded = load_simulation(str(out))
    assert loaded.phases.T_filter == json.loads((out / "summary.json").read_text())["T_filter"]
    # Repeating the run from its config gives the same summary.
    again = tmp_path / "again"
    assert main(["--config", str(out), "--out", str(again)]) == 0
    assert (out / "summary.json").read_bytes() == (again / "summary.json").read_bytes()


def test_without_y_true_the_detection_scores_are_not_available(tmp_path, capsys):
    _features(tmp_path / "f.npz", with_y_true=False)
    out = tmp_path / "run"
    assert main(["--features", str(tmp_path / "f.npz"), *STEPS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "n/a: no y_true" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["y_true"] is False and summary["unavailable"]["reason"] == "n/a: no y_true"
    for key in ("auc", "precision", "recall", "frac_noisy_zero", "frac_clean_zero"):
        assert summary["final"][key] is None, key
    assert summary["final"]["test_accuracy"] is not None
    assert summary["T_align"] is None and summary["T_freeze"] is None and summary["T_filter"] is not None
    claims = {claim["id"]: claim for claim in summary["claims"]}
    for claim_id in ("C3", "C6", "C6-end", "C9", "C12"):
        assert claims[claim_id]["verdict"] == "n/a" and "no y_true" in claims[claim_id]["detail"], claim_id
    assert claims["C4'"]["verdict"] != "n/a" and claims["C7"]["verdict"] != "n/a"
    for row in summary["phases"]:
        if not row["empty"]:
            assert row["at_end"]["frac_noisy_zero"] is None and row["at_end"]["mean_w"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["y_true"] is False and config["realised_noise_rate"] is None
    with np.load(out / "problem.npz") as saved:
        assert "y_true" not in saved.files
    with np.load(out / "trajectory.npz") as saved:
        assert json.loads(str(saved["config"]))["y_true"] is False  # the placeholder mask is flagged as such
    loaded = load_simulation(str(out))
    assert loaded.phases.T_align is None and loaded.phases.T_filter == summary["T_filter"]
    assert loaded.problem.has_y_true is False and loaded.problem.noise_rate is None


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid(rng, n=30, m=9, p=12, D=4):
    return {"X": rng.normal(size=(n, D)), "y_noisy": rng.integers(0, 3, n), "X_meta": rng.normal(size=(m, D)),
            "y_meta": np.arange(m) % 3, "X_test": rng.normal(size=(p, D)), "y_test": rng.integers(0, 3, p),
            "y_true": rng.integers(0, 3, n)}


def _malformed(tmp_path, case):
    rng = np.random.default_rng(0)
    arrays = _valid(rng)
    path = tmp_path / "bad.npz"
    if case == "not an npz":
        path.write_text("not an archive")
        return path
    if case == "missing key":
        arrays.pop("X_meta")
    elif case == "shape mismatch":
        arrays["y_noisy"] = arrays["y_noisy"][:-1]
    elif case == "width mismatch":
        arrays["X_test"] = arrays["X_test"][:, :3]
    elif case == "NaN":
        arrays["X"][3, 1] = np.nan
    elif case == "label out of range":
        arrays["y_test"][0] = -1
    elif case == "float labels":
        arrays["y_meta"] = arrays["y_meta"].astype(float)
    elif case == "y_true shape":
        arrays["y_true"] = arrays["y_true"][:5]
    elif case == "a class missing from y_meta":
        arrays["y_meta"] = np.zeros(9, dtype=int)
        arrays["y_noisy"][0] = 2
    return _write(path, **arrays)


@pytest.mark.parametrize("case, message", [
    ("not an npz", "not an .npz"),
    ("missing key", "lacks X_meta"),
    ("shape mismatch", "y_noisy has shape (29,)"),
    ("width mismatch", "same number of features"),
    ("NaN", "non-finite"),
    ("label out of range", "class indices in [0, 3)"),
    ("float labels", "integer class indices"),
    ("y_true shape", "y_true has shape (5,)"),
    ("a class missing from y_meta", "no example of classes"),
])
def test_a_malformed_file_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, case, message):
    path = _malformed(tmp_path, case)
    out = tmp_path / "out"
    assert main(["--features", str(path), "--steps", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]
    with pytest.raises(FeaturesError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_features(path)


@pytest.mark.parametrize("args, message", [
    (["--save-kernels"], "--save-kernels does not apply"),
    (["--dataset", "digits"], "features"),
    (["--batch-size", "1000"], "--batch-size must be at most 100"),
])
def test_options_that_do_not_fit_a_features_file(tmp_path, capsys, args, message):
    _features(tmp_path / "f.npz")
    assert main(["--features", str(tmp_path / "f.npz"), "--steps", "20", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_missing_features_file_is_one_line(tmp_path, capsys):
    assert main(["--features", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_memory_estimate_of_a_features_run_does_not_count_a_kernel(tmp_path):
    cifar = SimulationConfig.cifar10n("worse", steps=1000, record_every=10)
    dense = SimulationConfig(n=45_000, m=2_000, p=10_000, steps=1000, record_every=10)
    n, m, p, D = 45_000, 2_000, 10_000, 1280
    assert 3 * 8 * (n + m + p) * D < cifar.estimated_memory() < 5 * 2**30
    assert dense.estimated_memory() > 40 * 2**30
    _features(tmp_path / "f.npz", n=100, m=20, p=50, dim=8)
    small = SimulationConfig(dataset="features", features=str(tmp_path / "f.npz"), steps=300)
    assert small.feature_sizes() == (100, 20, 50, 8)
    assert small.estimated_memory() < 4 * 2**20  # the recorded series, 48 bytes per example and record


def test_gp_initial_outputs_on_features_are_a_linear_head_prior(tmp_path):
    _features(tmp_path / "f.npz")
    config = SimulationConfig(dataset="features", features=str(tmp_path / "f.npz"), steps=50, perturb_draws=0,
                              init="gp", seed=2)
    result = run_simulation(config, claims=False)
    theta = np.random.default_rng([2, 1]).standard_normal((8, 3))
    problem = load_features(tmp_path / "f.npz")
    # Step 0's clean loss is that of the prior outputs Psi theta.
    Y_meta = np.eye(3)[problem.y_meta]
    assert result.trajectory.clean_loss[0] == pytest.approx(
        0.5 * np.sum((problem.X_meta @ theta - Y_meta) ** 2) / len(Y_meta), rel=1e-12)
    assert result.trajectory.config["init"] == "gp"
