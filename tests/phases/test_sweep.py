"""``python -m phases.sweep``: the grid of simulate knobs, streamed and resumable records, executors, figure 6."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from phases import sweep as sweep_module
from phases.cli import ResumableOutput
from phases.experiments import SimulationConfig
from phases.sweep import RECORD_FIELDS, SweepSettings, base_settings, grid_runs, load, main, parse_grid, \
    record_key, run_sweep, sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"n": 40, "m": 8, "p": 20, "dim": 8, "steps": 60, "perturb_draws": 0}
TINY_SETTINGS = SweepSettings(n=40, m=8, p=20, dim=8, steps=60)


def _argv(out, *grid, seeds=1, extra=()):
    fixed = [f"--grid={knob.replace('_', '-')}={value}" for knob, value in TINY.items()]
    return ["--out", str(out), *fixed, *(f"--grid={axis}" for axis in grid), "--seeds", str(seeds),
            "--workers", "1", *extra]


def _lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _without_timing(records):
    return [{key: value for key, value in record.items() if key != "timing"} for record in records]


def _count_runs(monkeypatch):
    calls = []
    run_records = sweep_module.run_records

    def counted(runs):
        calls.extend((point, config.seed) for config, point, _ in runs)
        return run_records(runs)

    monkeypatch.setattr(sweep_module, "run_records", counted)
    return calls


def test_grid_values_are_read_by_the_simulate_flags():
    grid = parse_grid(["noise=0,0.2", "noise-type=pair", "eta=none,0.5", "batch_size=none,8", "imbalance=1,4",
                       "clean-noise=0.1", "dataset=gmm,digits"])
    assert grid == {"noise": [0.0, 0.2], "noise_type": ["pair"], "eta": [None, 0.5], "batch_size": [None, 8],
                    "imbalance": [1.0, 4.0], "clean_noise": [0.1], "dataset": ["gmm", "digits"]}
    runs = grid_runs(base_settings(None), {"noise": [0.0, 0.2], "loss": ["ce"]}, [0, 1])
    assert [(point["noise"], config.seed, config.loss) for config, point in runs] == [
        (0.0, 0, "ce"), (0.0, 1, "ce"), (0.2, 0, "ce"), (0.2, 1, "ce")]
    # The simulate command's own defaults underneath: its sizes, its C7 draws.
    assert runs[0][0] == SimulationConfig(noise=0.0, loss="ce", seed=0)


@pytest.mark.parametrize("args,message", [
    (["--grid", "width=3"], "'width' is not a knob"),
    (["--grid", "noise=abc"], "--grid noise='abc'"),
    (["--grid", "noise=0", "--grid", "noise=0.2"], "given twice"),
    (["--grid", "loss=hinge"], "must be one of"),
    (["--grid", "seed=1,2"], "--seeds"),
    (["--grid", "noise"], "KNOB=V1,V2"),
    (["--grid", "noise=0.1,0.1"], "repeats a value"),
    (["--grid", "imbalance=0.5"], "imbalance='0.5': must be >= 1"),
    (["--grid", "noise=0,0.8"], "noise=0.8, seed 0: noise_rate must lie in"),
    (["--grid", "imbalance=2", "--grid", "dataset=digits"], "imbalance applies to dataset gmm only"),
    (["--grid", "clean-noise=0.75"], "--clean-noise must lie in [0, 0.75)"),
    (["--grid", "record-every=100"], "record_every must be at most"),
    (["--dask-workers", "2"], "not allowed with"),
    (["--overwrite", "--resume"], "give one of them"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, args, message):
    assert main([*_argv(tmp_path / "sweep"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m phases.sweep: error: ") and err.count("\n") == 1 and message in err, err
    assert os.listdir(tmp_path) == []


def test_records_stream_as_runs_finish_and_the_directory_appears_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    progress_file = tmp_path / ".sweep.in-progress" / "records.jsonl"
    seen = []
    append = ResumableOutput.append

    def watched(self, record):
        append(self, record)
        seen.append((len(_lines(progress_file)), out.exists()))

    monkeypatch.setattr(ResumableOutput, "append", watched)
    assert main(_argv(out, "noise=0.3,0", seeds=2, extra=["--save-trajectories"])) == 0
    assert seen == [(1, False), (2, False), (3, False), (4, False)]  # on disk one by one; DIR only at the end
    assert sorted(os.listdir(tmp_path)) == ["sweep"]
    assert json.loads((out / ".metareweight-output").read_text())["state"] == "complete"

    records = _lines(out / "records.jsonl")
    assert [(r["point"]["noise"], r["seed"]) for r in records] == [(0.3, 0), (0.3, 1), (0.0, 0), (0.0, 1)]
    from phases.experiments import run_simulation

    for record in records:
        config = SimulationConfig.from_dict(record["settings"])
        assert record["key"] == record_key(config) and record["diverged"] is None
        assert config == SimulationConfig(**TINY, noise=record["point"]["noise"], seed=record["seed"])
        assert os.path.isfile(out / record["trajectory"])
    alone = run_simulation(SimulationConfig.from_dict(records[0]["settings"])).summary
    assert records[0]["boundaries"]["T_filter"] == alone["T_filter"] is not None
    assert records[0]["final"]["auc"] == alone["final"]["auc"]
    assert [c["verdict"] for c in records[0]["claims"]] == [c["verdict"] for c in alone["claims"]]

    import pandas as pd

    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 4 and list(table["seed"]) == [0, 1, 0, 1] and "C3_verdict" in table and "timing" not in table
    rows = load(str(out))["records"]  # figure 6 reads a sweep directory too
    assert [set(row) for row in rows] == [set(RECORD_FIELDS)] * 4 and rows[0]["T_filter"] == alone["T_filter"]
    captured = capsys.readouterr()
    assert "4/4 runs" in captured.err and "s left" in captured.err and "Wrote" in captured.out


def test_resume_adds_only_the_new_runs_and_overwrite_starts_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    assert main(_argv(out, "noise=0,0.3")) == 0
    first = _lines(out / "records.jsonl")
    assert main(_argv(out, "noise=0,0.3")) == 2 and "--resume" in capsys.readouterr().err
    calls = _count_runs(monkeypatch)
    assert main(_argv(out, "noise=0,0.3,0.5", extra=["--resume"])) == 0
    assert [point["noise"] for point, _ in calls] == [0.5]
    again = _lines(out / "records.jsonl")
    assert again[:2] == first and len(again) == 3  # timings included: the recorded runs were not redone
    assert main(_argv(out, "noise=0.5", extra=["--resume"])) == 0  # a smaller grid: nothing to run
    assert len(calls) == 1 and _lines(out / "records.jsonl") == again[2:]
    assert main(_argv(out, "noise=0.5", extra=["--overwrite"])) == 0
    assert len(calls) == 2 and sorted(os.listdir(tmp_path)) == ["sweep"]


def test_a_killed_sweep_resumes_without_recomputing_what_it_recorded(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    argv = _argv(out, "noise=0,0.1,0.2,0.3,0.4,0.5", seeds=2)
    progress = tmp_path / ".sweep.in-progress"
    process = subprocess.Popen([sys.executable, "-m", "phases.sweep", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (progress / "records.jsonl").is_file() or (progress / "records.jsonl").read_text().count("\n") < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 128 + signal.SIGTERM
    assert "--resume continues" in process.stderr.read()
    assert not out.exists()  # whole or nothing: the sweep stays in its in-progress directory
    recorded = _lines(progress / "records.jsonl")
    assert 2 <= len(recorded) < 12
    with open(progress / "records.jsonl", "a") as handle:  # a line torn by the kill
        handle.write('{"key": "' + recorded[0]["key"][:5])

    calls = _count_runs(monkeypatch)
    assert main([*argv, "--resume"]) == 0
    assert len(calls) == 12 - len(recorded)
    assert not {(point["noise"], seed) for point, seed in calls} & {(r["point"]["noise"], r["seed"]) for r in recorded}
    records = {record["key"]: record for record in _lines(out / "records.jsonl")}
    assert len(records) == 12 and all(records[record["key"]] == record for record in recorded)
    assert not progress.exists()


def test_dask_and_the_local_pool_record_the_same_runs(tmp_path):
    pytest.importorskip("distributed")
    from phases.executor import LocalPool

    out = tmp_path / "sweep"
    # Two passes of two runs each, so that both executors run them in their single-threaded workers.
    assert main([*_argv(out, "noise=0,0.3", "gamma=0,1")[:-2], "--dask-workers", "2", "--runs-per-pass", "2"]) == 0
    by_dask = _lines(out / "records.jsonl")
    assert [record["timing"]["advanced_with"] for record in by_dask] == [2] * 4
    grid = {knob: [value] for knob, value in TINY.items()} | {"noise": [0.0, 0.3], "gamma": [0.0, 1.0]}
    runs = grid_runs(base_settings(None), grid, [0])
    finished = []
    by_pool = run_sweep(runs, executor=LocalPool(2), on_record=finished.append, runs_per_pass=2)
    assert len(finished) == 4 and len(by_dask) == 4
    assert _without_timing(by_dask) == _without_timing(by_pool)


def test_a_saved_configuration_is_the_base_of_every_run(tmp_path):
    import dataclasses

    from phases.cli import write_json

    saved = SimulationConfig(**TINY, noise_type="pair", seed=7)
    write_json(tmp_path / "config.json", {"settings": dataclasses.asdict(saved)})
    out = tmp_path / "sweep"
    assert main(["--out", str(out), "--config", str(tmp_path / "config.json"), "--grid", "noise=0.1",
                 "--seeds", "1", "--workers", "1"]) == 0
    (record,) = _lines(out / "records.jsonl")
    assert SimulationConfig.from_dict(record["settings"]) == dataclasses.replace(saved, noise=0.1, seed=0)


def test_a_diverging_run_is_recorded_as_such(tmp_path):
    import pandas as pd

    out = tmp_path / "sweep"
    assert main(_argv(out, "eta=1000,none")) == 0
    diverged, stable = _lines(out / "records.jsonl")
    assert "eta=1000 is too large" in diverged["diverged"] and "final" not in diverged
    assert stable["diverged"] is None and 0 < stable["eta"] < 1
    table = pd.read_csv(out / "summary.csv")
    assert table["diverged"].notna().tolist() == [True, False] and table["eta_used"].isna().tolist() == [True, False]


def test_an_unreachable_scheduler_is_one_line_and_leaves_nothing(tmp_path, capsys):
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main([*_argv(tmp_path / "sweep")[:-2], "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_the_phase_diagram_rows_in_noise_then_seed_order():
    seen = []
    records = sweep([0.3, 0.0], [1, 0], TINY_SETTINGS, workers=1, progress=seen.append)
    assert [(r["noise"], r["seed"]) for r in records] == [(0.0, 0), (0.0, 1), (0.3, 0), (0.3, 1)]
    assert len(seen) == 4
    for record in records:
        assert set(record) == set(RECORD_FIELDS)
        assert record["steps"] == TINY_SETTINGS.steps
        assert 0 <= record["T_align"] <= TINY_SETTINGS.steps
    for record in records[:2]:  # no noise: nothing to filter
        assert record["T_filter"] is None and record["frac_noisy_zero_end"] is None
    # The same seed draws the same inputs at every rate, so only the flips differ.
    assert records[0]["realised_noise"] == 0.0 and records[2]["realised_noise"] > 0


@pytest.mark.parametrize("rates", [[0.75], [-0.1]])
def test_rates_outside_the_informative_range_are_refused(rates):
    with pytest.raises(ValueError, match="noise rates must lie in"):
        sweep(rates, [0], TINY_SETTINGS, workers=1)


def test_simulate_takes_the_two_problem_knobs():
    from phases.simulate import parse_config

    config, _ = parse_config(["--imbalance", "4", "--clean-noise", "0.1"])
    assert (config.imbalance, config.clean_noise) == (4.0, 0.1)
    assert parse_config([])[0] == SimulationConfig()
    problem = config.problem()
    assert "imbalance 4" in problem.name and "clean noise 0.1" in problem.name


def test_one_writer_at_a_time_and_a_damaged_record_file_is_refused(tmp_path):
    from phases.cli import UserError

    def output(**flags):
        return ResumableOutput(str(tmp_path / "out"), command="test", prog="test", **({"overwrite": False,
                                                                                       "resume": True} | flags))

    first = output()
    assert first.open() == {}
    first.append({"key": "a", "value": 1})
    with pytest.raises(UserError, match="another run is writing"):
        output().open()
    first.close()
    with pytest.raises(UserError, match="an unfinished run into .* pass --resume"):
        output(resume=False)
    second = output()
    assert second.open() == {"a": {"key": "a", "value": 1}}
    second.close()
    with open(first.progress + "/records.jsonl", "a") as handle:
        handle.write("not json\n" + '{"key": "b"}\n')
    with pytest.raises(UserError, match="line 2 is not a record"):
        output().open()


def test_runs_advanced_together_multiply_by_the_kernel_in_numpy_s_blas():
    """run_simulations' runs take simulate_many's host route for their full-batch products
    (dynamics.operators.host_products), which needs JAX's x64 mode on process-wide: in a fresh process, where
    nothing has turned it on before (computing the kernel does, kernels/infinite.py)."""
    code = (
        "import jax\n"
        "import dynamics.operators as operators\n"
        "from phases.experiments import SimulationConfig, run_simulations\n"
        "calls = []\n"
        "products = operators._host_products_of\n"
        "operators._host_products_of = lambda *args: calls.append(1) or products(*args)\n"
        "assert not jax.config.jax_enable_x64\n"
        "configs = [SimulationConfig(n=40, m=10, p=10, steps=6, noise=noise) for noise in (0.2, 0.4)]\n"
        "results = run_simulations(configs, claims=False)\n"
        "assert len(results) == 2 and calls, len(calls)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
