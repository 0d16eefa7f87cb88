"""Figure 3: histograms of clean and of noisy example weights at the end of each phase."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.detect import Phases

NAME = "histograms"
NUMBER = 3
CAPTION = ("Weight histograms of clean (blue) and noisy (red) examples at the last step of each phase (outer bars: "
           "exactly w = 0 and w = 1): alignment separates the two groups, filtering parks most noisy examples at "
           "exactly 0, and post-filtering still drifts, zeroing some clean examples too.")

BINS = np.linspace(0.0, 1.0, 21)  # width 0.05; w = 1 falls in the last bin (numpy includes the right edge)


@style.styled
def figure(trajectory, phases: Phases) -> tuple[plt.Figure, pd.DataFrame]:
    """Counts of clean and noisy weights in 20 bins of width 0.05 at the last recorded step of each phase.

    The exact values 0 and 1 (where clipping parks weights) get their own
    bars, left of and right of the interior bins, so a pile-up at the box's
    edges is not mistaken for weights merely near it.

    Returns the figure and its data: one row per phase, group and bin with
    ``phase, step, group, bin_left, bin_right, count, share`` (``bin_left =
    bin_right`` = 0 or 1 for the exact-value bars; ``share``: of the group).
    """
    masks = phases.masks(trajectory.step)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6), sharey=True)
    rows = []
    groups = (("clean", ~trajectory.noisy, style.CLEAN_COLOR), ("noisy", trajectory.noisy, style.NOISY_COLOR))
    width = BINS[1] - BINS[0]
    for ax, phase in zip(axes, phases.phases):
        ax.set_facecolor(style.PHASE_COLORS[phase.name])
        if phase.empty or not masks[phase.name].any():
            style.empty_panel(ax, f"{phase.name}: empty\n({phase.reason or 'no recorded step'})")
            ax.set_title(f"end of {phase.name}")
            continue
        index = int(np.flatnonzero(masks[phase.name])[-1])
        step = int(trajectory.step[index])
        w = trajectory.w[index]
        for offset, (group, mask, color) in zip((-0.25, 0.25), groups):
            values = w[mask]
            if values.size == 0:
                continue
            at_zero, at_one = int(np.sum(values == 0.0)), int(np.sum(values == 1.0))
            interior = values[(values > 0.0) & (values < 1.0)]
            counts, _ = np.histogram(interior, BINS)
            centres = BINS[:-1] + width / 2
            # Exact 0 and exact 1 as separate bars just outside [0, 1].
            positions = np.concatenate([[-0.075], centres, [1.075]])
            all_counts = np.concatenate([[at_zero], counts, [at_one]])
            ax.bar(positions + offset * width, all_counts, width=width / 2, color=color, alpha=0.9,
                   label=f"{group} ({values.size})")
            lefts = np.concatenate([[0.0], BINS[:-1], [1.0]])
            rights = np.concatenate([[0.0], BINS[1:], [1.0]])
            for left, right, count in zip(lefts, rights, all_counts):
                rows.append({"phase": phase.name, "step": step, "group": group, "bin_left": left,
                             "bin_right": right, "count": int(count), "share": count / values.size})
        ax.axvline(-0.0375, color="0.5", lw=0.8)
        ax.axvline(1.0375, color="0.5", lw=0.8)
        ax.set_xticks([-0.075, 0.25, 0.5, 0.75, 1.075])
        ax.set_xticklabels(["w = 0", "0.25", "0.5", "0.75", "w = 1"])
        ax.set_xlim(-0.13, 1.13)
        ax.set_yscale("symlog", linthresh=10, linscale=0.7)
        ax.set_title(f"end of {phase.name} (t = {step})")
        ax.set_xlabel("weight w  (outer bars: exactly 0 or 1)")
        ax.legend(loc="upper center", title="examples", fontsize=10)
    axes[0].set_ylabel("number of examples\n(symlog axis, linear below 10)")
    fig.suptitle("Weight histograms at the end of each phase (panel colour: the phase)")
    fig.tight_layout()
    table = pd.DataFrame(rows, columns=["phase", "step", "group", "bin_left", "bin_right", "count", "share"])
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    run = results.run(1)
    return figure(run.trajectory, run.phases)
