"""What every command line of the toolkit shares (ARCHITECTURE.md convention 10).

A user error is one line on stderr and exit status 2, never a traceback;
argument types reject out-of-range values with a message naming the bound;
results go into a staging directory beside ``--out`` that replaces it only
once it is whole; JSON never holds NaN; every result records package versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata

import numpy as np

_PACKAGES = ("numpy", "scipy", "jax", "jaxlib", "neural-tangents", "torch", "matplotlib", "seaborn", "pandas",
             "scikit-learn", "cleanlab")


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UserError` (one line) instead of usage text and exit."""

    def error(self, message):
        raise UserError(message)


def bounded(kind: type, low: float, strict: bool = False) -> Callable[[str], float]:
    """An argument type: ``kind(text)`` that must be ``> low`` (``strict``) or ``>= low``."""

    def parse(text):
        value = kind(text)
        if value != value or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    return parse


positive_int = bounded(int, 1)


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


def write_json(path, value) -> None:
    """Write ``value`` as JSON (sorted keys, no NaN) under a temporary name, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(jsonable(value), handle, indent=2, sort_keys=True, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


class OutputDirectory:
    """``--out DIR`` that appears whole or not at all.

    Checked on construction, before any work: a file in the way, an existing
    directory without ``overwrite`` and an unwritable parent are user errors.
    Use as a context manager that yields the staging directory beside ``DIR``;
    on success it replaces ``DIR`` (an old one goes only once the new one is
    in place), on any error it is removed and ``DIR`` is left as it was.
    """

    def __init__(self, out: str, overwrite: bool = False):
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"--out {out} is a file; give a directory path")
        if os.path.isdir(out) and not overwrite:
            raise UserError(f"--out {out} already exists; choose another path or pass --overwrite")
        parent = os.path.dirname(os.path.abspath(out))
        try:
            os.makedirs(parent, exist_ok=True)
            self.staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
        except OSError as error:
            raise UserError(f"--out {out} cannot be written: {error.strerror}") from None
        self.out = out

    def __enter__(self) -> str:
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)  # mkdtemp made it private; the result is an ordinary directory
        if os.path.isdir(self.out):
            trash = self.staging + ".old"
            os.replace(self.out, trash)
            os.replace(self.staging, self.out)
            shutil.rmtree(trash)
        else:
            os.replace(self.staging, self.out)


def run_main(prog: str, run: Callable[[], object]) -> int:
    """Call ``run``; a :class:`UserError` becomes one line on stderr and status 2."""
    try:
        run()
    except UserError as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
