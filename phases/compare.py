"""Train every noisy-label method end to end on one problem and compare them over seeds.

    python -m phases.compare --data cifar10n-worse --seeds 3 --out runs/cmp-worse
    python -m phases.compare --profile linear --dataset cifar10n-worse --seeds 3
    python -m phases.compare --profile linear --features my_embeddings.npz

Every method of :mod:`dynamics.methods` trains the same network under the same
protocol (optimiser, schedule, batches, epochs, clean-data training) and seeds
(docs/theory.md section 7); the library is :mod:`phases.comparison`. Prints
the table (mean and standard deviation over seeds of final and best-epoch test
accuracy, clean-detection precision, recall and F1 of ``{w > 0}``, AUC of the
weights, weight mass on noisy examples, wall time per epoch, peak memory) as
markdown and writes ``results.json`` (every per-seed number, the full
configuration and package versions), ``results.md``, ``results.csv`` and
``weights.npz`` (final and per-epoch weights, and each seed's noise mask) into ``--out``.

Whole or nothing, and resumable, as a sweep (:class:`phases.cli.ResumableOutput`):
the comparison is assembled in ``.DIR.in-progress`` beside ``DIR``; each
finished run's weights go to ``runs/KEY.npz`` and then its record to
``records.jsonl`` (flushed and fsynced), so a comparison that stops (killed,
interrupted, a diverging run) keeps every finished run and ``--resume``
trains only the others; ``--resume`` on a finished ``DIR`` adds the methods
or seeds a larger request asks for. A run's key
(:func:`phases.comparison.run_key`) hashes the problem, network, protocol and
the method's own settings: a run recorded under other settings is trained
again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from phases.cli import ArgumentParser, HelpFormatter, ResumableOutput, UserError, add_output_arguments, atomic_write, \
    bounded, positive_int, run_main
from phases.comparison import CIFAR_CPU, CIFAR_REFERENCE, DATASETS, LINEAR, MLP_HEAD, PROFILES, VECTOR

PROG = "python -m phases.compare"
RUNS = "runs"  # each finished run's weights, runs/KEY.npz (KEY: run_key with "/" as "-")


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
    from dynamics.methods import TrainBudget

    default = getattr(TrainBudget(), key)
    values = {profile: values.get(key, default) for profile, values in (
        ("cifar cpu", CIFAR_CPU), ("reference", CIFAR_REFERENCE), ("linear", LINEAR), ("mlp-head", MLP_HEAD),
        ("gmm/digits", VECTOR))}
    return f"(default: the profile's; {', '.join(f'{profile} {value}' for profile, value in values.items())})"


def build_parser() -> argparse.ArgumentParser:
    from dynamics.methods import METHODS

    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--data", "--dataset", dest="data", choices=[d for d in DATASETS if d != "features"],
                        help="problem: Gaussian mixture, scikit-learn digits, or CIFAR-10 with a CIFAR-10N label set "
                             "(images, or frozen embeddings under --profile linear / mlp-head)")
    parser.add_argument("--features", default=None, metavar="FILE.npz",
                        help="instead of --data, a features file (X, y_noisy, X_meta, y_meta, X_test, y_test, "
                             "optional y_true; as phases.simulate --features) for --profile linear or mlp-head")
    parser.add_argument("--methods", type=_methods, default="all",
                        help=f"comma-separated subset of {','.join(METHODS)}, or 'all' "
                             "(cleanlab is an optional extra, skipped with a message when not installed)")
    parser.add_argument("--seeds", type=_seeds, default="3", help="a count k (seeds 0..k-1) or a list such as 0,1,2")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="cpu: image subset + SmallCNN, under an hour for all methods x 3 seeds on 2 cores; "
                             "linear: a linear head on frozen CIFAR-10 embeddings or --features, the full "
                             "45,000/2,000/10,000 split; mlp-head: one hidden layer on them; reference: the "
                             "reference code's ResNet-34 setup, for an accelerator (default: cpu, linear with "
                             "--features)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"training epochs {_profile_defaults('epochs')}")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help=f"training examples n (default: the profile's; cifar cpu {CIFAR_CPU['n_train']}, "
                             f"reference {CIFAR_REFERENCE['n_train']}, linear / mlp-head all 45,000, gmm/digits "
                             f"{VECTOR['n_train']})")
    parser.add_argument("--noise", type=float, default=None,
                        help="label noise rate for gmm/digits, in [0, 1) (default 0.4); CIFAR-10N noise is real")
    parser.add_argument("--noise-type", choices=("symmetric", "pair", "instance"), default="symmetric",
                        help="synthetic noise model for gmm/digits")
    train = parser.add_argument_group("the protocol shared by every method (SGD)")
    train.add_argument("--batch-size", type=positive_int, default=None,
                       help=f"training examples per step {_profile_defaults('batch_size')}")
    train.add_argument("--meta-batch-size", type=positive_int, default=None,
                       help=f"clean examples per step {_profile_defaults('meta_batch_size')}")
    train.add_argument("--lr", type=bounded(float, 0.0, strict=True), default=None,
                       help="initial SGD learning rate, annealed to 0 by a per-step cosine (reference: x0.1 at epochs "
                            f"40, 80, 100) {_profile_defaults('lr')}")
    train.add_argument("--weight-decay", type=bounded(float, 0.0), default=None,
                       help=f"SGD weight decay (on the model step only) {_profile_defaults('weight_decay')}")
    train.add_argument("--gamma", type=bounded(float, 0.0), default=None,
                       help="weight of the clean term in the training loss of every method but erm and early-stop "
                            f"{_profile_defaults('gamma')}")
    train.add_argument("--clean-passes", type=bounded(int, 0), default=None,
                       help="passes over the clean subset before every epoch, for every method but erm and "
                            f"early-stop {_profile_defaults('clean_passes')}")
    train.add_argument("--warmup-epochs", type=bounded(int, 0), default=None,
                       help="epochs of ERM warm-up (fine, cleanlab, surrogate), of the forget-rate ramp (small-loss, "
                            f"coteaching) {_profile_defaults('warmup_epochs')}")
    methods = parser.add_argument_group("method settings")
    methods.add_argument("--beta", type=bounded(float, 0.0), default=None,
                         help="meta step size of 'meta' (weights move by beta x mean clean-gradient inner product; "
                              "default 1)")
    methods.add_argument("--surrogate-recompute", choices=("epoch", "batch"), default=None,
                         help="surrogate weights (and its ablations') recomputed before every epoch on the whole "
                              "training set, or for every batch as the reference code (default: epoch)")
    methods.add_argument("--surrogate-alpha0-fraction", type=bounded(float, 0.0, 1.0), default=None,
                         help="fraction of the epochs with alpha0 = 1/(C-1) before it drops to 0 (docs/theory.md "
                              "section 6; default 40/150 as the reference code)")
    methods.add_argument("--forget-rate", type=float, default=None,
                         help="small-loss / coteaching forget rate p, in [0, 1) (default: the realised noise rate, "
                              "assumed known as in Co-teaching)")
    runtime = parser.add_argument_group("runtime and output")
    runtime.add_argument("--data-dir", default=None,
                         help="CIFAR data folder (default: the shared data folder beside the repository, "
                              "dynamics.cifar.DEFAULT_DATA_DIR)")
    runtime.add_argument("--no-verify", action="store_true",
                         help="read the CIFAR files without checking them against SHA256SUMS (say so in any report)")
    runtime.add_argument("--device", default=None, help="torch device (default: cpu; cuda for --profile reference)")
    runtime.add_argument("--jobs", type=positive_int, default=None,
                         help="runs trained in parallel processes (default: 2 on the CPU, one per core of a "
                              "2-core machine; 1 on CUDA)")
    runtime.add_argument("--threads", type=positive_int, default=1,
                         help="torch/BLAS threads per run (1 is fastest on a shared 2-core machine)")
    add_output_arguments(runtime, out_help="output directory (default: runs/compare-<data>-<date>-<time>)")
    runtime.add_argument("--resume", action="store_true",
                         help="continue an unfinished comparison into --out, or add methods or seeds to a finished "
                              "one; runs already recorded there are not trained again")
    return parser


def _method_params(args: argparse.Namespace) -> dict:
    """The method settings the flags ask for, by method name (ValueError on a bad value)."""
    from dynamics.methods import MetaParams, SmallLossParams, SurrogateParams

    params = {}
    if args.beta is not None:
        params["meta"] = MetaParams(beta=args.beta)
    if args.forget_rate is not None:
        params["small-loss"] = params["coteaching"] = SmallLossParams(forget_rate=args.forget_rate)
    surrogate = {key: value for key, value in (("recompute", args.surrogate_recompute),
                                               ("alpha0_fraction", args.surrogate_alpha0_fraction))
                 if value is not None}
    if surrogate:
        params["surrogate"] = SurrogateParams(**surrogate)
    return params


def _run_line(event, elapsed: float) -> str:
    record = event.finished
    head = f"[{event.runs_done}/{event.runs_total}] {event.current}"
    if "skipped" in record:
        return f"{head}: skipped ({record['skipped']})"
    return (f"{head}: test accuracy {record['test_accuracy']:.3f} (best epoch {record['best_epoch_accuracy']:.3f}), "
            f"F1 {record['f1']:.3f}, AUC {record['auc']:.3f}, "
            f"{record['wall_time_per_epoch']:.2f} s/epoch ({elapsed:.0f} s elapsed)")


def run(argv: Sequence[str] | None = None) -> dict:
    """Run the comparison the arguments ask for; print the table; write the output directory; return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from dynamics.cifar import DataError
    from dynamics.methods import TrainingDiverged
    from phases.comparison import compare, realised_noise_rate, resolve_setup, run_key, summary_table, write_results

    if (args.data is None) == (args.features is None):
        raise UserError("give one of --data (--dataset) and --features")
    data = args.data or "features"
    profile = args.profile or ("linear" if args.features else "cpu")
    options = dict(profile=profile, epochs=args.epochs, noise_rate=args.noise, noise_type=args.noise_type,
                   n_train=args.n_train, data_dir=args.data_dir, features=args.features, device=args.device,
                   verify=not args.no_verify,
                   budget_overrides={key: getattr(args, key) for key in
                                     ("batch_size", "meta_batch_size", "lr", "weight_decay", "gamma", "clean_passes",
                                      "warmup_epochs")
                                     if getattr(args, key) is not None})
    try:
        options["params"] = _method_params(args)
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data-dir {args.data_dir} is not a directory")
        if args.features is not None and not Path(args.features).is_file():
            raise ValueError(f"--features {args.features} is not a file")
        # Resolve before touching the output folder, so that a bad option leaves nothing behind.
        setup = resolve_setup(data, **options)
    except ValueError as error:
        raise UserError(str(error)) from None
    jobs = args.jobs or (1 if setup.budget.device.startswith("cuda") else max(1, min(2, os.cpu_count() or 1)))
    name = Path(args.features).stem if args.features else data
    out = args.out or os.path.join("runs", time.strftime(f"compare-{profile}-{name}-%Y%m%d-%H%M%S"))
    command = " ".join([PROG, *argv])
    directory = ResumableOutput(out, overwrite=args.overwrite, resume=args.resume, command=command, prog=PROG,
                                carried=(RUNS,))

    from tqdm import tqdm

    started = time.perf_counter()
    recorded = _recorded_runs(directory)
    try:
        runs = os.path.join(directory.progress, RUNS)
        os.makedirs(runs, exist_ok=True)
        wanted = {run_key(setup, method, seed) for method in args.methods for seed in args.seeds}
        if wanted & set(recorded):
            print(f"{PROG}: {len(wanted & set(recorded))} of {len(wanted)} runs already recorded in "
                  f"{directory.progress}; not trained again", file=sys.stderr)
        total = (len(wanted) - len(wanted & set(recorded))) * setup.budget.epochs
        # disable=None: no bar when stderr is not a terminal (a log gets one line per run instead).
        with tqdm(total=total, unit="epoch", file=sys.stderr, leave=False, disable=None) as bar:
            def progress(event):
                bar.set_description(event.current, refresh=False)
                bar.update(event.epochs_done - bar.n)
                if event.finished is not None:
                    if "skipped" not in event.finished:
                        _record_run(directory, runs, event.finished)
                    with tqdm.external_write_mode(file=sys.stderr):
                        print(_run_line(event, time.perf_counter() - started), file=sys.stderr, flush=True)

            results = compare(data, args.methods, args.seeds, jobs=jobs, threads=args.threads,
                              progress=progress, recorded=recorded, **options)
        written = []

        def finish(folder: str) -> None:
            written.extend(write_results(results, folder, command))
            kept = {_run_file(run["key"]) for run in results["runs"]}
            for name in set(os.listdir(os.path.join(folder, RUNS))) - kept:  # runs this request left out
                os.remove(os.path.join(folder, RUNS, name))

        directory.publish([_json_record(run) for run in results["runs"]], finish)
    except (ValueError, DataError, TrainingDiverged) as error:  # FeaturesError is a ValueError
        directory.abandon()
        raise UserError(str(error)) from None
    except BaseException:
        directory.abandon()
        raise
    finally:
        directory.close()
    written += [ResumableOutput.RECORDS, f"{RUNS}/"]
    print()
    print(f"{results['description']}; realised noise rate {realised_noise_rate(results):.3f}; "
          f"mean ± std over seeds {results['seeds']}")
    print(summary_table(results).to_markdown(disable_numparse=True))
    for method, reason in results["skipped"].items():
        print(f"skipped {method}: {reason}")
    print(f"Wrote {out}/: {' '.join(written)} ({results['wall_time_total'] / 60:.1f} min)")
    return results


def _run_file(key: str) -> str:
    return key.replace("/", "-") + ".npz"


def _json_record(run: dict) -> dict:
    """A run's record for ``records.jsonl``: everything but its weight arrays (which are in ``runs/``)."""
    return {name: value for name, value in run.items() if name not in ("weights", "epoch_weights")}


def _record_run(directory: ResumableOutput, folder: str, run: dict) -> None:
    """Keep a finished run: its weights in ``folder/KEY.npz``, then its record in ``records.jsonl``."""
    import numpy as np

    def save(path):
        with open(path, "wb") as handle:  # a handle: given a name, numpy would append ".npz" to it
            np.savez_compressed(handle, weights=run["weights"], epoch_weights=run["epoch_weights"])

    atomic_write(os.path.join(folder, _run_file(run["key"])), save)
    directory.append(_json_record(run))


def _recorded_runs(directory: ResumableOutput) -> dict[str, dict]:
    """The runs recorded in ``directory`` (taken, and locked) with their weights, by key; a record whose weights
    file is missing or unreadable is left out (its run is trained again)."""
    import numpy as np

    runs = {}
    for key, record in directory.open().items():
        try:
            with np.load(os.path.join(directory.progress, RUNS, _run_file(key))) as arrays:
                runs[key] = record | {"weights": arrays["weights"], "epoch_weights": arrays["epoch_weights"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
