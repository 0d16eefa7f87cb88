"""The referee's questions of docs/theory.md section 9 as named studies: a grid of simulate knobs over seeds each.

A study is a :mod:`phases.sweep` grid with a name: the knob it varies (the x
axis of its figure), optionally a second knob drawn as separate lines, its
values at full size and at ``quick`` size, and the settings every run shares
(the default problem of docs/theory.md section 5, without C7 perturbation
draws; ``quick``: n = 200, 400 steps). Its runs go through the sweep's
library (:func:`phases.sweep.record_runs`: streamed, resumable records), and
:func:`band_table` reads them back as one row per grid point with the mean and
standard deviation over seeds of every quantity in :data:`QUANTITIES`.

The command that runs a study and draws its figure is ``python -m
figures.studies NAME --out DIR`` (a figure module may import ``phases``, not
the other way round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phases.sweep import grid_runs, summary_row

#: The quantities of a study's figure and table: name -> (column of :func:`phases.sweep.summary_row`, label).
QUANTITIES = {
    "T_align": ("T_align", "T_align (end of alignment), steps"),
    "T_filter": ("T_filter", "T_filter (end of filtering), steps"),
    "noisy_zero_at_filter": ("at_filter_frac_noisy_zero", "noisy at w = 0, at T_filter"),
    "noisy_zero_end": ("final_frac_noisy_zero", "noisy at w = 0, at the last step"),
    "clean_zero_at_filter": ("at_filter_frac_clean_zero", "clean at w = 0, at T_filter"),
    "clean_zero_end": ("final_frac_clean_zero", "clean at w = 0, at the last step"),
    "test_accuracy": ("final_test_accuracy", "test accuracy, last step"),
    "auc": ("final_auc", "AUC of w as a clean score, last step"),
    "noisy_readmitted": ("after_filter_noisy_readmitted", "re-admitted after T_filter (share of noisy at 0 then)"),
}

#: What every run of a study shares unless the study varies it: the simulate command's defaults (docs/theory.md
#: section 5's default problem), without the C7 perturbation draws no study reads.
FULL = {"perturb_draws": 0}
#: ``quick``: a fifth of the examples and of the steps.
QUICK = FULL | {"n": 200, "m": 20, "p": 200, "steps": 400}


@dataclasses.dataclass(frozen=True)
class Study:
    """One question of docs/theory.md section 9.

    ``knob``: the simulate setting on the x axis, with its ``values`` (full size) and ``quick_values``;
    ``series``: an optional second setting drawn as separate lines, with ``series_values``; ``log_x``: a
    logarithmic x axis; ``fixed``: settings the study adds to :data:`FULL` / :data:`QUICK`.
    """

    name: str
    question: str
    knob: str
    values: tuple
    quick_values: tuple
    series: str | None = None
    series_values: tuple = ()
    log_x: bool = False
    fixed: tuple = ()

    def grid(self, quick: bool) -> dict[str, list]:
        """The grid axes (knob first, then the series)."""
        axes = {self.knob: list(self.quick_values if quick else self.values)}
        if self.series is not None:
            axes[self.series] = list(self.series_values)
        return axes

    def runs(self, quick: bool, seeds: Sequence[int]) -> list[tuple]:
        """``(config, point)`` of every run (:func:`phases.sweep.grid_runs`), seeds innermost."""
        from phases.sweep import base_settings

        base = base_settings(None) | (QUICK if quick else FULL) | dict(self.fixed)
        return grid_runs(base, self.grid(quick), seeds)


STUDIES = {study.name: study for study in (
    Study("noise", "How do the phase boundaries and the filtering move with the noise rate? (figure 6)",
          "noise", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), (0.0, 0.2, 0.4, 0.6)),
    Study("clean-size", "How large must the clean subset be? m from C to 10% of n",
          "m", (4, 10, 25, 50, 100), (4, 10, 20), log_x=True),
    Study("learning-rate", "Does a large step prevent the late re-admission of noisy examples? eta from 0.05 to "
          "1.9 / lambda_joint",
          "eta_scale", (0.025, 0.1, 0.25, 0.5, 0.75, 0.95), (0.1, 0.25, 0.5, 0.95), log_x=True),
    Study("loss", "MSE vs cross-entropy, binary vs multi-class, on the same data",
          "loss", ("mse", "ce"), ("mse", "ce"), series="classes", series_values=(2, 4)),
    Study("imbalance", "Class imbalance: ratio of the largest to the smallest training class",
          "imbalance", (1.0, 2.0, 4.0, 8.0), (1.0, 3.0, 9.0), log_x=True),
    Study("clean-noise", "Label noise inside the clean subset",
          "clean_noise", (0.0, 0.1, 0.2, 0.3, 0.4), (0.0, 0.2, 0.4)),
    Study("noise-type", "Symmetric, pair (c -> c+1) and instance-dependent noise at the same rate",
          "noise_type", ("symmetric", "pair", "instance"), ("symmetric", "pair", "instance")),
    Study("width-depth", "The kernel's depth and activation (width is infinite: the NTK's limit)",
          "depth", (1, 2, 4, 8), (1, 2, 4), series="activation", series_values=("relu", "erf")),
)}


def band_table(records: list[dict], study: Study):
    """One row per grid point (knob value, and series value if any), in grid order: ``runs``, ``diverged``,
    ``no_T_filter`` (runs without a filtering boundary), then ``Q_mean`` and ``Q_std`` over the seeds for every
    quantity ``Q`` of :data:`QUANTITIES` (runs without the quantity left out; ``ddof=1``, NaN below two values).

    Returns a pandas DataFrame.
    """
    import pandas as pd

    frame = runs_frame(records, study)
    keys = [study.knob] + ([study.series] if study.series else [])
    order = list(dict.fromkeys(tuple(row) for row in frame[keys].itertuples(index=False)))
    rows = []
    for point in order:
        group = frame[(frame[keys] == pd.Series(point, index=keys)).all(axis=1)]
        row = dict(zip(keys, point)) | {"runs": len(group), "diverged": int(group["diverged"].sum()),
                                        "no_T_filter": int(group["T_filter"].isna().sum())}
        for name in QUANTITIES:
            values = group[name].astype(float)
            row[f"{name}_mean"], row[f"{name}_std"] = values.mean(), values.std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


def runs_frame(records: list[dict], study: Study):
    """One row per run: the study's knob (and series), ``seed``, ``diverged`` (bool), ``eta_used`` and the
    :data:`QUANTITIES` (NaN where a run lacks one), as a pandas DataFrame in record order."""
    import numpy as np
    import pandas as pd

    rows = []
    for record in records:
        flat = summary_row(record)
        row = {study.knob: record["point"][study.knob]}
        if study.series:
            row[study.series] = record["point"][study.series]
        row |= {"seed": record["seed"], "diverged": record["diverged"] is not None, "eta_used": flat["eta_used"]}
        rows.append(row | {name: np.nan if flat.get(column) is None else flat[column]
                           for name, (column, _) in QUANTITIES.items()})
    return pd.DataFrame(rows)
