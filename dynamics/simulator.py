"""Exact meta-reweighting of a linearized network in function space (docs/theory.md sections 2, 3 and 8).

For a model that is linear in its parameters, one meta-reweighting step
(look-ahead, meta-gradient, clipped weight update, model update) is exact in
function space and touches the kernel only through a few products, which a
kernel operator supplies (:mod:`dynamics.operators`): the dense blocks
``K_XX, K_VX, K_VV, K_TX, K_TV`` (:class:`KernelBlocks`) or explicit features
``k(x, x') = phi(x) . phi(x')`` (:class:`FeatureKernel`, docs/theory.md
section 8, for n = 50,000). The same step runs over either.

The simulator is a state and a pure step (docs/architecture.md, convention 1)::

    config = dataclasses.replace(config, eta=default_eta(operator, config.gamma)[0])  # once, if eta is unset
    state = init(problem, operator, config, seed=0)        # SimState, a JAX pytree
    state = step(state, problem, operator, config)         # step t -> t + 1, as often as wanted
    F_test = predict_test(state, operator, config)         # (p, C), only when wanted

and :func:`simulate` runs ``config.steps`` steps and records the diagnostics
of docs/theory.md section 3 into a :class:`~dynamics.trajectory.Trajectory`.
It runs the jitted loop in segments of about a hundredth of the records each,
from Python: ``progress`` is called between segments (a new callable never
recompiles the loop), a diverging run stops at the first segment that shows
it, and a keyboard interrupt lands between segments.

Float64. JAX computes in float32 unless its x64 mode is on, and switching it
on is a process-wide setting that belongs to the application, not to a
library import. So this module does not touch it at import; instead each
public function that computes with JAX (:func:`init`, :func:`step`,
:func:`predict_test`, :func:`simulate`, :func:`meta_score`) runs inside
``jax.experimental.enable_x64()`` when the caller has not enabled x64
already. Results are float64 either way. The arrays of a :class:`SimState`
are float64: pass them back to these functions, or convert them with
``np.asarray``; JAX arithmetic on them outside x64 mode would round to float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np

from dynamics.config import LOSSES, VARIANTS, MetaConfig
from dynamics.operators import BatchKernel, FeatureKernel, KernelBlocks, KernelOperator, dense_meta_kernel, \
    host_products, raise_host_interrupt, x64_in_every_thread
from dynamics.problem import Problem
from dynamics.trajectory import Trajectory

__all__ = ["LOSSES", "VARIANTS", "INITS", "CompilationCacheError", "DivergenceError", "FeatureKernel", "KernelBlocks", "KernelOperator",
           "MetaConfig", "SimState", "default_eta", "gp_prior_outputs", "init", "meta_score", "outputs_at", "predict_test",
           "refuse_persistent_cache", "KEPT_OUTPUTS", "SHARED_KNOBS", "lower_loop", "simulate", "simulate_many", "step"]

INITS = ("zero", "gp")
_PROGRESS_REPORTS = 100  # segments per run, so progress (and a keyboard interrupt) comes about a hundred times


class DivergenceError(RuntimeError):
    """A run whose losses stopped being finite: the step size was too large."""


#: jax versions whose persistent compilation cache returns wrong results for the simulator's loops: an
#: executable with a loop of traced bounds, loaded from the cache, leaves its input unchanged (a run in which
#: nothing moves). Reproduced by ``tests/dynamics/test_simulator.py::test_the_persistent_cache_is_refused``.
CACHE_AFFECTED_JAX = ("0.5.3",)


class CompilationCacheError(RuntimeError):
    """JAX's persistent compilation cache is on, and the installed jax loads wrong executables from it."""


def refuse_persistent_cache() -> None:
    """Raise :class:`CompilationCacheError` when the persistent cache is on and the installed jax is affected."""
    if jax.__version__ in CACHE_AFFECTED_JAX and jax.config.jax_compilation_cache_dir:
        raise CompilationCacheError(
            f"JAX's persistent compilation cache is on ({jax.config.jax_compilation_cache_dir}), and jax "
            f"{jax.__version__} loads cached executables of the simulator that return runs in which nothing moves; "
            "unset JAX_COMPILATION_CACHE_DIR (or jax.config.update('jax_compilation_cache_dir', None))")


def _float64(function):
    """Run ``function`` with JAX in x64 mode, scoped to the call (see the module docstring); refuse to run with
    an affected persistent compilation cache (:data:`CACHE_AFFECTED_JAX`)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        refuse_persistent_cache()
        if jax.config.jax_enable_x64:
            return function(*args, **kwargs)
        with jax.experimental.enable_x64():
            return function(*args, **kwargs)

    return wrapper


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["F", "w", "G_sum", "R_meta_sum", "F_test0", "t", "key"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SimState:
    """The simulator's state entering step ``t`` (docs/theory.md section 2), a JAX pytree of float64 arrays.

    F : (n + m, C) outputs of the training and clean sets, stacked.
    w : (n,) per-example weights.
    G_sum : (n, C) sum over the steps taken of the weighted training residuals
        ``G = w[:, None] * R`` (zero outside each step's batch).
    R_meta_sum : (m, C) sum of the clean residuals used by the steps taken.
    F_test0 : (p, C) initial test outputs. The test set never feeds back into
        the dynamics, so test outputs are recovered only when asked:
        ``F_test0 - eta (K_TX G_sum + gamma K_TV R_meta_sum)`` (:func:`predict_test`).
    t : () int, the number of steps taken.
    key : (2,) uint32, the mini-batch key, ``jax.random.split(PRNGKey(seed))[0]``;
        step ``t`` draws its training batch as ``jax.random.choice(fold_in(key,
        2 t), n, (batch_size,), replace=False)`` and its clean batch likewise from
        ``fold_in(key, 2 t + 1)``.
    """

    F: jax.Array
    w: jax.Array
    G_sum: jax.Array
    R_meta_sum: jax.Array
    F_test0: jax.Array
    t: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class _Rule:
    """What a jitted step closes over (hashable: compiled once per value): the resolved knobs of a config."""

    loss: str
    variant: str
    eta: float
    beta: float
    gamma: float
    batch_size: int | None
    meta_batch_size: int | None
    perturb_eps: float
    perturb_draws: int

    @classmethod
    def of(cls, config: MetaConfig, eta: float) -> _Rule:
        beta = 0.0 if config.variant == "fixed" else float(config.beta)
        return cls(config.loss, config.variant, float(eta), beta, float(config.gamma), config.batch_size,
                   config.meta_batch_size, float(config.perturb_eps), int(config.perturb_draws))


def _residual_and_loss(loss: str, F: jax.Array, Y: jax.Array):
    """``(dloss/doutput (k, K), per-example loss (k,))`` of outputs ``F`` against targets ``Y`` (one-hot rows, or
    ``+-1`` in one column: :meth:`dynamics.problem.Problem.encode`).

    Cross-entropy on one output with ``+-1`` targets is the logistic loss ``log(1 + exp(-y f))``, the two-class
    softmax cross-entropy of the logits ``(f/2, -f/2)``; its residual is ``-y sigmoid(-y f)``.
    """
    if loss == "mse":
        R = F - Y
        return R, 0.5 * jnp.sum(R * R, axis=-1)
    if Y.shape[-1] == 1:
        return -Y * jax.nn.sigmoid(-Y * F), jnp.sum(jnp.logaddexp(0.0, -Y * F), axis=-1)
    log_p = jax.nn.log_softmax(F, axis=-1)
    return jnp.exp(log_p) - Y, -jnp.sum(Y * log_p, axis=-1)


def _residual(loss, F, Y):
    return _residual_and_loss(loss, F, Y)[0]


def _meta_score(loss: str, eta: float, gamma: float, w, R, R_meta, F_meta, Y_meta, kernel: BatchKernel):
    """:func:`meta_score` over any kernel operator's batch (``kernel.apply_meta_rows``, ``transpose_meta_rows``)."""
    F_meta_hat = F_meta - eta * kernel.apply_meta_rows(w[:, None] * R, R_meta, gamma)
    R_meta_hat = _residual(loss, F_meta_hat, Y_meta)
    coupling = kernel.transpose_meta_rows(R_meta_hat)
    return jnp.sum(R * coupling, axis=-1), R_meta_hat


@_float64
def meta_score(loss: str, eta: float, gamma: float, w, R, R_meta, F_meta, Y_meta, K_VX, K_VV):
    """The meta score ``s_i = <r_i, c_i>`` and the look-ahead clean residual (docs/theory.md section 2).

    Parameters
    ----------
    w : (n,) weights of the look-ahead.  R : (n, C) training residuals.
    R_meta, F_meta, Y_meta : (m, C) clean residuals, outputs, one-hot labels.
    K_VX : (m, n).  K_VV : (m, m).

    Returns
    -------
    score : (n,), with ``dL_meta/dw_i = -(eta / m) * score_i``.
    R_meta_hat : (m, C), the clean residual after the look-ahead step.
    """
    return _meta_score(loss, eta, gamma, w, R, R_meta, F_meta, Y_meta, dense_meta_kernel(K_VX, K_VV))


def _lookahead_weights(rule: _Rule, w):
    # L2RW takes the meta-gradient at w = 0 (Ren et al. 2018, eps = 0), the others at the current state.
    return jnp.zeros_like(w) if rule.variant == "l2rw" else w


def _new_weights(rule: _Rule, w_batch, score, meta_batch_size: int):
    if rule.variant == "meta":
        return jnp.clip(w_batch + rule.beta / meta_batch_size * score, 0.0, 1.0)
    positive = jnp.maximum(score, 0.0)
    total = positive.sum()
    return jnp.where(total > 0, positive / jnp.where(total > 0, total, 1.0), 0.0)


def _step(rule: _Rule, operator: KernelOperator, Y, state: SimState) -> SimState:
    """One meta-reweighting step (docs/theory.md section 2, steps 1-4) on the batches drawn for step ``state.t``.

    ``Y : (n + m, C)`` one-hot noisy training labels and clean labels, stacked.
    Cost: the operator's three batch products (``O((n + m) (b + m_b) C)``
    dense, ``O((n + m) D C)`` with features).
    """
    n, m = state.w.shape[0], state.R_meta_sum.shape[0]
    t, key = state.t, state.key
    batch = None if rule.batch_size is None else jax.random.choice(
        jax.random.fold_in(key, 2 * t), n, (rule.batch_size,), replace=False)
    meta_batch = None if rule.meta_batch_size is None else jax.random.choice(
        jax.random.fold_in(key, 2 * t + 1), m, (rule.meta_batch_size,), replace=False)
    # Whole sets use static slices, not gathers.
    rows = slice(None) if batch is None else batch
    meta_rows = slice(n, n + m) if meta_batch is None else n + meta_batch
    kernel = operator.select(batch, meta_batch)
    F, w = state.F, state.w
    R = _residual(rule.loss, F[:n][rows], Y[:n][rows])
    F_meta, Y_meta = F[meta_rows], Y[meta_rows]
    R_meta = _residual(rule.loss, F_meta, Y_meta)
    w_batch = w[rows]
    if rule.variant != "fixed":
        score, _ = _meta_score(rule.loss, rule.eta, rule.gamma, _lookahead_weights(rule, w_batch), R, R_meta,
                               F_meta, Y_meta, kernel)
        w_batch = _new_weights(rule, w_batch, score, R_meta.shape[0])
        w = w_batch if batch is None else w.at[batch].set(w_batch)
    G = w_batch[:, None] * R
    F = F - rule.eta * kernel.apply(G, R_meta, rule.gamma)
    G_sum = state.G_sum + G if batch is None else state.G_sum.at[batch].add(G)
    R_meta_sum = state.R_meta_sum + R_meta if meta_batch is None else state.R_meta_sum.at[meta_batch].add(R_meta)
    return dataclasses.replace(state, F=F, w=w, G_sum=G_sum, R_meta_sum=R_meta_sum, t=t + 1)


def _test_outputs(rule: _Rule, operator: KernelOperator, state: SimState):
    return state.F_test0 - rule.eta * operator.apply_test(state.G_sum, state.R_meta_sum, rule.gamma)


def _record(rule: _Rule, operator: KernelOperator, data, state: SimState, noise):
    """Full-batch quantities of docs/theory.md section 3 at one state, and its test outputs ``(p, C)``; no
    ``K_XX`` product. ``noise``: C7's ``(perturb_draws, n + m, C)`` Gaussian draws for this state
    (:func:`_perturbations`), or ``None`` without C7.

    ``O((m + p) n C)`` dense, ``O((n + m + p) D C)`` with features, times
    ``1 + perturb_draws`` for the meta score.
    """
    Y_all, noisy, y_test = data["Y"], data["noisy"], data["y_test"]
    F, w, t = state.F, state.w, state.t
    n = w.shape[0]
    kernel = operator.select(None, None)
    Y, Y_meta = Y_all[:n], Y_all[n:]
    F_test = _test_outputs(rule, operator, state)
    R, train_losses = _residual_and_loss(rule.loss, F[:n], Y)
    _, meta_losses = _residual_and_loss(rule.loss, F[n:], Y_meta)
    _, test_losses = _residual_and_loss(rule.loss, F_test, data["Y_test"])
    lookahead_w = _lookahead_weights(rule, w)

    def score_at(F_train, F_meta):
        return _meta_score(rule.loss, rule.eta, rule.gamma, lookahead_w, _residual(rule.loss, F_train, Y),
                           _residual(rule.loss, F_meta, Y_meta), F_meta, Y_meta, kernel)

    score, R_meta_hat = score_at(F[:n], F[n:])

    def flip(noise):
        # C7: perturb F and F_meta by Gaussian noise of Frobenius norm eps * ||Y_meta||_F each.
        size = rule.perturb_eps * jnp.linalg.norm(Y_meta)
        Z, Z_meta = noise[:n], noise[n:]
        perturbed, _ = score_at(F[:n] + size * Z / jnp.linalg.norm(Z), F[n:] + size * Z_meta / jnp.linalg.norm(Z_meta))
        return jnp.mean(jnp.sign(perturbed) != jnp.sign(score))

    if noise is not None:
        flip_rate = jnp.mean(jax.vmap(flip)(noise))
    else:
        flip_rate = jnp.asarray(jnp.nan)

    def group_mean(values, mask):
        count = mask.sum()
        return jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1), jnp.nan)

    return {
        "step": t,
        "w": w,
        "score": score,
        "residual_norm": jnp.linalg.norm(R, axis=-1),
        "clean_loss": meta_losses.mean(),
        "coupling_norm": jnp.linalg.norm(R_meta_hat),
        "train_loss_clean": group_mean(train_losses, ~noisy),
        "train_loss_noisy": group_mean(train_losses, noisy),
        "test_loss": test_losses.mean(),
        "test_accuracy": jnp.mean(jnp.argmax(F_test @ data["codebook"].T, axis=-1) == y_test),  # argmax, or sign
        "flip_rate": flip_rate,
    }, F_test


def _segment_body(rule: _Rule, operator: KernelOperator, data, state: SimState, advances, remainder, noise):
    """A stretch of a run: for each ``k`` of ``advances : (L,)``, keep the state, then take ``k`` steps; then take
    ``remainder`` more steps. Returns the state, the records of the ``L`` kept states stacked, the record of the
    final state and the final test outputs ``(p, C)``. ``noise``: C7's draws for the ``L + 1`` records, ``(L +
    1, perturb_draws, n + m, C)`` (:func:`_perturbations`), or ``None`` without C7.

    The records are taken after the steps, all at once (a vmap over the kept states): every kernel product of
    :func:`_record` then serves the ``L + 1`` states (and C7's draws) in one product with that many times the
    columns, instead of a thin product per recorded step; and the record is compiled once.
    """

    def take_steps(state, count):
        return jax.lax.fori_loop(0, count, lambda _, s: _step(rule, operator, data["Y"], s), state)

    def keep_and_advance(state, count):
        return take_steps(state, count), state

    state, kept = jax.lax.scan(keep_and_advance, state, advances)
    state = take_steps(state, remainder)
    states = jax.tree.map(lambda kept, final: jnp.concatenate([kept, final[None]]), kept, state)
    records, test_outputs = jax.vmap(lambda state, noise: _record(rule, operator, data, state, noise))(states, noise)
    length = advances.shape[0]
    return (state, jax.tree.map(lambda r: r[:length], records), jax.tree.map(lambda r: r[length], records),
            test_outputs[length])


def _coefficients(rule: _Rule) -> tuple[_Rule, jax.Array]:
    """``rule`` split into the knobs that shape the compiled loop (``eta``, ``beta``, ``gamma`` zeroed) and
    those three as a traced ``(3,)`` array: one compilation serves every value of them."""
    shared = dataclasses.replace(rule, eta=0.0, beta=0.0, gamma=0.0)
    return shared, jnp.asarray([rule.eta, rule.beta, rule.gamma], dtype=jnp.float64)


def _segment_of(rule: _Rule, operator: KernelOperator, data, state: SimState, coefficients, advances, remainder,
                noise):
    """:func:`_segment_body` with ``eta, beta, gamma = coefficients`` (:func:`_coefficients`)."""
    eta, beta, gamma = coefficients
    own = dataclasses.replace(rule, eta=eta, beta=beta, gamma=gamma)
    return _segment_body(own, operator, data, state, advances, remainder, noise)


_segment = jax.jit(_segment_of, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _segments(rule: _Rule, operator: KernelOperator, data, state: SimState, coefficients, advances, remainder,
              noise):
    """:func:`_segment` of ``S`` runs at once over one kernel: ``data``, ``state``, ``coefficients`` (``eta,
    beta, gamma``, each ``(S,)``) and ``noise`` carry a leading run axis, ``rule`` the knobs the runs share.
    Every product with the kernel becomes one product with ``S`` times as many columns (the kernel is read once
    for all runs). The records come back with the step axis first, ``(L, S, ...)``, the state and final values
    run first."""

    def one(data, state, coefficients, noise):
        return _segment_of(rule, operator, data, state, coefficients, advances, remainder, noise)

    return jax.vmap(one, out_axes=(0, 1, 0, 0))(data, state, coefficients, noise)


_step_jit = jax.jit(_step, static_argnums=0)
_test_outputs_jit = jax.jit(_test_outputs, static_argnums=0)


def default_eta(operator: KernelOperator, gamma: float, *, lambda_train: float | None = None
                ) -> tuple[float, float]:
    """``(eta, lambda_joint)``: docs/theory.md section 5's ``1 / lambda_max(K_XX)`` unless it is unstable.

    Gradient descent on the weighted sum of MSE losses is stable while ``eta < 2 /
    lambda_joint`` (CE's Hessian in the outputs is smaller, so the same holds).
    Both eigenvalues come from the operator (Lanczos on the blocks, or ``(D, D)``
    Gram matrices of features): solve this once per run, never per step
    (``lambda_train``: ``operator.lambda_max_train()`` when already known).
    """
    lambda_joint = operator.lambda_max(gamma)
    eta = 1.0 / (operator.lambda_max_train() if lambda_train is None else lambda_train)
    return (eta if eta * lambda_joint < 2.0 else 1.0 / lambda_joint), lambda_joint


def gp_prior_outputs(nngp: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """One draw ``(N, C)`` of the NNGP prior: independent columns with covariance ``nngp : (N, N)``."""
    eigenvalues, eigenvectors = np.linalg.eigh(nngp)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    return factor @ rng.standard_normal((nngp.shape[0], num_classes))


def _check(problem: Problem, operator, config: MetaConfig) -> None:
    """Raise ``ValueError``/``TypeError`` for an operator or batch sizes that do not fit ``problem``."""
    if not all(hasattr(operator, name) for name in ("select", "apply_test", "sizes")):
        raise TypeError(f"operator must be a kernel operator (KernelBlocks or FeatureKernel), got "
                        f"{type(operator).__name__}")
    n, m, p = problem.sizes
    if tuple(operator.sizes) != (n, m, p):
        raise ValueError(f"the kernel operator is for (n, m, p) = {tuple(operator.sizes)}, the problem has "
                         f"{(n, m, p)}")
    for name, size, limit in (("batch_size", config.batch_size, n), ("meta_batch_size", config.meta_batch_size, m)):
        if size is not None and size > limit:
            raise ValueError(f"{name} must be at most {limit}, got {size}")


def _targets(problem: Problem) -> np.ndarray:
    """``(n + m, K)`` targets of the noisy training labels and the clean labels, stacked (one-hot, ``K = C``; or
    ``+-1``, ``K = 1``: :meth:`dynamics.problem.Problem.encode`)."""
    return problem.encode(np.concatenate([problem.y_noisy, problem.y_meta]))


def _batch_key(seed: int) -> np.ndarray:
    """The mini-batch key of a run's seed (:attr:`SimState.key`): ``jax.random.split(jax.random.PRNGKey(seed))[0]``
    in x64 mode, computed in Python for JAX's default generator (Threefry-2x32), whose first eager use compiles
    for 0.2 s; other generators go through JAX."""
    if jax.config.jax_default_prng_impl != "threefry2x32":
        with jax.experimental.enable_x64():
            return np.asarray(jax.random.split(jax.random.PRNGKey(seed))[0])
    seed = int(seed)  # a Python int: numpy's would overflow below
    key = ((seed % 2**64) >> 32, seed & _WORD)  # PRNGKey: the 64-bit seed's high and low words
    if jax.config.jax_threefry_partitionable:  # split: the hashes of the counters (0, i), i = 0, 1
        first = _threefry2x32(key, (0, 0))
    else:  # the hashes of the pairs (i, i + 2) of the counters 0..3, first words
        first = (_threefry2x32(key, (0, 2))[0], _threefry2x32(key, (1, 3))[0])
    return np.array(first, dtype=np.uint32)


_WORD = 0xFFFFFFFF
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(key: tuple[int, int], counter: tuple[int, int]) -> tuple[int, int]:
    """The Threefry-2x32 block cipher with 20 rounds (Salmon et al. 2011, Random123), JAX's default generator:
    ``counter`` encrypted under ``key``, each a pair of 32-bit words."""
    schedule = (key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA)
    x0, x1 = (counter[0] + schedule[0]) & _WORD, (counter[1] + schedule[1]) & _WORD
    for group in range(5):  # five groups of four rounds, each group followed by a key injection
        for rotation in _THREEFRY_ROTATIONS[group % 2]:
            x0 = (x0 + x1) & _WORD
            x1 = (((x1 << rotation) | (x1 >> (32 - rotation))) & _WORD) ^ x0
        x0 = (x0 + schedule[(group + 1) % 3]) & _WORD
        x1 = (x1 + schedule[(group + 2) % 3] + group + 1) & _WORD
    return x0, x1


#: The stream of numpy's generator that C7's draws come from: ``default_rng([seed, C7_STREAM, t])`` at step ``t``.
C7_STREAM = 0xC7


def _perturbations(seed: int, steps: np.ndarray, draws: int, shape: tuple[int, int]) -> np.ndarray:
    """C7's Gaussian draws for records at ``steps``: ``(len(steps), draws, *shape)`` float32, each step's from its
    own generator (:data:`C7_STREAM`), so a record's draws do not depend on how the run is cut into segments or
    which runs advance with it.

    Drawn on the host while the compiled loop runs the segment before: drawn in XLA, JAX's counter-based
    generator took 0.5-0.7 s of compilation alone in the default run, and the run took 0.3-0.6 s longer
    (``bench/main_command.py``). Float32: the direction is scaled to norm ``eps``, which needs no more (its norm
    is exact to 1e-7 relative)."""
    out = np.empty((len(steps), draws, *shape), dtype=np.float32)
    drawn = {}
    for index, t in enumerate(steps.tolist()):
        if t not in drawn:
            drawn[t] = np.random.default_rng([seed, C7_STREAM, t]).standard_normal((draws, *shape), np.float32)
        out[index] = drawn[t]
    return out


def _resolved_eta(config: MetaConfig, caller: str) -> float:
    if config.eta is None:
        raise ValueError(f"{caller} needs config.eta; resolve it once per run: "
                         "dataclasses.replace(config, eta=default_eta(operator, config.gamma)[0])")
    return float(config.eta)


@_float64
def init(problem: Problem, operator: KernelOperator, config: MetaConfig = MetaConfig(), *, seed: int = 0,
         initial_outputs: np.ndarray | None = None) -> SimState:
    """The state before the first step: outputs ``initial_outputs`` (zero by default), weights ``config.w0``.

    Parameters
    ----------
    problem : the noisy-label problem (sizes ``n, m, p``, ``C`` classes).
    operator : its kernel (:class:`KernelBlocks` or :class:`FeatureKernel`);
        only checked against the problem here.
    config : the knobs (``w0`` and the batch sizes are used here; ``eta`` may be unset).
    seed : draws the mini-batches (:attr:`SimState.key`).
    initial_outputs : (n + m + p, C) initial outputs stacked train, clean, test
        (``None``: zero, the centred network); see :func:`gp_prior_outputs`.
    """
    return jax.tree.map(jnp.asarray, _initial_state(problem, operator, config, seed, initial_outputs))


def _initial_state(problem: Problem, operator, config: MetaConfig, seed: int, initial_outputs) -> SimState:
    """:func:`init`'s state with numpy leaves (stacked for runs advanced together without eager JAX ops)."""
    _check(problem, operator, config)
    n, m, p = problem.sizes
    C = problem.outputs  # K outputs: C, or 1 for +-1 targets
    F0 = np.zeros((n + m + p, C)) if initial_outputs is None else np.asarray(initial_outputs, dtype=np.float64)
    if F0.shape != (n + m + p, C):
        raise ValueError(f"initial_outputs must have shape {(n + m + p, C)}, got {F0.shape}")
    batch_key = _batch_key(seed)
    # Explicit dtypes: a weakly typed leaf would make the second call of the jitted step compile anew.
    return SimState(F=F0[:n + m], w=np.full(n, float(config.w0)), G_sum=np.zeros((n, C)),
                    R_meta_sum=np.zeros((m, C)), F_test0=F0[n + m:], t=np.zeros((), dtype=np.int64),
                    key=np.asarray(batch_key))


@_float64
def step(state: SimState, problem: Problem, operator: KernelOperator, config: MetaConfig) -> SimState:
    """One meta-reweighting step (docs/theory.md section 2, steps 1-4; section 8 for features), jitted.

    Parameters
    ----------
    state : the state entering step ``state.t`` (from :func:`init` or a previous step).
    problem : supplies the noisy training labels and the clean labels.
    operator : the kernel of ``problem``. It is a JAX pytree: ``jax.device_put``
        it once before a loop of steps, or every call copies its arrays to the device.
    config : the knobs, with ``eta`` set (:func:`default_eta`); ``steps``,
        ``record_every`` and the C7 settings are not used.

    Returns
    -------
    The state entering step ``state.t + 1``. Batches are drawn from ``state.key``
    and ``state.t``, so ``T`` steps from ``init(..., seed=s)`` reproduce
    ``simulate(..., seed=s)`` exactly.
    """
    rule = _Rule.of(config, _resolved_eta(config, "step"))
    return _step_jit(rule, operator, jnp.asarray(_targets(problem)), state)


@_float64
def predict_test(state: SimState, operator: KernelOperator, config: MetaConfig) -> jax.Array:
    """``(p, C)`` test outputs at ``state``: ``F_test0 - eta (K_TX G_sum + gamma K_TV R_meta_sum)``."""
    return _test_outputs_jit(_Rule.of(config, _resolved_eta(config, "predict_test")), operator, state)


@_float64
def lower_loop(problem: Problem, config: MetaConfig, dtype=np.float64) -> jax.stages.Lowered:
    """The loop that :func:`simulate` runs for ``problem`` and ``config`` over dense kernel blocks of ``dtype``
    (:class:`KernelBlocks`), traced and lowered before the kernel exists: the loop depends on the sizes and the
    loop knobs only (not on ``eta``, ``beta``, ``gamma``, ``w0`` or the seed). Its ``.compile()``, XLA's
    compilation, leaves it compiled for :func:`simulate`, and releases the GIL: an application calls it on a
    thread of its own while it computes the kernel (the tracing here holds the GIL, so it is done first, where
    it does not compete with other Python work).
    """
    n, m, p = problem.sizes
    operator = KernelBlocks.tree_unflatten(None, [jax.ShapeDtypeStruct(shape, dtype)
                                                  for shape in ((n + m, n), (n + m, m), (p, n), (p, m))])
    state = _initial_state(problem, operator, config, 0, None)
    shared, coefficients = _coefficients(_Rule.of(config, 0.0))
    length = _segment_length(config)
    noise = jax.ShapeDtypeStruct((length + 1, config.perturb_draws, *state.F.shape), np.float32) \
        if config.perturb_draws else None
    # The remainder as simulate's segments pass it: a Python int.
    return _segment.lower(shared, operator, _run_data(problem), state, coefficients, np.zeros(length, np.int64), 0,
                          noise)


@_float64
def simulate(problem: Problem, operator: KernelOperator, config: MetaConfig = MetaConfig(), *, seed: int = 0,
             initial_outputs: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
             keep_outputs: list | None = None) -> Trajectory:
    """Run meta-reweighting of the linearized model exactly (docs/theory.md sections 2-3, and 8 for features).

    Parameters
    ----------
    problem : the noisy-label problem (sizes ``n, m, p``, ``C`` classes).
    operator : the kernel of ``problem``'s inputs: :class:`KernelBlocks` (dense)
        or :class:`FeatureKernel` (explicit features, for large ``n``).
    config : the knobs; ``config.eta = None`` resolves to :func:`default_eta`.
    seed : draws the mini-batches and the C7 perturbations.
    initial_outputs : (n + m + p, C) initial outputs stacked train, clean, test
        (``None``: zero, the centred network); see :func:`gp_prior_outputs`.
    progress : called with the number of steps taken about a hundred times
        during the run, between jitted segments (for a progress bar).
    keep_outputs : a list that receives ``(t, F)`` pairs, the outputs ``F : (n
        + m, C)`` entering step ``t`` (a recorded step) at up to
        :data:`KEPT_OUTPUTS` evenly spaced points of the run: starts from which
        :func:`outputs_at` need not take the earlier steps again.

    Returns
    -------
    Trajectory, whose ``config`` holds every resolved parameter.

    Raises
    ------
    DivergenceError
        when a recorded loss stops being finite (the step that showed it and the
        largest stable ``eta`` are named).
    """
    _check(problem, operator, config)
    state = init(problem, operator, config, seed=seed, initial_outputs=initial_outputs)
    eta_default, lambda_joint = default_eta(operator, config.gamma)
    eta = eta_default if config.eta is None else float(config.eta)
    rule = _Rule.of(config, eta)
    shared, coefficients = _coefficients(rule)
    device_operator, data = jax.device_put(operator), jax.device_put(_run_data(problem))

    def advance(state, advances, remainder, noise):
        return _segment(shared, device_operator, data, state, coefficients, advances, remainder, noise)

    shape = state.F.shape

    def draw(steps):
        return _perturbations(seed, steps, rule.perturb_draws, shape) if rule.perturb_draws else None

    state, records, F_test, diverged = _drive(advance, state, config, progress, runs=None, draw=draw,
                                              keep=keep_outputs)
    if diverged is not None:
        raise _divergence(diverged, eta, lambda_joint)
    return _trajectory(problem, operator, config, rule, lambda_joint, seed, initial_outputs, records,
                       np.asarray(state.F), F_test, operator.k_meta_norm())


@_float64
def outputs_at(problem: Problem, operator: KernelOperator, config: MetaConfig, steps: int, *, seed: int = 0,
               initial_outputs: np.ndarray | None = None,
               start: tuple[int, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(n + m, C)``: the training and clean outputs after ``steps`` steps of the run that :func:`simulate`
    takes with the same arguments (``config.eta`` set: :func:`default_eta`), computed by the loop that
    :func:`simulate` compiled for ``config``'s loop knobs (no new compilation, whatever ``eta``, ``beta`` and
    ``gamma``): one segment that takes the steps after its first record.

    ``start``: ``(t, F, w)`` with ``t <= steps``, that run's outputs and weights entering step ``t`` (from
    :func:`simulate`'s ``keep_outputs`` and its trajectory's ``w``): only the steps from ``t`` on are taken, and
    the result is the same to the last bit (the same steps, from the same state)."""
    shared, coefficients = _coefficients(_Rule.of(config, _resolved_eta(config, "outputs_at")))
    state = init(problem, operator, config, seed=seed, initial_outputs=initial_outputs)
    taken = 0
    if start is not None:
        taken, F, w = start
        if not 0 <= taken <= steps or np.shape(F) != state.F.shape or np.shape(w) != state.w.shape:
            raise ValueError(f"start must be (t, F {state.F.shape}, w {state.w.shape}) with 0 <= t <= steps = "
                             f"{steps}; got t = {taken}, F {np.shape(F)}, w {np.shape(w)}")
        # G_sum and R_meta_sum, which only the test outputs read, stay zero: F is all that is returned.
        state = dataclasses.replace(state, F=np.asarray(F, dtype=np.float64), w=np.asarray(w, dtype=np.float64),
                                    t=np.asarray(taken, dtype=np.int64))
    advances = np.zeros(_segment_length(config), dtype=np.int64)
    advances[0] = steps - taken
    # The records are not read: C7 gets zeros of the loop's shape, not draws.
    noise = np.zeros((len(advances) + 1, config.perturb_draws, *state.F.shape), np.float32) \
        if config.perturb_draws else None
    state, *_ = _segment(shared, jax.device_put(operator), jax.device_put(_run_data(problem)), state,
                         coefficients, jnp.asarray(advances), 0, noise)
    return np.asarray(state.F)


@_float64
def simulate_many(problems: Sequence[Problem], operator: KernelOperator, configs: Sequence[MetaConfig],
                  seeds: Sequence[int], *, initial_outputs: Sequence[np.ndarray | None] | None = None,
                  progress: Callable[[int], None] | None = None,
                  keep_outputs: Sequence[list] | None = None) -> list[Trajectory | DivergenceError]:
    """:func:`simulate` for ``S`` runs over one kernel, advanced together: each kernel product serves all runs.

    One run's step is bound by reading the kernel (``(n + m) n`` numbers per step for ``n C`` useful columns);
    ``S`` runs read it once per step, and from a few runs on the step is bound by arithmetic instead, which
    full-batch runs do in numpy's BLAS (:func:`dynamics.operators.host_products`; ``bench/batched.py``
    measures the speed-up per simulation). The eigenvalue solves of :func:`default_eta` are done once per distinct ``gamma``.
    The runs share ``operator`` (so their inputs) and every knob of the loop: ``loss``, ``variant``, the batch
    sizes, ``steps``, ``record_every`` and the C7 settings. They may differ in their labels (``problems``: the
    same inputs, other noise draws), ``seeds``, ``initial_outputs``, ``eta``, ``beta``, ``gamma`` and ``w0``.
    Each result equals the one-at-a-time :func:`simulate` run to rounding (1e-12, tested); the runs do not
    interact.

    ``keep_outputs``: one list per run, filled as :func:`simulate`'s.

    Returns one entry per run, in order: its :class:`~dynamics.trajectory.Trajectory`, or the
    :class:`DivergenceError` that :func:`simulate` would have raised for it (a diverging run does not stop
    the others).
    """
    runs = len(problems)
    initial_outputs = [None] * runs if initial_outputs is None else list(initial_outputs)
    if not runs or not len(configs) == len(seeds) == len(initial_outputs) == runs:
        raise ValueError(f"simulate_many needs one config, seed and initial outputs per problem, and at least one "
                         f"run; got {runs} problems, {len(configs)} configs, {len(seeds)} seeds and "
                         f"{len(initial_outputs)} initial outputs")
    shared = {field: getattr(configs[0], field) for field in SHARED_KNOBS}
    for index, (problem, config) in enumerate(zip(problems, configs)):
        _check(problem, operator, config)
        differing = [field for field, value in shared.items() if getattr(config, field) != value]
        if differing:
            raise ValueError(f"runs advanced together must share {', '.join(SHARED_KNOBS)}; run {index} differs "
                             f"from run 0 in {', '.join(differing)}")
        if (problem.num_classes, problem.targets) != (problems[0].num_classes, problems[0].targets):
            raise ValueError(f"runs advanced together must have the same classes and targets; run {index} has "
                             f"{problem.num_classes} ({problem.targets}), run 0 {problems[0].num_classes} "
                             f"({problems[0].targets})")
    lambda_train = operator.lambda_max_train()  # the same for every gamma
    solved = {gamma: default_eta(operator, gamma, lambda_train=lambda_train)
              for gamma in dict.fromkeys(config.gamma for config in configs)}
    resolved = [(solved[config.gamma][0] if config.eta is None else float(config.eta), solved[config.gamma][1])
                for config in configs]
    rules = [_Rule.of(config, eta) for config, (eta, _) in zip(configs, resolved)]
    shared_rule = _coefficients(rules[0])[0]
    coefficients = jnp.stack([_coefficients(rule)[1] for rule in rules])
    state = jax.tree.map(lambda *leaves: np.stack(leaves), *[
        _initial_state(problem, operator, config, seed, outputs)
        for problem, config, seed, outputs in zip(problems, configs, seeds, initial_outputs)])
    data = jax.tree.map(lambda *leaves: np.stack(leaves), *[
        _run_data(problem) for problem in problems])
    data = jax.device_put(data)
    # Full-batch products of two or more runs are GEMMs bound by arithmetic, which numpy's BLAS computes about
    # twice as fast as XLA (bench/batched.py); one run's thin product is bound by reading the kernel. The
    # toolkit's commands have x64 on process-wide (kernels/infinite.py); without it, XLA's products serve.
    host = (runs > 1 and isinstance(operator, KernelBlocks) and shared["batch_size"] is None
            and shared["meta_batch_size"] is None and x64_in_every_thread())
    with host_products(operator) if host else contextlib.nullcontext(jax.device_put(operator)) as device_operator:

        def advance(state, advances, remainder, noise):
            out = _segments(shared_rule, device_operator, data, state, coefficients, advances, remainder, noise)
            if host:
                jax.block_until_ready(out)
                raise_host_interrupt(device_operator)
            return out

        shape = state.F.shape[1:]

        def draw(steps):
            if not shared["perturb_draws"]:
                return None
            return np.stack([_perturbations(seed, steps, shared["perturb_draws"], shape) for seed in seeds])

        kept = None if keep_outputs is None else []
        state, records, F_test, diverged = _drive(advance, state, configs[0], progress, runs=runs, draw=draw,
                                                  keep=kept)
    for t, outputs in kept or ():
        for own, run_outputs in zip(keep_outputs, outputs):
            own.append((t, run_outputs))
    F = np.asarray(state.F)
    k_meta_norm = operator.k_meta_norm()  # a property of the kernel, the same for every run
    results = []
    for index, (problem, config, seed, outputs, rule, (eta, lambda_joint)) in enumerate(
            zip(problems, configs, seeds, initial_outputs, rules, resolved)):
        if diverged[index] is not None:
            results.append(_divergence(diverged[index], eta, lambda_joint))
            continue
        own = {name: value[:, index] for name, value in records.items()}
        results.append(_trajectory(problem, operator, config, rule, lambda_joint, seed, outputs, own, F[index],
                                   F_test[index], k_meta_norm))
    return results


#: The knobs of :class:`MetaConfig` that :func:`simulate_many`'s runs share: they shape the compiled loop.
SHARED_KNOBS = ("loss", "variant", "batch_size", "meta_batch_size", "steps", "record_every", "perturb_eps",
                 "perturb_draws")


def _run_data(problem: Problem) -> dict:
    """What a run's records read besides its state and C7's draws: targets, test labels, noise mask."""
    return {"Y": _targets(problem), "Y_test": problem.encode(problem.y_test), "codebook": problem.codebook,
            "noisy": problem.noisy, "y_test": problem.y_test}


def _divergence(step: int, eta: float, lambda_joint: float) -> DivergenceError:
    return DivergenceError(
        f"the simulation diverged by step {step} (losses no longer finite): eta={eta:.4g} is too large; "
        f"use eta below 2/lambda_max = {2.0 / lambda_joint:.4g}, or leave eta unset for the stable default")


#: At most this many ``(t, F)`` pairs are kept per run (``keep_outputs`` of :func:`simulate`).
KEPT_OUTPUTS = 16


def _drive(advance, state, config: MetaConfig, progress, *, runs: int | None, draw, keep: list | None = None):
    """Run ``config.steps`` steps of ``advance`` (a jitted segment, :func:`_segment_body`) from ``state``, recording every
    ``config.record_every`` steps, in about a hundred segments. ``draw(steps)``: C7's draws for records at
    ``steps`` (:func:`_perturbations`, a run axis first for ``runs``), or ``None`` without C7; a segment's draws
    are made while the segment before it runs.

    The records at steps 0, e, 2e, ..., (c - 1) e are taken in segments of L records each (the last one padded
    with zero-step records, dropped), so the loop compiles once; the last segment also takes the remaining
    steps % e steps and records the final state. ``runs``: ``None`` for one run, else the number of runs on
    the leading axis of ``state`` (records then have shape ``(steps, runs, ...)``).

    Returns ``(state, records, F_test, diverged)``: ``diverged`` is the step at which the run's losses stopped
    being finite (``None`` if they did not), a list of them for ``runs``. A single run stops at the segment
    that shows its divergence; runs advanced together go on until all of them have diverged. ``keep``
    receives ``(t, F)`` at up to :data:`KEPT_OUTPUTS` evenly spaced segment starts (``F`` with the run axis first
    for ``runs``).
    """
    every, steps = int(config.record_every), int(config.steps)
    scanned, length = steps // every, _segment_length(config)
    advances = np.zeros(max(1, -(-scanned // length)) * length, dtype=np.int64)
    advances[:scanned] = every
    count = 1 if runs is None else runs
    segments, first_losses, diverged = [], None, [None] * count
    stride = length * -(-len(advances) // (length * KEPT_OUTPUTS))  # records between kept outputs

    last_start = len(advances) - length

    def remainder(start):  # the last segment also takes the steps after the last record
        return steps % every if start == last_start else 0

    def draws_of(start):  # the steps of a segment's L + 1 records (padding repeats the last)
        at = start * every + np.concatenate([[0], np.cumsum(advances[start:start + length])])
        at[-1] += remainder(start)
        return draw(at)

    noise = draws_of(0)
    for start in range(0, len(advances), length):
        if keep is not None and start % stride == 0:
            keep.append((start * every, np.asarray(state.F)))
        last = start == last_start
        state, records, final, F_test = advance(state, jnp.asarray(advances[start:start + length]),
                                                remainder(start), noise)
        noise = None if last else draws_of(start + length)  # while the segment runs (dispatch is asynchronous)
        valid = min(length, scanned - start)
        records = {name: np.asarray(value)[:valid] for name, value in records.items()}
        if last:
            records = {name: np.concatenate([records[name], np.asarray(final[name])[None]]) for name in records}
        segments.append(records)
        losses = np.stack([records["clean_loss"], records["test_loss"]], axis=-1).reshape(-1, count, 2)
        first_losses = losses[0] if first_losses is None else first_losses
        broken = ~np.isfinite(losses).all(axis=-1) | (losses.max(axis=-1) > 1e12 * (1.0 + first_losses.max(axis=-1)))
        steps_taken = np.asarray(records["step"]).reshape(-1, count)
        for run in np.flatnonzero(broken.any(axis=0)):
            if diverged[run] is None:
                diverged[run] = int(steps_taken[np.argmax(broken[:, run]), run])
        if all(at is not None for at in diverged):
            break
        if progress is not None:
            progress(steps if last else (start + length) * every)
    records = {name: np.concatenate([segment[name] for segment in segments]) for name in segments[0]}
    return state, records, np.asarray(F_test), (diverged[0] if runs is None else diverged)


def _segment_length(config: MetaConfig) -> int:
    """Records per segment of :func:`_drive` (the length of the compiled loop's ``advances``)."""
    return max(1, -(-(int(config.steps) // int(config.record_every)) // _PROGRESS_REPORTS))


def _trajectory(problem: Problem, operator: KernelOperator, config: MetaConfig, rule: _Rule, lambda_joint: float,
                seed: int, initial_outputs, records: dict, F: np.ndarray, F_test: np.ndarray,
                k_meta_norm: np.ndarray) -> Trajectory:
    """A finished run's :class:`~dynamics.trajectory.Trajectory`: its records, final outputs ``F : (n + m, C)``
    and ``F_test : (p, C)``, the kernel's ``k_meta_norm`` (:meth:`KernelBlocks.k_meta_norm`), and every resolved
    parameter in ``config``."""
    n, m, p = problem.sizes
    C = problem.num_classes
    resolved = dataclasses.asdict(config) | {
        "eta": rule.eta, "beta": rule.beta, "seed": int(seed), "n": n, "m": m, "p": p, "num_classes": C,
        "lambda_joint": lambda_joint, "eta_stable_below": 2.0 / lambda_joint,
        "init": "zero" if initial_outputs is None else "given",
    }
    targets = _targets(problem)
    return Trajectory(
        **records,
        noisy=problem.noisy,
        label_similarity=np.sum(operator.transpose_meta(targets[n:]) * targets[:n], axis=1),
        k_meta_norm=k_meta_norm,
        outputs=F[:n], meta_outputs=F[n:], test_outputs=F_test,
        config=resolved,
    )
