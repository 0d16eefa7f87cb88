"""Argument checks shared by every public constructor and command (scikit-learn style: one place, one wording).

A number that must be finite is refused when it is NaN or infinite; an integer
must be an integer (``2.7`` is refused, never truncated to 2); each check names
the argument and its bound, and never echoes a large array.
"""

from __future__ import annotations

import math
import numbers
import os


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``; a bool or a non-integral number is a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {_short(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_range(low, high)}, got {value}")
    return value


def real(name: str, value, low: float | None = None, high: float | None = None, *, strict_low: bool = False) -> float:
    """``value`` as a finite ``float`` with ``low <= value`` (``<`` when ``strict_low``) and ``value <= high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {_short(value)}")
    value = float(value)
    if (low is not None and (value < low or (strict_low and value == low))) or (high is not None and value > high):
        bound = f"> {low:g}" if strict_low and high is None else _range(low, high)
        raise ValueError(f"{name} must be {bound}, got {value:g}")
    return value


def memory_budget() -> int:
    """Bytes a run may plan to use: 80% of this machine's physical memory."""
    return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(what: str, estimate: int, force: bool = False) -> None:
    """Refuse, with the estimate, a run planned to need more than :func:`memory_budget` (unless ``force``)."""
    budget = memory_budget()
    if estimate > budget and not force:
        raise ValueError(f"{what} would need about {estimate / 2**30:.1f} GiB of memory, more than the "
                         f"{budget / 2**30:.1f} GiB this machine can give; make it smaller (or force it)")


def _range(low, high) -> str:
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"in [{low}, {high}]"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
