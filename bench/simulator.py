"""Benchmark the exact simulator: steps per second, FLOP/s against a plain product, autodiff speed-up, memory.

    python bench/simulator.py [--out FILE] [--sizes 1000 4000 8000] [--steps 200 40 15]

A script, not a timed test (ARCHITECTURE convention 11): it prints two tables
and writes a JSON file with every number, the configuration and the package
versions. Each size runs in its own process, so the jit cache and the peak
memory of one size do not leak into the next. Every ratio is measured side by
side in one process.

What is measured, per size ``n`` (full batch, ``C = 10`` classes, ``m = p = n / 10``):

* the problem is the Gaussian mixture of THEORY.md section 5 with 10 classes
  and the kernel the analytic NTK of its two-hidden-layer ReLU network
  (``kernels.infinite``); computing the kernel is not timed;
* ``dynamics.simulate.simulate`` runs ``steps`` steps with ``record_every =
  steps`` (two diagnostic records, counted in the FLOPs) and
  ``perturb_draws = 0``; a first call compiles, the next ``--rounds`` calls
  are timed and the median reported (one timed call where the CPUs are idle;
  more where they are shared). Its jitted
  loop (``dynamics.simulate._run``) is timed on its own on arrays already in
  device memory: nothing is subtracted, the step is the whole step. The
  per-call work of ``simulate`` outside the loop (the ``lambda_max``
  eigen-solves of ``default_eta``, stacking the kernel, copying it to the
  device) is reported separately;
* the FLOPs of a step are counted from ``_step``'s matrix products (elementwise
  work is O((n + m) C), under 0.1%); the reference is a jitted loop of the same
  number of plain products ``(n + m, n) @ (n, C)``, each feeding the next so XLA
  cannot hoist it, timed before and after each simulator call (the spread of
  the ratio over rounds is a measure of the machine's noise);
* at ``--compare-n`` the closed-form weight step (THEORY.md section 2: the meta
  score, then ``clip(w + beta/m * score, 0, 1)``) is timed against the same
  weight step by automatic differentiation through the look-ahead, on the same
  state, both jitted and full batch, and the results are asserted equal to
  1e-10. Two autodiff routes:

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

Memory: ``ru_maxrss`` of each size's process (whole process, kernel
construction included), the resident-set high-water mark of the simulator
phase alone (``VmHWM`` after a reset through ``/proc/self/clear_refs``, where
the kernel allows it), and the sizes of the kernel arrays.

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
import tempfile
import time
from importlib import metadata

NUM_CLASSES = 10
DEFAULT_SIZES = (1000, 4000, 8000)
DEFAULT_STEPS = {1000: 200, 4000: 40, 8000: 15}


class UserError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _size(text):
    value = int(text)
    if value < 10 * NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be at least {10 * NUM_CLASSES} (m = n/10 needs one clean example "
                                         f"per class), got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python bench/simulator.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="bench/simulator.json", help="JSON file for every number (written atomically)")
    parser.add_argument("--sizes", type=_size, nargs="+", default=list(DEFAULT_SIZES),
                        help="training set sizes n (m = p = n/10, C = 10)")
    parser.add_argument("--steps", type=_positive_int, nargs="+", default=None,
                        help="timed simulator steps per size: one number for all sizes or one per size "
                             f"(default {DEFAULT_STEPS} by size, else 20); the plain-product loop runs as many")
    parser.add_argument("--rounds", type=_positive_int, default=3,
                        help="timed simulate() calls per size after the warm-up, each between two plain-product "
                             "loops; the median is reported")
    parser.add_argument("--compare-n", type=int, default=4000,
                        help="size at which the closed-form weight step is timed against autodiff (0: skip; "
                             "must be one of --sizes)")
    parser.add_argument("--feature-widths", type=float, nargs="+", default=[1.0, 4.0],
                        help="widths D of the parameter-space autodiff route, in units of n + m")
    parser.add_argument("--repeats", type=_positive_int, default=7,
                        help="timed rounds of each weight-step route (each round >= 0.2 s of calls); medians reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem and the random features")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, default=None, help=argparse.SUPPRESS)
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


def step_flops(n, m, C):
    """Multiply-adds x 2 of one full-batch ``meta`` step (``dynamics.simulate._step``).

    meta score: ``K_VX (w R)`` and ``K_VX^T R_meta_hat`` (2 m n C each), ``K_VV R_meta`` (m^2 C);
    model update of train and clean outputs: ``K_X G`` ((n + m) n C) and ``K_V R_meta`` ((n + m) m C).
    """
    return 2 * C * (2 * m * n + m * m + (n + m) * n + (n + m) * m)


def record_flops(n, m, p, C):
    """One diagnostic record (``_diagnostics``, no perturbation draws): test outputs and the meta score."""
    return 2 * C * (p * n + p * m + 2 * m * n + m * m)


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


def _plain_product_loop(K_X, n, steps):
    """A jitted loop of ``steps`` products ``(n + m, n) @ (n, C)``, each feeding the next."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loop(K_X, G):
        # The next operand depends on the product, so no iteration can be hoisted or fused away.
        return jax.lax.fori_loop(0, steps, lambda _, G: G - 1e-6 * (K_X @ G)[:n], G)

    G = jnp.ones((n, NUM_CLASSES))
    jax.block_until_ready(loop(K_X, G))  # compile

    def timed():
        start = time.perf_counter()
        jax.block_until_ready(loop(K_X, G))
        return time.perf_counter() - start

    return timed


def _clipped_fraction(w):
    import numpy as np

    w = np.asarray(w)
    return float(np.mean((w == 0.0) | (w == 1.0)))


def _compare_weight_steps(trajectory, problem, blocks, seed, widths, repeats):
    """Closed-form weight step against autodiff through the look-ahead (function and parameter space)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dynamics.simulate import meta_score

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


def run_size(n, steps, rounds, compare, widths, repeats, seed):
    import jax
    import numpy as np

    import dynamics.simulate as simulate_module
    from dynamics.problem import gaussian_mixture
    from dynamics.simulate import KernelBlocks, MetaConfig, simulate
    from kernels.infinite import KernelSpec, kernel

    m = p = n // 10
    C = NUM_CLASSES
    result = dict(n=n, m=m, p=p, C=C, steps=steps, load_start=_load())
    _progress(f"n={n}: problem and NTK blocks (not timed)")
    problem = gaussian_mixture(np.random.default_rng(seed), n=n, m=m, p=p, num_classes=C, noise_rate=0.4)
    spec = KernelSpec()
    start = time.perf_counter()
    inputs = np.concatenate([problem.X, problem.X_meta, problem.X_test])
    K_XX = kernel(spec, problem.X)
    K_other = kernel(spec, inputs[n:], problem.X)  # (m + p, n)
    K_small = kernel(spec, inputs[n:], problem.X_meta)  # (m + p, m)
    blocks = KernelBlocks(K_XX, K_other[:m], K_small[:m], K_other[m:], K_small[m:])
    del K_other, K_small
    result["kernel_seconds"] = time.perf_counter() - start
    result["kernel_block_bytes"] = sum(a.nbytes for a in blocks.arrays().values())
    # simulate() stacks K_X = [K_XX; K_VX] (n + m, n) and K_V = [K_VX^T; K_VV] (n + m, m), copied to the device.
    result["stacked_kernel_bytes"] = 8 * (n + m) * (n + m)
    result["maxrss_after_kernel_mb"] = _maxrss_mb()

    timings = {}
    original_run, original_default_eta = simulate_module._run, simulate_module.default_eta

    def timed_run(static, arrays, state):
        start = time.perf_counter()
        arrays, state = jax.device_put(arrays), jax.device_put(state)
        jax.block_until_ready((arrays, state))
        middle = time.perf_counter()
        out = jax.block_until_ready(original_run(static, arrays, state))
        timings.update(transfer=middle - start, loop=time.perf_counter() - middle)
        return out

    def timed_default_eta(*args, **kwargs):
        start = time.perf_counter()
        out = original_default_eta(*args, **kwargs)
        timings["default_eta"] = time.perf_counter() - start
        return out

    simulate_module._run, simulate_module.default_eta = timed_run, timed_default_eta
    config = MetaConfig(steps=steps, record_every=steps, perturb_draws=0)
    rounds_out = []
    try:
        _progress(f"n={n}: simulate() warm-up (compiles the loop)")
        start = time.perf_counter()
        simulate(problem, blocks, config)
        result["warmup_seconds"] = time.perf_counter() - start
        K_X = jax.device_put(np.concatenate([blocks.K_XX, blocks.K_VX]))
        plain = _plain_product_loop(K_X, n, steps)
        plain_seconds = [plain()]
        # Rounds alternate plain loop and simulator, so each simulator run has a reference timed just before
        # and just after it under the same load.
        for index in range(rounds):
            reset = _reset_peak_rss()
            rss_before = _status_mb("VmRSS")
            _progress(f"n={n}: simulate(), {steps} steps, timed (round {index + 1} of {rounds})")
            start = time.perf_counter()
            trajectory = simulate(problem, blocks, config)
            wall = time.perf_counter() - start
            peak = _status_mb("VmHWM") if reset else None
            plain_seconds.append(plain())
            rounds_out.append(dict(timings, wall=wall, rss_before_mb=rss_before, peak_rss_mb=peak))
        del K_X
    finally:
        simulate_module._run, simulate_module.default_eta = original_run, original_default_eta

    loop_flops = steps * step_flops(n, m, C) + 2 * record_flops(n, m, p, C)
    plain_rate = [plain_flops(n, m, C) * steps / t for t in plain_seconds]
    for index, r in enumerate(rounds_out):
        r["achieved_flops_per_second"] = loop_flops / r["loop"]
        r["plain_flops_per_second"] = (plain_rate[index] + plain_rate[index + 1]) / 2
        r["flops_ratio"] = r["achieved_flops_per_second"] / r["plain_flops_per_second"]
        r["steps_per_second"] = steps / r["loop"]
    ratios = [r["flops_ratio"] for r in rounds_out]
    median_round = rounds_out[int(np.argsort([r["loop"] for r in rounds_out])[len(rounds_out) // 2])]
    peaks = [r["peak_rss_mb"] - r["rss_before_mb"] for r in rounds_out if r["peak_rss_mb"] and r["rss_before_mb"]]
    result.update(
        rounds=rounds_out, eta=trajectory.config["eta"],
        # The round with the median loop time stands for the size; the ratio is the median over rounds.
        loop_seconds=median_round["loop"], simulate_wall_seconds=median_round["wall"],
        transfer_seconds=median_round["transfer"], default_eta_seconds=median_round["default_eta"],
        steps_per_second=steps / median_round["loop"], end_to_end_steps_per_second=steps / median_round["wall"],
        step_flops=step_flops(n, m, C), record_flops=record_flops(n, m, p, C), loop_flops=loop_flops,
        record_share_of_flops=2 * record_flops(n, m, p, C) / loop_flops,
        achieved_flops_per_second=loop_flops / median_round["loop"], plain_seconds=plain_seconds,
        plain_flops_per_second=plain_rate, flops_ratio=float(np.median(ratios)),
        flops_ratio_range=[min(ratios), max(ratios)],
        # Each step reads K_X and K_V once and their clean-subset rows K_VX, K_VV once more in the meta score.
        step_kernel_bytes=8 * ((n + m) * (n + m) + 2 * m * n + m * m),
        # What one simulate() call needs on top of what was resident (inputs, the plain loop's copy of K_X).
        simulate_extra_rss_mb=max(peaks) if peaks else None,
        final_clean_loss=float(trajectory.clean_loss[-1]),
    )
    result["effective_bandwidth_gb_s"] = result["step_kernel_bytes"] * steps / median_round["loop"] / 1e9
    if compare:
        _progress(f"n={n}: closed-form weight step against autodiff")
        result["comparisons"] = _compare_weight_steps(trajectory, problem, blocks, seed, widths, repeats)
    result["maxrss_mb"] = _maxrss_mb()
    result["load_end"] = _load()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Driver


def _versions():
    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for package in ("numpy", "jax", "jaxlib", "scipy", "neural-tangents"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _format_tables(results):
    lines = []
    header = (f"{'n':>5} {'m=p':>4} {'steps':>5} {'steps/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} "
              f"{'plain GFLOP/s':>13} {'ratio':>5} {'ratio range':>11} {'GB/s':>5} {'e2e steps/s':>11} "
              f"{'eta solve s':>11} {'kernel MB':>9} {'stacked MB':>10} {'sim +RSS MB':>11} {'maxrss MB':>9}")
    lines += ["Simulator throughput (full batch, C=10, MSE, meta variant; loop timed on device-resident arrays)",
              header, "-" * len(header)]
    for r in results:
        plain = sum(r["plain_flops_per_second"]) / len(r["plain_flops_per_second"])
        extra = r["simulate_extra_rss_mb"]
        lines.append(
            f"{r['n']:>5} {r['m']:>4} {r['steps']:>5} {r['steps_per_second']:>8.2f} {r['step_flops'] / 1e9:>10.3f} "
            f"{r['achieved_flops_per_second'] / 1e9:>8.2f} {plain / 1e9:>13.2f} {r['flops_ratio']:>5.2f} "
            f"{r['flops_ratio_range'][0]:>5.2f}-{r['flops_ratio_range'][1]:<5.2f} "
            f"{r['effective_bandwidth_gb_s']:>5.2f} {r['end_to_end_steps_per_second']:>11.2f} "
            f"{r['default_eta_seconds']:>11.2f} {r['kernel_block_bytes'] / 2**20:>9.0f} "
            f"{r['stacked_kernel_bytes'] / 2**20:>10.0f} {'n/a' if extra is None else f'{extra:.0f}':>11} "
            f"{r['maxrss_mb']:>9.0f}")
    lines += [
        "steps/s: the jitted loop of simulate() in the median of the timed rounds (steps steps + 2 diagnostic records, "
        + ", ".join(f"{r['record_share_of_flops']:.1%}" for r in results) + " of its FLOPs), nothing subtracted.",
        "ratio: achieved FLOP/s over that of a jitted loop of plain (n+m, n) @ (n, C) products timed just before and "
        "after it in the same process; median and range over the rounds.",
        "e2e steps/s: steps over the whole simulate() call, which also solves lambda_max twice (eta solve s), "
        "stacks the kernel and copies it to the device.",
        "kernel MB: the five blocks; stacked MB: simulate()'s K_X, K_V (and the device holds another copy); "
        "sim +RSS: resident high-water mark of the timed simulate() call above what was resident before it; "
        "maxrss: ru_maxrss of the whole process (kernel construction included).",
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
            f"against O(m n C); D = n+m is the least width that can represent a generic full-rank kernel here.",
            f"{comparisons[0]['clipped_fraction']:.0%} of the weights are clipped at 0 or 1 in this state; "
            "both routes clip identically (asserted to 1e-10).",
        ]
    loads = [r["load_start"] for r in results if r["load_start"]] + [r["load_end"] for r in results if r["load_end"]]
    if loads:
        lines.append(f"Load average (1, 5, 15 min) during the run: {min(l[0] for l in loads):.1f}-"
                     f"{max(l[0] for l in loads):.1f} on {os.cpu_count()} CPUs: the CPUs are shared, timings are "
                     "noisy; the ratios are measured side by side.")
    return "\n".join(lines)


def _write_json(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".simulator.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.worker is not None:
            import jax

            jax.config.update("jax_enable_x64", True)
            result = run_size(args.worker, args.worker_steps, args.rounds, args.worker == args.compare_n,
                              args.feature_widths, args.repeats, args.seed)
            print(json.dumps(result))
            return 0
        if args.steps is None:
            steps = [DEFAULT_STEPS.get(n, 20) for n in args.sizes]
        elif len(args.steps) in (1, len(args.sizes)):
            steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
        else:
            raise UserError(f"--steps takes one number or one per size ({len(args.sizes)}), got {len(args.steps)}")
        if args.compare_n and args.compare_n not in args.sizes:
            raise UserError(f"--compare-n must be one of --sizes {args.sizes} (or 0 to skip), got {args.compare_n}")
        if any(w <= 0 for w in args.feature_widths):
            raise UserError(f"--feature-widths must be positive, got {args.feature_widths}")
    except UserError as error:
        print(f"python bench/simulator.py: error: {error}", file=sys.stderr)
        return 2

    results = []
    for n, count in zip(args.sizes, steps):
        command = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--worker-steps", str(count),
                   "--rounds", str(args.rounds), "--compare-n", str(args.compare_n), "--repeats", str(args.repeats),
                   "--seed", str(args.seed),
                   "--feature-widths", *map(str, args.feature_widths)]
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            print(f"python bench/simulator.py: error: the worker for n={n} failed (exit {completed.returncode})",
                  file=sys.stderr)
            return 1
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    table = _format_tables(results)
    print(table)
    payload = {"config": {"sizes": args.sizes, "steps": steps, "compare_n": args.compare_n,
                          "feature_widths": args.feature_widths, "rounds": args.rounds, "repeats": args.repeats,
                          "seed": args.seed,
                          "num_classes": NUM_CLASSES, "m": "n // 10", "p": "n // 10", "loss": "mse",
                          "variant": "meta", "kernel": "analytic NTK, KernelSpec() (2 hidden ReLU layers)",
                          "problem": "gaussian_mixture(C=10, d=32, symmetric noise 0.4)"},
               "versions": _versions(), "results": results, "table": table}
    _write_json(args.out, payload)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
