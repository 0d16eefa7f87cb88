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

import dataclasses
import json
import math
import os
from collections.abc import Callable

import numpy as np

from phases.detect import PhaseParams, Phases, detect_phases

DATASETS = ("gmm", "digits")
NOISE_TYPES = ("symmetric", "pair", "instance")
INITS = ("zero", "gp")


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Every input of one simulation (docs/theory.md sections 2, 5; defaults: the default problem of section 5).

    Problem: ``dataset`` (``gmm`` or ``digits``), ``noise`` rate and ``noise_type``,
    ``classes`` C and ``dim`` d (gmm), sizes ``n, m, p`` (``p``: gmm only),
    ``separation`` and ``spread`` (gmm). Kernel: ``kernel`` (``ntk`` or ``nngp``)
    of a fully connected network of ``depth`` hidden layers, ``activation``,
    ``w_std``, ``b_std``. Dynamics: the fields of
    :class:`dynamics.simulator.MetaConfig` plus ``init`` (initial outputs) and
    ``seed`` (problem, batches, perturbations). Phase detection: the fields of
    :class:`phases.detect.PhaseParams`.
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
    kernel: str = "ntk"
    depth: int = 2
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    variant: str = "meta"
    loss: str = "mse"
    eta: float | None = None
    beta: float = 1.0
    gamma: float = 1.0
    w0: float = 0.5
    init: str = "zero"
    batch_size: int | None = None
    meta_batch_size: int | None = None
    steps: int = 2000
    record_every: int = 1
    perturb_draws: int = 4
    seed: int = 0
    align_fraction: float = PhaseParams().align_fraction
    window: float = PhaseParams().window_fraction
    min_window: int = PhaseParams().min_window
    tau: float = PhaseParams().tau
    tau_w: float = PhaseParams().tau_w

    def __post_init__(self):
        for name, value, choices in (("dataset", self.dataset, DATASETS), ("noise_type", self.noise_type, NOISE_TYPES),
                                     ("init", self.init, INITS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.record_every > self.steps:
            raise ValueError(f"record_every must be at most steps = {self.steps}, got {self.record_every}")

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
                args += [f"--{field.name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]
        return args

    def phase_params(self) -> PhaseParams:
        return PhaseParams(self.align_fraction, self.window, self.min_window, self.tau, self.tau_w)

    def meta_config(self):
        from dynamics.simulator import MetaConfig

        return MetaConfig(loss=self.loss, variant=self.variant, eta=self.eta, beta=self.beta, gamma=self.gamma,
                          w0=self.w0, steps=self.steps, batch_size=self.batch_size,
                          meta_batch_size=self.meta_batch_size, record_every=self.record_every,
                          perturb_draws=self.perturb_draws)

    def kernel_spec(self):
        from kernels.infinite import KernelSpec

        return KernelSpec(self.depth, self.activation, self.w_std, self.b_std, self.kernel)

    def problem(self):
        """The problem, drawn from ``np.random.default_rng(seed)``."""
        from dynamics.problem import digits, gaussian_mixture

        rng = np.random.default_rng(self.seed)
        if self.dataset == "gmm":
            return gaussian_mixture(rng, n=self.n, m=self.m, p=self.p, num_classes=self.classes, dim=self.dim,
                                    separation=self.separation, spread=self.spread, noise_rate=self.noise,
                                    noise_type=self.noise_type)
        return digits(rng, n=self.n, m=self.m, noise_rate=self.noise, noise_type=self.noise_type)

    def estimated_memory(self) -> int:
        """Bytes the run is planned to need: kernel blocks (and their stacked copy), the eigendecompositions of
        C9 and C5', and the recorded ``(T, n)`` series (weights, scores, residual norms, their statistics)."""
        n, m, p = self.n, self.m, self.p
        recorded = self.steps // self.record_every + 2
        return 8 * (2 * ((n + m) ** 2 + p * (n + m)) + 3 * (n + m) ** 2) + 48 * recorded * n

    def validate(self, force: bool = False):
        """Build everything cheap that a bad value breaks (raises ``ValueError``); return the problem.

        A run planned to need more memory than the machine has is refused with the estimate, unless ``force``.
        """
        from dynamics.checks import check_memory

        self.phase_params()
        self.meta_config()
        self.kernel_spec()
        check_memory(f"a simulation with n={self.n}, m={self.m}, p={self.p} and {self.steps} steps recorded every "
                     f"{self.record_every}", self.estimated_memory(), force)
        problem = self.problem()
        n, m, _ = problem.sizes
        for name, size, limit in (("batch_size", self.batch_size, n), ("meta_batch_size", self.meta_batch_size, m)):
            if size is not None and size > limit:
                raise ValueError(f"{name} must be at most {limit}, got {size}")
        return problem


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

    def config_json(self, command: str | None = None) -> dict:
        """``config.json``: the settings (re-runnable), every resolved parameter, versions and the command."""
        from phases.cli import versions

        n, m, p = self.problem.sizes
        return {
            "command": command or " ".join(["python -m phases.simulate", *self.config.argv()]),
            "settings": dataclasses.asdict(self.config),
            **self.trajectory.config,
            "dataset": self.config.dataset, "noise": self.config.noise, "noise_type": self.config.noise_type,
            "realised_noise_rate": self.problem.noise_rate, "problem_name": self.problem.name,
            "problem": {"n": n, "m": m, "p": p, "num_classes": self.problem.num_classes,
                        "dim": self.problem.X.shape[1], "separation": self.config.separation,
                        "spread": self.config.spread},
            "kernel": dataclasses.asdict(self.config.kernel_spec()),
            "phase_parameters": dataclasses.asdict(self.phases.params),
            "versions": versions(),
        }

    def save(self, directory: str, *, kernels: bool = False, figure: bool = True, command: str | None = None) -> list[str]:
        """Write the run into an existing ``directory``; return the file names written."""
        from phases.cli import write_json

        write_json(os.path.join(directory, "config.json"), self.config_json(command))
        np.savez(os.path.join(directory, "problem.npz"), **self.problem.arrays())
        self.trajectory.save(os.path.join(directory, "trajectory.npz"))
        written = ["config.json", "problem.npz", "trajectory.npz", "summary.json"]
        if kernels:
            np.savez(os.path.join(directory, "kernels.npz"), **self.blocks.arrays())
            written.append("kernels.npz")
        write_json(os.path.join(directory, "summary.json"), self.summary)
        if figure:
            import matplotlib.pyplot as plt

            from phases.plot import plot_trajectory

            meta = self.config
            fig = plot_trajectory(self.trajectory, self.phases, title=f"{self.problem.name}: {meta.variant} "
                                                                      f"reweighting, {meta.loss}, gamma={meta.gamma:g}")
            fig.savefig(os.path.join(directory, "trajectory.png"), dpi=110)
            plt.close(fig)
            written.append("trajectory.png")
        return written


def run_simulation(config: SimulationConfig = SimulationConfig(), *, progress: Callable[[int], None] | None = None,
                   stage: Callable[[str], None] | None = None, claims: bool = True) -> SimulationResult:
    """Draw the problem, compute the kernel blocks, simulate, detect the phases and check the claims.

    Parameters
    ----------
    config : every input.
    progress : called with the current step during the simulation.
    stage : called with a one-line description as each stage starts.
    claims : check the claims (``False`` skips them and the ``K_XX`` eigenvectors C9 needs).

    Raises
    ------
    ValueError : a bad configuration.  dynamics.simulator.DivergenceError : an unstable step size.
    """
    from dynamics.simulator import KernelBlocks, gp_prior_outputs, simulate
    from kernels import eigh_kernel, kernel
    from phases.claims import check_claims, predict_post_filtering_rate
    from phases.report import summary

    announce = stage or (lambda text: None)
    problem = config.validate()
    spec = config.kernel_spec()
    n, m, p = problem.sizes
    announce(f"problem: {problem.name}, n={n}, m={m}, p={p}, realised noise {problem.noise_rate:.3f}")
    blocks = KernelBlocks.from_problem(problem, lambda a, b: kernel(spec, a, b))
    initial_outputs = None
    if config.init == "gp":
        inputs = np.concatenate([problem.X, problem.X_meta, problem.X_test])
        nngp = kernel(dataclasses.replace(spec, kind="nngp"), inputs)
        initial_outputs = gp_prior_outputs(nngp, problem.num_classes, np.random.default_rng([config.seed, 1]))
    meta = config.meta_config()
    announce(f"simulating {meta.steps} steps of {meta.variant} reweighting ({meta.loss}), "
             f"kernel {spec.kind} depth {spec.depth} {spec.activation}")
    trajectory = simulate(problem, blocks, meta, seed=config.seed, initial_outputs=initial_outputs, progress=progress)
    trajectory = dataclasses.replace(trajectory, config=trajectory.config | {"init": config.init})
    announce("phases and claims")
    phases = detect_phases(trajectory, config.phase_params())
    checked = []
    if claims:
        _, eigenvectors = eigh_kernel(blocks.K_XX)
        prediction = None
        if phases.T_filter is not None and phases.T_filter > 0:
            # The state at T_filter, for C5': the same run, stopped there (the dynamics are deterministic).
            head = dataclasses.replace(meta, eta=trajectory.config["eta"], steps=phases.T_filter,
                                       record_every=phases.T_filter, perturb_draws=0)
            stopped = simulate(problem, blocks, head, seed=config.seed, initial_outputs=initial_outputs)
            outputs = np.concatenate([stopped.outputs, stopped.meta_outputs])
            prediction = predict_post_filtering_rate(problem, blocks, trajectory, phases, outputs)
        checked = check_claims(trajectory, phases, problem=problem, eigenvectors=eigenvectors,
                               rate_prediction=prediction)
    return SimulationResult(config, problem, blocks, trajectory, phases, summary(trajectory, phases, checked))


def read_config(path: str) -> dict:
    """``config.json`` of a run directory (or the file itself), as a dict; one-line ``ValueError`` if unreadable."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a run configuration (not a JSON object)")
    return value


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
        problem = Problem.from_arrays(dict(data), name=values.get("problem_name", "problem"))
    kernels_file = os.path.join(path, "kernels.npz")
    blocks = KernelBlocks.load(kernels_file) if os.path.isfile(kernels_file) else None
    params = PhaseParams(**values["phase_parameters"]) if "phase_parameters" in values else PhaseParams()
    with open(os.path.join(path, "summary.json")) as handle:
        summary = json.load(handle)
    return SimulationResult(config, problem, blocks, trajectory, detect_phases(trajectory, params), summary)


# ----------------------------------------------------------------------------- C8: finite widths


@dataclasses.dataclass(frozen=True)
class FiniteWidthConfig:
    """Every input of the C8 cross-check: finite-width MLPs against the linearized model (docs/theory.md claim C8).

    Problem: a Gaussian mixture of ``n, m, p`` examples, ``classes`` C, ``dim`` d,
    symmetric ``noise``, drawn from ``problem_seed``. Networks: ``widths`` (at
    least two), initialisation ``seeds``, ``depth`` hidden layers,
    ``activation``, ``w_std``, ``b_std``, torch ``device`` and intra-op
    ``threads``. Dynamics (full batch, persistent clipped weights, both
    models alike): ``loss``, ``steps``, ``eta`` (``None``: the simulator's
    default for the analytic kernel), ``beta``, ``gamma``, ``w0``.
    """

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
    threads: int = 1
    loss: str = "mse"
    steps: int = 300
    eta: float | None = None
    beta: float = 1.0
    gamma: float = 1.0
    w0: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(sorted({int(w) for w in self.widths})))
        object.__setattr__(self, "seeds", tuple(sorted({int(s) for s in self.seeds})))
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least two distinct widths to fit a slope, got {list(self.widths)}")

    def problem(self):
        from dynamics.problem import gaussian_mixture

        return gaussian_mixture(np.random.default_rng(self.problem_seed), n=self.n, m=self.m, p=self.p,
                                num_classes=self.classes, dim=self.dim, noise_rate=self.noise)

    def kernel_spec(self):
        from kernels.infinite import KernelSpec

        return KernelSpec(depth=self.depth, activation=self.activation, W_std=self.w_std, b_std=self.b_std)

    def meta_config(self):
        from dynamics.simulator import MetaConfig

        return MetaConfig(loss=self.loss, eta=self.eta, beta=self.beta, gamma=self.gamma, w0=self.w0,
                          steps=self.steps)

    def networks(self):
        from dynamics.finite import NetworkConfig

        return [NetworkConfig(width=width, spec=self.kernel_spec(), device=self.device) for width in self.widths]

    def validate(self):
        """Build everything cheap that a bad value breaks (raises ``ValueError``); return the problem."""
        import torch

        self.meta_config()
        self.networks()
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device}: torch sees no CUDA device here")
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


def _relative_gap(finite: int | None, linear: int | None) -> float:
    """``|T^N - T^lin| / T^lin`` of one boundary; 0 when both are missing, infinite (JSON null) when one is."""
    if finite is None and linear is None:
        return 0.0
    if finite is None or linear is None:
        return math.inf
    if linear == 0:
        return 0.0 if finite == 0 else math.inf
    return abs(finite - linear) / linear


def _gaps(finite, linear, finite_phases: Phases, linear_phases: Phases) -> dict:
    """C8 gaps of one finite run: weights (max over steps of the sup norm), test outputs, phase boundaries."""
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
    }


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteWidthResult:
    """The C8 cross-check: ``summary`` (``summary.json``), the linearized run and every finite run by (width, seed)."""

    config: FiniteWidthConfig
    problem: object
    linearized: object
    linear_phases: Phases
    finite: dict
    summary: dict

    def save(self, directory: str, *, command: str | None = None) -> list[str]:
        """Write ``summary.json``, ``width_<N>.json``, ``problem.npz``, ``linearized.npz``,
        ``finite_w<N>_s<seed>.npz`` and ``finite.png`` into an existing ``directory``."""
        import matplotlib.pyplot as plt

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
        plt.close(fig)
        write_json(os.path.join(directory, "summary.json"), summary)
        return ["summary.json", "width_<N>.json", "problem.npz", "linearized.npz", "finite_w<N>_s<seed>.npz",
                "finite.png"]


def run_finite_width(config: FiniteWidthConfig = FiniteWidthConfig(), *,
                     progress: Callable[[int, int, int], None] | None = None,
                     stage: Callable[[str], None] | None = None) -> FiniteWidthResult:
    """Claim C8: exact bi-level meta-reweighting of finite-width MLPs beside the linearized model.

    The linearized model uses the analytic NTK of the same architecture; both
    take the same ``eta``, ``beta``, ``gamma`` and steps, full batch.

    Parameters
    ----------
    progress : called as ``progress(width, seed, steps_done)`` during each finite run.
    stage : called with a one-line description as each stage starts.
    """
    import time

    import torch

    from dynamics.finite import train_finite
    from dynamics.simulator import KernelBlocks, simulate
    from kernels.infinite import kernel

    announce = stage or (lambda text: None)
    problem = config.validate()
    spec = config.kernel_spec()
    meta = config.meta_config()
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        announce(f"linearized model: analytic NTK of depth {spec.depth} {spec.activation}, {problem.name}, "
                 f"n={config.n}, m={config.m}, p={config.p}")
        blocks = KernelBlocks.from_problem(problem, lambda a, b: kernel(spec, a, b))
        linear = simulate(problem, blocks, meta)
        eta = linear.config["eta"]
        meta = dataclasses.replace(meta, eta=eta)
        phase_params = PhaseParams()
        linear_phases = detect_phases(linear, phase_params)
        announce(f"finite networks: widths {list(config.widths)}, seeds {list(config.seeds)}, {config.steps} steps, "
                 f"eta={eta:.4g}")
        per_width, points, finite = [], [], {}
        for network in config.networks():
            width_started = time.perf_counter()
            runs = []
            for seed in config.seeds:
                report = None if progress is None else (lambda done, w=network.width, s=seed: progress(w, s, done))
                run = train_finite(problem, meta, network, generator=torch.Generator().manual_seed(seed),
                                   progress=report)
                finite[(network.width, seed)] = run
                runs.append({"seed": seed} | _gaps(run, linear, detect_phases(run, phase_params), linear_phases))
                points.append((network.width, runs[-1]["weight_gap"]))
            row = {"width": network.width, "runs": runs, "runtime_s": time.perf_counter() - width_started}
            for key in ("weight_gap", "output_gap", "T_align_rel_gap", "T_filter_rel_gap"):
                values = [r[key] for r in runs]
                row[key] = {"per_seed": values, "mean": float(np.mean(values)), "max": float(np.max(values))}
            row["T_align"] = {"per_seed": [r["T_align"] for r in runs], "linearized": linear_phases.T_align}
            row["T_filter"] = {"per_seed": [r["T_filter"] for r in runs], "linearized": linear_phases.T_filter}
            row["boundary_rel_gap_max"] = max(row["T_align_rel_gap"]["max"], row["T_filter_rel_gap"]["max"])
            per_width.append(row)
    finally:
        torch.set_num_threads(threads)

    announce("slope and summary")
    widths_of_points, gaps = np.array(points).T
    widest = per_width[-1]
    last = finite[(config.widths[-1], config.seeds[-1])]
    summary = {
        "title": f"C8 on {problem.name}, n={config.n}, m={config.m}, p={config.p}: depth-{spec.depth} "
                 f"{spec.activation} MLP, {config.loss}, {config.steps} steps, eta={eta:.3g}, beta={config.beta:g}, "
                 f"gamma={config.gamma:g}",
        **fit_slope(widths_of_points, gaps),
        "slope_fit": "least squares of log(weight gap) on log(width) over every (width, seed) pair",
        "definitions": {
            "weight_gap": "max over recorded steps and examples of |w^N - w^lin|",
            "output_gap": "||F_test^N - F_test^lin||_F / ||F_test^lin||_F at the final state",
            "T_align_rel_gap": "|T_align^N - T_align^lin| / T_align^lin (null when only one run has it)",
            "T_filter_rel_gap": "|T_filter^N - T_filter^lin| / T_filter^lin (null when only one run has it)",
        },
        "widths": list(config.widths), "seeds": list(config.seeds),
        "per_width": per_width,
        "linearized": {"T_align": linear_phases.T_align, "T_filter": linear_phases.T_filter,
                       "final_test_accuracy": float(linear.test_accuracy[-1]),
                       "final_frac_noisy_zero": float(linear.weight_stats()["frac_noisy_zero"][-1])},
        "widest": {"width": widest["width"], "boundary_rel_gap_max": widest["boundary_rel_gap_max"],
                   "T_align": widest["T_align"], "T_filter": widest["T_filter"],
                   "weight_gap_mean": widest["weight_gap"]["mean"]},
        "phase_detector": "phases.detect.detect_phases", "phase_parameters": dataclasses.asdict(phase_params),
        "problem": {"generator": "dynamics.problem.gaussian_mixture", "name": problem.name, "n": config.n,
                    "m": config.m, "p": config.p, "num_classes": config.classes, "dim": config.dim,
                    "noise_rate": config.noise, "realised_noise_rate": problem.noise_rate,
                    "seed": config.problem_seed},
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
            "min": float(margins.min()), "median": float(np.median(margins)), "max": float(margins.max())}
    return list(rows.values())
