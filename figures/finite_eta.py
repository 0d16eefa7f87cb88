"""Figure 10: the finite network's gap and its late-phase re-admission against the step size eta.

Reads ``summary.json`` of ``python -m phases.finite --eta-fractions ... --out DIR``:
its ``eta_sweep`` (one entry per step size, the width sweep's gaps and
re-admission shares, and the linearized run's).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style

NAME = "finite_eta"
NUMBER = 10
CAPTION = ("Step size and the finite-width gap: the largest weight gap to the linearized run (left, log scale) and "
           "late re-admission, the share of the noisy examples at w = 0 at T_filter whose weight leaves 0 later "
           "(right), against eta as a fraction of the stability limit 2/lambda_max of the analytic kernel; one line "
           "per width (mean over seeds, crosses: seeds that diverged), black: the linearized run.")


def eta_table(summary: dict) -> pd.DataFrame:
    """One row per (step size, width, seed) of ``summary["eta_sweep"]``: ``eta, eta_fraction, main, run``
    (the width, or ``linearized``), ``seed``, ``weight_gap``, ``output_gap``, ``readmitted_noisy`` and
    ``diverged``."""
    sweep = summary.get("eta_sweep")
    if not isinstance(sweep, list) or not sweep:
        raise ValueError("summary.json has no eta_sweep (written by an older python -m phases.finite)")
    rows = []
    for entry in sweep:
        common = {"eta": entry["eta"], "eta_fraction": entry["eta_fraction"], "main": entry["main"]}
        rows.append(common | {"run": "linearized", "seed": None, "weight_gap": 0.0, "output_gap": 0.0,
                              "readmitted_noisy": entry["linearized"]["readmitted_noisy"], "diverged": False})
        for row in entry["per_width"]:
            for index, gap in enumerate(row["weight_gap"]["per_seed"]):
                rows.append(common | {"run": str(row["width"]), "seed": index, "weight_gap": gap,
                                      "output_gap": row["output_gap"]["per_seed"][index],
                                      "readmitted_noisy": row["readmitted_noisy"]["per_seed"][index],
                                      "diverged": gap is None})
    table = pd.DataFrame(rows)
    # None (no T_filter, nothing filtered, diverged) becomes NaN, also in a column that holds nothing else.
    numbers = ["weight_gap", "output_gap", "readmitted_noisy"]
    table[numbers] = table[numbers].apply(pd.to_numeric)
    return table


@style.styled
def figure(summary: dict) -> tuple[plt.Figure, pd.DataFrame]:
    """Weight gap and re-admission against ``eta / (2 / lambda_max)``, one line per width.

    Returns the figure and :func:`eta_table`.
    """
    table = eta_table(summary)
    fig, (ax_gap, ax_back) = plt.subplots(1, 2, figsize=(13, 5.4))
    finite = table[table["run"] != "linearized"]
    widths = sorted({int(run) for run in finite["run"]})
    colors = plt.cm.viridis(np.linspace(0.05, 0.85, len(widths)))
    for width, color in zip(widths, colors):
        runs = finite[finite["run"] == str(width)]
        done = runs[~runs["diverged"]]
        mean = done.groupby("eta_fraction")[["weight_gap", "readmitted_noisy"]].mean()
        ax_gap.plot(mean.index, mean["weight_gap"], color=color, marker="o", lw=1.8, label=f"N = {width}")
        ax_back.plot(mean.index, mean["readmitted_noisy"], color=color, marker="o", lw=1.8, label=f"N = {width}")
        broken = runs[runs["diverged"]]["eta_fraction"].unique()
        if len(broken):
            ax_gap.scatter(broken, np.full(len(broken), np.nanmax(finite["weight_gap"])), color=color,
                           marker="x", s=60, zorder=3)
    linear = table[table["run"] == "linearized"]
    ax_back.plot(linear["eta_fraction"], linear["readmitted_noisy"], color="black", lw=2.4, ls="--",
                 marker="s", label="linearized")
    main = table[table["main"]]["eta_fraction"].iloc[0]
    for ax in (ax_gap, ax_back):
        ax.axvline(main, color="0.5", lw=0.9, ls=":")
        ax.set_xlabel("eta / (2 / lambda_max)  (1: stability limit)")
        ax.set_xlim(0, 1)
    ax_gap.set_yscale("log")
    style.plain_log(ax_gap.yaxis, subs=(1, 2, 5))
    ax_gap.set_ylabel("weight gap max |w^N - w^lin|")
    ax_gap.set_title("Gap to the linearized run")
    ax_gap.legend(loc="best", fontsize=9.5)
    ax_back.set_ylabel("re-admitted after T_filter\n(share of noisy at w = 0 then)")
    ax_back.set_title("Late-phase re-admission")
    ax_back.legend(loc="best", fontsize=9.5)
    fig.suptitle(f"Step size: gap and re-admission (dotted: the default eta = {main:.2f} of the limit)")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.86, wspace=0.3)
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    return figure(results.finite()["summary"])
