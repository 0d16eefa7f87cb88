"""python -m phases.finite: the C8 cross-check as a command line, and its library pieces."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tolerance import assert_close

from dynamics.trajectory import Trajectory
from phases.experiments import fit_slope
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
