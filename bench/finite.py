"""Cost of exact bi-level meta-reweighting against plain weighted SGD on the same finite network.

    python bench/finite.py [--widths 256,1024] [--depth 2] [--out bench/finite.json]

Times one full-batch step of :func:`dynamics.finite.step` (look-ahead,
autodiff meta-gradient through it, clipped weight update, model update)
and one step of :func:`dynamics.finite.sgd_step` (the model update alone, fixed
weights), side by side on the same network and problem (the Gaussian mixture
of ``python -m dynamics.finite``: n=200, m=40, p=200, C=4, d=16), at each
width, on the CPU (float64) and, when torch sees one, on the GPU (float32).
Prints a table and writes the numbers and the configuration as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from dynamics.finite import NetworkConfig, init, sgd_step, step
from dynamics.problem import gaussian_mixture
from dynamics.simulate import MetaConfig
from kernels.infinite import KernelSpec


def _widths(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"bench/finite.py: error: {message}", file=sys.stderr)
        sys.exit(2)


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


def main() -> None:
    parser = _Parser(prog="bench/finite.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--widths", type=_widths, default=[256, 1024], help="hidden-layer widths, comma-separated")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers (2: docs/theory.md's network)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch intra-op CPU threads (on a loaded 2-core machine two threads were 50x slower "
                             "than one, measured)")
    parser.add_argument("--out", default=os.path.join("bench", "finite.json"), help="JSON file written")
    args = parser.parse_args()
    if args.depth < 0:
        parser.error(f"--depth must be >= 0, got {args.depth}")
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
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "machine": platform.platform(),
    }
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
