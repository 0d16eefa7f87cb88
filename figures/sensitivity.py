"""Figure 4: perturbation sensitivity of the weight steps (claim C7) over time, phases shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.detect import Phases

NAME = "sensitivity"
NUMBER = 4
CAPTION = ("Perturbation sensitivity (C7): the share of examples whose weight step changes sign when the outputs are "
           "perturbed by 1% of ||Y_meta||_F is near 0 in alignment and grows through filtering into post-filtering; "
           "the horizontal bars are the phase means.")


SMOOTHING = 0.1  # the moving mean at step t covers steps within t * (1 +- SMOOTHING), at least t +- 1


def _smooth(step: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Moving mean whose window grows with the step (even on the symlog axis), ignoring NaN."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    half = np.maximum(1.0, SMOOTHING * step)
    low = np.searchsorted(step, step - half, side="left")
    high = np.searchsorted(step, step + half, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[high] > counts[low], (sums[high] - sums[low]) / (counts[high] - counts[low]), np.nan)


@style.styled
def figure(trajectory, phases: Phases) -> tuple[plt.Figure, pd.DataFrame]:
    """The C7 flip rate per recorded step, its moving mean (steps ``t (1 +- 0.1)``) and its mean per phase.

    Returns the figure and its data: one row per recorded step with ``step,
    phase, flip_rate, flip_rate_smoothed, phase_mean_flip_rate``.
    """
    step, rate = trajectory.step, np.asarray(trajectory.flip_rate, dtype=float)
    last = int(step[-1])
    labels = style.phase_of_steps(phases, step)
    smoothed = _smooth(step, rate)
    phase_mean = np.full(len(step), np.nan)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    style.shade(ax, phases, last, annotate=True)
    config = trajectory.config
    if not np.isfinite(rate).any():
        style.empty_panel(ax, "the C7 flip rate was not measured in this run (perturb_draws = 0)")
    else:
        ax.plot(step, rate, color="#7b5ea7", lw=0.7, alpha=0.5, label="per recorded step")
        ax.plot(step, smoothed, color="#3b1f6e", lw=2.2, label=f"moving mean (steps t +- {SMOOTHING:.0%})")
        for name, mask in phases.masks(step).items():
            if not mask.any() or not np.isfinite(rate[mask]).any():
                continue
            mean = float(np.nanmean(rate[mask]))
            phase_mean[mask] = mean
            start, end = step[mask][0], step[mask][-1]
            ax.hlines(mean, start, end, color=style.PHASE_LINE_COLORS[name], lw=3.2, zorder=4)
            ax.annotate(f"mean {mean:.3f}", (np.sqrt(max(start, 1) * max(end, 1)) if end > 20 else (start + end) / 2,
                                             mean), xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=10.5, color=style.PHASE_LINE_COLORS[name], weight="bold", zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.set_ylim(bottom=-0.01)
        ax.legend(handles=ax.get_legend_handles_labels()[0] + style.phase_handles(phases), loc="upper left",
                  fontsize=10)
        ax.set_xlim(0, last)
        style.time_axis(ax, last)
    ax.set_ylabel("share of examples whose\nweight step flips sign")
    eps, draws = config.get("perturb_eps"), config.get("perturb_draws")
    per_step = f"{draws} draw{'' if draws == 1 else 's'} per step"
    ax.set_title(f"Perturbation sensitivity of the weight steps (C7; eps = {eps:g}, {per_step})"
                 if eps is not None else "Perturbation sensitivity of the weight steps (C7)", pad=20)
    fig.tight_layout()
    table = pd.DataFrame({"step": step, "phase": labels, "flip_rate": rate, "flip_rate_smoothed": smoothed,
                          "phase_mean_flip_rate": phase_mean})
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    run = results.run(1)
    return figure(run.trajectory, run.phases)
