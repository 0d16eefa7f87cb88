"""Figure 1: a sample of clean and of noisy example weights over time, phases shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.detect import Phases
from phases.plot import sample_examples

NAME = "weights"
NUMBER = 1
CAPTION = ("Weights of 20 sampled clean (top) and noisy (bottom) training examples against the step, with the group "
           "means: alignment lifts clean weights and lowers noisy ones within a few steps, filtering drives most "
           "noisy weights to exactly 0, and in post-filtering the weights only drift.")


@style.styled
def figure(trajectory, phases: Phases, *, per_group: int = 20, seed: int = 0) -> tuple[plt.Figure, pd.DataFrame]:
    """Weights of ``per_group`` clean and noisy examples (drawn with ``seed``) and the group means against steps.

    Returns the figure and its data: one row per recorded step with ``step``,
    ``phase``, ``mean_w_clean``, ``mean_w_noisy``, ``frac_noisy_zero`` and one
    column ``w_clean_<i>`` / ``w_noisy_<i>`` per sampled training example ``i``.
    """
    step = trajectory.step
    last = int(step[-1])
    stats = trajectory.weight_stats()
    clean_idx, noisy_idx = sample_examples(trajectory.noisy, per_group, np.random.default_rng(seed))
    clean_idx, noisy_idx = np.sort(clean_idx), np.sort(noisy_idx)

    fig, axes = plt.subplots(2, 1, figsize=(10, 7.2), sharex=True)
    groups = (
        (axes[0], "clean", clean_idx, style.CLEAN_COLOR, stats["mean_w_clean"]),
        (axes[1], "noisy", noisy_idx, style.NOISY_COLOR, stats["mean_w_noisy"]),
    )
    for ax, group, idx, color, mean in groups:
        style.shade(ax, phases, last, annotate=ax is axes[0])
        if len(idx):
            ax.plot(step, trajectory.w[:, idx], color=color, alpha=0.35, lw=0.9)
            ax.plot([], [], color=color, alpha=0.5, lw=0.9, label=f"{len(idx)} sampled {group} examples")
            ax.plot(step, mean, color=color, lw=2.8, label=f"mean over all {group} examples")
        else:
            style.note(ax, f"no {group} examples in this run")
        if group == "noisy" and len(idx):
            ax.plot(step, stats["frac_noisy_zero"], color="0.15", lw=1.8, ls="--",
                    label="share of noisy examples at w = 0")
        ax.set_ylim(-0.04, 1.04)
        ax.set_ylabel(f"weight w of {group}\nexamples (in [0, 1])")
        ax.legend(loc="center right", framealpha=0.92)
        style.time_axis(ax, last, label=ax is axes[-1])
    fig.suptitle(f"Example weights during meta-reweighting ({int(trajectory.noisy.sum())} noisy of "
                 f"{trajectory.noisy.size} training labels)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles=style.phase_handles(phases), loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.955))

    table = pd.DataFrame({
        "step": step, "phase": style.phase_of_steps(phases, step),
        "mean_w_clean": stats["mean_w_clean"], "mean_w_noisy": stats["mean_w_noisy"],
        "frac_noisy_zero": stats["frac_noisy_zero"],
        **{f"w_clean_{i}": trajectory.w[:, i] for i in clean_idx},
        **{f"w_noisy_{i}": trajectory.w[:, i] for i in noisy_idx},
    })
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    run = results.run(1)
    return figure(run.trajectory, run.phases)
