"""Phase boundaries across noise rates and seeds: the data of the phase diagram.

    python -m phases.sweep --out runs/sweep

Each run draws the default Gaussian mixture (docs/theory.md section 5) at one noise
rate and seed, evaluates the kernel blocks, simulates exact meta-reweighting of
the linearized network without the C7 perturbations, and detects the phases
(section 5). Runs are independent, so they go to a pool of local processes
(``spawn``: each worker imports JAX itself and compiles the simulation once).
The command writes ``sweep.json``: the resolved configuration and one record
per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from phases.cli import ArgumentParser, HelpFormatter, OutputDirectory, UserError, add_output_arguments, \
    add_size_arguments, positive_int, refuse_jax_cache, run_main, versions, write_json
from phases.detect import PhaseParams
from phases.executor import run_tasks

#: What every record holds (``None`` where a quantity does not exist, e.g. ``T_filter`` without noise).
RECORD_FIELDS = (
    "noise", "seed", "realised_noise", "T_align", "T_filter", "plateau",
    "frac_noisy_zero_at_filter", "frac_clean_zero_at_filter", "frac_noisy_zero_end", "frac_clean_zero_end",
    "test_accuracy_at_filter", "test_accuracy", "auc", "eta", "steps", "wall_s",
)


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What is shared by every run of a sweep (defaults: docs/theory.md section 5).

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


def default_noise_rates(num_classes: int = 4, step: float = 0.05) -> list[float]:
    """Rates ``0, step, 2 step, ...`` strictly below ``(C - 1) / C``, where symmetric labels stop carrying information.

    With ``C = 4`` and ``step = 0.05``: ``0, 0.05, ..., 0.7``.
    """
    limit = (num_classes - 1) / num_classes
    count = math.ceil(limit / step - 1e-9)  # multiples k * step < limit
    return [round(k * step, 10) for k in range(count)]


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def simulation_config(noise: float, seed: int, settings: SweepSettings):
    """The :class:`phases.experiments.SimulationConfig` of one run of the sweep (no C7 perturbation draws)."""
    from phases.experiments import SimulationConfig

    params = settings.phase_params
    return SimulationConfig(noise=float(noise), seed=int(seed), n=settings.n, m=settings.m, p=settings.p,
                            classes=settings.num_classes, dim=settings.dim, separation=settings.separation,
                            spread=settings.spread, depth=settings.depth, gamma=settings.gamma, steps=settings.steps,
                            record_every=settings.record_every, perturb_draws=0,
                            align_fraction=params.align_fraction, window=params.window_fraction,
                            min_window=params.min_window, tau=params.tau, tau_w=params.tau_w)


def run_one(noise: float, seed: int, settings: SweepSettings) -> dict:
    """One run of the sweep: problem, kernel blocks, simulation, phases; return its record.

    The problem is drawn from ``np.random.default_rng(seed)``: for one seed the
    inputs are the same at every noise rate and only the label flips differ,
    so curves against the noise rate are not blurred by a new data set per rate.
    """
    from phases.experiments import run_simulation

    started = time.perf_counter()
    result = run_simulation(simulation_config(noise, seed, settings), claims=False)
    problem, trajectory, phases = result.problem, result.trajectory, result.phases
    stats = trajectory.weight_stats()

    def at_filter(series):
        if phases.T_filter is None:
            return None
        return _number(series[int(np.searchsorted(trajectory.step, phases.T_filter))])

    return {
        "noise": float(noise), "seed": int(seed), "realised_noise": problem.noise_rate,
        "T_align": phases.T_align, "T_filter": phases.T_filter, "plateau": phases.plateau,
        "frac_noisy_zero_at_filter": at_filter(stats["frac_noisy_zero"]),
        "frac_clean_zero_at_filter": at_filter(stats["frac_clean_zero"]),
        "frac_noisy_zero_end": _number(stats["frac_noisy_zero"][-1]),
        "frac_clean_zero_end": _number(stats["frac_clean_zero"][-1]),
        "test_accuracy_at_filter": at_filter(trajectory.test_accuracy),
        "test_accuracy": _number(trajectory.test_accuracy[-1]),
        "auc": _number(stats["auc"][-1]),
        "eta": trajectory.config["eta"], "steps": int(trajectory.step[-1]),
        "wall_s": time.perf_counter() - started,
    }


def sweep(noise_rates: Sequence[float], seeds: Sequence[int], settings: SweepSettings = SweepSettings(), *,
          workers: int | None = None, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every (noise rate, seed) pair; return the records in (noise, seed) order.

    Parameters
    ----------
    noise_rates : symmetric noise rates, each in ``[0, (C-1)/C)``.
    seeds : problem / simulation seeds.
    settings : what every run shares.
    workers : processes (``None``: the local core count; 1 runs in this process).
    progress : called with each record as its run finishes (in completion order).

    Returns
    -------
    list of dicts with the keys :data:`RECORD_FIELDS`, in increasing (noise rate, seed) order.
    """
    limit = (settings.num_classes - 1) / settings.num_classes
    for rate in noise_rates:
        if not 0 <= rate < limit:
            raise ValueError(f"noise rates must lie in [0, {limit:.4g}) for {settings.num_classes} classes, got {rate}")
    if not noise_rates or not seeds:
        raise ValueError("a sweep needs at least one noise rate and one seed")
    tasks = [(float(rate), int(seed), settings) for rate in noise_rates for seed in seeds]
    report = None if progress is None else (lambda index, record: progress(record))
    records = run_tasks(run_one, tasks, workers=workers, on_result=report)
    return sorted(records, key=lambda record: (record["noise"], record["seed"]))


def settings_dict(settings: SweepSettings) -> dict:
    """The settings as JSON (the phase parameters nested)."""
    return dataclasses.asdict(settings)


def settings_from_dict(values: dict) -> SweepSettings:
    values = dict(values)
    values["phase_params"] = PhaseParams(**values.get("phase_params", {}))
    return SweepSettings(**values)


def load(path: str) -> dict:
    """Read a ``sweep.json`` (a file, or the folder holding it): ``{"config": ..., "records": [...]}``."""
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
    records : what :func:`sweep` returns (or the ``records`` of a ``sweep.json``).

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


def _rates(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    defaults = SweepSettings()
    parser = ArgumentParser(prog="python -m phases.sweep", description=__doc__.split("\n\n")[0],
                     formatter_class=HelpFormatter)
    add_output_arguments(parser, out_help="output directory (sweep.json is written into it)", required=True)
    parser.add_argument("--noise-rates", type=_rates, default=None,
                        help="comma-separated noise rates (default: 0, 0.05, ... below (C-1)/C)")
    parser.add_argument("--seeds", type=positive_int, default=4, help="number of seeds per rate (seeds 0..k-1)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: the core count)")
    add_size_arguments(parser, n=defaults.n, m=defaults.m, p=defaults.p, classes=defaults.num_classes,
                       dim=defaults.dim)
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="steps per run")
    parser.add_argument("--record-every", type=positive_int, default=defaults.record_every,
                        help="record every k-th step (phase boundaries are read at this resolution, in steps)")
    parser.add_argument("--gamma", type=float, default=defaults.gamma, help="weight of the clean-subset loss")
    return parser


def run(argv: list[str] | None = None) -> list[dict]:
    """Run the sweep of command-line arguments; print its table; return the records."""
    args = build_parser().parse_args(argv)
    settings = SweepSettings(n=args.n, m=args.m, p=args.p, num_classes=args.classes, dim=args.dim,
                             steps=args.steps, record_every=args.record_every, gamma=args.gamma)
    rates = args.noise_rates if args.noise_rates is not None else default_noise_rates(args.classes)
    limit = (args.classes - 1) / args.classes
    if any(not 0 <= rate < limit for rate in rates) or not rates:
        raise UserError(f"--noise-rates must lie in [0, {limit:.4g}) for {args.classes} classes, got {rates}")
    if args.m < args.classes:
        raise UserError(f"--m must be at least the class count {args.classes}, got {args.m}")
    if args.record_every > args.steps:
        raise UserError(f"--record-every must be at most --steps = {args.steps}, got {args.record_every}")
    try:  # every run's configuration, memory estimate included, before any work
        for rate in rates:
            simulation_config(rate, 0, settings).validate()
    except ValueError as error:
        raise UserError(str(error)) from None
    refuse_jax_cache()
    command = "python -m phases.sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    output = OutputDirectory(args.out, args.overwrite, command=command)
    from tqdm import tqdm

    started = time.perf_counter()
    total = len(rates) * args.seeds
    from dynamics.simulator import DivergenceError

    with output as staging:
        with tqdm(total=total, unit="run", file=sys.stderr, disable=None) as bar:
            try:
                records = sweep(rates, range(args.seeds), settings, workers=args.workers,
                                progress=lambda record: bar.update())
            except DivergenceError as error:
                raise UserError(str(error)) from None
        write_json(os.path.join(staging, "sweep.json"), {
            "command": command,
            "config": {"noise_rates": rates, "seeds": list(range(args.seeds)), "workers": args.workers,
                       "settings": settings_dict(settings), "versions": versions(),
                       "wall_s": time.perf_counter() - started},
            "records": records,
        })
    print(summary_table(records))
    print(f"Wrote {os.path.join(args.out, 'sweep.json')} ({total} runs, {time.perf_counter() - started:.0f} s)")
    return records



def main(argv: list[str] | None = None) -> int:
    return run_main("python -m phases.sweep", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
