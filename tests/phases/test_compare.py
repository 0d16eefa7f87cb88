"""The method comparison: the library (``phases.comparison``) and ``python -m phases.compare``, at tiny sizes."""

import dataclasses
import json
import os
import types

import numpy as np
import pandas as pd
import pytest

from dynamics.methods import MetaParams, SmallLossParams
from phases.compare import main
from dynamics.embeddings import save_features
from dynamics.methods import SurrogateParams
from dynamics.problem import gaussian_mixture
from phases.comparison import METRICS, SCHEMA, compare, resolve_setup, results_frame, summary_table, write_results

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_TINY = {"epochs": 2, "n_train": 80, "budget_overrides": {"batch_size": 32, "meta_batch_size": 16}}
PROG = "python -m phases.compare"


def test_compare_returns_the_documented_schema_and_reports_progress(tmp_path):
    events = []
    results = compare("gmm", ["erm", "oracle", "small-loss"], 2, params={"small-loss": SmallLossParams(0.25)},
                      progress=events.append, **_TINY)
    assert results["schema"] == SCHEMA
    assert results["seeds"] == [0, 1] and results["methods"] == ["erm", "oracle", "small-loss"]
    assert len(results["runs"]) == 6 and not results["skipped"]
    assert [info["n"] for info in results["problems"]] == [80, 80]
    for method in results["methods"]:
        entry = results["summary"][method]
        assert set(entry) == set(METRICS)
        values = [run["test_accuracy"] for run in results["runs"] if run["method"] == method]
        assert entry["test_accuracy"]["values"] == values
        assert entry["test_accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert entry["test_accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert set(results["weights"][method]) == {0, 1}
        assert results["weights"][method][0].shape == (80,)
        assert results["epoch_weights"][method][1].shape == (2, 80)
    assert results["summary"]["oracle"]["precision"]["mean"] == 1.0
    assert results["setup"]["params"]["small-loss"] == {"forget_rate": 0.25}
    assert results["setup"]["params"]["meta"] == {"beta": 1.0, "w0": 0.5}
    small_loss = [run for run in results["runs"] if run["method"] == "small-loss"]
    assert all(run["params"] == {"forget_rate": 0.25} for run in small_loss)
    erm = [run for run in results["runs"] if run["method"] == "erm"]
    assert all(run["params"] == {} for run in erm)
    table = summary_table(results)
    assert list(table.index) == ["erm", "oracle", "small-loss"]
    values = results["summary"]["erm"]["test_accuracy"]["values"]
    assert table.loc["erm", "final test acc"] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    for run in results["runs"]:
        best = int(np.argmin(run["history"]["clean_loss"]))
        assert run["best_epoch"] == best and run["best_epoch_accuracy"] == run["history"]["test_accuracy"][best]

    # One event per epoch and per finished run, counting up to the whole.
    assert [event.epochs_done for event in events] == sorted(event.epochs_done for event in events)
    assert events[-1].epochs_done == events[-1].epochs_total == 6 * 2
    finished = [event for event in events if event.finished is not None]
    assert [event.runs_done for event in finished] == list(range(1, 7)) and finished[-1].runs_total == 6

    assert write_results(results, str(tmp_path), "a command") == ["results.json", "results.md", "results.csv",
                                                                  "weights.npz"]
    table = pd.read_csv(tmp_path / "results.csv", header=[0, 1], index_col=0)
    for method, metrics in results["summary"].items():
        if metrics.get("test_accuracy"):
            assert table.loc[method, ("test_accuracy", "mean")] == pytest.approx(
                np.mean(metrics["test_accuracy"]["values"]), rel=1e-5)
    with np.load(tmp_path / "weights.npz") as weights:
        assert np.array_equal(weights["oracle/seed1"], results["weights"]["oracle"][1])
        assert np.array_equal(weights["small-loss/seed0/epochs"], results["epoch_weights"]["small-loss"][0])
        for seed in (0, 1):  # the oracle keeps exactly the examples the saved mask calls clean
            assert weights[f"noisy/seed{seed}"].dtype == bool
            assert np.array_equal(weights[f"oracle/seed{seed}"] == 0, weights[f"noisy/seed{seed}"])


def test_parallel_jobs_reproduce_the_serial_run():
    serial = compare("gmm", ["small-loss"], [3], **_TINY)
    parallel = compare("gmm", ["small-loss", "erm"], [3], jobs=2, **_TINY)
    run = [r for r in parallel["runs"] if r["method"] == "small-loss"][0]
    assert run["test_accuracy"] == serial["runs"][0]["test_accuracy"]
    assert np.array_equal(parallel["weights"]["small-loss"][3], serial["weights"]["small-loss"][3])
    assert np.array_equal(parallel["epoch_weights"]["small-loss"][3], serial["epoch_weights"]["small-loss"][3])


def test_resolve_setup_states_the_cpu_profile_and_rejects_noise_on_real_labels():
    setup = resolve_setup("cifar10n-worse", "cpu")
    assert "SmallCNN" in setup.description and "training images" in setup.description
    assert setup.network["kind"] == "cnn" and setup.problem["label_set"] == "worse"
    with pytest.raises(ValueError, match="profile linear trains on frozen features"):
        resolve_setup("gmm", "linear")
    with pytest.raises(ValueError, match="needs a feature profile"):
        resolve_setup("features", "cpu", features="x.npz")
    with pytest.raises(ValueError, match="real human label noise"):
        resolve_setup("cifar10n-worse", noise_rate=0.2)
    assert resolve_setup("gmm", params={"meta": MetaParams(beta=0.5)}).params["meta"].beta == 0.5
    with pytest.raises(ValueError, match="MetaParams"):
        resolve_setup("gmm", params={"meta": SmallLossParams()})
    with pytest.raises(ValueError, match="unknown method 'mixup'"):
        resolve_setup("gmm", params={"mixup": MetaParams()})


def test_cli_writes_json_markdown_and_weights(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["--data", "digits", "--methods", "erm,oracle,cleanlab", "--seeds", "2", "--epochs", "1",
               "--n-train", "100", "--batch-size", "50", "--forget-rate", "0.3", "--jobs", "1", "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "| method" in captured.out and "final test acc" in captured.out and "oracle" in captured.out
    assert "[6/6]" in captured.err  # one line per finished run
    assert sorted(name for name in os.listdir(out) if not name.startswith(".")) == \
        ["records.jsonl", "results.csv", "results.json", "results.md", "runs", "weights.npz"]
    with open(out / "results.json") as handle:
        results = json.loads(handle.read(), parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert results["command"].startswith(f"{PROG} --data digits")
    assert results["setup"]["budget"]["epochs"] == 1 and results["setup"]["problem"]["n"] == 100
    assert results["setup"]["params"]["coteaching"] == {"forget_rate": 0.3}
    assert "torch" in results["versions"]
    assert {run["method"] for run in results["runs"]} <= {"erm", "oracle", "cleanlab"}
    markdown = (out / "results.md").read_text()
    assert "| method " in markdown and "best-epoch test acc |" in markdown and PROG in markdown
    with np.load(out / "weights.npz") as weights:
        assert weights["oracle/seed1"].shape == (100,) and weights["erm/seed0/epochs"].shape == (1, 100)
    if "cleanlab" in results["skipped"]:
        assert "pip install cleanlab" in markdown
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no staging left behind


_RESUMABLE = ["--data", "gmm", "--seeds", "2", "--epochs", "2", "--n-train", "80", "--batch-size", "32",
              "--meta-batch-size", "16", "--jobs", "1"]


def _measured(results: dict) -> dict:
    """What a run computes, by (method, seed): its metrics but wall time and memory, and its weights."""
    runs = {f"{run['method']}/seed{run['seed']}": {metric: run[metric] for metric in METRICS
                                           if metric not in ("wall_time_per_epoch", "peak_memory_mb")}
            for run in results["runs"]}
    return runs | {"keys": sorted(run["key"] for run in results["runs"])}


def test_an_interrupted_comparison_resumes_without_training_a_finished_run_again(tmp_path, capsys, monkeypatch):
    import phases.comparison as comparison

    whole = tmp_path / "whole"
    assert main([*_RESUMABLE, "--methods", "erm,small-loss", "--out", str(whole)]) == 0
    trained, real = [], comparison._run_one

    def interrupted_at_the_third(setup, method, seed, *args, **kwargs):
        trained.append((method, seed))
        if len(trained) == 3 and not out.exists():  # Ctrl-C during the first attempt's third run
            raise KeyboardInterrupt
        return real(setup, method, seed, *args, **kwargs)

    monkeypatch.setattr(comparison, "_run_one", interrupted_at_the_third)
    out = tmp_path / "out"
    assert main([*_RESUMABLE, "--methods", "erm,small-loss", "--out", str(out)]) == 130
    assert not out.exists() and "--resume continues" in capsys.readouterr().err
    trained.clear()
    assert main([*_RESUMABLE, "--methods", "erm,small-loss", "--out", str(out), "--resume"]) == 0
    assert len(trained) == 2 and "2 of 4 runs already recorded" in capsys.readouterr().err
    load = lambda path: json.loads((path / "results.json").read_text())  # noqa: E731
    assert _measured(load(out)) == _measured(load(whole))
    with np.load(out / "weights.npz") as resumed, np.load(whole / "weights.npz") as fresh:
        assert sorted(resumed.files) == sorted(fresh.files)
        for name in fresh.files:
            np.testing.assert_array_equal(resumed[name], fresh[name])
    # A finished comparison grows by --resume: a new seed trains only its own runs; a method's own setting
    # retrains only that method's runs; runs the request leaves out leave the directory.
    trained.clear()
    assert main([*_RESUMABLE, "--methods", "erm,small-loss", "--seeds", "3", "--out", str(out), "--resume"]) == 0
    assert sorted(trained) == [("erm", 2), ("small-loss", 2)]
    trained.clear()
    assert main([*_RESUMABLE, "--methods", "small-loss", "--seeds", "3", "--forget-rate", "0.1", "--out", str(out),
                 "--resume"]) == 0
    assert sorted(trained) == [("small-loss", 0), ("small-loss", 1), ("small-loss", 2)]
    results = load(out)
    assert [run["method"] for run in results["runs"]] == ["small-loss"] * 3
    assert len(os.listdir(out / "runs")) == 3 and len((out / "records.jsonl").read_text().splitlines()) == 3
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--data", "mnist"], "invalid choice"),
    (["--seeds", "1"], "give one of --data (--dataset) and --features"),
    (["--features", "{tmp}/none.npz"], "is not a file"),
    (["--data", "gmm", "--profile", "linear"], "frozen features"),
    (["--data", "gmm", "--seeds", "0"], "--seeds"),
    (["--data", "gmm", "--methods", "erm,bogus"], "bogus"),
    (["--data", "gmm", "--epochs", "-1"], "--epochs"),
    (["--data", "gmm", "--lr", "0"], "--lr"),
    (["--data", "gmm", "--weight-decay", "-1"], "--weight-decay"),
    (["--data", "gmm", "--forget-rate", "1"], "forget_rate"),
    (["--data", "gmm", "--device", "no-such-device"], "device"),
    (["--data", "cifar10n-worse", "--noise", "0.2"], "real human label noise"),
    (["--data", "digits", "--n-train", "5000"], "n + m"),
    (["--data", "gmm", "--noise", "1.5"], "noise"),
    (["--data", "cifar10n-worse", "--data-dir", "{tmp}", "--epochs", "1"], "no CIFAR-10 images"),
    (["--data", "gmm", "--methods", "erm", "--seeds", "1", "--epochs", "2", "--n-train", "100", "--batch-size", "20",
      "--lr", "1e9"],
     "lower the learning rate"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv] + ["--jobs", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error:"), err
    assert message in err[0]
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--data", "gmm", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_help_states_units_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for fragment in ("--data", "--methods", "--seeds", "--profile", "--out", "default", "epochs"):
        assert fragment in text


def test_reference_profile_is_the_reference_codes_protocol():
    """docs/theory.md section 6: ResNet-34, 150 epochs, lr 0.02 x0.1 at 40/80/100, momentum 0.9, weight decay
    1e-3, batch 128, 2,000 clean images, 30 clean passes per epoch."""
    setup = resolve_setup("cifar10n-aggre", "reference", device="cpu")
    budget = setup.budget
    assert setup.network["kind"] == "resnet34" and setup.problem["n_meta"] == 2000
    assert setup.problem["n_train"] == 45_000 and setup.params["surrogate-no-shift"].recompute == "batch"
    assert (budget.epochs, budget.lr, budget.momentum, budget.weight_decay, budget.batch_size) == \
        (150, 0.02, 0.9, 1e-3, 128)
    assert budget.milestones == (40, 80, 100) and budget.clean_passes == 30
    linear = resolve_setup("cifar10n-random2", "linear")
    assert linear.network == {"kind": "linear"} and linear.problem == {"label_set": "random2", "n_train": None}
    assert "45,000 noisy / 2,000 clean / 10,000 test" in linear.description
    # Regime 2 trains without weight decay, so that plain ERM memorises the noisy labels (README, regime 2).
    head = resolve_setup("cifar10n-worse", "mlp-head")
    assert head.network == {"kind": "mlp", "hidden": [512]}
    assert (head.budget.epochs, head.budget.weight_decay) == (40, 0)
    decayed = resolve_setup("cifar10n-worse", "mlp-head", budget_overrides={"weight_decay": 5e-4})
    assert decayed.budget.weight_decay == 5e-4
    # The surrogate's settings are shared by its ablations, each keeping its own change.
    shared = resolve_setup("gmm", params={"surrogate": SurrogateParams(recompute="batch")}).params
    assert shared["surrogate-no-center"] == SurrogateParams(recompute="batch", center=False)


@pytest.fixture(scope="module")
def features_file(tmp_path_factory):
    problem = gaussian_mixture(np.random.default_rng(5), n=120, m=30, p=60, num_classes=3, dim=8, noise_rate=0.3)
    path = tmp_path_factory.mktemp("features") / "mine.npz"
    save_features(path, problem)
    return path, problem


def test_linear_profile_on_a_features_file(features_file, tmp_path, capsys):
    path, problem = features_file
    out = tmp_path / "linear"
    methods = "erm,erm-clean,early-stop,trusted-lr,surrogate,surrogate-alpha0-zero,oracle"
    assert main(["--features", str(path), "--methods", methods, "--seeds", "2", "--epochs", "3", "--batch-size",
                 "32", "--meta-batch-size", "16", "--clean-passes", "2", "--jobs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "linear profile: a linear head on the features of mine.npz" in captured.out
    assert "| trusted-lr " in captured.out
    with open(out / "results.json") as handle:
        results = json.load(handle)
    assert results["profile"] == "linear" and results["setup"]["budget"]["clean_passes"] == 2
    assert [info["n"] for info in results["problems"]] == [120, 120]
    assert results["problems"][0]["realised_noise_rate"] == pytest.approx(problem.noise_rate)
    frame = pd.read_csv(out / "results.csv", header=[0, 1], index_col=0)
    assert list(frame.index) == methods.split(",")
    assert frame.loc["oracle", ("precision", "mean")] == 1.0
    assert frame.loc["erm", ("best_epoch_accuracy", "mean")] == pytest.approx(
        results["summary"]["erm"]["best_epoch_accuracy"]["mean"])
    assert "| surrogate-alpha0-zero " in (out / "results.md").read_text()


def test_a_features_file_without_true_labels_has_no_detection_scores(features_file, tmp_path):
    path, problem = features_file
    unlabelled = tmp_path / "unlabelled.npz"
    with np.load(path) as arrays:
        np.savez(unlabelled, **{key: arrays[key] for key in arrays.files if key != "y_true"})
    results = compare("features", ["erm", "oracle"], 1, profile="linear", features=str(unlabelled), epochs=1,
                      budget_overrides={"batch_size": 32, "meta_batch_size": 16})
    assert "y_true" in results["skipped"]["oracle"]
    assert np.isnan(results["summary"]["erm"]["f1"]["mean"]) and results["summary"]["erm"]["test_accuracy"]["mean"] > 0
    assert np.isnan(results_frame(results).loc["erm", ("auc", "mean")])


def test_reference_profile_trains_end_to_end_on_a_tiny_slice():
    """The reference profile's network, protocol and surrogate settings, on 24 random 8 x 8 images (decoding the
    CIFAR-10 images takes minutes; the profile's loader is the cpu profile's): the step schedule, the clean passes and
    the per-batch surrogate weights run on ResNet-34."""
    from dynamics.methods import TrainingData, train
    from phases.comparison import _factory

    setup = resolve_setup("cifar10n-worse", "reference", device="cpu")
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 3
    problem = types.SimpleNamespace(  # the fields TrainingData.from_images reads from a dynamics.cifar.ImageProblem
        images=images[:24], y_noisy=(labels[:24] + (np.arange(24) < 6)) % 3, y_true=labels[:24],
        meta_images=images[24:32], y_meta=labels[24:32], test_images=images[32:], y_test=labels[32:],
        num_classes=3, name="tiny images")
    data = TrainingData.from_images(problem)
    budget = dataclasses.replace(setup.budget, epochs=2, milestones=(1,), clean_passes=1, batch_size=12,
                                 meta_batch_size=4, warmup_epochs=1)
    result = train("surrogate", data, _factory(setup.network, data), budget, 0, setup.params["surrogate"])
    assert result.epoch_weights.shape == (2, 24) and np.all(result.epoch_weights[0] == 1)
    assert result.config["network"] == "ResNet34" and result.config["params"]["recompute"] == "batch"
