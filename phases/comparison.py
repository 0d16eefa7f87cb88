"""The method comparison as a library: every method on the same problem, network, protocol, batches and seeds.

docs/theory.md section 7: each method of :data:`dynamics.methods.METHODS`
trains the same network under the same protocol (the
:class:`dynamics.methods.TrainBudget`: optimiser, learning-rate schedule,
batches, epochs, warm-up, clean term and clean passes; plus the surrogate's
settings, shared by its ablations) on the same seeds; :func:`compare`
reports, as mean and standard deviation over seeds, final and best-epoch
test accuracy (the best epoch is the one with the lowest clean-subset loss,
never chosen on the test set), clean-detection precision, recall and F1 of
``{w > 0}``, AUC of the weights, weight mass on noisy examples, wall time per
epoch and peak memory, and keeps every run's per-epoch weights.
:func:`results_frame` is the summary as a pandas DataFrame;
:func:`write_results` saves a comparison as ``results.json``, ``results.csv``,
``results.md`` and ``weights.npz``; ``python -m phases.compare`` is its
command line.

Profiles (:data:`PROFILES`):

- ``cpu``: a 0.5-width SmallCNN on a class-balanced subset of CIFAR-10N
  images (sizes in the output), all methods x 3 seeds in under an hour on 2
  shared cores; ``gmm`` and ``digits`` (a two-layer MLP) are the same in
  every image profile;
- ``linear`` (regime 1): a linear head on frozen CIFAR-10 embeddings (or a
  user's features file), the full 45,000 / 2,000 / 10,000 split;
- ``mlp-head`` (regime 2): one hidden layer on the same features, trained
  long enough that ERM's test accuracy peaks and then falls;
- ``reference`` (regime 3): the reference code's setup (docs/theory.md
  section 6): ResNet-34 on the CIFAR-10N images, 150 epochs, learning rate
  0.02 x0.1 at epochs 40, 80 and 100, momentum 0.9, weight decay 1e-3, batch
  128, 2,000 clean images, 30 clean passes before every epoch; it needs an
  accelerator.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from phases.cli import atomic_write, jsonable, versions, write_json, write_text

CIFAR10N = ("cifar10n-aggre", "cifar10n-random1", "cifar10n-random2", "cifar10n-random3", "cifar10n-worse")
DATASETS = ("gmm", "digits", *CIFAR10N, "features")
PROFILES = ("cpu", "reference", "linear", "mlp-head")
FEATURE_PROFILES = ("linear", "mlp-head")
METRICS = ("test_accuracy", "best_epoch_accuracy", "precision", "recall", "f1", "auc", "noisy_mass",
           "wall_time_per_epoch", "peak_memory_mb", "score_auc")
SCHEMA = "phases.comparison/2"
# Relative cost of one epoch (ERM = 1), measured on the CPU profile: expensive runs are scheduled first.
_COST = {"meta": 3.4, "l2rw": 3.4, "coteaching": 2.0, "surrogate": 1.2, "fine": 1.15, "cleanlab": 1.3}

# CPU profile of the CIFAR-10N problems, sized by measurement on 2 cores (2 runs in parallel, 1 thread each):
# an ERM epoch costs about 0.7 ms per training image on an idle core, meta / l2rw 3.5-4.5 times an ERM epoch,
# co-teaching 2 times. All methods x 3 seeds on cifar10n-worse took 14 min at this size, 11 min at 4000 images
# x 6 epochs while other jobs shared the machine: about 4x headroom to the one-hour budget.
CIFAR_CPU = {"n_train": 6000, "n_meta": 1000, "n_test": 2000, "width": 0.5, "epochs": 8, "batch_size": 128,
             "meta_batch_size": 32, "lr": 0.05, "warmup_epochs": 2, "eval_every": 0}
# docs/theory.md section 6, "how the reference code trains with it": 45,000 noisy images (drawn from the 48,000 left
# after holding out the 2,000 clean ones), weights recomputed for every batch (the surrogate's default here).
CIFAR_REFERENCE = {"n_train": 45_000, "n_meta": 2000, "n_test": None, "epochs": 150, "batch_size": 128,
                   "meta_batch_size": 128, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3,
                   "milestones": (40, 80, 100), "clean_passes": 30, "gamma": 0.0, "warmup_epochs": 10,
                   "eval_every": 5}
# Regime 1: the reference protocol's clean training (30 passes, no clean term) on a linear head.
LINEAR = {"n_train": None, "epochs": 20, "batch_size": 128, "meta_batch_size": 128, "lr": 0.5, "momentum": 0.9,
          "weight_decay": 5e-4, "clean_passes": 30, "gamma": 0.0, "warmup_epochs": 2, "eval_every": 1}
# Regime 2: one hidden layer, more epochs and no weight decay, so that ERM memorises the noisy labels (with
# weight decay 5e-4 it does not at 45,000 examples: README, "Regime 2 at full size").
MLP_HEAD = LINEAR | {"hidden": (512,), "epochs": 40, "lr": 0.1, "weight_decay": 0.0}
VECTOR = {"n_train": 1000, "n_meta": 100, "n_test": 1000, "hidden": (256, 256), "epochs": 20, "batch_size": 64,
          "meta_batch_size": 64, "lr": 0.05, "warmup_epochs": 2, "eval_every": 1}
_BUDGET_KEYS = ("epochs", "batch_size", "meta_batch_size", "lr", "momentum", "weight_decay", "gamma", "milestones",
                "clean_passes", "warmup_epochs", "eval_every")


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run needs besides method and seed, resolved from data set, profile and overrides.

    Attributes
    ----------
    data : one of :data:`DATASETS`.
    profile : one of :data:`PROFILES`.
    problem : keyword arguments of the problem generator (sizes, noise, label set or features file).
    network : ``{"kind": "linear" | "mlp" | "cnn" | "resnet34", ...}``.
    budget : the :class:`dynamics.methods.TrainBudget` shared by all methods (the protocol).
    params : method name -> that method's ``Params``, for every registered method (the
        surrogate's ablations share the ``surrogate`` settings but the one they change).
    data_dir : folder of the CIFAR files (CIFAR problems only).
    description : one line stating the scale (subset, network) for reports.
    """

    data: str
    profile: str
    problem: dict
    network: dict
    budget: object
    params: dict
    data_dir: str | None
    description: str

    def to_json(self) -> dict:
        return {"data": self.data, "profile": self.profile, "problem": self.problem, "network": self.network,
                "budget": dataclasses.asdict(self.budget),
                "params": {name: dataclasses.asdict(params) for name, params in self.params.items()},
                "data_dir": self.data_dir, "description": self.description}


def _method_params(params: Mapping[str, object] | None) -> dict:
    """Every registered method's ``Params``: the given ones, else the defaults; the surrogate's ablations take the
    ``surrogate`` settings with their own change applied."""
    from dynamics.methods import REGISTRY, Surrogate

    params = dict(params or {})
    for name, value in params.items():
        if name not in REGISTRY:
            raise ValueError(f"params name unknown method {name!r}; methods are {', '.join(REGISTRY)}")
        if not isinstance(value, REGISTRY[name].Params):
            raise ValueError(f"params of {name!r} must be a {REGISTRY[name].Params.__name__}, got {value!r}")
    resolved = {}
    for name, method in REGISTRY.items():
        if issubclass(method, Surrogate):
            resolved[name] = method(params.get(name, params.get("surrogate"))).params
        else:
            resolved[name] = params.get(name, method.Params())
    return resolved


def resolve_setup(data: str, profile: str = "cpu", *, epochs: int | None = None, noise_rate: float | None = None,
                  noise_type: str = "symmetric", n_train: int | None = None, data_dir=None, features=None,
                  budget_overrides: dict | None = None, params: Mapping[str, object] | None = None,
                  device: str | None = None, verify: bool = True) -> Setup:
    """The problem, network and budget of ``data`` under ``profile``, with overrides applied.

    Parameters
    ----------
    data : one of :data:`DATASETS` (``"features"`` with ``features``).
    profile : one of :data:`PROFILES`. ``linear`` and ``mlp-head`` take the
        CIFAR-10N label sets (on frozen embeddings) or a features file only;
        ``cpu`` and ``reference`` take images or the vector problems.
    epochs : overrides the profile's epochs.
    noise_rate, noise_type : synthetic label noise of ``gmm`` / ``digits``
        (default 0.4 symmetric); CIFAR-10N noise is real, so these must stay unset there.
    n_train : overrides the number of training examples ``n``.
    data_dir : CIFAR data folder (default ``dynamics.cifar.DEFAULT_DATA_DIR``).
    features : a features file (``.npz`` with ``X, y_noisy, X_meta, y_meta,
        X_test, y_test`` and optionally ``y_true``, read by
        :func:`dynamics.embeddings.load_features`), for ``data="features"``.
    budget_overrides : fields of :class:`dynamics.methods.TrainBudget` to replace.
    params : settings of some methods, by name (e.g. ``{"meta": MetaParams(beta=0.5)}``); the
        others keep their defaults.
    device : torch device (default ``"cpu"``, ``"cuda"`` for the reference profile).

    Raises
    ------
    ValueError
        An unknown data set, profile or method, parameters of the wrong type,
        an unavailable device, or an override that does not fit.
    """
    from dynamics.methods import TrainBudget

    if data not in DATASETS:
        raise ValueError(f"data must be one of {', '.join(DATASETS)}; got {data!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    if (data == "features") != (features is not None):
        raise ValueError("a features file goes with data 'features', and only with it" if features is not None
                         else "data 'features' needs a features file (--features FILE.npz)")
    on_features = profile in FEATURE_PROFILES
    if on_features and data in ("gmm", "digits"):
        raise ValueError(f"profile {profile} trains on frozen features: a CIFAR-10N label set or a features file, "
                         f"not {data}")
    if not on_features and data == "features":
        raise ValueError(f"a features file needs a feature profile ({', '.join(FEATURE_PROFILES)}), not {profile}")
    if profile == "reference":
        from dynamics.methods import SurrogateParams

        params = {"surrogate": SurrogateParams(recompute="batch"), **(params or {})}
    params = _method_params(params)
    device = device or ("cuda" if profile == "reference" else "cpu")
    cifar = data in CIFAR10N
    if cifar and (noise_rate is not None or noise_type != "symmetric"):
        raise ValueError(f"{data} has real human label noise; a noise rate and type apply to gmm and digits only")
    if on_features:
        base = dict(LINEAR if profile == "linear" else MLP_HEAD)
        problem = ({"features": str(features)} if data == "features"
                   else {"label_set": data.removeprefix("cifar10n-"), "n_train": base["n_train"]})
        network = {"kind": "linear"} if profile == "linear" else {"kind": "mlp", "hidden": list(base["hidden"])}
        if cifar:
            from dynamics.cifar import DEFAULT_DATA_DIR

            data_dir = str(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
        else:
            data_dir = None
    elif cifar:
        base = dict(CIFAR_CPU if profile == "cpu" else CIFAR_REFERENCE)
        problem = {"label_set": data.removeprefix("cifar10n-"), "n_train": base["n_train"],
                   "n_meta": base["n_meta"], "n_test": base["n_test"], "verify": bool(verify)}
        network = ({"kind": "cnn", "width": base["width"], "num_classes": 10} if profile == "cpu"
                   else {"kind": "resnet34", "num_classes": 10})
        from dynamics.cifar import DEFAULT_DATA_DIR

        data_dir = str(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
    else:
        base = dict(VECTOR)
        noise_rate = 0.4 if noise_rate is None else noise_rate
        problem = {"n": base["n_train"], "m": base["n_meta"], "noise_rate": noise_rate, "noise_type": noise_type}
        if data == "gmm":
            problem |= {"p": base["n_test"]}
        network = {"kind": "mlp", "hidden": list(base["hidden"])}
        data_dir = None
    if n_train is not None:
        if data == "features":
            raise ValueError("a features file fixes n; --n-train applies to the other data sets")
        problem["n_train" if cifar else "n"] = int(n_train)
    budget_fields = {key: base[key] for key in _BUDGET_KEYS if key in base}
    if epochs is not None:
        budget_fields["epochs"] = int(epochs)
    budget_fields |= dict(budget_overrides or {})
    budget_fields["device"] = device
    budget = TrainBudget(**budget_fields)
    return Setup(data, profile, problem, network, budget, params, data_dir,
                 _description(data, profile, problem, network, budget))


def _description(data, profile, problem, network, budget) -> str:
    clean = (f"{budget.clean_passes} clean passes per epoch, " if budget.clean_passes else "") + \
        f"clean term gamma={budget.gamma:g}"
    if profile in FEATURE_PROFILES:
        head = "a linear head" if network["kind"] == "linear" else f"an MLP head {tuple(network['hidden'])}"
        if data == "features":
            source = f"the features of {os.path.basename(problem['features'])}"
        else:
            size = "45,000" if problem["n_train"] is None else f"{problem['n_train']}"
            source = (f"frozen EfficientNet-Lite0 CIFAR-10 embeddings, CIFAR-10N {problem['label_set']} "
                      f"({size} noisy / 2,000 clean / 10,000 test)")
        return f"{profile} profile: {head} on {source}, {budget.epochs} epochs, {clean}"
    if data in CIFAR10N:
        size = "the whole training split" if problem["n_train"] is None else f"{problem['n_train']} training images"
        test = "the official test split" if problem["n_test"] is None else f"{problem['n_test']} test images"
        net = f"SmallCNN(width={network['width']})" if network["kind"] == "cnn" else "ResNet-34"
        return (f"{profile} profile: CIFAR-10N {problem['label_set']}, {size} (class-balanced {problem['n_meta']}-"
                f"image clean subset held out), {test}, {net}, {budget.epochs} epochs, {clean}")
    return (f"{data}: n={problem['n']}, m={problem['m']}, {problem['noise_type']} noise {problem['noise_rate']}, "
            f"MLP {tuple(network['hidden'])}, {budget.epochs} epochs, {clean}")


def _build_problem(setup: Setup, seed: int):
    """The seed's problem as numpy arrays: a ``Problem``, an ``ImageProblem`` or a ``FeatureProblem``."""
    if setup.profile in FEATURE_PROFILES:
        from phases.experiments import SimulationConfig

        # The features-file and CIFAR-10N embedding loaders of phases.simulate --features (the same split).
        config = SimulationConfig(dataset=setup.data, features=setup.problem.get("features"), seed=int(seed),
                                  n=setup.problem.get("n_train"), m=None, p=None, data_dir=setup.data_dir)
        return config.problem()
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
                            n_test=setup.problem["n_test"], verify=setup.problem["verify"])


_DATA_CACHE: dict = {}
_DATA_CACHE_SIZE = 3  # problems kept per process: one per seed of a 3-seed comparison


def _training_data(setup: Setup, seed: int):
    """``(data, has_y_true)``: the seed's problem as tensors, built once per process (the feature problems weigh
    hundreds of MiB: workers build them instead of receiving them)."""
    from dynamics.methods import TrainingData

    key = (json.dumps(setup.to_json(), sort_keys=True, default=str), int(seed))
    if key not in _DATA_CACHE:
        problem = _build_problem(setup, seed)
        if setup.profile in FEATURE_PROFILES:
            entry = (TrainingData.from_problem(problem.problem(), device=setup.budget.device), problem.has_y_true)
        elif setup.data in CIFAR10N:
            entry = (TrainingData.from_images(problem, device=setup.budget.device), True)
        else:
            entry = (TrainingData.from_problem(problem, device=setup.budget.device), True)
        while len(_DATA_CACHE) >= _DATA_CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = entry
    return _DATA_CACHE[key]


def _factory(network: dict, data):
    from dynamics.methods import cnn_factory, linear_factory, mlp_factory, resnet34_factory

    if network["kind"] == "linear":
        return linear_factory(int(data.X.shape[1]), data.num_classes)
    if network["kind"] == "mlp":
        return mlp_factory(int(data.X.shape[1]), data.num_classes, tuple(network["hidden"]))
    if network["kind"] == "cnn":
        return cnn_factory(data.num_classes, network["width"])
    return resnet34_factory(data.num_classes)


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a comparison stands, as :func:`compare` reports it to its ``progress`` callback.

    Attributes
    ----------
    epochs_done, epochs_total : training epochs over all runs (a run in a
        worker process counts when it finishes; a skipped run counts whole).
    runs_done, runs_total : finished runs.
    current : ``"seed S method"``, the run in progress or just finished.
    finished : the record of the run that just finished (as in ``results["runs"]``,
        or ``{"method", "seed", "skipped"}``), else None.
    """

    epochs_done: int
    epochs_total: int
    runs_done: int
    runs_total: int
    current: str
    finished: dict | None = None


def _run_one(setup: Setup, method: str, seed: int, threads: int | None = None,
             progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``method`` on one seed's problem; a JSON-ready record (weights kept apart).

    Without true labels (a features file without ``y_true``) the detection
    metrics are NaN and ``oracle`` is skipped.
    """
    from dynamics.methods import MethodUnavailable, detection_metrics, limit_threads, train
    from dynamics.trajectory import weight_stats

    if threads:
        limit_threads(threads)
    data, has_y_true = _training_data(setup, seed)
    if method == "oracle" and not has_y_true:
        return {"method": method, "seed": int(seed), "skipped": "the features file has no y_true"}
    try:
        result = train(method, data, _factory(setup.network, data), setup.budget, seed, setup.params[method],
                       progress=progress)
    except MethodUnavailable as error:
        return {"method": method, "seed": int(seed), "skipped": str(error)}
    noisy = data.noisy
    detection = detection_metrics(result.weights, noisy)
    score_auc = math.nan if result.score is None else float(weight_stats(result.score[None], noisy)["auc"][0])
    if not has_y_true:
        detection, score_auc = {key: math.nan for key in detection}, math.nan
    return {
        "method": method, "seed": int(seed), "test_accuracy": result.test_accuracy,
        "best_epoch_accuracy": result.best_epoch_accuracy, "best_epoch": result.best_epoch,
        **detection, "score_auc": score_auc,
        "wall_time_per_epoch": result.wall_time_per_epoch, "peak_memory_mb": result.peak_memory_mb,
        "realised_noise_rate": data.noise_rate if has_y_true else math.nan,
        "parameters": result.config["parameters"],
        "params": result.config["params"], "history": result.history,
        "weights": result.weights, "epoch_weights": result.epoch_weights,
    }


def run_key(setup: Setup, method: str, seed: int) -> str:
    """``METHOD/seedS/DIGEST``: a run's name in a resumable comparison (:mod:`phases.compare` ``--resume``).
    The digest hashes what shapes the run: the data set, profile, problem, network, protocol and the method's
    own settings (not the data folder, the description or the other methods' settings), so a run recorded
    under other settings is not taken for this one."""
    spec = {"data": setup.data, "profile": setup.profile, "problem": setup.problem, "network": setup.network,
            "budget": dataclasses.asdict(setup.budget), "params": dataclasses.asdict(setup.params[method])}
    digest = hashlib.sha256(json.dumps(jsonable(spec), sort_keys=True).encode()).hexdigest()[:16]
    return f"{method}/seed{int(seed)}/{digest}"


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
            noise_type: str = "symmetric", n_train: int | None = None, data_dir=None, features=None,
            budget_overrides: dict | None = None, params: Mapping[str, object] | None = None,
            device: str | None = None, jobs: int = 1, threads: int | None = 1, verify: bool = True,
            progress: Callable[[Progress], None] | None = None, recorded: Mapping[str, dict] | None = None) -> dict:
    """Train each method on each seed's problem and summarise over seeds (docs/theory.md section 7).

    Parameters
    ----------
    data : one of :data:`DATASETS`.
    methods : names from :data:`dynamics.methods.METHODS` (default: all;
        ``cleanlab`` is skipped, with the reason recorded, when absent).
    seeds : a count ``k`` (seeds ``0 .. k-1``) or explicit seeds. A seed fixes
        the problem draw (subset, clean subset, noise), the initial network
        and the batches, identically for every method.
    profile, epochs, noise_rate, noise_type, n_train, data_dir, features,
    budget_overrides, params, device : see :func:`resolve_setup`.
    verify : check the CIFAR files against ``SHA256SUMS`` (``False``: read them unverified).
    jobs : runs trained in parallel processes (1: in this process).
    threads : torch / BLAS threads per run (None: leave as is). One is
        fastest on a shared 2-core machine, where spare threads spin.
    progress : called with a :class:`Progress` after every epoch of a run in
        this process and after every finished run (its record, with its
        ``"key"`` and its weight arrays, is the event's ``finished``).
    recorded : records of runs already trained, by :func:`run_key` (with their
        ``"weights"`` and ``"epoch_weights"``): not trained again. Runs of other
        settings are ignored.

    Returns
    -------
    dict, JSON-serialisable except ``"weights"``, ``"epoch_weights"`` and ``"noisy"``::

        schema      SCHEMA
        data, profile, description
        methods     requested methods; seeds: list of int
        setup       resolved problem / network / budget / params (Setup.to_json)
        problems    per seed: {"seed", "name", "n", "m", "p", "num_classes", "realised_noise_rate"}
        runs        per (method, seed) that ran: {"method", "seed", "key" (run_key), "test_accuracy" (final),
                    "best_epoch_accuracy", "best_epoch" (lowest clean-subset loss), "precision",
                    "recall", "f1", "auc", "noisy_mass", "mean_w_clean", "mean_w_noisy", "score_auc",
                    "wall_time_per_epoch" (s), "peak_memory_mb", "realised_noise_rate", "parameters",
                    "params" (the method's resolved settings), "history": {per-epoch lists}}
        skipped     {method: reason}
        summary     {method: {metric: {"mean", "std" (ddof=1, NaN for one seed), "values"}}}
                    for metric in METRICS
        weights     {method: {seed: (n,) float64 array}}, the final weights
        epoch_weights  {method: {seed: (epochs, n) float32 array}}, the weights after every epoch
        noisy       {seed: (n,) bool array}, the seed's noise mask (y_noisy != y_true; empty for a
                    features file without y_true)
        versions, started (ISO time), wall_time_total (s, this call), jobs, threads
        runs_reused  runs taken from ``recorded``

    Raises
    ------
    ValueError
        Bad data, profile, methods, seeds or overrides.
    dynamics.cifar.DataError
        A missing or corrupt CIFAR file.
    dynamics.methods.TrainingDiverged
        A run's training loss stopped being finite.
    """
    from dynamics.methods import METHODS, limit_threads

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
                          n_train=n_train, data_dir=data_dir, features=features, budget_overrides=budget_overrides,
                          params=params, device=device, verify=verify)
    started_at = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    started = time.perf_counter()
    report = progress or (lambda event: None)

    if jobs == 1 and threads:
        limit_threads(threads)
    problem_info, noisy = [], {}
    for seed in seeds:
        problem, has_y_true = _training_data(setup, seed)
        n, m, p = problem.sizes
        problem_info.append({"seed": seed, "name": problem.name, "n": n, "m": m, "p": p,
                             "num_classes": problem.num_classes,
                             "realised_noise_rate": problem.noise_rate if has_y_true else math.nan})
        if has_y_true:
            noisy[seed] = np.asarray(problem.noisy, dtype=bool).copy()
    if jobs > 1:
        _DATA_CACHE.clear()  # the workers build their own
    if setup.budget.meta_batch_size > min(info["m"] for info in problem_info):
        raise ValueError(f"meta_batch_size {setup.budget.meta_batch_size} exceeds the clean subset")

    keys = {(method, seed): run_key(setup, method, seed) for method in methods for seed in seeds}
    recorded = recorded or {}
    reused = [dict(recorded[key]) for key in keys.values() if key in recorded]
    # Expensive runs first, so that parallel workers finish together.
    tasks = sorted((task for task in ((method, seed) for seed in seeds for method in methods)
                    if keys[task] not in recorded), key=lambda task: -_COST.get(task[0], 1.0))
    epochs_per_run = setup.budget.epochs
    runs = []

    def finished(record):
        record["key"] = keys[(record["method"], record["seed"])]
        runs.append(record)
        report(Progress(len(runs) * epochs_per_run, len(tasks) * epochs_per_run, len(runs), len(tasks),
                        f"seed {record['seed']} {record['method']}", record))

    if jobs == 1:
        for method, seed in tasks:
            current = f"seed {seed} {method}"
            done = len(runs) * epochs_per_run

            def epoch_done(epoch, row, done=done, current=current):
                report(Progress(done + epoch + 1, len(tasks) * epochs_per_run, len(runs), len(tasks), current))

            finished(_run_one(setup, method, seed, threads, progress=epoch_done))
    else:
        from phases.executor import run_tasks

        # The workers build each seed's problem themselves (_training_data): the parent's copies stay here.
        run_tasks(_run_one, [(setup, method, seed, threads) for method, seed in tasks], workers=jobs,
                  on_result=lambda index, record: finished(record))

    order = {task: index for index, task in enumerate((method, seed) for method in methods for seed in seeds)}
    runs = sorted(reused + runs, key=lambda run: order[(run["method"], run["seed"])])
    skipped = {run["method"]: run["skipped"] for run in runs if "skipped" in run}
    weights, epoch_weights = {}, {}
    for run in runs:
        if "weights" in run:
            weights.setdefault(run["method"], {})[run["seed"]] = run.pop("weights")
            epoch_weights.setdefault(run["method"], {})[run["seed"]] = run.pop("epoch_weights")
    return {
        "schema": SCHEMA, "data": data, "profile": profile, "description": setup.description,
        "methods": methods, "seeds": seeds, "setup": setup.to_json(), "problems": problem_info,
        "runs": [run for run in runs if "skipped" not in run], "skipped": skipped,
        "summary": _summary(runs, methods), "weights": weights, "epoch_weights": epoch_weights, "noisy": noisy,
        "versions": versions(), "started": started_at, "wall_time_total": time.perf_counter() - started,
        "jobs": jobs, "threads": threads, "runs_reused": len(reused),
    }


# ----------------------------------------------------------------------------- reports

# The columns of the printed table: metric, heading, decimals.
_COLUMNS = (("test_accuracy", "final test acc", 3), ("best_epoch_accuracy", "best-epoch test acc", 3),
            ("precision", "precision", 3), ("recall", "recall", 3), ("f1", "F1", 3), ("auc", "AUC", 3),
            ("noisy_mass", "noisy mass", 3), ("wall_time_per_epoch", "s/epoch", 2), ("peak_memory_mb", "peak MiB", 0))


def results_frame(results: dict):
    """The comparison's summary as a pandas DataFrame: mean and standard deviation over seeds.

    Parameters
    ----------
    results : what :func:`compare` returns, or the ``results.json`` it wrote.

    Returns
    -------
    pandas.DataFrame indexed by method (in the order compared, skipped
    methods left out), with columns ``(metric, "mean")`` and ``(metric,
    "std")`` for every metric of :data:`METRICS`, plus ``("seeds", "count")``.
    The standard deviation has ``ddof=1`` and is NaN for a single seed; a
    metric without a finite value is NaN (see ``summary`` in :func:`compare`).
    ``frame.to_csv()`` and ``frame.to_markdown()`` (with tabulate) print it.
    """
    import pandas as pd

    rows = {}
    for method, metrics in results["summary"].items():
        row = {(metric, stat): metrics[metric][stat] if metrics.get(metric) else math.nan
               for metric in METRICS for stat in ("mean", "std")}
        values = next((metrics[metric]["values"] for metric in METRICS if metrics.get(metric)), [])
        row[("seeds", "count")] = len(values)
        rows[method] = row
    columns = pd.MultiIndex.from_tuples([(metric, stat) for metric in METRICS for stat in ("mean", "std")]
                                        + [("seeds", "count")], names=["metric", "statistic"])
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    frame.index.name = "method"
    return frame.astype({column: float for column in columns[:-1]})


def summary_table(results: dict):
    """The printed table: :func:`results_frame` as ``mean ± std`` text per metric (``n/a`` without a value).

    A DataFrame indexed by method; ``.to_markdown()`` prints it (needs tabulate).
    """
    import pandas as pd

    frame = results_frame(results)

    def cell(mean, std, digits):
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    return pd.DataFrame({heading: [cell(mean, std, digits) for mean, std in
                                   zip(frame[(metric, "mean")], frame[(metric, "std")])]
                         for metric, heading, digits in _COLUMNS}, index=frame.index)


def realised_noise_rate(results: dict) -> float:
    """The training noise rate realised by the problems, averaged over seeds."""
    return float(np.mean([info["realised_noise_rate"] for info in results["problems"]]))


def format_markdown(results: dict, command: str | None = None) -> str:
    """``results.md``: what ran, the table and the notes."""
    budget = results["setup"]["budget"]
    lines = [f"# Noisy-label methods on {results['problems'][0]['name']}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        f"{results['description']}; realised training noise rate {realised_noise_rate(results):.3f}; "
        f"seeds {results['seeds']}; mean ± standard deviation over seeds (ddof=1).",
        "",
        summary_table(results).to_markdown(disable_numparse=True, colalign=("left",) + ("right",) * len(_COLUMNS)),
        "",
        f"Protocol shared by all methods: SGD (momentum {budget['momentum']}, weight decay "
        f"{budget['weight_decay']}), learning rate {budget['lr']} "
        + (f"x0.1 at epochs {', '.join(map(str, budget['milestones']))}" if budget["milestones"]
           else "with a per-step cosine to 0")
        + f", batch {budget['batch_size']}, clean batch {budget['meta_batch_size']}, {budget['epochs']} epochs, "
        f"warm-up {budget['warmup_epochs']} epochs, augmentation {'on' if budget['augment'] else 'off'} (images "
        f"only). Clean-data training of every method but erm and early-stop: clean term gamma={budget['gamma']}, "
        f"{budget['clean_passes']} passes over the clean subset before every epoch; erm-clean is ERM with it.",
        "Final test acc: the last epoch's network (early-stop: the network of its best epoch); best-epoch test acc: "
        "the network of the epoch with the lowest clean-subset loss (chosen without the test set).",
        "Precision / recall / F1: `{w > 0}` as the detected clean set against the true clean mask; AUC of the "
        "final weights as a clean score (ties 1/2); noisy mass: share of the total weight on noisy examples; "
        f"s/epoch: training wall time per epoch ({results['jobs']} parallel run(s), {results['threads']} thread(s) "
        "each, on a machine possibly shared with other work), evaluation excluded; peak MiB: resident memory "
        "above the run's start (CUDA: allocated device memory).",
    ]
    for method, reason in results["skipped"].items():
        lines.append(f"Skipped {method}: {reason}.")
    reused = results.get("runs_reused", 0)
    earlier = f" ({reused} of the runs recorded by an earlier, resumed invocation)" if reused else ""
    lines += ["", f"Total wall time {results['wall_time_total'] / 60:.1f} min{earlier}, started {results['started']}; "
                  f"versions {json.dumps(results['versions'])}.", ""]
    return "\n".join(lines)


def write_results(results: dict, directory: str, command: str | None = None) -> list[str]:
    """Write a comparison into the existing ``directory``; return the file names written.

    ``results.json`` (everything but the weights; NaN as null), ``results.md``,
    ``results.csv`` (:func:`results_frame`: mean and standard deviation over
    seeds per method and metric) and ``weights.npz``: ``METHOD/seedS`` the
    final weights ``(n,)``, ``METHOD/seedS/epochs`` the weights after every
    epoch ``(epochs, n)`` and ``noisy/seedS`` the seed's noise mask ``(n,)``
    bool (when the problem has true labels; the seed fixes the problem draw,
    so each seed has its own).
    """
    payload = {key: value for key, value in results.items() if key not in ("weights", "epoch_weights", "noisy")}
    payload["command"] = command
    write_json(os.path.join(directory, "results.json"), payload)
    write_text(os.path.join(directory, "results.md"), format_markdown(results, command))
    write_text(os.path.join(directory, "results.csv"), results_frame(results).to_csv(float_format="%.6g"))
    arrays = {}
    for method, per_seed in results["weights"].items():
        for seed, w in per_seed.items():
            arrays[f"{method}/seed{seed}"] = w
            arrays[f"{method}/seed{seed}/epochs"] = results["epoch_weights"][method][seed]
    for seed, mask in (results.get("noisy") or {}).items():
        arrays[f"noisy/seed{seed}"] = np.asarray(mask, dtype=bool)

    def save(path):
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(os.path.join(directory, "weights.npz"), save)
    return ["results.json", "results.md", "results.csv", "weights.npz"]


__all__ = ["CIFAR10N", "CIFAR_CPU", "CIFAR_REFERENCE", "DATASETS", "FEATURE_PROFILES", "LINEAR", "METRICS", "MLP_HEAD",
           "PROFILES", "Progress", "SCHEMA", "Setup", "VECTOR", "compare", "format_markdown", "realised_noise_rate",
           "resolve_setup", "results_frame", "run_key", "summary_table", "write_results"]
