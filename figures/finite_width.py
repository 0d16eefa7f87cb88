"""Figure 7: finite-width networks against the linearized simulation (claim C8).

Reads what ``python -m phases.finite --out DIR`` writes: ``summary.json``
(:func:`per_width`), ``linearized.npz`` and ``finite_w<N>_s<seed>.npz``
(:class:`~dynamics.trajectory.Trajectory` files).
"""

from __future__ import annotations

import numbers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from phases.detect import detect_phases
from phases.plot import sample_examples

NAME = "finite_width"
NUMBER = 7
CAPTION = ("Finite against linearized (C8): the largest gap between the weights of a width-N network trained with "
           "exact bi-level meta-reweighting and those of the linearized simulation shrinks like N^(-1/2) (left, "
           "log-log, dashed line of slope -1/2); example weights of the narrowest and the widest network over the "
           "linearized ones (right).")

_METRICS = ("weight_gap", "output_gap", "T_align", "T_filter", "T_align_rel_gap", "T_filter_rel_gap",
            "final_test_accuracy", "final_frac_noisy_zero")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def per_width(summary: dict) -> pd.DataFrame:
    """One row per (width, seed) from ``summary.json`` of ``python -m phases.finite``.

    Reads ``summary["per_width"]``: a list of ``{"width": N, "runs": [{"seed": s, "weight_gap": ...,
    "output_gap": ..., "T_align": ..., "T_filter": ..., ...}, ...], ...}``. An entry without ``runs``
    may instead hold ``{"weight_gap": {"per_seed": [...]}, ...}`` or plain numbers.

    Returns a DataFrame with ``width``, ``seed`` and whichever of ``weight_gap, output_gap, T_align,
    T_filter, T_align_rel_gap, T_filter_rel_gap, final_test_accuracy, final_frac_noisy_zero`` are present.
    """
    entries = summary.get("per_width")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and "width" in e for e in entries):
        raise ValueError("summary.json has no 'per_width' list of {'width': ..., 'runs': [...]} entries")
    rows = []
    for entry in entries:
        width = int(entry["width"])
        if isinstance(entry.get("runs"), list) and entry["runs"]:
            for index, run in enumerate(entry["runs"]):
                rows.append({"width": width, "seed": run.get("seed", index)}
                            | {key: run[key] for key in _METRICS if _is_number(run.get(key))})
            continue
        per_seed = {key: entry[key]["per_seed"] for key in _METRICS
                    if isinstance(entry.get(key), dict) and isinstance(entry[key].get("per_seed"), list)}
        if per_seed:
            count = max(len(values) for values in per_seed.values())
            for seed in range(count):
                rows.append({"width": width, "seed": seed}
                            | {key: values[seed] for key, values in per_seed.items() if len(values) == count})
        else:
            rows.append({"width": width, "seed": 0}
                        | {key: entry[key] for key in _METRICS if _is_number(entry.get(key))})
    table = pd.DataFrame(rows)
    if "weight_gap" not in table:
        raise ValueError("summary.json's per-width entries hold no weight_gap")
    return table.apply(pd.to_numeric, errors="coerce")


def _fit_slope(widths: np.ndarray, gaps: np.ndarray) -> float:
    keep = (widths > 0) & (gaps > 0) & np.isfinite(gaps)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(widths[keep]), np.log(gaps[keep]), 1)[0])


def _two_widths(trajectories: dict) -> list[tuple[int, object]]:
    """The smallest and the largest width among ``{(width, seed): Trajectory}``, each at its smallest seed."""
    widths = sorted({width for width, _ in trajectories})
    chosen = [widths[0], widths[-1]] if len(widths) >= 2 else widths
    return [(width, trajectories[(width, min(seed for w, seed in trajectories if w == width))]) for width in chosen]


@style.styled
def figure(summary: dict, linearized=None, finite: dict | None = None, *, per_group: int = 3,
           seed: int = 0) -> tuple[plt.Figure, pd.DataFrame]:
    """Gap against width (log-log, with the -1/2 line), and weights of two widths beside the linearized run.

    Parameters
    ----------
    summary : ``summary.json`` of ``python -m phases.finite`` (read by :func:`per_width`); its ``slope``
        (fitted over every (width, seed) point) is reported, else the slope is fitted here.
    linearized : the linearized :class:`~dynamics.trajectory.Trajectory` (``linearized.npz``), optional.
    finite : ``{(width, seed): Trajectory}`` of finite networks (``finite_w<N>_s<seed>.npz``), optional;
        the smallest and the largest width are drawn, each at its smallest seed.
    per_group : clean and noisy examples drawn (with ``seed``) for the trajectory panels.

    Returns the figure and its data (``panel`` column): ``gap`` rows with
    ``width, seed, weight_gap, output_gap, T_align, T_filter, ...``;
    ``trajectory`` rows with ``run`` (``linearized`` or the width), ``step``,
    ``example``, ``noisy`` and ``w``.
    """
    finite = finite or {}
    gaps = per_width(summary)
    chosen = _two_widths(finite) if linearized is not None else []
    fig = plt.figure(figsize=(13, 7.6))
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.15], hspace=0.12, wspace=0.25)
    ax_gap = fig.add_subplot(grid[:, 0])
    series = [("weight_gap", "weights: max over t of\n||w_t^N - w_t^lin||_inf", "#2f7fc1", "o"),
              ("output_gap", "test outputs: relative\nerror at the end", "#8c5fb8", "s")]
    for key, label, color, marker in series:
        if key not in gaps or gaps[key].isna().all():
            continue
        data = gaps[["width", key]].dropna()
        ax_gap.scatter(data["width"], data[key], color=color, alpha=0.35, s=22, lw=0)
        mean = data.groupby("width")[key].mean()
        ax_gap.plot(mean.index, mean, color=color, marker=marker, lw=2.2, label=label)
    mean_gap = gaps.groupby("width")["weight_gap"].mean()
    widths = mean_gap.index.to_numpy(dtype=float)
    slope = summary.get("slope")
    slope = float(slope) if _is_number(slope) else _fit_slope(gaps["width"].to_numpy(float),
                                                              gaps["weight_gap"].to_numpy(float))
    if len(widths):
        span = np.array([widths.min(), widths.max()])
        ax_gap.plot(span, float(mean_gap.iloc[0]) * (span / widths[0]) ** -0.5, color="0.25", ls="--", lw=1.6,
                    label="slope -1/2 (reference)")
    ax_gap.set_xscale("log", base=2)
    ax_gap.set_yscale("log")
    ax_gap.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    style.plain_log(ax_gap.yaxis, subs=(1, 2, 5))
    ax_gap.set_xlabel("hidden width N (units per layer, log scale)")
    ax_gap.set_ylabel("gap to the linearized run (log scale)")
    stderr = summary.get("slope_stderr")
    slope_text = f"fitted slope {slope:.2f}" + (f" +- {stderr:.2f}" if _is_number(stderr) else "")
    ax_gap.set_title(f"Gap against width: {slope_text}" if np.isfinite(slope) else "Gap against width")
    ax_gap.legend(loc="lower left")

    rows = [gaps.assign(panel="gap")]
    if linearized is None or not chosen:
        ax = fig.add_subplot(grid[:, 1])
        style.empty_panel(ax, "no saved trajectories\n(expected linearized.npz and finite_w<N>_s<seed>.npz)")
    else:
        phases = detect_phases(linearized)
        last = int(linearized.step[-1])
        clean_idx, noisy_idx = sample_examples(linearized.noisy, per_group, np.random.default_rng(seed))
        examples = [(i, False) for i in np.sort(clean_idx)] + [(i, True) for i in np.sort(noisy_idx)]
        axes = []
        for row, (width, trajectory) in enumerate(chosen):
            ax = fig.add_subplot(grid[row, 1], sharex=axes[0] if axes else None)
            axes.append(ax)
            style.shade(ax, phases, last, annotate=row == 0)
            for index, noisy in examples:
                color = style.NOISY_COLOR if noisy else style.CLEAN_COLOR
                ax.plot(linearized.step, linearized.w[:, index], color=color, lw=4.5, alpha=0.3, solid_capstyle="butt")
                ax.plot(trajectory.step, trajectory.w[:, index], color=color, lw=1.6, ls="--")
            ax.plot([], [], color="0.3", lw=4.5, alpha=0.35, label="linearized")
            ax.plot([], [], color="0.3", lw=1.6, ls="--", label=f"width N = {width}")
            ax.set_ylim(-0.04, 1.04)
            ax.set_ylabel("weight w")
            ax.legend(loc="center right", fontsize=10.5)
            style.time_axis(ax, last, label=row == len(chosen) - 1)
            if row < len(chosen) - 1:
                ax.tick_params(labelbottom=False)
        axes[0].set_title(f"Weights of {per_group} clean (blue) and {per_group} noisy (red) examples", pad=22)
        for label, trajectory in [("linearized", linearized)] + [(str(w), t) for w, t in chosen]:
            for index, noisy in examples:
                rows.append(pd.DataFrame({"panel": "trajectory", "run": label, "step": trajectory.step,
                                          "example": index, "noisy": noisy, "w": trajectory.w[:, index]}))
    fig.suptitle("Finite-width networks follow the linearized dynamics (C8)")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.87)
    return fig, pd.concat(rows, ignore_index=True)


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    inputs = results.finite()
    return figure(inputs["summary"], inputs["linearized"], inputs["finite"])
