"""Train every noisy-label method end to end on one problem and compare them over seeds.

    python -m dynamics.compare --data cifar10n-worse --seeds 3 --out runs/cmp-worse

Every method of :mod:`dynamics.baselines` trains the same network with the
same optimiser, schedule, batches, epochs and seeds (THEORY.md section 7).
Reports, as mean and standard deviation over seeds: test accuracy,
clean-detection precision, recall and F1 of ``{w > 0}``, AUC of the weights,
weight mass on noisy examples and wall time per epoch. Prints the table and
writes ``results.json`` (every per-seed number, the full configuration and
package versions), ``results.md`` and ``weights.npz`` into ``--out``.

Profiles: ``cpu`` (the default) trains a 0.5-width SmallCNN on a class-balanced
subset of CIFAR-10N (sizes in the output) so that all methods x 3 seeds fit in
under an hour on 2 shared cores; ``gpu`` is the paper's scale (ResNet-34 on the
whole training split) and needs an accelerator. ``gmm`` and ``digits`` use a
two-layer MLP and are the same in both profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dynamics.cli import ArgumentParser, OutputDirectory, UserError, positive_int, run_main, versions, write_json

DATASETS = ("gmm", "digits", "cifar10n-worse", "cifar10n-aggre", "cifar10n-random1")
PROFILES = ("cpu", "gpu")
METRICS = ("test_accuracy", "precision", "recall", "f1", "auc", "noisy_mass", "wall_time_per_epoch",
           "peak_memory_mb", "score_auc")
SCHEMA = "dynamics.compare/1"
# Relative cost of one epoch (ERM = 1), measured on the CPU profile: expensive runs are scheduled first.
_COST = {"meta": 3.4, "l2rw": 3.4, "coteaching": 2.0, "surrogate": 1.2, "fine": 1.15, "cleanlab": 1.3}

# CPU profile of the CIFAR-10N problems, sized by measurement on 2 cores (2 runs in parallel, 1 thread each):
# an ERM epoch costs about 0.7 ms per training image on an idle core, meta / l2rw 3.5-4.5 times an ERM epoch,
# co-teaching 2 times. All methods x 3 seeds on cifar10n-worse took 14 min at this size, 11 min at 4000 images
# x 6 epochs while other jobs shared the machine: about 4x headroom to the one-hour budget.
_CIFAR_CPU = {"n_train": 6000, "n_meta": 1000, "n_test": 2000, "width": 0.5, "epochs": 8, "batch_size": 128,
              "meta_batch_size": 32, "lr": 0.05, "warmup_epochs": 2, "eval_every": 0}
_CIFAR_GPU = {"n_train": None, "n_meta": 1000, "n_test": None, "epochs": 100, "batch_size": 128,
              "meta_batch_size": 128, "lr": 0.1, "warmup_epochs": 10, "eval_every": 5}
_VECTOR = {"n_train": 1000, "n_meta": 100, "n_test": 1000, "hidden": (256, 256), "epochs": 20, "batch_size": 64,
           "meta_batch_size": 64, "lr": 0.05, "warmup_epochs": 2, "eval_every": 1}


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run needs besides method and seed, resolved from data set, profile and overrides.

    Attributes
    ----------
    data : one of :data:`DATASETS`.
    profile : one of :data:`PROFILES`.
    problem : keyword arguments of the problem generator (sizes, noise).
    network : ``{"kind": "mlp" | "cnn" | "resnet34", ...}``.
    budget : the :class:`~dynamics.baselines.TrainBudget` shared by all methods.
    params : the :class:`~dynamics.baselines.MethodParams`.
    data_dir : folder of the CIFAR files (CIFAR problems only).
    description : one line stating the scale (subset, network) for reports.
    """

    data: str
    profile: str
    problem: dict
    network: dict
    budget: object
    params: object
    data_dir: str | None
    description: str

    def to_json(self) -> dict:
        return {"data": self.data, "profile": self.profile, "problem": self.problem, "network": self.network,
                "budget": dataclasses.asdict(self.budget), "params": dataclasses.asdict(self.params),
                "data_dir": self.data_dir, "description": self.description}


def resolve_setup(data: str, profile: str = "cpu", *, epochs: int | None = None, noise_rate: float | None = None,
                  noise_type: str = "symmetric", n_train: int | None = None, data_dir=None,
                  budget_overrides: dict | None = None, params=None, device: str | None = None) -> Setup:
    """The problem, network and budget of ``data`` under ``profile``, with overrides applied.

    Parameters
    ----------
    data : one of :data:`DATASETS`.
    profile : ``"cpu"`` or ``"gpu"`` (only CIFAR problems differ).
    epochs : overrides the profile's epochs.
    noise_rate, noise_type : synthetic label noise of ``gmm`` / ``digits``
        (default 0.4 symmetric); CIFAR-10N noise is real, so these must stay unset there.
    n_train : overrides the number of training examples ``n``.
    data_dir : CIFAR data folder (default ``dynamics.cifar.DEFAULT_DATA_DIR``).
    budget_overrides : fields of :class:`~dynamics.baselines.TrainBudget` to replace.
    params : :class:`~dynamics.baselines.MethodParams` (default: its defaults).
    device : torch device (default ``"cpu"``, ``"cuda"`` for the gpu profile).

    Raises
    ------
    ValueError
        An unknown data set or profile, or an override that does not fit.
    """
    from dynamics.baselines import MethodParams, TrainBudget

    if data not in DATASETS:
        raise ValueError(f"data must be one of {', '.join(DATASETS)}; got {data!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    params = MethodParams() if params is None else params
    device = device or ("cuda" if profile == "gpu" else "cpu")
    cifar = data.startswith("cifar10n-")
    if cifar:
        if noise_rate is not None or noise_type != "symmetric":
            raise ValueError(f"{data} has real human label noise; --noise and --noise-type apply to gmm and "
                             "digits only")
        base = dict(_CIFAR_CPU if profile == "cpu" else _CIFAR_GPU)
        problem = {"label_set": data.removeprefix("cifar10n-"), "n_train": base["n_train"],
                   "n_meta": base["n_meta"], "n_test": base["n_test"]}
        network = ({"kind": "cnn", "width": base["width"], "num_classes": 10} if profile == "cpu"
                   else {"kind": "resnet34", "num_classes": 10})
        from dynamics.cifar import DEFAULT_DATA_DIR

        data_dir = str(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
    else:
        base = dict(_VECTOR)
        noise_rate = 0.4 if noise_rate is None else noise_rate
        problem = {"n": base["n_train"], "m": base["n_meta"], "noise_rate": noise_rate, "noise_type": noise_type}
        if data == "gmm":
            problem |= {"p": base["n_test"]}
        network = {"kind": "mlp", "hidden": list(base["hidden"])}
        data_dir = None
    if n_train is not None:
        problem["n_train" if cifar else "n"] = int(n_train)
    budget_fields = {key: base[key] for key in ("epochs", "batch_size", "meta_batch_size", "lr", "warmup_epochs",
                                                "eval_every")}
    if epochs is not None:
        budget_fields["epochs"] = int(epochs)
    budget_fields |= dict(budget_overrides or {})
    budget_fields["device"] = device
    budget = TrainBudget(**budget_fields)

    if cifar:
        size = "the whole training split" if problem["n_train"] is None else f"{problem['n_train']} training images"
        test = "the official test split" if problem["n_test"] is None else f"{problem['n_test']} test images"
        net = (f"SmallCNN(width={network['width']})" if network["kind"] == "cnn" else "ResNet-34")
        description = (f"{profile.upper()} profile: CIFAR-10N {problem['label_set']}, {size} (class-balanced "
                       f"{problem['n_meta']}-image clean subset held out), {test}, {net}, {budget.epochs} epochs")
    else:
        description = (f"{data}: n={problem['n']}, m={problem['m']}, {problem['noise_type']} noise "
                       f"{problem['noise_rate']}, MLP {tuple(network['hidden'])}, {budget.epochs} epochs")
    return Setup(data, profile, problem, network, budget, params, data_dir, description)


def _build_problem(setup: Setup, seed: int):
    """The seed's problem as numpy arrays: a ``Problem`` or an ``ImageProblem``."""
    rng = np.random.default_rng([int(seed), 0])
    if setup.data == "gmm":
        from dynamics.problem import gaussian_mixture

        return gaussian_mixture(rng, **setup.problem)
    if setup.data == "digits":
        from dynamics.problem import digits

        return digits(rng, **setup.problem)
    from dynamics.cifar import cifar10n_problem

    return cifar10n_problem(setup.problem["label_set"], rng, data_dir=setup.data_dir,
                            n_train=setup.problem["n_train"], n_meta=setup.problem["n_meta"],
                            n_test=setup.problem["n_test"])


def _training_data(setup: Setup, problem):
    from dynamics.baselines import TrainingData

    if setup.data.startswith("cifar10n-"):
        return TrainingData.from_images(problem, device=setup.budget.device)
    return TrainingData.from_problem(problem, device=setup.budget.device)


def _factory(network: dict, data):
    from dynamics.baselines import cnn_factory, mlp_factory, resnet34_factory

    if network["kind"] == "mlp":
        return mlp_factory(int(data.X.shape[1]), data.num_classes, tuple(network["hidden"]))
    if network["kind"] == "cnn":
        return cnn_factory(data.num_classes, network["width"])
    return resnet34_factory(data.num_classes)


# ----------------------------------------------------------------------------- runs


def _set_threads(threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(int(threads))
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            # numpy / scikit-learn BLAS too: on a shared machine extra threads spin instead of working.
            threadpool_limits(int(threads))


def _run_one(setup: Setup, problem, method: str, seed: int, threads: int | None = None,
             progress: Callable | None = None) -> dict:
    """Train ``method`` on one seed's problem; a JSON-ready record (weights kept apart)."""
    from dynamics.baselines import MethodUnavailable, detection_metrics, train

    _set_threads(threads)
    data = _training_data(setup, problem)
    try:
        result = train(method, data, _factory(setup.network, data), setup.budget, seed, setup.params,
                       progress=progress)
    except MethodUnavailable as error:
        return {"method": method, "seed": int(seed), "skipped": str(error)}
    noisy = data.noisy
    metrics = detection_metrics(result.weights, noisy)
    score_auc = math.nan
    if result.score is not None:
        from dynamics.trajectory import weight_stats

        score_auc = float(weight_stats(result.score[None], noisy)["auc"][0])
    return {
        "method": method, "seed": int(seed), "test_accuracy": result.test_accuracy, **metrics,
        "score_auc": score_auc, "wall_time_per_epoch": result.wall_time_per_epoch,
        "peak_memory_mb": result.peak_memory_mb, "realised_noise_rate": data.noise_rate,
        "parameters": result.config["parameters"], "forget_rate": result.config["forget_rate"],
        "history": result.history, "weights": result.weights,
    }


def _worker(setup: Setup, problem, method: str, seed: int, threads: int | None) -> dict:
    return _run_one(setup, problem, method, seed, threads)


def _summary(runs: list[dict], methods: Sequence[str]) -> dict:
    summary = {}
    for method in methods:
        rows = [run for run in runs if run["method"] == method and "skipped" not in run]
        if not rows:
            continue
        summary[method] = {}
        for metric in METRICS:
            values = np.array([row[metric] for row in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            summary[method][metric] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                "values": values.tolist(),
            }
    return summary


def compare(data: str, methods: Sequence[str] | None = None, seeds: Sequence[int] | int = 3, *,
            profile: str = "cpu", epochs: int | None = None, noise_rate: float | None = None,
            noise_type: str = "symmetric", n_train: int | None = None, data_dir=None,
            budget_overrides: dict | None = None, params=None, device: str | None = None, jobs: int = 1,
            threads: int | None = 1, progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train each method on each seed's problem and summarise over seeds (THEORY.md section 7).

    Parameters
    ----------
    data : one of :data:`DATASETS`.
    methods : names from :data:`dynamics.baselines.METHODS` (default: all;
        ``cleanlab`` is skipped, with the reason recorded, when absent).
    seeds : a count ``k`` (seeds ``0 .. k-1``) or explicit seeds. A seed fixes
        the problem draw (subset, clean subset, noise), the initial network
        and the batches, identically for every method.
    profile, epochs, noise_rate, noise_type, n_train, data_dir,
    budget_overrides, params, device : see :func:`resolve_setup`.
    jobs : runs trained in parallel processes (1: in this process).
    threads : torch / BLAS threads per run (None: leave as is). One is
        fastest on a shared 2-core machine, where spare threads spin.
    progress : show a progress bar (stderr) over all epochs of all runs.
    log : called with one line per finished run (e.g. ``print``).

    Returns
    -------
    dict, JSON-serialisable except ``"weights"``::

        schema      "dynamics.compare/1"
        data, profile, description
        methods     requested methods; seeds: list of int
        setup       resolved problem / network / budget / params (Setup.to_json)
        problems    per seed: {"seed", "name", "n", "m", "p", "num_classes", "realised_noise_rate"}
        runs        per (method, seed) that ran: {"method", "seed", "test_accuracy", "precision",
                    "recall", "f1", "auc", "noisy_mass", "mean_w_clean", "mean_w_noisy", "score_auc",
                    "wall_time_per_epoch" (s), "peak_memory_mb", "realised_noise_rate", "parameters",
                    "forget_rate", "history": {per-epoch lists}}
        skipped     {method: reason}
        summary     {method: {metric: {"mean", "std" (ddof=1, NaN for one seed), "values"}}}
                    for metric in METRICS
        weights     {method: {seed: (n,) float64 array}}  (not JSON; results.json omits it)
        versions, started (ISO time), wall_time_total (s), jobs, threads

    Raises
    ------
    ValueError
        Bad data, profile, methods, seeds or overrides.
    dynamics.cifar.DataError
        A missing or corrupt CIFAR file.
    """
    from dynamics.baselines import METHODS

    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {', '.join(METHODS)}; "
                         f"got {', '.join(methods) or 'none'}")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be a positive count or distinct non-negative integers; got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    setup = resolve_setup(data, profile, epochs=epochs, noise_rate=noise_rate, noise_type=noise_type,
                          n_train=n_train, data_dir=data_dir, budget_overrides=budget_overrides, params=params,
                          device=device)
    started_at = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    started = time.perf_counter()
    log = log or (lambda line: None)

    problems, problem_info = {}, []
    for seed in seeds:
        problems[seed] = _build_problem(setup, seed)
        n, m, p = problems[seed].sizes
        problem_info.append({"seed": seed, "name": problems[seed].name, "n": n, "m": m, "p": p,
                             "num_classes": problems[seed].num_classes,
                             "realised_noise_rate": problems[seed].noise_rate})
    if setup.budget.meta_batch_size > min(info["m"] for info in problem_info):
        raise ValueError(f"meta_batch_size {setup.budget.meta_batch_size} exceeds the clean subset")

    # Expensive runs first, so that parallel workers finish together.
    tasks = sorted(((method, seed) for seed in seeds for method in methods),
                   key=lambda task: -_COST.get(task[0], 1.0))
    total_epochs = len(tasks) * setup.budget.epochs
    runs = []
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (a log file gets the one-line-per-run log instead).
    with tqdm(total=total_epochs, unit="epoch", file=sys.stderr, disable=None if progress else True,
              leave=False) as bar:
        def finished(record):
            runs.append(record)
            done = len(runs)
            if "skipped" in record:
                line = f"[{done}/{len(tasks)}] seed {record['seed']} {record['method']}: skipped ({record['skipped']})"
            else:
                line = (f"[{done}/{len(tasks)}] seed {record['seed']} {record['method']}: test accuracy "
                        f"{record['test_accuracy']:.3f}, F1 {record['f1']:.3f}, AUC {record['auc']:.3f}, "
                        f"{record['wall_time_per_epoch']:.2f} s/epoch ({time.perf_counter() - started:.0f} s elapsed)")
            with tqdm.external_write_mode(file=sys.stderr):
                log(line)

        if jobs == 1:
            _set_threads(threads)
            for method, seed in tasks:
                bar.set_description(f"seed {seed} {method}")
                before = bar.n
                record = _run_one(setup, problems[seed], method, seed, threads,
                                  progress=lambda epoch, row: bar.update(1))
                bar.update(before + setup.budget.epochs - bar.n)
                finished(record)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: a forked torch process can deadlock in its thread pools.
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
            try:
                futures = [pool.submit(_worker, setup, problems[seed], method, seed, threads)
                           for method, seed in tasks]
                for future in as_completed(futures):
                    record = future.result()
                    bar.update(setup.budget.epochs)
                    finished(record)
            except BaseException:
                # Interrupted or failed: stop the workers now instead of waiting for their runs to end.
                for process in list((pool._processes or {}).values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()

    order = {(method, seed): index for index, (method, seed) in
             enumerate((method, seed) for method in methods for seed in seeds)}
    runs.sort(key=lambda run: order[(run["method"], run["seed"])])
    skipped = {run["method"]: run["skipped"] for run in runs if "skipped" in run}
    weights = {}
    for run in runs:
        if "weights" in run:
            weights.setdefault(run["method"], {})[run["seed"]] = run.pop("weights")
    return {
        "schema": SCHEMA, "data": data, "profile": profile, "description": setup.description,
        "methods": methods, "seeds": seeds, "setup": setup.to_json(), "problems": problem_info,
        "runs": [run for run in runs if "skipped" not in run], "skipped": skipped,
        "summary": _summary(runs, methods), "weights": weights, "versions": versions(),
        "started": started_at, "wall_time_total": time.perf_counter() - started, "jobs": jobs, "threads": threads,
    }


# ----------------------------------------------------------------------------- reports

_COLUMNS = (("test_accuracy", "test acc", 3), ("precision", "precision", 3), ("recall", "recall", 3),
            ("f1", "F1", 3), ("auc", "AUC", 3), ("noisy_mass", "noisy mass", 3),
            ("wall_time_per_epoch", "s/epoch", 2), ("peak_memory_mb", "peak MiB", 0))


def _cell(entry: dict, digits: int) -> str:
    mean, std = entry["mean"], entry["std"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (``mean ± std`` over seeds) of the comparison table."""
    header = ["method"] + [label for _, label, _ in _COLUMNS]
    rows = [[method] + [_cell(metrics[key], digits) for key, _, digits in _COLUMNS]
            for method, metrics in results["summary"].items()]
    return header, rows


def format_table(results: dict) -> str:
    """The comparison table as aligned plain text."""
    header, rows = table_rows(results)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) if i == 0 else text.rjust(width)
                       for i, (text, width) in enumerate(zip(line, widths))) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(results: dict, command: str | None = None) -> str:
    """``results.md``: what ran, the table and the notes."""
    header, rows = table_rows(results)
    noise = np.mean([info["realised_noise_rate"] for info in results["problems"]])
    setup = results["setup"]
    budget = setup["budget"]
    lines = [f"# Noisy-label methods on {results['problems'][0]['name']}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        f"{results['description']}; realised training noise rate {noise:.3f}; seeds {results['seeds']}; "
        f"mean ± standard deviation over seeds (ddof=1).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"Budget shared by all methods: SGD (momentum {budget['momentum']}, weight decay {budget['weight_decay']}), "
        f"learning rate {budget['lr']} with a per-step cosine to 0, batch {budget['batch_size']}, clean batch "
        f"{budget['meta_batch_size']}, clean-subset weight gamma={budget['gamma']}, warm-up "
        f"{budget['warmup_epochs']} epochs, augmentation {'on' if budget['augment'] else 'off'} (images only).",
        "Precision / recall / F1: `{w > 0}` as the detected clean set against the true clean mask; AUC of the "
        "final weights as a clean score (ties 1/2); noisy mass: share of the total weight on noisy examples; "
        f"s/epoch: training wall time per epoch ({results['jobs']} parallel run(s), {results['threads']} thread(s) "
        "each, on a machine possibly shared with other work), evaluation excluded; peak MiB: resident memory "
        "above the run's start (CUDA: allocated device memory).",
    ]
    for method, reason in results["skipped"].items():
        lines.append(f"Skipped {method}: {reason}.")
    lines += ["", f"Total wall time {results['wall_time_total'] / 60:.1f} min, started {results['started']}; "
                  f"versions {json.dumps(results['versions'])}.", ""]
    return "\n".join(lines)


def write_results(results: dict, staging: str, command: str | None = None) -> None:
    """Write ``results.json`` (NaN as null), ``results.md`` and ``weights.npz`` into ``staging``."""
    payload = {key: value for key, value in results.items() if key != "weights"}
    payload["command"] = command
    write_json(os.path.join(staging, "results.json"), payload)
    with open(os.path.join(staging, "results.md"), "w") as handle:
        handle.write(format_markdown(results, command))
    arrays = {f"{method}/seed{seed}": w for method, per_seed in results["weights"].items()
              for seed, w in per_seed.items()}
    np.savez(os.path.join(staging, "weights.npz"), **arrays)


# ----------------------------------------------------------------------------- command line


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    # Options whose default depends on the profile say so in their help; "(default: None)" would mislead.
    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _seeds(text):
    parts = [part for part in text.replace(" ", "").split(",")]
    try:
        if len(parts) == 1:
            count = int(parts[0])
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(part) for part in parts if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a count (3) or a list (0,1,2), got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def _methods(text):
    from dynamics.baselines import METHODS

    if text == "all":
        return list(METHODS)
    names = [name for name in text.replace(" ", "").split(",") if name]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(METHODS)} or 'all'")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is repeated in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from dynamics.baselines import METHODS

    parser = ArgumentParser(prog="python -m dynamics.compare", description=__doc__.split("\n\n")[0],
                     formatter_class=_Formatter)
    parser.add_argument("--data", required=True, choices=DATASETS,
                        help="problem: Gaussian mixture, scikit-learn digits, or CIFAR-10 with a CIFAR-10N label set")
    parser.add_argument("--methods", type=_methods, default="all",
                        help=f"comma-separated subset of {','.join(METHODS)}, or 'all' "
                             "(cleanlab is an optional extra, skipped with a message when not installed)")
    parser.add_argument("--seeds", type=_seeds, default="3", help="a count k (seeds 0..k-1) or a list such as 0,1,2")
    parser.add_argument("--profile", choices=PROFILES, default="cpu",
                        help="cpu: subset + SmallCNN, under an hour for all methods x 3 seeds on 2 cores; "
                             "gpu: ResNet-34 on the whole training split (CIFAR only)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs (default: the profile's; cifar cpu 8, cifar gpu 100, gmm/digits 20)")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help="training examples n (default: the profile's; cifar cpu 6000, gmm/digits 1000)")
    parser.add_argument("--noise", type=float, default=None,
                        help="label noise rate for gmm/digits, in [0, 1) (default 0.4); CIFAR-10N noise is real")
    parser.add_argument("--noise-type", choices=("symmetric", "pair", "instance"), default="symmetric",
                        help="synthetic noise model for gmm/digits")
    train = parser.add_argument_group("shared training budget (SGD, momentum 0.9, weight decay 5e-4)")
    train.add_argument("--batch-size", type=positive_int, default=None,
                       help=f"training examples per step (default: the profile's; cifar cpu {_CIFAR_CPU['batch_size']}, cifar gpu {_CIFAR_GPU['batch_size']}, gmm/digits {_VECTOR['batch_size']})")
    train.add_argument("--meta-batch-size", type=positive_int, default=None,
                       help=f"clean examples per step (default: the profile's; cifar cpu {_CIFAR_CPU['meta_batch_size']}, cifar gpu {_CIFAR_GPU['meta_batch_size']}, gmm/digits {_VECTOR['meta_batch_size']})")
    train.add_argument("--lr", type=float, default=None,
                       help=f"initial SGD learning rate, annealed to 0 by a per-step cosine (default: the profile's; cifar cpu {_CIFAR_CPU['lr']}, cifar gpu {_CIFAR_GPU['lr']}, gmm/digits {_VECTOR['lr']})")
    train.add_argument("--gamma", type=float, default=None,
                       help="weight of the clean subset in every method's training loss (default 1; 0: noisy set only)")
    train.add_argument("--warmup-epochs", type=int, default=None,
                       help="epochs of ERM warm-up (fine, cleanlab), of alpha0 = 1/(C-1) (surrogate), of the "
                            "forget-rate ramp (small-loss, coteaching) (default: the profile's; cifar cpu "
                            f"{_CIFAR_CPU['warmup_epochs']}, cifar gpu {_CIFAR_GPU['warmup_epochs']}, gmm/digits "
                            f"{_VECTOR['warmup_epochs']})")
    methods = parser.add_argument_group("method settings")
    methods.add_argument("--beta", type=float, default=None,
                         help="meta step size of 'meta' (weights move by beta x mean clean-gradient inner product; "
                              "default 1)")
    methods.add_argument("--surrogate-alpha0-epochs", type=int, default=None,
                         help="epochs of 'surrogate' with alpha0 = 1/(C-1) before it drops to 0 (THEORY.md 6.6; "
                              "default: the warm-up epochs)")
    methods.add_argument("--forget-rate", type=float, default=None,
                         help="small-loss / coteaching forget rate p (default: the realised noise rate, assumed "
                              "known as in Co-teaching)")
    runtime = parser.add_argument_group("runtime and output")
    runtime.add_argument("--data-dir", default=None,
                         help="CIFAR data folder (default: ../shared/data beside the repository)")
    runtime.add_argument("--device", default=None, help="torch device (default: cpu; cuda for --profile gpu)")
    runtime.add_argument("--jobs", type=positive_int, default=None,
                         help="runs trained in parallel processes (default: 2 on the CPU, one per core of a "
                              "2-core machine; 1 on CUDA)")
    runtime.add_argument("--threads", type=positive_int, default=1,
                         help="torch/BLAS threads per run (1 is fastest on a shared 2-core machine)")
    runtime.add_argument("--out", default=None, help="output directory (default: runs/compare-<data>-<date>-<time>)")
    runtime.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Run the comparison of parsed arguments; print the table; write the files."""
    from dynamics.baselines import MethodParams
    from dynamics.cifar import DataError

    overrides = {key: getattr(args, key) for key in ("batch_size", "meta_batch_size", "lr", "gamma", "warmup_epochs")
                 if getattr(args, key) is not None}
    params_fields = {}
    if args.beta is not None:
        params_fields["beta"] = args.beta
    if args.forget_rate is not None:
        params_fields["noise_rate"] = args.forget_rate
    if args.surrogate_alpha0_epochs is not None:
        params_fields["surrogate_alpha0_epochs"] = args.surrogate_alpha0_epochs
    try:
        params = MethodParams(**params_fields)
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data-dir {args.data_dir} is not a directory")
        if args.device is not None:
            import torch

            try:
                device = torch.device(args.device)
            except RuntimeError as error:
                raise ValueError(f"--device {args.device}: {error}") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
        elif args.profile == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--profile gpu needs CUDA (none available); pass --device cpu to force it")
        # Resolve before touching the output folder, so that a bad option leaves nothing behind.
        resolve_setup(args.data, args.profile, epochs=args.epochs, noise_rate=args.noise, noise_type=args.noise_type,
                      n_train=args.n_train, data_dir=args.data_dir, budget_overrides=overrides, params=params,
                      device=args.device)
    except ValueError as error:
        raise UserError(str(error)) from None
    jobs = args.jobs
    if jobs is None:
        on_cuda = (args.device or ("cuda" if args.profile == "gpu" else "cpu")).startswith("cuda")
        jobs = 1 if on_cuda else max(1, min(2, os.cpu_count() or 1))
    out = args.out or os.path.join("runs", time.strftime(f"compare-{args.data}-%Y%m%d-%H%M%S"))
    output = OutputDirectory(out, args.overwrite)
    command = "python -m dynamics.compare " + " ".join(argv)
    with output as staging:
        try:
            results = compare(args.data, args.methods, args.seeds, profile=args.profile, epochs=args.epochs,
                              noise_rate=args.noise, noise_type=args.noise_type, n_train=args.n_train,
                              data_dir=args.data_dir, budget_overrides=overrides, params=params, device=args.device,
                              jobs=jobs, threads=args.threads, progress=True,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
        except (ValueError, DataError) as error:
            raise UserError(str(error)) from None
        write_results(results, staging, command)
    print()
    print(f"{results['description']}; realised noise rate "
          f"{np.mean([info['realised_noise_rate'] for info in results['problems']]):.3f}; "
          f"mean ± std over seeds {results['seeds']}")
    print(format_table(results))
    for method, reason in results["skipped"].items():
        print(f"skipped {method}: {reason}")
    print(f"Wrote {out}/: results.json results.md weights.npz ({results['wall_time_total'] / 60:.1f} min)")
    return results


def _terminate(signum, frame):
    # SIGTERM as SystemExit, so that the staging directory is removed on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    return run_main("python -m dynamics.compare", lambda: run(build_parser().parse_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
