"""``python -m phases.mwn``: free weights beside Meta-Weight-Net (docs/theory.md section 2.1), C4's coupling."""

import json

import numpy as np
from tolerance import assert_close

from phases.mwn import main, velocity_decay


def test_velocity_decay_reads_the_c4_scaling():
    """A velocity exactly proportional to sqrt(L_meta) has spread 1 and exponent 1/2 in post-filtering; one
    proportional to L_meta has exponent 1."""
    step = np.arange(20)
    loss = 0.5 * 0.8 ** step
    post = step >= 10
    root = velocity_decay(step, loss, 3.0 * np.sqrt(loss), post)
    assert_close(root["ratio_spread"], 1.0)
    assert_close(root["exponent"], 0.5)
    assert_close(root["fall"], 0.8 ** -9.5)
    assert_close(velocity_decay(step, loss, loss, post)["exponent"], 1.0)
    assert velocity_decay(step, loss, loss, np.zeros(20, bool))["ratio_spread"] is None


def test_the_command_runs_both_and_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "mwn"
    status = main(["phases", "--n", "40", "--m", "8", "--p", "10", "--classes", "3", "--dim", "8", "--steps", "60",
                   "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Meta-Weight-Net" in printed and "T_freeze (w < 0.05)" in printed
    summary = json.loads((out / "summary.json").read_text())
    for run in ("free", "mwn"):
        assert summary[run]["T_align"] is not None
        assert summary[run]["coupling_norm"]["fall"] > 1
    assert summary["mwn"]["T_freeze"] == summary["mwn"]["T_align"]  # a sigmoid never reaches w = 0
    assert summary["mwn"]["velocities"]["theta_velocity"]["start"] > 0
    assert (out / "free.npz").is_file() and (out / "mwn.npz").is_file()
    assert main(["phases", "--threshold", "0", "--steps", "5"]) == 2
