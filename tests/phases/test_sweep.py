"""``phases.sweep`` (the data of figure 6): the rates it covers, its records, its command line.

(The parallel path runs in ``test_figures.py``'s quick regeneration, which sweeps with two processes.)
"""

import json

import pytest

from phases.sweep import RECORD_FIELDS, SweepSettings, default_noise_rates, main, sweep

TINY = SweepSettings(n=40, m=8, p=20, dim=8, steps=60)


def test_default_rates_stop_below_the_uninformative_rate():
    assert default_noise_rates(4) == [round(0.05 * k, 10) for k in range(15)]  # 0 .. 0.7
    assert default_noise_rates(4, step=0.1)[-1] == 0.7
    assert default_noise_rates(2, step=0.1)[-1] == 0.4  # (C-1)/C = 0.5 excluded
    assert default_noise_rates(10, step=0.1)[-1] == 0.8  # 0.9 excluded


def test_records_in_noise_then_seed_order_with_every_field():
    seen = []
    records = sweep([0.3, 0.0], [1, 0], TINY, workers=1, progress=seen.append)
    assert [(r["noise"], r["seed"]) for r in records] == [(0.0, 0), (0.0, 1), (0.3, 0), (0.3, 1)]
    assert len(seen) == 4
    for record in records:
        assert set(record) == set(RECORD_FIELDS)
        assert record["steps"] == TINY.steps
        assert 0 <= record["T_align"] <= TINY.steps
    for record in records[:2]:  # no noise: nothing to filter
        assert record["T_filter"] is None and record["frac_noisy_zero_end"] is None
    # The same seed draws the same inputs at every rate, so only the flips differ.
    assert records[0]["realised_noise"] == 0.0 and records[2]["realised_noise"] > 0


@pytest.mark.parametrize("rates", [[0.75], [-0.1]])
def test_rates_outside_the_informative_range_are_refused(rates):
    with pytest.raises(ValueError, match="noise rates must lie in"):
        sweep(rates, [0], TINY, workers=1)


def test_command_line_writes_sweep_json(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--noise-rates", "0.2", "--seeds", "1", "--n", "40", "--m", "8", "--p", "20",
            "--dim", "8", "--steps", "60", "--workers", "1"]
    assert main(argv) == 0
    payload = json.loads((out / "sweep.json").read_text())
    assert payload["config"]["settings"]["n"] == 40 and len(payload["records"]) == 1
    assert "T_filter" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--noise-rates", "0.8"],
    ["--noise-rates", "a,b"],
    ["--seeds", "0"],
    ["--m", "2"],
])
def test_command_line_bad_input_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m phases.sweep: error: ") and err.count("\n") == 1


def test_command_line_refuses_an_existing_output_and_leaves_nothing_on_bad_input(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--out", str(out), "--noise-rates", "0.2", "--seeds", "1", "--n", "40", "--m", "8", "--p", "20",
            "--dim", "8", "--steps", "60", "--workers", "1"]
    assert main(argv) == 0
    first = (out / "sweep.json").read_bytes()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "sweep.json").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0
    assert main(["--out", str(tmp_path / "a" / "b"), "--noise-rates", "0.9"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
