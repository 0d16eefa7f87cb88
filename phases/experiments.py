"""Orchestration as a library: problem -> kernel -> run -> phases -> claims -> saved run directory.

The command lines (``python -m phases.simulate``, ``python -m phases.finite``),
the figures and the benches all call these functions; none of them calls
another command's ``main(argv)``. A configuration is a frozen dataclass that
says everything a run needs; a saved run directory records it in
``config.json`` under ``"settings"``, so that

    python -m phases.simulate --config DIR/config.json

repeats the run exactly, whoever started it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dynamics.config import MetaConfig
from phases.claims import Thresholds
from phases.detect import PhaseParams, Phases, detect_phases, readmitted_share

#: Storage precision of the dense kernel blocks (the dynamics stay float64; dynamics.operators.KernelBlocks).
KERNEL_DTYPES = ("float64", "float32")
CIFAR10N_DATASETS = ("cifar10n-aggre", "cifar10n-random1", "cifar10n-random2", "cifar10n-random3", "cifar10n-worse")
#: The binary setting of the paper's theory (docs/theory.md section 9): two classes (``pair``) of a base dataset on
#: one output, targets +-1; each with its default pair.
BINARY_DATASETS = {"digits-binary": (1, 7), **{f"{name}-binary": (3, 5) for name in CIFAR10N_DATASETS}}
#: Datasets whose kernel is the linear kernel of explicit features (docs/theory.md section 8): a features file, or
#: frozen CIFAR-10 embeddings with a CIFAR-10N label set.
FEATURE_DATASETS = ("features", *CIFAR10N_DATASETS, *(f"{name}-binary" for name in CIFAR10N_DATASETS))
DATASETS = ("gmm", "digits", "digits-binary", *FEATURE_DATASETS)
#: (n, m, p) of a CIFAR-10N class pair: every training image of the two classes (before dropping those whose human
#: label lies outside the pair), 200 clean images per class, every test image of the two classes.
CIFAR10N_PAIR_SIZES = (9_000, 400, 2_000)
#: (n, m) of digits-binary (the test set is the rest of the pair's ~360 images).
DIGITS_PAIR_SIZES = (240, 20)
#: The claims that read the noise mask; without y_true they are n/a (docs/theory.md section 4.1).
NEEDS_Y_TRUE = ("C3", "C6", "C6-end", "C9", "C12")
NO_Y_TRUE = "n/a: no y_true"
NOISE_TYPES = ("symmetric", "pair", "instance")
INITS = ("zero", "gp")
_DYNAMICS = MetaConfig()


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Every input of one simulation (docs/theory.md sections 2, 5; defaults: the default problem of section 5).

    Problem: ``dataset`` (``gmm`` or ``digits``), ``noise`` rate and ``noise_type``,
    ``classes`` C and ``dim`` d (gmm), sizes ``n, m, p`` (``p``: gmm only),
    ``separation`` and ``spread`` (gmm), ``imbalance`` (gmm: ratio of the
    largest to the smallest training class, geometric sizes) and
    ``clean_noise`` (gmm, digits: symmetric noise rate inside the clean
    subset), the two problem knobs of docs/theory.md section 9. Kernel: ``kernel`` (``ntk`` or ``nngp``)
    of a fully connected network of ``depth`` hidden layers, ``activation``,
    ``w_std``, ``b_std``, and ``kernel_dtype``, the storage of the dense blocks
    (``float32``: half the memory, about twice the speed at large n; the
    dynamics stay float64). Dynamics: the fields of
    :class:`dynamics.simulator.MetaConfig` plus ``init`` (initial outputs),
    ``seed`` (problem, batches, perturbations) and ``eta_scale``, the step size
    as a fraction of the stability limit, ``eta = eta_scale * 2 / lambda_joint``
    (``lambda_joint``: the top eigenvalue of the joint train and clean kernel,
    :func:`dynamics.simulator.default_eta`; the learning-rate question of
    docs/theory.md section 9), resolved where the kernel exists; it excludes
    ``eta``. Phase detection: the fields of
    :class:`phases.detect.PhaseParams`.

    Explicit features (docs/theory.md section 8; the kernel is then the linear
    kernel of the features, a linear head, and the kernel fields are unused):
    ``dataset="features"`` reads the ``.npz`` at ``features`` (which fixes ``n,
    m, p`` and ``D``; the size fields are unused); ``dataset="cifar10n-<label
    set>"`` takes frozen CIFAR-10 embeddings by ``extractor`` at ``image_size``
    pixels (cached in ``cache_dir``, built on first use from the images in
    ``data_dir``) and the reference split: ``n`` training images (45,000 at
    most), a class-balanced clean subset of ``m`` drawn from the 5,000 held out,
    ``p`` test images (:meth:`cifar10n` gives the reference sizes).

    The binary setting (docs/theory.md section 9; :data:`BINARY_DATASETS`):
    ``dataset="digits-binary"`` or ``"cifar10n-<label set>-binary"`` keeps the
    two classes ``pair = (a, b)`` (default 1, 7 for digits, 3, 5, cat and dog,
    for CIFAR-10) on ONE output with targets ``+1`` for ``a`` and ``-1`` for
    ``b`` (:func:`dynamics.problem.target_codebook`); MSE, or with ``loss="ce"``
    the logistic loss. Digits: symmetric flips within the pair
    (:func:`dynamics.problem.digits`); CIFAR-10N: the human labels, on the
    images whose true class and human label both lie in the pair
    (:func:`dynamics.embeddings.pair_split`; ``n`` counts the images drawn
    before those with a human label outside the pair are dropped).

    Left unset (``None``, as the command line does unless a flag gives them),
    ``dataset`` is ``"features"`` when ``features`` is given and ``"gmm"``
    otherwise, and ``n``, ``m``, ``p`` are the dataset's own sizes (the
    reference split for CIFAR-10N, :data:`CIFAR10N_PAIR_SIZES` for its class
    pairs, :data:`DIGITS_PAIR_SIZES` for digits-binary, the field defaults
    otherwise).
    """

    dataset: str = "gmm"
    noise: float = 0.4
    noise_type: str = "symmetric"
    classes: int = 4
    dim: int = 32
    n: int = 1000
    m: int = 100
    p: int = 1000
    separation: float = 3.0
    spread: float = 1.0
    imbalance: float = 1.0
    clean_noise: float = 0.0
    kernel: str = "ntk"
    depth: int = 2
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    kernel_dtype: str = "float64"
    # The dynamics: MetaConfig's own defaults, so the two cannot drift apart.
    variant: str = _DYNAMICS.variant
    loss: str = _DYNAMICS.loss
    eta: float | None = _DYNAMICS.eta
    eta_scale: float | None = None
    beta: float = _DYNAMICS.beta
    gamma: float = _DYNAMICS.gamma
    w0: float = _DYNAMICS.w0
    init: str = "zero"
    batch_size: int | None = _DYNAMICS.batch_size
    meta_batch_size: int | None = _DYNAMICS.meta_batch_size
    steps: int = _DYNAMICS.steps
    record_every: int = _DYNAMICS.record_every
    perturb_draws: int = _DYNAMICS.perturb_draws
    seed: int = 0
    align_fraction: float = PhaseParams().align_fraction
    window: float = PhaseParams().window_fraction
    min_window: int = PhaseParams().min_window
    tau: float = PhaseParams().tau
    tau_w: float = PhaseParams().tau_w
    # Claim thresholds (phases.claims.THRESHOLD_DOCS; docs/theory.md section 4.1).
    c3_first_step_auc: float = Thresholds().c3_first_step_auc
    c4_velocity_fall: float = Thresholds().c4_velocity_fall
    c4_ratio_spread: float = Thresholds().c4_ratio_spread
    c5_rate_error: float = Thresholds().c5_rate_error
    c6_noisy_zero: float = Thresholds().c6_noisy_zero
    c6_clean_zero: float = Thresholds().c6_clean_zero
    c7_alignment_flip: float = Thresholds().c7_alignment_flip
    c12_auc_drop: float = Thresholds().c12_auc_drop
    features: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    extractor: str = "efficientnet-lite0"
    image_size: int = 160
    pair: tuple[int, int] | None = None

    def __post_init__(self):
        from dynamics.embeddings import EXTRACTOR_NAMES, IMAGE_SIZES
        from dynamics.problem import check_pair

        if self.dataset is None:  # the command line leaves it unset: a features file implies dataset "features"
            object.__setattr__(self, "dataset", "gmm" if self.features is None else "features")
        for name, value, choices in (("dataset", self.dataset, DATASETS), ("noise_type", self.noise_type, NOISE_TYPES),
                                     ("kernel_dtype", self.kernel_dtype, KERNEL_DTYPES),
                                     ("init", self.init, INITS), ("extractor", self.extractor, EXTRACTOR_NAMES),
                                     ("image_size", self.image_size, IMAGE_SIZES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.eta is not None and self.eta_scale is not None:
            raise ValueError("eta and eta_scale both set the step size; give one of them")
        if self.eta_scale is not None and not self.eta_scale > 0:
            raise ValueError(f"eta_scale must be positive, got {self.eta_scale}")
        if self.record_every > self.steps:
            raise ValueError(f"record_every must be at most steps = {self.steps}, got {self.record_every}")
        self._resolve_defaults()
        if self.pair is not None and self.dataset not in BINARY_DATASETS:
            raise ValueError(f"pair applies to the binary datasets (digits-binary, cifar10n-<label set>-binary) only, "
                             f"not {self.dataset!r}")
        if self.dataset in BINARY_DATASETS:  # a class pair of the 10 digits or CIFAR-10 classes
            object.__setattr__(self, "pair", check_pair(BINARY_DATASETS[self.dataset] if self.pair is None
                                                        else self.pair, 10))
        for name, neutral, datasets in (("imbalance", 1.0, ("gmm",)),
                                        ("clean_noise", 0.0, ("gmm", "digits", "digits-binary"))):
            if getattr(self, name) != neutral and self.dataset not in datasets:
                raise ValueError(f"{name} applies to dataset {' or '.join(datasets)} only, not {self.dataset!r}")
        if self.kernel_dtype != "float64" and self.on_features:
            raise ValueError("kernel_dtype applies to the dense kernel; on features no kernel is formed")
        if (self.dataset == "features") != (self.features is not None):
            raise ValueError("features (a features file) goes with dataset 'features', and only with it"
                             if self.features is not None else "dataset 'features' needs features (a .npz file)")

    def _resolve_defaults(self) -> None:
        """``n``, ``m``, ``p`` left unset (``None``, as the command line does) take the dataset's sizes: the
        reference split for CIFAR-10N (45,000, 2,000, 10,000), the field defaults otherwise."""
        from dynamics.embeddings import CIFAR10N_SIZES

        sizes = CIFAR10N_SIZES if self.dataset in CIFAR10N_DATASETS else (_SIZES["n"], _SIZES["m"], _SIZES["p"])
        if self.dataset in BINARY_DATASETS:
            sizes = CIFAR10N_PAIR_SIZES if self.on_cifar10n else (*DIGITS_PAIR_SIZES, _SIZES["p"])
        for name, size in zip(("n", "m", "p"), sizes):
            if getattr(self, name) is None:
                object.__setattr__(self, name, size)

    @classmethod
    def cifar10n(cls, label_set: str, **settings) -> SimulationConfig:
        """A CIFAR-10N run on frozen embeddings at the reference sizes (n, m, p = 45,000, 2,000, 10,000)."""
        from dynamics.embeddings import CIFAR10N_SIZES

        n, m, p = CIFAR10N_SIZES
        return cls(**({"dataset": f"cifar10n-{label_set}", "n": n, "m": m, "p": p} | settings))

    @property
    def on_cifar10n(self) -> bool:
        """Whether the problem is CIFAR-10N on frozen embeddings (a label set, or a class pair of it)."""
        return self.dataset.removesuffix("-binary") in CIFAR10N_DATASETS

    @property
    def on_features(self) -> bool:
        """Whether the kernel is the linear kernel of explicit features (a features file or CIFAR-10 embeddings)."""
        return self.dataset in FEATURE_DATASETS

    @classmethod
    def from_dict(cls, values: dict) -> SimulationConfig:
        """The inverse of ``dataclasses.asdict``; unknown keys are an error (a typo must not pass silently)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown simulation settings: {', '.join(unknown)}")
        return cls(**values)

    def argv(self) -> list[str]:
        """The ``python -m phases.simulate`` arguments that run this configuration (non-default fields only)."""
        default = SimulationConfig()
        args = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != getattr(default, field.name):
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                args += [f"--{field.name.replace('_', '-')}", repr(value) if isinstance(value, float) else text]
        return args

    def phase_params(self) -> PhaseParams:
        return PhaseParams(self.align_fraction, self.window, self.min_window, self.tau, self.tau_w)

    def thresholds(self) -> Thresholds:
        return Thresholds(**{field.name: getattr(self, field.name) for field in dataclasses.fields(Thresholds)})

    def meta_config(self) -> MetaConfig:
        return MetaConfig(loss=self.loss, variant=self.variant, eta=self.eta, beta=self.beta, gamma=self.gamma,
                          w0=self.w0, steps=self.steps, batch_size=self.batch_size,
                          meta_batch_size=self.meta_batch_size, record_every=self.record_every,
                          perturb_draws=self.perturb_draws)

    def kernel_spec(self):
        from kernels.infinite import KernelSpec

        return KernelSpec(self.depth, self.activation, self.w_std, self.b_std, self.kernel)

    def problem(self, *, embedding_progress: Callable[[int, int], None] | None = None):
        """The problem, drawn from ``np.random.default_rng(seed)``.

        For the feature datasets a :class:`dynamics.embeddings.FeatureProblem`:
        the features file, or CIFAR-10N on frozen embeddings (read from the
        cache, or built first, calling ``embedding_progress(done, total)``).
        """
        from dynamics.problem import digits, gaussian_mixture

        if self.dataset == "features":
            from dynamics.embeddings import load_features

            return load_features(self.features)
        if self.on_cifar10n:
            return self._cifar10n_problem(embedding_progress)
        rng = np.random.default_rng(self.seed)
        if self.dataset == "gmm":
            return gaussian_mixture(rng, n=self.n, m=self.m, p=self.p, num_classes=self.classes, dim=self.dim,
                                    separation=self.separation, spread=self.spread, noise_rate=self.noise,
                                    noise_type=self.noise_type, imbalance=self.imbalance,
                                    clean_noise=self.clean_noise)
        return digits(rng, n=self.n, m=self.m, noise_rate=self.noise, noise_type=self.noise_type,
                      clean_noise=self.clean_noise, pair=self.pair)

    def _cifar10n_problem(self, embedding_progress=None):
        from dynamics.cifar import DEFAULT_DATA_DIR, _label_file, load_cifar10n_labels, verify_checksums
        from dynamics.embeddings import cifar10_embeddings, cifar10n_feature_problem, make_extractor

        data_dir = Path(DEFAULT_DATA_DIR if self.data_dir is None else self.data_dir)
        label_file = _label_file(data_dir)
        verify_checksums(data_dir, [label_file])
        labels = load_cifar10n_labels(data_dir / label_file)
        embeddings = cifar10_embeddings(make_extractor(self.extractor, self.image_size), data_dir=data_dir,
                                        cache_dir=self.cache_dir, progress=embedding_progress)
        label_set = self.dataset.removeprefix("cifar10n-").removesuffix("-binary")
        name = (f"{embeddings.info.key['source']['name']}, CIFAR-10N {label_set}, {self.extractor} "
                f"{self.image_size} px embeddings")
        if self.pair is not None:
            from dynamics.cifar import CIFAR10_CLASSES

            name += f", {CIFAR10_CLASSES[self.pair[0]]} (+1) vs {CIFAR10_CLASSES[self.pair[1]]} (-1)"
        problem, split, test_index = cifar10n_feature_problem(label_set, embeddings, labels,
                                                              np.random.default_rng(self.seed), n=self.n, m=self.m,
                                                              p=self.p, name=name, pair=self.pair)
        cache = dataclasses.asdict(embeddings.info)
        cache.pop("key")
        problem.source["cache"] = cache
        problem.index.update(train_index=split.train, meta_index=split.meta, held_out_index=split.held_out,
                             test_index=test_index)
        return problem

    def feature_sizes(self) -> tuple[int, int, int, int]:
        """``(n, m, p, D)`` of a feature dataset, without loading it (a features file's headers)."""
        if self.dataset == "features":
            from dynamics.embeddings import FeaturesError, features_shapes

            shapes = features_shapes(self.features)
            missing = [key for key in ("X", "X_meta", "X_test") if key not in shapes]
            if missing:
                raise FeaturesError(f"{self.features} lacks {', '.join(missing)} (a features file holds X, "
                                    f"y_noisy, X_meta, y_meta, X_test, y_test and optionally y_true)")
            (n, D), (m, _), (p, _) = (shapes[key][0] + (0,) * (2 - len(shapes[key][0]))
                                      for key in ("X", "X_meta", "X_test"))
            return n, m, p, D
        from dynamics.embeddings import EfficientNetLite0

        return self.n, self.m, self.p, EfficientNetLite0.dim

    def estimated_memory(self) -> int:
        """Bytes the run is planned to need: kernel blocks (and their stacked copy), the eigendecompositions of
        C9 and C5', and the recorded ``(T, n)`` series (weights, scores, residual norms, their statistics).

        On features (docs/theory.md section 8) no kernel is formed: the float64 features (held, copied to the
        JAX device, and read from their source), the ``(D, D)`` Gram matrices and eigenvectors, for CIFAR-10N
        the cached float32 embeddings of all 60,000 images and their standardised float64 copy, and the
        recorded series.
        """
        recorded = self.steps // self.record_every + 2
        if self.on_features:
            n, m, p, D = self.feature_sizes()
            features = 8 * (n + m + p) * D
            images = 12 * 60_000 * D if self.on_cifar10n else 0
            return 3 * features + images + 8 * 4 * D * D + 8 * 4 * (n + m) * self.classes + 48 * recorded * n
        n, m, p = self.n, self.m, self.p
        kernel = 4 if self.kernel_dtype == "float32" else 8
        return kernel * 2 * ((n + m) ** 2 + p * (n + m)) + 8 * 3 * (n + m) ** 2 + 48 * recorded * n

    def validate(self, force: bool = False):
        """Build everything cheap that a bad value breaks (raises ``ValueError``); return the problem.

        A run planned to need more memory than the machine has is refused with the estimate, unless ``force``.
        """
        from dynamics.checks import check_memory

        self.phase_params()
        self.thresholds()
        self.meta_config()
        if self.on_features:
            return self._validate_features(force)
        self.kernel_spec()
        check_memory(f"a simulation with n={self.n}, m={self.m}, p={self.p} and {self.steps} steps recorded every "
                     f"{self.record_every}", self.estimated_memory(), force)
        problem = self.problem()
        n, m, _ = problem.sizes
        for name, size, limit in (("batch_size", self.batch_size, n), ("meta_batch_size", self.meta_batch_size, m)):
            if size is not None and size > limit:
                raise ValueError(f"{name} must be at most {limit}, got {size}")
        return problem


    def _validate_features(self, force: bool):
        """:meth:`validate` for the feature datasets: the features file is read and checked (the problem is
        returned); for CIFAR-10N the data folder, the extractor and the sizes are checked, and ``None`` is
        returned (the embeddings may have to be built first: :func:`run_simulation` does that)."""
        from dynamics.checks import check_memory

        if self.on_cifar10n:
            from dynamics.cifar import DEFAULT_DATA_DIR, _image_files, _label_file
            from dynamics.embeddings import CIFAR10N_SIZES, ExtractorUnavailable, make_extractor

            data_dir = Path(DEFAULT_DATA_DIR if self.data_dir is None else self.data_dir)
            _image_files(data_dir), _label_file(data_dir)
            classes, limits = ((2, (*CIFAR10N_PAIR_SIZES[::2], 1_000)) if self.pair is not None else
                               (10, (CIFAR10N_SIZES[0], CIFAR10N_SIZES[2], 5_000)))  # (n, p, m)
            for name, value, limit in zip(("n", "p", "m"), (self.n, self.p, self.m), limits):
                if not 1 <= value <= limit:
                    raise ValueError(f"{name} must lie in [1, {limit}] for {self.dataset}, got {value}")
            if self.m < classes:
                raise ValueError(f"m must be at least {classes} for {self.dataset} (one clean example per class), "
                                 f"got {self.m}")
            try:
                make_extractor(self.extractor, self.image_size).settings
            except ExtractorUnavailable as error:
                raise ValueError(str(error)) from None
        n, m, p, D = self.feature_sizes()
        check_memory(f"a simulation on {D} features with n={n}, m={m}, p={p} and {self.steps} steps recorded every "
                     f"{self.record_every}", self.estimated_memory(), force)
        for name, size, limit in (("batch_size", self.batch_size, n), ("meta_batch_size", self.meta_batch_size, m)):
            if size is not None and size > limit:
                raise ValueError(f"{name} must be at most {limit}, got {size}")
        return self.problem() if self.dataset == "features" else None


_SIZES = {field.name: field.default for field in dataclasses.fields(SimulationConfig) if field.name in ("n", "m", "p")}


@dataclasses.dataclass(frozen=True, eq=False)
class SimulationResult:
    """One simulation and what ``phases`` reads from it.

    config : the inputs.  problem : the drawn problem.  blocks : the kernel
    blocks (``None`` for a loaded run without ``kernels.npz``).  trajectory :
    the recorded run.  phases : its boundaries.  summary : ``summary.json``
    (phase statistics, claims, final metrics).
    """

    config: SimulationConfig
    problem: object
    blocks: object | None
    trajectory: object
    phases: Phases
    summary: dict
    # The trajectory's archive (Trajectory.archive) being compressed since the run ended, and trajectory.png
    # being drawn since its phases were found (draw_beside), for save().
    archive: concurrent.futures.Future | None = dataclasses.field(default=None, repr=False)
    figure: concurrent.futures.Future | None = dataclasses.field(default=None, repr=False)

    def config_json(self, command: str | None = None) -> dict:
        """``config.json``: the settings (re-runnable), every resolved parameter, versions and the command."""
        from phases.cli import versions

        n, m, p = self.problem.sizes
        if self.config is not None and self.config.on_features:
            return {
                "command": command or " ".join(["python -m phases.simulate", *self.config.argv()]),
                "settings": dataclasses.asdict(self.config),
                **self.trajectory.config,
                "dataset": self.config.dataset, "realised_noise_rate": self.problem.noise_rate,
                "y_true": self.problem.has_y_true, "problem_name": self.problem.name,
                "problem": {"n": n, "m": m, "p": p, "num_classes": self.problem.num_classes, "D": self.problem.D,
                            "targets": self.problem.targets, "source": self.problem.source},
                "kernel": {"kind": "linear", "of": "the given features (a linear head)", "D": self.problem.D},
                "phase_parameters": dataclasses.asdict(self.phases.params),
                "versions": versions(),
            }
        return {
            "command": command or " ".join(["python -m phases.simulate", *self.config.argv()]),
            "settings": dataclasses.asdict(self.config),
            **self.trajectory.config,
            "dataset": self.config.dataset, "noise": self.config.noise, "noise_type": self.config.noise_type,
            "realised_noise_rate": self.problem.noise_rate, "problem_name": self.problem.name,
            "problem": {"n": n, "m": m, "p": p, "num_classes": self.problem.num_classes,
                        "targets": self.problem.targets,
                        "dim": self.problem.X.shape[1], "separation": self.config.separation,
                        "spread": self.config.spread},
            "kernel": dataclasses.asdict(self.config.kernel_spec()),
            "phase_parameters": dataclasses.asdict(self.phases.params),
            "versions": versions(),
        }

    def save(self, directory: str, *, kernels: bool = False, figure: bool = True, command: str | None = None) -> list[str]:
        """Write the run into an existing ``directory``; return the file names written.

        A run on features saves its labels (and, for CIFAR-10N, the split's indices) in ``problem.npz``, not the
        features themselves (``config.json`` names their source and checksum); it has no dense kernel blocks, so
        ``kernels=True`` is a ``ValueError``.
        """
        on_features = hasattr(self.problem, "has_y_true")
        if kernels and on_features:
            raise ValueError("a run on features has no dense kernel blocks to save (its kernel is the features' "
                             "linear kernel; K = Phi Phi^T would take (n, n) memory)")
        # The trajectory's compression (zlib, which releases the GIL) runs on a second core beside the rest,
        # from the end of the run when run_simulation was told the result would be saved.
        archive = self.archive or compress_beside(self.trajectory)
        written = self._save_beside(directory, kernels, figure, command, on_features)
        with open(os.path.join(directory, "trajectory.npz"), "wb") as handle:
            handle.write(archive.result())
        return written

    def _save_beside(self, directory: str, kernels: bool, figure: bool, command: str | None, on_features: bool
                     ) -> list[str]:
        """:meth:`save` but the trajectory."""
        from phases.cli import write_json

        write_json(os.path.join(directory, "config.json"), self.config_json(command))
        arrays = self.problem.label_arrays() if on_features else self.problem.arrays()
        np.savez(os.path.join(directory, "problem.npz"), **arrays)
        written = ["config.json", "problem.npz", "trajectory.npz", "summary.json"]
        if kernels:
            np.savez(os.path.join(directory, "kernels.npz"), **self.blocks.arrays())
            written.append("kernels.npz")
        write_json(os.path.join(directory, "summary.json"), self.summary)
        if figure:
            drawn = self.figure or draw_beside(self.trajectory, self.phases, _figure_title(self.config, self.problem))
            with open(os.path.join(directory, "trajectory.png"), "wb") as handle:
                handle.write(drawn.result())
            written.append("trajectory.png")
        return written


def compress_beside(trajectory) -> concurrent.futures.Future:
    """``trajectory.archive()``, computed on a thread of its own (zlib releases the GIL: a second core)."""
    return _beside(trajectory.archive)


def draw_beside(trajectory, phases: Phases, title: str) -> concurrent.futures.Future:
    """The bytes of ``trajectory.png`` (:func:`phases.plot.plot_trajectory`), drawn on a thread of its own while
    the claims are checked (their eigenvalue solves release the GIL)."""

    def draw() -> bytes:
        from phases.plot import plot_trajectory

        buffer = io.BytesIO()
        plot_trajectory(trajectory, phases, title=title).savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()

    return _beside(draw)


def _beside(task: Callable[[], object]) -> concurrent.futures.Future:
    """``task()`` on a thread of its own, which ends with it."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(task)
    finally:
        pool.shutdown(wait=False)


def _figure_title(config: SimulationConfig, problem) -> str:
    """``trajectory.png``'s title (a problem without ``y_true`` says what its curves show)."""
    title = f"{problem.name}: {config.variant} reweighting, {config.loss}, gamma={config.gamma:g}"
    if not getattr(problem, "has_y_true", True):
        title += f"\n({NO_Y_TRUE}: 'clean' curves show all training examples; noisy ones are unknown)"
    return title


def run_simulation(config: SimulationConfig = SimulationConfig(), *, progress: Callable[[int], None] | None = None,
                   stage: Callable[[str], None] | None = None, claims: bool = True, problem=None,
                   embedding_progress: Callable[[int, int], None] | None = None,
                   saving: bool = False) -> SimulationResult:
    """Draw the problem, compute the kernel blocks, simulate, detect the phases and check the claims.

    Parameters
    ----------
    config : every input.
    progress : called with the current step during the simulation.
    stage : called with a one-line description as each stage starts.
    claims : check the claims (``False`` skips them and the ``K_XX`` eigenvectors C9 needs).
    problem : for the feature datasets, the problem ``config.validate()`` returned (so that a features file is
        read once); ignored otherwise.
    embedding_progress : called as ``(images done, images total)`` while CIFAR-10 embeddings are built (once;
        later runs read them from the cache).
    saving : the caller will :meth:`SimulationResult.save` the result: the trajectory's compression (about a
        second for the default run) then starts when the run ends, beside the phases and claims.

    Raises
    ------
    ValueError : a bad configuration.  dynamics.simulator.DivergenceError : an unstable step size.
    """
    if config.on_features:
        return _run_on_features(config, problem, progress=progress, announce=stage or (lambda text: None),
                                claims=claims, embedding_progress=embedding_progress, saving=saving)
    from dynamics.simulator import lower_loop, simulate

    announce = stage or (lambda text: None)
    problem = config.validate()
    spec = config.kernel_spec()
    n, m, p = problem.sizes
    announce(f"problem: {problem.name}, n={n}, m={m}, p={p}, realised noise {problem.noise_rate:.3f}")
    # The simulation's loop compiles on a thread while the kernel is computed (XLA's compilation releases the GIL).
    compiled = _beside(lower_loop(problem, config.meta_config(), np.dtype(config.kernel_dtype)).compile)
    blocks = _kernel_blocks(config, problem)
    _load_while_compiling(figure=saving)
    compiled.result()
    initial_outputs = _initial_outputs(config, problem)
    meta = _resolved_meta_config(config, blocks)
    announce(f"simulating {meta.steps} steps of {meta.variant} reweighting ({meta.loss}), "
             f"kernel {spec.kind} depth {spec.depth} {spec.activation}")
    kept = []
    trajectory = simulate(problem, blocks, meta, seed=config.seed, initial_outputs=initial_outputs, progress=progress,
                          keep_outputs=kept)
    announce("phases and claims")
    eigenvectors = _top_eigenvectors(blocks.K_XX, problem.num_classes) if claims else None
    return _dense_result(config, problem, blocks, meta, trajectory, initial_outputs, eigenvectors, kept,
                         saving=saving)


def run_simulations(configs, *, claims: bool = True, progress: Callable[[int], None] | None = None) -> list:
    """:func:`run_simulation` of every configuration, sharing the work the runs have in common.

    Runs whose inputs, kernel and loop knobs (:data:`dynamics.simulator.SHARED_KNOBS`) agree, such as the
    noise rates, ``beta``, ``gamma`` or ``w0`` of one seed, get their kernel blocks (and C9's eigenvectors)
    computed once and are advanced together by :func:`dynamics.simulator.simulate_many`, one pass over the
    kernel per step for all of them. Each result equals the one-at-a-time run to rounding (1e-12 in the
    weights; the last digits of a number can differ, and so, in a knife-edge case, a boundary). Runs on
    features go one at a time. ``progress`` is called with the steps taken by the current group.

    Returns one entry per configuration, in order: its :class:`SimulationResult`, or the
    :class:`dynamics.simulator.DivergenceError` of a run whose step size was unstable.
    """
    from dynamics.simulator import SHARED_KNOBS, DivergenceError, simulate_many

    results = [None] * len(configs)
    groups = {}
    for index, config in enumerate(configs):
        if config.on_features:
            try:
                results[index] = run_simulation(config, claims=claims, progress=progress)
            except DivergenceError as error:
                results[index] = error
            continue
        problem = config.validate()
        meta = config.meta_config()
        inputs = hashlib.sha256(b"".join(np.ascontiguousarray(array).tobytes()
                                         for array in (problem.X, problem.X_meta, problem.X_test))).hexdigest()
        key = (inputs, config.kernel_spec(), config.kernel_dtype, config.init,
               tuple(getattr(meta, knob) for knob in SHARED_KNOBS))
        groups.setdefault(key, []).append((index, config, problem))
    for members in groups.values():
        _, first, problem = members[0]
        blocks = _kernel_blocks(first, problem)
        metas = [_resolved_meta_config(config, blocks) for _, config, _ in members]
        outputs = [_initial_outputs(config, problem) for _, config, problem in members]
        kept = [[] for _ in members]
        trajectories = simulate_many([problem for _, _, problem in members], blocks, metas,
                                     [config.seed for _, config, _ in members], initial_outputs=outputs,
                                     progress=progress, keep_outputs=kept)
        eigenvectors = _top_eigenvectors(blocks.K_XX, problem.num_classes) if claims else None
        for (index, config, problem), meta, initial, trajectory, own in zip(members, metas, outputs, trajectories,
                                                                             kept):
            results[index] = trajectory if isinstance(trajectory, DivergenceError) else _dense_result(
                config, problem, blocks, meta, trajectory, initial, eigenvectors, own)
    return results


def _load_while_compiling(figure: bool) -> None:
    """Import what the rest of a run needs (scipy's Lanczos for the step size, matplotlib for the figure) while
    the loop compiles on its thread: XLA's compilation releases the GIL and takes one core, imports hold the GIL
    and take the other. The imports take 0.2-0.4 s and 0.3 s; what this saves was not separable from the noise
    of the machine measured (5 alternating pairs of the main command: medians 5.18 s with, 5.29 s without)."""
    for module in ("scipy.sparse.linalg", "phases.plot") if figure else ("scipy.sparse.linalg",):
        importlib.import_module(module)


def _kernel_blocks(config: SimulationConfig, problem):
    """The dense kernel blocks of ``problem``'s inputs under ``config``'s kernel, in its storage precision."""
    from dynamics.simulator import KernelBlocks
    from kernels import kernel

    spec = config.kernel_spec()
    return KernelBlocks.from_problem(problem, lambda a, b: kernel(spec, a, b, dtype=config.kernel_dtype))


def _initial_outputs(config: SimulationConfig, problem):
    """``None`` (zero outputs), or with ``init = "gp"`` one draw of the NNGP prior on all inputs."""
    if config.init != "gp":
        return None
    from dynamics.simulator import gp_prior_outputs
    from kernels import kernel

    inputs = np.concatenate([problem.X, problem.X_meta, problem.X_test])
    nngp = kernel(dataclasses.replace(config.kernel_spec(), kind="nngp"), inputs)
    return gp_prior_outputs(nngp, problem.outputs, np.random.default_rng([config.seed, 1]))


def _dense_result(config: SimulationConfig, problem, blocks, meta: MetaConfig, trajectory, initial_outputs,
                  eigenvectors, kept, saving: bool = False) -> SimulationResult:
    """A dense run's phases, claims (when ``eigenvectors``, C9's, are given) and summary (``kept``: the run's
    ``keep_outputs``; ``saving``: as :func:`run_simulation`)."""
    from phases.claims import check_claims
    from phases.report import summary
    from phases.sign_pattern import problem_sign_pattern

    trajectory = dataclasses.replace(trajectory, config=trajectory.config | {"init": config.init})
    archive = compress_beside(trajectory) if saving else None
    phases = detect_phases(trajectory, config.phase_params())
    figure = draw_beside(trajectory, phases, _figure_title(config, problem)) if saving else None
    checked, signs = [], {}
    if eigenvectors is not None:
        prediction = _rate_prediction(problem, blocks, meta, trajectory, phases, config.seed, initial_outputs, kept)
        checked = check_claims(trajectory, phases, problem=problem, eigenvectors=eigenvectors,
                               rate_prediction=prediction, thresholds=config.thresholds())
        signs = {"sign_pattern": problem_sign_pattern(problem, blocks)}  # with the claims (docs/theory.md section 9)
    return SimulationResult(config, problem, blocks, trajectory, phases, summary(trajectory, phases, checked) | signs,
                            archive, figure)


def _resolved_meta_config(config: SimulationConfig, operator) -> MetaConfig:
    """``config.meta_config()`` with ``eta = eta_scale * 2 / lambda_joint`` when ``eta_scale`` is set (``2 /
    lambda_joint``: the stability limit of :func:`dynamics.simulator.default_eta`)."""
    from dynamics.simulator import default_eta

    meta = config.meta_config()
    if config.eta_scale is None:
        return meta
    return dataclasses.replace(meta, eta=config.eta_scale * 2.0 / default_eta(operator, config.gamma)[1])


def _rate_prediction(problem, operator, meta, trajectory, phases: Phases, seed: int, initial_outputs, kept):
    """C5''s prediction, from the state of the run at ``T_filter``: the same run stopped there, through its
    compiled loop (the dynamics are deterministic), from the last of the outputs ``kept`` during the run
    (``simulate``'s ``keep_outputs``) before ``T_filter``; ``None`` without a filtering boundary."""
    from dynamics.simulator import outputs_at
    from phases.claims import predict_post_filtering_rate

    if phases.T_filter is None or phases.T_filter == 0:
        return None
    t, F = max(((t, F) for t, F in kept if t <= phases.T_filter), key=lambda pair: pair[0])
    start = (t, F, trajectory.w[int(np.searchsorted(trajectory.step, t))])
    outputs = outputs_at(problem, operator, dataclasses.replace(meta, eta=trajectory.config["eta"]),
                         phases.T_filter, seed=seed, initial_outputs=initial_outputs, start=start)
    return predict_post_filtering_rate(problem, operator, trajectory, phases, outputs)


def _run_on_features(config: SimulationConfig, problem, *, progress, announce, claims, embedding_progress,
                     saving: bool) -> SimulationResult:
    """:func:`run_simulation` on explicit features: the linear kernel through :class:`FeatureKernel`
    (docs/theory.md section 8), C9 from the top singular vectors of the features, C5' in parameter space;
    no ``(n, n)`` matrix is formed. Without ``y_true`` the scores that need the noise mask are n/a."""
    from dynamics.simulator import FeatureKernel, simulate
    from phases.claims import check_claims, feature_eigenvectors
    from phases.report import summary

    if problem is None:
        problem = config.validate()
    if problem is None:  # CIFAR-10N: the embeddings come from the cache, built on first use
        announce(f"embeddings: {config.extractor} at {config.image_size} px of every CIFAR-10 image (cache "
                 f"{config.cache_dir or 'default'})")
        problem = config.problem(embedding_progress=embedding_progress)
    n, m, p = problem.sizes
    noise = f"{problem.noise_rate:.3f}" if problem.has_y_true else "unknown (no y_true)"
    announce(f"problem: {problem.name}, n={n}, m={m}, p={p}, D={problem.D}, realised noise {noise}")
    operator = FeatureKernel(problem.X, problem.X_meta, problem.X_test)
    base = problem.problem()
    initial_outputs = None
    if config.init == "gp":
        # The prior of a linear head: Theta ~ N(0, I), so F ~ GP(0, Phi Phi^T) exactly, with no kernel formed.
        theta = np.random.default_rng([config.seed, 1]).standard_normal((problem.D, problem.outputs))
        initial_outputs = np.concatenate([problem.X @ theta, problem.X_meta @ theta, problem.X_test @ theta])
    meta = _resolved_meta_config(config, operator)
    announce(f"simulating {meta.steps} steps of {meta.variant} reweighting ({meta.loss}), linear kernel of "
             f"{problem.D} features")
    kept = []
    trajectory = simulate(base, operator, meta, seed=config.seed, initial_outputs=initial_outputs, progress=progress,
                          keep_outputs=kept)
    trajectory = dataclasses.replace(trajectory, config=trajectory.config | {
        "init": config.init, "kernel": "linear (explicit features)", "D": problem.D, "y_true": problem.has_y_true})
    archive = compress_beside(trajectory) if saving else None
    announce("phases and claims")
    phases = _detect(trajectory, config.phase_params())
    figure = draw_beside(trajectory, phases, _figure_title(config, problem)) if saving else None
    checked = []
    if claims:
        eigenvectors = feature_eigenvectors(operator, problem.num_classes) if problem.has_y_true else None
        prediction = _rate_prediction(base, operator, meta, trajectory, phases, config.seed, initial_outputs, kept)
        checked = check_claims(trajectory, phases, problem=base, eigenvectors=eigenvectors,
                               rate_prediction=prediction, thresholds=config.thresholds())
        if not problem.has_y_true:
            checked = [_without_mask(claim) if claim.id in NEEDS_Y_TRUE else claim for claim in checked]
    result = summary(trajectory, phases, checked) | {"y_true": problem.has_y_true}
    if claims:  # on a fixed-seed subsample beyond 2000 examples (phases.sign_pattern)
        from phases.sign_pattern import problem_sign_pattern

        result["sign_pattern"] = problem_sign_pattern(base, operator, has_y_true=problem.has_y_true)
    if not problem.has_y_true:
        result = _without_detection_scores(result)
    return SimulationResult(config, problem, operator, trajectory, phases, result, archive, figure)


def _detect(trajectory, params: PhaseParams) -> Phases:
    """:func:`detect_phases`, or, for a run without ``y_true`` (``config["y_true"] is False``), the boundaries
    that do not need the noise mask: ``T_align`` (the clean examples' mean weight) and ``T_freeze`` (the noisy
    share at ``w = 0``) are unknown; the plateau of the clean-subset loss is searched from step 0 and taken as
    ``T_filter`` (the labels are assumed noisy), so the filtering row spans alignment and filtering together."""
    if trajectory.config.get("y_true", True) or trajectory.config.get("variant", "meta") != "meta":
        return detect_phases(trajectory, params)
    from phases.detect import Phase, detect

    step = trajectory.step
    found = detect(step, np.ones(len(step)), trajectory.clean_loss, True, params)
    alignment = Phase("alignment", None, None, f"{NO_Y_TRUE}: T_align reads the mean weight of the clean examples")
    return dataclasses.replace(found, T_align=None, T_freeze=None, phases=(alignment, *found.phases[1:]))


def _without_mask(claim):
    """A claim that reads the noise mask, reported n/a for a run without ``y_true``."""
    from phases.claims import NOT_APPLICABLE

    return dataclasses.replace(claim, measured={}, threshold="", verdict=NOT_APPLICABLE, margin=None,
                               detail=f"{NO_Y_TRUE} (the claim reads the noise mask)")


_MASK_SCORES = ("mean_w_clean", "mean_w_noisy", "frac_noisy_zero", "frac_clean_zero")


def _without_detection_scores(summary: dict) -> dict:
    """``summary.json`` of a run without ``y_true``: the scores that need the noise mask are null, and
    ``unavailable`` says why; the mean weight of all training examples takes their place in the phase rows."""
    for row in summary["phases"]:
        for where in ("at_start", "at_end"):
            if where in row:
                row[where] = {"mean_w": row[where]["mean_w_clean"]} | {
                    key: None if key in _MASK_SCORES else value for key, value in row[where].items()}
    summary["final"] = {key: None if key in ("auc", "precision", "recall", "frac_noisy_zero", "frac_clean_zero")
                        else value for key, value in summary["final"].items()}
    summary["unavailable"] = {"reason": NO_Y_TRUE, "claims": list(NEEDS_Y_TRUE), "boundaries": ["T_align", "T_freeze"],
                              "scores": ["auc", "precision", "recall", *_MASK_SCORES]}
    return summary


def _top_eigenvectors(K: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)``: the eigenvectors of the top ``k`` eigenvalues of ``K``, descending (all C9 reads; a full
    ``eigh`` costs several times more)."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    n = K.shape[0]
    # One BLAS thread: the reduction to tridiagonal form is a chain of small operations, which threads slow down
    # (0.1 s alone, up to 10 s when other processes share the cores).
    with threadpool_limits(1):
        _, vectors = scipy.linalg.eigh(K, subset_by_index=[max(n - k, 0), n - 1])
    return vectors[:, ::-1]


def read_config(path: str, file_name: str = "config.json") -> dict:
    """A run's JSON record (``path`` is the file, or the directory holding ``file_name``), as a dict; a one-line
    ``ValueError`` if it cannot be read."""
    if os.path.isdir(path):
        path = os.path.join(path, file_name)
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a run configuration (not a JSON object)")
    return value


def read_settings(path: str, build: Callable[[dict], object], file_name: str, command: str) -> dict:
    """The ``settings`` a saved run recorded, checked by building its configuration with ``build``."""
    settings = read_config(path, file_name).get("settings")
    if not isinstance(settings, dict):
        raise ValueError(f"{path} holds no 'settings' (not written by {command})")
    build(settings)
    return settings


def load_simulation(path: str) -> SimulationResult:
    """Read a saved simulation directory (``kernels.npz`` when present); phases are re-detected from its settings."""
    from dynamics.problem import Problem
    from dynamics.simulator import KernelBlocks
    from dynamics.trajectory import Trajectory

    needed = ("config.json", "problem.npz", "trajectory.npz", "summary.json")
    missing = [name for name in needed if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)} (write it with python -m phases.simulate "
                                f"--out {path})")
    values = read_config(path)
    config = SimulationConfig.from_dict(values["settings"]) if "settings" in values else None
    trajectory = Trajectory.load(os.path.join(path, "trajectory.npz"))
    with np.load(os.path.join(path, "problem.npz")) as data:
        if config is not None and config.on_features:
            problem = _feature_labels(dict(data), values)
        else:
            problem = Problem.from_arrays(dict(data), name=values.get("problem_name", "problem"))
    kernels_file = os.path.join(path, "kernels.npz")
    blocks = KernelBlocks.load(kernels_file) if os.path.isfile(kernels_file) else None
    params = PhaseParams(**values["phase_parameters"]) if "phase_parameters" in values else PhaseParams()
    with open(os.path.join(path, "summary.json")) as handle:
        summary = json.load(handle)
    return SimulationResult(config, problem, blocks, trajectory, _detect(trajectory, params), summary)


def _feature_labels(arrays: dict, values: dict):
    """The :class:`FeatureProblem` of a saved run on features: its labels and indices, with ``(k, 0)`` feature
    arrays (the features are not saved in a run directory; ``config.json`` names their source)."""
    from dynamics.embeddings import FeatureProblem

    labels = ("y_noisy", "y_true", "y_meta", "y_test", "num_classes", "targets")
    index = {key: value for key, value in arrays.items() if key not in labels}
    return FeatureProblem(
        X=np.empty((len(arrays["y_noisy"]), 0)), y_noisy=arrays["y_noisy"], X_meta=np.empty((len(arrays["y_meta"]), 0)),
        y_meta=arrays["y_meta"], X_test=np.empty((len(arrays["y_test"]), 0)), y_test=arrays["y_test"],
        y_true=arrays.get("y_true"), num_classes=int(arrays["num_classes"]), name=values.get("problem_name", "problem"),
        source=values.get("problem", {}).get("source", {}), index=index,
        targets=str(arrays["targets"]) if "targets" in arrays else "one-hot")


# ----------------------------------------------------------------------------- C8: finite widths

FINITE_DATASETS = ("gmm", "digits")
FINITE_NETWORKS = ("mlp", "cnn")


@dataclasses.dataclass(frozen=True)
class FiniteWidthConfig:
    """Every input of the C8 cross-check: finite-width networks against the linearized model (docs/theory.md claim C8).

    Problem: ``dataset`` ``gmm``, a Gaussian mixture of ``n, m, p`` examples,
    ``classes`` C, ``dim`` d; or ``digits``, scikit-learn's 8x8 digits
    (:func:`dynamics.problem.digits`: ``n`` training and ``m`` clean images,
    the first ``p`` of the others as the test set; ``classes`` and ``dim``
    unused); symmetric ``noise``, drawn from ``problem_seed``. Networks:
    ``network`` ``mlp`` (``depth`` hidden layers) or ``cnn`` (``depth``
    3x3 convolution layers of ``width`` channels, global average pooling and
    a dense head, :mod:`kernels.conv`; digits only), ``widths`` (at least
    two), initialisation ``seeds``, ``activation``, ``w_std``, ``b_std``,
    torch ``device``, ``precision`` (``None``: float64 on the CPU) and
    intra-op ``threads``. Dynamics (full batch, persistent clipped weights,
    both models alike): ``loss``, ``steps``, ``eta`` (``None``: the
    simulator's default for the analytic kernel), ``beta``, ``gamma``,
    ``w0``; ``eta_fractions``: further step sizes as fractions of the
    stability limit ``2 / lambda_joint`` of the analytic kernel, each
    repeating the width sweep (its gaps and re-admission are summarised, its
    trajectories not saved).
    """

    dataset: str = "gmm"
    network: str = "mlp"
    n: int = 200
    m: int = 40
    p: int = 200
    classes: int = 4
    dim: int = 16
    noise: float = 0.4
    problem_seed: int = 0
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    seeds: tuple[int, ...] = (0, 1, 2)
    depth: int = 1
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    device: str = "cpu"
    precision: str | None = None
    threads: int = 1
    loss: str = "mse"
    steps: int = 300
    eta: float | None = None
    eta_fractions: tuple[float, ...] = ()
    beta: float = 1.0
    gamma: float = 1.0
    w0: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(sorted({int(w) for w in self.widths})))
        object.__setattr__(self, "seeds", tuple(sorted({int(s) for s in self.seeds})))
        object.__setattr__(self, "eta_fractions", tuple(sorted({float(f) for f in self.eta_fractions})))
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least two distinct widths to fit a slope, got {list(self.widths)}")
        if self.dataset not in FINITE_DATASETS:
            raise ValueError(f"dataset must be one of {FINITE_DATASETS}, got {self.dataset!r}")
        if self.network not in FINITE_NETWORKS:
            raise ValueError(f"network must be one of {FINITE_NETWORKS}, got {self.network!r}")
        if self.network == "cnn" and self.dataset != "digits":
            raise ValueError("network 'cnn' reads images: it needs dataset 'digits'")
        if any(not 0 < f < 1 for f in self.eta_fractions):
            raise ValueError(f"eta_fractions must lie in (0, 1) (fractions of 2/lambda_max), "
                             f"got {list(self.eta_fractions)}")

    def problem(self):
        from dynamics.problem import digits, gaussian_mixture

        rng = np.random.default_rng(self.problem_seed)
        if self.dataset == "gmm":
            return gaussian_mixture(rng, n=self.n, m=self.m, p=self.p, num_classes=self.classes, dim=self.dim,
                                    noise_rate=self.noise)
        problem = digits(rng, n=self.n, m=self.m, noise_rate=self.noise)
        if self.p > len(problem.y_test):
            raise ValueError(f"p must be at most {len(problem.y_test)} for digits with n={self.n} and m={self.m}, "
                             f"got {self.p}")
        # The test set never feeds back into the dynamics; its size only sets the cost of every record.
        return dataclasses.replace(problem, X_test=problem.X_test[:self.p], y_test=problem.y_test[:self.p])

    def kernel_spec(self):
        if self.network == "cnn":
            from kernels.conv import ConvSpec

            return ConvSpec(depth=self.depth, activation=self.activation, W_std=self.w_std, b_std=self.b_std)
        from kernels.infinite import KernelSpec

        return KernelSpec(depth=self.depth, activation=self.activation, W_std=self.w_std, b_std=self.b_std)

    def meta_config(self) -> MetaConfig:
        return MetaConfig(loss=self.loss, eta=self.eta, beta=self.beta, gamma=self.gamma, w0=self.w0,
                          steps=self.steps)

    def networks(self):
        from dynamics.finite import NetworkConfig

        return [NetworkConfig(width=width, spec=self.kernel_spec(), device=self.device, precision=self.precision)
                for width in self.widths]

    def estimated_memory(self) -> int:
        """Bytes the widest network's run is planned to need: the analytic kernel blocks of the linearized twin,
        the parameters (and their gradients and the look-ahead's copies), and the activations of every input.
        A CNN holds every activation at each of the 64 pixels, and its analytic kernel a (64 x 64) covariance
        per pair of images in a block of rows."""
        inputs, width = self.n + self.m + self.p, max(self.widths)
        if self.network == "cnn":
            pixels, taps = 64, 9
            parameters = width * (taps + taps * width * (self.depth - 1) + 10)
            kernel_blocks = 3 * inputs ** 2 + 6 * 8 * inputs * pixels ** 2
            return 8 * (kernel_blocks + 6 * parameters + 6 * inputs * pixels * width * self.depth)
        parameters = width * (self.dim + width * (self.depth - 1) + self.classes)
        return 8 * (3 * inputs ** 2 + 6 * parameters + 6 * inputs * width * self.depth)

    def validate(self, force: bool = False):
        """Build everything cheap that a bad value breaks (raises ``ValueError``); return the problem.

        A run planned to need more memory than the machine has is refused with the estimate, unless ``force``.
        """
        import torch

        from dynamics.checks import check_memory

        self.meta_config()
        self.networks()
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device}: torch sees no CUDA device here")
        check_memory(f"the finite-width check with n={self.n}, m={self.m}, p={self.p} and width {max(self.widths)}",
                     self.estimated_memory(), force)
        return self.problem()


def fit_slope(widths: np.ndarray, gaps: np.ndarray) -> dict:
    """Least-squares fit ``log gap = intercept + slope * log width`` over all points.

    Parameters
    ----------
    widths, gaps : (k,) one point per (width, seed) pair.

    Returns
    -------
    ``slope``, ``slope_stderr`` (the regression's standard error, NaN with
    fewer than three points), ``intercept``, ``points``.
    """
    x, y = np.log(np.asarray(widths, dtype=np.float64)), np.log(np.asarray(gaps, dtype=np.float64))
    x_centred = x - x.mean()
    sxx = float(x_centred @ x_centred)
    slope = float(x_centred @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    dof = len(x) - 2
    residual = y - intercept - slope * x
    stderr = math.sqrt(float(residual @ residual) / dof / sxx) if dof > 0 else math.nan
    return {"slope": slope, "slope_stderr": stderr, "intercept": intercept, "points": int(len(x))}


def gap_series(finite, finite_test_outputs: np.ndarray, linear, linear_test_outputs: np.ndarray) -> dict:
    """The C8 gaps of one finite run at every recorded step (docs/theory.md claim C8).

    Parameters
    ----------
    finite, linear : the finite and the linearized :class:`~dynamics.trajectory.Trajectory`, recorded at the
        same steps.
    finite_test_outputs, linear_test_outputs : (T, p, C) their test outputs at those steps
        (:func:`dynamics.finite.train_finite_with_outputs`, :func:`dynamics.finite.linearized_test_outputs`).

    Returns
    -------
    ``step`` (T,); ``weight_gap`` (T,), ``max_i |w_t,i^N - w_t,i^lin|``, whose maximum is the summary's
    weight gap; ``output_gap`` (T,), ``||F_test,t^N - F_test,t^lin||_F / ||F_test^lin||_F`` with the
    linearized outputs of the final state in the denominator (the centred outputs start at zero), so that
    its last value is the summary's output gap.
    """
    if not np.array_equal(finite.step, linear.step):
        raise ValueError("the finite and the linearized runs must be recorded at the same steps")
    scale = np.linalg.norm(linear_test_outputs[-1])
    return {
        "step": np.asarray(finite.step),
        "weight_gap": np.abs(finite.w - linear.w).max(axis=1),
        "output_gap": np.linalg.norm(finite_test_outputs - linear_test_outputs, axis=(1, 2)) / scale,
    }


def _relative_gap(finite: int | None, linear: int | None) -> float:
    """``|T^N - T^lin| / T^lin`` of one boundary; 0 when both are missing, infinite (JSON null) when one is."""
    if finite is None and linear is None:
        return 0.0
    if finite is None or linear is None:
        return math.inf
    if linear == 0:
        return 0.0 if finite == 0 else math.inf
    return abs(finite - linear) / linear


def _gaps(finite, linear, finite_phases: Phases, linear_phases: Phases, series: dict) -> dict:
    """C8 gaps of one finite run: weights (max over steps of the sup norm), test outputs, phase boundaries,
    re-admission, and the per-step ``series`` of :func:`gap_series`."""
    test_gap = np.linalg.norm(finite.test_outputs - linear.test_outputs) / np.linalg.norm(linear.test_outputs)
    return {
        "weight_gap": float(np.abs(finite.w - linear.w).max()),
        "output_gap": float(test_gap),
        "T_align": finite_phases.T_align,
        "T_filter": finite_phases.T_filter,
        "T_align_rel_gap": _relative_gap(finite_phases.T_align, linear_phases.T_align),
        "T_filter_rel_gap": _relative_gap(finite_phases.T_filter, linear_phases.T_filter),
        "final_test_accuracy": float(finite.test_accuracy[-1]),
        "final_frac_noisy_zero": float(finite.weight_stats()["frac_noisy_zero"][-1]),
        "readmitted_noisy": readmitted_share(finite, finite_phases.T_filter),
        "series": {"weight_gap": series["weight_gap"].tolist(), "output_gap": series["output_gap"].tolist()},
    }


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteWidthResult:
    """The C8 cross-check: ``summary`` (``summary.json``), the linearized run and every finite run by (width, seed)
    at the main step size."""

    config: FiniteWidthConfig
    problem: object
    linearized: object
    linear_phases: Phases
    finite: dict
    summary: dict

    def save(self, directory: str, *, command: str | None = None) -> list[str]:
        """Write ``summary.json``, ``width_<N>.json``, ``problem.npz``, ``linearized.npz``,
        ``finite_w<N>_s<seed>.npz`` and ``finite.png`` into an existing ``directory``."""
        from phases.cli import versions, write_json
        from phases.plot import plot_finite_width

        summary = self.summary | {"command": command or "python -m phases.finite --config <this summary.json>",
                                  "settings": dataclasses.asdict(self.config), "versions": versions()}
        self.linearized.save(os.path.join(directory, "linearized.npz"))
        np.savez(os.path.join(directory, "problem.npz"), **self.problem.arrays())
        for (width, seed), trajectory in self.finite.items():
            trajectory.save(os.path.join(directory, f"finite_w{width}_s{seed}.npz"))
        for row in summary["per_width"]:
            write_json(os.path.join(directory, f"width_{row['width']}.json"), row)
        widths = self.config.widths
        examples = {width: self.finite[(width, self.config.seeds[0])] for width in (widths[0], widths[-1])}
        fig = plot_finite_width(summary, self.linearized, examples, self.linear_phases)
        fig.savefig(os.path.join(directory, "finite.png"), dpi=110)
        write_json(os.path.join(directory, "summary.json"), summary)
        return ["summary.json", "width_<N>.json", "problem.npz", "linearized.npz", "finite_w<N>_s<seed>.npz",
                "finite.png"]


def _spread(values: list) -> dict:
    """``per_seed`` values and their ``mean`` and ``max`` over the seeds that have one (``None`` when none has)."""
    present = [v for v in values if v is not None]
    return {"per_seed": values, "mean": float(np.mean(present)) if present else None,
            "max": float(np.max(present)) if present else None}


def _width_sweep(config: FiniteWidthConfig, problem, blocks, meta: MetaConfig, phase_params: PhaseParams, *,
                 progress, main: bool) -> dict:
    """The linearized run at ``meta.eta`` and every (width, seed) finite run beside it.

    ``main``: keep the finite trajectories and let a diverging finite run raise; otherwise (a further step
    size of ``eta_fractions``) a diverging run is recorded as such and skipped.
    """
    import time

    import torch

    from dynamics.finite import linearized_test_outputs, train_finite_with_outputs
    from dynamics.simulator import DivergenceError, simulate

    linear = simulate(problem, blocks, meta)
    linear_phases = detect_phases(linear, phase_params)
    linear_outputs = linearized_test_outputs(problem, blocks, meta, linear.step)
    per_width, points, finite = [], [], {}
    for network in config.networks():
        width_started = time.perf_counter()
        runs = []
        for seed in config.seeds:
            report = None if progress is None else (lambda done, w=network.width, s=seed: progress(w, s, done))
            try:
                run, outputs = train_finite_with_outputs(problem, meta, network,
                                                         generator=torch.Generator().manual_seed(seed),
                                                         progress=report, blocks=blocks)
            except DivergenceError as error:
                if main:
                    raise
                runs.append({"seed": seed, "diverged": str(error)})
                continue
            if main:
                finite[(network.width, seed)] = run
            series = gap_series(run, outputs, linear, linear_outputs)
            runs.append({"seed": seed} | _gaps(run, linear, detect_phases(run, phase_params), linear_phases, series))
            points.append((network.width, runs[-1]["weight_gap"]))
        done = [r for r in runs if "diverged" not in r]
        row = {"width": network.width, "runs": runs, "runtime_s": time.perf_counter() - width_started}
        for key in ("weight_gap", "output_gap", "T_align_rel_gap", "T_filter_rel_gap", "readmitted_noisy"):
            row[key] = _spread([r.get(key) for r in runs])
        row["T_align"] = {"per_seed": [r.get("T_align") for r in runs], "linearized": linear_phases.T_align}
        row["T_filter"] = {"per_seed": [r.get("T_filter") for r in runs], "linearized": linear_phases.T_filter}
        row["boundary_rel_gap_max"] = max((max(r["T_align_rel_gap"], r["T_filter_rel_gap"]) for r in done),
                                          default=None)
        row["diverged_seeds"] = [r["seed"] for r in runs if "diverged" in r]
        per_width.append(row)
    return {"linear": linear, "linear_phases": linear_phases, "per_width": per_width, "points": points,
            "finite": finite}


def _linearized_summary(linear, phases: Phases) -> dict:
    return {"T_align": phases.T_align, "T_filter": phases.T_filter,
            "final_test_accuracy": float(linear.test_accuracy[-1]),
            "final_frac_noisy_zero": float(linear.weight_stats()["frac_noisy_zero"][-1]),
            "readmitted_noisy": readmitted_share(linear, phases.T_filter)}


def _slope_of(points: list) -> dict:
    """:func:`fit_slope` over the (width, gap) points, or ``None`` fields with fewer than two widths."""
    if len({width for width, _ in points}) < 2:
        return {"slope": None, "slope_stderr": None, "intercept": None, "points": len(points)}
    widths, gaps = np.array(points).T
    return fit_slope(widths, gaps)


def run_finite_width(config: FiniteWidthConfig = FiniteWidthConfig(), *,
                     progress: Callable[[int, int, int], None] | None = None,
                     stage: Callable[[str], None] | None = None) -> FiniteWidthResult:
    """Claim C8: exact bi-level meta-reweighting of finite-width networks beside the linearized model.

    The linearized model uses the analytic NTK of the same architecture; both
    take the same ``eta``, ``beta``, ``gamma`` and steps, full batch. Each
    finite run's gaps are recorded at every recorded step
    (:func:`gap_series`), with its late-phase re-admission
    (:func:`phases.detect.readmitted_share`). The width sweep is repeated at every step size
    of ``config.eta_fractions`` (summary ``eta_sweep``; the main ``eta`` is
    its entry with ``"main": true``).

    Parameters
    ----------
    progress : called as ``progress(width, seed, steps_done)`` during each finite run.
    stage : called with a one-line description as each stage starts.
    """
    import time

    import torch

    from dynamics.finite import analytic_kernel
    from dynamics.simulator import KernelBlocks, default_eta

    announce = stage or (lambda text: None)
    problem = config.validate()
    spec = config.kernel_spec()
    meta = config.meta_config()
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    architecture = (f"depth-{spec.depth} {spec.activation} MLP" if config.network == "mlp" else
                    f"{spec.activation} CNN of {spec.depth} 3x3 conv layer(s), global average pooling")
    try:
        announce(f"linearized model: analytic NTK of the {architecture}, {problem.name}, "
                 f"n={config.n}, m={config.m}, p={config.p}")
        blocks = KernelBlocks.from_problem(problem, analytic_kernel(spec))
        eta_default, lambda_joint = default_eta(blocks, meta.gamma)
        eta = eta_default if config.eta is None else float(config.eta)
        limit = 2.0 / lambda_joint
        etas = [eta] + [f * limit for f in config.eta_fractions if not math.isclose(f * limit, eta)]
        phase_params = PhaseParams()
        sweeps = []
        for index, step_size in enumerate(etas):
            announce(f"finite networks: widths {list(config.widths)}, seeds {list(config.seeds)}, {config.steps} "
                     f"steps, eta={step_size:.4g} ({step_size / limit:.3g} of 2/lambda_max)")
            sweeps.append(_width_sweep(config, problem, blocks, dataclasses.replace(meta, eta=step_size),
                                       phase_params, progress=progress, main=index == 0))
    finally:
        torch.set_num_threads(threads)

    announce("slope and summary")
    main = sweeps[0]
    linear, linear_phases, per_width, finite = main["linear"], main["linear_phases"], main["per_width"], main["finite"]
    widest = per_width[-1]
    last = finite[(config.widths[-1], config.seeds[-1])]
    eta_sweep = []
    for step_size, sweep in sorted(zip(etas, sweeps), key=lambda pair: pair[0]):
        eta_sweep.append({
            "eta": step_size, "eta_fraction": step_size / limit, "main": sweep is main,
            **_slope_of(sweep["points"]),
            "linearized": _linearized_summary(sweep["linear"], sweep["linear_phases"]),
            "per_width": [{key: row[key] for key in ("width", "weight_gap", "output_gap", "readmitted_noisy",
                                                     "T_filter", "diverged_seeds")} for row in sweep["per_width"]],
        })
    problem_source = ({"generator": "dynamics.problem.gaussian_mixture", "num_classes": config.classes,
                       "dim": config.dim} if config.dataset == "gmm" else
                      {"generator": "dynamics.problem.digits", "num_classes": problem.num_classes,
                       "test_set": f"the first p={config.p} of the images outside the training and clean sets"})
    summary = {
        "title": f"C8 on {problem.name}, n={config.n}, m={config.m}, p={config.p}: {architecture}, {config.loss}, "
                 f"{config.steps} steps, eta={eta:.3g}, beta={config.beta:g}, gamma={config.gamma:g}",
        **fit_slope(*np.array(main["points"]).T),
        "slope_fit": "least squares of log(weight gap) on log(width) over every (width, seed) pair",
        "definitions": {
            "weight_gap": "max over recorded steps and examples of |w^N - w^lin|",
            "output_gap": "||F_test^N - F_test^lin||_F / ||F_test^lin||_F at the final state",
            "T_align_rel_gap": "|T_align^N - T_align^lin| / T_align^lin (null when only one run has it)",
            "T_filter_rel_gap": "|T_filter^N - T_filter^lin| / T_filter^lin (null when only one run has it)",
            "series": "per recorded step (record_steps): weight_gap = max_i |w_t,i^N - w_t,i^lin|; output_gap = "
                      "||F_test,t^N - F_test,t^lin||_F / ||F_test^lin||_F (final linearized outputs)",
            "readmitted_noisy": "of the noisy examples at w = 0 at the run's own T_filter, the share at w > 0 at a "
                                "later recorded step",
            "eta_fraction": "eta / (2 / lambda_joint), lambda_joint the top eigenvalue of the analytic joint kernel",
        },
        "widths": list(config.widths), "seeds": list(config.seeds),
        "record_steps": linear.step.tolist(),
        "lambda_joint": lambda_joint, "eta_stable_below": limit,
        "per_width": per_width,
        "linearized": _linearized_summary(linear, linear_phases),
        "eta_sweep": eta_sweep,
        "widest": {"width": widest["width"], "boundary_rel_gap_max": widest["boundary_rel_gap_max"],
                   "T_align": widest["T_align"], "T_filter": widest["T_filter"],
                   "weight_gap_mean": widest["weight_gap"]["mean"]},
        "phase_detector": "phases.detect.detect_phases", "phase_parameters": dataclasses.asdict(phase_params),
        "problem": problem_source | {"name": problem.name, "dataset": config.dataset, "n": config.n,
                                     "m": config.m, "p": config.p, "noise_rate": config.noise,
                                     "realised_noise_rate": problem.noise_rate, "seed": config.problem_seed},
        "config": {"linearized": linear.config,
                   "finite": {key: value for key, value in last.config.items() if key not in ("width", "seed")},
                   "threads": config.threads},
        "runtime_s": time.perf_counter() - started,
    }
    return FiniteWidthResult(config, problem, linear, linear_phases, finite, summary)


# ----------------------------------------------------------------------------- claims over seeds


def seed_summary(config: SimulationConfig) -> dict:
    """One run's ``summary.json`` (phases, claims, final metrics) plus its seed and realised noise: a study's record."""
    result = run_simulation(config)
    return {"seed": config.seed, "realised_noise_rate": result.problem.noise_rate, **result.summary}


def run_seeds(config: SimulationConfig, seeds, *, workers: int | None = None,
              on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
    """:func:`seed_summary` of ``config`` at every seed, on a local process pool; records in seed order."""
    from phases.executor import run_tasks

    tasks = [(dataclasses.replace(config, seed=int(seed)),) for seed in seeds]
    return run_tasks(seed_summary, tasks, workers=workers, on_result=on_result)


def claims_over_seeds(records: list[dict]) -> list[dict]:
    """Per claim: how often each verdict came out, and the distribution of its margin over the seeds."""
    rows = {}
    for record in records:
        for claim in record["claims"]:
            row = rows.setdefault(claim["id"], {"id": claim["id"], "name": claim["name"], "kind": claim["kind"],
                                                "holds": 0, "fails": 0, "n/a": 0, "margins": [],
                                                "failed_seeds": []})
            row[claim["verdict"]] += 1
            if claim["margin"] is not None:
                row["margins"].append(claim["margin"])
            if claim["verdict"] == "fails":
                row["failed_seeds"].append(record["seed"])
    for row in rows.values():
        margins = np.asarray(row.pop("margins"), dtype=np.float64)
        row["margin"] = None if margins.size == 0 else {
            "min": float(margins.min()), "median": float(np.median(margins)), "max": float(margins.max()),
            "mean": float(margins.mean()), "std": float(margins.std(ddof=1)) if margins.size > 1 else None}
    return list(rows.values())
