"""Simulate meta-reweighting on a noisy problem, find its phases and check the claims.

    python -m phases.simulate --noise 0.4

Simulates exact meta-reweighting of the linearized (NTK) network of
docs/theory.md section 2, detects the alignment, filtering and post-filtering
phases (section 5), measures the claims (section 4) on the run, prints both
tables and writes ``config.json``, ``problem.npz``, ``trajectory.npz``,
``summary.json`` and ``trajectory.png`` (and ``kernels.npz`` with
``--save-kernels``) into ``--out``. ``--config DIR/config.json`` repeats a
saved run (flags given beside it override its settings).

On explicit features the kernel is their linear kernel (a linear head,
docs/theory.md section 8) and no ``(n, n)`` matrix is formed, so n = 50,000
runs in minutes:

    python -m phases.simulate --features FILE.npz --steps 500 --record-every 5
    python -m phases.simulate --dataset cifar10n-worse --steps 1000 --record-every 10

The binary setting of the paper's theory (docs/theory.md section 9): two
classes on one output with targets +1/-1, MSE (or, with ``--loss ce``, the
logistic loss):

    python -m phases.simulate --dataset digits-binary --pair 1,7
    python -m phases.simulate --dataset cifar10n-worse-binary --pair 3,5 --beta 10 --steps 600

Every run also reports the kernel's sign pattern (``summary.json`` key
``sign_pattern``, :mod:`phases.sign_pattern`).

``--features`` reads ``X, y_noisy, X_meta, y_meta, X_test, y_test`` (and
optionally ``y_true``; without it the scores that need the noise mask are
reported as n/a). ``--dataset cifar10n-<label set>`` embeds every CIFAR-10
image once with an ImageNet-pretrained EfficientNet-Lite0 (the ``embeddings``
extra; cached on disk) and uses the reference split. A run on features saves
its labels, not its features, in ``problem.npz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from phases.cli import ArgumentParser, HelpFormatter, OutputDirectory, UserError, add_output_arguments, \
    add_size_arguments, add_weight_arguments, bounded, exit_without_teardown, parse_settings, positive_int, \
    refuse_jax_cache, run_main
from dynamics.embeddings import EXTRACTOR_NAMES, IMAGE_SIZES
from phases.claims import THRESHOLD_DOCS
from phases.experiments import DATASETS, INITS, KERNEL_DTYPES, NOISE_TYPES, SimulationConfig, read_settings

PROG = "python -m phases.simulate"


def build_parser() -> argparse.ArgumentParser:
    d = SimulationConfig()
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    data = parser.add_argument_group("problem")
    data.add_argument("--dataset", choices=DATASETS, default=None,
                      help="gmm: Gaussian mixture (the default); digits: scikit-learn's bundled 8x8 digits (10 "
                           "classes, 64 pixels); cifar10n-<label set>: frozen CIFAR-10 embeddings with one of "
                           "CIFAR-10N's human label sets at the reference split (45,000 noisy training images, "
                           "2,000 clean, 10,000 test); features: a --features file; *-binary: the binary setting, "
                           "the two classes of --pair on one output with targets +1/-1 (digits-binary: flips within "
                           "the pair at --noise, n=240, m=20 by default; cifar10n-<label set>-binary: the images "
                           "whose true class and human label lie in the pair, n=9000 drawn, m=400, p=2000)")
    data.add_argument("--pair", type=class_pair, default=None, metavar="A,B",
                      help="the two classes of a *-binary dataset, A -> +1 and B -> -1 (default: 1,7 for digits, "
                           "3,5 (cat, dog) for CIFAR-10)")
    data.add_argument("--features", default=None, metavar="FILE.npz",
                      help="explicit features: X (n, D), y_noisy (n,), X_meta (m, D), y_meta (m,), X_test (p, D), "
                           "y_test (p,) and optionally y_true (n,); the kernel is their linear kernel (a linear "
                           "head, docs/theory.md section 8) and the file fixes n, m, p")
    data.add_argument("--noise", type=float, default=d.noise, help="label noise rate, a fraction in [0, 1)")
    data.add_argument("--noise-type", choices=NOISE_TYPES, default=d.noise_type,
                      help="symmetric: to another class uniformly; pair: c -> c+1; instance: input-dependent rate")
    # n, m, p default to the dataset's own sizes (SimulationConfig resolves None).
    add_size_arguments(data, n=None, m=None, p=None, classes=d.classes, dim=d.dim, mixture_only=" (gmm)")
    emb = parser.add_argument_group("CIFAR-10N on frozen embeddings (--dataset cifar10n-*)")
    emb.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=d.extractor,
                     help="ImageNet-pretrained network whose penultimate layer gives the features (the "
                          "embeddings extra)")
    emb.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=d.image_size,
                     help="pixels the 32x32 images are upsampled to before the extractor")
    emb.add_argument("--data-dir", default=d.data_dir, metavar="DIR",
                     help="the CIFAR-10 images and CIFAR-10N labels (default: ../shared/data)")
    emb.add_argument("--cache-dir", default=d.cache_dir, metavar="DIR",
                     help="where embeddings are cached (default: $METAREWEIGHT_CACHE, else "
                          "~/.cache/metareweight); built once, on first use")
    data.add_argument("--separation", type=float, default=d.separation, help="norm of the class means (gmm)")
    data.add_argument("--spread", type=float, default=d.spread, help="standard deviation around each mean (gmm)")
    data.add_argument("--imbalance", type=bounded(float, 1.0), default=d.imbalance,
                      help="ratio of the largest to the smallest training class, sizes geometric in the class "
                           "index (gmm; the clean subset and the test set stay balanced)")
    data.add_argument("--clean-noise", type=bounded(float, 0.0), default=d.clean_noise,
                      help="symmetric label noise rate inside the clean subset, a fraction below (C-1)/C "
                           "(gmm, digits)")
    net = parser.add_argument_group("kernel (infinite-width fully connected network, NTK parametrisation)")
    net.add_argument("--kernel", choices=("ntk", "nngp"), default=d.kernel, help="kernel of the linearized model")
    net.add_argument("--depth", type=bounded(int, 0), default=d.depth, help="hidden layers")
    net.add_argument("--activation", choices=("relu", "erf"), default=d.activation, help="activation")
    net.add_argument("--w-std", type=bounded(float, 0.0, strict=True), default=d.w_std,
                     help="weight standard deviation (times 1/sqrt(fan_in))")
    net.add_argument("--b-std", type=bounded(float, 0.0), default=d.b_std, help="bias standard deviation")
    net.add_argument("--kernel-dtype", choices=KERNEL_DTYPES, default=d.kernel_dtype,
                     help="storage of the dense kernel: float32 halves its memory and runs about twice as fast at "
                          "large n (the dynamics stay float64; weights differ by about 1e-6)")
    dyn = parser.add_argument_group("meta-reweighting (docs/theory.md section 2)")
    dyn.add_argument("--variant", choices=("meta", "l2rw", "fixed"), default=d.variant,
                     help="meta: persistent clipped weights; l2rw: Ren et al. reset; fixed: beta = 0")
    dyn.add_argument("--loss", choices=("mse", "ce"), default=d.loss, help="mean squared error or cross-entropy")
    dyn.add_argument("--eta", type=bounded(float, 0.0, strict=True), default=d.eta,
                     help="model step size (default: 1/lambda_max(K_XX), or 1/lambda_joint when that is unstable)")
    dyn.add_argument("--eta-scale", type=bounded(float, 0.0, strict=True), default=d.eta_scale, metavar="FRACTION",
                     help="model step size as a fraction of the stability limit: eta = FRACTION * 2/lambda_joint "
                          "(lambda_joint: top eigenvalue of the joint train and clean kernel; above 1 may diverge); "
                          "instead of --eta")
    add_weight_arguments(dyn, d)
    dyn.add_argument("--init", choices=INITS, default=d.init,
                     help="initial outputs: zero (centred network) or a draw from the NNGP prior")
    dyn.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                     help="training mini-batch, examples (default: full batch)")
    dyn.add_argument("--meta-batch-size", type=positive_int, default=d.meta_batch_size,
                     help="clean mini-batch, examples (default: full batch)")
    dyn.add_argument("--steps", type=positive_int, default=d.steps, help="number of steps")
    dyn.add_argument("--record-every", type=positive_int, default=d.record_every, help="record every k-th step")
    dyn.add_argument("--perturb-draws", type=bounded(int, 0), default=d.perturb_draws,
                     help="C7 perturbation draws per recorded step (0: skip)")
    dyn.add_argument("--seed", type=int, default=d.seed, help="seed of the problem, the batches and the perturbations")
    ph = parser.add_argument_group("phase detection (docs/theory.md section 5)")
    ph.add_argument("--align-fraction", type=float, default=d.align_fraction,
                    help="T_align: first step where the clean mean weight reaches this fraction of its maximum")
    ph.add_argument("--window", type=float, default=d.window, help="plateau window, a fraction of the run")
    ph.add_argument("--min-window", type=int, default=d.min_window, help="smallest plateau window, steps")
    ph.add_argument("--tau", type=float, default=d.tau,
                    help="plateau: L_meta fell by less than tau * L_meta(0) over the window")
    ph.add_argument("--tau-w", type=float, default=d.tau_w,
                    help="T_freeze: the share of noisy examples at w = 0 never again grows by tau_w or more")
    thresholds = parser.add_argument_group("claim thresholds (docs/theory.md section 4.1)")
    for name, (meaning, low, high) in THRESHOLD_DOCS.items():
        thresholds.add_argument(f"--{name.replace('_', '-')}", type=bounded(float, low, high),
                                default=getattr(d, name), metavar="X", help=meaning)
    study = parser.add_argument_group("claims over seeds")
    study.add_argument("--seeds", type=seed_list, default=None, metavar="SEEDS",
                       help="run the configuration at every seed of SEEDS (e.g. 0-19 or 0,3,7) and report each "
                            "claim's verdict rate and margin distribution instead of one run")
    study.add_argument("--workers", type=positive_int, default=None,
                       help="processes for --seeds (default: the number of cores)")
    out = parser.add_argument_group("output")
    add_output_arguments(out, out_help="output directory (default: runs/simulate-<date>-<time>)",
                         saved_file="config.json")
    out.add_argument("--save-kernels", action="store_true",
                     help="also write kernels.npz (K_XX, K_VX, K_VV, K_TX, K_TV); not for features, whose kernel "
                          "is never formed")
    out.add_argument("--force", action="store_true",
                     help="run even when the memory estimate exceeds what this machine has")
    return parser


def class_pair(text: str) -> tuple[int, int]:
    """An argument type: two class indices ``A,B`` (their range is checked with the dataset)."""
    try:
        a, b = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be two class indices A,B, got {text!r}") from None
    return a, b


def seed_list(text: str) -> list[int]:
    """An argument type: ``A-B`` (inclusive) or comma-separated seeds, each ``>= 0``; sorted, no repeats."""
    try:
        if "-" in text.strip("-") and "," not in text:
            low, high = (int(part) for part in text.split("-"))
            seeds = list(range(low, high + 1))
        else:
            seeds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be A-B or comma-separated integers, got {text!r}") from None
    if not seeds or seeds[0] < 0 or len(seeds) > 10_000:
        raise argparse.ArgumentTypeError(f"must name 1 to 10000 seeds >= 0, got {text!r}")
    return seeds


def parse_config(argv: list[str] | None) -> tuple[SimulationConfig, argparse.Namespace]:
    """The configuration the command line asks for: ``--config`` settings, overridden by explicit flags."""
    def saved(path):
        return read_settings(path, SimulationConfig.from_dict, "config.json", PROG)

    return parse_settings(build_parser(), argv, SimulationConfig, saved, _as_flags)


def _as_flags(message: str) -> str:
    """Name a setting in an error message as its flag (``batch_size must ...`` -> ``--batch-size must ...``)."""
    fields = {field.name for field in dataclasses.fields(SimulationConfig)}
    name = message.split(" ", 1)[0]
    return f"--{name.replace('_', '-')}{message[len(name):]}" if name in fields else message


def _stage(counter: list[int], text: str, total: int = 3) -> None:
    counter[0] += 1
    print(f"[{counter[0]}/{total}] {text}", file=sys.stderr, flush=True)


class _ImageBar:
    """A progress bar over images, opened at the first call (only when embeddings are built)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="image", file=sys.stderr, leave=False, disable=None,
                            desc="embeddings (once)")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(argv: list[str] | None = None) -> dict:
    """Run one simulation from command-line arguments; print the report; return the summary."""
    config, args = parse_config(argv)
    # Everything a user can get wrong is checked before the slow imports (JAX, neural-tangents, matplotlib).
    if args.save_kernels and config.on_features:
        raise UserError(f"--save-kernels does not apply to --dataset {config.dataset}: a run on features never "
                        f"forms the (n, n) kernel (its kernel is the features' linear kernel)")
    try:
        problem = config.validate(force=args.force)
    except ValueError as error:
        raise UserError(_as_flags(str(error))) from None
    refuse_jax_cache()
    kind = "simulate" if args.seeds is None else "seeds"
    out = args.out or os.path.join("runs", time.strftime(f"{kind}-%Y%m%d-%H%M%S"))
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    output = OutputDirectory(out, args.overwrite, command=command)
    if args.seeds is not None:
        return _run_seeds(config, args, output, command, out)

    import matplotlib

    matplotlib.use("Agg")  # a command line draws to files only
    from tqdm import tqdm

    from dynamics.simulator import DivergenceError
    from phases.experiments import run_simulation
    from phases.report import boundaries_line, claims_table, final_line, phase_table

    counter = [0]
    stages = 4 if config.dataset.startswith("cifar10n-") else 3
    images = _ImageBar()
    try:
        with output as staging:
            with tqdm(total=config.steps, unit="step", file=sys.stderr, leave=False, disable=None) as bar:
                extra = {"problem": problem, "embedding_progress": images} if config.on_features else {}
                try:
                    result = run_simulation(config, progress=lambda t: bar.update(int(t) - bar.n),
                                            stage=lambda text: _stage(counter, text, stages), saving=True, **extra)
                finally:
                    images.close()
                bar.update(config.steps - bar.n)
            written = result.save(staging, kernels=args.save_kernels, command=command)
    except DivergenceError as error:
        raise UserError(str(error)) from None
    except ValueError as error:  # a features run's data (labels file, images, cache folder) is checked as it is read
        if not config.on_features:
            raise
        raise UserError(str(error)) from None

    summary = result.summary
    print()
    print(f"Phases (docs/theory.md section 5) of {result.problem.name}, {config.steps} steps, "
          f"eta={result.trajectory.config['eta']:.4g}:")
    print(phase_table(summary["phases"]))
    print(boundaries_line(summary))
    print()
    print("Claims (docs/theory.md section 4) measured on this run:")
    print(claims_table(summary["claims"]))
    print()
    if "sign_pattern" in summary:
        from phases.sign_pattern import sign_pattern_lines

        print("\n".join(sign_pattern_lines(summary["sign_pattern"])))
        print()
    if summary.get("y_true", True):
        print(final_line(summary["final"]))
    else:
        print(f"Final: test accuracy {summary['final']['test_accuracy']:.3f}. AUC, precision/recall and the noisy/clean "
              f"shares at w = 0 (and C3, C6, C9, C12, T_align, T_freeze): n/a: no y_true in {config.features}; the "
              f"filtering row spans alignment and filtering.")
    cache = result.problem.source.get("cache") if config.on_features else None
    if cache:
        how = {"hit": "read from the cache", "built": "built and cached",
               "rebuilt": f"rebuilt ({cache['reason']})"}[cache["status"]]
        print(f"Embeddings: {how}: {cache['path']} (one-time cost {cache['seconds'] / 60:.1f} min, "
              f"{cache['ms_per_image']:.1f} ms/image over {cache['images']} images)")
    print(f"Wrote {out}/: {' '.join(written)}")
    return summary


def _run_seeds(config: SimulationConfig, args: argparse.Namespace, output: OutputDirectory, command: str,
               out: str) -> list[dict]:
    """The claims-over-seeds study: every seed's summary, the verdict rates and margin distributions."""
    from tqdm import tqdm

    from dynamics.simulator import DivergenceError
    from phases.cli import write_json, write_text
    from phases.experiments import claims_over_seeds, run_seeds
    from phases.report import seeds_table

    started = time.perf_counter()
    try:
        with output as staging:
            with tqdm(total=len(args.seeds), unit="run", file=sys.stderr, disable=None) as bar:
                records = run_seeds(config, args.seeds, workers=args.workers, on_result=lambda *_: bar.update())
            rows = claims_over_seeds(records)
            write_json(os.path.join(staging, "seeds.json"), {
                "command": command, "settings": dataclasses.asdict(config), "seeds": args.seeds,
                "claims": rows, "records": records, "wall_s": time.perf_counter() - started})
            write_text(os.path.join(staging, "seeds.csv"), _seeds_csv(records))
    except DivergenceError as error:
        raise UserError(str(error)) from None
    print(seeds_table(rows, args.seeds))
    print(f"Wrote {out}/: seeds.json seeds.csv ({len(records)} runs, {time.perf_counter() - started:.0f} s)")
    return records


def _seeds_csv(records: list[dict]) -> str:
    """One row per seed: boundaries, final metrics, and each claim's verdict and margin."""
    ids = [claim["id"] for claim in records[0]["claims"]]
    header = ["seed", "realised_noise_rate", "T_align", "T_filter", "T_freeze", "test_accuracy", "auc",
              "frac_clean_zero_end", *(f"{id}_{part}" for id in ids for part in ("verdict", "margin"))]
    lines = [",".join(header)]
    for record in records:
        claims = {claim["id"]: claim for claim in record["claims"]}
        cells = [record["seed"], record["realised_noise_rate"], record["T_align"], record["T_filter"],
                 record["T_freeze"], record["final"]["test_accuracy"], record["final"]["auc"],
                 record["final"]["frac_clean_zero"]]
        cells += [value for id in ids for value in (claims[id]["verdict"], claims[id]["margin"])]
        lines.append(",".join("" if cell is None else f"{cell:.6g}" if isinstance(cell, float) else str(cell)
                              for cell in cells))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    exit_without_teardown(main())
