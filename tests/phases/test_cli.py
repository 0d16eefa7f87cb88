"""The plumbing every command shares: marker-guarded, whole-or-nothing output directories and atomic files."""

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from phases.cli import MARKER, OutputDirectory, UserError, bounded, check_output_path, run_main, write_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _publish(out, overwrite=False, content="new"):
    with OutputDirectory(str(out), overwrite) as staging:
        (open(os.path.join(staging, "result.txt"), "w")).write(content)


def test_output_is_published_whole_with_its_marker_and_ordinary_permissions(tmp_path):
    out = tmp_path / "run"
    _publish(out)
    assert (out / "result.txt").read_text() == "new" and (out / MARKER).is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(out).st_mode & 0o777) == 0o777 & ~umask
    assert (os.stat(out / "result.txt").st_mode & 0o777) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_replaces_only_a_toolkit_output(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not written by this toolkit"):
        OutputDirectory(str(data), overwrite=True)
    assert (data / "precious.bin").read_bytes() == b"x"
    out = tmp_path / "run"
    _publish(out, content="first")
    with pytest.raises(UserError, match="--overwrite"):
        OutputDirectory(str(out))
    _publish(out, overwrite=True, content="second")
    assert (out / "result.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["data", "run"]


@pytest.mark.parametrize("make", ["cwd", "ancestor_of_cwd", "symlink", "file", "empty", "long", "data_folder"])
def test_dangerous_paths_are_refused_before_any_work(tmp_path, monkeypatch, make):
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    monkeypatch.chdir(work / "inner")
    (work / "inner" / MARKER).write_text("{}")  # even a marked directory is refused when it holds the cwd
    target = {
        "cwd": ".",
        "ancestor_of_cwd": str(work),
        "symlink": str(tmp_path / "link"),
        "file": str(tmp_path / "file"),
        "empty": "",
        "long": str(tmp_path / ("x" * 240)),
        "data_folder": str(tmp_path / "shared" / "data" / "out"),
    }[make]
    if make == "symlink":
        (tmp_path / "real").mkdir()
        os.symlink(tmp_path / "real", tmp_path / "link")
    if make == "file":
        (tmp_path / "file").write_text("keep")
    if make == "data_folder":
        (tmp_path / "shared" / "data").mkdir(parents=True)
        (tmp_path / "shared" / "SHA256SUMS").write_text("")
    before = sorted(os.walk(tmp_path))
    with pytest.raises(UserError):
        check_output_path(target, overwrite=True)
    assert sorted(os.walk(tmp_path)) == before


def test_a_failed_run_leaves_nothing_not_even_new_parents(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with OutputDirectory(str(out)):
            raise RuntimeError("the run broke")
    assert os.listdir(tmp_path) == []


def _race(out, content, start, done):
    start.wait()
    try:
        _publish(out, content=content)
        done.put(("ok", content))
    except UserError as error:
        done.put(("refused", str(error)))


def test_two_runs_to_one_output_never_replace_a_finished_result(tmp_path):
    out = tmp_path / "run"
    # Both runs pass the up-front check; the one that publishes second must fail, not replace the first.
    first, second = OutputDirectory(str(out)), OutputDirectory(str(out))
    with first as staging:
        open(os.path.join(staging, "result.txt"), "w").write("first")
    with pytest.raises(UserError, match="another run"):
        with second as staging:
            open(os.path.join(staging, "result.txt"), "w").write("second")
    assert (out / "result.txt").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_two_processes_racing_keep_exactly_one_result(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, done = context.Event(), context.Queue()
    workers = [context.Process(target=_race, args=(tmp_path / "run", name, start, done)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(30)
    outcomes = sorted(done.get(timeout=5) for _ in workers)
    assert [kind for kind, _ in outcomes].count("ok") >= 1
    winner = (tmp_path / "run" / "result.txt").read_text()
    assert ("ok", winner) in outcomes
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    dead = tmp_path / ".run.staging-999999999-abc"  # no such process
    dead.mkdir()
    alive = tmp_path / f".run.staging-{os.getpid()}-abc"
    alive.mkdir()
    _publish(tmp_path / "run")
    assert sorted(os.listdir(tmp_path)) == [alive.name, "run"]


def test_json_has_no_nan_and_bounded_refuses_non_finite(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": float("nan"), "b": [1.5, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None]}
    parse = bounded(float, 0.0)
    for text in ("nan", "inf", "-1"):
        with pytest.raises(Exception, match="must be"):
            parse(text)
    assert parse("0") == 0.0


@pytest.mark.parametrize("module", ["phases.simulate", "phases.sweep", "phases.finite", "phases.compare", "figures.__main__",
                                    "figures.studies"])
def test_help_states_each_default_once(module, capsys):
    import importlib
    import re

    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    # One option's help runs from its flag to the next one; a default named in the text is not repeated after it.
    for option in re.split(r"(?=\s--?[a-z])", text):
        assert option.count("(default") <= 1, option
        assert not re.search(r"default:[^()]*\)\s*\(default:", option), option


_HOST_CALLBACK_SIGNAL = """
import os, signal, sys
import jax, jax.numpy as jnp
from phases.cli import run_main

def host(x):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # Python code: the handler runs here, inside the callback
        pass
    return x

def run():
    jax.jit(lambda x: jax.pure_callback(host, jax.ShapeDtypeStruct((3,), jnp.float32), x))(
        jnp.ones(3)).block_until_ready()

sys.exit(run_main("prog", run))
"""


def test_a_signal_raised_inside_a_jax_host_callback_ends_the_command_as_an_interruption():
    """SIGTERM during a host callback of a compiled program (the operators' products) comes back as JAX's
    XlaRuntimeError wrapping Interrupted, and JAX logs the callback's traceback; the command must still end with
    its one line and status 143 (it ended with two tracebacks and status 1: found by the killed-sweep test under
    load). In a subprocess: the user's stderr, JAX's log handler included."""
    done = subprocess.run([sys.executable, "-c", _HOST_CALLBACK_SIGNAL], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip() == "prog: interrupted by SIGTERM; no output was published"
    with pytest.raises(ZeroDivisionError):  # without a signal, an error is still an error
        run_main("prog", lambda: 1 / 0)


def test_a_signal_whose_exception_python_swallowed_still_stops_the_command_and_publishes_nothing(tmp_path, capsys):
    """SIGTERM that lands in a garbage-collection callback (JAX registers one) raises where Python only reports
    "Exception ignored": the command must still stop, with its one line and status 143, and publish nothing."""
    sent = []

    def callback(phase, info):
        if phase == "start" and not sent:
            sent.append(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # Python code: the handler runs here, inside the callback
                pass

    def run():
        with OutputDirectory(str(tmp_path / "out")):
            gc.collect()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # a command that would go on, and publish, were the signal lost
                time.sleep(0.01)

    gc.callbacks.append(callback)
    try:
        status = run_main("prog", run)
    finally:
        gc.callbacks.remove(callback)
    err = capsys.readouterr().err
    assert sent and status == 128 + signal.SIGTERM, err
    assert err.strip() == "prog: interrupted by SIGTERM; no output was published"
    assert os.listdir(tmp_path) == []


def _exit_script(body: str) -> str:
    return "import atexit, sys, threading, time\nfrom phases.cli import exit_without_teardown\n" + body


@pytest.mark.parametrize("ending", ["exit_without_teardown(3)", "sys.exit(3)"])
def test_exit_without_teardown_runs_the_exit_handlers_flushes_and_skips_only_the_finalizers(tmp_path, ending):
    """The exit handlers run and buffered output arrives, with the status; what only the interpreter's teardown
    runs (a module-level object's finalizer) does not, where sys.exit runs it."""
    script = _exit_script(
        "class Finalized:\n"
        "    def __init__(self, path):\n"
        "        self.path = path\n"
        "    def __del__(self, open=open):  # open itself may be gone by then\n"
        "        open(self.path, 'w').close()\n"
        "kept = Finalized(sys.argv[1] + '.finalized')\n"
        "atexit.register(lambda: open(sys.argv[1] + '.handler', 'w').close())\n"
        "print('buffered', end='')\n" + ending + "\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "mark")], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (3, "buffered"), result.stderr[-1000:]
    assert (tmp_path / "mark.handler").exists()
    assert (tmp_path / "mark.finalized").exists() == (ending == "sys.exit(3)")


def test_exit_without_teardown_waits_for_a_running_thread(tmp_path):
    script = _exit_script(
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    open(sys.argv[1], 'w').close()\n"
        "threading.Thread(target=late).start()\n"
        "exit_without_teardown(0)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "late")], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-1000:]
    assert (tmp_path / "late").exists()
