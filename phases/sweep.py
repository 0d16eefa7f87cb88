"""Simulations over a grid of ``phases.simulate``'s knobs and seeds, recorded as they finish.

    python -m phases.sweep --out runs/sweep --grid noise=0,0.2,0.4 --grid gamma=0,1 --seeds 4

Every run is one ``python -m phases.simulate`` run (exact meta-reweighting of
the linearized network, docs/theory.md section 2; its phases, section 5; its
claims, section 4): its configuration is the simulate command's defaults (or
``--config FILE``, a saved ``config.json``), then one value of every
``--grid KNOB=V1,V2,...`` axis, then the seed, built and checked by the same
:class:`phases.experiments.SimulationConfig` before any work. A knob is a
simulate flag without its dashes (``noise``, ``noise-type``, ``dataset``,
``features``, ``n``, ``loss``, ``eta``, ``batch-size``, ``imbalance``,
``clean-noise``, ...); a one-value axis fixes a knob; ``none`` is the flag's
own default where that is "unset" (``eta=none``: 1/lambda_max; ``batch-size=none``:
full batch). The grid is the product of the axes, seeds ``0..k-1`` innermost.

Output (``--out DIR``):

- ``records.jsonl``: one JSON line per run, in grid order: ``key`` (a hash of
  the run's resolved configuration, seed included), ``point`` (its grid
  values), ``seed``, ``settings`` (the resolved configuration, re-runnable
  with ``python -m phases.simulate --config``), the realised noise rate,
  ``eta``, the phase ``boundaries``, the weights and test accuracy ``at_filter``,
  ``after_filter`` (``noisy_readmitted``: the share of the noisy examples at
  ``w = 0`` at ``T_filter`` whose weight leaves 0 at a later recorded step,
  the late re-admission of docs/theory.md section 9's learning-rate question),
  each claim's verdict and margin, the ``final`` metrics, ``diverged`` (the
  message of a run whose step size was unstable, else null) and ``timing``
  (its share of its pass's wall-clock seconds and the number of runs in the
  pass: the one field that differs between two executions of the same run;
  everything else is the same bit for bit whatever the executor and the
  number of workers, because every run executes with one BLAS/XLA thread,
  ``--workers 1`` in this process included, and the passes depend on the
  grid only);
- ``summary.csv``: the same, one flat row per run (without ``timing``);
- ``trajectories/KEY.npz`` with ``--save-trajectories``.

Shared work is done once. Runs that differ only in their labels' noise and
their weights' dynamics (:data:`PER_RUN`: noise rate, type and clean-subset
noise, ``eta``, ``beta``, ``gamma``, ``w0``), such as every noise rate of
one seed, share their inputs: their kernel is computed once and up to
``--runs-per-pass`` of them are advanced together, one pass over the kernel
per step for all (:func:`dynamics.simulator.simulate_many`; the step is bound
by reading the kernel, ``bench/batched.py`` measures the gain). A run's
numbers equal those of the same run alone to rounding (last digits; tested to
1e-12), and its pass is fixed by the grid, so a sweep is reproducible bit for
bit. Resuming after a kill that tore a pass's records apart recomputes the
rest of that pass as a smaller pass, whose last digits may differ.

Passes go to a local process pool (``--workers``), to a Dask ``LocalCluster``
(``--dask-workers``) or to an existing Dask cluster (``--scheduler
tcp://HOST:PORT``; its workers must import this package, and
``--save-trajectories`` then needs a file system they share with this machine).

Whole or nothing, and resumable (:class:`phases.cli.ResumableOutput`). A
sweep is assembled in ``.DIR.in-progress`` beside ``DIR``: a marked toolkit
output (its marker file says ``"state": "in progress"``) into which each
finished run's record is appended, flushed and fsynced as it arrives. ``DIR``
itself appears only when every run is recorded: the records are rewritten in
grid order, ``summary.csv`` is written, the marker says ``"complete"``, and
the directory is renamed into place. A sweep that stops (killed, interrupted,
a failing run) after recording a run leaves its in-progress directory;
``--resume`` continues it and recomputes nothing recorded there (a torn last
line from a kill is dropped and its run redone). ``--resume`` on a finished
``DIR`` adds the runs a larger grid asks for and publishes the result in its
place; recorded runs the new grid does not contain are left out. A directory
is written by one sweep at a time (a lock on the in-progress directory).
``--overwrite`` starts again from nothing. A run's key hashes every field of
its configuration, so records written before a new field was added to
:class:`phases.experiments.SimulationConfig` are computed again.

:func:`sweep` is the noise-rate sweep of the phase diagram (figure 6) as a
library function, on the same runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from phases.cli import ArgumentParser, HelpFormatter, ResumableOutput, UserError, add_executor_arguments, \
    executor_from_arguments, jsonable, positive_int, refuse_jax_cache, run_main, write_text
from phases.detect import PhaseParams, readmitted_share

PROG = "python -m phases.sweep"
RECORDS = ResumableOutput.RECORDS
#: Runs advanced together at most (``--runs-per-pass``): each holds its recorded series in memory.
RUNS_PER_PASS = 16
SUMMARY = "summary.csv"
TRAJECTORIES = "trajectories"

#: The per-run row of the phase diagram (figure 6; ``None`` where a quantity does not exist, e.g. ``T_filter``
#: without noise).
RECORD_FIELDS = (
    "noise", "seed", "realised_noise", "T_align", "T_filter", "plateau",
    "frac_noisy_zero_at_filter", "frac_clean_zero_at_filter", "frac_noisy_zero_end", "frac_clean_zero_end",
    "test_accuracy_at_filter", "test_accuracy", "auc", "eta", "steps", "wall_s",
)


# ----------------------------------------------------------------------------- one run


def record_key(config) -> str:
    """The hash that names a run: SHA-256 of its resolved configuration (seed included) as sorted JSON."""
    text = json.dumps(jsonable(dataclasses.asdict(config)), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def run_records(runs: Sequence[tuple]) -> list[dict]:
    """The records of runs advanced together (:func:`phases.experiments.run_simulations`: one kernel, one pass
    over it per step for all of them), one per ``(config, point, trajectory_path)`` of ``runs``, in order.

    ``point`` is a run's grid values, copied into its record. With ``trajectory_path`` the trajectory is
    saved there (atomically). A run whose step size is unstable is recorded with its message in ``diverged``.
    A record's ``timing`` holds its share of the wall time (``wall_s``) and the number of runs it was advanced
    with (``advanced_with``).
    """
    from phases.experiments import run_simulations

    started = time.perf_counter()
    results = run_simulations([config for config, _, _ in runs])
    timing = {"wall_s": (time.perf_counter() - started) / len(runs), "advanced_with": len(runs)}
    return [_record(config, point, path, result, timing) for (config, point, path), result in zip(runs, results)]


def _record(config, point: dict, trajectory_path: str | None, result, timing: dict) -> dict:
    import numpy as np

    from dynamics.simulator import DivergenceError

    record = {"key": record_key(config), "point": point, "seed": config.seed,
              "settings": dataclasses.asdict(config), "diverged": None, "trajectory": None}
    if isinstance(result, DivergenceError):
        return jsonable(record | {"diverged": str(result), "timing": timing})
    trajectory, phases, summary = result.trajectory, result.phases, result.summary
    stats = trajectory.weight_stats()
    at = None if phases.T_filter is None else int(np.searchsorted(trajectory.step, phases.T_filter))
    if trajectory_path is not None:
        partial = trajectory_path + ".partial.npz"
        trajectory.save(partial)
        os.replace(partial, trajectory_path)
        record["trajectory"] = os.path.join(TRAJECTORIES, os.path.basename(trajectory_path))
    record |= {
        "realised_noise": result.problem.noise_rate if getattr(result.problem, "has_y_true", True) else None,
        "eta": trajectory.config["eta"],
        "boundaries": {name: summary[name] for name in ("T_align", "T_filter", "T_freeze", "plateau")},
        "at_filter": {name: None if at is None else series[at] for name, series in
                      (("frac_noisy_zero", stats["frac_noisy_zero"]), ("frac_clean_zero", stats["frac_clean_zero"]),
                       ("test_accuracy", trajectory.test_accuracy))},
        "after_filter": {"noisy_readmitted": readmitted_share(trajectory, phases.T_filter)},
        "claims": [{key: claim[key] for key in ("id", "verdict", "margin")} for claim in summary["claims"]],
        "final": summary["final"],
        "timing": timing,
    }
    return jsonable(record)


#: The settings in which runs advanced together may differ (the labels' noise and the weights' dynamics);
#: runs that agree on every other setting form one pass (:func:`pass_groups`).
PER_RUN = ("noise", "noise_type", "clean_noise", "eta", "eta_scale", "beta", "gamma", "w0")


def pass_groups(runs: Sequence[tuple], size: int) -> list[list[int]]:
    """Indices of ``runs`` (``(config, point)`` pairs) grouped into passes of at most ``size`` runs that agree on
    every setting outside :data:`PER_RUN`, in grid order. The groups depend on the grid only, never on the
    executor or on what is already recorded."""
    from phases.experiments import SimulationConfig

    fixed = {name: getattr(SimulationConfig(), name) for name in PER_RUN}
    by_setting = {}
    for index, (config, _) in enumerate(runs):
        by_setting.setdefault(dataclasses.replace(config, **fixed), []).append(index)
    return [members[start:start + size] for members in by_setting.values() for start in range(0, len(members), size)]


def phase_diagram_row(record: dict) -> dict:
    """The :data:`RECORD_FIELDS` of a run's record (figure 6)."""
    boundaries, at, final = (record.get(name) or {} for name in ("boundaries", "at_filter", "final"))
    return {"noise": record["settings"]["noise"], "seed": record["seed"],
            "realised_noise": record.get("realised_noise"), "T_align": boundaries.get("T_align"),
            "T_filter": boundaries.get("T_filter"), "plateau": boundaries.get("plateau"),
            "frac_noisy_zero_at_filter": at.get("frac_noisy_zero"),
            "frac_clean_zero_at_filter": at.get("frac_clean_zero"),
            "frac_noisy_zero_end": final.get("frac_noisy_zero"), "frac_clean_zero_end": final.get("frac_clean_zero"),
            "test_accuracy_at_filter": at.get("test_accuracy"), "test_accuracy": final.get("test_accuracy"),
            "auc": final.get("auc"), "eta": record.get("eta"), "steps": final.get("step"),
            "wall_s": record["timing"]["wall_s"]}


def summary_row(record: dict) -> dict:
    """One flat row of ``summary.csv``: the grid values, the seed, and every recorded quantity but the timing
    (``eta_used``: the step size the run took, beside a grid's requested ``eta``)."""
    row = dict(record["point"]) | {"seed": record["seed"], "realised_noise": record.get("realised_noise"),
                                   "eta_used": record.get("eta")}
    for group in ("boundaries", "at_filter", "after_filter", "final"):
        for name, value in (record.get(group) or {}).items():
            row[name if group == "boundaries" else f"{group}_{name}"] = value
    for claim in record.get("claims") or []:
        row[f"{claim['id']}_verdict"], row[f"{claim['id']}_margin"] = claim["verdict"], claim["margin"]
    return row | {"diverged": record["diverged"], "key": record["key"]}


# ----------------------------------------------------------------------------- the grid


def knobs() -> dict[str, argparse.Action]:
    """The knobs a grid may vary: every ``phases.simulate`` flag that sets a configuration field, but the seed."""
    from phases.experiments import SimulationConfig
    from phases.simulate import build_parser

    fields = {field.name for field in dataclasses.fields(SimulationConfig)} - {"seed"}
    # argparse has no public list of a parser's actions; _actions is where it keeps them.
    return {action.dest: action for action in build_parser()._actions if action.dest in fields}


def parse_grid(axes: Sequence[str]) -> dict[str, list]:
    """``["noise=0,0.2", "loss=mse"]`` -> ``{"noise": [0.0, 0.2], "loss": ["mse"]}``, each value parsed and checked
    by its ``phases.simulate`` flag; a :class:`UserError` names the first bad axis or value."""
    known = knobs()
    grid = {}
    for axis in axes:
        name, sign, values = axis.partition("=")
        knob = name.strip().replace("-", "_")
        if not sign or not values.strip():
            raise UserError(f"--grid {axis!r}: expected KNOB=V1,V2,... (e.g. noise=0,0.2,0.4)")
        if knob == "seed":
            raise UserError("--grid seed: the seeds are --seeds, not a grid axis")
        if knob not in known:
            raise UserError(f"--grid {name.strip()!r} is not a knob of python -m phases.simulate; the knobs: "
                            f"{', '.join(sorted(name.replace('_', '-') for name in known))}")
        if knob in grid:
            raise UserError(f"--grid {name.strip()} is given twice; give every value of a knob in one --grid")
        parsed = [_knob_value(known[knob], knob, text.strip()) for text in values.split(",")]
        if len(set(map(repr, parsed))) != len(parsed):
            raise UserError(f"--grid {axis!r} repeats a value")
        grid[knob] = parsed
    return grid


def _knob_value(action: argparse.Action, knob: str, text: str):
    flag = knob.replace("_", "-")
    if text.lower() == "none" and action.default is None:
        return None
    try:
        value = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
        detail = str(error) if isinstance(error, argparse.ArgumentTypeError) else f"not a valid {action.type.__name__}"
        raise UserError(f"--grid {flag}={text!r}: {detail}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"--grid {flag}={text!r}: must be one of {', '.join(map(str, action.choices))}")
    return value


def grid_runs(base: dict, grid: dict[str, list], seeds: Sequence[int]) -> list[tuple]:
    """``(config, point)`` of every run, in grid order (axes as given, seeds innermost).

    ``base`` holds the settings the simulate command would take with no flags (or from ``--config``); each run
    overrides them with its grid values and seed. A bad combination is a ``ValueError`` naming the point.
    """
    from phases.experiments import SimulationConfig

    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        for seed in seeds:
            try:
                config = SimulationConfig(**(base | point | {"seed": int(seed)}))
            except ValueError as error:
                raise ValueError(f"{_where(point)}: {error}") from None
            runs.append((config, point))
    return runs


def validate_runs(runs: Sequence[tuple], force: bool = False) -> None:
    """Check every run's configuration, problem and memory estimate before any work; a ``ValueError`` names the
    first bad run by its grid point and seed (settings named as flags)."""
    from phases.simulate import _as_flags

    for config, point in runs:
        try:
            config.validate(force=force)
        except ValueError as error:
            raise ValueError(f"{_where(point)}, seed {config.seed}: {_as_flags(str(error))}") from None


def _where(point: dict) -> str:
    return "grid point " + (", ".join(f"{key.replace('_', '-')}={value}" for key, value in point.items()) or "(none)")


def run_sweep(runs: Sequence[tuple], *, recorded: dict[str, dict] | None = None, executor=None,
              trajectories: str | None = None, on_record: Callable[[dict], None] | None = None,
              runs_per_pass: int = RUNS_PER_PASS) -> list[dict]:
    """The records of ``runs`` (``(config, point)`` pairs, see :func:`grid_runs`), in their order.

    Runs whose key is in ``recorded`` are not run again: their recorded record is returned. The others go to
    ``executor`` (:mod:`phases.executor`; default: a local pool on every core) in the passes of
    :func:`pass_groups` (at most ``runs_per_pass`` runs advanced together), and ``on_record(record)`` is called
    for each record as its pass finishes. With ``trajectories`` (a folder) each new run saves its trajectory
    there.
    """
    from phases.executor import run_tasks

    recorded = recorded or {}
    keys = [record_key(config) for config, _ in runs]
    tasks, queued = [], set()
    for group in pass_groups(runs, runs_per_pass):
        task = []
        for index in group:
            key, (config, point) = keys[index], runs[index]
            if key not in recorded and key not in queued:  # a run asked for twice runs once
                queued.add(key)
                task.append((config, point, None if trajectories is None else os.path.join(trajectories, f"{key}.npz")))
        if task:
            tasks.append((task,))

    def report(index, records):
        for record in records:
            on_record(record)

    fresh = {record["key"]: record for records in run_tasks(run_records, tasks, executor=executor,
                                                            on_result=None if on_record is None else report)
             for record in records}
    return [recorded[key] | {"point": point} if key in recorded else fresh[key]
            for key, (_, point) in zip(keys, runs)]


# ----------------------------------------------------------------------------- figure 6: the noise-rate sweep


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What every run of the phase diagram's noise-rate sweep shares (defaults: docs/theory.md section 5).

    Problem: ``n, m, p`` training / clean / test examples, ``num_classes`` C,
    ``dim`` d, ``separation`` (norm of the class means), ``spread``, symmetric
    noise. Simulation: ``steps`` full-batch steps of ``MetaConfig`` defaults
    (MSE, ``beta = 1``, ``w0 = 1/2``, ``eta = 1/lambda_max``) with ``gamma``,
    recorded every ``record_every`` steps (1: ``T_align`` is a few steps, so a
    coarser record would round it up), no C7 perturbation draws.
    """

    n: int = 1000
    m: int = 100
    p: int = 1000
    num_classes: int = 4
    dim: int = 32
    separation: float = 3.0
    spread: float = 1.0
    steps: int = 2000
    record_every: int = 1
    gamma: float = 1.0
    depth: int = 2
    phase_params: PhaseParams = PhaseParams()


def simulation_config(noise: float, seed: int, settings: SweepSettings):
    """The :class:`phases.experiments.SimulationConfig` of one run of the noise-rate sweep (no C7 draws)."""
    from phases.experiments import SimulationConfig

    params = settings.phase_params
    return SimulationConfig(noise=float(noise), seed=int(seed), n=settings.n, m=settings.m, p=settings.p,
                            classes=settings.num_classes, dim=settings.dim, separation=settings.separation,
                            spread=settings.spread, depth=settings.depth, gamma=settings.gamma, steps=settings.steps,
                            record_every=settings.record_every, perturb_draws=0,
                            align_fraction=params.align_fraction, window=params.window_fraction,
                            min_window=params.min_window, tau=params.tau, tau_w=params.tau_w)


def sweep(noise_rates: Sequence[float], seeds: Sequence[int], settings: SweepSettings = SweepSettings(), *,
          workers: int | None = None, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """The phase diagram's runs: every (noise rate, seed) pair; :data:`RECORD_FIELDS` rows in (noise, seed) order.

    The problem is drawn from ``np.random.default_rng(seed)``: for one seed the inputs are the same at every
    noise rate and only the label flips differ, so curves against the noise rate are not blurred by a new data
    set per rate. ``workers``: processes (``None``: the core count; 1 runs here). ``progress`` is called with
    each row as its run finishes.
    """
    from phases.executor import LocalPool

    limit = (settings.num_classes - 1) / settings.num_classes
    for rate in noise_rates:
        if not 0 <= rate < limit:
            raise ValueError(f"noise rates must lie in [0, {limit:.4g}) for {settings.num_classes} classes, got {rate}")
    if not noise_rates or not seeds:
        raise ValueError("a sweep needs at least one noise rate and one seed")
    runs = [(simulation_config(rate, seed, settings), {"noise": float(rate)}) for rate in noise_rates
            for seed in seeds]
    report = None if progress is None else (lambda record: progress(phase_diagram_row(record)))
    records = run_sweep(runs, executor=LocalPool(workers), on_record=report)
    return sorted(map(phase_diagram_row, records), key=lambda row: (row["noise"], row["seed"]))


def settings_dict(settings: SweepSettings) -> dict:
    """The settings as JSON (the phase parameters nested)."""
    return dataclasses.asdict(settings)


def read_records(path: str) -> list[dict]:
    """The records of a finished sweep directory's ``records.jsonl``."""
    with open(os.path.join(path, RECORDS)) as handle:
        return [json.loads(line) for line in handle]


def load(path: str) -> dict:
    """The phase diagram's data, ``{"config": ..., "records": [RECORD_FIELDS rows]}``, from a ``sweep.json`` (a
    file, or the folder holding it) or a sweep directory written by the command (``records.jsonl``)."""
    if os.path.isfile(os.path.join(path, RECORDS)):
        records = read_records(path)
        settings = records[0]["settings"] if records else {}
        return {"config": {"settings": settings | {"num_classes": settings.get("classes")}},
                "records": [phase_diagram_row(record) for record in records]}
    if os.path.isdir(path):
        path = os.path.join(path, "sweep.json")
    with open(path) as handle:
        payload = json.load(handle)
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"{path} is not a sweep result (no 'records' list)")
    return payload


def summary_frame(records: list[dict]):
    """Mean and standard deviation over seeds per noise rate, as a pandas DataFrame.

    Parameters
    ----------
    records : what :func:`sweep` returns (or the ``records`` of :func:`load`).

    Returns
    -------
    pandas.DataFrame indexed by noise rate (ascending), with columns
    ``(quantity, "mean")`` and ``(quantity, "std")`` for every quantity of
    :data:`RECORD_FIELDS` but ``noise`` and ``seed``, then ``("runs",
    "count")`` and ``("no_plateau", "count")`` (runs whose clean-subset loss
    never plateaued). Quantities that do not exist in a run (``None``, e.g.
    ``T_filter`` without noise) are left out of its rate's mean; the standard
    deviation has ``ddof=1`` and is NaN with fewer than two values.
    """
    import pandas as pd

    quantities = [field for field in RECORD_FIELDS if field not in ("noise", "seed")]
    frame = pd.DataFrame.from_records(records, columns=list(RECORD_FIELDS))
    values = frame[quantities].astype(float)
    by_rate = values.groupby(frame["noise"].astype(float), sort=True)
    summary = by_rate.agg(["mean", "std"])
    summary[("runs", "count")] = by_rate.size()
    summary[("no_plateau", "count")] = values["plateau"].isna().groupby(frame["noise"].astype(float)).sum()
    summary.columns.names = ["quantity", "statistic"]
    summary.index.name = "noise"
    return summary


def summary_table(records: list[dict]) -> str:
    """Mean +- standard deviation over seeds per noise rate (:func:`summary_frame`), one line each."""
    import numpy as np

    frame = summary_frame(records)
    columns = (("T_align", "T_align", ".1f"), ("T_filter", "T_filter", ".1f"),
               ("frac_noisy_zero_at_filter", "noisy@0 @T_f", ".3f"), ("frac_noisy_zero_end", "noisy@0 end", ".3f"),
               ("test_accuracy", "test acc", ".3f"))

    def cell(rate, quantity, spec):
        mean, std = frame.loc[rate, (quantity, "mean")], frame.loc[rate, (quantity, "std")]
        if np.isnan(mean):
            return "-"
        return format(mean, spec) if np.isnan(std) else f"{mean:{spec}} ± {std:{spec}}"

    rows = [[f"{rate:.2f}", str(int(frame.loc[rate, ("runs", "count")])),
             *[cell(rate, quantity, spec) for quantity, _, spec in columns[:2]],
             str(int(frame.loc[rate, ("no_plateau", "count")])),
             *[cell(rate, quantity, spec) for quantity, _, spec in columns[2:]]] for rate in frame.index]
    header = ["noise", "runs", "T_align", "T_filter", "no plateau", "noisy@0 @T_f", "noisy@0 end", "test acc"]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("Mean ± standard deviation over seeds (ddof=1). T_align, T_filter in steps; 'no plateau': runs "
                 "whose clean-subset loss never plateaued; noisy@0: share of noisy examples at w = 0 at T_filter and "
                 "at the last step.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2,...",
                        help="one axis of the grid: a python -m phases.simulate flag without its dashes and its "
                             "values (repeat for more axes; one value fixes the knob; 'none' is an unset default); "
                             "without it, the one configuration at every seed")
    parser.add_argument("--seeds", type=positive_int, default=4, help="seeds per grid point (seeds 0..k-1)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="start from the settings of a saved run (a config.json of python -m phases.simulate, "
                             "or its directory) instead of the simulate command's defaults")
    add_executor_arguments(parser)
    parser.add_argument("--out", required=True, help=f"output directory ({RECORDS}, {SUMMARY}, {TRAJECTORIES}/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again, replacing an earlier sweep (finished or not) that this toolkit wrote")
    parser.add_argument("--resume", action="store_true",
                        help="continue an unfinished sweep into --out, or add runs to a finished one; runs already "
                             "recorded are not computed again")
    parser.add_argument("--runs-per-pass", type=positive_int, default=RUNS_PER_PASS, metavar="S",
                        help="advance up to S runs that share their inputs and kernel together, one pass over the "
                             "kernel per step for all of them (1: one at a time); each holds its recorded series "
                             "in memory")
    parser.add_argument("--save-trajectories", action="store_true",
                        help=f"also save every run's trajectory in {TRAJECTORIES}/KEY.npz")
    parser.add_argument("--force", action="store_true",
                        help="run even when a run's memory estimate exceeds what this machine has")
    return parser


def base_settings(config_file: str | None) -> dict:
    """The settings every run starts from: those of ``python -m phases.simulate`` without flags, or of a saved
    run's ``config.json``."""
    from phases.experiments import SimulationConfig, read_settings
    from phases.simulate import build_parser as simulate_parser

    fields = {field.name for field in dataclasses.fields(SimulationConfig)}
    base = {name: value for name, value in vars(simulate_parser().parse_args([])).items() if name in fields}
    if config_file is None:
        return base
    try:
        return base | read_settings(config_file, SimulationConfig.from_dict, "config.json", "python -m phases.simulate")
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from None


def _finish(directory: str, records: list[dict]) -> None:
    """The last files of a sweep: ``summary.csv``, and only the trajectories of its records."""
    import pandas as pd

    write_text(os.path.join(directory, SUMMARY), pd.DataFrame(list(map(summary_row, records))).to_csv(index=False))
    folder = os.path.join(directory, TRAJECTORIES)
    if os.path.isdir(folder):
        for name in set(os.listdir(folder)) - {f"{record['key']}.npz" for record in records}:
            os.remove(os.path.join(folder, name))


class _Progress:
    """Each finished run's record appended to the output; one line on stderr: runs done, elapsed time and the
    estimated time left."""

    def __init__(self, total: int, directory: ResumableOutput):
        self.total, self.directory = total, directory
        self.done, self.started = 0, time.perf_counter()
        self.prog = directory.prog

    def __call__(self, record: dict) -> None:
        self.directory.append(record)
        self.done += 1
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done)
        print(f"{self.prog}: {self.done}/{self.total} runs, {elapsed:.0f} s, about {left:.0f} s left", file=sys.stderr,
              flush=True)


def record_runs(runs: Sequence[tuple], directory: ResumableOutput, *, executor=None, save_trajectories: bool = False,
                finish: Callable[[str, list[dict]], None] | None = None,
                runs_per_pass: int = RUNS_PER_PASS) -> tuple[list[dict], int]:
    """Run ``runs`` (``(config, point)`` pairs, :func:`grid_runs`) into ``directory`` and publish it whole.

    Runs recorded there are not run again; every new record is appended as it arrives (one progress line on
    stderr each, prefixed by ``directory.prog``); at the end ``records.jsonl`` (in the order of ``runs``),
    ``summary.csv`` and ``finish(folder, records)``'s files (if given) are written and the directory is
    published. After an error the directory is kept for ``--resume``. Returns the records and the number of
    runs computed.
    """
    prog = directory.prog
    recorded = directory.open()
    trajectories = os.path.join(directory.progress, TRAJECTORIES) if save_trajectories else None
    try:
        if trajectories is not None:
            os.makedirs(trajectories, exist_ok=True)
        keys = {record_key(config) for config, _ in runs}
        reused = len(keys & set(recorded))
        if reused:
            print(f"{prog}: {reused} of {len(keys)} runs already recorded in {directory.progress}; not run again",
                  file=sys.stderr)
        progress = _Progress(len(keys) - reused, directory)
        try:
            records = run_sweep(runs, recorded=recorded, executor=executor, on_record=progress,
                                trajectories=trajectories, runs_per_pass=runs_per_pass)
        except ConnectionError as error:  # only the Dask client raises it
            raise UserError(str(error)) from None
        dropped = len(set(recorded) - keys)
        if dropped:
            print(f"{prog}: {dropped} recorded runs are not in this grid and are left out", file=sys.stderr)

        def last_files(folder: str) -> None:
            _finish(folder, records)
            if finish is not None:
                finish(folder, records)

        directory.publish(records, last_files)
    except BaseException:
        directory.abandon()
        raise
    finally:
        directory.close()
    return records, progress.done


def run(argv: list[str] | None = None) -> list[dict]:
    """Run the sweep of the command-line arguments; print a summary; return the records in grid order."""
    args = build_parser().parse_args(argv)
    grid = parse_grid(args.grid)
    try:
        runs = grid_runs(base_settings(args.config), grid, range(args.seeds))
        validate_runs(runs, force=args.force)
    except ValueError as error:
        raise UserError(str(error)) from None
    executor = executor_from_arguments(args)
    refuse_jax_cache()
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    directory = ResumableOutput(args.out, overwrite=args.overwrite, resume=args.resume, command=command, prog=PROG,
                                carried=(TRAJECTORIES,))
    started = time.perf_counter()
    records, computed = record_runs(runs, directory, executor=executor, save_trajectories=args.save_trajectories,
                                    runs_per_pass=args.runs_per_pass)
    _print_summary(records, grid)
    print(f"Wrote {args.out}/: {RECORDS} {SUMMARY}{f' {TRAJECTORIES}/' if args.save_trajectories else ''} "
          f"({len(records)} runs, {computed} computed, {time.perf_counter() - started:.0f} s)")
    return records


def _print_summary(records: list[dict], grid: dict) -> None:
    """Per grid point (its varied knobs): runs, diverged runs, and the means over seeds of the boundaries and the
    final metrics."""
    import pandas as pd

    frame = pd.DataFrame([summary_row(record) for record in records])
    varied = [knob for knob, values in grid.items() if len(values) > 1]
    by = [frame[knob].astype(str) for knob in varied] or [pd.Series("all", index=frame.index, name="grid")]
    columns = [name for name in ("T_align", "T_filter", "T_freeze", "final_test_accuracy", "final_auc")
               if name in frame]
    values = frame[columns].astype(float)
    table = values.groupby(by, sort=False).mean()
    table.insert(0, "runs", values.groupby(by, sort=False).size())
    table.insert(1, "diverged", frame["diverged"].notna().groupby(by, sort=False).sum())
    print(table.to_string(float_format=lambda value: f"{value:.4g}"))
    print("Means over seeds (T_* in steps; NaN: no run of the point has the quantity).")


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    from phases.executor import limit_threads

    limit_threads()  # before JAX loads: runs done in this process (--workers 1) then match those of any worker
    sys.exit(main())
