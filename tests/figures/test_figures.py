"""``python -m figures``: the quick regeneration end to end, redrawing from saved results, bad input,
and every figure function on small synthetic results."""

import json
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dynamics.trajectory import Trajectory  # noqa: E402
from figures import FIGURES, finite_eta, finite_gap_time, finite_width, histograms, mechanism, methods, \
    phase_diagram, sensitivity, sign_pattern, spectral, weight_trajectories, weights  # noqa: E402
from figures.__main__ import main  # noqa: E402
from phases.detect import detect_phases  # noqa: E402
from phases.sweep import RECORD_FIELDS  # noqa: E402

# The figures every checkout can make; 7 and 8 need phases.finite / phases.compare.
CORE = ("weights", "mechanism", "histograms", "sensitivity", "spectral", "phase_diagram")
COLUMNS = {  # columns each CSV must hold (some figures add more)
    "weights": {"step", "phase", "mean_w_clean", "mean_w_noisy", "frac_noisy_zero"},
    "mechanism": {"gamma", "step", "phase", "clean_loss", "sqrt_clean_loss", "coupling_norm", "max_velocity",
                  "c4_bound"},
    "histograms": {"phase", "step", "group", "bin_left", "bin_right", "count", "share"},
    "sensitivity": {"step", "phase", "flip_rate", "flip_rate_smoothed", "phase_mean_flip_rate"},
    "spectral": {"panel", "row_class", "col_class", "mean_kernel", "k", "eigenvalue", "clean_energy_share",
                 "noise_energy_share", "uniform_share"},
    "phase_diagram": set(RECORD_FIELDS),
    "finite_width": {"panel", "width", "seed", "weight_gap", "run", "step", "w"},
    "methods": set(methods.COLUMNS),
    "finite_gap_time": {"network", "width", "seed", "step", "weight_gap", "output_gap", "T_align", "T_filter"},
    "finite_eta": {"eta", "eta_fraction", "main", "run", "seed", "weight_gap", "output_gap", "readmitted_noisy",
                   "diverged"},
    "weight_trajectories": set(weight_trajectories.COLUMNS),
    "sign_pattern": set(sign_pattern.TABLE_COLUMNS),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``python -m figures --quick`` shared by the tests below (the slow part of this module)."""
    root = tmp_path_factory.mktemp("figures")
    out, results = root / "out", root / "results"
    status = main(["--quick", "--out", str(out), "--save-results", str(results)])
    with open(out / "figures.json") as handle:
        manifest = json.load(handle)
    return status, out, results, manifest


def test_quick_regeneration_writes_every_available_figure(quick):
    status, out, _, manifest = quick
    assert status == 0
    entries = {entry["name"]: entry for entry in manifest["figures"]}
    assert list(entries) == [module.NAME for module in FIGURES]
    for name, entry in entries.items():
        assert entry["status"] != "failed", entry
        if name in CORE:
            assert entry["status"] == "written", entry
        if entry["status"] == "skipped":  # only figures 7 and 8, and only with a message naming the command
            assert name in ("finite_width", "methods", "finite_gap_time", "finite_eta")
            assert "python -m dynamics." in entry["message"]
            continue
        png, csv = out / f"{name}.png", out / f"{name}.csv"
        assert png.stat().st_size > 10_000
        with open(png, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        table = pd.read_csv(csv)
        assert len(table) > 0
        assert COLUMNS[name] <= set(table.columns), (name, sorted(table.columns))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes leave no temporary files
    gallery = (out / "gallery.md").read_text()
    for name, entry in entries.items():
        assert (f"({name}.png)" in gallery) == (entry["status"] == "written")


def test_quick_data_behind_the_figures_is_consistent(quick):
    _, out, _, _ = quick
    mechanism_table = pd.read_csv(out / "mechanism.csv")
    assert set(mechanism_table["gamma"]) == {0.0, 1.0}
    # C4: the largest velocity never exceeds its bound.
    assert (mechanism_table["max_velocity"] <= mechanism_table["c4_bound"] * (1 + 1e-9)).all()
    sweep = pd.read_csv(out / "phase_diagram.csv")
    assert sorted(set(sweep["noise"])) == [0.0, 0.35, 0.7]
    assert sweep.loc[sweep["noise"] == 0.0, "T_filter"].isna().all()  # no noise: nothing to filter
    hist = pd.read_csv(out / "histograms.csv")
    totals = hist.groupby(["phase", "group"])["count"].sum().unstack()  # rows: phases, columns: clean / noisy
    assert (totals.nunique() == 1).all()  # every example is counted once at the end of every phase


def test_redraw_from_saved_results(quick, tmp_path):
    _, _, results, _ = quick
    out = tmp_path / "again"
    assert main(["1", "histograms", "--from", str(results), "--out", str(out)]) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith((".png", ".csv"))) == \
        ["histograms.csv", "histograms.png", "weights.csv", "weights.png"]


def test_missing_inputs_are_skipped_with_the_producing_command(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["phase_diagram", "finite_width", "--from", str(empty), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "figures.json").read_text())
    messages = {entry["name"]: entry["message"] for entry in manifest["figures"]}
    assert set(messages) == {"phase_diagram", "finite_width"}
    assert "python -m phases.sweep" in messages["phase_diagram"]
    assert "needs results of python -m phases.finite" in messages["finite_width"]
    assert "--from" in messages["finite_width"]


@pytest.mark.parametrize("argv", [
    ["no_such_figure"],
    [str(len(FIGURES) + 1)],  # one past the last figure number
    ["--from", "/nonexistent/results"],
    ["--workers", "0"],
    ["--workers", "two"],
    ["--from", ".", "--quick"],
    ["--from", ".", "--save-results", "somewhere"],
    ["--bogus-flag"],
])
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m figures: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out" / "figures.json").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert main(["--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- figure functions on synthetic results


def _synthetic_trajectory(gamma=1.0, n=40, steps=300, noise_share=0.3, seed=0, flip=True):
    """A Trajectory with the shape of a real run: clean weights rise, noisy ones fall, L_meta contracts."""
    rng = np.random.default_rng(seed)
    step = np.arange(steps + 1)
    noisy = np.zeros(n, bool)
    noisy[: int(noise_share * n)] = True
    rate = rng.uniform(0.02, 0.3, n)
    target = np.where(noisy, 0.0, 1.0)
    w = np.clip(target + (0.5 - target) * np.exp(-np.outer(step, rate)), 0, 1)
    w[:, noisy] = np.where(w[:, noisy] < 0.05, 0.0, w[:, noisy])
    floor = 0.0 if gamma > 0 else 0.1
    clean_loss = floor + 0.5 * np.exp(-step / 40.0)
    coupling = np.sqrt(2 * 10 * clean_loss)
    residual_norm = np.tile(rng.uniform(0.5, 1.5, n), (len(step), 1))
    k_meta_norm = rng.uniform(5, 10, n)
    score = 0.5 * residual_norm * k_meta_norm[None, :] * coupling[:, None] * rng.uniform(-1, 1, (len(step), n))
    return Trajectory(
        step=step, w=w, score=score, residual_norm=residual_norm, clean_loss=clean_loss, coupling_norm=coupling,
        train_loss_clean=clean_loss, train_loss_noisy=clean_loss + 0.5, test_loss=clean_loss,
        test_accuracy=np.full(len(step), 0.9), flip_rate=np.minimum(step / steps, 1) * 0.3 if flip
        else np.full(len(step), np.nan),
        noisy=noisy, label_similarity=rng.normal(size=n), k_meta_norm=k_meta_norm,
        outputs=np.zeros((n, 3)), meta_outputs=np.zeros((10, 3)), test_outputs=np.zeros((20, 3)),
        config={"beta": 1.0, "m": 10, "gamma": gamma, "eta": 0.01, "perturb_eps": 0.01, "perturb_draws": 2,
                "loss": "mse", "seed": seed},
    )


def _check(result):
    fig, table = result
    assert isinstance(fig, plt.Figure)
    assert isinstance(table, pd.DataFrame) and len(table) > 0
    fig.canvas.draw()  # layout and text render without errors
    plt.close(fig)
    return table


@pytest.fixture(scope="module")
def run():
    trajectory = _synthetic_trajectory()
    return trajectory, detect_phases(trajectory)


def test_weights_figure(run):
    table = _check(weights.figure(*run, per_group=5))
    assert len([c for c in table.columns if c.startswith("w_noisy_")]) == 5


def test_mechanism_figure(run):
    gamma0 = _synthetic_trajectory(gamma=0.0)
    table = _check(mechanism.figure({1.0: run, 0.0: (gamma0, detect_phases(gamma0))}))
    assert set(table["gamma"]) == {0.0, 1.0}


def test_histograms_figure(run):
    table = _check(histograms.figure(*run))
    counts = table.groupby(["phase", "group"])["count"].sum()
    n_noisy = int(run[0].noisy.sum())
    assert (counts.xs("noisy", level="group") == n_noisy).all()


def test_sensitivity_figure(run):
    _check(sensitivity.figure(*run))
    unmeasured = _synthetic_trajectory(flip=False)
    _check(sensitivity.figure(unmeasured, detect_phases(unmeasured)))  # drawn with a note, not an error


def test_spectral_figure():
    rng = np.random.default_rng(0)
    y_true = np.arange(60) % 3
    features = np.eye(3)[y_true] * 3 + rng.normal(size=(60, 3))
    K = features @ features.T + 0.1 * np.eye(60)
    y_noisy = np.where(rng.random(60) < 0.3, (y_true + 1) % 3, y_true)
    table = _check(spectral.figure(K, y_true, y_noisy, 3))
    energy = table[table["panel"] == "energy"]
    assert np.isclose(energy["clean_energy_share"].iloc[-1], 1.0)
    assert energy["eigenvalue"].is_monotonic_decreasing


def test_sign_pattern_figure():
    from phases.sign_pattern import sign_pattern as pattern_of

    rng = np.random.default_rng(0)
    y_true = np.arange(30) % 2
    y_noisy = np.where(rng.random(30) < 0.3, 1 - y_true, y_true)
    y_meta = np.arange(6) % 2
    X, V = rng.normal(size=(30, 4)) + y_true[:, None], rng.normal(size=(6, 4)) + y_meta[:, None]
    examples = {"train": 30, "of_train": 30, "clean": 6, "of_clean": 6, "subsample_seed": None}
    noisy = pattern_of(V @ X.T, X @ X.T, V @ V.T, y_noisy, y_true, y_meta, 2) | {"examples": examples, "binary": True}
    clean = pattern_of(V @ X.T, X @ X.T, V @ V.T, y_true, y_true, y_meta, 2) | {"examples": examples}  # no noisy row
    table = _check(sign_pattern.figure([("noisy", noisy), ("no noise", clean)]))
    assert len(table) == 2 * 2 * 2 * 3 * 4  # problems x kernels x blocks x groups x statistics
    assert table.loc[(table["problem"] == "no noise") & (table["group"] == "noisy"), "share"].isna().all()


def test_phase_diagram_figure():
    records = [{"noise": rate, "seed": seed, "T_align": 7 + seed, "T_filter": None if rate == 0 else 400 + seed,
                "plateau": 400 + seed, "frac_noisy_zero_at_filter": None if rate == 0 else 0.5 + rate / 2,
                "frac_noisy_zero_end": None if rate == 0 else 0.5 + rate / 2, "frac_clean_zero_end": 0.1}
               for rate in (0.0, 0.3, 0.6) for seed in range(3)]
    table = _check(phase_diagram.figure(records, {"n": 100, "num_classes": 4, "steps": 500, "gamma": 1.0}))
    assert list(table.columns) == list(RECORD_FIELDS) and len(table) == 9


def test_finite_width_figure():
    widths = [64, 256, 1024]
    summary = {"slope": -0.5, "slope_stderr": 0.05, "per_width": [
        {"width": width, "runs": [{"seed": seed, "weight_gap": 2 / np.sqrt(width) * (1 + 0.1 * seed),
                                   "output_gap": 1 / np.sqrt(width), "T_align": 6, "T_filter": 60} for seed in (0, 1)]}
        for width in widths]}
    linear = _synthetic_trajectory()
    finite = {(width, seed): _synthetic_trajectory(seed=seed) for width in widths for seed in (0, 1)}
    table = _check(finite_width.figure(summary, linear, finite, per_group=2))
    assert set(table.loc[table["panel"] == "trajectory", "run"]) == {"linearized", "64", "1024"}
    assert len(table[table["panel"] == "gap"]) == 6
    _check(finite_width.figure(summary))  # gaps only: the trajectory panel says what is missing


def _compare_payload(data, noise=None, label_set=None):
    problem = {"label_set": label_set} if label_set else {"noise_rate": noise}
    runs = [{"method": method, "seed": seed, "test_accuracy": 0.8 + 0.01 * seed, "f1": 0.9, "precision": 0.9,
             "recall": 0.9, "auc": 0.9, "realised_noise_rate": noise}
            for method in ("erm", "meta", "surrogate", "oracle", "newmethod") for seed in (0, 1)]
    return {"schema": "phases.comparison/1", "data": data, "setup": {"data": data, "problem": problem}, "runs": runs}


def test_methods_figure():
    records = []
    for data in ("gmm", "digits"):
        for noise in (0.2, 0.4):
            records += methods.records_from_json(_compare_payload(data, noise), f"{data}-{noise}/results.json")
    table = _check(methods.figure(records))  # no CIFAR-10N: the bar column says how to get it
    assert set(table["dataset"]) == {"gmm", "digits"}
    for label_set in ("worse", "aggre"):
        records += methods.records_from_json(_compare_payload(f"cifar10n-{label_set}", label_set=label_set))
    table = _check(methods.figure(records))
    cifar = table[table["dataset"] == "cifar10n"]
    assert set(cifar["label_set"]) == {"worse", "aggre"} and cifar["noise"].isna().all()
    assert methods.records_from_json({"something": "else"}) == []


def test_damaged_saved_results_are_one_line_not_a_traceback(tmp_path):
    root = tmp_path / "results"
    (root / "gamma1").mkdir(parents=True)
    for name in ("config.json", "problem.npz", "trajectory.npz"):
        (root / "gamma1" / name).write_bytes(b"truncated")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep.json").write_text('{"records": [')
    assert main(["weights", "phase_diagram", "--from", str(root), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "figures.json").read_text())
    for entry in manifest["figures"]:
        assert entry["status"] == "skipped" and "cannot be read" in entry["message"], entry
        assert "\n" not in entry["message"] and "Traceback" not in entry["message"]


def test_figures_output_is_staged_marked_and_replaced_only_on_request(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = ["phase_diagram", "--from", str(empty), "--out", str(out)]
    assert main(argv) == 0 and (out / "figures.json").is_file()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.png").write_bytes(b"mine")
    assert main(["phase_diagram", "--from", str(empty), "--out", str(docs), "--overwrite"]) == 2
    assert main(["phase_diagram", "--from", str(empty), "--out", str(docs), "--in-place"]) == 0
    assert (docs / "keep.png").read_bytes() == b"mine" and (docs / "figures.json").is_file()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def _finite_summary(fractions=(0.3, 0.6, 0.95), widths=(64, 256, 1024)):
    """A summary.json of python -m phases.finite with gap series and an eta sweep (a diverged seed at 0.95)."""
    steps = list(range(0, 101, 5))

    def run(width, seed, fraction):
        scale = (1 + 0.1 * seed) * (1 + fraction) / np.sqrt(width)
        series = {"weight_gap": [0.0] + [scale * (1 - np.exp(-t / 30)) for t in steps[1:]],
                  "output_gap": [0.0] + [scale / 2 for _ in steps[1:]]}
        return {"seed": seed, "weight_gap": max(series["weight_gap"]), "output_gap": series["output_gap"][-1],
                "readmitted_noisy": 0.1 * fraction, "series": series}

    def spread(values):
        present = [v for v in values if v is not None]
        return {"per_seed": values, "mean": float(np.mean(present)) if present else None}

    sweep = []
    for fraction in fractions:
        per_width = []
        for width in widths:
            runs = [run(width, seed, fraction) for seed in (0, 1)]
            if fraction > 0.9 and width == widths[0]:
                runs[1] = {"seed": 1, "diverged": "losses no longer finite"}
            per_width.append({"width": width, "runs": runs, "diverged_seeds": [r["seed"] for r in runs
                                                                                 if "diverged" in r]}
                             | {key: spread([r.get(key) for r in runs])
                                for key in ("weight_gap", "output_gap", "readmitted_noisy")})
        sweep.append({"eta": fraction / 10, "eta_fraction": fraction, "main": fraction == 0.6,
                      "linearized": {"readmitted_noisy": 0.05 * fraction}, "per_width": per_width})
    main = next(entry for entry in sweep if entry["main"])
    return {"record_steps": steps, "per_width": main["per_width"], "eta_sweep": sweep,
            "linearized": {"T_align": 6, "T_filter": 60, "readmitted_noisy": 0.03},
            "config": {"finite": {"network": "mlp", "depth": 1}}}


def test_finite_gap_time_figure():
    summary = _finite_summary()
    table = _check(finite_gap_time.figure([summary, summary | {"config": {"finite": {"network": "cnn",
                                                                                      "depth": 1}}}]))
    assert set(table["network"]) == {"MLP, depth 1", "CNN, 1 conv layer(s)"}
    assert len(table) == 2 * 3 * 2 * 21  # networks x widths x seeds x recorded steps
    peak = table.groupby(["network", "width", "seed"])["weight_gap"].max()
    assert np.allclose(peak.xs("MLP, depth 1").to_numpy(),
                       [r["weight_gap"] for row in summary["per_width"] for r in row["runs"]])
    with pytest.raises(ValueError, match="record_steps"):
        finite_gap_time.figure([{"per_width": []}])


def test_finite_eta_figure():
    table = _check(finite_eta.figure(_finite_summary()))
    assert sorted(set(table["eta_fraction"])) == [0.3, 0.6, 0.95]
    assert table["diverged"].sum() == 1 and set(table["run"]) == {"linearized", "64", "256", "1024"}
    with pytest.raises(ValueError, match="eta_sweep"):
        finite_eta.figure({"per_width": []})
    nothing_filtered = _finite_summary()
    for entry in nothing_filtered["eta_sweep"]:
        entry["linearized"]["readmitted_noisy"] = None
        for row in entry["per_width"]:
            row["readmitted_noisy"]["per_seed"] = [None, None]
    assert _check(finite_eta.figure(nothing_filtered))["readmitted_noisy"].isna().all()


def _epoch_weights(rng, n=30, epochs=4, seeds=(0, 1, 2)):
    """Per-epoch weights of three kinds of method (constant, continuous, 0/1 selection) and the seeds' masks."""
    noisy = {seed: rng.random(n) < 0.4 for seed in seeds}
    epoch_weights = {
        "erm": {seed: np.ones((epochs, n), np.float32) for seed in seeds},
        "meta": {seed: rng.uniform(0, 1, (epochs, n)).astype(np.float32) for seed in seeds},
        "small-loss": {seed: (rng.random((epochs, n)) < 0.5).astype(np.float32) for seed in seeds},
    }
    return epoch_weights, noisy


def test_weight_trajectories_figure():
    epochs = 4
    epoch_weights, noisy = _epoch_weights(np.random.default_rng(0), epochs=epochs)
    table = _check(weight_trajectories.figure(epoch_weights, noisy, title="synthetic", warmup_epochs=1))
    assert list(table.columns) == list(weight_trajectories.COLUMNS)
    assert len(table) == len(epoch_weights) * epochs and list(dict.fromkeys(table["method"])) == list(epoch_weights)
    for method, per_seed in epoch_weights.items():
        rows = table[table["method"] == method]
        assert rows["epoch"].tolist() == list(range(1, epochs + 1)) and (rows["seeds"] == 3).all()
        expected = {
            "mean_w_clean": [per_seed[s][:, ~noisy[s]].mean(axis=1) for s in noisy],
            "mean_w_noisy": [per_seed[s][:, noisy[s]].mean(axis=1) for s in noisy],
            "frac_clean_zero": [(per_seed[s][:, ~noisy[s]] == 0).mean(axis=1) for s in noisy],
            "frac_noisy_zero": [(per_seed[s][:, noisy[s]] == 0).mean(axis=1) for s in noisy],
        }
        for column, per_seed_series in expected.items():
            assert np.allclose(rows[column], np.mean(per_seed_series, axis=0)), (method, column)
            assert np.allclose(rows[column + "_sd"], np.std(per_seed_series, axis=0, ddof=1)), (method, column)
        assert rows["constant"].all() == (method == "erm")
    one_seed = _check(weight_trajectories.figure({"meta": {0: epoch_weights["meta"][0]}}, {0: noisy[0]}))
    assert len(one_seed) == epochs and one_seed["mean_w_clean_sd"].isna().all()
    with pytest.raises(ValueError, match="noise mask"):
        weight_trajectories.figure({"meta": {7: epoch_weights["meta"][0]}}, noisy)


def test_weight_trajectories_from_saved_comparisons(tmp_path):
    """--from DIR draws one comparison of DIR/compare (CIFAR-10N preferred); outputs without masks are skipped."""
    rng = np.random.default_rng(1)
    root, drawn = tmp_path / "results", {}
    for name, data, masks in (("gmm-noise0.4", "gmm", True), ("worse", "cifar10n-worse", True),
                              ("old", "cifar10n-aggre", False)):
        folder = root / "compare" / name
        folder.mkdir(parents=True)
        epoch_weights, noisy = _epoch_weights(rng, n=20 if data == "gmm" else 25, epochs=3, seeds=(0, 1))
        drawn[name] = np.mean([epoch_weights["meta"][s][:, ~noisy[s]].mean(axis=1) for s in noisy], axis=0)
        (folder / "results.json").write_text(json.dumps({
            "data": data, "profile": "linear", "methods": ["small-loss", "erm", "meta"],
            "setup": {"problem": {"noise_rate": 0.4} if data == "gmm" else {"label_set": data[9:]},
                      "budget": {"warmup_epochs": 1}},
            "problems": [{"seed": s, "n": len(noisy[s]), "realised_noise_rate": float(noisy[s].mean())}
                         for s in noisy]}))
        arrays = {f"{m}/seed{s}/epochs": w for m, per_seed in epoch_weights.items() for s, w in per_seed.items()}
        arrays |= {f"{m}/seed{s}": w[-1] for m, per_seed in epoch_weights.items() for s, w in per_seed.items()}
        if masks:
            arrays |= {f"noisy/seed{s}": mask for s, mask in noisy.items()}
        np.savez(folder / "weights.npz", **arrays)
    out = tmp_path / "out"
    assert main(["weight_trajectories", "--from", str(root), "--out", str(out)]) == 0
    table = pd.read_csv(out / "weight_trajectories.csv")
    assert list(dict.fromkeys(table["method"])) == ["small-loss", "erm", "meta"] and len(table) == 9
    assert np.allclose(table.loc[table["method"] == "meta", "mean_w_clean"], drawn["worse"])  # CIFAR-10N preferred
    shutil.rmtree(root / "compare" / "worse")
    shutil.rmtree(root / "compare" / "gmm-noise0.4")
    assert main(["weight_trajectories", "--from", str(root), "--out", str(tmp_path / "out2")]) == 0
    entry = json.loads((tmp_path / "out2" / "figures.json").read_text())["figures"][0]
    assert entry["status"] == "skipped" and "noisy/seedS" in entry["message"] and "phases.compare" in entry["message"]
