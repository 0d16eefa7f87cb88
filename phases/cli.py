"""What every command line and bench script of the toolkit shares (docs/architecture.md, "Plumbing").

A user error is one line on stderr and exit status 2, never a traceback;
argument types reject out-of-range values with a message naming the bound;
files are written under a temporary name and renamed into place; a run's
output directory is staged beside ``--out``, carries a marker file, and is
published only once it is whole; ``--overwrite`` replaces only a directory
that carries the marker; JSON never holds NaN; every result records package
versions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata

import numpy as np

_PACKAGES = ("numpy", "scipy", "jax", "jaxlib", "neural-tangents", "torch", "matplotlib", "seaborn", "pandas",
             "scikit-learn", "cleanlab")

#: The file that marks a directory as an output of this toolkit (and so safe to replace with ``--overwrite``).
MARKER = ".metareweight-output"
_STAGING = re.compile(r"^\.(?P<base>.+)\.staging-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_MAX_NAME = 200  # bytes; leaves room for the staging prefix and suffix under the usual 255-byte limit


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UserError` (one line) instead of usage text and exit."""

    def error(self, message):
        raise UserError(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not for ``None`` or an empty list (the help says what happens then), flags, or
    help that names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "(default" in text:
            return text
        return super()._get_help_string(action)


def bounded(kind: type, low: float, high: float = math.inf, *, strict: bool = False) -> Callable[[str], float]:
    """An argument type: a finite ``kind(text)`` that must be ``> low`` (``strict``) or ``>= low``, and ``<= high``."""

    def parse(text):
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low) or value > high:
            bounds = f"{'>' if strict else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


positive_int = bounded(int, 1)


def add_weight_arguments(group, defaults) -> None:
    """The reweighting knobs of docs/theory.md section 2 that every simulating command takes: ``--beta``,
    ``--gamma``, ``--w0`` (defaults from ``defaults``' attributes of the same names)."""
    group.add_argument("--beta", type=bounded(float, 0.0), default=defaults.beta,
                       help="meta step size (weights move by beta/m * score)")
    group.add_argument("--gamma", type=bounded(float, 0.0), default=defaults.gamma,
                       help="weight of the clean-subset loss in training")
    group.add_argument("--w0", type=float, default=defaults.w0, help="initial weight of every example, in [0, 1]")


def add_size_arguments(group, *, n: int, m: int, p: int, classes: int, dim: int, mixture_only: str = "") -> None:
    """The problem sizes every command takes: ``--n``, ``--m``, ``--p``, ``--classes``, ``--dim``.

    ``mixture_only`` is appended to the help of the options that only the Gaussian mixture reads.
    """
    group.add_argument("--n", type=positive_int, default=n, help="training examples")
    group.add_argument("--m", type=positive_int, default=m, help="clean-subset examples (class-balanced)")
    group.add_argument("--p", type=positive_int, default=p, help=f"test examples{mixture_only}")
    group.add_argument("--classes", type=positive_int, default=classes, help=f"number of classes C{mixture_only}")
    group.add_argument("--dim", type=positive_int, default=dim, help=f"input dimension d{mixture_only}")


def int_list(low: int) -> Callable[[str], list[int]]:
    """An argument type: comma-separated integers, each ``>= low``, returned sorted and without repeats."""

    def parse(text):
        try:
            values = sorted({int(item) for item in text.split(",") if item.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
        if not values or values[0] < low:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers >= {low}, got {text!r}")
        return values

    return parse


def add_output_arguments(group, *, out_help: str, required: bool = False, saved_file: str | None = None) -> None:
    """``--out`` and ``--overwrite`` (and ``--config`` when runs save their settings in ``saved_file``)."""
    if saved_file is not None:
        group.add_argument("--config", default=None, metavar="FILE",
                           help=f"repeat the run saved in FILE (a {saved_file}, or its directory); flags override it")
    group.add_argument("--out", required=required, default=None, help=out_help)
    group.add_argument("--overwrite", action="store_true",
                       help="replace an existing output directory (only one this toolkit wrote)")


def parse_settings(parser: argparse.ArgumentParser, argv, config_class, read_settings: Callable[[str], dict],
                   message: Callable[[str], str] = str):
    """``(config, args)``: a frozen ``config_class`` from the command line, ``--config FILE`` first.

    ``read_settings(FILE)`` returns the settings a saved run recorded (raising ``ValueError`` when it cannot);
    they become the parser's defaults, so flags given beside ``--config`` override them. Every error is a
    :class:`UserError` (``message`` may rename settings as flags).
    """
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        try:
            settings = read_settings(args.config)
        except (TypeError, ValueError) as error:
            raise UserError(message(str(error))) from None
        parser.set_defaults(**settings)
        args = parser.parse_args(argv)
    fields = {field.name for field in dataclasses.fields(config_class)}
    try:
        config = config_class(**{name: value for name, value in vars(args).items() if name in fields})
    except ValueError as error:
        raise UserError(message(str(error))) from None
    return config, args


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    found = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def jsonable(value):
    """NaN and infinities become null (JSON has neither); numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)``, then rename the temporary file to ``path``; on any error nothing is left."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)

    atomic_write(path, write)


def write_json(path, value) -> None:
    """Write ``value`` as JSON (sorted keys, no NaN) atomically."""
    write_text(path, json.dumps(jsonable(value), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def is_output(path) -> bool:
    """Whether ``path`` is a directory this toolkit wrote (it carries the marker file)."""
    return os.path.isfile(os.path.join(path, MARKER))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(parent: str, base: str) -> None:
    """Remove staging directories of ``base`` left by runs whose process is gone (killed, crashed)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            match = _STAGING.match(name)
            if match and match["base"] == base and not _pid_alive(int(match["pid"])):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def check_output_path(out: str, overwrite: bool = False, option: str = "--out") -> str:
    """Refuse, before any work, an output path that could not be published or whose replacement would lose data.

    Returns the absolute path. Refused: an empty path, a name too long, a
    symbolic link, a file, the current directory or one of its ancestors, a
    directory inside a data folder (one holding ``SHA256SUMS``), an existing
    directory without ``overwrite``, and with ``overwrite`` an existing
    directory that this toolkit did not write (no marker file).
    """
    if not out or not out.strip():
        raise UserError(f"{option} is empty; give a directory path")
    path = os.path.abspath(out)
    base = os.path.basename(path)
    if not base or len(os.fsencode(base)) > _MAX_NAME:
        raise UserError(f"{option} {out!r}: the last path component must be 1-{_MAX_NAME} bytes long")
    if os.path.islink(out):
        raise UserError(f"{option} {out} is a symbolic link; give the real directory path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {out} is a file; give a directory path")
    cwd = os.path.abspath(os.getcwd())
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise UserError(f"{option} {out} is the current directory or contains it; give a new directory path")
    parent = os.path.dirname(path)
    ancestor = parent
    while True:
        if os.path.isfile(os.path.join(ancestor, "SHA256SUMS")):
            raise UserError(f"{option} {out} lies inside the data folder {ancestor}; write results elsewhere")
        if os.path.dirname(ancestor) == ancestor:
            break
        ancestor = os.path.dirname(ancestor)
    if os.path.isdir(path):
        if not overwrite:
            raise UserError(f"{option} {out} already exists; choose another path or pass --overwrite")
        if not is_output(path):
            raise UserError(f"{option} {out} exists and was not written by this toolkit (no {MARKER} file); "
                            "--overwrite replaces only earlier outputs, so nothing was touched")
    existing = parent
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {out} cannot be written: {existing} is not writable")
    return path


class OutputDirectory:
    """``--out DIR`` that appears whole or not at all, and never replaces what it should not.

    Checked on construction, before any work (:func:`check_output_path`). Use
    as a context manager that yields a staging directory beside ``DIR``; on
    success the staging directory, marked as a toolkit output, is renamed to
    ``DIR``. Publishing re-checks the destination atomically: a rename onto a
    non-empty directory fails, so when a concurrent run published ``DIR``
    first, this run fails with one line and the first result stays. With
    ``overwrite`` the old directory is moved aside, the new one renamed in,
    and only then the old one deleted. On any error the staging directory is
    removed and so are the parent directories this run created. Staging
    directories of dead runs are removed on the next run to the same place.
    """

    def __init__(self, out: str, overwrite: bool = False, *, command: str = "", option: str = "--out"):
        self.path = check_output_path(out, overwrite, option)
        self.out, self.overwrite, self.option, self.command = out, overwrite, option, command
        self.staging = None
        self._created: list[str] = []

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        missing = []
        ancestor = parent
        while not os.path.isdir(ancestor):
            missing.append(ancestor)
            ancestor = os.path.dirname(ancestor)
        try:
            for directory in reversed(missing):
                os.mkdir(directory)
                self._created.append(directory)
            base = os.path.basename(self.path)
            _remove_stale_staging(parent, base)
            self.staging = tempfile.mkdtemp(prefix=f".{base}.staging-{os.getpid()}-", dir=parent)
        except OSError as error:
            self._remove_created()
            raise UserError(f"{self.option} {self.out} cannot be written: {error.strerror}") from None
        write_json(os.path.join(self.staging, MARKER), {"tool": "metareweight", "command": self.command})
        return self.staging

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None or _received:  # an error, or a signal whose exception was swallowed
            shutil.rmtree(self.staging, ignore_errors=True)
            self._remove_created()
            raise_if_interrupted()
            return
        os.chmod(self.staging, 0o777 & ~_umask())  # mkdtemp made it private; the result is an ordinary directory
        trash = None
        if self.overwrite and os.path.isdir(self.path):
            if not is_output(self.path):
                shutil.rmtree(self.staging, ignore_errors=True)
                raise UserError(f"{self.option} {self.out} was replaced by something this toolkit did not write "
                                "while the run was going; nothing was touched")
            trash = self.staging + ".old"
            os.rename(self.path, trash)
        try:
            os.rename(self.staging, self.path)
        except OSError as problem:
            shutil.rmtree(self.staging, ignore_errors=True)
            if trash is not None:
                with contextlib.suppress(OSError):
                    os.rename(trash, self.path)
            if problem.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise UserError(f"{self.option} {self.out} was written by another run while this one was going; "
                                "its result was kept and this run's was discarded") from None
            raise UserError(f"{self.option} {self.out} cannot be written: {problem.strerror}") from None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def refuse_jax_cache() -> None:
    """One line and exit 2, before any work, when JAX's persistent cache would corrupt the simulator's runs."""
    from dynamics.simulator import CompilationCacheError, refuse_persistent_cache

    try:
        refuse_persistent_cache()
    except CompilationCacheError as error:
        raise UserError(str(error)) from None


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind (staging directories are removed on the way out), exit ``128 + signal``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


#: The signals that arrived during the command (:func:`run_main`). The handler's exception can be lost where Python
#: ignores exceptions (a garbage-collection callback of JAX's, a ``__del__``): the signal is then sent again
#: (:func:`_deliver_again`), and publishing checks this list too.
_received: list[int] = []


def _interrupt(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def _deliver_again(previous_hook, timers: list):
    """A ``sys.unraisablehook`` that sends again, silently, a signal whose :class:`Interrupted` was raised where
    Python ignores exceptions. From a timer thread, 10 ms later (appended to ``timers``, cancelled when the
    command ends): sent from the hook, the handler would run inside the hook, where exceptions are ignored too."""
    import threading

    def hook(report):
        if isinstance(report.exc_value, Interrupted):
            timers.append(threading.Timer(0.01, os.kill, (os.getpid(), report.exc_value.signum)))
            timers[-1].start()
        else:
            previous_hook(report)

    return hook


def _not_an_interruption(record) -> bool:
    """A logging filter: JAX logs the traceback of any exception raised in its host callbacks, Interrupted too."""
    return not (record.exc_info and isinstance(record.exc_info[1], Interrupted))


def _signal_of(error: BaseException) -> int | None:
    """The signal ``error`` stands for, or None: :class:`Interrupted`, Ctrl-C, or any exception raised after a
    signal arrived (an Interrupted raised in a host callback of a compiled JAX program comes back wrapped in
    JAX's own error)."""
    import signal

    if isinstance(error, Interrupted):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    return _received[0] if isinstance(error, Exception) and _received else None


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived whose exception was swallowed before it could unwind."""
    if _received:
        raise Interrupted(_received[0])


def run_main(prog: str, run: Callable[[], object]) -> int:
    """Call ``run``; return its status (an ``int`` result, else 0).

    A :class:`UserError` becomes one line on stderr and status 2. SIGINT and
    SIGTERM become :class:`Interrupted` wherever Python code runs, so the run
    unwinds (its staging directory and worker processes are removed) and the
    command ends with one line and status 130 or 143, never a traceback.
    """
    import logging
    import signal
    import threading

    handlers, unraisable, timers = {}, sys.unraisablehook, []
    callback_log = logging.getLogger("jax._src.callback")
    _received.clear()
    if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
        handlers = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
        sys.unraisablehook = _deliver_again(unraisable, timers)
        callback_log.addFilter(_not_an_interruption)
    try:
        status = run()
        raise_if_interrupted()
    except UserError as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except BaseException as error:
        signum = _signal_of(error)
        if signum is None:
            raise
        print(f"{prog}: interrupted by {signal.Signals(signum).name}; no output was published", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable
        callback_log.removeFilter(_not_an_interruption)
        for timer in timers:  # a signal sent again after the handlers are restored would kill the process
            timer.cancel()
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def exit_without_teardown(status: int):
    """``sys.exit(status)`` for a command's ``__main__`` after ``main`` has returned, without the interpreter's
    teardown: the exit handlers run (``atexit``: logging's flush, temporary files, JAX's clean-up), the standard
    streams are flushed, and the process ends before every loaded module is finalized, which takes 0.4-0.5 s
    once JAX and matplotlib are loaded (0.2 s and 0.14 s of it, each measured alone) for nothing: every output
    is written, closed and published before ``main`` returns. While a thread other than daemons is still
    running, the ordinary exit waits for it instead.
    """
    import atexit
    import threading

    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class ResumableOutput:
    """``--out DIR`` of a long study that records as it goes: resumable, yet published whole.

    Checked on construction, before any work. The study is assembled in
    ``.DIR.in-progress`` beside ``DIR``, a marked toolkit output (its marker
    says ``"state": "in progress"``) holding ``records.jsonl``, one JSON record
    with a ``"key"`` per line. :meth:`open` takes that directory (created, or
    continued with ``resume``; with ``resume`` and a finished ``DIR``, started
    from ``DIR``'s records and ``carried`` folders), locks it against a second
    writer and returns the records by key; :meth:`append` adds a record,
    flushed and fsynced before it returns; :meth:`publish` rewrites the
    records, lets the caller write its last files, marks the directory
    ``"complete"`` and renames it to ``DIR`` (replacing an earlier ``DIR``,
    deleted only once the new one is in). After an error, :meth:`abandon`
    keeps the directory for ``resume`` when it holds a record.
    """

    RECORDS = "records.jsonl"

    def __init__(self, out: str, *, overwrite: bool, resume: bool, command: str, prog: str,
                 carried: tuple[str, ...] = ()):
        if overwrite and resume:
            raise UserError("--overwrite starts again and --resume continues; give one of them")
        path = os.path.abspath(out)
        if os.path.isdir(path) and not (overwrite or resume) and not os.path.islink(out):
            raise UserError(f"--out {out} already exists; pass --resume to add to it, --overwrite to replace it, "
                            "or choose another path")
        self.path = check_output_path(out, overwrite or resume)
        if resume and os.path.isdir(self.path) and not os.path.isfile(os.path.join(self.path, self.RECORDS)):
            raise UserError(f"--out {out} holds no {self.RECORDS}: --resume continues only what {prog} wrote; "
                            "nothing was touched")
        self.progress = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.in-progress")
        if os.path.isdir(self.progress):
            if not is_output(self.progress):
                raise UserError(f"{self.progress} exists and was not written by this toolkit; nothing was touched")
            if not (overwrite or resume):
                raise UserError(f"an unfinished run into {out} is in {self.progress}; pass --resume to continue "
                                "it or --overwrite to start again")
        self.out, self.overwrite, self.resume, self.command, self.prog = out, overwrite, resume, command, prog
        self.carried = carried
        self._lock = None

    def _marker(self, state: str) -> None:
        write_json(os.path.join(self.progress, MARKER), {"tool": "metareweight", "command": self.command,
                                                          "state": state})

    def open(self) -> dict[str, dict]:
        """Take the in-progress directory; return its records by key (empty when it starts from nothing)."""
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.progress)
            self._lock = os.open(self.progress, os.O_RDONLY)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self.overwrite:  # emptied only under the lock: a run still writing it keeps it
                for entry in os.scandir(self.progress):
                    shutil.rmtree(entry.path) if entry.is_dir() else os.remove(entry.path)
        except BlockingIOError:
            self.close()
            raise UserError(f"another run is writing {self.out} (it holds {self.progress}); wait for it to end"
                            ) from None
        except OSError as error:
            self.close()
            raise UserError(f"--out {self.out} cannot be written: {error.strerror}") from None
        records = os.path.join(self.progress, self.RECORDS)
        if not is_output(self.progress):  # new: continue a finished run, or start from nothing
            if self.resume and is_output(self.path):
                shutil.copyfile(os.path.join(self.path, self.RECORDS), records)
                for folder in self.carried:
                    if os.path.isdir(os.path.join(self.path, folder)):
                        shutil.copytree(os.path.join(self.path, folder), os.path.join(self.progress, folder))
            self._marker("in progress")
        return self._read(records)

    def _read(self, records_file: str) -> dict[str, dict]:
        """The records on file by key. The bytes after the last newline are a line cut short by a kill: they are
        cut from the file (so that new records start on a line of their own), and their record is not returned."""
        if not os.path.isfile(records_file):
            return {}
        with open(records_file, "rb") as handle:
            complete, _, torn = handle.read().rpartition(b"\n")
        records = {}
        for number, line in enumerate(complete.split(b"\n") if complete else []):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "key" in record:
                    records[record["key"]] = record
                    continue
            raise UserError(f"{records_file} line {number + 1} is not a record; the file is damaged (--overwrite "
                            "starts again)")
        if torn:
            with open(records_file, "r+b") as handle:
                handle.truncate(len(complete) + 1 if complete else 0)
        return records

    @staticmethod
    def _line(record: dict) -> str:
        return json.dumps(jsonable(record), sort_keys=True, allow_nan=False) + "\n"

    def append(self, record: dict) -> None:
        """Add ``record`` as one line of ``records.jsonl``, on disk before this returns (flushed and fsynced)."""
        with open(os.path.join(self.progress, self.RECORDS), "a") as handle:
            handle.write(self._line(record))
            handle.flush()
            os.fsync(handle.fileno())

    def publish(self, records: list[dict], finish: Callable[[str], object]) -> None:
        """Rewrite ``records.jsonl`` as ``records`` (in that order), call ``finish(directory)`` to write the last
        files, mark the directory complete and rename it to ``DIR``."""
        raise_if_interrupted()
        write_text(os.path.join(self.progress, self.RECORDS), "".join(map(self._line, records)))
        finish(self.progress)
        self._marker("complete")
        trash = None
        if os.path.isdir(self.path):
            if not is_output(self.path):
                raise UserError(f"--out {self.out} was replaced by something this toolkit did not write while the "
                                f"run was going; nothing was touched (the records stay in {self.progress})")
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.replaced-", dir=os.path.dirname(self.path))
            os.rename(self.path, os.path.join(trash, "old"))
        os.rename(self.progress, self.path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abandon(self) -> None:
        """After an error: keep the in-progress directory when it holds records (and say so), else remove it."""
        records = os.path.join(self.progress, self.RECORDS)
        if os.path.isfile(records) and os.path.getsize(records) > 0:
            print(f"{self.prog}: what finished so far is recorded in {self.progress}; --resume continues",
                  file=sys.stderr)
        else:
            shutil.rmtree(self.progress, ignore_errors=True)

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def add_executor_arguments(group, *, workers_help: str = "local processes (default: the core count; 1 runs in "
                                                         "this process)") -> None:
    """Where independent runs go (:mod:`phases.executor`): ``--workers`` (a local process pool), or
    ``--dask-workers`` (a Dask LocalCluster) or ``--scheduler`` (an existing Dask cluster); one of them."""
    where = group.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, help=workers_help)
    where.add_argument("--dask-workers", type=positive_int, default=None,
                       help="start a Dask LocalCluster of this many processes, one thread each (the dask extra)")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="run on the existing Dask cluster of this scheduler; its workers must import this "
                            "package (the dask extra)")


def executor_from_arguments(args):
    """The executor of :func:`add_executor_arguments`' flags; a :class:`UserError` when Dask is asked for but
    not installed."""
    import importlib.util

    from phases.executor import DaskCluster, LocalPool

    if args.dask_workers is None and args.scheduler is None:
        return LocalPool(args.workers)
    if importlib.util.find_spec("distributed") is None:
        raise UserError("--dask-workers and --scheduler need Dask distributed: pip install -e '.[dask]'")
    return DaskCluster(args.scheduler, args.dask_workers)
