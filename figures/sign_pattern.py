"""Figure 12: the kernel's sign pattern between and within classes (docs/theory.md section 9), problem by problem."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from figures import style

NAME = "sign_pattern"
NUMBER = 12
CAPTION = ("The kernel's sign pattern (the separation assumption, docs/theory.md section 9): share of kernel entries "
           "> 0 between training and clean examples (K_VX, left) and within the training set (K_XX, right), over "
           "pairs of the same or of different true classes, and with the sign the observed labels ask for "
           "(label-signed; binary: y_i y_j k > 0), on clean and on noisy training rows, and the share of rows whose "
           "mean kernel value is largest toward their own true class, for the raw kernel and the kernel centred at "
           "the class-balanced clean mean. The ReLU NTK of raw inputs is positive everywhere yet separates the "
           "classes by their means; centred, it separates them in sign for most pairs, and noisy rows get the sign "
           "their observed label asks for far less often than clean rows.")

#: The heatmap columns: (statistic, row group), under a header per statistic.
HEADERS = {"same_class": "same class", "different_class": "different class", "label_signed": "label-signed",
           "class_mean_separates": "rows: own class\nmean largest"}
COLUMNS = tuple((statistic, group) for statistic in HEADERS for group in ("clean", "noisy"))
BLOCK_TITLES = {"K_VX": "K_VX: training x clean examples", "K_XX": "K_XX: training pairs (i != k)"}
TABLE_COLUMNS = ("problem", "binary", "kernel", "block", "group", "statistic", "share", "train_examples",
                 "clean_examples", "subsample_seed")


def _table(patterns: list[tuple[str, dict]]) -> pd.DataFrame:
    rows = []
    for label, pattern in patterns:
        examples = pattern["examples"]
        for kernel in ("raw", "centred"):
            for block in ("K_VX", "K_XX"):
                for group, stats in pattern[kernel][block].items():
                    for statistic, share in stats.items():
                        rows.append({"problem": label, "binary": bool(pattern.get("binary", False)), "kernel": kernel,
                                     "block": block, "group": group, "statistic": statistic,
                                     "share": np.nan if share is None else share,
                                     "train_examples": examples["train"], "clean_examples": examples["clean"],
                                     "subsample_seed": examples["subsample_seed"]})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


@style.styled
def figure(patterns: list[tuple[str, dict]]) -> tuple[plt.Figure, pd.DataFrame]:
    """Two annotated heatmaps (``K_VX``, ``K_XX``): one row per problem and kernel (raw, centred), one column per
    statistic and row group (:data:`COLUMNS`), the share of positive (or label-signed) entries, or of rows whose
    own class mean is largest, from 0 to 1.

    Parameters
    ----------
    patterns : ``(label, sign_pattern)`` per problem, ``sign_pattern`` as ``summary.json`` holds it
        (:func:`phases.sign_pattern.problem_sign_pattern`).

    Returns the figure and its data, one row per problem, kernel, block, group (``all``, ``clean``, ``noisy``) and
    statistic (:data:`TABLE_COLUMNS`; ``share`` is NaN where a group has no entry).
    """
    table = _table(patterns)
    labels = [f"{label}{' (+-1)' if pattern.get('binary') else ''}, {kernel}" for label, pattern in patterns
              for kernel in ("raw", "centred")]
    fig, axes = plt.subplots(1, 2, figsize=(19, 2.1 + 0.52 * len(labels)), sharey=True)
    for ax, block in zip(axes, ("K_VX", "K_XX")):
        values = np.array([[np.nan if pattern[kernel][block][group][statistic] is None
                            else pattern[kernel][block][group][statistic] for statistic, group in COLUMNS]
                           for _, pattern in patterns for kernel in ("raw", "centred")])
        sns.heatmap(values, ax=ax, vmin=0.0, vmax=1.0, cmap="vlag", annot=True, fmt=".2f",
                    annot_kws={"fontsize": 10}, linewidths=0.6, linecolor="white", cbar=ax is axes[-1],
                    cbar_kws={"label": "share of entries > 0 (last pair: of rows)", "shrink": 0.9},
                    xticklabels=[f"{group}\nrows" for _, group in COLUMNS], yticklabels=labels)
        for boundary in range(2, len(labels), 2):  # separate the problems
            ax.axhline(boundary, color="0.25", lw=1.4)
        for boundary in range(2, len(COLUMNS), 2):  # separate the statistics
            ax.axvline(boundary, color="white", lw=4)
        for index, statistic in enumerate(HEADERS):
            ax.text(2 * index + 1, -0.12, HEADERS[statistic], ha="center", va="bottom", fontsize=10.5,
                    fontweight="bold", color="0.2")
        ax.tick_params(axis="x", labelsize=9.5, rotation=0)
        ax.tick_params(axis="y", labelsize=10, rotation=0)
        ax.set_title(BLOCK_TITLES[block], pad=38)
    examples = "; ".join(
        f"{label}: {pattern['examples']['train']} x {pattern['examples']['clean']}" +
        ("" if pattern["examples"]["subsample_seed"] is None else
         f" of {pattern['examples']['of_train']} x {pattern['examples']['of_clean']}, seed "
         f"{pattern['examples']['subsample_seed']}") for label, pattern in patterns)
    fig.suptitle("The kernel's sign pattern between and within classes (separation assumption)")
    fig.text(0.5, -0.01, f"training x clean examples measured: {examples}", ha="center", va="top", fontsize=9.5,
             color="0.3", wrap=True)
    fig.tight_layout()
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    return figure(results.sign_patterns())
