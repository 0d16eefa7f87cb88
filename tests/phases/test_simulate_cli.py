"""``python -m phases.simulate`` end to end at small sizes, and each kind of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from tolerance import assert_close

from dynamics.trajectory import Trajectory
from phases.simulate import main

SMALL = ["--n", "120", "--m", "24", "--p", "60", "--dim", "8", "--steps", "300", "--perturb-draws", "2"]
FILES = ("config.json", "problem.npz", "trajectory.npz", "summary.json", "trajectory.png")


def _run(tmp_path, *args):
    out = tmp_path / "run"
    assert main([*SMALL, *args, "--out", str(out)]) == 0
    return out


def _reference(problem, kernels, eta, beta, gamma, w0, steps):
    """docs/theory.md section 2 (MSE, full batch), written out plainly in numpy from the pseudo-code."""
    C = int(max(problem["y_noisy"].max(), problem["y_meta"].max(), problem["y_test"].max())) + 1
    Y, Y_meta = np.eye(C)[problem["y_noisy"]], np.eye(C)[problem["y_meta"]]
    K_XX, K_VX, K_VV = kernels["K_XX"], kernels["K_VX"], kernels["K_VV"]
    m = len(Y_meta)
    F, F_meta = np.zeros_like(Y), np.zeros_like(Y_meta)
    w = np.full(len(Y), w0)
    ws, losses = [], []
    for _ in range(steps):
        ws.append(w)
        losses.append(0.5 * np.sum((F_meta - Y_meta) ** 2) / m)
        R, R_meta = F - Y, F_meta - Y_meta
        F_meta_hat = F_meta - eta * (K_VX @ (w[:, None] * R) + gamma * K_VV @ R_meta)
        score = np.sum(R * (K_VX.T @ (F_meta_hat - Y_meta)), axis=1)
        w = np.clip(w + beta / m * score, 0, 1)
        G = w[:, None] * R
        F, F_meta = F - eta * (K_XX @ G + gamma * K_VX.T @ R_meta), F_meta - eta * (K_VX @ G + gamma * K_VV @ R_meta)
    ws.append(w)
    losses.append(0.5 * np.sum((F_meta - Y_meta) ** 2) / m)
    return np.array(ws), np.array(losses)


def _reference_boundaries(w, noisy, losses):
    """docs/theory.md section 5 with its default parameters, by brute force."""
    mean_clean = w[:, ~noisy].mean(axis=1)
    T_align = next(t for t in range(len(w)) if mean_clean[t] >= 0.99 * mean_clean.max())
    window = max(10, int(np.ceil(0.05 * (len(w) - 1))))
    plateau = next((t for t in range(max(T_align, window), len(w)) if losses[t - window] - losses[t] < 0.01 * losses[0]),
                   None)
    return T_align, plateau


@settings(max_examples=4, phases=[Phase.explicit, Phase.generate])  # each example is a whole run: no shrinking
@given(noise=st.sampled_from([0.0, 0.2, 0.5, 0.7]), seed=st.integers(0, 1000))
def test_end_to_end(tmp_path_factory, noise, seed):
    tmp_path = tmp_path_factory.mktemp("run")
    out = _run(tmp_path, "--noise", str(noise), "--seed", str(seed), "--save-kernels")
    for name in FILES + ("kernels.npz",):
        assert (out / name).stat().st_size > 0, name
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")], "staging directory left behind"
    config = json.loads((out / "config.json").read_text())
    for key in ("eta", "beta", "gamma", "w0", "loss", "steps", "seed", "versions"):
        assert key in config
    summary = json.loads((out / "summary.json").read_text())
    assert {claim["id"] for claim in summary["claims"]} == {"C2", "C3", "C4", "C4'", "C5", "C5'", "C6", "C6-end", "C7", "C9",
                                                          "C12"}
    for claim in summary["claims"]:  # the verdict is the sign of the margin, never a free-standing label
        expected = "n/a" if claim["margin"] is None else ("holds" if claim["margin"] >= 0 else "fails")
        assert claim["verdict"] == expected, claim
    settings_file = {key: config["settings"][key] for key in ("noise", "seed")}
    assert settings_file == {"noise": noise, "seed": seed}
    boundaries = [b for b in (summary["T_align"], summary["T_filter"]) if b is not None]
    assert boundaries == sorted(boundaries)
    if noise == 0.0:
        assert summary["T_filter"] is None
        assert summary["phases"][1]["empty"] and "nothing to filter" in summary["phases"][1]["reason"]

    # The reported weights and boundaries against an independent implementation on the saved inputs.
    problem, kernels = np.load(out / "problem.npz"), np.load(out / "kernels.npz")
    trajectory = Trajectory.load(out / "trajectory.npz")
    w, losses = _reference(problem, kernels, config["eta"], config["beta"], config["gamma"], config["w0"],
                           config["steps"])
    assert_close(trajectory.w, w, rtol=0, atol=6e-8)  # the weights are saved as float32 (Trajectory.save)
    np.testing.assert_array_equal(trajectory.w == 0, w == 0)
    assert_close(trajectory.clean_loss, losses, rtol=1e-10, atol=1e-14)
    T_align, plateau = _reference_boundaries(w, problem["y_noisy"] != problem["y_true"], losses)
    assert summary["T_align"] == T_align and summary["plateau"] == plateau


@pytest.mark.parametrize("args", [["--loss", "ce"], ["--variant", "l2rw"], ["--variant", "fixed"],
                                  ["--dataset", "digits", "--m", "30"], ["--init", "gp", "--kernel", "nngp"],
                                  ["--activation", "erf", "--gamma", "0", "--record-every", "7"]])
def test_other_settings_run(tmp_path, args):
    out = _run(tmp_path, *args)
    assert json.loads((out / "summary.json").read_text())["claims"]


def test_fewer_training_examples_than_classes_run_with_c9_not_applicable(tmp_path):
    """n = 3 < C = 4: K_XX has 3 eigen-directions, not the top C that C9 compares (it ended in a traceback)."""
    out = tmp_path / "run"
    assert main([*SMALL, "--n", "3", "--out", str(out)]) == 0
    claims = {claim["id"]: claim for claim in json.loads((out / "summary.json").read_text())["claims"]}
    assert claims["C9"]["verdict"] == "n/a" and "fewer than C = 4" in claims["C9"]["detail"]
    assert claims["C6"]["verdict"] != "n/a"  # the other claims are still checked


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "phases.simulate", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--noise", "1.2"], "noise_rate"),
    (["--noise", "0.75"], "symmetric"),
    (["--noise", "-0.1"], "noise_rate"),
    (["--kernel", "rbf"], "--kernel"),
    (["--n", "0"], "--n"),
    (["--steps", "-5"], "--steps"),
    (["--m", "3"], "m must be at least 4"),
    (["--batch-size", "5000"], "--batch-size"),
    (["--eta", "-1"], "eta"),
    (["--depth", "1000000000000"], "--depth must be an integer in [0, 100]"),
    (["--n", "1000000"], "GiB of memory"),
    (["--steps", "100000000"], "GiB of memory"),
    (["--perturb-draws", "1000000"], "--perturb-draws must be in [0, 1000]"),
    (["--gamma", "nan"], "must be a finite number"),
    (["--beta", "inf"], "must be a finite number"),
    (["--record-every", "3000"], "--record-every must be at most steps"),
    (["--seeds", "5-2"], "--seeds"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = _cli(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not os.listdir(tmp_path)


def test_output_path_problems(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    result = _cli("--out", str(a_file))
    assert result.returncode == 2 and "is a file" in result.stderr and a_file.read_text() == "keep me"

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    result = _cli("--out", str(existing))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (existing / "mine.txt").read_text() == "keep me"

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        result = _cli("--out", str(locked / "out"))
        assert result.returncode == 2 and "cannot be written" in result.stderr
    finally:
        locked.chmod(0o700)


def test_overwrite_replaces_the_whole_directory_only_when_the_toolkit_wrote_it(tmp_path, capsys):
    out = _run(tmp_path)
    (out / "stale.txt").write_text("old")
    assert main([*SMALL, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "summary.json").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_text("precious")
    capsys.readouterr()
    assert main([*SMALL, "--out", str(foreign), "--overwrite"]) == 2
    assert "not written by this toolkit" in capsys.readouterr().err
    assert os.listdir(foreign) == ["data.bin"]


def test_divergence_is_a_user_error(tmp_path):
    result = _cli(*SMALL, "--eta", "1", "--out", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    # Progress lines come first; the error is one line, the last, with no traceback.
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in lines if "error:" in line] == lines[-1:] and "diverged" in lines[-1]
    assert not os.listdir(tmp_path)


def test_a_saved_config_repeats_its_run_and_flags_override_it(tmp_path):
    # Mini-batches too: the same settings draw the same batches, so the summary is the same byte for byte.
    first = _run(tmp_path / "a", "--seed", "2", "--gamma", "0", "--loss", "ce", "--batch-size", "50",
                 "--meta-batch-size", "10")
    again = _run(tmp_path / "b", "--config", str(first / "config.json"))
    assert (first / "summary.json").read_bytes() == (again / "summary.json").read_bytes()
    changed = _run(tmp_path / "c", "--config", str(first), "--seed", "3")
    settings = json.loads((changed / "config.json").read_text())["settings"]
    assert settings["seed"] == 3 and settings["gamma"] == 0.0 and settings["loss"] == "ce" and settings["batch_size"] == 50


def test_the_library_and_the_command_give_the_same_run(tmp_path):
    from phases.experiments import SimulationConfig, load_simulation, run_simulation
    from phases.report import claims_table

    out = _run(tmp_path, "--seed", "4", "--variant", "l2rw")
    config = SimulationConfig.from_dict(json.loads((out / "config.json").read_text())["settings"])
    result = run_simulation(config)
    fresh = json.loads(json.dumps(result.summary["claims"], sort_keys=True))
    assert claims_table(fresh) == claims_table(load_simulation(str(out)).summary["claims"])
    np.testing.assert_array_equal(result.trajectory.clean_loss, np.load(out / "trajectory.npz")["clean_loss"])
    saved = Trajectory.load(out / "trajectory.npz")  # compressed by the command as soon as its run ended
    np.testing.assert_array_equal(result.trajectory.w.astype(np.float32), saved.w)
    assert saved.config == result.trajectory.config and saved.config["init"] == "zero"


def test_claims_over_seeds_equal_the_single_runs(tmp_path, capsys):
    study = tmp_path / "study"
    assert main([*SMALL, "--seeds", "1-2", "--workers", "1", "--out", str(study)]) == 0
    table = capsys.readouterr().out
    payload = json.loads((study / "seeds.json").read_text())
    assert payload["seeds"] == [1, 2] and [record["seed"] for record in payload["records"]] == [1, 2]
    for record in payload["records"]:
        single = json.loads((_run(tmp_path / f"seed{record['seed']}", "--seed", str(record["seed"]))
                             / "summary.json").read_text())
        assert {key: value for key, value in record.items() if key not in ("seed", "realised_noise_rate")} == single
    rows = {row["id"]: row for row in payload["claims"]}
    for claim_id, row in rows.items():
        verdicts = [next(c for c in record["claims"] if c["id"] == claim_id)["verdict"] for record in payload["records"]]
        assert (row["holds"], row["fails"], row["n/a"]) == tuple(verdicts.count(v) for v in ("holds", "fails", "n/a"))
        assert claim_id in table
        margins = [next(c for c in record["claims"] if c["id"] == claim_id)["margin"] for record in payload["records"]]
        if None not in margins:  # mean and sample standard deviation over the two seeds
            assert row["margin"]["mean"] == pytest.approx((margins[0] + margins[1]) / 2)
            assert row["margin"]["std"] == pytest.approx(abs(margins[0] - margins[1]) / np.sqrt(2))
    assert len((study / "seeds.csv").read_text().splitlines()) == 3


class _StandIn:
    """A tiny stand-in for the CIFAR-10 extractor: per-channel means and deviations (6 features)."""

    name = "stand-in"
    dim = 6
    batch_size = 10_000
    settings = {"version": 1}

    def __call__(self, images):
        pixels = images.reshape(len(images), -1, 3).astype(np.float32)
        return np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1)


def _fake_cifar_cache(cache_dir):
    """Cache stand-in embeddings of fake 2x2 images whose colour follows the clean class, under the key of the real
    data folder, so that the command reads them instead of decoding and embedding 60,000 images."""
    from dynamics.cifar import DEFAULT_DATA_DIR, load_cifar10n_labels
    from dynamics.embeddings import cached_embeddings, cifar10_source

    clean = load_cifar10n_labels(DEFAULT_DATA_DIR / "cifar10n" / "CIFAR-10_human.pt")["clean_label"]
    test_labels = np.repeat(np.arange(10), 1000)  # the JPEG test files, class by class
    rng = np.random.default_rng(0)

    def images(labels):
        colour = np.stack([labels * 20, (labels % 3) * 60, (labels % 4) * 50], axis=1)[:, None, None, :]
        return np.clip(colour + rng.normal(0, 40, (len(labels), 2, 2, 3)), 0, 255).astype(np.uint8)

    return cached_embeddings(lambda: (images(clean), images(test_labels), test_labels),
                             cifar10_source(DEFAULT_DATA_DIR), _StandIn(), (50_000, 10_000), cache_dir=cache_dir)


requires_cifar_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "SHA256SUMS")),
    reason="no CIFAR-10 data beside the repository")


@requires_cifar_data
def test_cifar10n_runs_on_cached_embeddings(tmp_path, monkeypatch, capsys):
    import dynamics.embeddings

    built = _fake_cifar_cache(tmp_path / "cache")
    monkeypatch.setattr(dynamics.embeddings, "make_extractor", lambda name, size: _StandIn())
    out = tmp_path / "run"
    assert main(["--dataset", "cifar10n-worse", "--n", "400", "--m", "50", "--p", "200", "--steps", "150",
                 "--perturb-draws", "1", "--record-every", "3", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Embeddings: read from the cache: {built.info.path}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["dataset"] == "cifar10n-worse" and config["problem"]["D"] == 6
    assert config["problem"]["source"]["images"] == "CIFAR-10 (JPEG q75)"
    assert 0.3 < config["realised_noise_rate"] < 0.5
    with np.load(out / "problem.npz") as saved:
        assert "X" not in saved.files
        assert len(saved["train_index"]) == 400 and len(saved["meta_index"]) == 50
        assert not set(saved["train_index"]) & set(saved["held_out_index"])
        assert set(saved["meta_index"]) <= set(saved["held_out_index"])
    summary = json.loads((out / "summary.json").read_text())
    assert {claim["id"] for claim in summary["claims"]} >= {"C3", "C5'", "C9", "C12"}
    assert summary["y_true"] is True and summary["final"]["auc"] is not None


@requires_cifar_data
@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/nonexistent"], "no CIFAR-10 images"),
    (["--n", "46000"], "--n must lie in [1, 45000]"),
    (["--save-kernels"], "--save-kernels does not apply"),
])
def test_cifar10n_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["--dataset", "cifar10n-aggre", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.listdir(tmp_path)


@requires_cifar_data
def test_cifar10n_without_the_embeddings_extra_is_one_line(tmp_path, monkeypatch, capsys):
    import dynamics.embeddings

    def unavailable(name, size):
        raise dynamics.embeddings.ExtractorUnavailable("the efficientnet-lite0 extractor needs the embeddings extra")

    monkeypatch.setattr(dynamics.embeddings, "make_extractor", unavailable)
    assert main(["--dataset", "cifar10n-random1", "--out", str(tmp_path / "out")]) == 2
    assert "embeddings extra" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_claim_thresholds_are_flags_and_move_only_their_verdicts(tmp_path):
    default = json.loads((_run(tmp_path / "a", "--seed", "2") / "summary.json").read_text())
    out = _run(tmp_path / "b", "--seed", "2", "--c3-first-step-auc", "1", "--c6-clean-zero", "0")
    strict = json.loads((out / "summary.json").read_text())
    before, after = ({claim["id"]: claim for claim in summary["claims"]} for summary in (default, strict))
    auc = before["C3"]["measured"]["first_step_auc"]
    assert auc < 1 and after["C3"]["verdict"] == "fails"
    assert after["C3"]["margin"] == pytest.approx(auc - 1) and before["C3"]["margin"] == pytest.approx(auc - 0.75)
    assert after["C6"]["threshold"] != before["C6"]["threshold"]
    for claim in set(before) - {"C3", "C6", "C6-end"}:
        assert after[claim]["margin"] == before[claim]["margin"], claim
    assert json.loads((out / "config.json").read_text())["settings"]["c3_first_step_auc"] == 1.0


def test_the_readme_lists_every_claim_threshold_with_its_default():
    from pathlib import Path

    from phases.claims import THRESHOLD_DOCS, Thresholds

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in THRESHOLD_DOCS:
        assert f"| `--{name.replace('_', '-')}` | {getattr(Thresholds(), name):g} |" in readme, name


def test_a_float32_kernel_gives_the_default_run_s_phases_and_verdicts():
    import dataclasses

    from phases.experiments import SimulationConfig, run_simulation

    # The default problem and dynamics; without C7's perturbation draws, which cost 4 steps per step.
    reference = run_simulation(SimulationConfig(perturb_draws=0))
    single = run_simulation(SimulationConfig(perturb_draws=0, kernel_dtype="float32"))
    assert single.blocks.dtype == np.float32 and single.trajectory.w.dtype == np.float64
    for name in ("T_align", "T_filter", "plateau", "T_freeze"):
        assert getattr(single.phases, name) == getattr(reference.phases, name), name
    claims = {claim["id"]: claim for claim in reference.summary["claims"]}
    for claim in single.summary["claims"]:
        assert claim["verdict"] == claims[claim["id"]]["verdict"], claim["id"]
        expected = claims[claim["id"]]["margin"]
        assert claim["margin"] == (None if expected is None else pytest.approx(expected, rel=1e-3, abs=1e-6)), \
            claim["id"]
    difference = np.abs(single.trajectory.w - reference.trajectory.w).max()
    assert 0 < difference < 1e-5  # float32 products do move the weights, by little
    np.testing.assert_array_equal(single.trajectory.w[-1] == 0, reference.trajectory.w[-1] == 0)
    assert dataclasses.asdict(single.config)["kernel_dtype"] == "float32"


def test_kernel_dtype_is_refused_on_features(tmp_path, capsys):
    from phases.simulate import main as simulate_main

    assert simulate_main(["--features", str(tmp_path / "f.npz"), "--kernel-dtype", "float32",
                          "--out", str(tmp_path / "run")]) == 2
    assert "--kernel-dtype applies to the dense kernel" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
