"""The named studies of docs/theory.md section 9: one command per question, a figure and its table with seed bands.

    python -m figures.studies clean-size --out runs/study-clean-size --quick

runs the study's grid over ``--seeds`` seeds through the sweep's library
(:mod:`phases.study`, :func:`phases.sweep.record_runs`: records streamed to
``records.jsonl``, resumable with ``--resume``, whole or nothing) and writes,
beside ``records.jsonl`` and ``summary.csv``:

- ``NAME.png``: the study's quantities against its knob, means over seeds
  with +-1 standard deviation bands, every seed a faint point: the phase
  boundaries ``T_filter`` and ``T_align``; the shares of noisy and clean
  examples at ``w = 0`` at ``T_filter`` and at the last step; the test
  accuracy, the AUC of ``w`` as a clean score and the late re-admission of
  noisy examples (the share of those at ``w = 0`` at ``T_filter`` whose weight
  leaves 0 later). The ``noise`` study draws figure 6 (:mod:`figures.phase_diagram`).
- ``NAME.csv``: one row per grid point, ``Q_mean`` and ``Q_std`` over the
  seeds of every quantity (:func:`phases.study.band_table`).

The studies and their grids are :data:`phases.study.STUDIES` (``--help``
lists them); ``--quick`` runs n = 200 examples for 400 steps at fewer knob
values, 2 seeds unless ``--seeds``. The studies are not part of ``python -m
figures``: each is its own command, and its runs are its own.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from figures import style
from phases.study import QUANTITIES, STUDIES, Study, band_table, runs_frame

PROG = "python -m figures.studies"

_SHARES = (("noisy_zero_at_filter", style.NOISY_COLOR, "-", "o"), ("noisy_zero_end", style.NOISY_COLOR, "--", "^"),
           ("clean_zero_at_filter", style.CLEAN_COLOR, "-", "s"), ("clean_zero_end", style.CLEAN_COLOR, "--", "v"))
_OUTCOMES = (("test_accuracy", style.PALETTE[2], "-", "o"), ("auc", style.PALETTE[4], "-", "D"),
             ("noisy_readmitted", style.PALETTE[1], ":", "x"))
_SERIES_STYLES = ("-", "--", ":", "-.")


def _positions(study: Study, values: pd.Series) -> tuple[pd.Series, dict | None]:
    """x positions of a knob's values: the values themselves for a numeric knob, 0..k-1 in study order (and their
    tick labels) for a categorical one."""
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in study.values):
        return values.astype(float), None
    ticks = {value: index for index, value in enumerate(study.values)}
    return values.map(ticks).astype(float), {index: str(value) for value, index in ticks.items()}


def _bands(ax, runs: pd.DataFrame, x: pd.Series, quantity: str, color, ls: str, marker: str, label: str) -> None:
    """Mean over seeds (line), +-1 sd (band), single runs (faint points); a quantity no run has draws nothing."""
    values = pd.DataFrame({"x": x, "y": runs[quantity].astype(float)}).dropna()
    if values.empty:
        return
    ax.scatter(values["x"], values["y"], s=12, color=color, alpha=0.3, lw=0, zorder=2)
    grouped = values.groupby("x")["y"]
    mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    ax.fill_between(mean.index, mean - sd, mean + sd, color=color, alpha=0.16, lw=0, zorder=1)
    ax.plot(mean.index, mean, color=color, lw=2, ls=ls, marker=marker, ms=5, label=label, zorder=3)


@style.styled
def figure(records: list[dict], study: Study) -> tuple[plt.Figure, pd.DataFrame]:
    """Plot a study's runs (records of :func:`phases.sweep.record_runs`) against its knob.

    Four panels: ``T_filter``, ``T_align`` (steps); the shares of noisy and clean examples at ``w = 0`` at
    ``T_filter`` and at the last step; test accuracy, AUC and late re-admission. Lines are means over seeds,
    bands +-1 standard deviation, points single runs; a second knob (``study.series``) is drawn in line styles.
    Diverged runs add no point (counted in the title).

    Returns the figure and its data: :func:`phases.study.band_table`, one row per grid point.
    """
    runs = runs_frame(records, study)
    table = band_table(records, study)
    x, ticks = _positions(study, runs[study.knob])
    series = [None] if study.series is None else list(study.series_values)

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.6), sharex=True)
    (ax_filter, ax_shares), (ax_align, ax_outcomes) = axes
    for index, value in enumerate(series):
        mask = pd.Series(True, index=runs.index) if value is None else runs[study.series] == value
        dash = None if value is None else _SERIES_STYLES[index % len(_SERIES_STYLES)]
        # Colours and markers name the quantities (labelled once); with a series, line styles name its values.
        labels = {name: label if index == 0 else None for name, (_, label) in QUANTITIES.items()}
        for ax, quantity, color in ((ax_filter, "T_filter", style.PHASE_LINE_COLORS["filtering"]),
                                    (ax_align, "T_align", style.PHASE_LINE_COLORS["alignment"])):
            _bands(ax, runs[mask], x[mask], quantity, color, dash or "-", "o", labels[quantity])
        for ax, group in ((ax_shares, _SHARES), (ax_outcomes, _OUTCOMES)):
            for quantity, color, ls, marker in group:
                _bands(ax, runs[mask], x[mask], quantity, color, dash or ls, marker, labels[quantity])
    missing = int(runs["T_filter"].isna().sum() - runs["diverged"].sum())
    if missing:
        style.note(ax_filter, f"{missing} of {len(runs)} run(s) without T_filter (no plateau)")
    ax_filter.set_title("Phase boundaries")
    ax_shares.set_title("Filtering")
    ax_outcomes.set_title("Outcome")
    for ax in (ax_filter, ax_align):
        ax.set_ylabel("step")
    ax_shares.set_ylabel("share of the group at w = 0")
    ax_outcomes.set_ylabel("share")
    for ax in (ax_shares, ax_outcomes):
        ax.set_ylim(-0.03, 1.03)
    series_handles = [] if study.series is None else [
        Line2D([], [], color="0.3", lw=2, ls=_SERIES_STYLES[index % len(_SERIES_STYLES)],
               label=f"{study.series} = {value}") for index, value in enumerate(series)]
    for ax in axes.flat:
        if ax.has_data():
            handles, _ = ax.get_legend_handles_labels()
            ax.legend(handles=handles + series_handles, fontsize=8.5, loc="best")
    if study.log_x:
        ax_align.set_xscale("log")
        ax_align.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if ticks is None:  # a tick at every value of the knob, in plain numbers
        ax_align.set_xticks(sorted(set(x)), [f"{value:g}" for value in sorted(set(x))])
    else:
        ax_align.set_xticks(list(ticks), list(ticks.values()))
        ax_align.set_xlim(-0.4, len(ticks) - 0.6)
    for ax in (ax_align, ax_outcomes):
        ax.set_xlabel(study.knob.replace("_", "-") + (" (fraction of the stability limit 2 / lambda_joint)"
                                                      if study.knob == "eta_scale" else ""))
    shared = {name: "/".join(map(str, sorted({record["settings"][name] for record in records})))
              for name in ("n", "classes", "steps")}
    seeds = sorted(set(runs.groupby([study.knob] + ([study.series] if study.series else []))["seed"].nunique()))
    diverged = int(runs["diverged"].sum())
    fig.suptitle(f"Study '{study.name}': {textwrap.shorten(study.question, 110)}\n(n = {shared['n']}, "
                 f"C = {shared['classes']}, {shared['steps']} steps; {'/'.join(map(str, seeds))} seeds per point, "
                 "bands +-1 sd" + (f"; {diverged} diverged run(s) left out" if diverged else "") + ")", fontsize=12)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.88, hspace=0.12, wspace=0.18)
    return fig, table


def _noise_figure(records: list[dict], study: Study) -> tuple[plt.Figure, pd.DataFrame]:
    """The ``noise`` study: figure 6 (:func:`figures.phase_diagram.figure`) with the study's band table."""
    from figures import phase_diagram
    from phases.sweep import phase_diagram_row

    settings = records[0]["settings"] if records else {}
    fig, _ = phase_diagram.figure([phase_diagram_row(record) for record in records],
                                  settings | {"num_classes": settings.get("classes")})
    return fig, band_table(records, study)


def draw(records: list[dict], study: Study) -> tuple[plt.Figure, pd.DataFrame]:
    """The study's figure and table: figure 6 for ``noise``, :func:`figure` otherwise."""
    return (_noise_figure if study.name == "noise" else figure)(records, study)


# ----------------------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    from phases.cli import ArgumentParser, add_executor_arguments, positive_int
    from phases.study import FULL, QUICK

    studies = "\n".join(f"  {study.name}: {study.question} ({study.knob.replace('_', '-')} = "
                        f"{', '.join(map(str, study.values))}"
                        + (f"; {study.series} = {', '.join(map(str, study.series_values))}" if study.series else "")
                        + ")" for study in STUDIES.values())
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"Studies (full-size values):\n{studies}\n\nEvery run: the python -m "
                                   f"phases.simulate defaults with {FULL} (--quick: {QUICK}).")
    parser.add_argument("name", choices=list(STUDIES), metavar="NAME", help=f"the study: {', '.join(STUDIES)}")
    parser.add_argument("--out", required=True, help="output directory (records.jsonl, summary.csv, NAME.png, "
                                                     "NAME.csv)")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="seeds per grid point, 0..k-1 (default: 4; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (n = 200, m = 20, p = 200, 400 steps) and fewer knob values")
    add_executor_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="start again, replacing an earlier study (finished or not) that this toolkit wrote")
    parser.add_argument("--resume", action="store_true",
                        help="continue an unfinished study into --out; runs already recorded are not computed again")
    return parser


def run(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the study of the command-line arguments, write its files, print its table; return the table."""
    from phases.cli import ResumableOutput, UserError, executor_from_arguments, refuse_jax_cache
    from phases.sweep import record_runs, validate_runs

    args = build_parser().parse_args(argv)
    study = STUDIES[args.name]
    seeds = args.seeds or (2 if args.quick else 4)
    try:
        runs = study.runs(args.quick, range(seeds))
        validate_runs(runs)
    except ValueError as error:
        raise UserError(str(error)) from None
    executor = executor_from_arguments(args)
    refuse_jax_cache()
    matplotlib.use("Agg")  # a command line draws to files only
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    directory = ResumableOutput(args.out, overwrite=args.overwrite, resume=args.resume, command=command, prog=PROG)
    started = time.perf_counter()
    tables = []

    def finish(folder: str, records: list[dict]) -> None:
        fig, table = draw(records, study)
        style.save(fig, table, folder, study.name)
        tables.append(table)

    records, computed = record_runs(runs, directory, executor=executor, finish=finish)
    table = tables[0]
    columns = [column for column in table if not column.endswith("_std")]
    print(table[columns].to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    print("Means over seeds (T_* in steps; NaN: no run of the point has the quantity; the _std columns are in "
          f"{study.name}.csv).")
    print(f"Wrote {args.out}/: records.jsonl summary.csv {study.name}.png {study.name}.csv ({len(records)} runs, "
          f"{computed} computed, {time.perf_counter() - started:.0f} s)")
    return table


def main(argv: list[str] | None = None) -> int:
    from phases.cli import run_main

    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    from phases.executor import limit_threads

    limit_threads()  # before JAX loads: runs done in this process (--workers 1) then match those of any worker
    sys.exit(main())
