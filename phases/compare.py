"""Train every noisy-label method end to end on one problem and compare them over seeds.

    python -m phases.compare --data cifar10n-worse --seeds 3 --out runs/cmp-worse

Every method of :mod:`dynamics.methods` trains the same network with the same
optimiser, schedule, batches, epochs and seeds (docs/theory.md section 7);
the library is :mod:`phases.comparison`. Prints the table (mean and standard
deviation over seeds of test accuracy, clean-detection precision, recall and
F1 of ``{w > 0}``, AUC of the weights, weight mass on noisy examples, wall
time per epoch, peak memory) and writes ``results.json`` (every per-seed
number, the full configuration and package versions), ``results.md``, ``results.csv`` and
``weights.npz`` (final and per-epoch weights) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from phases.cli import ArgumentParser, HelpFormatter, OutputDirectory, UserError, add_output_arguments, bounded, \
    positive_int, run_main
from phases.comparison import CIFAR_CPU, CIFAR_GPU, DATASETS, PROFILES, VECTOR

PROG = "python -m phases.compare"


def _seeds(text):
    parts = text.replace(" ", "").split(",")
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
    from dynamics.methods import METHODS

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


def _profile_defaults(key: str) -> str:
    return (f"(default: the profile's; cifar cpu {CIFAR_CPU[key]}, cifar gpu {CIFAR_GPU[key]}, "
            f"gmm/digits {VECTOR[key]})")


def build_parser() -> argparse.ArgumentParser:
    from dynamics.methods import METHODS

    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
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
                        help=f"training epochs {_profile_defaults('epochs')}")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help="training examples n (default: the profile's; cifar cpu "
                             f"{CIFAR_CPU['n_train']}, cifar gpu all, gmm/digits {VECTOR['n_train']})")
    parser.add_argument("--noise", type=float, default=None,
                        help="label noise rate for gmm/digits, in [0, 1) (default 0.4); CIFAR-10N noise is real")
    parser.add_argument("--noise-type", choices=("symmetric", "pair", "instance"), default="symmetric",
                        help="synthetic noise model for gmm/digits")
    train = parser.add_argument_group("shared training budget (SGD, momentum 0.9, weight decay 5e-4)")
    train.add_argument("--batch-size", type=positive_int, default=None,
                       help=f"training examples per step {_profile_defaults('batch_size')}")
    train.add_argument("--meta-batch-size", type=positive_int, default=None,
                       help=f"clean examples per step {_profile_defaults('meta_batch_size')}")
    train.add_argument("--lr", type=bounded(float, 0.0, strict=True), default=None,
                       help=f"initial SGD learning rate, annealed to 0 by a per-step cosine {_profile_defaults('lr')}")
    train.add_argument("--gamma", type=bounded(float, 0.0), default=None,
                       help="weight of the clean subset in every method's training loss (default 1; 0: noisy set only)")
    train.add_argument("--warmup-epochs", type=bounded(int, 0), default=None,
                       help="epochs of ERM warm-up (fine, cleanlab), of alpha0 = 1/(C-1) (surrogate), of the "
                            f"forget-rate ramp (small-loss, coteaching) {_profile_defaults('warmup_epochs')}")
    methods = parser.add_argument_group("method settings")
    methods.add_argument("--beta", type=bounded(float, 0.0), default=None,
                         help="meta step size of 'meta' (weights move by beta x mean clean-gradient inner product; "
                              "default 1)")
    methods.add_argument("--surrogate-alpha0-epochs", type=bounded(int, 0), default=None,
                         help="epochs of 'surrogate' with alpha0 = 1/(C-1) before it drops to 0 (docs/theory.md "
                              "section 6; default: the warm-up epochs)")
    methods.add_argument("--forget-rate", type=float, default=None,
                         help="small-loss / coteaching forget rate p, in [0, 1) (default: the realised noise rate, "
                              "assumed known as in Co-teaching)")
    runtime = parser.add_argument_group("runtime and output")
    runtime.add_argument("--data-dir", default=None,
                         help="CIFAR data folder (default: the shared data folder beside the repository, "
                              "dynamics.cifar.DEFAULT_DATA_DIR)")
    runtime.add_argument("--no-verify", action="store_true",
                         help="read the CIFAR files without checking them against SHA256SUMS (say so in any report)")
    runtime.add_argument("--device", default=None, help="torch device (default: cpu; cuda for --profile gpu)")
    runtime.add_argument("--jobs", type=positive_int, default=None,
                         help="runs trained in parallel processes (default: 2 on the CPU, one per core of a "
                              "2-core machine; 1 on CUDA)")
    runtime.add_argument("--threads", type=positive_int, default=1,
                         help="torch/BLAS threads per run (1 is fastest on a shared 2-core machine)")
    add_output_arguments(runtime, out_help="output directory (default: runs/compare-<data>-<date>-<time>)")
    return parser


def _method_params(args: argparse.Namespace) -> dict:
    """The method settings the flags ask for, by method name (ValueError on a bad value)."""
    from dynamics.methods import MetaParams, SmallLossParams, SurrogateParams

    params = {}
    if args.beta is not None:
        params["meta"] = MetaParams(beta=args.beta)
    if args.forget_rate is not None:
        params["small-loss"] = params["coteaching"] = SmallLossParams(forget_rate=args.forget_rate)
    if args.surrogate_alpha0_epochs is not None:
        params["surrogate"] = SurrogateParams(alpha0_epochs=args.surrogate_alpha0_epochs)
    return params


def _run_line(event, elapsed: float) -> str:
    record = event.finished
    head = f"[{event.runs_done}/{event.runs_total}] {event.current}"
    if "skipped" in record:
        return f"{head}: skipped ({record['skipped']})"
    return (f"{head}: test accuracy {record['test_accuracy']:.3f}, F1 {record['f1']:.3f}, AUC {record['auc']:.3f}, "
            f"{record['wall_time_per_epoch']:.2f} s/epoch ({elapsed:.0f} s elapsed)")


def run(argv: Sequence[str] | None = None) -> dict:
    """Run the comparison the arguments ask for; print the table; write the output directory; return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from dynamics.cifar import DataError
    from dynamics.methods import TrainingDiverged
    from phases.comparison import compare, format_table, realised_noise_rate, resolve_setup, write_results

    options = dict(profile=args.profile, epochs=args.epochs, noise_rate=args.noise, noise_type=args.noise_type,
                   n_train=args.n_train, data_dir=args.data_dir, device=args.device, verify=not args.no_verify,
                   budget_overrides={key: getattr(args, key) for key in
                                     ("batch_size", "meta_batch_size", "lr", "gamma", "warmup_epochs")
                                     if getattr(args, key) is not None})
    try:
        options["params"] = _method_params(args)
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data-dir {args.data_dir} is not a directory")
        # Resolve before touching the output folder, so that a bad option leaves nothing behind.
        setup = resolve_setup(args.data, **options)
    except ValueError as error:
        raise UserError(str(error)) from None
    jobs = args.jobs or (1 if setup.budget.device.startswith("cuda") else max(1, min(2, os.cpu_count() or 1)))
    out = args.out or os.path.join("runs", time.strftime(f"compare-{args.data}-%Y%m%d-%H%M%S"))
    command = " ".join([PROG, *argv])
    output = OutputDirectory(out, args.overwrite, command=command)

    from tqdm import tqdm

    started = time.perf_counter()
    total = len(args.methods) * len(args.seeds) * setup.budget.epochs
    try:
        with output as staging:
            # disable=None: no bar when stderr is not a terminal (a log gets one line per run instead).
            with tqdm(total=total, unit="epoch", file=sys.stderr, leave=False, disable=None) as bar:
                def progress(event):
                    bar.set_description(event.current, refresh=False)
                    bar.update(event.epochs_done - bar.n)
                    if event.finished is not None:
                        with tqdm.external_write_mode(file=sys.stderr):
                            print(_run_line(event, time.perf_counter() - started), file=sys.stderr, flush=True)

                results = compare(args.data, args.methods, args.seeds, jobs=jobs, threads=args.threads,
                                  progress=progress, **options)
            written = write_results(results, staging, command)
    except (ValueError, DataError, TrainingDiverged) as error:
        raise UserError(str(error)) from None
    print()
    print(f"{results['description']}; realised noise rate {realised_noise_rate(results):.3f}; "
          f"mean ± std over seeds {results['seeds']}")
    print(format_table(results))
    for method, reason in results["skipped"].items():
        print(f"skipped {method}: {reason}")
    print(f"Wrote {out}/: {' '.join(written)} ({results['wall_time_total'] / 60:.1f} min)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
