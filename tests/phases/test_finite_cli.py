"""python -m phases.finite: the C8 cross-check as a command line, and its library pieces."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tolerance import assert_close

from dynamics.trajectory import Trajectory
from phases.detect import readmitted_share
from phases.experiments import FiniteWidthConfig, fit_slope, run_finite_width
from phases.finite import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@given(slope=st.floats(-2.0, 0.0), scale=st.floats(0.01, 100.0))
def test_fit_slope_recovers_a_power_law(slope, scale):
    widths = np.repeat([64.0, 256.0, 1024.0], 2)
    fit = fit_slope(widths, scale * widths ** slope)
    assert_close(fit["slope"], slope, atol=1e-10)
    assert fit["slope_stderr"] < 1e-8 and fit["points"] == 6


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "phases.finite", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_its_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "c8"
    tiny = ["--widths", "16,32", "--seeds", "0,1", "--steps", "12", "--n", "24", "--m", "8", "--p", "12",
            "--dim", "6", "--out", str(out)]
    result = _cli(*tiny)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {"slope", "slope_stderr", "per_width", "linearized", "config"} <= set(summary)
    assert [row["width"] for row in summary["per_width"]] == [16, 32]
    for width in (16, 32):
        assert json.loads((out / f"width_{width}.json").read_text())["width"] == width
        for seed in (0, 1):
            assert Trajectory.load(out / f"finite_w{width}_s{seed}.npz").config["width"] == width
    assert Trajectory.load(out / "linearized.npz").w.shape == (13, 24)
    assert (out / "finite.png").stat().st_size > 0 and (out / "problem.npz").exists()

    # In-process from here: each further interpreter would spend seconds importing torch and jax.
    before = sorted(os.listdir(out))
    capsys.readouterr()
    assert main(tiny) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--overwrite" in error
    assert sorted(os.listdir(out)) == before
    assert sorted(os.listdir(tmp_path)) == ["c8"]  # no staging directory left behind


def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    result = _cli("--out", str(tmp_path / "never"), "--widths", "0,16")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    for bad in (["--widths", "32"], ["--eta", "-1"], ["--steps", "x"], ["--noise", "0.9"], ["--device", "gpu"],
                ["--w0", "2"], []):
        capsys.readouterr()
        code = main(["--out", str(tmp_path / "never"), *bad] if bad else bad)
        error = capsys.readouterr().err
        assert code == 2, bad
        assert len(error.strip().splitlines()) == 1 and error.startswith("python -m phases.finite: error:"), bad
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad, message", [(["--widths", "64,100000000"], "GiB of memory"),
                                          (["--n", "10000000"], "GiB of memory")])
def test_runs_the_machine_cannot_hold_are_refused_up_front(tmp_path, capsys, bad, message):
    assert main(["--out", str(tmp_path / "never"), *bad]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error
    assert os.listdir(tmp_path) == []


def test_gap_series_their_maxima_and_the_eta_sweep():
    """Each run's gaps at every record: the weight series' maximum is the summary's weight gap, the output
    series ends at the summary's output gap, both start at 0 (centred networks, w0 alike); the series equal
    the gaps recomputed from the trajectories; the eta sweep holds the main step size and the fractions asked."""
    config = FiniteWidthConfig(widths=(16, 32), seeds=(0, 1), steps=12, n=24, m=8, p=12, dim=6,
                               eta_fractions=(0.95,))
    result = run_finite_width(config)
    summary = result.summary
    steps = summary["record_steps"]
    assert steps == result.linearized.step.tolist()
    for row in summary["per_width"]:
        for run in row["runs"]:
            series = run["series"]
            assert len(series["weight_gap"]) == len(series["output_gap"]) == len(steps)
            assert max(series["weight_gap"]) == run["weight_gap"]
            assert_close(series["output_gap"][-1], run["output_gap"], rtol=1e-12)
            assert series["weight_gap"][0] == 0 and series["output_gap"][0] == 0
            trajectory = result.finite[(row["width"], run["seed"])]
            assert_close(np.array(series["weight_gap"]), np.abs(trajectory.w - result.linearized.w).max(axis=1))
    sweep = summary["eta_sweep"]
    assert [entry["main"] for entry in sweep].count(True) == 1
    assert_close([entry["eta_fraction"] for entry in sweep if not entry["main"]], [0.95])
    main = next(entry for entry in sweep if entry["main"])
    assert_close(main["eta"], summary["config"]["linearized"]["eta"])
    assert main["slope"] == summary["slope"]
    assert [r["weight_gap"] for r in main["per_width"]] == [r["weight_gap"] for r in summary["per_width"]]
    assert_close(summary["eta_stable_below"] * main["eta_fraction"], main["eta"])
    for entry in sweep:
        assert [r["width"] for r in entry["per_width"]] == [16, 32]


def test_readmitted_share_counts_filtered_noisy_examples_that_come_back():
    # At T_filter = 20 (row 2) the noisy examples 0, 1 and 3 sit at w = 0; 0 and 3 come back later, 1 never does.
    # Noisy 2 is not at 0 there (its earlier zero does not count); the clean example 4 comes back (ignored).
    w = np.array([[0.5, 0.5, 0.0, 0.5, 0.5],
                  [0.3, 0.2, 0.4, 0.1, 0.0],
                  [0.0, 0.0, 0.5, 0.0, 0.0],
                  [0.0, 0.0, 0.6, 0.2, 0.2],
                  [0.4, 0.0, 0.6, 0.0, 0.3]])
    run = SimpleNamespace(step=np.arange(5) * 10, w=w, noisy=np.array([True, True, True, True, False]))
    assert_close(readmitted_share(run, 20), 2 / 3)
    assert readmitted_share(run, 30) == 0.5  # at 30: noisy 0 and 1 at 0, only 0 comes back
    assert readmitted_share(run, 10) is None  # no noisy example at 0 at step 10
    assert readmitted_share(run, None) is None


def test_cli_network_and_eta_options_are_checked(tmp_path, capsys):
    for bad, message in ((["--network", "cnn"], "digits"), (["--eta-fractions", "0.5,1.2"], "between 0 and 1"),
                         (["--precision", "float16"], "invalid choice"),
                         (["--dataset", "digits", "--p", "1600"], "p must be at most")):
        capsys.readouterr()
        assert main(["--out", str(tmp_path / "never"), *bad]) == 2, bad
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and message in error, (bad, error)
    assert os.listdir(tmp_path) == []
