"""Figure 11: every method's weights epoch by epoch on one label set, clean against noisy examples.

Reads one output of ``python -m phases.compare`` (``results.json`` and
``weights.npz``, whose ``METHOD/seedS/epochs`` are the weights after every
epoch and ``noisy/seedS`` the seed's noise mask; see
:meth:`figures.results.Results.compare_weights` for which comparison is drawn
when a results folder holds several).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from figures import style
from figures.methods import METHOD_NAMES

NAME = "weight_trajectories"
NUMBER = 11
CAPTION = ("Weight trajectories of every method on one label set: per panel, the mean weight of clean and of noisy "
           "training examples after every epoch (solid) and the share of each group at w = 0 (dashed), mean over "
           "seeds with a +-1 sd band; methods whose weights never change (such as ERM, early stopping, "
           "the trusted-classifier detectors and the oracle) get flat lines and a \"(constant)\" title.")

COLUMNS = ("method", "label", "epoch", "seeds", "constant", "mean_w_clean", "mean_w_clean_sd", "mean_w_noisy",
           "mean_w_noisy_sd", "frac_clean_zero", "frac_clean_zero_sd", "frac_noisy_zero", "frac_noisy_zero_sd")
_SERIES = ("mean_w_clean", "mean_w_noisy", "frac_clean_zero", "frac_noisy_zero")
NCOLS = 5


def _per_seed(weights: np.ndarray, noisy: np.ndarray) -> dict[str, np.ndarray]:
    """(epochs,) series of one run: the mean weight of each group and the share of each group at w = 0."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != noisy.shape[0]:
        raise ValueError(f"per-epoch weights must be (epochs, {noisy.shape[0]}), got {weights.shape}")
    clean, dirty = weights[:, ~noisy], weights[:, noisy]

    def mean(block):
        return block.mean(axis=1) if block.shape[1] else np.full(len(weights), np.nan)

    return {"mean_w_clean": mean(clean), "mean_w_noisy": mean(dirty),
            "frac_clean_zero": mean(clean <= 0), "frac_noisy_zero": mean(dirty <= 0)}


def trajectory_table(epoch_weights: Mapping[str, Mapping[int, np.ndarray]],
                     noisy: Mapping[int, np.ndarray]) -> pd.DataFrame:
    """One row per (method, epoch): seed mean and standard deviation (ddof=1; NaN for one seed) of each series.

    Seeds without a noise mask are left out; ``constant`` is true when no
    weight of the method changes between epochs on any seed.
    """
    rows = []
    for method, per_seed in epoch_weights.items():
        seeds = [seed for seed in per_seed if seed in noisy]
        if not seeds:
            continue
        epochs = {np.asarray(per_seed[seed]).shape[0] for seed in seeds}
        if len(epochs) != 1:
            raise ValueError(f"{method}: the seeds ran different numbers of epochs {sorted(epochs)}")
        series = [_per_seed(per_seed[seed], np.asarray(noisy[seed], dtype=bool)) for seed in seeds]
        constant = all(np.ptp(np.asarray(per_seed[seed]), axis=0).max(initial=0.0) == 0 for seed in seeds)
        for index in range(epochs.pop()):
            row = {"method": method, "label": METHOD_NAMES.get(method, method), "epoch": index + 1,
                   "seeds": len(seeds), "constant": constant}
            for key in _SERIES:
                values = np.array([s[key][index] for s in series])
                row[key] = float(values.mean())
                row[key + "_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _share(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}%"


@style.styled
def figure(epoch_weights: Mapping[str, Mapping[int, np.ndarray]], noisy: Mapping[int, np.ndarray], *,
           title: str = "", warmup_epochs: int | None = None) -> tuple[plt.Figure, pd.DataFrame]:
    """A grid of one panel per method: clean and noisy mean weight and share at w = 0 against the epoch.

    Parameters
    ----------
    epoch_weights : method -> seed -> ``(epochs, n)`` weights after every epoch (panels in this order).
    noisy : seed -> ``(n,)`` bool noise mask of that seed's problem.
    title : the data set / label set, for the figure title.
    warmup_epochs : the protocol's warm-up epochs, shaded in every panel (None or 0: nothing shaded).

    Returns the figure and :func:`trajectory_table` (columns :data:`COLUMNS`).
    """
    table = trajectory_table(epoch_weights, noisy)
    if table.empty:
        raise ValueError("no per-epoch weights with a noise mask to plot")
    methods = list(dict.fromkeys(table["method"]))
    ncols = min(NCOLS, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, 3.1 * nrows + 1.4), sharex=True,
                             sharey=True, squeeze=False)
    last_epoch = int(table["epoch"].max())
    # Noisy drawn first and wider, so that a clean line on top of it (equal weights) leaves both visible.
    lines = {"mean_w_noisy": (style.NOISY_COLOR, "-", 3.0), "mean_w_clean": (style.CLEAN_COLOR, "-", 1.7),
             "frac_noisy_zero": (style.NOISY_COLOR, "--", 2.2), "frac_clean_zero": (style.CLEAN_COLOR, "--", 1.3)}
    for index, method in enumerate(methods):
        ax = axes.flat[index]
        data = table[table["method"] == method]
        if warmup_epochs:
            ax.axvspan(0.5, warmup_epochs + 0.5, color="0.5", alpha=0.1, lw=0, zorder=0)
        for key, (color, ls, lw) in lines.items():
            mean, sd = data[key].to_numpy(), data[key + "_sd"].fillna(0.0).to_numpy()
            ax.plot(data["epoch"], mean, color=color, ls=ls, lw=lw, marker="o" if last_epoch <= 3 else None, ms=4)
            ax.fill_between(data["epoch"], mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
        end = data.iloc[-1]
        ax.set_title(data["label"].iloc[0] + (" (constant)" if end["constant"] else ""), fontsize=11.5, pad=29)
        ax.text(0.5, 1.02, f"epoch {int(end['epoch'])}: mean w clean {end['mean_w_clean']:.2f}, noisy "
                           f"{end['mean_w_noisy']:.2f}\nat w = 0: noisy {_share(end['frac_noisy_zero'])}, clean "
                           f"{_share(end['frac_clean_zero'])}",
                transform=ax.transAxes, ha="center", va="bottom", fontsize=8.8, color="0.3", linespacing=1.15)
        ax.set_ylim(-0.04, 1.04)
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5, integer=True))
        if index % ncols == 0:
            ax.set_ylabel("weight / share")
        if index >= len(methods) - ncols:
            ax.set_xlabel("epoch")
            ax.tick_params(labelbottom=True)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=style.CLEAN_COLOR, lw=2.4, label="mean weight, clean examples"),
               plt.Line2D([], [], color=style.NOISY_COLOR, lw=2.4, label="mean weight, noisy examples"),
               plt.Line2D([], [], color=style.CLEAN_COLOR, lw=1.7, ls="--", label="share of clean at w = 0"),
               plt.Line2D([], [], color=style.NOISY_COLOR, lw=1.7, ls="--", label="share of noisy at w = 0")]
    if warmup_epochs:
        handles.append(Patch(color="0.5", alpha=0.2, label=f"warm-up ({warmup_epochs} epochs)"))
    seeds = int(table["seeds"].max())
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Weights after every epoch, per method" + (f": {title}" if title else "")
                 + f"\n(mean over {seeds} seed{'s' if seeds > 1 else ''}" + (", band +-1 sd)" if seeds > 1 else ")"),
                 y=0.995)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 1.15 / fig.get_figheight(),
                        bottom=0.95 / fig.get_figheight(), hspace=0.62, wspace=0.1)
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    inputs = results.compare_weights()
    return figure(inputs["epoch_weights"], inputs["noisy"], title=inputs["title"],
                  warmup_epochs=inputs["warmup_epochs"])
