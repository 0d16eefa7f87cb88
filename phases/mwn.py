"""Meta-Weight-Net beside free weights: the phases, C4's vanishing coupling, and the width check (docs/theory.md
section 2.1).

    python -m phases.mwn phases --dataset gmm [--out DIR]
    python -m phases.mwn phases --dataset digits
    python -m phases.mwn width --widths 64,256,1024,4096 --seeds 0,1 --steps 150 [--out DIR]

``phases`` simulates, on the linearized model of the main command (same problem, kernel, ``eta``, ``gamma`` and
steps), free weights (docs/theory.md section 2) and Meta-Weight-Net (section 2.1) from the same initial weight,
detects the phases of both (section 5), and reports C4's coupling: how ``||R_meta_hat||_F`` and the weights'
velocity fall, and whether the velocity scales like ``sqrt(L_meta)`` in post-filtering (claim C4'). A sigmoid
never reaches 0, so beside ``T_freeze`` (read from the share of noisy examples at ``w = 0``, empty for MWN) the
table gives ``T_freeze`` read from the share below ``--threshold``, for both.

``width`` trains finite-width networks with MWN by exact bi-level autodiff beside the linearized MWN from the same
V (claim C8 for MWN), on the finite-width check's problem (``python -m phases.finite``), and fits the log-log slope
of the weight gap against width.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from phases.cli import ArgumentParser, HelpFormatter, OutputDirectory, UserError, add_output_arguments, \
    add_size_arguments, bounded, int_list, positive_int, refuse_jax_cache, run_main
from phases.detect import Phases, detect, detect_phases
from phases.experiments import FINITE_DATASETS, FiniteWidthConfig, SimulationConfig, fit_slope

PROG = "python -m phases.mwn"


@dataclasses.dataclass(frozen=True)
class MWNSettings:
    """Meta-Weight-Net's own knobs: V's meta step ``beta`` (docs/theory.md section 2.1), its hidden units, the seed
    of its initialisation, and the weight below which an example counts as filtered (a sigmoid never reaches 0)."""

    beta: float = 1.0
    hidden: int = 100
    weight_net_seed: int = 0
    threshold: float = 0.05

    def __post_init__(self):
        from dynamics.checks import integer, real

        real("beta", self.beta, 0.0)
        integer("hidden", self.hidden, 1)
        integer("weight_net_seed", self.weight_net_seed, 0)
        real("threshold", self.threshold, 0.0, 1.0, strict_low=True)

    def theta0(self) -> dict:
        from dynamics.mwn import init_weight_net

        return init_weight_net(np.random.default_rng(self.weight_net_seed), self.hidden)


# ----------------------------------------------------------------------------- what is measured


def velocity_decay(step: np.ndarray, clean_loss: np.ndarray, velocity: np.ndarray, post: np.ndarray) -> dict:
    """How a velocity series falls, and whether it scales like ``sqrt(L_meta)`` in post-filtering (claim C4').

    Parameters
    ----------
    step, clean_loss, velocity : (T,) recorded steps, ``L_meta`` and the velocity.
    post : (T,) bool, the post-filtering records.

    Returns
    -------
    ``start``, ``end``, ``fall`` (start / end); over post-filtering, ``ratio_spread`` (max / min of ``velocity /
    sqrt(L_meta)``; 1 is exact proportionality, C4' asks for at most 2) and ``exponent`` (the least-squares slope of
    ``log velocity`` on ``log L_meta``; C4's bound gives 1/2). ``None`` where post-filtering has fewer than two
    records with positive values.
    """
    velocity = np.asarray(velocity, dtype=np.float64)
    result = {"start": float(velocity[0]), "end": float(velocity[-1]),
              "fall": float(velocity[0] / velocity[-1]) if velocity[-1] > 0 else math.inf,
              "ratio_spread": None, "exponent": None}
    keep = post & (clean_loss > 0) & (velocity > 0)
    if keep.sum() >= 2:
        ratio = velocity[keep] / np.sqrt(clean_loss[keep])
        result["ratio_spread"] = float(ratio.max() / ratio.min())
        x = np.log(clean_loss[keep])
        if np.ptp(x) > 0:
            result["exponent"] = float(np.polyfit(x, np.log(velocity[keep]), 1)[0])
    return result


def _boundaries_below(trajectory, threshold: float, params) -> Phases:
    """:func:`phases.detect.detect` with ``T_freeze`` read from the share of noisy examples below ``threshold``."""
    stats = trajectory.weight_stats()
    below = (trajectory.w[:, trajectory.noisy] < threshold).mean(axis=1) if trajectory.noisy.any() else None
    return detect(trajectory.step, stats["mean_w_clean"], trajectory.clean_loss, bool(trajectory.noisy.any()),
                  params, below)


def _at(trajectory, step: int | None) -> int | None:
    return None if step is None else int(np.searchsorted(trajectory.step, step))


def describe(trajectory, phases: Phases, threshold: float, velocities: dict[str, np.ndarray]) -> dict:
    """The phases and C4's coupling of one run (free weights or MWN), as plain numbers.

    ``velocities`` maps a name to a ``(T,)`` velocity series (free weights: the raw velocity ``(beta/m) max_i
    |score_i|``; MWN: the weights' motion from V's update, and V's parameter velocity).
    """
    stats = trajectory.weight_stats()
    noisy = trajectory.noisy
    below = _boundaries_below(trajectory, threshold, phases.params)
    post = phases.masks(trajectory.step)["post-filtering"]
    change = np.abs(np.diff(trajectory.w, axis=0)).max(axis=1)

    def state(row: int | None) -> dict | None:
        if row is None:
            return None
        w = trajectory.w[row]
        return {"step": int(trajectory.step[row]), "auc": float(stats["auc"][row]),
                "mean_w_clean": float(stats["mean_w_clean"][row]), "mean_w_noisy": float(stats["mean_w_noisy"][row]),
                "noisy_below": float((w[noisy] < threshold).mean()) if noisy.any() else None,
                "clean_below": float((w[~noisy] < threshold).mean()) if (~noisy).any() else None,
                "noisy_zero": float(stats["frac_noisy_zero"][row]), "clean_loss": float(trajectory.clean_loss[row]),
                "test_accuracy": float(trajectory.test_accuracy[row])}

    peak = int(np.nanargmax(stats["auc"])) if np.isfinite(stats["auc"]).any() else None
    return {
        "T_align": phases.T_align, "T_filter": phases.T_filter, "T_freeze": phases.T_freeze,
        "T_freeze_below": below.T_freeze, "threshold": threshold, "plateau": phases.plateau,
        "auc_peak": None if peak is None else {"step": int(trajectory.step[peak]), "auc": float(stats["auc"][peak])},
        "at_T_align": state(_at(trajectory, phases.T_align)), "at_T_filter": state(_at(trajectory, phases.T_filter)),
        "at_end": state(len(trajectory.step) - 1),
        "clean_loss": {"start": float(trajectory.clean_loss[0]), "end": float(trajectory.clean_loss[-1])},
        "coupling_norm": velocity_decay(trajectory.step, trajectory.clean_loss, trajectory.coupling_norm, post),
        "velocities": {name: velocity_decay(trajectory.step, trajectory.clean_loss, series, post)
                       for name, series in velocities.items()},
        "weight_change": {"start": float(change[0]), "end": float(change[-1]),
                          "definition": "max_i |w_i| change between consecutive records"},
    }


@dataclasses.dataclass(frozen=True, eq=False)
class MWNComparison:
    """Free weights and MWN on one problem: the two runs, their phases and :func:`describe` of each (``summary``)."""

    config: SimulationConfig
    settings: MWNSettings
    problem: object
    free: object
    free_phases: Phases
    mwn: object
    mwn_phases: Phases
    summary: dict


def compare_mwn(config: SimulationConfig = SimulationConfig(), settings: MWNSettings = MWNSettings(), *,
                stage: Callable[[str], None] | None = None) -> MWNComparison:
    """Free weights and Meta-Weight-Net on the same linearized problem (docs/theory.md sections 2, 2.1 and 5).

    The free weights start at MWN's initial weight ``V_theta0(l_0)`` (all outputs start at zero, so every example
    has the same loss and MWN the same weight), so that both start from the same state; both take the same ``eta``
    (``config``'s, or the default of its kernel), ``gamma`` and steps, full batch. ``config.beta`` is the free
    weights' meta step, ``settings.beta`` V's. Phases by :func:`phases.detect.detect_phases`; C4 by
    :func:`describe`.
    """
    import torch

    from dynamics.mwn import MWNConfig, simulate_mwn, weight_net_torch
    from phases.experiments import run_simulation

    announce = stage or (lambda text: None)
    if config.batch_size is not None or config.meta_batch_size is not None:
        raise ValueError("Meta-Weight-Net runs full batch here: leave batch_size and meta_batch_size unset")
    if config.on_features or config.init != "zero":
        raise ValueError("the comparison runs on gmm or digits from zero initial outputs")
    theta0 = settings.theta0()
    # Zero initial outputs: every example's loss is 1/2 (MSE against a one-hot row) or log C (cross-entropy).
    initial_loss = 0.5 if config.loss == "mse" else math.log(config.validate().num_classes)
    with torch.no_grad():
        w0 = float(weight_net_torch({k: torch.as_tensor(v) for k, v in theta0.items()},
                                    torch.tensor([initial_loss], dtype=torch.float64))[0])
    free_config = dataclasses.replace(config, w0=w0, perturb_draws=0)
    announce(f"free weights from w0 = V_theta0(l_0) = {w0:.4f}: {config.steps} steps")
    free = run_simulation(free_config, claims=False)
    eta = free.trajectory.config["eta"]
    announce(f"Meta-Weight-Net (V: 1 -> {settings.hidden} -> 1, beta = {settings.beta:g}): {config.steps} steps")
    mwn_config = MWNConfig(loss=config.loss, eta=eta, beta=settings.beta, gamma=config.gamma, hidden=settings.hidden,
                           steps=config.steps, record_every=config.record_every)
    mwn = simulate_mwn(free.problem, free.blocks, theta0, mwn_config)
    mwn_phases = detect_phases(mwn.trajectory, config.phase_params())
    free_trajectory = free.trajectory
    summary = {
        "problem": free.problem.name, "n": free.problem.sizes[0], "m": free.problem.sizes[1],
        "steps": config.steps, "eta": eta, "gamma": config.gamma, "w0": w0,
        "free": describe(free_trajectory, free.phases, settings.threshold,
                         {"weight_velocity": free_trajectory.max_velocity}),
        "mwn": describe(mwn.trajectory, mwn_phases, settings.threshold,
                        {"weight_velocity": mwn.weight_velocity, "theta_velocity": mwn.theta_velocity}),
        "definitions": {
            "free.weight_velocity": "(beta/m) max_i |score_i|, the raw weight velocity (docs/theory.md section 3)",
            "mwn.weight_velocity": "max_i |V_theta'(l_i) - V_theta(l_i)|: the weights' motion from V's update",
            "mwn.theta_velocity": "||theta_{t+1} - theta_t||_2, V's parameter velocity",
            "T_freeze_below": "T_freeze read from the share of noisy examples with w < threshold",
            "fall": "value at the first record / value at the last",
            "ratio_spread": "post-filtering max/min of velocity / sqrt(L_meta) (C4' asks for <= 2)",
            "exponent": "post-filtering least-squares slope of log velocity on log L_meta (C4's bound: 1/2)",
        },
    }
    return MWNComparison(config, settings, free.problem, free, free.phases, mwn, mwn_phases, summary)


# ----------------------------------------------------------------------------- C8 for MWN


def mwn_width_study(config: FiniteWidthConfig = FiniteWidthConfig(), settings: MWNSettings = MWNSettings(), *,
                    progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Finite-width MWN (exact bi-level autodiff) against the linearized MWN from the same V (claim C8 for MWN).

    ``config`` is the finite-width check's (:class:`phases.experiments.FiniteWidthConfig`: problem, network,
    widths, seeds, ``loss``, ``steps``, ``eta``, ``gamma``; full batch); ``config.beta`` and ``w0`` are not
    used (``settings.beta`` is V's step, the initial weights are V's). Returns per (width, seed) the weight gap
    ``max_t ||w_t^N - w_t^lin||_inf``, the final relative test-output gap and V's parameter gap
    ``||theta^N - theta^lin||_2``, and the least-squares slope of ``log weight gap`` on ``log width`` over every
    point (``slope``), over each width's root-mean-square gap over the seeds (``rms_slope``), and of the output
    gap over every point (``output_slope``).
    """
    import torch

    from dynamics.finite import analytic_kernel
    from dynamics.mwn import MWNConfig, simulate_mwn, train_finite_mwn
    from dynamics.operators import KernelBlocks

    if config.eta_fractions:
        raise ValueError("eta_fractions is not used by the Meta-Weight-Net width study")
    started = time.perf_counter()
    problem = config.validate()
    blocks = KernelBlocks.from_problem(problem, analytic_kernel(config.kernel_spec()))
    theta0 = settings.theta0()
    mwn_config = MWNConfig(loss=config.loss, eta=config.eta, beta=settings.beta, gamma=config.gamma,
                           hidden=settings.hidden, steps=config.steps)
    linear = simulate_mwn(problem, blocks, theta0, mwn_config)
    mwn_config = dataclasses.replace(mwn_config, eta=linear.trajectory.config["eta"])
    linear_phases = detect_phases(linear.trajectory)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    points, rows = [], []
    try:
        for network in config.networks():
            runs = []
            for seed in config.seeds:
                report = None if progress is None else (lambda done, w=network.width, s=seed: progress(w, s, done))
                finite = train_finite_mwn(problem, theta0, mwn_config, network,
                                          generator=torch.Generator().manual_seed(seed), blocks=blocks,
                                          progress=report)
                trajectory = finite.trajectory
                phases = detect_phases(trajectory)
                runs.append({
                    "seed": seed, "weight_gap": float(np.abs(trajectory.w - linear.trajectory.w).max()),
                    "output_gap": float(np.linalg.norm(trajectory.test_outputs - linear.trajectory.test_outputs)
                                        / np.linalg.norm(linear.trajectory.test_outputs)),
                    "theta_gap": float(np.sqrt(sum(((finite.theta[k] - linear.theta[k]) ** 2).sum()
                                                   for k in finite.theta))),
                    "T_align": phases.T_align, "T_filter": phases.T_filter})
                points.append((network.width, runs[-1]["weight_gap"]))
            rows.append({"width": network.width, "runs": runs,
                         "weight_gap_rms": float(np.sqrt(np.mean([r["weight_gap"] ** 2 for r in runs]))),
                         "output_gap_mean": float(np.mean([r["output_gap"] for r in runs])),
                         "theta_gap_mean": float(np.mean([r["theta_gap"] for r in runs]))})
    finally:
        torch.set_num_threads(threads)
    widths, gaps = np.array(points, dtype=np.float64).T
    outputs = fit_slope(widths, np.array([run["output_gap"] for row in rows for run in row["runs"]]))
    rms = fit_slope(np.array([row["width"] for row in rows]), np.array([row["weight_gap_rms"] for row in rows]))
    return {
        "problem": problem.name, "n": config.n, "m": config.m, "p": config.p, "steps": config.steps,
        "eta": mwn_config.eta, "beta": settings.beta, "gamma": config.gamma, "loss": config.loss,
        "network": f"depth-{config.depth} {config.activation} {config.network}",
        **fit_slope(widths, gaps), "rms_slope": rms["slope"], "rms_slope_stderr": rms["slope_stderr"],
        "output_slope": outputs["slope"], "output_slope_stderr": outputs["slope_stderr"],
        "per_width": rows,
        "linearized": {"T_align": linear_phases.T_align, "T_filter": linear_phases.T_filter,
                       "weight_move": float(np.abs(linear.trajectory.w - linear.trajectory.w[0]).max())},
        "runtime_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{phases,width}")
    s, f, w = SimulationConfig(), FiniteWidthConfig(), MWNSettings()
    phases = commands.add_parser("phases", formatter_class=HelpFormatter,
                                 help="free weights and MWN on the linearized model: phases and C4's coupling")
    phases.add_argument("--dataset", choices=("gmm", "digits"), default=s.dataset,
                        help="gmm: the default Gaussian mixture; digits: scikit-learn's 8x8 digits")
    phases.add_argument("--noise", type=float, default=s.noise, help="symmetric label-noise rate")
    add_size_arguments(phases, n=s.n, m=s.m, p=s.p, classes=s.classes, dim=s.dim, mixture_only=" (gmm)")
    phases.add_argument("--depth", type=bounded(int, 0), default=s.depth, help="hidden layers of the NTK's network")
    phases.add_argument("--loss", choices=("mse", "ce"), default=s.loss, help="mean squared error or cross-entropy")
    phases.add_argument("--steps", type=positive_int, default=s.steps, help="number of steps")
    phases.add_argument("--gamma", type=bounded(float, 0.0), default=s.gamma,
                        help="weight of the clean-subset loss in training")
    phases.add_argument("--free-beta", type=bounded(float, 0.0), default=s.beta,
                        help="free weights' meta step (weights move by beta/m * score)")
    phases.add_argument("--seed", type=int, default=s.seed, help="seed of the problem")
    finite = commands.add_parser("width", formatter_class=HelpFormatter,
                                 help="finite-width MWN against the linearized MWN: the gap's slope against width")
    finite.add_argument("--dataset", choices=FINITE_DATASETS, default=f.dataset, help="gmm or digits")
    add_size_arguments(finite, n=f.n, m=f.m, p=f.p, classes=f.classes, dim=f.dim)
    finite.add_argument("--noise", type=float, default=f.noise, help="symmetric label-noise rate")
    finite.add_argument("--widths", type=int_list(1), default=[64, 256, 1024, 4096], help="hidden-layer widths N")
    finite.add_argument("--seeds", type=int_list(0), default=[0, 1], help="initialisation seeds of the networks")
    finite.add_argument("--depth", type=positive_int, default=f.depth, help="hidden layers")
    finite.add_argument("--activation", choices=("relu", "erf"), default=f.activation, help="activation")
    finite.add_argument("--loss", choices=("mse", "ce"), default=f.loss, help="mean squared error or cross-entropy")
    finite.add_argument("--steps", type=positive_int, default=150, help="number of steps")
    finite.add_argument("--gamma", type=bounded(float, 0.0), default=f.gamma,
                        help="weight of the clean-subset loss in training")
    for sub in (phases, finite):
        mwn = sub.add_argument_group("Meta-Weight-Net (docs/theory.md section 2.1)")
        mwn.add_argument("--beta", type=bounded(float, 0.0), default=w.beta,
                         help="V's meta step: theta <- theta - beta/(eta n) dL_meta/dtheta")
        mwn.add_argument("--hidden", type=positive_int, default=w.hidden, help="hidden units of V")
        mwn.add_argument("--weight-net-seed", type=bounded(int, 0), default=w.weight_net_seed,
                         help="seed of V's initialisation (numpy)")
        mwn.add_argument("--threshold", type=bounded(float, 0.0, 1.0, strict=True), default=w.threshold,
                         help="an example counts as filtered below this weight (a sigmoid never reaches 0)")
        add_output_arguments(sub, out_help="also write summary.json (and the runs) into this directory")
    return parser


def _settings(args) -> MWNSettings:
    return MWNSettings(beta=args.beta, hidden=args.hidden, weight_net_seed=args.weight_net_seed,
                       threshold=args.threshold)


def _number(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def phases_table(summary: dict) -> str:
    """The comparison as a text table: one row per quantity, a column for free weights and one for MWN."""
    rows = []

    def add(name, free, mwn, spec=".4g"):
        rows.append((name, _number(free, spec), _number(mwn, spec)))

    free, mwn = summary["free"], summary["mwn"]
    for key in ("T_align", "T_filter", "T_freeze", "T_freeze_below"):
        add(key if key != "T_freeze_below" else f"T_freeze (w < {free['threshold']:g})", free[key], mwn[key], "d")
    for where in ("at_T_align", "at_T_filter", "at_end"):
        for key in ("auc", "mean_w_clean", "mean_w_noisy", "noisy_below", "clean_below", "noisy_zero"):
            add(f"{key} {where}", (free[where] or {}).get(key), (mwn[where] or {}).get(key), ".3f")
    add("test accuracy at end", free["at_end"]["test_accuracy"], mwn["at_end"]["test_accuracy"], ".3f")
    for key in ("start", "end"):
        add(f"L_meta {key}", free["clean_loss"][key], mwn["clean_loss"][key])
    for key in ("start", "end", "fall"):
        add(f"coupling ||R_meta_hat|| {key}", free["coupling_norm"][key], mwn["coupling_norm"][key])
    for key in ("start", "end", "fall", "ratio_spread", "exponent"):
        add(f"weight velocity {key}", free["velocities"]["weight_velocity"][key],
            mwn["velocities"]["weight_velocity"][key])
    for key in ("start", "end", "fall", "ratio_spread", "exponent"):
        add(f"V parameter velocity {key}", None, mwn["velocities"]["theta_velocity"][key])
    add("largest weight change, first / last step", free["weight_change"]["start"], mwn["weight_change"]["start"])
    add("", free["weight_change"]["end"], mwn["weight_change"]["end"])
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'':<{width}}  {'free weights':>14}  {'Meta-Weight-Net':>15}", "-" * (width + 33)]
    lines += [f"{name:<{width}}  {free:>14}  {mwn:>15}" for name, free, mwn in rows]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Run the sub-command the arguments ask for; print its table; return its summary."""
    args = build_parser().parse_args(argv)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = _settings(args)
        if args.command == "phases":
            config = SimulationConfig(dataset=args.dataset, noise=args.noise, n=args.n, m=args.m, p=args.p,
                                      classes=args.classes, dim=args.dim, depth=args.depth, loss=args.loss,
                                      steps=args.steps, gamma=args.gamma, beta=args.free_beta, seed=args.seed,
                                      perturb_draws=0)
            config.validate()
        else:
            config = FiniteWidthConfig(dataset=args.dataset, n=args.n, m=args.m, p=args.p, classes=args.classes,
                                       dim=args.dim, noise=args.noise, widths=tuple(args.widths),
                                       seeds=tuple(args.seeds), depth=args.depth, activation=args.activation,
                                       loss=args.loss, steps=args.steps, gamma=args.gamma)
            config.validate()
    except ValueError as error:
        raise UserError(str(error)) from None
    refuse_jax_cache()
    output = None if args.out is None else OutputDirectory(args.out, args.overwrite, command=command)

    from dynamics.simulator import DivergenceError
    from phases.cli import write_json

    started = time.perf_counter()
    try:
        if args.command == "phases":
            result = compare_mwn(config, settings, stage=lambda text: print(text, file=sys.stderr, flush=True))
            summary = result.summary
        else:
            summary = mwn_width_study(config, settings)
    except DivergenceError as error:
        raise UserError(str(error)) from None
    summary = summary | {"command": command, "settings": {"mwn": dataclasses.asdict(settings),
                                                          "problem": dataclasses.asdict(config)}}
    if output is not None:
        with output as staging:
            write_json(os.path.join(staging, "summary.json"), summary)
            if args.command == "phases":
                result.free.trajectory.save(os.path.join(staging, "free.npz"))
                result.mwn.trajectory.save(os.path.join(staging, "mwn.npz"))
    if args.command == "phases":
        print(f"{summary['problem']}, {summary['steps']} steps, eta={summary['eta']:.4g}, gamma={summary['gamma']:g}, "
              f"both from w0 = {summary['w0']:.4f}:")
        print(phases_table(summary))
    else:
        print(f"{'width':>6} {'weight gap (rms)':>17} {'output gap':>11} {'theta gap':>10}")
        for row in summary["per_width"]:
            print(f"{row['width']:>6} {row['weight_gap_rms']:>17.4g} {row['output_gap_mean']:>11.4g} "
                  f"{row['theta_gap_mean']:>10.4g}")
        print(f"slope of the weight gap vs width: {summary['slope']:.3f} +/- {summary['slope_stderr']:.3f} "
              f"({summary['points']} points); of the rms gap {summary['rms_slope']:.3f}; of the output gap "
              f"{summary['output_slope']:.3f} +/- {summary['output_slope_stderr']:.3f}")
    written = f"; wrote {args.out}/" if args.out else ""
    print(f"({time.perf_counter() - started:.0f} s{written})")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
