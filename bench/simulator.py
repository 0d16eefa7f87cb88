"""Benchmark the exact simulator: steps per second, FLOP/s against a plain product, autodiff speed-up, memory.

    python bench/simulator.py [--out FILE] [--sizes 1000 4000 8000] [--steps 200 40 15]
                              [--feature-sizes 8000 50000] [--feature-width 1024]

A script, not a timed test (docs/architecture.md, convention 11): it prints
its tables and writes a JSON file with every number, the configuration and
the package versions. Each size runs in its own process, so the jit cache
and the peak memory of one size do not leak into the next. Every ratio is
measured side by side in one process. Everything is timed through the
simulator's public pieces (:mod:`dynamics.simulator`: ``default_eta``,
``init``, ``step``, ``simulate``, and the kernel operators of
:mod:`dynamics.operators`); nothing is patched.

What is measured, per size ``n`` of the dense route (full batch, ``C = 10``
classes, ``m = p = n / 10``):

* the problem is the Gaussian mixture of docs/theory.md section 5 with 10
  classes and the kernel the analytic NTK of its two-hidden-layer ReLU network
  (``kernels.infinite``), held as :class:`~dynamics.operators.KernelBlocks`;
  computing the kernel is not timed;
* the pieces of a run, separately: ``default_eta`` (the two ``lambda_max``
  Lanczos solves, "eta solve"), ``jax.device_put`` of the blocks ("transfer"),
  and ``steps`` calls of the public ``step`` on the device-resident blocks
  after a first, compiling call ("steps/s": nothing is subtracted, the step
  is the whole step, including the per-call dispatch from Python). A round
  is one such loop between two plain-product loops; ``--rounds`` rounds, the
  median reported (one round where the CPUs are idle, more where they are
  shared);
* the FLOPs of a step are counted from its matrix products (elementwise work
  is O((n + m) C), under 0.1%); the reference is a jitted loop of the same
  number of plain products ``(n + m, n) @ (n, C)``, each feeding the next so
  XLA cannot hoist it (the spread of the ratio over rounds is a measure of
  the machine's noise);
* end to end: one ``simulate()`` call (after a compiling one) with ``record_every
  = steps`` (two diagnostic records) and ``perturb_draws = 0``, which solves
  for eta, copies the blocks to the device and runs the jitted loop;
* at ``--compare-n`` the closed-form weight step (docs/theory.md section 2:
  the meta score, then ``clip(w + beta/m * score, 0, 1)``) is timed against the
  same weight step by automatic differentiation through the look-ahead, on
  the state ``simulate()`` ended in, both jitted and full batch, and the
  results are asserted equal to 1e-10. Two autodiff routes:

  - function space: ``jax.grad`` of ``L_meta(w)`` with ``F_meta_hat(w) = F_meta -
    eta (K_VX (w R) + gamma K_VV R_meta)``. Reverse mode through a linear map
    is its transpose, so this computes exactly the closed form's products;
    expect about 1x. The closed form is this gradient written out, not a
    faster algorithm for it;
  - parameter space: the linearized model ``f(x) = phi(x) theta`` with an
    explicit feature map of width ``D``, bi-level ``jax.grad`` through
    ``theta_hat = theta - eta grad_theta L_train`` (what one runs without the
    function-space identity; ``tests/dynamics/test_simulate.py`` checks they
    agree). It costs ``O((n + m) D C)`` against the closed form's ``O(m n C)``, so
    the speed-up grows like ``D / m``. ``D = n + m`` is the smallest width at
    which a feature map can reproduce a generic full-rank kernel on the
    training and clean points; a real network's ``D`` (its parameter count) is
    larger, and the infinite-width NTK has no finite ``D`` at all. The
    features are random ReLU features of the same inputs, and the closed form
    is given their kernel ``phi phi^T``.

The feature route (docs/theory.md section 8), per ``--feature-sizes`` ``n``:
the same problem with random ReLU features of width ``--feature-width``
(``D``) held as :class:`~dynamics.operators.FeatureKernel`, no kernel matrix
anywhere; the same pieces are timed (eta from ``(D, D)`` Gram matrices, then
the public ``step`` on device-resident features), the FLOPs of a step are
``2 C D (4 n + 5 m)``, the plain reference is a jitted loop of ``theta - c
Phi^T (Phi theta)`` (two ``(n, D)``-by-``C`` products), and steps/s is set
against the dense route's at the largest dense size of the run.

Memory: ``ru_maxrss`` of each size's process (whole process, kernel
construction included), the resident-set high-water mark of the timed
``simulate()`` call alone (``VmHWM`` after a reset through
``/proc/self/clear_refs``, where the kernel allows it), and the sizes of the
operator's arrays.

The machine's CPUs may be shared: the load average is recorded at the start
and the end, and timings of one run are noisy; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from phases.cli import (ArgumentParser, HelpFormatter, UserError, bounded, positive_int, run_main,  # noqa: E402
                        versions, write_json)

PROG = "python bench/simulator.py"
NUM_CLASSES = 10
DEFAULT_SIZES = (1000, 4000, 8000)
DEFAULT_STEPS = {1000: 200, 4000: 40, 8000: 15}
DEFAULT_FEATURE_SIZES = (8000, 50000)
DEFAULT_FEATURE_STEPS = {8000: 40, 50000: 10}
_size = bounded(int, 10 * NUM_CLASSES)  # m = n / 10 needs one clean example per class


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default="bench/simulator.json", help="JSON file for every number (written atomically)")
    parser.add_argument("--sizes", type=_size, nargs="*", default=list(DEFAULT_SIZES),
                        help="training set sizes n of the dense route (m = p = n/10, C = 10; at least 100)")
    parser.add_argument("--steps", type=positive_int, nargs="+", default=None,
                        help="timed steps per dense size: one number for all sizes or one per size "
                             f"(default {DEFAULT_STEPS} by size, else 20); the plain-product loop runs as many")
    parser.add_argument("--feature-sizes", type=_size, nargs="*", default=list(DEFAULT_FEATURE_SIZES),
                        help="training set sizes n of the feature route (none: skip it)")
    parser.add_argument("--feature-width", type=positive_int, nargs="+", default=[1024, 4096],
                        help="numbers of features D of the feature route; every size runs at every D")
    parser.add_argument("--feature-steps", type=positive_int, nargs="+", default=None,
                        help=f"timed steps per feature size, as --steps (default {DEFAULT_FEATURE_STEPS} by size, "
                             "else 10)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="timed step loops per size, each between two plain-product loops; the median is "
                             "reported")
    parser.add_argument("--compare-n", type=bounded(int, 0), default=4000,
                        help="size at which the closed-form weight step is timed against autodiff (0: skip; "
                             "must be one of --sizes)")
    parser.add_argument("--feature-widths", type=bounded(float, 0.0, strict=True), nargs="+", default=[1.0, 4.0],
                        help="widths D of the parameter-space autodiff route, in units of n + m")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="timed rounds of each weight-step route (each round >= 0.2 s of calls); medians reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem and the random features")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--feature-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-width", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _progress(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# One size, in its own process


def _reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field):
    """``VmHWM`` (resident high-water mark) or ``VmRSS`` of this process in MiB, from ``/proc/self/status``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def yardstick(array_mb=512, gemm_n=2048, repeats=3):
    """This process's measured limits, taken just before a size is timed (same machine state):

    * ``copy_gb_s``: a STREAM-like copy of a ``array_mb`` float64 array (far beyond the caches), split over
      ``os.cpu_count()`` threads (numpy releases the GIL in the copy); bytes counted as read + write;
    * ``gemm_gflop_s``: a ``gemm_n``-square float64 matrix product through numpy's BLAS (all its threads).

    Best of ``repeats`` each: a limit is what the machine can reach, so the fastest try estimates it best.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    size = array_mb * 2**20 // 8
    source, target = np.ones(size), np.empty(size)
    threads = os.cpu_count() or 1
    edges = [size * k // threads for k in range(threads + 1)]
    bounds = list(zip(edges[:-1], edges[1:]))
    copy = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda b: np.copyto(target[b[0]:b[1]], source[b[0]:b[1]]), bounds))
            copy.append(time.perf_counter() - start)
    source = target = None  # free the copy's 1 GB before the product
    a = np.random.default_rng(0).standard_normal((gemm_n, gemm_n))
    gemm = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        gemm.append(time.perf_counter() - start)
    return dict(copy_gb_s=2 * size * 8 / min(copy) / 1e9, copy_threads=threads,
                gemm_gflop_s=2 * gemm_n**3 / min(gemm) / 1e9)


def against_limits(result: dict, step_bytes: int) -> None:
    """Add the step's achieved GB/s and GFLOP/s, each limit's floor time per step, which one binds, and the share
    of that floor the step reaches (1: at the limit)."""
    limits = result["limits"]
    seconds = 1 / result["steps_per_second"]
    floors = {"bandwidth": step_bytes / (limits["copy_gb_s"] * 1e9),
              "flops": result["step_flops"] / (limits["gemm_gflop_s"] * 1e9)}
    binding = max(floors, key=floors.get)
    result.update(step_bytes=step_bytes, achieved_gb_s=step_bytes / seconds / 1e9,
                  achieved_gflop_s=result["step_flops"] / seconds / 1e9, binding_limit=binding,
                  share_of_limit=floors[binding] / seconds)


def step_flops(n, m, C):
    """Multiply-adds x 2 of one full-batch ``meta`` step over dense blocks (``dynamics.simulator.step``).

    meta score: ``K_VX (w R)`` and ``K_VX^T R_meta_hat`` (2 m n C each), ``K_VV R_meta`` (m^2 C);
    model update of train and clean outputs: ``K_X G`` ((n + m) n C) and ``K_V R_meta`` ((n + m) m C).
    """
    return 2 * C * (2 * m * n + m * m + (n + m) * n + (n + m) * m)


def feature_step_flops(n, m, D, C):
    """Multiply-adds x 2 of one full-batch ``meta`` step over features (``dynamics.operators.FeatureKernel``).

    look-ahead ``Psi (Phi^T (w R) + gamma Psi^T R_meta)`` ((n + 2 m) D C), coupling ``Phi (Psi^T R_meta_hat)``
    ((n + m) D C), update ``[Phi; Psi] (Phi^T G + gamma Psi^T R_meta)`` (2 (n + m) D C).
    """
    return 2 * C * D * (4 * n + 5 * m)


def plain_flops(n, m, C):
    return 2 * C * (n + m) * n


def _time_calls(fn, args, min_seconds=0.2):
    """Seconds per call of ``fn(*args)``, averaged over as many calls as fill ``min_seconds`` (at least 2)."""
    import jax

    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(*args))
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 2:
            return elapsed / calls


def _timed_loop(loop, *args):
    """Compile ``loop(*args)`` once, return a function timing one call (seconds)."""
    import jax

    jax.block_until_ready(loop(*args))

    def timed():
        start = time.perf_counter()
        jax.block_until_ready(loop(*args))
        return time.perf_counter() - start

    return timed


def _plain_product_loop(K_X, n, steps):
    """A jitted loop of ``steps`` products ``(n + m, n) @ (n, C)``, each feeding the next."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loop(K_X, G):
        # The next operand depends on the product, so no iteration can be hoisted or fused away.
        return jax.lax.fori_loop(0, steps, lambda _, G: G - 1e-6 * (K_X @ G)[:n], G)

    return _timed_loop(loop, K_X, jnp.ones((n, NUM_CLASSES)))


def _plain_feature_loop(Phi, steps):
    """A jitted loop of ``steps`` products ``theta - c Phi^T (Phi theta)``, each feeding the next."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loop(Phi, theta):
        return jax.lax.fori_loop(0, steps, lambda _, theta: theta - 1e-9 * (Phi.T @ (Phi @ theta)), theta)

    return _timed_loop(loop, Phi, jnp.ones((Phi.shape[1], NUM_CLASSES)))


def _step_loop(problem, operator, config, steps):
    """Time ``steps`` calls of the public ``step`` on a device-resident operator after a compiling call.

    Returns ``timed() -> (seconds, final state)``.
    """
    import jax

    from dynamics.simulator import init, step

    state = jax.block_until_ready(step(init(problem, operator, config), problem, operator, config))

    def timed():
        current = state
        start = time.perf_counter()
        for _ in range(steps):
            current = step(current, problem, operator, config)
        jax.block_until_ready(current)
        return time.perf_counter() - start, current

    return timed


def _timed_rounds(rounds, steps, step_loop, plain, flops_per_step, plain_flops_per_step, label):
    """Rounds alternate plain loop and step loop, so each step loop has a reference timed just before and after it
    under the same load. Returns per-round dicts and the plain loops' seconds."""
    plain_seconds = [plain()]
    out = []
    for index in range(rounds):
        _progress(f"{label}: {steps} steps, timed (round {index + 1} of {rounds})")
        seconds, _ = step_loop()
        plain_seconds.append(plain())
        achieved = steps * flops_per_step / seconds
        reference = plain_flops_per_step * steps * (1 / plain_seconds[-2] + 1 / plain_seconds[-1]) / 2
        out.append(dict(loop=seconds, steps_per_second=steps / seconds, achieved_flops_per_second=achieved,
                        plain_flops_per_second=reference, flops_ratio=achieved / reference))
    return out, plain_seconds


def _summary(rounds_out):
    import numpy as np

    ratios = [r["flops_ratio"] for r in rounds_out]
    median_round = rounds_out[int(np.argsort([r["loop"] for r in rounds_out])[len(rounds_out) // 2])]
    # The round with the median loop time stands for the size; the ratio is the median over rounds.
    return dict(loop_seconds=median_round["loop"], steps_per_second=median_round["steps_per_second"],
                achieved_flops_per_second=median_round["achieved_flops_per_second"],
                plain_flops_per_second=median_round["plain_flops_per_second"],
                flops_ratio=float(np.median(ratios)), flops_ratio_range=[min(ratios), max(ratios)])


def _clipped_fraction(w):
    import numpy as np

    w = np.asarray(w)
    return float(np.mean((w == 0.0) | (w == 1.0)))


def _compare_weight_steps(trajectory, problem, blocks, seed, widths, repeats):
    """Closed-form weight step against autodiff through the look-ahead (function and parameter space)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dynamics.simulator import meta_score

    n, m, _ = problem.sizes
    C = problem.num_classes
    config = trajectory.config
    eta, beta, gamma = config["eta"], config["beta"], config["gamma"]
    assert config["loss"] == "mse" and config["variant"] == "meta"
    Y, Y_meta = np.eye(C)[problem.y_noisy], np.eye(C)[problem.y_meta]
    # The state the timed run ended in: outputs and weights after `steps` steps (some weights clipped at 0 or 1).
    w, F, F_meta = trajectory.w[-1], trajectory.outputs, trajectory.meta_outputs

    def mse(F, Y):
        return 0.5 * jnp.sum((F - Y) ** 2, axis=-1)

    def closed_form(w, F, F_meta, K_VX, K_VV, Y, Y_meta, eta):
        R, R_meta = F - Y, F_meta - Y_meta
        score, _ = meta_score("mse", eta, gamma, w, R, R_meta, F_meta, Y_meta, K_VX, K_VV)
        velocity = beta / m * score
        return jnp.clip(w + velocity, 0.0, 1.0), velocity

    def function_space_autodiff(w, F, F_meta, K_VX, K_VV, Y, Y_meta, eta):
        R, R_meta = F - Y, F_meta - Y_meta

        def lookahead_meta_loss(w):
            F_meta_hat = F_meta - eta * (K_VX @ (w[:, None] * R) + gamma * (K_VV @ R_meta))
            return jnp.mean(mse(F_meta_hat, Y_meta))

        velocity = -(beta / eta) * jax.grad(lookahead_meta_loss)(w)
        return jnp.clip(w + velocity, 0.0, 1.0), velocity

    def parameter_space_autodiff(w, theta, phi_X, phi_V, Y, Y_meta, eta):
        def train_objective(theta, w):
            return jnp.sum(w * mse(phi_X @ theta, Y)) + gamma * jnp.sum(mse(phi_V @ theta, Y_meta))

        def meta_objective(w):
            theta_hat = theta - eta * jax.grad(train_objective)(theta, w)
            return jnp.mean(mse(phi_V @ theta_hat, Y_meta))

        velocity = -(beta / eta) * jax.grad(meta_objective)(w)
        return jnp.clip(w + velocity, 0.0, 1.0), velocity

    closed_jit, function_jit, parameter_jit = (jax.jit(f) for f in
                                               (closed_form, function_space_autodiff, parameter_space_autodiff))

    def side_by_side(routes):
        """``{name: median seconds per call}``, the routes interleaved round by round so load drift hits all alike."""
        times = {name: [] for name in routes}
        for fn, args in routes.values():
            jax.block_until_ready(fn(*args))  # compile
        for _ in range(repeats):
            for name, (fn, args) in routes.items():
                times[name].append(_time_calls(fn, args))
        medians = {name: float(np.median(t)) for name, t in times.items()}
        return medians, {name: float(np.min(t)) for name, t in times.items()}

    def check_equal(first, second, what):
        (w1, v1), (w2, v2) = first, second
        w_error = float(np.max(np.abs(np.asarray(w1) - np.asarray(w2))))
        v_error = float(np.max(np.abs(np.asarray(v1) - np.asarray(v2))) / np.max(np.abs(np.asarray(v1))))
        # Weights live in [0, 1]: 1e-10 absolute; the unclipped velocities relative to their largest entry.
        if not (w_error <= 1e-10 and v_error <= 1e-10):
            raise AssertionError(f"{what}: weight steps differ by {w_error:.3g} (weights), {v_error:.3g} (velocity)")
        return w_error, v_error

    results = []
    device = {k: jax.device_put(v) for k, v in dict(w=w, F=F, F_meta=F_meta, K_VX=blocks.K_VX, K_VV=blocks.K_VV,
                                                        Y=Y, Y_meta=Y_meta).items()}
    args = (*(device[k] for k in ("w", "F", "F_meta", "K_VX", "K_VV", "Y", "Y_meta")), eta)
    check = check_equal(closed_jit(*args), function_jit(*args), "function-space autodiff")
    median, best = side_by_side({"closed": (closed_jit, args), "autodiff": (function_jit, args)})
    clipped = _clipped_fraction(closed_jit(*args)[0])
    results.append(dict(route="function space (jax.grad through F_meta_hat(w))", D=None, n=n, m=m,
                        closed_s=median["closed"], autodiff_s=median["autodiff"],
                        closed_best_s=best["closed"], autodiff_best_s=best["autodiff"],
                        speedup=median["autodiff"] / median["closed"], max_weight_error=check[0],
                        max_velocity_rel_error=check[1], clipped_fraction=clipped,
                        closed_flops=2 * C * (2 * m * n + m * m), autodiff_flops=2 * C * (2 * m * n + m * m)))
    _progress(f"n={n}: function-space autodiff {median['autodiff'] * 1e3:.1f} ms, closed form "
              f"{median['closed'] * 1e3:.1f} ms")

    rng = np.random.default_rng(seed + 1)
    d = problem.X.shape[1]
    for factor in widths:
        D = int(round(factor * (n + m)))
        # Random ReLU features of the inputs (a width-D hidden layer; its kernel approximates the one-layer NNGP).
        W = rng.standard_normal((d, D)) / np.sqrt(d)
        phi_X = np.sqrt(2.0 / D) * np.maximum(problem.X @ W, 0.0)
        phi_V = np.sqrt(2.0 / D) * np.maximum(problem.X_meta @ W, 0.0)
        del W
        K_VX, K_VV = phi_V @ phi_X.T, phi_V @ phi_V.T  # the kernel the closed form is given: exactly phi phi^T
        top = np.ones(D)
        for _ in range(50):  # power iteration: lambda_max(phi_X^T phi_X) = lambda_max(K_XX)
            top = phi_X.T @ (phi_X @ top)
            lambda_max = np.linalg.norm(top)
            top /= lambda_max
        eta_features = 1.0 / lambda_max
        theta = 0.3 * rng.standard_normal((D, C))
        F_features, F_meta_features = phi_X @ theta, phi_V @ theta
        device = [jax.device_put(a) for a in (w, F_features, F_meta_features, K_VX, K_VV, Y, Y_meta,
                                              theta, phi_X, phi_V)]
        del phi_X, phi_V
        closed_args = (*device[:7], eta_features)
        parameter_args = (device[0], device[7], device[8], device[9], device[5], device[6], eta_features)
        check = check_equal(closed_jit(*closed_args), parameter_jit(*parameter_args), f"parameter-space autodiff D={D}")
        median, best = side_by_side({"closed": (closed_jit, closed_args), "autodiff": (parameter_jit, parameter_args)})
        clipped = _clipped_fraction(closed_jit(*closed_args)[0])
        results.append(dict(route="parameter space (bi-level jax.grad, explicit features)", D=D, n=n, m=m,
                            closed_s=median["closed"], autodiff_s=median["autodiff"],
                            closed_best_s=best["closed"], autodiff_best_s=best["autodiff"],
                            speedup=median["autodiff"] / median["closed"], max_weight_error=check[0],
                            max_velocity_rel_error=check[1], clipped_fraction=clipped,
                            closed_flops=2 * C * (2 * m * n + m * m), autodiff_flops=2 * C * D * (3 * n + 4 * m),
                            feature_bytes=(n + m) * D * 8))
        _progress(f"n={n}: parameter-space autodiff D={D} {median['autodiff'] * 1e3:.1f} ms, closed form "
                  f"{median['closed'] * 1e3:.1f} ms")
        del device, closed_args, parameter_args
    return results


def _ntk_problem(n, seed):
    """The dense route's problem and its analytic NTK blocks (not timed)."""
    import numpy as np

    from dynamics.operators import KernelBlocks
    from dynamics.problem import gaussian_mixture
    from kernels.infinite import KernelSpec, kernel

    m = p = n // 10
    problem = gaussian_mixture(np.random.default_rng(seed), n=n, m=m, p=p, num_classes=NUM_CLASSES, noise_rate=0.4)
    spec = KernelSpec()
    inputs = np.concatenate([problem.X, problem.X_meta, problem.X_test])
    K_other = kernel(spec, inputs[n:], problem.X)  # (m + p, n)
    K_small = kernel(spec, inputs[n:], problem.X_meta)  # (m + p, m)
    blocks = KernelBlocks(kernel(spec, problem.X), K_other[:m], K_small[:m], K_other[m:], K_small[m:])
    return problem, blocks


def _prepare(operator, config, result, label):
    """The untimed-loop pieces of a size, each timed: the default step size ("eta solve") and the copy of the
    operator to the device ("transfer"); then the machine's limits. Returns the config with eta, and the device
    operator."""
    import dataclasses

    import jax

    from dynamics.simulator import default_eta

    start = time.perf_counter()
    eta, _ = default_eta(operator, config.gamma)
    result["default_eta_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    device = jax.block_until_ready(jax.device_put(operator))
    result["transfer_seconds"] = time.perf_counter() - start
    _progress(f"{label}: the machine's limits (copy bandwidth, matrix-product peak)")
    result["limits"] = yardstick()
    return dataclasses.replace(config, eta=eta), device


def run_size(n, steps, rounds, compare, widths, repeats, seed):
    """The dense route at one size: the public pieces timed, the plain-product reference, end to end, autodiff."""
    from dynamics.simulator import MetaConfig, simulate

    m = p = n // 10
    C = NUM_CLASSES
    result = dict(route="dense", n=n, m=m, p=p, C=C, steps=steps, load_start=_load())
    _progress(f"n={n}: problem and NTK blocks (not timed)")
    start = time.perf_counter()
    problem, blocks = _ntk_problem(n, seed)
    result["kernel_seconds"] = time.perf_counter() - start
    # KernelBlocks stores the columns a step multiplies, K_X = [K_XX; K_VX] and K_V = [K_VX^T; K_VV], and K_TX, K_TV.
    result["kernel_block_bytes"] = sum(a.nbytes for a in (blocks.K_X, blocks.K_V, blocks.K_TX, blocks.K_TV))
    result["maxrss_after_kernel_mb"] = _maxrss_mb()

    config = MetaConfig(steps=steps, record_every=steps, perturb_draws=0)
    config_eta, device_blocks = _prepare(blocks, config, result, f"n={n}")
    eta = config_eta.eta
    _progress(f"n={n}: compiling the step and the plain-product loop")
    step_loop = _step_loop(problem, device_blocks, config_eta, steps)
    plain = _plain_product_loop(device_blocks.K_X, n, steps)
    rounds_out, plain_seconds = _timed_rounds(rounds, steps, step_loop, plain, step_flops(n, m, C),
                                              plain_flops(n, m, C), f"n={n}")
    del plain
    result.update(_summary(rounds_out), rounds=rounds_out, plain_seconds=plain_seconds, eta=eta,
                  step_flops=step_flops(n, m, C),
                  # Each step reads K_X and K_V once and their clean-subset rows K_VX, K_VV once more in the score.
                  step_kernel_bytes=8 * ((n + m) * (n + m) + 2 * m * n + m * m))
    against_limits(result, result["step_kernel_bytes"])
    del device_blocks

    _progress(f"n={n}: simulate() end to end (a compiling call, then a timed one)")
    simulate(problem, blocks, config)
    reset = _reset_peak_rss()
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    trajectory = simulate(problem, blocks, config)
    wall = time.perf_counter() - start
    peak = _status_mb("VmHWM") if reset else None
    result.update(simulate_wall_seconds=wall, end_to_end_steps_per_second=steps / wall,
                  # What one simulate() call needs on top of what was resident (the blocks, the step loop's state).
                  simulate_extra_rss_mb=peak - rss_before if peak and rss_before else None,
                  final_clean_loss=float(trajectory.clean_loss[-1]))
    result["float32"] = _float32_kernel(problem, blocks, config, config_eta, steps, rounds, step_loop, trajectory)
    if compare:
        _progress(f"n={n}: closed-form weight step against autodiff")
        result["comparisons"] = _compare_weight_steps(trajectory, problem, blocks, seed, widths, repeats)
    result["maxrss_mb"] = _maxrss_mb()
    result["load_end"] = _load()
    return result


def _float32_kernel(problem, blocks, config, config_eta, steps, rounds, float64_loop, reference):
    """The same size with the blocks stored in float32 (``--kernel-dtype float32``): steps/s of the public step,
    timed in rounds alternating with the float64 loop ``float64_loop`` (the speed-up is the median of the
    per-round ratios), the blocks' bytes, and the largest weight difference of a whole ``simulate()`` run against
    the float64 one (``reference``)."""
    import jax
    import numpy as np

    from dynamics.operators import KernelBlocks
    from dynamics.simulator import simulate

    n = problem.sizes[0]
    single = KernelBlocks(*(block.astype(np.float32) for block in blocks.arrays().values()))
    _progress(f"n={n}: float32 blocks, {steps} steps")
    device = jax.block_until_ready(jax.device_put(single))
    float32_loop = _step_loop(problem, device, config_eta, steps)
    pairs = [(float64_loop()[0], float32_loop()[0]) for _ in range(rounds)]
    del device, float32_loop
    trajectory = simulate(problem, single, config)
    return dict(steps_per_second=steps / float(np.median([pair[1] for pair in pairs])),
                speedup=float(np.median([pair[0] / pair[1] for pair in pairs])),
                kernel_block_bytes=sum(a.nbytes for a in (single.K_X, single.K_V, single.K_TX, single.K_TV)),
                max_weight_difference=float(np.abs(trajectory.w - reference.w).max()),
                same_zero_set=bool(np.array_equal(trajectory.w[-1] == 0, reference.w[-1] == 0)))


def run_features(n, D, steps, rounds, seed):
    """The feature route at one size (docs/theory.md section 8): no kernel matrix anywhere."""
    import numpy as np

    from dynamics.operators import FeatureKernel
    from dynamics.problem import gaussian_mixture
    from dynamics.simulator import MetaConfig

    m = p = n // 10
    C = NUM_CLASSES
    result = dict(route="features", n=n, m=m, p=p, C=C, D=D, steps=steps, load_start=_load())
    _progress(f"features n={n}, D={D}: problem and random ReLU features (not timed)")
    problem = gaussian_mixture(np.random.default_rng(seed), n=n, m=m, p=p, num_classes=C, noise_rate=0.4)
    W = np.random.default_rng(seed + 1).standard_normal((problem.X.shape[1], D)) / np.sqrt(problem.X.shape[1])
    features = FeatureKernel.from_problem(problem, lambda x: np.sqrt(2.0 / D) * np.maximum(x @ W, 0.0))
    result["feature_bytes"] = sum(a.nbytes for a in (features.Phi, features.Psi, features.Phi_test))
    result["maxrss_after_features_mb"] = _maxrss_mb()

    start = time.perf_counter()
    features.k_meta_norm()
    result["k_meta_norm_seconds"] = time.perf_counter() - start
    # eta from the (D, D) Gram matrices and their top eigenvalues.
    config, device_features = _prepare(features, MetaConfig(steps=steps, perturb_draws=0), result,
                                       f"features n={n}, D={D}")
    eta = config.eta
    _progress(f"features n={n}: compiling the step and the plain-product loop")
    step_loop = _step_loop(problem, device_features, config, steps)
    plain = _plain_feature_loop(device_features.Phi, steps)
    rounds_out, plain_seconds = _timed_rounds(rounds, steps, step_loop, plain, feature_step_flops(n, m, D, C),
                                              4 * n * D * C, f"features n={n}")
    _, state = step_loop()
    result.update(_summary(rounds_out), rounds=rounds_out, plain_seconds=plain_seconds, eta=eta,
                  step_flops=feature_step_flops(n, m, D, C), final_weight_mean=float(np.mean(state.w)),
                  maxrss_mb=_maxrss_mb(), load_end=_load())
    # Each product of feature_step_flops streams its feature matrix once: Phi four times, Psi five.
    against_limits(result, 8 * D * (4 * n + 5 * m))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Driver


def _format_tables(results, features):
    lines = []
    header = (f"{'n':>5} {'m=p':>4} {'steps':>5} {'steps/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} "
              f"{'plain GFLOP/s':>13} {'ratio':>5} {'ratio range':>11} {'GB/s':>5} {'limit':>9} {'share':>5} "
              f"{'e2e steps/s':>11} "
              f"{'eta solve s':>11} {'kernel MB':>9} {'sim +RSS MB':>11} {'maxrss MB':>9}")
    if results:
        lines += ["Dense route (KernelBlocks; full batch, C=10, MSE, meta variant; public step on device-resident "
                  "blocks)", header, "-" * len(header)]
    for r in results:
        extra = r["simulate_extra_rss_mb"]
        lines.append(
            f"{r['n']:>5} {r['m']:>4} {r['steps']:>5} {r['steps_per_second']:>8.2f} {r['step_flops'] / 1e9:>10.3f} "
            f"{r['achieved_flops_per_second'] / 1e9:>8.2f} {r['plain_flops_per_second'] / 1e9:>13.2f} "
            f"{r['flops_ratio']:>5.2f} {r['flops_ratio_range'][0]:>5.2f}-{r['flops_ratio_range'][1]:<5.2f} "
            f"{r['achieved_gb_s']:>5.1f} {r['binding_limit']:>9} {r['share_of_limit']:>5.2f} "
            f"{r['end_to_end_steps_per_second']:>11.2f} "
            f"{r['default_eta_seconds']:>11.2f} {r['kernel_block_bytes'] / 2**20:>9.0f} "
            f"{'n/a' if extra is None else f'{extra:.0f}':>11} {r['maxrss_mb']:>9.0f}")
    if results:
        lines += [
            "steps/s: `steps` calls of dynamics.simulator.step after a compiling one, in the median of the timed "
            "rounds; nothing subtracted.",
            "ratio: achieved FLOP/s over that of a jitted loop of plain (n+m, n) @ (n, C) products timed just before "
            "and after it in the same process; median and range over the rounds.",
            "GB/s: kernel bytes a step reads (K_X, K_V, and the clean rows once more) per second; limit: which of the "
            "machine's limits measured in the same process binds (bandwidth: a threaded STREAM-like copy; flops: a "
            "float64 BLAS matrix product), share: that limit's floor time per step over the measured time (1: at "
            "the limit).",
            "e2e steps/s: steps over a whole simulate() call (record_every = steps), which also solves lambda_max "
            "twice (eta solve s), copies the blocks to the device and records twice.",
            "kernel MB: the stored blocks (K_X = [K_XX; K_VX], K_V = [K_VX^T; K_VV], K_TX, K_TV); sim +RSS: resident "
            "high-water mark of the timed simulate() call above what was resident before it; maxrss: ru_maxrss of "
            "the whole process (kernel construction included).",
        ]
    if results:
        header = f"{'n':>5} {'f64 steps/s':>11} {'f32 steps/s':>11} {'speed-up':>8} {'f32 kernel MB':>13} " \
                 f"{'max |w32 - w64|':>15} {'same w=0 set':>12}"
        lines += ["", "Kernel stored in float32 (--kernel-dtype float32; products in float32, state float64)", header,
                  "-" * len(header)]
        for r in results:
            f = r["float32"]
            lines.append(f"{r['n']:>5} {r['steps_per_second']:>11.2f} {f['steps_per_second']:>11.2f} "
                         f"{f['speedup']:>7.2f}x {f['kernel_block_bytes'] / 2**20:>13.0f} "
                         f"{f['max_weight_difference']:>15.1e} {str(f['same_zero_set']):>12}")
        lines.append("f32 steps/s: median of --rounds loops of the same steps, each right after a float64 loop; "
                     "speed-up: median of the per-round ratios; max |w32 - w64|: over every recorded step of a whole "
                     "simulate() run.")
    if features:
        dense = max(results, key=lambda r: r["n"]) if results else None
        header = (f"{'n':>6} {'m=p':>5} {'D':>5} {'steps':>5} {'steps/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} "
                  f"{'plain GFLOP/s':>13} {'ratio':>5} {'GB/s':>5} {'limit':>9} {'share':>5} {'eta solve s':>11} "
                  f"{'features MB':>11} {'maxrss MB':>9} {'vs dense':>8}")
        lines += ["", "Feature route (FeatureKernel, docs/theory.md section 8; full batch, C=10, MSE, meta variant; "
                  "public step on device-resident features)", header, "-" * len(header)]
        for r in features:
            per_example = r["steps_per_second"] * r["n"] / (dense["steps_per_second"] * dense["n"]) if dense else None
            versus = f"{per_example:.1f}x" if dense else "n/a"
            lines.append(
                f"{r['n']:>6} {r['m']:>5} {r['D']:>5} {r['steps']:>5} {r['steps_per_second']:>8.2f} "
                f"{r['step_flops'] / 1e9:>10.3f} {r['achieved_flops_per_second'] / 1e9:>8.2f} "
                f"{r['plain_flops_per_second'] / 1e9:>13.2f} {r['flops_ratio']:>5.2f} {r['achieved_gb_s']:>5.1f} "
                f"{r['binding_limit']:>9} {r['share_of_limit']:>5.2f} "
                f"{r['default_eta_seconds']:>11.2f} {r['feature_bytes'] / 2**20:>11.0f} {r['maxrss_mb']:>9.0f} "
                f"{versus:>8}")
        lines += [
            "ratio: achieved FLOP/s over that of a jitted loop of theta - c Phi^T (Phi theta) timed around it; eta "
            "solve: Phi^T Phi, Psi^T Psi (D, D) and their top eigenvalues.",
            "GB/s, limit, share: as above, with Phi read four times and Psi five per step.",
            (f"vs dense: examples advanced per second (steps/s x n) over the dense route's at n={dense['n']} in this "
             f"run (the dense (n, n) kernel at n=50,000 would be 20 GB)." if dense
             else "vs dense: no dense size in this run."),
        ]
    comparisons = [c for r in results for c in r.get("comparisons", [])]
    if comparisons:
        header = (f"{'route':<55} {'D':>6} {'closed ms':>9} {'autodiff ms':>11} {'speed-up':>8} "
                  f"{'FLOP ratio':>10} {'max |dw|':>9} {'max rel dv':>10}")
        lines += ["", f"Weight step: closed form vs autodiff through the look-ahead (n={comparisons[0]['n']}, "
                  f"m={comparisons[0]['m']}, same state, both jitted, full batch; medians)", header, "-" * len(header)]
        for c in comparisons:
            lines.append(
                f"{c['route']:<55} {'-' if c['D'] is None else c['D']:>6} {c['closed_s'] * 1e3:>9.2f} "
                f"{c['autodiff_s'] * 1e3:>11.2f} {c['speedup']:>7.1f}x "
                f"{c['autodiff_flops'] / c['closed_flops']:>9.1f}x "
                f"{c['max_weight_error']:>9.1e} {c['max_velocity_rel_error']:>10.1e}")
        lines += [
            "function space: reverse mode through the linear look-ahead is the transpose product, i.e. the closed "
            "form itself; ~1x is the honest expectation.",
            "parameter space: bi-level autodiff of f = phi(x) theta with D explicit features costs O((n+m) D C) "
            "against O(m n C); D = n+m is the least width that can represent a generic full-rank kernel here.",
            f"{comparisons[0]['clipped_fraction']:.0%} of the weights are clipped at 0 or 1 in this state; "
            "both routes clip identically (asserted to 1e-10).",
        ]
    everything = results + features
    if everything:
        copy, gemm = ([r["limits"][key] for r in everything] for key in ("copy_gb_s", "gemm_gflop_s"))
        lines.append(f"Limits measured before each size: copy {min(copy):.1f}-{max(copy):.1f} GB/s "
                     f"({everything[0]['limits']['copy_threads']} threads), float64 matrix product "
                     f"{min(gemm):.1f}-{max(gemm):.1f} GFLOP/s.")
    loads = [r[key] for r in everything for key in ("load_start", "load_end") if r[key]]
    if loads:
        lines.append(f"Load average (1, 5, 15 min) during the run: {min(l[0] for l in loads):.1f}-"
                     f"{max(l[0] for l in loads):.1f} on {os.cpu_count()} CPUs: the CPUs are shared, timings are "
                     "noisy; the ratios are measured side by side.")
    return "\n".join(lines)


def _per_size(values, sizes, defaults, fallback, option):
    if values is None:
        return [defaults.get(n, fallback) for n in sizes]
    if len(values) in (1, len(sizes)):
        return values * len(sizes) if len(values) == 1 else values
    raise UserError(f"{option} takes one number or one per size ({len(sizes)}), got {len(values)}")


def _worker(args, *flags):
    """Run one size in a fresh process; its last stdout line is the JSON result."""
    command = [sys.executable, os.path.abspath(__file__), *flags, "--rounds", str(args.rounds),
               "--compare-n", str(args.compare_n), "--repeats", str(args.repeats), "--seed", str(args.seed),
               "--feature-widths", *map(str, args.feature_widths)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the worker {' '.join(flags)} failed (exit {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker is not None or args.feature_worker is not None:
        import jax

        jax.config.update("jax_enable_x64", True)  # this worker process is the application: float64 throughout
        if args.worker is not None:
            result = run_size(args.worker, args.worker_steps, args.rounds, args.worker == args.compare_n,
                              args.feature_widths, args.repeats, args.seed)
        else:
            result = run_features(args.feature_worker, args.worker_width, args.worker_steps, args.rounds, args.seed)
        print(json.dumps(result))
        return
    steps = _per_size(args.steps, args.sizes, DEFAULT_STEPS, 20, "--steps")
    feature_steps = _per_size(args.feature_steps, args.feature_sizes, DEFAULT_FEATURE_STEPS, 10, "--feature-steps")
    if args.compare_n and args.compare_n not in args.sizes:
        raise UserError(f"--compare-n must be one of --sizes {args.sizes} (or 0 to skip), got {args.compare_n}")
    if not args.sizes and not args.feature_sizes:
        raise UserError("nothing to measure: give --sizes or --feature-sizes")

    results = [_worker(args, "--worker", str(n), "--worker-steps", str(count)) for n, count in zip(args.sizes, steps)]
    features = [_worker(args, "--feature-worker", str(n), "--worker-width", str(D), "--worker-steps", str(count))
                for n, count in zip(args.feature_sizes, feature_steps) for D in args.feature_width]
    table = _format_tables(results, features)
    print(table)
    payload = {"config": {"sizes": args.sizes, "steps": steps, "feature_sizes": args.feature_sizes,
                          "feature_steps": feature_steps, "feature_width": args.feature_width,
                          "compare_n": args.compare_n, "feature_widths": args.feature_widths, "rounds": args.rounds,
                          "repeats": args.repeats, "seed": args.seed, "num_classes": NUM_CLASSES, "m": "n // 10",
                          "p": "n // 10", "loss": "mse", "variant": "meta",
                          "kernel": "analytic NTK, KernelSpec() (2 hidden ReLU layers)",
                          "features": "random ReLU features sqrt(2/D) max(0, x W), W ~ N(0, 1/d)",
                          "problem": "gaussian_mixture(C=10, d=32, symmetric noise 0.4)"},
               "versions": versions() | {"platform": platform.platform(), "cpu_count": os.cpu_count()},
               "results": results, "features": features, "table": table}
    write_json(args.out, payload)
    print(f"saved {args.out}")


def main(argv=None) -> int:
    return run_main(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
