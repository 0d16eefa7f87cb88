"""Interrupts: SIGINT and SIGTERM end every command within seconds, with one line and exit 128 + signal, leaving
no staging directory and no worker process behind."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _processes_tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (the command and every worker it started)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if tag.encode() in handle.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def _interrupt(tmp_path, args, signum, wait_for: str | int, timeout: float = 120.0):
    """Start ``python -m ARGS``; once ``wait_for`` appears on stderr (a string) or that many processes carry the
    run's tag (an int: the command and its workers), send ``signum``; return (status, stderr, seconds to stop)."""
    tag = f"METAREWEIGHT_TEST_{uuid.uuid4().hex}"
    env = os.environ | {tag: "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    seen, started = "", time.monotonic()
    os.set_blocking(process.stderr.fileno(), False)

    def read():
        try:
            return os.read(process.stderr.fileno(), 1 << 16).decode(errors="replace")
        except BlockingIOError:
            return ""

    def ready():
        return wait_for in seen if isinstance(wait_for, str) else len(_processes_tagged(tag)) >= wait_for

    while not ready():
        assert process.poll() is None, f"ended before the signal: {seen}"
        assert time.monotonic() - started < timeout, f"never saw {wait_for!r}: {seen}"
        seen += read()
        time.sleep(0.05)
    time.sleep(0.5 if isinstance(wait_for, str) else 3.0)  # workers: let them start their tasks
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=60)  # generous: a loaded machine slows the unwinding, not the reaction
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{args[0]} ignored {signal.Signals(signum).name} for 60 s")
    took = time.monotonic() - sent
    os.set_blocking(process.stderr.fileno(), True)
    seen += process.stderr.read().decode(errors="replace")
    deadline = time.monotonic() + 5
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_tagged(tag), "a worker process outlived the command"
    return process.returncode, seen, took


def _assert_clean_exit(tmp_path, status, stderr, signum, prog):
    assert status == 128 + signum, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: interrupted by {signal.Signals(signum).name}"), stderr
    assert "Traceback" not in stderr
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")], "a staging directory was left"
    assert not os.path.exists(tmp_path / "out")


def test_sweep_with_workers_stops_on_sigterm(tmp_path):
    # Runs far too long to finish one record before the signal: nothing is left to resume, so nothing stays.
    args = ["phases.sweep", "--out", "out", "--grid", "noise=0.1,0.2,0.3,0.4", "--seeds", "2", "--grid", "n=300",
            "--grid", "m=40", "--grid", "p=100", "--grid", "steps=50000", "--workers", "2"]
    status, stderr, took = _interrupt(tmp_path, args, signal.SIGTERM, wait_for=3)
    _assert_clean_exit(tmp_path, status, stderr, signal.SIGTERM, "python -m phases.sweep")


def test_compare_with_workers_stops_on_sigint(tmp_path):
    args = ["phases.compare", "--data", "gmm", "--seeds", "2", "--epochs", "50", "--jobs", "2", "--out", "out"]
    status, stderr, took = _interrupt(tmp_path, args, signal.SIGINT, wait_for=3)
    _assert_clean_exit(tmp_path, status, stderr, signal.SIGINT, "python -m phases.compare")


def test_finite_stops_on_sigterm(tmp_path):
    args = ["phases.finite", "--widths", "64,128", "--seeds", "0", "--steps", "5000", "--out", "out"]
    status, stderr, took = _interrupt(tmp_path, args, signal.SIGTERM, wait_for="[2/3]")
    _assert_clean_exit(tmp_path, status, stderr, signal.SIGTERM, "python -m phases.finite")


def test_simulate_stops_inside_the_compiled_loop(tmp_path):
    args = ["phases.simulate", "--n", "400", "--m", "40", "--p", "100", "--steps", "200000", "--record-every", "1000",
            "--perturb-draws", "0", "--out", "out"]
    status, stderr, took = _interrupt(tmp_path, args, signal.SIGINT, wait_for="[2/3]")
    _assert_clean_exit(tmp_path, status, stderr, signal.SIGINT, "python -m phases.simulate")
    assert took < 10, f"took {took:.1f} s to stop"  # measured 1-3 s; a compiled loop would take minutes


def test_figures_stops_on_sigterm_and_removes_its_temporary_results(tmp_path):
    args = ["figures", "--quick", "--out", "out"]
    temporary = tempfile.gettempdir()
    before = set(os.listdir(temporary))
    status, stderr, took = _interrupt(tmp_path, args, signal.SIGTERM, wait_for=1, timeout=60)
    assert status == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1].startswith("python -m figures: interrupted by SIGTERM")
    assert not os.path.exists(tmp_path / "out") and not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert not [name for name in set(os.listdir(temporary)) - before if name.startswith("figures-results-")]
