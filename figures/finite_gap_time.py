"""Figure 9: the finite network's gap to the linearized run at every recorded step (claim C8 over time).

Reads ``summary.json`` of ``python -m phases.finite --out DIR`` (one per depth or
architecture): its ``record_steps``, the per-step gap series of every run
(``per_width[*].runs[*].series``) and the linearized run's phase boundaries.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style

NAME = "finite_gap_time"
NUMBER = 9
CAPTION = ("Finite against linearized over time (C8): the largest weight gap max_i |w_t,i^N - w_t,i^lin| (top) and "
           "the relative test-output gap (bottom) at every recorded step, mean over seeds, one line per width and "
           "one column per network; shading: the linearized run's alignment, filtering and post-filtering phases.")

_GAPS = (("weight_gap", "weight gap\nmax_i |w^N - w^lin|"),
         ("output_gap", "test-output gap\n||F^N - F^lin|| / ||F^lin_end||"))


def series_table(summary: dict, label: str | None = None) -> pd.DataFrame:
    """One row per (width, seed, recorded step) of ``summary.json``: ``network, width, seed, step, weight_gap,
    output_gap``; ``network`` is ``label`` or the run's title."""
    steps = summary.get("record_steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError("summary.json has no record_steps (written by an older python -m phases.finite)")
    rows = []
    for entry in summary["per_width"]:
        for run in entry["runs"]:
            if "series" not in run:
                continue
            rows.append(pd.DataFrame({"network": label or summary.get("title", ""), "width": int(entry["width"]),
                                      "seed": run["seed"], "step": steps, **{key: run["series"][key]
                                                                            for key, _ in _GAPS}}))
    if not rows:
        raise ValueError("summary.json holds no gap series")
    return pd.concat(rows, ignore_index=True)


def _label(summary: dict) -> str:
    finite = summary.get("config", {}).get("finite", {})
    if finite.get("network") == "cnn":
        return f"CNN, {finite.get('depth', '?')} conv layer(s)"
    return f"MLP, depth {finite.get('depth', '?')}"


def _shade(ax, linearized: dict, last: int) -> None:
    """The linearized run's phases as bands, its boundaries as dotted lines."""
    T_align, T_filter = linearized.get("T_align"), linearized.get("T_filter")
    edges = [0] + [t for t in (T_align, T_filter) if t is not None] + [last]
    for name, start, stop in zip(("alignment", "filtering", "post-filtering"), edges[:-1], edges[1:]):
        ax.axvspan(start, stop, color=style.PHASE_COLORS[name], alpha=0.6, lw=0, zorder=0)
    for boundary in (T_align, T_filter):
        if boundary is not None and 0 < boundary < last:
            ax.axvline(boundary, color="0.35", lw=0.9, ls=":", zorder=1)


@style.styled
def figure(summaries: list[dict]) -> tuple[plt.Figure, pd.DataFrame]:
    """Gap against time, one column per summary (e.g. depth 1, 2, 3, or the CNN).

    Parameters
    ----------
    summaries : ``summary.json`` files of ``python -m phases.finite`` that hold ``record_steps`` and gap series.

    Returns the figure and its data: :func:`series_table` rows of every summary, plus ``T_align`` and
    ``T_filter`` of its linearized run.
    """
    tables = []
    fig, axes = plt.subplots(2, len(summaries), figsize=(5.2 * len(summaries) + 1.5, 8), squeeze=False,
                             sharex="col")
    for column, summary in enumerate(summaries):
        label = _label(summary)
        table = series_table(summary, label)
        linearized = summary.get("linearized", {})
        table = table.assign(T_align=linearized.get("T_align"), T_filter=linearized.get("T_filter"))
        tables.append(table)
        last = int(table["step"].max())
        mean = table.groupby(["width", "step"])[[key for key, _ in _GAPS]].mean().reset_index()
        widths = sorted(mean["width"].unique())
        colors = plt.cm.viridis(np.linspace(0.05, 0.85, len(widths)))
        for row, (key, ylabel) in enumerate(_GAPS):
            ax = axes[row, column]
            _shade(ax, linearized, last)
            for width, color in zip(widths, colors):
                data = mean[(mean["width"] == width) & (mean[key] > 0)]
                ax.plot(data["step"], data[key], color=color, lw=1.8, label=f"N = {width}")
            ax.set_yscale("log")
            style.time_axis(ax, last, label=row == 1)
            if column == 0:
                ax.set_ylabel(ylabel)
        axes[0, column].set_title(f"{label}\nT_align = {linearized.get('T_align')}, "
                                  f"T_filter = {linearized.get('T_filter')} (linearized)")
        axes[0, column].legend(loc="lower right", fontsize=9.5, ncol=2)
    fig.suptitle("Gap between finite networks and the linearized run, step by step (C8)")
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.08, top=0.86, hspace=0.08, wspace=0.22)
    return fig, pd.concat(tables, ignore_index=True)


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    return figure([results.finite()["summary"]])
