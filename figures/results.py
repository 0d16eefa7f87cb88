"""Where figures get their inputs: saved results in a folder, produced there on demand for a fresh regeneration.

Layout of a results folder (what ``--from DIR`` reads and ``--save-results DIR`` keeps):

======================  ==================================================================
``gamma1/``             ``python -m phases.simulate --save-kernels --out DIR/gamma1``
                        (default problem, gamma = 1; figures 1-5)
``gamma0/``             ``python -m phases.simulate --gamma 0 --out DIR/gamma0`` (figure 2)
``sweep/sweep.json``    ``python -m phases.sweep --out DIR/sweep`` (figure 6)
``finite/``             ``python -m phases.finite --out DIR/finite`` (figure 7)
``compare/*/``          ``python -m phases.compare --data D [--noise R] --out DIR/compare/NAME``,
                        one folder per data set and noise rate, CIFAR-10N label sets
                        included (figure 8; figure 11 draws one of them, with its
                        ``weights.npz``)
``sign_pattern/``       figure 12: ``NAME.json`` (``label``, ``settings``, ``sign_pattern``;
                        a fresh regeneration writes those of digits and of digits 1 vs 7,
                        ``--quick`` the latter only),
                        and any ``python -m phases.simulate --out DIR/sign_pattern/NAME``
                        run (its ``summary.json``), next to the ``gamma1/`` run's
======================  ==================================================================

Everything is computed by the packages that own it (``phases``, ``dynamics``);
this module only runs their commands and reads what they wrote. Loaded results
are cached, so the figures of one invocation share one simulation.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import zipfile

import numpy as np

from dynamics.problem import Problem
from dynamics.trajectory import Trajectory
from phases.detect import PhaseParams, Phases, detect_phases
from phases.experiments import FiniteWidthConfig, SimulationConfig


class MissingResults(Exception):
    """A figure's inputs are absent (or could not be produced); the figure is skipped with this message."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One saved ``python -m phases.simulate`` run.

    trajectory : the recorded run.  phases : its boundaries, detected with the
    run's own phase parameters.  problem : the problem it ran on.
    config : the run's ``config.json``.  path : its folder.
    """

    trajectory: Trajectory
    phases: Phases
    problem: Problem
    config: dict
    path: str

    def kernel_train(self) -> np.ndarray:
        """``K_XX : (n, n)``, from ``kernels.npz`` when saved, else evaluated from the saved kernel spec."""
        saved = os.path.join(self.path, "kernels.npz")
        if os.path.isfile(saved):
            with np.load(saved) as data:
                return data["K_XX"]
        from kernels import KernelSpec, kernel

        return kernel(KernelSpec(**self.config["kernel"]), self.problem.X)


def load_run(path: str) -> Run:
    """Read a ``python -m phases.simulate`` output folder."""
    needed = ("config.json", "problem.npz", "trajectory.npz")
    missing = [name for name in needed if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise MissingResults(f"{path} lacks {', '.join(missing)} "
                             f"(write it with python -m phases.simulate --out {path})")
    with open(os.path.join(path, "config.json")) as handle:
        config = json.load(handle)
    trajectory = Trajectory.load(os.path.join(path, "trajectory.npz"))
    with np.load(os.path.join(path, "problem.npz")) as data:
        problem = Problem.from_arrays(dict(data), name=config.get("problem_name", "problem"))
    params = PhaseParams(**config["phase_parameters"]) if "phase_parameters" in config else PhaseParams()
    return Run(trajectory, detect_phases(trajectory, params), problem, config, path)


def _pattern_label(settings: dict) -> str:
    """A short name of a simulate configuration's problem: its dataset (``gmm, C=4``), and its pair."""
    dataset = str(settings.get("dataset") or "gmm")
    label = f"gmm, C={settings.get('classes')}" if dataset == "gmm" else dataset.removesuffix("-binary")
    pair = settings.get("pair")
    return label + (f" {pair[0]} vs {pair[1]}" if pair else "")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Sizes of a fresh regeneration (``quick``: small enough for the whole set in a few minutes on 2 cores)."""

    simulation: SimulationConfig  # the default problem's runs (gamma and C7 draws set per run)
    gamma1_draws: int  # C7 perturbation draws of the gamma = 1 run
    sweep_rates: tuple[float, ...]
    sweep_seeds: int
    sweep_settings: dict  # fields of phases.sweep.SweepSettings
    finite: FiniteWidthConfig
    compare_runs: tuple[tuple[str, float], ...]  # (data set, noise rate) of the method comparison
    compare_options: dict  # keyword arguments of phases.comparison.compare
    compare_jobs: int | None  # processes of the comparison (None: the sweep's workers)

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(simulation=SimulationConfig(n=300, m=40, p=300, steps=600), gamma1_draws=2,
                       sweep_rates=(0.0, 0.35, 0.7), sweep_seeds=2,
                       sweep_settings={"n": 200, "m": 40, "p": 200, "steps": 400},
                       finite=FiniteWidthConfig(widths=(64, 512), seeds=(0,), steps=120),
                       compare_runs=(("gmm", 0.2), ("gmm", 0.6), ("digits", 0.2), ("digits", 0.6)),
                       # one process: spawning workers that import torch costs more than these tiny runs
                       compare_options={"seeds": 1, "epochs": 2, "n_train": 300}, compare_jobs=1)
        # docs/theory.md section 5 defaults for the runs; the sweep at the same sizes, every 0.1 up to 0.7;
        # the finite-width check and the comparison at their own defaults (3 seeds each).
        return cls(simulation=SimulationConfig(), gamma1_draws=4,
                   sweep_rates=tuple(round(0.1 * k, 10) for k in range(8)), sweep_seeds=4, sweep_settings={},
                   finite=FiniteWidthConfig(),
                   compare_runs=tuple((data, rate) for data in ("gmm", "digits") for rate in (0.0, 0.2, 0.4, 0.6)),
                   compare_options={}, compare_jobs=None)


class Results:
    """The inputs of every figure, read from ``root`` and, when ``fresh``, produced there first.

    Parameters
    ----------
    root : the results folder (layout in the module docstring).
    fresh : produce missing results by running the owning commands; otherwise only read.
    quick : small sizes for a fresh regeneration.
    workers : processes for the sweep (``None``: the core count).
    bar : a ``tqdm`` bar whose postfix names what is being computed, or ``None``.
    """

    def __init__(self, root: str, *, fresh: bool, quick: bool = False, workers: int | None = None, bar=None):
        self.root, self.fresh, self.quick, self.workers, self.bar = root, fresh, quick, workers, bar
        self.sizes = Sizes.for_mode(quick)
        self._cache = {}

    def _status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def _cached(self, key, load):
        if key not in self._cache:
            try:
                self._cache[key] = load()
            except MissingResults as error:
                self._cache[key] = error
            except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as error:
                # Saved results that exist but cannot be read: one line naming what, not a traceback.
                name = key if isinstance(key, str) else "-".join(map(str, key))
                text = " ".join(str(error).split())[:300]
                self._cache[key] = MissingResults(f"the saved {name} results under {self.root} cannot be read: "
                                                  f"{type(error).__name__}: {text}")
        value = self._cache[key]
        if isinstance(value, MissingResults):
            raise value
        return value

    # ------------------------------------------------------------------ runs of the default problem

    def run(self, gamma: int) -> Run:
        """The default problem's run with ``gamma`` = 1 or 0."""
        return self._cached(("run", gamma), lambda: self._run(gamma))

    def _run(self, gamma: int) -> Run:
        path = os.path.join(self.root, f"gamma{gamma}")
        if self.fresh and not os.path.isfile(os.path.join(path, "trajectory.npz")):
            from phases.cli import OutputDirectory
            from phases.experiments import run_simulation

            config = dataclasses.replace(self.sizes.simulation, gamma=float(gamma),
                                         perturb_draws=self.sizes.gamma1_draws if gamma == 1 else 0)
            self._status(f"simulating the default problem, gamma={gamma}")
            with OutputDirectory(path, overwrite=True) as staging:
                run_simulation(config).save(staging, kernels=gamma == 1)
        if not os.path.isdir(path):
            flags = "--save-kernels" if gamma == 1 else "--gamma 0"
            raise MissingResults(f"needs results of python -m phases.simulate {flags} --out {path}")
        return load_run(path)

    # ------------------------------------------------------------------ kernel sign patterns (figure 12)

    def sign_patterns(self) -> list[tuple[str, dict]]:
        """Figure 12's inputs: ``(label, sign_pattern)`` of the default problem (the ``gamma1/`` run), of every
        ``DIR/sign_pattern/NAME.json`` and of every simulate run in ``DIR/sign_pattern/NAME/``. A fresh
        regeneration first writes ``digits.json`` and ``digits-binary.json`` (digits, and digits 1 vs 7 on one
        output: the sign pattern of their kernels, no simulation; ``--quick``: the latter only)."""
        return self._cached("sign_patterns", self._sign_patterns)

    def _sign_patterns(self) -> list[tuple[str, dict]]:
        from phases.sign_pattern import config_sign_pattern

        folder = os.path.join(self.root, "sign_pattern")
        if self.fresh:
            simulation = self.sizes.simulation
            problems = (("digits", SimulationConfig(dataset="digits", n=simulation.n, m=simulation.m)),
                        ("digits-binary", SimulationConfig(dataset="digits-binary", n=240, m=20)))
            for name, config in problems[1:] if self.quick else problems:  # quick: one kernel evaluation
                path = os.path.join(folder, f"{name}.json")
                if not os.path.isfile(path):
                    from phases.cli import write_json

                    self._status(f"kernel sign pattern of {name}")
                    settings = dataclasses.asdict(config)
                    write_json(path, {"label": _pattern_label(settings), "settings": settings,
                                      "sign_pattern": config_sign_pattern(config)})
        if self.fresh:
            self.run(1)
        default = os.path.join(self.root, "gamma1", "summary.json")
        runs = {}
        for summary_path in [default] + sorted(glob.glob(os.path.join(folder, "*", "summary.json"))):
            if not os.path.isfile(summary_path):
                continue
            with open(summary_path) as handle:
                summary = json.load(handle)
            if "sign_pattern" not in summary:  # a run of an older version
                continue
            with open(os.path.join(os.path.dirname(summary_path), "config.json")) as handle:
                settings = json.load(handle)["settings"]
            runs[summary_path] = (_pattern_label(settings), summary["sign_pattern"])
        order = {"digits.json": 0, "digits-binary.json": 1}
        records = []
        for path in sorted(glob.glob(os.path.join(folder, "*.json")),
                           key=lambda path: (order.get(os.path.basename(path), 2), path)):
            with open(path) as handle:
                record = json.load(handle)
            records.append((record["label"], record["sign_pattern"]))
        # The default problem first, then the records (digits, digits 1 vs 7, others), then the other runs.
        first = [runs.pop(default)] if default in runs else []
        patterns = first + records + list(runs.values())
        if not patterns:
            raise MissingResults(f"needs python -m phases.simulate runs (with their summary.json) in {default} or "
                                 f"under {folder}/, or sign pattern records {folder}/NAME.json")
        return patterns

    # ------------------------------------------------------------------ noise-rate sweep

    def sweep(self) -> dict:
        """``sweep.json`` of :mod:`phases.sweep`: ``{"config": ..., "records": [...]}``."""
        return self._cached("sweep", self._sweep)

    def _sweep(self) -> dict:
        from phases import sweep as sweep_module

        folder = os.path.join(self.root, "sweep")
        # A sweep.json of a fresh regeneration, or the records.jsonl of python -m phases.sweep --out DIR/sweep.
        written = any(os.path.isfile(os.path.join(folder, name)) for name in ("sweep.json", sweep_module.RECORDS))
        if self.fresh and not written:
            settings = sweep_module.SweepSettings(**self.sizes.sweep_settings)
            rates = list(self.sizes.sweep_rates)
            seeds = list(range(self.sizes.sweep_seeds))
            total, done = len(rates) * len(seeds), [0]

            def progress(record):
                done[0] += 1
                self._status(f"noise-rate sweep: {done[0]}/{total} runs")

            self._status(f"noise-rate sweep: 0/{total} runs")
            records = sweep_module.sweep(rates, seeds, settings, workers=self.workers, progress=progress)
            from phases.cli import OutputDirectory, write_json

            with OutputDirectory(folder, overwrite=True) as staging:
                write_json(os.path.join(staging, "sweep.json"), {
                    "command": "figures (fresh regeneration" + (", --quick)" if self.quick else ")"),
                    "config": {"noise_rates": rates, "seeds": seeds, "workers": self.workers,
                               "settings": sweep_module.settings_dict(settings)},
                    "records": records,
                })
        elif not written:
            raise MissingResults(f"needs results of python -m phases.sweep --out {folder}")
        return sweep_module.load(folder)

    # ------------------------------------------------------------------ finite widths and methods (figures 7, 8)

    def finite(self) -> dict:
        """Figure 7's inputs from ``DIR/finite`` (``python -m phases.finite --out DIR/finite``).

        Returns ``{"summary": summary.json, "linearized": Trajectory or None,
        "finite": {(width, seed): Trajectory}}`` from ``linearized.npz`` and
        ``finite_w<width>_s<seed>.npz``.
        """
        return self._cached("finite", self._finite)

    def _finite(self) -> dict:
        path = os.path.join(self.root, "finite")
        summary_path = os.path.join(path, "summary.json")
        if self.fresh and not os.path.isfile(summary_path):
            from phases.cli import OutputDirectory
            from phases.experiments import run_finite_width

            self._status("finite widths against the linearized model")
            with OutputDirectory(path, overwrite=True) as staging:
                run_finite_width(self.sizes.finite).save(staging)
        if not os.path.isfile(summary_path):
            raise MissingResults(f"needs results of python -m phases.finite; pass --from DIR with "
                                 f"DIR/finite/summary.json (none at {summary_path})")
        with open(summary_path) as handle:
            summary = json.load(handle)
        linear_path = os.path.join(path, "linearized.npz")
        linearized = Trajectory.load(linear_path) if os.path.isfile(linear_path) else None
        finite = {}
        for file in glob.glob(os.path.join(path, "finite_w*_s*.npz")):
            match = re.fullmatch(r"finite_w(\d+)_s(\d+)\.npz", os.path.basename(file))
            if match:
                finite[(int(match.group(1)), int(match.group(2)))] = Trajectory.load(file)
        return {"summary": summary, "linearized": linearized, "finite": finite}

    def compare(self) -> list[dict]:
        """Figure 8's inputs: the records of every ``results.json`` under ``DIR/compare`` (any depth).

        A fresh regeneration runs ``python -m phases.compare --data D --noise R --out
        DIR/compare/D-noiseR`` for the synthetic data sets and rates of :class:`Sizes` whose folder is
        missing. CIFAR-10N takes about an hour per label set on 2 cores, so it is only read: put the
        output of ``python -m phases.compare --data cifar10n-worse --out DIR/compare/cifar10n-worse``
        (and ``-aggre``, ``-random1``) there beforehand.
        """
        return self._cached("compare", self._compare)

    def _compare(self) -> list[dict]:
        from dynamics.methods import TrainingDiverged
        from figures.methods import SHOWN, records_from_json
        from phases.cli import OutputDirectory, UserError
        from phases.comparison import compare, write_results

        path = os.path.join(self.root, "compare")
        if self.fresh:
            failures = []
            for data, rate in self.sizes.compare_runs:
                out = os.path.join(path, f"{data}-noise{rate:g}")
                if os.path.isfile(os.path.join(out, "results.json")):
                    continue
                jobs = self.sizes.compare_jobs or self.workers or os.cpu_count() or 1
                self._status(f"comparing methods on {data}, noise {rate:g}")
                try:
                    results = compare(data, SHOWN, noise_rate=rate, jobs=jobs, **self.sizes.compare_options)
                    with OutputDirectory(out, overwrite=True) as staging:
                        write_results(results, staging)
                except (ValueError, TrainingDiverged, UserError) as error:
                    failures.append(f"{data} at noise {rate:g}: {error}")
            if failures and len(failures) == len(self.sizes.compare_runs):
                raise MissingResults("; ".join(dict.fromkeys(failures)))
        files = sorted(glob.glob(os.path.join(path, "**", "results.json"), recursive=True))
        if not files:
            raise MissingResults("needs results of python -m phases.compare; pass --from DIR with results.json "
                                 f"files under DIR/compare/ (none at {path})")
        records = []
        for file in files:
            with open(file) as handle:
                records += records_from_json(json.load(handle), source=os.path.relpath(file, path))
        if not records:
            raise MissingResults(f"no method records found in {', '.join(files)}")
        return records

    def compare_weights(self) -> dict:
        """Figure 11's inputs: the per-epoch weights and noise masks of one comparison under ``DIR/compare``.

        Among the folders holding ``results.json`` and a ``weights.npz`` with noise masks
        (``noisy/seedS``, written by ``python -m phases.compare`` since it records them), a CIFAR-10N
        label set is preferred (worse, aggre, random1-3), then digits before the Gaussian mixture at the
        highest noise rate. To draw another one, pass ``--from`` a folder whose ``compare/`` holds only it.
        A fresh regeneration first runs the comparisons of :meth:`compare`.

        Returns ``{"source": the folder relative to DIR/compare, "title", "warmup_epochs",
        "epoch_weights": {method: {seed: (epochs, n)}}, "noisy": {seed: (n,) bool}}``.
        """
        return self._cached("compare_weights", self._compare_weights)

    def _compare_weights(self) -> dict:
        if self.fresh:
            self.compare()
        path = os.path.join(self.root, "compare")
        label_sets = ("worse", "aggre", "random1", "random2", "random3")
        candidates, unmasked = [], []
        for file in sorted(glob.glob(os.path.join(path, "**", "results.json"), recursive=True)):
            folder = os.path.dirname(file)
            weights = os.path.join(folder, "weights.npz")
            if not os.path.isfile(weights):
                continue
            with np.load(weights) as data:
                if not any(key.startswith("noisy/seed") for key in data.files):
                    unmasked.append(os.path.relpath(folder, path))
                    continue
            with open(file) as handle:
                payload = json.load(handle)
            data_name = str(payload.get("data", ""))
            problem = (payload.get("setup") or {}).get("problem") or {}
            if data_name.startswith("cifar10n"):
                label_set = data_name.removeprefix("cifar10n-")
                rank = (0, label_sets.index(label_set) if label_set in label_sets else len(label_sets), 0.0)
            else:
                rank = (1, {"digits": 0, "gmm": 1}.get(data_name, 2), -float(problem.get("noise_rate") or 0.0))
            candidates.append((rank, os.path.relpath(folder, path), payload))
        if not candidates:
            if unmasked:
                raise MissingResults(f"the weights.npz under {path} ({', '.join(unmasked)}) carry no noise masks "
                                     "(noisy/seedS); rerun python -m phases.compare, which now writes them")
            raise MissingResults("needs results of python -m phases.compare with weights.npz; pass --from DIR with "
                                 f"DIR/compare/NAME/results.json and weights.npz (none at {path})")
        _, source, payload = min(candidates, key=lambda candidate: candidate[0])
        epoch_weights, noisy = {}, {}
        with np.load(os.path.join(path, source, "weights.npz")) as data:
            for key in data.files:
                parts = key.split("/")
                if len(parts) == 2 and parts[0] == "noisy" and parts[1].startswith("seed"):
                    noisy[int(parts[1][4:])] = data[key].astype(bool)
                elif len(parts) == 3 and parts[2] == "epochs" and parts[1].startswith("seed"):
                    epoch_weights.setdefault(parts[0], {})[int(parts[1][4:])] = data[key]
        order = [m for m in payload.get("methods") or [] if m in epoch_weights]
        epoch_weights = {m: epoch_weights[m] for m in order + sorted(set(epoch_weights) - set(order))}
        setup = payload.get("setup") or {}
        data_name = str(payload.get("data") or source)
        if data_name.startswith("cifar10n"):
            title = f"CIFAR-10N {data_name.removeprefix('cifar10n-')}"
        else:
            rate = (setup.get("problem") or {}).get("noise_rate")
            title = {"gmm": "Gaussian mixture", "digits": "digits"}.get(data_name, data_name)
            title += f", noise rate {rate:g}" if isinstance(rate, (int, float)) else ""
        problems = payload.get("problems") or []
        n = {info.get("n") for info in problems}
        realised = [info.get("realised_noise_rate") for info in problems
                    if isinstance(info.get("realised_noise_rate"), (int, float))]
        details = [f"{payload['profile']} profile" if payload.get("profile") else None,
                   f"n = {n.pop():,}" if len(n) == 1 and isinstance(next(iter(n)), int) else None,
                   f"{100 * float(np.mean(realised)):.1f}% noisy labels" if realised else None]
        details = [detail for detail in details if detail]
        budget = setup.get("budget") or {}
        return {"source": source, "title": title + (f" ({', '.join(details)})" if details else ""),
                "warmup_epochs": budget.get("warmup_epochs"), "epoch_weights": epoch_weights, "noisy": noisy}
