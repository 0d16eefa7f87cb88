"""Benchmark the surrogate reweighter against exact bi-level meta-reweighting.

    python bench/surrogate.py [--out FILE] [--repeats 7] [--threads 1]

A script, not a timed test (docs/architecture.md, convention 11): it prints two tables
and writes a JSON file (atomically) with every number, the configuration, the
load average and the package versions. Every ratio is measured side by side
in one process, the contenders interleaved round by round; the reported ratio
is the median over rounds of the per-round ratio, so a change of load between
rounds cancels.

1. **Weighting cost at equal batch.** For one training batch of ``b`` examples
   and one clean batch of ``b_m``, on the same network:

   - *surrogate pass*: :func:`dynamics.methods.surrogate.surrogate_weights`, what
     ``surrogate`` training runs (there once per epoch on all examples):
     penultimate features of both batches (one forward, no gradient,
     evaluation mode), then :func:`dynamics.surrogate.reweight` (centred class
     means, ``O(b D C)``);
   - *exact meta step*: :func:`dynamics.bilevel.meta_step`, the full step of
     docs/theory.md section 2 that ``meta`` training runs: forward and backward with
     ``create_graph`` at ``theta``, the clean forward at ``theta_hat``, backward
     through the look-ahead to ``w``, the clipped weight update, and the model
     update with the new weights (training-mode BatchNorm); also its weight
     part alone (:func:`dynamics.bilevel.meta_weight_gradient` and the clip),
     since a surrogate-weighted step still pays for its own model update;
   - for scale, a plain ERM step (forward, backward and SGD update on both batches).

   Networks: the 0.5-width ``SmallCNN`` of the CPU CIFAR profile on 32 x 32
   images, and the two-layer MLP of the gmm / digits problems. Inputs are
   random (costs do not depend on values).

2. **Class similarities.** :func:`dynamics.surrogate.class_similarities` with
   the linear kernel, ``S = (Phi - mu) (M - mu)^T`` at ``O(n D C)``, against
   the same similarities through the explicit ``(n, m)`` kernel matrix
   (``kernel=lambda a, b: a @ b.T``, formed in blocks of 1024 rows and averaged
   per class, ``O(n m D)``); the two are asserted equal.

The machine's CPUs may be shared: the load average is recorded at the start
and the end; compare ratios, not seconds.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F


from dynamics.bilevel import meta_step, meta_weight_gradient
from dynamics.cnn import SmallCNN
from dynamics.methods import FeatureMLP, surrogate_weights
from dynamics.surrogate import class_similarities
from phases.cli import ArgumentParser, HelpFormatter, positive_int, run_main, versions, write_json

PROG = "bench/surrogate.py"

BATCHES = ((128, 32), (128, 128), (256, 256))
SIMILARITY_SIZES = ((10000, 1000, 64, 10), (49000, 1000, 128, 10), (20000, 4000, 256, 10))


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _networks(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return {
        "SmallCNN(width=0.5), 32x32 images": (SmallCNN(10, width=0.5, generator=generator), (3, 32, 32), 10),
        "MLP(256, 256), d=32": (FeatureMLP(32, 4, hidden=(256, 256), generator=generator), (32,), 4),
    }


def bench_weighting(repeats: int, seed: int) -> list[dict]:
    rows = []
    for name, (model, input_shape, C) in _networks(seed).items():
        generator = torch.Generator().manual_seed(seed + 1)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for b, b_m in BATCHES:
            x = torch.randn(b, *input_shape, generator=generator)
            y = torch.randint(0, C, (b,), generator=generator)
            x_meta = torch.randn(b_m, *input_shape, generator=generator)
            y_meta = torch.arange(b_m) % C  # every class in the clean batch, as reweight requires
            w = torch.full((b,), 0.5)
            lr, beta, clean_weight = 0.05, 1.0, b_m / b

            def surrogate_pass():
                return surrogate_weights(model, x, y, x_meta, y_meta, C, alpha0=0.0)

            def meta_weights():
                grad_w, _ = meta_weight_gradient(model, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight)
                return (w - beta * b / lr * grad_w).clamp(0, 1)

            def full_meta_step():
                return meta_step(model, optimiser, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight,
                                 beta=beta)

            def erm_step():
                optimiser.zero_grad(set_to_none=True)
                (F.cross_entropy(model(x), y) + clean_weight * F.cross_entropy(model(x_meta), y_meta)).backward()
                optimiser.step()

            contenders = {"surrogate": surrogate_pass, "meta_weights": meta_weights, "meta_step": full_meta_step,
                          "erm": erm_step}
            model.train()
            for fn in contenders.values():  # warm-up: allocator, oneDNN primitives
                fn()
            times = {key: [] for key in contenders}
            for _ in range(repeats):
                for key, fn in contenders.items():
                    times[key].append(_time(fn))

            def ratio(numerator, denominator):
                return statistics.median([a / b for a, b in zip(times[numerator], times[denominator])])

            rows.append({
                "network": name, "b": b, "b_m": b_m,
                **{f"{key}_s": statistics.median(values) for key, values in times.items()},
                "meta_step_over_surrogate": ratio("meta_step", "surrogate"),
                "meta_weights_over_surrogate": ratio("meta_weights", "surrogate"),
                "meta_step_over_erm": ratio("meta_step", "erm"),
                "surrogate_over_erm": ratio("surrogate", "erm"),
                "meta_step_over_surrogate_per_round": [a / b for a, b in zip(times["meta_step"], times["surrogate"])],
                "times": times,
            })
            print(f"  {name}, b={b}, b_m={b_m}: meta step / surrogate pass = "
                  f"{rows[-1]['meta_step_over_surrogate']:.1f}", file=sys.stderr, flush=True)
    return rows


def bench_similarities(repeats: int, seed: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    for n, m, D, C in SIMILARITY_SIZES:
        features = rng.standard_normal((n, D))
        meta_features = rng.standard_normal((m, D))
        meta_labels = np.arange(m) % C

        def fast():
            return class_similarities(features, meta_labels, meta_features, C)

        def explicit():
            return class_similarities(features, meta_labels, meta_features, C, kernel=lambda a, b: a @ b.T)

        S_fast, S_explicit = fast(), explicit()
        error = float(np.max(np.abs(S_fast - S_explicit)) / np.max(np.abs(S_explicit)))
        assert error < 1e-8, f"the O(n D C) path disagrees with the (n, m) matrix by {error:.2e}"
        times = {"ndc": [], "nm": []}
        for _ in range(repeats):
            times["ndc"].append(_time(fast))
            times["nm"].append(_time(explicit))
        rows.append({"n": n, "m": m, "D": D, "C": C, "ndc_s": statistics.median(times["ndc"]),
                     "nm_s": statistics.median(times["nm"]),
                     "nm_over_ndc": statistics.median([a / b for a, b in zip(times["nm"], times["ndc"])]),
                     "max_relative_difference": error, "nm_matrix_mb": n * m * 8 / 2 ** 20,
                     "block_matrix_mb": min(n, 1024) * m * 8 / 2 ** 20, "times": times})
        print(f"  n={n}, m={m}, D={D}: (n, m) / O(nDC) = {rows[-1]['nm_over_ndc']:.1f}", file=sys.stderr, flush=True)
    return rows


def run(argv=None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default="bench/surrogate.json", help="JSON file for every number (written atomically)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed rounds per contender (median reported)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch / BLAS threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and the random inputs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    load_start = os.getloadavg()
    print("1. weighting cost at equal batch", file=sys.stderr)
    weighting = bench_weighting(args.repeats, args.seed)
    print("2. class similarities", file=sys.stderr)
    similarities = bench_similarities(args.repeats, args.seed)
    payload = {"config": vars(args), "versions": versions(), "load_average_start": load_start,
               "load_average_end": os.getloadavg(), "weighting": weighting, "similarities": similarities}
    write_json(args.out, payload)

    print()
    print("Weighting cost at equal batch (median seconds over rounds; ratios: median of per-round ratios):")
    print(f"{'network':34s} {'b':>4s} {'b_m':>4s} {'surrogate':>10s} {'meta w':>8s} {'meta step':>10s} "
          f"{'ERM step':>9s} {'step/surr':>10s} {'w/surr':>7s} {'step/ERM':>9s}")
    for row in weighting:
        print(f"{row['network']:34s} {row['b']:4d} {row['b_m']:4d} {row['surrogate_s']:10.4f} "
              f"{row['meta_weights_s']:8.4f} {row['meta_step_s']:10.4f} {row['erm_s']:9.4f} "
              f"{row['meta_step_over_surrogate']:10.1f} {row['meta_weights_over_surrogate']:7.1f} "
              f"{row['meta_step_over_erm']:9.2f}")
    print("surrogate: one weighting pass (features of both batches + reweight); meta w: look-ahead + meta-gradient "
          "+ clip; meta step: the full step of docs/theory.md section 2 (that and the model update), as trained.")
    print()
    print("Class similarities S (n, C): O(n D C) linear path against the explicit (n, m) kernel matrix:")
    print(f"{'n':>6s} {'m':>5s} {'D':>4s} {'C':>3s} {'O(nDC) s':>10s} {'(n, m) s':>10s} {'ratio':>7s} "
          f"{'rel. diff':>10s}")
    for row in similarities:
        print(f"{row['n']:6d} {row['m']:5d} {row['D']:4d} {row['C']:3d} {row['ndc_s']:10.4f} {row['nm_s']:10.4f} "
              f"{row['nm_over_ndc']:7.1f} {row['max_relative_difference']:10.1e}")
    print(f"\nload average {load_start[0]:.1f} at the start, {payload['load_average_end'][0]:.1f} at the end; "
          f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(PROG, run))
