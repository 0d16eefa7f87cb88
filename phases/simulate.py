"""Simulate meta-reweighting on a noisy problem, find its phases and check the claims.

    python -m phases.simulate --noise 0.4

Simulates exact meta-reweighting of the linearized (NTK) network of THEORY.md
section 2, detects the alignment, filtering and post-filtering phases (section
5), measures claims C2-C7 and C9 on the run, prints both tables and writes
``config.json``, ``problem.npz``, ``trajectory.npz``, ``summary.json`` and
``trajectory.png`` (and ``kernels.npz`` with ``--save-kernels``) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

from dynamics.cli import ArgumentParser, OutputDirectory, UserError, bounded, positive_int, run_main, versions, \
    write_json
from phases.detect import PhaseParams


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m phases.simulate", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("problem")
    data.add_argument("--dataset", choices=("gmm", "digits"), default="gmm",
                      help="Gaussian mixture, or scikit-learn's bundled 8x8 digits (10 classes, 64 pixels)")
    data.add_argument("--noise", type=float, default=0.4, help="label noise rate, in [0, 1)")
    data.add_argument("--noise-type", choices=("symmetric", "pair", "instance"), default="symmetric",
                      help="symmetric: to another class uniformly; pair: c -> c+1; instance: input-dependent rate")
    data.add_argument("--classes", type=positive_int, default=4, help="number of classes C (gmm)")
    data.add_argument("--dim", type=positive_int, default=32, help="input dimension d (gmm)")
    data.add_argument("--n", type=positive_int, default=1000, help="training examples")
    data.add_argument("--m", type=positive_int, default=100, help="clean-subset examples (class-balanced)")
    data.add_argument("--p", type=positive_int, default=1000, help="test examples (gmm; digits uses the rest)")
    data.add_argument("--separation", type=float, default=3.0, help="norm of the class means (gmm)")
    data.add_argument("--spread", type=float, default=1.0, help="standard deviation around each mean (gmm)")
    net = parser.add_argument_group("kernel (infinite-width fully connected network, NTK parametrisation)")
    net.add_argument("--kernel", choices=("ntk", "nngp"), default="ntk", help="kernel of the linearized model")
    net.add_argument("--depth", type=bounded(int, 0, strict=False), default=2, help="hidden layers")
    net.add_argument("--activation", choices=("relu", "erf"), default="relu", help="activation")
    net.add_argument("--w-std", type=bounded(float, 0.0, strict=True), default=math.sqrt(2.0),
                     help="weight standard deviation (times 1/sqrt(fan_in))")
    net.add_argument("--b-std", type=bounded(float, 0.0, strict=False), default=0.0, help="bias standard deviation")
    dyn = parser.add_argument_group("meta-reweighting (THEORY.md section 2)")
    dyn.add_argument("--variant", choices=("meta", "l2rw", "fixed"), default="meta",
                     help="meta: persistent clipped weights; l2rw: Ren et al. reset; fixed: beta = 0")
    dyn.add_argument("--loss", choices=("mse", "ce"), default="mse", help="mean squared error or cross-entropy")
    dyn.add_argument("--eta", type=float, default=None, help="model step size (default: 1/lambda_max(K_XX), stable)")
    dyn.add_argument("--beta", type=float, default=1.0, help="meta step size (weights move by beta/m * score)")
    dyn.add_argument("--gamma", type=float, default=1.0, help="weight of the clean-subset loss in training")
    dyn.add_argument("--w0", type=float, default=0.5, help="initial weight of every example")
    dyn.add_argument("--init", choices=("zero", "gp"), default="zero",
                     help="initial outputs: zero (centred network) or a draw from the NNGP prior")
    dyn.add_argument("--batch-size", type=positive_int, default=None, help="training mini-batch (default: full)")
    dyn.add_argument("--meta-batch-size", type=positive_int, default=None, help="clean mini-batch (default: full)")
    dyn.add_argument("--steps", type=positive_int, default=2000, help="number of steps")
    dyn.add_argument("--record-every", type=positive_int, default=1, help="record every k-th step")
    dyn.add_argument("--perturb-draws", type=bounded(int, 0, strict=False), default=4, help="C7 perturbation draws per recorded step (0: skip)")
    dyn.add_argument("--seed", type=int, default=0, help="seed of the problem, the batches and the perturbations")
    ph = parser.add_argument_group("phase detection (THEORY.md section 5)")
    defaults = PhaseParams()
    ph.add_argument("--align-fraction", type=float, default=defaults.align_fraction,
                    help="T_align: first step where the clean mean weight reaches this fraction of its maximum")
    ph.add_argument("--window", type=float, default=defaults.window_fraction,
                    help="plateau window, as a fraction of the run")
    ph.add_argument("--min-window", type=int, default=defaults.min_window, help="smallest plateau window, in steps")
    ph.add_argument("--tau", type=float, default=defaults.tau,
                    help="plateau: L_meta fell by less than tau * L_meta(0) over the window")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="output directory (default: runs/simulate-<date>-<time>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    out.add_argument("--save-kernels", action="store_true", help="also write kernels.npz (K_XX, K_VX, K_VV, K_TX, K_TV)")
    return parser


def _stage(index: int, text: str) -> None:
    print(f"[{index}/4] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    """Run one simulation from parsed arguments; return the summary."""
    from dynamics.problem import digits, gaussian_mixture
    from dynamics.simulate import DivergenceError, MetaConfig

    # Everything a user can get wrong is checked before the slow imports (neural-tangents, matplotlib).
    try:
        phase_params = PhaseParams(args.align_fraction, args.window, args.min_window, args.tau)
        config = MetaConfig(loss=args.loss, variant=args.variant, eta=args.eta, beta=args.beta, gamma=args.gamma,
                            w0=args.w0, steps=args.steps, batch_size=args.batch_size,
                            meta_batch_size=args.meta_batch_size, record_every=args.record_every,
                            perturb_draws=args.perturb_draws)
        rng = np.random.default_rng(args.seed)
        if args.dataset == "gmm":
            problem = gaussian_mixture(rng, n=args.n, m=args.m, p=args.p, num_classes=args.classes, dim=args.dim,
                                       separation=args.separation, spread=args.spread, noise_rate=args.noise,
                                       noise_type=args.noise_type)
        else:
            problem = digits(rng, n=args.n, m=args.m, noise_rate=args.noise, noise_type=args.noise_type)
        n, m, p = problem.sizes
        for name, size, limit in (("--batch-size", args.batch_size, n), ("--meta-batch-size", args.meta_batch_size, m)):
            if size is not None and size > limit:
                raise ValueError(f"{name} must be at most {limit}, got {size}")
    except ValueError as error:
        raise UserError(str(error)) from None
    out = args.out or os.path.join("runs", time.strftime("simulate-%Y%m%d-%H%M%S"))
    output = OutputDirectory(out, args.overwrite)
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    from dynamics.simulate import KernelBlocks, gp_prior_outputs, simulate
    from kernels import KernelSpec, eigh_kernel, kernel
    from phases.claims import check_claims
    from phases.detect import detect_phases
    from phases.plot import plot_trajectory
    from phases.report import claims_table, final_line, phase_table, summary

    spec = KernelSpec(args.depth, args.activation, args.w_std, args.b_std, args.kernel)
    try:
        with output as staging:
            _stage(1, f"problem: {problem.name}, n={n}, m={m}, p={p}, realised noise {problem.noise_rate:.3f}")
            started = time.perf_counter()
            blocks = KernelBlocks.from_problem(problem, lambda a, b: kernel(spec, a, b))
            initial_outputs = None
            if args.init == "gp":
                inputs = np.concatenate([problem.X, problem.X_meta, problem.X_test])
                nngp = kernel(dataclasses.replace(spec, kind="nngp"), inputs)
                initial_outputs = gp_prior_outputs(nngp, problem.num_classes, np.random.default_rng([args.seed, 1]))
            _stage(2, f"kernel blocks ({spec.kind}, depth {spec.depth}, {spec.activation}): "
                      f"{time.perf_counter() - started:.1f} s")
            _stage(3, f"simulating {config.steps} steps of {config.variant} reweighting ({config.loss})")
            with tqdm(total=config.steps, unit="step", file=sys.stderr, leave=False, disable=None) as bar:
                trajectory = simulate(problem, blocks, config, seed=args.seed, initial_outputs=initial_outputs,
                                      progress=lambda t: bar.update(int(t) - bar.n))
                bar.update(config.steps - bar.n)
            trajectory = dataclasses.replace(trajectory, config=trajectory.config | {"init": args.init})
            _stage(4, "phases, claims and figure")
            phases = detect_phases(trajectory, phase_params)
            _, eigenvectors = eigh_kernel(blocks.K_XX)
            claims = check_claims(trajectory, phases, problem=problem, eigenvectors=eigenvectors)
            result = summary(trajectory, phases, claims)

            resolved = {
                "command": "python -m phases.simulate " + " ".join(sys.argv[1:]),
                **trajectory.config,
                "dataset": args.dataset, "noise": args.noise, "noise_type": args.noise_type,
                "realised_noise_rate": problem.noise_rate, "problem_name": problem.name,
                "problem": {"n": n, "m": m, "p": p, "num_classes": problem.num_classes, "dim": problem.X.shape[1],
                            "separation": args.separation, "spread": args.spread},
                "kernel": dataclasses.asdict(spec),
                "phase_parameters": dataclasses.asdict(phase_params),
                "out": out, "versions": versions(),
            }
            write_json(os.path.join(staging, "config.json"), resolved)
            np.savez(os.path.join(staging, "problem.npz"), **problem.arrays())
            trajectory.save(os.path.join(staging, "trajectory.npz"))
            if args.save_kernels:
                np.savez(os.path.join(staging, "kernels.npz"), **blocks.arrays())
            write_json(os.path.join(staging, "summary.json"), result)
            figure = plot_trajectory(trajectory, phases, title=f"{problem.name}: {config.variant} reweighting, "
                                                               f"{config.loss}, gamma={config.gamma:g}")
            figure.savefig(os.path.join(staging, "trajectory.png"), dpi=110)
            plt.close(figure)
    except DivergenceError as error:
        raise UserError(str(error)) from None

    print()
    print(f"Phases (THEORY.md section 5) of {problem.name}, {config.steps} steps, eta={trajectory.config['eta']:.4g}:")
    print(phase_table(result["phases"]))
    print()
    print("Claims (THEORY.md section 4) measured on this run:")
    print(claims_table(result["claims"]))
    print()
    print(final_line(result["final"]))
    print(f"Wrote {out}/: config.json problem.npz trajectory.npz summary.json trajectory.png"
          + (" kernels.npz" if args.save_kernels else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main("python -m phases.simulate", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
