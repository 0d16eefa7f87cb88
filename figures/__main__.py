"""Regenerate the figures: a PNG and the CSV of the data behind it per figure.

    python -m figures                      # all, from fresh runs, into runs/figures/
    python -m figures weights mechanism    # some, by name or number
    python -m figures --from runs/results  # from saved results (see figures/results.py for the layout)
    python -m figures --quick --out tmp    # small sizes: the whole set in a few minutes

Fresh runs use the packages that own the computation (``python -m
phases.simulate``, ``phases.sweep``, ``phases.finite``, ``phases.compare``);
``--save-results DIR`` keeps them so that ``--from DIR`` can redraw without
recomputing. A results folder holds gamma1/ and gamma0/ (phases.simulate runs,
figures 1-5), sweep/sweep.json (figure 6), finite/ (figures 7, 9 and 10), sign_pattern/
(figure 12: kernel sign patterns, and any phases.simulate runs to draw beside them) and compare/*/
(results.json files, figure 8; CIFAR-10N runs take about an hour each on 2
cores and are only read, never started). A figure whose inputs are
missing is skipped with a message saying which command produces them. Besides
the figures, ``--out`` receives ``figures.json`` (what was made, how, and the
captions) and ``gallery.md`` (the images with one-line captions).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback

from phases.cli import ArgumentParser, OutputDirectory, UserError, check_output_path, positive_int, run_main, versions, \
    write_json, write_text

PROG = "python -m figures"


def build_parser() -> argparse.ArgumentParser:
    from figures import FIGURES

    names = ", ".join(f"{module.NUMBER}={module.NAME}" for module in FIGURES)
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"figures to make, by name or number (default: all): {names}")
    parser.add_argument("--out", default=os.path.join("runs", "figures"),
                        help="output directory for PNG and CSV files (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that an earlier python -m figures wrote")
    parser.add_argument("--in-place", action="store_true",
                        help="write into the existing directory --out file by file (e.g. docs/img), replacing only "
                             "the files of the figures made")
    parser.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                        help="read saved results from DIR instead of running anything")
    parser.add_argument("--quick", action="store_true",
                        help="fresh runs at small sizes (n=300, 600 steps; sweep n=200, 400 steps, 3 rates x 2 seeds)")
    parser.add_argument("--save-results", default=None, metavar="DIR",
                        help="keep the fresh runs in DIR (reusable with --from DIR; default: a temporary folder)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes for the noise-rate sweep and python -m phases.compare "
                             "(default: the number of local cores)")
    return parser


def _select(names: list[str]):
    from figures import BY_NAME, FIGURES

    if not names or names == ["all"]:
        return list(FIGURES)
    by_number = {str(module.NUMBER): module for module in FIGURES}
    chosen = []
    for name in names:
        module = BY_NAME.get(name) or by_number.get(name)
        if module is None:
            raise UserError(f"unknown figure {name!r}; choose from {', '.join(BY_NAME)} (or numbers 1-{len(FIGURES)})")
        if module not in chosen:
            chosen.append(module)
    return sorted(chosen, key=lambda module: module.NUMBER)


def _check_args(args):
    """Refuse bad arguments before any work; return the output (a staged directory, or ``--out`` in place)."""
    if args.from_dir is not None:
        if not os.path.isdir(args.from_dir):
            raise UserError(f"--from {args.from_dir} is not a directory")
        if args.save_results is not None:
            raise UserError("--save-results keeps fresh runs; it cannot be combined with --from")
        if args.quick:
            raise UserError("--quick sets the sizes of fresh runs; it cannot be combined with --from")
    if args.save_results is not None:
        if not os.path.isdir(args.save_results):
            check_output_path(args.save_results, option="--save-results")
        try:
            os.makedirs(args.save_results, exist_ok=True)
        except OSError as error:
            raise UserError(f"--save-results {args.save_results} cannot be created: {error.strerror}") from None
    if args.in_place:
        if args.overwrite:
            raise UserError("--in-place writes into an existing directory; it cannot be combined with --overwrite")
        if not os.path.isdir(args.out) or not os.access(args.out, os.W_OK):
            raise UserError(f"--in-place needs --out to be an existing writable directory, got {args.out}")
        return contextlib.nullcontext(args.out)
    return OutputDirectory(args.out, args.overwrite, command=" ".join([PROG, *sys.argv[1:]]))


def _gallery(entries: list[dict]) -> str:
    lines = ["# Figures", ""]
    for entry in entries:
        if entry["status"] != "written":
            continue
        lines += [f"**{entry['number']}. {entry['name'].replace('_', ' ')}**: {entry['caption']}", "",
                  f"![{entry['name']}]({entry['name']}.png)", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Make the selected figures; return the exit status (0 unless a figure failed with an error)."""
    import matplotlib

    matplotlib.use("Agg")  # a command line draws to files only
    from tqdm import tqdm

    from figures import style
    from figures.results import MissingResults, Results

    modules = _select(args.names)
    output = _check_args(args)
    temporary = None
    if args.from_dir is not None:
        root, fresh = args.from_dir, False
    elif args.save_results is not None:
        root, fresh = args.save_results, True
    else:
        root = temporary = tempfile.mkdtemp(prefix="figures-results-")
        fresh = True
    started = time.perf_counter()
    entries = []
    try:
        with output as out, tqdm(modules, desc="figures", unit="figure", file=sys.stderr, disable=None,
                  bar_format="{desc}: {n_fmt}/{total_fmt} |{bar:20}| {elapsed} {postfix}") as bar:
            results = Results(root, fresh=fresh, quick=args.quick, workers=args.workers, bar=bar)
            for module in bar:
                bar.set_description(f"figure {module.NUMBER} ({module.NAME})")
                entry = {"number": module.NUMBER, "name": module.NAME, "caption": module.CAPTION}
                figure_started = time.perf_counter()
                try:
                    fig, table = module.build(results)
                    png, csv = style.save(fig, table, out, module.NAME)
                    png, csv = (os.path.join(args.out, os.path.basename(path)) for path in (png, csv))
                    entry |= {"status": "written", "png": os.path.basename(png), "csv": os.path.basename(csv),
                              "csv_columns": list(table.columns)}
                    message = f"wrote {png} and {csv}"
                except MissingResults as error:
                    entry |= {"status": "skipped", "message": str(error)}
                    message = f"skipped: {error}"
                except Exception as error:  # a bug: report it in full, go on with the other figures
                    entry |= {"status": "failed", "message": f"{type(error).__name__}: {error}"}
                    message = "FAILED:\n" + traceback.format_exc()
                entry["seconds"] = round(time.perf_counter() - figure_started, 2)
                entries.append(entry)
                bar.write(f"figure {module.NUMBER} ({module.NAME}): {message}", file=sys.stderr)
                bar.set_postfix_str("")
            elapsed = time.perf_counter() - started
            manifest = {
                "command": f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv),
                "mode": "from saved results" if not fresh else ("fresh, quick" if args.quick else "fresh"),
                "results": os.path.abspath(root) if temporary is None else None,
                "sizes": dataclasses.asdict(results.sizes) if fresh else None,
                "seconds": round(elapsed, 1),
                "versions": versions(),
                "figures": entries,
            }
            write_json(os.path.join(out, "figures.json"), manifest)
            write_text(os.path.join(out, "gallery.md"), _gallery(entries))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    counts = {status: sum(e["status"] == status for e in entries) for status in ("written", "skipped", "failed")}
    print(f"{counts['written']} figure(s) written to {args.out}/, {counts['skipped']} skipped, "
          f"{counts['failed']} failed, in {elapsed:.0f} s")
    for entry in entries:
        if entry["status"] != "written":
            print(f"  {entry['name']}: {entry['status']}: {entry['message']}")
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, lambda: run(build_parser().parse_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
