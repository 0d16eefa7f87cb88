"""Figure 2: the vanishing-coupling mechanism (claim C4), gamma = 1 beside gamma = 0."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.claims import c4_bound
from phases.detect import PHASE_NAMES

NAME = "mechanism"
NUMBER = 2
CAPTION = ("Why the weights freeze (C4): the largest weight velocity stays under a bound proportional to the "
           "coupling ||R_meta_hat||_F, i.e. to sqrt(L_meta). With gamma = 1 (left) the clean-subset loss contracts, "
           "the coupling vanishes and the weights stop; with gamma = 0 (right) the loss plateaus and they keep moving.")

_SERIES = (  # column, label, colour, line style
    ("clean_loss", "clean-subset loss L_meta", "0.1", "-"),
    ("coupling_norm", "coupling ||R_meta_hat||_F", "#8c5fb8", "-"),
    ("max_velocity", "largest |weight velocity| (per step)", "#e07b00", "-"),
    ("c4_bound", "C4 bound on it", "#e07b00", "--"),
)


def _table(trajectory, phases, gamma) -> pd.DataFrame:
    return pd.DataFrame({
        "gamma": gamma, "step": trajectory.step, "phase": style.phase_of_steps(phases, trajectory.step),
        "clean_loss": trajectory.clean_loss, "sqrt_clean_loss": np.sqrt(trajectory.clean_loss),
        "coupling_norm": trajectory.coupling_norm, "max_velocity": trajectory.max_velocity,
        "c4_bound": trajectory.config["beta"] / trajectory.config["m"] * c4_bound(trajectory).max(axis=1),
    })


@style.styled
def figure(runs: dict) -> tuple[plt.Figure, pd.DataFrame]:
    """``runs``: ``{gamma: (trajectory, phases)}``, e.g. ``{1.0: ..., 0.0: ...}`` (drawn in that order, left to right).

    Top row: the clean-subset loss, the coupling norm, the largest weight
    velocity and its C4 bound against steps (log scale), phases shaded.
    Bottom row: the largest velocity and the bound against ``sqrt(L_meta)``.

    Returns the figure and its data: one row per run and recorded step with
    ``gamma, step, phase, clean_loss, sqrt_clean_loss, coupling_norm,
    max_velocity, c4_bound``.
    """
    tables = [_table(trajectory, phases, float(gamma)) for gamma, (trajectory, phases) in runs.items()]
    table = pd.concat(tables, ignore_index=True)
    columns = len(runs)
    fig, axes = plt.subplots(2, columns, figsize=(6.0 * columns, 8.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1.15, 1]})
    positive = table[["clean_loss", "coupling_norm", "max_velocity", "c4_bound"]].to_numpy()
    positive = positive[np.isfinite(positive) & (positive > 0)]
    y_range = (positive.min() / 2, positive.max() * 2)

    for column, ((gamma, (trajectory, phases)), data) in enumerate(zip(runs.items(), tables)):
        last = int(trajectory.step[-1])
        ax = axes[0, column]
        style.shade(ax, phases, last, annotate=True)
        for key, label, color, ls in _SERIES:
            ax.plot(data["step"], data[key], color=color, ls=ls, lw=2.0 if ls == "-" else 1.6, label=label)
        ax.set_yscale("log")
        ax.set_ylim(*y_range)
        style.time_axis(ax, last)
        ax.set_title(f"gamma = {gamma:g}" + ("  (clean subset also trained on)" if gamma > 0 else "  (pure L2RW)"),
                     pad=20)
        style.plain_log(ax.yaxis)
        if column == 0:
            ax.set_ylabel("value (log scale)")
        else:
            ax.tick_params(labelleft=False)

        ax = axes[1, column]
        x = data["sqrt_clean_loss"].to_numpy()
        ax.plot(x, data["c4_bound"], color="#e07b00", ls="--", lw=1.6, label="C4 bound")
        ax.plot(x, data["max_velocity"], color="0.55", lw=0.8, zorder=2)
        phase_names = data["phase"].to_numpy()
        for name in PHASE_NAMES:
            mask = phase_names == name
            if mask.any():
                ax.scatter(x[mask], data["max_velocity"][mask], s=9, color=style.PHASE_LINE_COLORS[name], zorder=3,
                           label=f"largest |velocity|, {name}")
        ends = ((0, "t = 0", (-6, 6), "right", "bottom"), (len(x) - 1, f"t = {last}", (8, -4), "left", "top"))
        for index, text, offset, ha, va in ends:
            ax.annotate(text, (x[index], data["max_velocity"].iloc[index]), xytext=offset, textcoords="offset points",
                        fontsize=10.5, color="0.2", ha=ha, va=va)
        ax.set_xscale("log")
        ax.set_yscale("log")
        style.plain_log(ax.xaxis, subs=(1, 2, 5))
        style.plain_log(ax.yaxis)
        ax.set_xlabel("sqrt(clean-subset loss L_meta), log scale")
        if column == 0:
            ax.set_ylabel("weight velocity per step (log)")
        else:
            ax.tick_params(labelleft=False)
        ax.legend(loc="upper left", fontsize=10.5, markerscale=2)

    for row in range(2):  # one scale per row, so the two columns compare at a glance
        lows, highs = zip(*(ax.get_xlim() for ax in axes[1]))
        if row == 1:
            for ax in axes[1]:
                ax.set_xlim(min(lows), max(highs))
        lows, highs = zip(*(ax.get_ylim() for ax in axes[row]))
        room = (1.0, 1.0) if row == 0 else (0.5, 8.0)  # bottom row: space for the legend and the labels
        for ax in axes[row]:
            ax.set_ylim(min(lows) * room[0], max(highs) * room[1])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle("The coupling mechanism behind the weight dynamics (C4)")
    fig.tight_layout(rect=(0, 0, 1, 0.905))
    fig.legend(handles + style.phase_handles(), labels + [h.get_label() for h in style.phase_handles()],
               loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.95), fontsize=11)
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    runs = {}
    for gamma in (1, 0):
        run = results.run(gamma)
        runs[float(run.trajectory.config["gamma"])] = (run.trajectory, run.phases)
    return figure(runs)
