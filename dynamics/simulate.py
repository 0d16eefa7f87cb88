"""Exact meta-reweighting of a linearized network in function space (THEORY.md section 2).

For a model that is linear in its parameters, one meta-reweighting step
(look-ahead, meta-gradient, clipped weight update, model update) is exact in
function space and needs only the kernel blocks ``K_XX, K_VX, K_VV, K_TX,
K_TV``. The loop is a JAX ``lax.scan`` in float64.

Outputs of the training, clean and test sets are stacked into one ``(N, C)``
array, ``N = n + m + p``, and the kernel columns of the training and clean
sets into ``K_X = [K_XX; K_VX; K_TX] : (N, n)`` and ``K_V = [K_VX^T; K_VV;
K_TV] : (N, m)``, so the model update of all three sets is one matrix product
per step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from dynamics.problem import Problem
from dynamics.trajectory import Trajectory

jax.config.update("jax_enable_x64", True)

LOSSES = ("mse", "ce")
VARIANTS = ("meta", "l2rw", "fixed")
INITS = ("zero", "gp")
_BLOCKS = ("K_XX", "K_VX", "K_VV", "K_TX", "K_TV")


class DivergenceError(RuntimeError):
    """A run whose losses stopped being finite: the step size was too large."""


@dataclasses.dataclass(frozen=True)
class KernelBlocks:
    """The kernel blocks of THEORY.md section 2, float64.

    K_XX : (n, n) train-train.  K_VX : (m, n) meta-train.  K_VV : (m, m).
    K_TX : (p, n) test-train.  K_TV : (p, m) test-meta.
    """

    K_XX: np.ndarray
    K_VX: np.ndarray
    K_VV: np.ndarray
    K_TX: np.ndarray
    K_TV: np.ndarray

    @classmethod
    def from_problem(cls, problem: Problem, kernel_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> KernelBlocks:
        """Evaluate ``kernel_fn(x1 (a, d), x2 (b, d)) -> (a, b)`` on the problem's inputs."""
        X, V, T = problem.X, problem.X_meta, problem.X_test
        return cls(kernel_fn(X, X), kernel_fn(V, X), kernel_fn(V, V), kernel_fn(T, X), kernel_fn(T, V))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _BLOCKS}

    @classmethod
    def load(cls, path) -> KernelBlocks:
        with np.load(path) as data:
            return cls(**{name: data[name] for name in _BLOCKS})

    def lambda_max(self, gamma: float) -> float:
        """Largest eigenvalue of the joint kernel on train and clean subset weighted by ``diag(1, gamma)``.

        ``K diag(w, gamma)`` has the spectrum of ``D^1/2 K D^1/2``, which grows
        with every weight, so ``w = 1`` is the worst case over ``w`` in ``[0, 1]``.
        Lanczos on the blocks: the joint matrix is never formed.
        """
        n, m = self.K_XX.shape[0], self.K_VV.shape[0]
        root = np.sqrt(gamma)

        def matvec(v):
            v = np.ravel(v)
            top, bottom = v[:n], root * v[n:]
            return np.concatenate([self.K_XX @ top + self.K_VX.T @ bottom, root * (self.K_VX @ top + self.K_VV @ bottom)])

        operator = scipy.sparse.linalg.LinearOperator((n + m, n + m), matvec=matvec, dtype=np.float64)
        return _top_eigenvalue(operator)


def _top_eigenvalue(K) -> float:
    if K.shape[0] <= 2:
        return float(np.linalg.eigvalsh(K @ np.eye(K.shape[0]))[-1])
    v0 = np.ones(K.shape[0])  # fixed start vector: the same eigenvalue, bit for bit, every call
    return float(scipy.sparse.linalg.eigsh(K, k=1, which="LA", v0=v0, tol=1e-12)[0][0])


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Every knob of one simulation (THEORY.md section 2).

    loss : ``"mse"`` (``0.5 ||f - y||^2``) or ``"ce"`` (softmax cross-entropy).
    variant : ``"meta"`` (persistent clipped weights), ``"l2rw"`` (Ren et al.
        2018: weights ``max(score, 0)`` normalised over the batch each step, the
        look-ahead taken at ``w = 0``), ``"fixed"`` (``beta = 0``: weighted
        kernel gradient descent).
    eta : model step size; ``None`` takes ``1 / lambda_max(K_XX)``, or
        ``1 / lambda_max`` of the joint weighted kernel if that one is larger than
        twice the first (then ``1/lambda_max(K_XX)`` would not be stable).
    beta : meta step size (the weights move by ``(beta / m) * score``).
    gamma : weight of the clean-subset loss in the model's own training loss.
    w0 : initial weight of every training example.
    steps : number of steps.
    batch_size, meta_batch_size : mini-batch sizes (``None``: full batch).
    record_every : record every k-th step (and always the first and last state).
    perturb_eps, perturb_draws : the C7 protocol (relative perturbation size and
        number of draws per recorded step; ``perturb_draws = 0`` skips it).
    """

    loss: str = "mse"
    variant: str = "meta"
    eta: float | None = None
    beta: float = 1.0
    gamma: float = 1.0
    w0: float = 0.5
    steps: int = 2000
    batch_size: int | None = None
    meta_batch_size: int | None = None
    record_every: int = 1
    perturb_eps: float = 0.01
    perturb_draws: int = 4

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.eta is not None and not self.eta > 0:
            raise ValueError(f"eta must be positive, got {self.eta}")
        if self.beta < 0 or self.gamma < 0:
            raise ValueError(f"beta and gamma must be >= 0, got {self.beta} and {self.gamma}")
        if not 0 <= self.w0 <= 1:
            raise ValueError(f"w0 must lie in [0, 1], got {self.w0}")
        if int(self.steps) < 1 or int(self.record_every) < 1:
            raise ValueError(f"steps and record_every must be >= 1, got {self.steps} and {self.record_every}")
        for name in ("batch_size", "meta_batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.perturb_eps < 0 or self.perturb_draws < 0:
            raise ValueError("perturb_eps and perturb_draws must be >= 0")


def _residual_and_loss(loss: str, F: jax.Array, Y: jax.Array):
    """``(dloss/doutput (k, C), per-example loss (k,))`` of outputs ``F`` against one-hot ``Y``."""
    if loss == "mse":
        R = F - Y
        return R, 0.5 * jnp.sum(R * R, axis=-1)
    log_p = jax.nn.log_softmax(F, axis=-1)
    return jnp.exp(log_p) - Y, -jnp.sum(Y * log_p, axis=-1)


def _residual(loss, F, Y):
    return _residual_and_loss(loss, F, Y)[0]


def meta_score(loss: str, eta: float, gamma: float, w, R, R_meta, F_meta, Y_meta, K_VX, K_VV):
    """The meta score ``s_i = <r_i, c_i>`` and the look-ahead clean residual (THEORY.md section 2).

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
    F_meta_hat = F_meta - eta * (K_VX @ (w[:, None] * R) + gamma * (K_VV @ R_meta))
    R_meta_hat = _residual(loss, F_meta_hat, Y_meta)
    coupling = K_VX.T @ R_meta_hat
    return jnp.sum(R * coupling, axis=-1), R_meta_hat


@dataclasses.dataclass(frozen=True)
class _Static:
    """What the jitted loop closes over (hashable: the loop is compiled once per value)."""

    loss: str
    variant: str
    eta: float
    beta: float
    gamma: float
    n: int
    m: int
    batch_size: int | None
    meta_batch_size: int | None
    record_every: int
    chunks: int
    remainder: int
    perturb_eps: float
    perturb_draws: int
    progress: Callable[[int], None] | None


def _lookahead_weights(static: _Static, w):
    # L2RW takes the meta-gradient at w = 0 (Ren et al. 2018, eps = 0), the others at the current state.
    return jnp.zeros_like(w) if static.variant == "l2rw" else w


def _new_weights(static: _Static, w_batch, score, meta_batch_size: int):
    if static.variant == "meta":
        return jnp.clip(w_batch + static.beta / meta_batch_size * score, 0.0, 1.0)
    positive = jnp.maximum(score, 0.0)
    total = positive.sum()
    return jnp.where(total > 0, positive / jnp.where(total > 0, total, 1.0), 0.0)


def _step(static: _Static, arrays, state, t):
    """One meta-reweighting step (THEORY.md section 2, steps 1-4) on the batch drawn for step ``t``.

    ``state = (F, w, G_sum, R_meta_sum)``: outputs ``F : (n + m, C)`` of the
    training and clean sets, weights ``w : (n,)``, and the running sums of the
    weighted training residuals ``G`` and of the clean residuals, from which
    test outputs are recovered at recorded steps only (the test set never feeds
    back into the dynamics).
    """
    K_X, K_V, Y, key = arrays["K_X"], arrays["K_V"], arrays["Y"], arrays["key"]
    F, w, G_sum, R_meta_sum = state
    n, m = static.n, static.m
    full_batch = static.batch_size is None
    full_meta = static.meta_batch_size is None
    # Full batches use static slices: a gather of all rows would copy the kernel every step.
    batch = slice(None) if full_batch else jax.random.choice(
        jax.random.fold_in(key, 2 * t), n, (static.batch_size,), replace=False)
    meta_batch = slice(n, n + m) if full_meta else n + jax.random.choice(
        jax.random.fold_in(key, 2 * t + 1), m, (static.meta_batch_size,), replace=False)
    K_XB = K_X if full_batch else K_X[:, batch]
    K_VB = K_V if full_meta else K_V[:, meta_batch - n]
    R = _residual(static.loss, F[:n][batch], Y[:n][batch])
    F_meta, Y_meta = F[meta_batch], Y[meta_batch]
    R_meta = _residual(static.loss, F_meta, Y_meta)
    w_batch = w[batch]
    if static.variant != "fixed":
        score, _ = meta_score(static.loss, static.eta, static.gamma, _lookahead_weights(static, w_batch), R, R_meta,
                              F_meta, Y_meta, K_XB[meta_batch], K_VB[meta_batch])
        w_batch = _new_weights(static, w_batch, score, R_meta.shape[0])
        w = w_batch if full_batch else w.at[batch].set(w_batch)
    G = w_batch[:, None] * R
    F = F - static.eta * (K_XB @ G + static.gamma * (K_VB @ R_meta))
    G_sum = G_sum + G if full_batch else G_sum.at[batch].add(G)
    R_meta_sum = R_meta_sum + R_meta if full_meta else R_meta_sum.at[meta_batch - n].add(R_meta)
    return F, w, G_sum, R_meta_sum


def _test_outputs(static: _Static, arrays, state):
    _, _, G_sum, R_meta_sum = state
    return arrays["F_test0"] - static.eta * (arrays["K_TX"] @ G_sum + static.gamma * (arrays["K_TV"] @ R_meta_sum))


def _diagnostics(static: _Static, arrays, state, t):
    """Full-batch quantities of THEORY.md section 3 at one state; ``O((m + p) n C)``, no ``K_XX`` product."""
    K_X, K_V, Y_all = arrays["K_X"], arrays["K_V"], arrays["Y"]
    noisy, y_test, perturb_key = arrays["noisy"], arrays["y_test"], arrays["perturb_key"]
    F, w = state[0], state[1]
    n = static.n
    K_VX, K_VV = K_X[n:], K_V[n:]
    Y, Y_meta = Y_all[:n], Y_all[n:]
    F_test = _test_outputs(static, arrays, state)
    R, train_losses = _residual_and_loss(static.loss, F[:n], Y)
    _, meta_losses = _residual_and_loss(static.loss, F[n:], Y_meta)
    _, test_losses = _residual_and_loss(static.loss, F_test, arrays["Y_test"])
    lookahead_w = _lookahead_weights(static, w)

    def score_at(F_train, F_meta):
        return meta_score(static.loss, static.eta, static.gamma, lookahead_w, _residual(static.loss, F_train, Y),
                          _residual(static.loss, F_meta, Y_meta), F_meta, Y_meta, K_VX, K_VV)

    score, R_meta_hat = score_at(F[:n], F[n:])

    def flip(draw_key):
        # C7: perturb F and F_meta by Gaussian noise of Frobenius norm eps * ||Y_meta||_F each.
        size = static.perturb_eps * jnp.linalg.norm(Y_meta)
        k1, k2 = jax.random.split(draw_key)
        Z, Z_meta = jax.random.normal(k1, (n, Y.shape[1])), jax.random.normal(k2, Y_meta.shape)
        perturbed, _ = score_at(F[:n] + size * Z / jnp.linalg.norm(Z), F[n:] + size * Z_meta / jnp.linalg.norm(Z_meta))
        return jnp.mean(jnp.sign(perturbed) != jnp.sign(score))

    if static.perturb_draws:
        draw_keys = jax.random.split(jax.random.fold_in(perturb_key, t), static.perturb_draws)
        flip_rate = jnp.mean(jax.vmap(flip)(draw_keys))
    else:
        flip_rate = jnp.asarray(jnp.nan)

    def group_mean(values, mask):
        count = mask.sum()
        return jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1), jnp.nan)

    return {
        "step": jnp.asarray(t),
        "w": w,
        "score": score,
        "residual_norm": jnp.linalg.norm(R, axis=-1),
        "clean_loss": meta_losses.mean(),
        "coupling_norm": jnp.linalg.norm(R_meta_hat),
        "train_loss_clean": group_mean(train_losses, ~noisy),
        "train_loss_noisy": group_mean(train_losses, noisy),
        "test_loss": test_losses.mean(),
        "test_accuracy": jnp.mean(jnp.argmax(F_test, axis=-1) == y_test),
        "flip_rate": flip_rate,
    }


@functools.partial(jax.jit, static_argnums=0)
def _run(static: _Static, arrays, state):
    def run_steps(state, start, count):
        return jax.lax.fori_loop(start, start + count, lambda t, s: _step(static, arrays, s, t), state)

    def chunk(state, index):
        t = index * static.record_every
        record = _diagnostics(static, arrays, state, t)
        if static.progress is not None:
            report_every = max(1, static.chunks // 100)
            jax.lax.cond(index % report_every == 0,
                         lambda: jax.debug.callback(static.progress, t), lambda: None)
        return run_steps(state, t, static.record_every), record

    state, records = jax.lax.scan(chunk, state, jnp.arange(static.chunks))
    last_step = static.chunks * static.record_every
    state = run_steps(state, last_step, static.remainder)
    final = _diagnostics(static, arrays, state, last_step + static.remainder)
    records = jax.tree.map(lambda seq, last: jnp.concatenate([seq, last[None]]), records, final)
    return state, _test_outputs(static, arrays, state), records


def default_eta(blocks: KernelBlocks, gamma: float) -> tuple[float, float]:
    """``(eta, lambda_joint)``: THEORY.md section 5's ``1 / lambda_max(K_XX)`` unless it is unstable.

    Gradient descent on the weighted sum of MSE losses is stable while ``eta < 2 /
    lambda_joint`` (CE's Hessian in the outputs is smaller, so the same holds).
    """
    lambda_joint = blocks.lambda_max(gamma)
    eta = 1.0 / _top_eigenvalue(blocks.K_XX)
    return (eta if eta * lambda_joint < 2.0 else 1.0 / lambda_joint), lambda_joint


def gp_prior_outputs(nngp: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """One draw ``(N, C)`` of the NNGP prior: independent columns with covariance ``nngp : (N, N)``."""
    eigenvalues, eigenvectors = np.linalg.eigh(nngp)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    return factor @ rng.standard_normal((nngp.shape[0], num_classes))


def simulate(problem: Problem, blocks: KernelBlocks, config: MetaConfig = MetaConfig(), *, seed: int = 0,
             initial_outputs: np.ndarray | None = None, progress: Callable[[int], None] | None = None) -> Trajectory:
    """Run meta-reweighting of the linearized model exactly (THEORY.md sections 2-3).

    Parameters
    ----------
    problem : the noisy-label problem (sizes ``n, m, p``, ``C`` classes).
    blocks : kernel blocks of ``problem``'s inputs.
    config : the knobs; ``config.eta = None`` resolves to :func:`default_eta`.
    seed : draws the mini-batches and the C7 perturbations.
    initial_outputs : (n + m + p, C) initial outputs stacked train, clean, test
        (``None``: zero, the centred network); see :func:`gp_prior_outputs`.
    progress : called with the current step about a hundred times during the
        run (for a progress bar); the loop is compiled anew for each callable.

    Returns
    -------
    Trajectory, whose ``config`` holds every resolved parameter.

    Raises
    ------
    DivergenceError
        when a recorded loss stops being finite (the step that showed it and the
        largest stable ``eta`` are named).
    """
    n, m, p = problem.sizes
    C = problem.num_classes
    for name, size, limit in (("batch_size", config.batch_size, n), ("meta_batch_size", config.meta_batch_size, m)):
        if size is not None and size > limit:
            raise ValueError(f"{name} must be at most {limit}, got {size}")
    expected = {"K_XX": (n, n), "K_VX": (m, n), "K_VV": (m, m), "K_TX": (p, n), "K_TV": (p, m)}
    for name, shape in expected.items():
        if getattr(blocks, name).shape != shape:
            raise ValueError(f"kernel block {name} has shape {getattr(blocks, name).shape}, expected {shape}")
    eta_default, lambda_joint = default_eta(blocks, config.gamma)
    eta = eta_default if config.eta is None else float(config.eta)
    beta = 0.0 if config.variant == "fixed" else float(config.beta)
    steps, every = int(config.steps), int(config.record_every)
    static = _Static(config.loss, config.variant, eta, beta, float(config.gamma), n, m, config.batch_size,
                     config.meta_batch_size, every, steps // every, steps % every,
                     float(config.perturb_eps), int(config.perturb_draws), progress)

    Y = np.eye(C)[np.concatenate([problem.y_noisy, problem.y_meta])]
    F0 = np.zeros((n + m + p, C)) if initial_outputs is None else np.asarray(initial_outputs, dtype=np.float64)
    if F0.shape != (n + m + p, C):
        raise ValueError(f"initial_outputs must have shape {(n + m + p, C)}, got {F0.shape}")
    batch_key, perturb_key = jax.random.split(jax.random.PRNGKey(seed))
    arrays = {
        "K_X": np.concatenate([blocks.K_XX, blocks.K_VX]), "K_V": np.concatenate([blocks.K_VX.T, blocks.K_VV]),
        "K_TX": blocks.K_TX, "K_TV": blocks.K_TV, "Y": Y, "Y_test": np.eye(C)[problem.y_test],
        "F_test0": F0[n + m:], "key": batch_key, "perturb_key": perturb_key,
        "noisy": problem.noisy, "y_test": problem.y_test,
    }
    state = (jnp.asarray(F0[:n + m]), jnp.full(n, float(config.w0)), jnp.zeros((n, C)), jnp.zeros((m, C)))
    (F, *_), F_test, records = _run(static, arrays, state)
    records = {name: np.asarray(value) for name, value in records.items()}

    losses = np.stack([records["clean_loss"], records["test_loss"]], axis=1)
    broken = ~np.isfinite(losses).all(axis=1) | (losses.max(axis=1) > 1e12 * (1.0 + losses[0].max()))
    if broken.any():
        at = int(records["step"][np.argmax(broken)])
        raise DivergenceError(
            f"the simulation diverged by step {at} (losses no longer finite): eta={eta:.4g} is too large; "
            f"use eta below 2/lambda_max = {2.0 / lambda_joint:.4g}, or leave eta unset for the stable default")

    F = np.asarray(F)
    Y_meta = Y[n:]
    resolved = dataclasses.asdict(config) | {
        "eta": eta, "beta": beta, "seed": int(seed), "n": n, "m": m, "p": p, "num_classes": C,
        "lambda_joint": lambda_joint, "eta_stable_below": 2.0 / lambda_joint,
        "init": "zero" if initial_outputs is None else "given",
    }
    return Trajectory(
        **records,
        noisy=problem.noisy,
        label_similarity=(blocks.K_VX.T @ Y_meta)[np.arange(n), problem.y_noisy],
        k_meta_norm=np.linalg.norm(blocks.K_VX, axis=0),
        outputs=F[:n], meta_outputs=F[n:], test_outputs=np.asarray(F_test),
        config=resolved,
    )
