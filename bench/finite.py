"""Cost of exact bi-level meta-reweighting against plain weighted SGD on the same finite network.

    python bench/finite.py [--widths 256,1024] [--depth 2] [--out bench/finite.json]

Times one full-batch step of :func:`dynamics.finite.step` (look-ahead,
autodiff meta-gradient through it, clipped weight update, model update)
and one step of :func:`dynamics.finite.sgd_step` (the model update alone, fixed
weights), side by side on the same network and problem (the Gaussian mixture
of ``python -m phases.finite``: n=200, m=40, p=200, C=4, d=16), at each
width, on the CPU (float64) and, when torch sees one, on the GPU (float32).
Prints a table and writes the numbers and the configuration as JSON.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from dynamics.finite import NetworkConfig, init, sgd_step, step
from dynamics.problem import gaussian_mixture
from dynamics.simulator import MetaConfig
from kernels.infinite import KernelSpec
from phases.cli import ArgumentParser, HelpFormatter, bounded, int_list, positive_int, run_main, versions, write_json

PROG = "bench/finite.py"


def _median_seconds(function, device: torch.device, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls after one warm-up call."""
    def timed():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them before reading the clock
        return time.perf_counter() - start

    timed()
    return statistics.median(timed() for _ in range(repeats))


def run(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--widths", type=int_list(1), default=[256, 1024], help="hidden-layer widths, comma-separated")
    parser.add_argument("--depth", type=bounded(int, 0), default=2, help="hidden layers (2: docs/theory.md's network)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op CPU threads (on a loaded 2-core machine two threads were 50x slower "
                             "than one, measured)")
    parser.add_argument("--out", default=os.path.join("bench", "finite.json"), help="JSON file written")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    problem = gaussian_mixture(np.random.default_rng(0), n=200, m=40, p=200, num_classes=4, dim=16)
    config = MetaConfig(eta=1e-3)  # a small step: the timing does not depend on it, and nothing diverges
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    print(f"{'device':>26} {'width':>6} {'params':>10} {'bi-level s/step':>16} {'SGD s/step':>11} {'ratio':>6}")
    for device_name in devices:
        device = torch.device(device_name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
        for width in args.widths:
            network = NetworkConfig(width=width, spec=KernelSpec(depth=args.depth), device=device_name)
            net, state = init(problem, network, config.w0, torch.Generator().manual_seed(0))
            bilevel = _median_seconds(lambda: step(net, state, config), device, args.repeats)
            sgd = _median_seconds(lambda: sgd_step(net, state, config), device, args.repeats)
            params = sum(value.numel() for value in state.params.values())
            results.append({"device": label, "dtype": str(network.dtype).removeprefix("torch."), "width": width,
                            "parameters": params, "bilevel_s_per_step": bilevel, "sgd_s_per_step": sgd,
                            "ratio": bilevel / sgd})
            print(f"{label:>26} {width:>6} {params:>10} {bilevel:>16.4g} {sgd:>11.4g} {bilevel / sgd:>6.2f}")

    record = {
        "benchmark": "full-batch step of exact bi-level meta-reweighting (dynamics.finite.step) vs weighted SGD "
                     "(dynamics.finite.sgd_step), median seconds per step",
        "problem": {"name": problem.name, "n": 200, "m": 40, "p": 200, "num_classes": 4, "dim": 16},
        "depth": args.depth, "repeats": args.repeats, "threads": args.threads, "results": results,
        "versions": versions(),
        "machine": platform.platform(),
    }
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(PROG, run))
