"""The one look every figure shares, and the helpers that keep it consistent.

- one seaborn theme (``whitegrid``, ``notebook`` context, slightly enlarged
  fonts so a 10-inch figure stays legible when the README scales it to about
  800 pixels), applied per figure through :func:`styled` so that producing a
  figure never changes the caller's matplotlib settings;
- phase shading and colours from :mod:`phases.plot` (``PHASE_COLORS`` for the
  shaded bands, darker tones of the same hues for lines and markers);
- one time axis: steps on a symlog scale (linear below 20 steps, because
  alignment lasts only a few steps and would vanish on a linear axis);
- :func:`save`: PNG and CSV written atomically (temporary name, then rename).
"""

from __future__ import annotations

import functools
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Patch

from phases.cli import atomic_write
from phases.detect import PHASE_NAMES, Phases
from phases.plot import CLEAN_COLOR, NOISY_COLOR, PHASE_COLORS, shade_phases

DPI = 110
#: Darker tones of the phase hues, for lines and points (the pale ones are for shading).
PHASE_LINE_COLORS = {"alignment": "#d9771e", "filtering": "#2f7fc1", "post-filtering": "#4c9a3a"}
PALETTE = sns.color_palette("deep")
SYMLOG_THRESHOLD = 20  # steps; the same as phases.plot's overview figure
__all__ = [
    "CLEAN_COLOR", "NOISY_COLOR", "PHASE_COLORS", "PHASE_LINE_COLORS", "PALETTE", "DPI", "styled", "theme_rc",
    "time_axis", "shade", "plain_log", "phase_handles", "phase_of_steps", "save", "note",
]


@functools.lru_cache(maxsize=None)
def theme_rc() -> dict:
    """The rc parameters of the theme (seaborn ``whitegrid`` + ``notebook`` context, font scale 1.15)."""
    rc = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=1.15))
    rc.update({
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
        "axes.titlesize": 13, "axes.titleweight": "normal", "figure.titlesize": 14.5,
        "legend.fontsize": 10.5, "legend.title_fontsize": 10.5, "legend.framealpha": 0.92,
        "savefig.dpi": DPI, "figure.dpi": DPI, "savefig.bbox": "tight",
        "axes.edgecolor": "0.3", "grid.color": "0.88",
    })
    return rc


def styled(function):
    """Run a figure function inside the theme, leaving the global rc parameters untouched."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(theme_rc()):
            return function(*args, **kwargs)
    return wrapper


def time_axis(ax, last_step: int, label: bool = True) -> None:
    """Steps on the x axis from 0 to the last step; symlog beyond ``SYMLOG_THRESHOLD`` for runs 10x longer than that."""
    symlog = last_step > 10 * SYMLOG_THRESHOLD
    if symlog:
        ax.set_xscale("symlog", linthresh=SYMLOG_THRESHOLD, linscale=0.6)
        # Plain numbers at 1-2-5 steps read better than powers of ten for step counts.
        ticks = [0] + [base * 10 ** power for power in range(0, 7) for base in (1, 2, 5)]
        ticks = [tick for tick in ticks if tick <= last_step and tick not in (1, 2)]
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(0, last_step)
    if label:
        ax.set_xlabel("training step t" + (f"  (symlog axis, linear below {SYMLOG_THRESHOLD})" if symlog else ""))


def shade(ax, phases: Phases, last_step: int, boundaries: bool = True, annotate: bool = False) -> None:
    """Shade the phases (:func:`phases.plot.shade_phases`) and mark ``T_align`` / ``T_filter`` with dotted lines.

    ``annotate`` writes ``T_align = ...`` and ``T_filter = ...`` just above the axes.
    """
    shade_phases(ax, phases, last_step, label=False)
    if boundaries:
        for name, boundary in (("T_align", phases.T_align), ("T_filter", phases.T_filter)):
            if boundary is not None and 0 < boundary < last_step:
                ax.axvline(boundary, color="0.35", lw=0.9, ls=":", zorder=1)
                if annotate:
                    ax.annotate(f"{name} = {boundary}", (boundary, 1.0), xycoords=("data", "axes fraction"),
                                xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=10,
                                color="0.25")


def plain_log(axis, subs=(1.0,)) -> None:
    """Label a log-scaled ``ax.xaxis`` / ``ax.yaxis`` with plain numbers (0.01, 0.1, 1) and no minor labels.

    ``subs``: mantissas of the labelled ticks, e.g. ``(1, 2, 5)`` for an axis spanning about one decade.
    """
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def phase_handles(phases: Phases | None = None) -> list:
    """Legend patches for the three phases (the empty ones of ``phases`` marked as such)."""
    handles = []
    for name in PHASE_NAMES:
        empty = phases is not None and phases[name].empty
        handles.append(Patch(facecolor=PHASE_COLORS[name], edgecolor="0.6", lw=0.5,
                             label=f"{name} (empty)" if empty else name))
    return handles


def phase_of_steps(phases: Phases, step: np.ndarray) -> np.ndarray:
    """(T,) the phase name of each recorded step (empty string outside every phase)."""
    labels = np.full(len(step), "", dtype=object)
    for name, mask in phases.masks(step).items():
        labels[mask] = name
    return labels


def note(ax, text: str) -> None:
    """A short grey note in the upper left corner of ``ax``."""
    ax.text(0.02, 0.97, text, transform=ax.transAxes, ha="left", va="top", fontsize=10, color="0.25",
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.8", "alpha": 0.9})


def empty_panel(ax, text: str) -> None:
    """A panel with nothing to draw: no ticks, the reason in its middle."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.3", wrap=True)


def save(fig, table, out_dir: str, name: str) -> tuple[str, str]:
    """Write ``out_dir/name.png`` and ``out_dir/name.csv`` (``table``: a pandas DataFrame) atomically; close ``fig``.

    Returns the two paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    png, csv = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.csv")
    try:
        with matplotlib.rc_context(theme_rc()):
            atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight",
                                                 metadata={"Software": "python -m figures"}))
        atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    finally:
        plt.close(fig)
    return png, csv
