"""Benchmark the main command, ``python -m phases.simulate --noise 0.4``: its wall time and where it goes.

    python bench/main_command.py [--runs 5] [--out FILE]

A script, not a timed test (docs/architecture.md, convention 11): it prints a
table and writes a JSON file with every number.

* ``--runs`` times the command itself in a fresh process each, as a user
  runs it (interpreter start, imports and JAX compilation included), and
  reports the median, smallest and largest wall time against the goal of 4 s;
  every run's phases and claims (``summary.json``) must be byte-identical, or
  the bench fails;
* one more fresh process runs the same pipeline with a clock at each stage:
  imports, the problem, the kernel (the simulation's loop is traced first,
  then compiled by XLA on a thread beside the kernel and the later stages'
  imports), the simulation, phases and claims (the figure is drawn and the
  trajectory compressed on threads beside them), writing the outputs (what is
  left of those two), and JAX's tracing and XLA compilation summed over all
  stages (``jax.monitoring``).

The machine's CPUs may be shared: the load average is recorded at the start
and the end, and each run's CPU time (user + system, all threads) beside its
wall time: on 2 cores a run cannot take less wall time than half its CPU
time.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.simulator import _load, _progress  # noqa: E402
from phases.cli import ArgumentParser, HelpFormatter, argparse, positive_int, run_main, versions, write_json  # noqa: E402

PROG = "python bench/main_command.py"
COMMAND = ["-m", "phases.simulate", "--noise", "0.4"]
GOAL_SECONDS = 4.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--runs", type=positive_int, default=5, help="timed runs of the command")
    parser.add_argument("--out", default="bench/main_command.json",
                        help="JSON file for every number (written atomically)")
    parser.add_argument("--stages-worker", default=None, help=argparse.SUPPRESS)
    return parser


def _verdicts(directory: str) -> str:
    """The run's phases and claims, as the bytes they are written with."""
    with open(os.path.join(directory, "summary.json")) as handle:
        summary = json.load(handle)
    return json.dumps({"phases": summary["phases"], "claims": summary["claims"]}, sort_keys=True)


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stages(out: str) -> dict:
    """The command's pipeline in this fresh process, each stage timed (seconds)."""
    started = time.perf_counter()
    marks = {}
    import jax.monitoring

    importlib.import_module("dynamics.simulator")  # the command imports it before the first stage
    from phases.experiments import SimulationConfig, run_simulation
    from phases.simulate import parse_config

    marks["imports"] = time.perf_counter() - started
    compiled = {"tracing": 0.0, "compilation": 0.0}
    events = {"/jax/core/compile/jaxpr_trace_duration": "tracing",
              "/jax/core/compile/backend_compile_duration": "compilation"}
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiled.__setitem__(events[event], compiled[events[event]] + seconds)
        if event in events else None)
    config, _ = parse_config(COMMAND[2:])
    assert isinstance(config, SimulationConfig)
    import matplotlib

    matplotlib.use("Agg")
    # run_simulation announces each stage as it starts: the problem is drawn, then the kernel, the simulation,
    # the phases and claims.
    clock = [time.perf_counter()]
    run_started = clock[0]
    result = run_simulation(config, stage=lambda text: clock.append(time.perf_counter()), saving=True)
    clock.append(time.perf_counter())
    marks["problem"] = clock[1] - run_started
    marks |= {name: clock[index + 2] - clock[index + 1]
              for index, name in enumerate(("the loop traced; the kernel and imports, XLA compiling the loop beside them", "simulation",
                                            "phases and claims (figure and compression beside them)"))}
    os.makedirs(out, exist_ok=True)
    save_started = time.perf_counter()
    result.save(out)
    marks["writing the outputs (and waiting for the figure and compression)"] = time.perf_counter() - save_started
    return {"stages": marks, "jax": compiled, "total": time.perf_counter() - started}


def run(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.stages_worker is not None:
        print(json.dumps(stages(args.stages_worker)))
        return
    load_start = _load()
    times, cpu, verdicts = [], [], set()
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.runs):
            out = os.path.join(scratch, f"run{index}")
            used = _children_cpu()
            start = time.perf_counter()
            subprocess.run([sys.executable, *COMMAND, "--out", out], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            cpu.append(_children_cpu() - used)
            verdicts.add(_verdicts(out))
            _progress(f"run {index + 1}/{args.runs}: {times[-1]:.2f} s, CPU {cpu[-1]:.2f} s")
        start = time.perf_counter()
        worker = subprocess.run([sys.executable, os.path.abspath(__file__), "--stages-worker",
                                 os.path.join(scratch, "stages")], cwd=REPO, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        verdicts.add(_verdicts(os.path.join(scratch, "stages")))
    if len(verdicts) != 1:
        raise RuntimeError("the runs' phases and claims differ: the main command is not deterministic")
    breakdown = json.loads(worker.stdout.strip().splitlines()[-1])
    median = statistics.median(times)
    lines = [f"`python {' '.join(COMMAND)}`: median {median:.2f} s over {args.runs} runs (min {min(times):.2f}, "
             f"max {max(times):.2f}); goal {GOAL_SECONDS:g} s: {'met' if median < GOAL_SECONDS else 'NOT met'}; "
             f"phases and claims byte-identical in every run; CPU time median {statistics.median(cpu):.2f} s "
             f"(min {min(cpu):.2f}, max {max(cpu):.2f})", "",
             "| stage (one instrumented run) | seconds |", "|---|---:|",
             f"| interpreter start and the bench's own imports | {wall - breakdown['total']:.2f} |"]
    for name, seconds in breakdown["stages"].items():
        lines.append(f"| {name} | {seconds:.2f} |")
    lines += [f"| (of these, JAX tracing, all stages) | {breakdown['jax']['tracing']:.2f} |",
              f"| (of these, XLA compilation, all stages) | {breakdown['jax']['compilation']:.2f} |",
              f"| total | {wall:.2f} |", "", f"load {load_start} -> {_load()}"]
    table = "\n".join(lines)
    print(table)
    write_json(args.out, {"command": "python " + " ".join(COMMAND), "times": times, "median": median, "cpu": cpu,
                          "goal_seconds": GOAL_SECONDS, "breakdown": breakdown, "instrumented_wall": wall,
                          "load_start": load_start, "load_end": _load(), "versions": versions(), "table": table})
    print(f"saved {args.out}")


def main(argv=None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
