"""Figure 5: the spectral view (claim C9): class-by-class mean kernel, and label energy along eigen-directions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from figures import style

NAME = "spectral"
NUMBER = 5
CAPTION = ("Spectral view (C9): the NTK is larger within a class than across classes (left), so the clean labels "
           "put most of their energy in the top C eigen-directions of K_XX while the label noise spreads over the "
           "whole spectrum (right): gradient descent fits the clean signal first and the noise late.")


@style.styled
def figure(K_XX: np.ndarray, y_true: np.ndarray, y_noisy: np.ndarray, num_classes: int,
           kernel_name: str = "NTK") -> tuple[plt.Figure, pd.DataFrame]:
    """Heatmap of the mean kernel value between true classes, and cumulative label energy against eigen-directions.

    Parameters
    ----------
    K_XX : (n, n) training kernel.
    y_true, y_noisy : (n,) true and observed training labels in ``[0, C)``.
    num_classes : C.

    Returns the figure and its data, in two panels (``panel`` column):
    ``class_mean_kernel`` rows with ``row_class, col_class, mean_kernel``;
    ``energy`` rows with ``k`` (number of top eigen-directions), ``eigenvalue``
    (the k-th), ``clean_energy_share`` (of ``Y_true``), ``noise_energy_share``
    (of ``Y_noisy - Y_true``) and ``uniform_share = k / n``.
    """
    # Imported here: the kernels package loads JAX and torch, which drawing the other figures never needs.
    from kernels.spectral import class_mean_kernel, eigh_kernel, energy_profile

    C = int(num_classes)
    n = K_XX.shape[0]
    means = class_mean_kernel(K_XX, y_true, y_true, C)
    eigenvalues, eigenvectors = eigh_kernel(K_XX)
    Y_true = np.eye(C)[y_true]
    noise = np.eye(C)[y_noisy] - Y_true
    clean_profile = energy_profile(eigenvectors, Y_true)
    noise_profile = energy_profile(eigenvectors, noise)
    k = np.arange(1, n + 1)

    fig, (ax_heat, ax_energy) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.35]})
    sns.heatmap(means, ax=ax_heat, annot=C <= 10, fmt=".2f", cmap="mako_r", square=True, linewidths=0.5,
                annot_kws={"fontsize": 11 if C <= 5 else 8},
                cbar_kws={"label": f"mean {kernel_name} value k(x, x')", "shrink": 0.85})
    ax_heat.set_xlabel("true class of x'")
    ax_heat.set_ylabel("true class of x")
    ax_heat.set_title(f"Mean {kernel_name} between classes (K_XX, n = {n})")

    ax = ax_energy
    ax.plot(k, clean_profile, color=style.CLEAN_COLOR, lw=2.4, label="clean labels Y_true")
    if np.isfinite(noise_profile).any():
        ax.plot(k, noise_profile, color=style.NOISY_COLOR, lw=2.4, label="label noise Y_noisy - Y_true")
    else:
        style.note(ax, "no label noise in this problem")
    ax.plot(k, k / n, color="0.45", lw=1.4, ls=":", label="energy spread evenly (k / n)")
    ax.axvline(C, color="0.3", lw=0.9, ls="--")
    clean_at_C = clean_profile[C - 1]
    noise_at_C = noise_profile[C - 1]
    text = f"top k = C = {C} directions:\nclean {clean_at_C:.0%}" + \
        (f", noise {noise_at_C:.0%}" if np.isfinite(noise_at_C) else "")
    ax.annotate(text, (C, 0.5), xytext=(8, 0), textcoords="offset points", fontsize=10.5, va="center",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.75"})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlim(1, n)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k, number of top eigen-directions of K_XX (log scale)")
    ax.set_ylabel("cumulative share of squared norm")
    ax.set_title("Label energy along the kernel's eigen-directions")
    ax.legend(loc="upper left", fontsize=10)
    fig.suptitle("Spectral view: why noise is fitted (and filtered) late (C9)")
    fig.tight_layout()

    heat = pd.DataFrame([{"panel": "class_mean_kernel", "row_class": a, "col_class": b, "mean_kernel": means[a, b]}
                         for a in range(C) for b in range(C)])
    energy = pd.DataFrame({"panel": "energy", "k": k, "eigenvalue": eigenvalues, "clean_energy_share": clean_profile,
                           "noise_energy_share": noise_profile, "uniform_share": k / n})
    return fig, pd.concat([heat, energy], ignore_index=True)


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    run = results.run(1)
    problem = run.problem
    kernel_name = run.config.get("kernel", {}).get("kind", "ntk").upper()
    return figure(run.kernel_train(), problem.y_true, problem.y_noisy, problem.num_classes, kernel_name)
