"""Claim C8: finite-width networks trained with exact bi-level meta-reweighting, against the linearized model.

    python -m phases.finite --out DIR

Trains finite-width MLPs, or CNNs on 8x8 digits (NTK parametrisation,
centred outputs), with exact bi-level meta-reweighting (docs/theory.md
section 2) beside the linearized model with the analytic NTK of the same
architecture (same eta, beta, gamma and steps, full batch), and writes
summary.json (log-log slope of the weight gap against width, with its
standard error; the gaps at every recorded step; late-phase re-admission;
the sweep over --eta-fractions), width_<N>.json, problem.npz,
linearized.npz, finite_w<N>_s<seed>.npz and finite.png into --out.
"""

from __future__ import annotations

import argparse
import sys

from phases.cli import ArgumentParser, HelpFormatter, OutputDirectory, UserError, add_output_arguments, \
    add_size_arguments, add_weight_arguments, bounded, int_list, parse_settings, positive_int, refuse_jax_cache, \
    run_main
from phases.experiments import FINITE_DATASETS, FINITE_NETWORKS, FiniteWidthConfig, read_settings

PROG = "python -m phases.finite"


def _fractions(text: str) -> list[float]:
    """An argument type: comma-separated numbers strictly between 0 and 1, sorted, without repeats."""
    try:
        values = sorted({float(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers strictly between 0 and 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    d = FiniteWidthConfig()
    parser = ArgumentParser(prog=PROG, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("problem (Gaussian mixture of docs/theory.md section 5, smaller; or 8x8 digits)")
    data.add_argument("--dataset", choices=FINITE_DATASETS, default=d.dataset,
                      help="gmm: Gaussian mixture; digits: scikit-learn's 8x8 digits (--classes and --dim unused, "
                           "the test set is the first --p of the images left over)")
    add_size_arguments(data, n=d.n, m=d.m, p=d.p, classes=d.classes, dim=d.dim)
    data.add_argument("--noise", type=float, default=d.noise, help="symmetric label-noise rate, in [0, (C-1)/C)")
    data.add_argument("--problem-seed", type=int, default=d.problem_seed, help="seed of the problem draw (numpy)")
    net = parser.add_argument_group("network (NTK parametrisation)")
    net.add_argument("--network", choices=FINITE_NETWORKS, default=d.network,
                     help="mlp: fully connected; cnn: 3x3 convolutions of --widths channels, ReLU, global average "
                          "pooling, dense head (needs --dataset digits; its analytic kernel holds (8*8)^2 pixel-pair "
                          "covariances per pair of images, about 55 times the MLP kernel's time)")
    net.add_argument("--widths", type=int_list(1), default=list(d.widths),
                     help="hidden-layer widths N, comma-separated (at least two)")
    net.add_argument("--seeds", type=int_list(0), default=list(d.seeds),
                     help="initialisation seeds (torch.Generator), comma-separated")
    net.add_argument("--depth", type=positive_int, default=d.depth,
                     help="hidden layers, or convolution layers of the CNN (2 is the default problem's network; its "
                          "width^2 weights make N=4096 slow on a CPU: see --precision)")
    net.add_argument("--activation", choices=("relu", "erf"), default=d.activation, help="activation")
    net.add_argument("--w-std", type=bounded(float, 0.0, strict=True), default=d.w_std,
                     help="weight standard deviation (x 1/sqrt(fan_in))")
    net.add_argument("--b-std", type=bounded(float, 0.0), default=d.b_std, help="bias standard deviation")
    net.add_argument("--device", default=d.device,
                     help="torch device of the finite networks (float64 on cpu, float32 on cuda)")
    net.add_argument("--precision", choices=("float64", "float32"), default=d.precision,
                     help="dtype of the finite networks (default: by device); float32 about halves the time of a "
                          "wide run, the linearized model stays float64")
    net.add_argument("--threads", type=positive_int, default=d.threads,
                     help="torch intra-op threads (one was fastest on a shared 2-core machine)")
    dyn = parser.add_argument_group("meta-reweighting (docs/theory.md section 2, full batch, persistent clipped "
                                    "weights)")
    dyn.add_argument("--loss", choices=("mse", "ce"), default=d.loss, help="mean squared error or cross-entropy")
    dyn.add_argument("--steps", type=positive_int, default=d.steps, help="number of steps")
    dyn.add_argument("--eta", type=bounded(float, 0.0, strict=True), default=d.eta,
                     help="model step size, the same for both models (default: 1/lambda_max of the analytic K_XX, "
                          "the simulator's default)")
    dyn.add_argument("--eta-fractions", type=_fractions, default=list(d.eta_fractions),
                     help="further step sizes, comma-separated, as fractions of the stability limit 2/lambda_max of "
                          "the analytic kernel; each repeats the width sweep (gaps and re-admission summarised in "
                          "summary.json's eta_sweep, trajectories not saved)")
    add_weight_arguments(dyn, d)
    out = parser.add_argument_group("output")
    add_output_arguments(out, out_help="output directory (must not exist unless --overwrite)", required=True,
                         saved_file="summary.json")
    out.add_argument("--force", action="store_true",
                     help="run even when the memory estimate exceeds what this machine has")
    return parser


def parse_config(argv: list[str] | None) -> tuple[FiniteWidthConfig, argparse.Namespace]:
    """The configuration the command line asks for: ``--config`` settings, overridden by explicit flags."""
    def saved(path):
        return read_settings(path, lambda settings: FiniteWidthConfig(**settings), "summary.json", PROG)

    return parse_settings(build_parser(), argv, FiniteWidthConfig, saved)


def run(argv: list[str] | None = None) -> dict:
    """Run the C8 comparison from command-line arguments; print its table; return the summary."""
    config, args = parse_config(argv)
    try:
        config.validate(force=args.force)
    except ValueError as error:
        raise UserError(str(error)) from None
    refuse_jax_cache()
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    output = OutputDirectory(args.out, args.overwrite, command=command)

    import matplotlib

    matplotlib.use("Agg")  # a command line draws to files only
    from tqdm import tqdm

    from dynamics.simulator import DivergenceError
    from phases.experiments import run_finite_width

    stage_count = 3 + len(config.eta_fractions)  # linearized kernel, one width sweep per step size, summary
    stages = iter(range(1, stage_count + 1))
    try:
        with output as staging:
            total = len(config.widths) * len(config.seeds) * config.steps * (1 + len(config.eta_fractions))
            with tqdm(total=total, unit="step", file=sys.stderr, leave=False, disable=None) as bar:
                def progress(width, seed, done):
                    bar.set_description(f"N={width} seed {seed}", refresh=False)
                    bar.update(1)

                result = run_finite_width(config, progress=progress, stage=lambda text: print(
                    f"[{next(stages)}/{stage_count}] {text}", file=sys.stderr, flush=True))
            result.save(staging, command=command)
    except DivergenceError as error:
        raise UserError(str(error)) from None

    summary, linear_phases = result.summary, result.linear_phases
    print(f"{'width':>6} {'weight gap':>11} {'output gap':>11} {'T_align':>12} {'T_filter':>14} {'boundary gap':>13}")
    for row in summary["per_width"]:
        print(f"{row['width']:>6} {row['weight_gap']['mean']:>11.4g} {row['output_gap']['mean']:>11.4g} "
              f"{str(row['T_align']['per_seed']):>12} {str(row['T_filter']['per_seed']):>14} "
              f"{row['boundary_rel_gap_max']:>13.3g}")
    print(f"linearized: T_align={linear_phases.T_align}, T_filter={linear_phases.T_filter}, "
          f"re-admitted noisy share {summary['linearized']['readmitted_noisy']}")
    if len(summary["eta_sweep"]) > 1:
        print(f"{'eta':>9} {'of 2/lam':>8} {'slope':>7} " + " ".join(f"{'gap N=' + str(w):>11}" for w in config.widths)
              + f" {'re-adm. lin':>11}")
        for entry in summary["eta_sweep"]:
            gaps = " ".join(f"{_mean_text(row['weight_gap']['mean']):>11}" for row in entry["per_width"])
            print(f"{entry['eta']:>9.4g} {entry['eta_fraction']:>8.3f} {_mean_text(entry['slope']):>7} {gaps} "
                  f"{_mean_text(entry['linearized']['readmitted_noisy']):>11}")
    print(f"slope of the weight gap vs width: {summary['slope']:.3f} +/- {summary['slope_stderr']:.3f} "
          f"({summary['points']} points); wrote {args.out}/ in {summary['runtime_s']:.0f} s")
    return summary


def _mean_text(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
