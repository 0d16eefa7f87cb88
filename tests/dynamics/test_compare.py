"""``python -m dynamics.compare`` and its library entry point, at tiny sizes."""

import json
import os

import numpy as np
import pytest

from dynamics.compare import METRICS, SCHEMA, compare, format_table, main, resolve_setup

_TINY = {"epochs": 2, "n_train": 80, "budget_overrides": {"batch_size": 32, "meta_batch_size": 16}}


def test_compare_returns_the_documented_schema():
    results = compare("gmm", ["erm", "oracle", "surrogate"], 2, **_TINY)
    assert results["schema"] == SCHEMA
    assert results["seeds"] == [0, 1] and results["methods"] == ["erm", "oracle", "surrogate"]
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
    assert results["summary"]["oracle"]["precision"]["mean"] == 1.0
    assert "oracle" in format_table(results)


def test_parallel_jobs_reproduce_the_serial_run():
    serial = compare("gmm", ["small-loss"], [3], **_TINY)
    parallel = compare("gmm", ["small-loss", "erm"], [3], jobs=2, **_TINY)
    run = [r for r in parallel["runs"] if r["method"] == "small-loss"][0]
    assert run["test_accuracy"] == serial["runs"][0]["test_accuracy"]
    assert np.array_equal(parallel["weights"]["small-loss"][3], serial["weights"]["small-loss"][3])


def test_resolve_setup_states_the_cpu_profile_and_rejects_noise_on_real_labels():
    setup = resolve_setup("cifar10n-worse", "cpu")
    assert "SmallCNN" in setup.description and "training images" in setup.description
    assert setup.network["kind"] == "cnn" and setup.problem["label_set"] == "worse"
    assert resolve_setup("cifar10n-aggre", "gpu", device="cpu").network["kind"] == "resnet34"
    with pytest.raises(ValueError, match="real human label noise"):
        resolve_setup("cifar10n-worse", noise_rate=0.2)


def test_cli_writes_json_markdown_and_weights(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["--data", "digits", "--methods", "erm,oracle,cleanlab", "--seeds", "2", "--epochs", "1",
               "--n-train", "100", "--batch-size", "50", "--jobs", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "oracle" in printed
    assert sorted(os.listdir(out)) == ["results.json", "results.md", "weights.npz"]
    with open(out / "results.json") as handle:
        results = json.loads(handle.read(), parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert results["command"].startswith("python -m dynamics.compare --data digits")
    assert results["setup"]["budget"]["epochs"] == 1 and results["setup"]["problem"]["n"] == 100
    assert "torch" in results["versions"]
    assert {run["method"] for run in results["runs"]} <= {"erm", "oracle", "cleanlab"}
    markdown = (out / "results.md").read_text()
    assert "| method | test acc |" in markdown and "python -m dynamics.compare" in markdown
    with np.load(out / "weights.npz") as weights:
        assert weights["oracle/seed1"].shape == (100,)
    if "cleanlab" in results["skipped"]:
        assert "pip install cleanlab" in markdown
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("argv, message", [
    (["--data", "mnist"], "invalid choice"),
    (["--data", "gmm", "--seeds", "0"], "--seeds"),
    (["--data", "gmm", "--methods", "erm,bogus"], "bogus"),
    (["--data", "gmm", "--epochs", "-1"], "--epochs"),
    (["--data", "cifar10n-worse", "--noise", "0.2"], "real human label noise"),
    (["--data", "digits", "--n-train", "5000"], "n + m"),
    (["--data", "gmm", "--noise", "1.5"], "noise"),
    (["--data", "cifar10n-worse", "--data-dir", "{tmp}", "--epochs", "1"], "no CIFAR-10 images"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m dynamics.compare: error:"), err
    assert message in err[0]
    assert "Traceback" not in err[0]
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
