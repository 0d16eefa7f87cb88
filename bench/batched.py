"""Benchmark runs advanced together over one kernel: the time per simulation for S = 1, 4, 16, 64.

    python bench/batched.py [--out FILE] [--sizes 4000 8000] [--runs 1 4 16 64] [--steps 40 15]

A script, not a timed test (docs/architecture.md, convention 11): it prints a
table and writes a JSON file with every number.

A full-batch step of the exact simulator reads the whole ``(n + m) x n``
kernel to multiply it by an ``n x C`` matrix: it is bound by memory
bandwidth, not by arithmetic. :func:`dynamics.simulator.simulate_many`
advances ``S`` runs that share the kernel with one ``n x (S C)`` product per
step, so the kernel is read once for all of them.

Per size ``n`` (``C = 10`` classes, ``m = p = n / 10``, the Gaussian mixture of
docs/theory.md section 5 and its analytic NTK, computed once and not timed),
in one process, after measuring this machine's limits
(``bench/simulator.py``'s ``yardstick``: a STREAM-like threaded copy and a
float64 matrix product):

* ``S`` runs share the inputs and differ in everything
  :func:`~dynamics.simulator.simulate_many` lets them differ in: the label
  noise (rates spread over [0.1, 0.5], each its own draw), the seed, ``beta``
  (1 or 2), ``gamma`` (1 or 0.5) and ``w0`` (0.5 or 0.4);
* the one-at-a-time reference is :func:`~dynamics.simulator.simulate` of the
  first run (after a compiling call), the median of three calls: the cost
  of one run alone, its eta solve included;
* each ``S`` is the median of three ``simulate_many`` calls after a
  compiling call on the same shapes; "per simulation" is that time divided
  by ``S``, and the speed-up is the single run's time over that; with
  ``S >= 2`` the products run in numpy's BLAS
  (:func:`dynamics.operators.host_products`), with ``S = 1`` in XLA;
* every run is recorded at its first and last step only (``record_every =
  steps``) without C7 draws, so the step dominates, as in a long sweep;
* the equality: up to four of the ``S`` runs (the first, the last and two
  between) are run one at a time and compared with their batched results:
  the largest difference of the weights and of the outputs (train, clean,
  test) relative to their largest magnitude must be under 1e-12, or the
  bench fails;
* the achieved bandwidth of a batched step counts the kernel bytes read per
  step (``K_X`` and ``K_V``: ``(n + m)(n + m)`` numbers), its FLOPs those of
  ``S`` runs' products (``bench/simulator.py``'s ``step_flops``); each is set
  against the measured limit, and the binding one (the larger floor time) is
  named.

The machine's CPUs may be shared: the load average is recorded at the start
and the end; compare ratios, not seconds.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.simulator import NUM_CLASSES, _load, _ntk_problem, _progress, step_flops, yardstick  # noqa: E402
from phases.cli import ArgumentParser, HelpFormatter, UserError, positive_int, run_main, versions, write_json  # noqa: E402

PROG = "python bench/batched.py"
DEFAULT_SIZES = (4000, 8000)
DEFAULT_RUNS = (1, 4, 16, 64)
DEFAULT_STEPS = {4000: 40, 8000: 15}
TOLERANCE = 1e-12
REPEATS = 3  # every time is the median of this many calls


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default="bench/batched.json", help="JSON file for every number (written atomically)")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(DEFAULT_SIZES),
                        help="training-set sizes n (m = p = n / 10)")
    parser.add_argument("--runs", type=positive_int, nargs="+", default=list(DEFAULT_RUNS),
                        help="numbers of runs S advanced together")
    parser.add_argument("--steps", type=positive_int, nargs="+", default=None,
                        help="steps per run, one per size (default: 40 at n = 4000, 15 at n = 8000, else 20)")
    return parser


def _runs(problem, S: int, steps: int):
    """``S`` problems on ``problem``'s inputs with their own label noise, and their configs and seeds."""
    import dataclasses

    import numpy as np

    from dynamics.problem import corrupt_labels
    from dynamics.simulator import MetaConfig

    problems, configs = [], []
    for run, rate in enumerate(np.linspace(0.1, 0.5, S)):
        y_noisy = corrupt_labels(problem.y_true, float(rate), NUM_CLASSES, np.random.default_rng([run, 7]))[0]
        problems.append(dataclasses.replace(problem, y_noisy=y_noisy))
        configs.append(MetaConfig(steps=steps, record_every=steps, perturb_draws=0, beta=1.0 + run % 2,
                                  gamma=1.0 if run % 3 else 0.5, w0=0.5 if run % 4 else 0.4))
    return problems, configs, list(range(S))


def _largest_difference(batched, single) -> float:
    """The largest difference of weights and outputs, each relative to its largest magnitude."""
    import numpy as np

    worst = 0.0
    for name in ("w", "outputs", "meta_outputs", "test_outputs"):
        a, b = np.asarray(getattr(batched, name)), np.asarray(getattr(single, name))
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)))
    return worst


def _timed(function, repeats: int = REPEATS):
    """``(value, median seconds, every time)`` of ``repeats`` calls (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times), times


def run_size(n: int, steps: int, sizes_of_S) -> dict:
    import jax

    from dynamics.simulator import simulate, simulate_many

    _progress(f"n={n}: problem and kernel (not timed)")
    problem, blocks = _ntk_problem(n, seed=0)
    m = problem.sizes[1]
    _progress(f"n={n}: the machine's limits")
    result = {"n": n, "m": m, "steps": steps, "limits": yardstick(), "load_start": _load()}
    device = jax.device_put(blocks)
    problems, configs, seeds = _runs(problem, max(sizes_of_S), steps)
    simulate(problems[0], device, configs[0], seed=seeds[0])  # compiles
    single, seconds, times = _timed(lambda: simulate(problems[0], device, configs[0], seed=seeds[0]))
    result["single_seconds"], result["single_times"] = seconds, times
    _progress(f"n={n}: one run alone {seconds:.2f} s ({steps} steps)")
    kernel_bytes = blocks.K_X.nbytes + blocks.K_V.nbytes
    rows = []
    for S in sizes_of_S:
        args = (problems[:S], device, configs[:S], seeds[:S])
        simulate_many(*args)  # compiles for this S
        batched, seconds, times = _timed(lambda: simulate_many(*args))
        checked = sorted({0, S - 1, S // 3, (2 * S) // 3})
        difference = max(_largest_difference(batched[i], single if i == 0 else
                                             simulate(problems[i], device, configs[i], seed=seeds[i]))
                         for i in checked)
        per_step = seconds / steps
        floors = {"bandwidth": kernel_bytes / (result["limits"]["copy_gb_s"] * 1e9),
                  "flops": S * step_flops(n, m, NUM_CLASSES) / (result["limits"]["gemm_gflop_s"] * 1e9)}
        binding = max(floors, key=floors.get)
        row = {"S": S, "seconds": seconds, "times": times, "per_simulation": seconds / S,
               "speed_up": result["single_seconds"] / (seconds / S), "checked_runs": checked,
               "largest_relative_difference": difference,
               "achieved_gb_s": kernel_bytes / per_step / 1e9,
               "achieved_gflop_s": S * step_flops(n, m, NUM_CLASSES) / per_step / 1e9,
               "binding_limit": binding, "share_of_limit": floors[binding] / per_step}
        rows.append(row)
        _progress(f"n={n}, S={S}: {seconds:.2f} s, {row['per_simulation']:.3f} s per simulation, "
                  f"speed-up {row['speed_up']:.1f}x, difference {difference:.1e}")
        if not difference < TOLERANCE:
            raise RuntimeError(f"n={n}, S={S}: a batched run differs from the same run alone by {difference:.2e} "
                               f"(relative), more than {TOLERANCE:g}")
    result["rows"] = rows
    result["load_end"] = _load()
    return result


def _table(results) -> str:
    lines = ["| n | S | wall s | s per simulation | speed-up per simulation | GB/s of kernel read | GFLOP/s | "
             "binding limit | share of limit | largest difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for result in results:
        limits = result["limits"]
        for row in result["rows"]:
            lines.append(f"| {result['n']} | {row['S']} | {row['seconds']:.2f} | {row['per_simulation']:.3f} | "
                         f"{row['speed_up']:.1f}x | {row['achieved_gb_s']:.1f} | {row['achieved_gflop_s']:.1f} | "
                         f"{row['binding_limit']} | {row['share_of_limit']:.2f} | "
                         f"{row['largest_relative_difference']:.1e} |")
        lines.append(f"\nn={result['n']}: one run alone {result['single_seconds']:.2f} s for {result['steps']} steps; "
                     f"this machine: copy {limits['copy_gb_s']:.1f} GB/s, GEMM {limits['gemm_gflop_s']:.1f} GFLOP/s; "
                     f"load {result['load_start']} -> {result['load_end']}\n")
    return "\n".join(lines)


def run(argv=None) -> None:
    import jax

    args = build_parser().parse_args(argv)
    steps = args.steps or [DEFAULT_STEPS.get(n, 20) for n in args.sizes]
    if len(steps) != len(args.sizes):
        raise UserError(f"--steps needs one value per size ({len(args.sizes)}), got {len(steps)}")
    jax.config.update("jax_enable_x64", True)  # this script is the application: float64 throughout
    results = [run_size(n, count, sorted(set(args.runs))) for n, count in zip(args.sizes, steps)]
    table = _table(results)
    print(table)
    write_json(args.out, {"config": {"sizes": args.sizes, "runs": args.runs, "steps": steps,
                                     "num_classes": NUM_CLASSES, "m": "n // 10", "p": "n // 10",
                                     "tolerance": TOLERANCE},
                          "versions": versions() | {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                          "results": results, "table": table})
    print(f"saved {args.out}")


def main(argv=None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
