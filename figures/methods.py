"""Figure 8: the surrogate, meta-reweighting and the baselines against the noise rate, and CIFAR-10N.

Reads the ``results.json`` files of ``python -m phases.compare`` (one per
data set and noise rate, or per CIFAR-10N label set; :func:`records_from_json`).
"""

from __future__ import annotations

import numbers
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from figures import style

NAME = "methods"
NUMBER = 8
CAPTION = ("Methods compared: test accuracy and clean-detection F1 of {w > 0} against the noise rate for the "
           "surrogate reweighter, exact meta-reweighting and the baselines on the Gaussian mixture and on digits "
           "(mean and +-1 sd over seeds), and the same two scores on CIFAR-10N's human label sets (bars).")

COLUMNS = ("dataset", "label_set", "noise", "realised_noise", "method", "seed", "test_accuracy", "f1", "precision",
           "recall", "auc", "source")
_RUN_METRICS = ("test_accuracy", "f1", "precision", "recall", "auc")
#: Drawing order and legend names; methods not listed follow in alphabetical order under their own names.
METHOD_NAMES = {
    "surrogate": "surrogate", "meta": "meta-reweighting (exact)", "l2rw": "L2RW (reset)",
    "small-loss": "small-loss", "coteaching": "Co-teaching", "fine": "FINE", "trusted-lr": "trusted classifier (LR)",
    "cleanlab": "cleanlab", "erm-clean": "ERM + the clean training", "erm": "ERM (w = 1)",
    "oracle": "oracle (true clean mask)",
}
#: The methods a fresh regeneration compares (the surrogate's ablations and the other references are
#: python -m phases.compare's, not this figure's); eight colours and two greys.
SHOWN = ("surrogate", "meta", "l2rw", "small-loss", "coteaching", "fine", "trusted-lr", "erm-clean", "erm", "oracle")
_REFERENCE = ("erm", "oracle")  # drawn dashed: the bounds every method sits between


def records_from_json(payload, source: str = "") -> list[dict]:
    """One record per (method, seed) run of a ``results.json`` of ``python -m phases.compare``.

    Reads the ``phases.comparison/2`` schema (and ``/1``, whose fields it shares): ``data`` (``gmm``, ``digits``,
    ``cifar10n-<label set>``), ``setup.problem.noise_rate`` (synthetic noise)
    or ``setup.problem.label_set`` (CIFAR-10N), and ``runs``: a list of
    ``{"method", "seed", "test_accuracy", "f1", "precision", "recall", "auc",
    "realised_noise_rate", ...}``. Anything else yields no record.

    Returns records with the keys :data:`COLUMNS` (``dataset`` is ``cifar10n``
    for every CIFAR-10N label set, which goes to ``label_set``).
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
        return []
    setup = payload.get("setup") if isinstance(payload.get("setup"), dict) else {}
    problem = setup.get("problem") if isinstance(setup.get("problem"), dict) else {}
    data = str(payload.get("data") or setup.get("data") or os.path.basename(os.path.dirname(source)))
    cifar = data.startswith("cifar10n")
    label_set = (problem.get("label_set") or data.removeprefix("cifar10n").lstrip("-") or "labels") if cifar else None

    def number(value):
        return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else np.nan

    records = []
    for run in payload["runs"]:
        if not isinstance(run, dict) or "method" not in run:
            continue
        records.append({
            "dataset": "cifar10n" if cifar else data, "label_set": label_set,
            "noise": np.nan if cifar else number(problem.get("noise_rate")),
            "realised_noise": number(run.get("realised_noise_rate")),
            "method": str(run["method"]), "seed": run.get("seed"),
            **{key: number(run.get(key)) for key in _RUN_METRICS}, "source": source,
        })
    return records


def _method_order(methods) -> list[str]:
    return [m for m in METHOD_NAMES if m in methods] + sorted(m for m in methods if m not in METHOD_NAMES)


def _colors(order: list[str]) -> dict:
    palette = [color for index, color in enumerate(sns.color_palette("tab10")) if index != 7]  # 7 is grey
    colors, index = {}, 0
    for method in order:
        if method == "erm":
            colors[method] = "0.15"
        elif method == "oracle":
            colors[method] = "0.55"
        else:
            colors[method] = palette[index % len(palette)]
            index += 1
    return colors


@style.styled
def figure(records: list[dict]) -> tuple[plt.Figure, pd.DataFrame]:
    """Accuracy and F1 against the noise rate per synthetic data set, CIFAR-10N label sets as bars.

    Lines are means over seeds with +-1 standard deviation bands; bars are
    means over seeds with +-1 standard deviation whiskers. Without CIFAR-10N
    records the bar column says which command produces them.

    Returns the figure and its data: the records, one row per (data set,
    noise rate or label set, method, seed), with the columns :data:`COLUMNS`.
    """
    table = pd.DataFrame(records)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    table = table[list(COLUMNS)]
    if table.empty:
        raise ValueError("no method records to plot")
    order = _method_order(set(table["method"]))
    colors = _colors(order)
    curves = [d for d in ("gmm", "digits") if d in set(table["dataset"])]
    curves += sorted(set(table["dataset"]) - set(curves) - {"cifar10n"})
    cifar = table[table["dataset"] == "cifar10n"]
    columns = len(curves) + 1
    fig = plt.figure(figsize=(4.6 * columns + 0.8, 8.8))
    grid = fig.add_gridspec(2, columns, hspace=0.1, wspace=0.28)
    metrics = (("test_accuracy", "test accuracy"), ("f1", "clean-detection F1 of {w > 0}"))
    axes = {}
    for column, dataset in enumerate(curves):
        data = table[table["dataset"] == dataset]
        for row, (metric, label) in enumerate(metrics):
            ax = fig.add_subplot(grid[row, column], sharex=axes.get((0, column)))
            axes[(row, column)] = ax
            for method in order:
                values = data.loc[data["method"] == method, ["noise", metric]].dropna()
                if values.empty:
                    continue
                stats = values.groupby("noise")[metric].agg(["mean", "std"]).fillna({"std": 0.0})
                reference = method in _REFERENCE
                ax.plot(stats.index, stats["mean"], color=colors[method], lw=1.7 if reference else 2.2,
                        ls="--" if reference else "-", marker="o", ms=4.5)
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colors[method], alpha=0.13, lw=0)
            if column == 0:
                ax.set_ylabel(label + " (fraction)")
            if row == 0:
                title = {"gmm": "Gaussian mixture", "digits": "digits (8x8 images)"}.get(dataset, dataset)
                ax.set_title(f"{title}, symmetric noise", pad=8)
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("noise rate (share of\nflipped training labels)")
    for row, (metric, label) in enumerate(metrics):
        ax = fig.add_subplot(grid[row, -1])
        if cifar.empty:
            if row == 0:
                style.empty_panel(ax, "CIFAR-10N: no saved results.\nRun python -m phases.compare\n"
                                      "--data cifar10n-worse (also -aggre,\n-random1) --out DIR/compare/...\n"
                                      "(about 1 h each on 2 cores),\nthen python -m figures --from DIR")
                ax.set_title("CIFAR-10N (real human noise)", pad=8)
            else:
                ax.axis("off")
            continue
        values = cifar[["label_set", "method", metric]].dropna(subset=[metric])
        means = values.groupby(["label_set", "method"])[metric].agg(["mean", "std"]).reset_index()
        label_sets = [s for s in ("aggre", "random1", "random2", "random3", "worse") if s in set(means["label_set"])]
        label_sets += sorted(set(means["label_set"]) - set(label_sets))
        methods = [m for m in order if m in set(means["method"])]
        width = 0.84 / max(len(methods), 1)
        for index, method in enumerate(methods):
            group = means[means["method"] == method].set_index("label_set").reindex(label_sets)
            positions = np.arange(len(label_sets)) + (index - (len(methods) - 1) / 2) * width
            ax.bar(positions, group["mean"], width=width, color=colors[method],
                   yerr=group["std"].fillna(0.0), capsize=1.5, error_kw={"lw": 0.8, "ecolor": "0.3"})
        ax.set_xticks(np.arange(len(label_sets)))
        ax.set_xticklabels(label_sets)
        low = float(means["mean"].min()) if len(means) else 0.0
        ax.set_ylim(max(0.0, np.floor((low - 0.05) * 10) / 10), 1.02)
        if row == 0:
            ax.set_title("CIFAR-10N (real human noise)", pad=8)
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel("CIFAR-10N label set")
        if not curves:
            ax.set_ylabel(label + " (fraction)")
    handles = [plt.Line2D([], [], color=colors[m], lw=2.6, ls="--" if m in _REFERENCE else "-",
                          label=METHOD_NAMES.get(m, m)) for m in order]
    fig.suptitle("Noisy-label methods: test accuracy and clean detection (mean +- 1 sd over seeds)", y=0.985)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.91, bottom=0.2 if len(handles) > 5 else 0.16)
    return fig, table


def build(results) -> tuple[plt.Figure, pd.DataFrame]:
    return figure(results.compare())
