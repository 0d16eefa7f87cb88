"""Figure 6: the phase diagram: phase boundaries and filtering against the noise rate, over seeds."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.sweep import RECORD_FIELDS

NAME = "phase_diagram"
NUMBER = 6
CAPTION = ("Phase diagram, noise rate 0 to 0.7 (four classes), 4 seeds each, bands +-1 sd: T_align (a few steps) "
           "and T_filter (the clean-loss plateau, a few hundred steps) barely move with the noise rate (left), while "
           "the share of noisy examples filtered to w = 0 grows with it and the share of clean ones at 0 shrinks "
           "(right).")

_SHARES = (("frac_noisy_zero_at_filter", "noisy at w = 0, at T_filter", style.NOISY_COLOR, "-", "o"),
           ("frac_noisy_zero_end", "noisy at w = 0, at the last step", style.NOISY_COLOR, "--", "^"),
           ("frac_clean_zero_end", "clean at w = 0, at the last step", style.CLEAN_COLOR, ":", "v"))


def _band(ax, table: pd.DataFrame, column: str, color, label, ls="-", marker="o"):
    """Mean line with a +-1 standard deviation band over seeds, and every seed as a faint point."""
    values = table[["noise", column]].dropna()
    if values.empty:
        return
    ax.scatter(values["noise"], values[column], s=12, color=color, alpha=0.3, lw=0, zorder=2)
    grouped = values.groupby("noise")[column]
    mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    low, high = mean - sd, mean + sd
    ax.fill_between(mean.index, low, high, color=color, alpha=0.18, lw=0, zorder=1)
    ax.plot(mean.index, mean, color=color, lw=2.2, ls=ls, marker=marker, ms=5, label=label, zorder=3)


@style.styled
def figure(records: list[dict], settings: dict | None = None) -> tuple[plt.Figure, pd.DataFrame]:
    """Plot the per-run records of :func:`phases.sweep.sweep` against the noise rate.

    Left: ``T_filter`` (top) and ``T_align`` (bottom) in steps. Right: the share
    of noisy examples at ``w = 0`` at ``T_filter`` and at the last step, and
    the share of clean examples at ``w = 0`` at the last step. Lines are means
    over seeds, bands +-1 standard deviation, points single runs; a run without
    a boundary (no noise: nothing to filter; or no plateau) adds no point.

    Returns the figure and its data: the records, one row per run, with the
    columns :data:`phases.sweep.RECORD_FIELDS`.
    """
    table = pd.DataFrame(records)
    for column in RECORD_FIELDS:
        if column not in table:
            table[column] = np.nan
    table = table[list(RECORD_FIELDS)].sort_values(["noise", "seed"]).reset_index(drop=True)
    table = table.apply(pd.to_numeric, errors="coerce")
    seeds = table.groupby("noise")["seed"].nunique()

    fig = plt.figure(figsize=(13, 5.4))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1], hspace=0.08)
    ax_filter, ax_f = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[:, 1])
    ax_align = fig.add_subplot(grid[1, 0], sharex=ax_filter)
    # Two linear axes, not one log axis: the boundaries differ by two orders of magnitude, and their
    # variation with the noise rate is what the panel is about.
    _band(ax_filter, table, "T_filter", style.PHASE_LINE_COLORS["filtering"], "T_filter (end of filtering)",
          marker="s")
    no_filter = table[table["T_filter"].isna() & table["plateau"].notna()]
    if len(no_filter):
        ax_filter.scatter(no_filter["noise"], no_filter["plateau"], s=36, facecolor="none", lw=1.4,
                          edgecolor=style.PHASE_LINE_COLORS["filtering"], zorder=4,
                          label="clean-loss plateau, no noise to filter")
    _band(ax_align, table, "T_align", style.PHASE_LINE_COLORS["alignment"], "T_align (end of alignment)")
    ax_filter.set_ylabel("step")
    ax_align.set_ylabel("step")
    ax_filter.tick_params(labelbottom=False)
    ax_filter.set_title("Phase boundaries")
    missing = table.loc[table["plateau"].isna(), "noise"]
    if len(missing):
        style.note(ax_filter, f"{len(missing)} run(s) never plateaued: no T_filter")
    for ax in (ax_filter, ax_align):
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0) if ax is ax_align else low - 0.1 * (high - low), high + 0.25 * (high - low))
        ax.legend(loc="upper left", fontsize=10)

    for column, label, color, ls, marker in _SHARES:
        _band(ax_f, table, column, color, label, ls=ls, marker=marker)
    ax_f.set_ylim(-0.02, 1.02)
    ax_f.set_ylabel("share of the group at w = 0")
    ax_f.set_title("Filtering")
    ax_f.legend(loc="center right", bbox_to_anchor=(1.0, 0.36), fontsize=10)

    top = table["noise"].max() if len(table) else 0.0
    for ax in (ax_align, ax_f):
        ax.set_xlabel("noise rate (share of flipped training labels)")
        ax.set_xlim(-0.02, top + 0.02)
    detail = ""
    if settings:
        detail = (f" (n = {settings.get('n')}, C = {settings.get('num_classes')}, {settings.get('steps')} steps, "
                  f"gamma = {settings.get('gamma', 1):g})")
    counts = sorted(set(seeds.tolist()))
    fig.suptitle(f"Phase diagram of meta-reweighting{detail}; {'/'.join(map(str, counts))} seeds per noise rate, "
                 "bands +-1 sd", fontsize=13.5)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.11, top=0.86, wspace=0.2)
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    payload = results.sweep()
    return figure(payload["records"], payload.get("config", {}).get("settings"))
