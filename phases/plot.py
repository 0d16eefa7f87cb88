"""The one-run overview figure ``trajectory.png``, and the phase shading every time axis uses."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from phases.detect import Phases

PHASE_COLORS = {"alignment": "#fde0c5", "filtering": "#d6e9f8", "post-filtering": "#e3f1dc"}
CLEAN_COLOR, NOISY_COLOR = "#1f77b4", "#d62728"


def plain_ticks() -> FuncFormatter:
    """Log-axis tick labels as plain numbers (0.001, 10, 1000), not mathtext powers of ten: parsing those took
    0.15 s of the default run's figure. A new formatter per axis (an axis binds the formatter it is given)."""
    return FuncFormatter(lambda value, _: f"{value:g}")


def shade_phases(ax, phases: Phases, last_step: int, label: bool = True) -> None:
    """Shade each non-empty phase over the x axis (steps) of ``ax``."""
    for phase in phases.phases:
        if phase.empty:
            continue
        ax.axvspan(max(phase.start, 0), min(phase.end, last_step), color=PHASE_COLORS[phase.name], zorder=0,
                   label=phase.name if label else None)


def sample_examples(noisy: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of up to ``count`` clean and ``count`` noisy examples, drawn without replacement."""
    clean_idx, noisy_idx = np.flatnonzero(~noisy), np.flatnonzero(noisy)
    return (rng.choice(clean_idx, min(count, len(clean_idx)), replace=False),
            rng.choice(noisy_idx, min(count, len(noisy_idx)), replace=False))


def plot_trajectory(trajectory, phases: Phases, title: str = "") -> Figure:
    """Weights, the coupling mechanism and the C7 flip rate against steps, phases shaded.

    A bare :class:`~matplotlib.figure.Figure`, outside pyplot's registry (nothing to close; safe to draw on a
    thread of its own, as :func:`phases.experiments.draw_beside` does)."""
    step = trajectory.step
    last = int(step[-1])
    stats = trajectory.weight_stats()
    symlog_x = last > 200  # alignment lasts a few steps; a linear axis would hide it
    fig = Figure(figsize=(9, 9.5))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 1, 0.7]})

    ax = axes[0]
    shade_phases(ax, phases, last)
    clean_idx, noisy_idx = sample_examples(trajectory.noisy, 25, np.random.default_rng(0))
    ax.plot(step, trajectory.w[:, clean_idx], color=CLEAN_COLOR, alpha=0.15, lw=0.7)
    ax.plot(step, trajectory.w[:, noisy_idx], color=NOISY_COLOR, alpha=0.15, lw=0.7)
    ax.plot(step, stats["mean_w_clean"], color=CLEAN_COLOR, lw=2.2, label="clean examples (mean)")
    if trajectory.noisy.any():
        ax.plot(step, stats["mean_w_noisy"], color=NOISY_COLOR, lw=2.2, label="noisy examples (mean)")
        ax.plot(step, stats["frac_noisy_zero"], color=NOISY_COLOR, lw=1.5, ls="--", label="noisy share at w = 0")
    ax.set_ylabel("weight w")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(loc="center right", fontsize=8, ncol=2, framealpha=0.9)
    ax.set_title(title or "meta-reweighting trajectory (thin lines: 25 sampled examples per group)", fontsize=10)

    ax = axes[1]
    shade_phases(ax, phases, last, label=False)
    ax.plot(step, trajectory.clean_loss, color="black", lw=1.8, label="clean-subset loss L_meta")
    ax.plot(step, trajectory.coupling_norm, color="#9467bd", lw=1.5, label="coupling ||R_meta_hat||_F")
    ax.plot(step, trajectory.max_velocity, color="#ff7f0e", lw=1.5, label="largest |weight velocity|")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain_ticks())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("value (log scale)")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)

    ax = axes[2]
    shade_phases(ax, phases, last, label=False)
    ax.plot(step, trajectory.flip_rate, color="#2ca02c", lw=1.2)
    ax.set_ylabel("C7 flip rate")
    ax.set_xlabel("step" + (" (symlog scale)" if symlog_x else ""))
    for boundary, name in ((phases.T_align, "T_align"), (phases.T_filter, "T_filter")):
        if boundary is not None:
            for a in axes:
                a.axvline(boundary, color="0.3", lw=0.8, ls=":")
            axes[-1].annotate(f" {name}={boundary}", (boundary, 0.97), fontsize=8, ha="left", va="top",
                              xycoords=("data", "axes fraction"))
    if symlog_x:
        axes[-1].set_xscale("symlog", linthresh=20)
        axes[-1].xaxis.set_major_formatter(plain_ticks())
    axes[-1].set_xlim(0, last)
    # Fixed margins (the layout is the same on every run): tight_layout measured every label, 0.5 s per figure.
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.055, top=0.955, hspace=0.07)
    return fig


def plot_finite_width(summary: dict, linear, examples: dict, linear_phases: Phases) -> Figure:
    """``finite.png`` of the C8 cross-check: gaps against width (log-log, with a -1/2 reference), and the weights
    of six examples over time for the widths in ``examples`` (width -> finite ``Trajectory``), beside the
    linearized run ``linear``."""
    rows = summary["per_width"]
    widths = np.array([row["width"] for row in rows], dtype=np.float64)
    fig = Figure(figsize=(5.2 * (1 + len(examples)), 4.4))
    axes = fig.subplots(1, 1 + len(examples))
    ax = axes[0]
    for key, color, label in (("weight_gap", "#1f77b4", "weight gap max_t |w^N - w^lin|_inf"),
                              ("output_gap", "#ff7f0e", "relative test-output gap (final)")):
        per_seed = np.array([row[key]["per_seed"] for row in rows])
        ax.plot(np.repeat(widths, per_seed.shape[1]), per_seed.ravel(), "o", color=color, alpha=0.35, ms=4)
        ax.plot(widths, per_seed.mean(axis=1), "-", color=color, lw=2, label=label)
    anchor = np.mean(rows[0]["weight_gap"]["per_seed"])
    ax.plot(widths, anchor * (widths / widths[0]) ** -0.5, "k--", lw=1, label="reference slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden-layer width N")
    ax.set_ylabel("gap to the linearized model")
    ax.set_title(f"fitted weight-gap slope {summary['slope']:.3f} +/- {summary['slope_stderr']:.3f}", fontsize=10)
    ax.legend(fontsize=8)

    rng = np.random.default_rng(0)
    clean, noisy = np.flatnonzero(~linear.noisy), np.flatnonzero(linear.noisy)
    chosen = [(rng.choice(clean, min(3, len(clean)), replace=False), "#1f77b4"),
              (rng.choice(noisy, min(3, len(noisy)), replace=False), "#d62728")]
    for ax, (width, finite) in zip(axes[1:], examples.items()):
        for indices, color in chosen:
            ax.plot(linear.step, linear.w[:, indices], "-", color=color, lw=1.4)
            ax.plot(finite.step, finite.w[:, indices], "--", color=color, lw=1.4)
        for boundary, name in ((linear_phases.T_align, "T_align"), (linear_phases.T_filter, "T_filter")):
            if boundary is not None:
                ax.axvline(boundary, color="0.4", lw=0.8, ls=":")
                ax.annotate(f" {name}", (boundary, 0.98), fontsize=8, va="top", xycoords=("data", "axes fraction"))
        ax.plot([], [], "k-", label="linearized (analytic NTK)")
        ax.plot([], [], "k--", label=f"finite, N={width}, seed {finite.config['seed']}")
        ax.set_xlabel("step")
        ax.set_ylabel("weight w (blue: clean, red: noisy examples)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"weights of 6 examples, width {width}", fontsize=10)
        ax.legend(fontsize=8, loc="center right")
    fig.suptitle(summary["title"], fontsize=10)
    fig.tight_layout()
    return fig
