"""Meta-Weight-Net (Shu et al. 2019): the weight of an example is a small network of its loss (docs/theory.md
section 2.1).

Free weights (docs/theory.md section 2) give every training example its own
weight ``w_i``, moved by the meta-gradient. Meta-Weight-Net (MWN) replaces
them with a weighting network of the example's loss,

    w_i = V_theta(l_i) = sigmoid(W2 relu(W1 l_i + b1) + b2),   W1 (H, 1), b1 (H,), W2 (1, H), b2 (1,)

(``H = 100`` as in Shu et al.), whose parameters ``theta`` receive the
meta-gradient of the same one-step look-ahead. As in Shu et al.'s code, the
loss enters ``V`` as a value (detached): the look-ahead's model gradient is
``sum_i V(l_i) grad l_i``, the free-weight look-ahead at ``w = V(l)``. One
step, full batch:

1. losses ``l_i`` of the current outputs; weights ``w = V_theta(l)``;
2. look-ahead ``F_meta_hat(theta) = F_meta - eta (K_VX (w * R) + gamma K_VV R_meta)``
   (function space; for a finite network, a real gradient step on its parameters);
3. ``theta <- theta - (beta / (eta n)) dL_meta(F_meta_hat(theta)) / dtheta``, where
   ``dL_meta/dtheta = sum_i (dL_meta/dw_i) dV(l_i)/dtheta`` and ``dL_meta/dw_i =
   -(eta/m) score_i`` is exactly the free-weight meta-gradient: V's parameters move by
   ``(beta/m) mean_i score_i grad_theta V(l_i)``, the mean over examples of what free
   weights would move by, sent through V's Jacobian;
4. model step with the new weights ``w' = V_theta'(l)`` (same losses):
   ``F <- F - eta (K_[X;V],X (w' * R) + gamma K_[X;V],V R_meta)``.

No clipping is needed (a sigmoid lies in ``(0, 1)``) and the weights are not
normalised by their sum: Shu et al.'s published ``MW-Net.py`` trains on
``mean_i V(l_i) l_i`` (an earlier release divided by ``sum_i V(l_i)``), and the
repository's free weights enter the weighted SUM ``sum_i w_i l_i``, so that the
two differ only in how the weights are parametrised.

Two implementations of the same dynamics:

- :func:`simulate_mwn`: the linearized model, exact in function space over a
  kernel operator (:mod:`dynamics.operators`), in JAX; the meta-gradient with
  respect to ``theta`` is ``jax.grad`` through the function-space look-ahead;
- :func:`train_finite_mwn`: a finite-width torch network
  (:class:`dynamics.finite.FiniteNetwork`), float64, whose meta-gradient is
  automatic differentiation through the real parameter-space look-ahead
  (a gradient of a gradient), with V's parameters as the leaves.

From the same ``theta_0`` (:func:`init_weight_net`) the finite trajectory
tends to the linearized one as the width grows (claim C8 for MWN). Both return
an :class:`MWNRun`, whose :class:`~dynamics.trajectory.Trajectory` has
``config["variant"] == "mwn"``; its ``score`` is the free-weight meta score at
``w = V(l)`` (the signal V receives, docs/theory.md section 3), and the run adds
V's own velocities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from dynamics.checks import integer
from dynamics.config import check_run_knobs
from dynamics.finite import NetworkConfig, analytic_kernel, scalar_empirical_ntk
from dynamics.finite import init as init_network
from dynamics.operators import KernelBlocks, KernelOperator
from dynamics.problem import Problem
from dynamics.simulator import DivergenceError, _float64, default_eta
from dynamics.trajectory import Trajectory

#: Parameter names of the weighting network and their shapes for ``H`` hidden units (torch ``nn.Linear`` layout).
WEIGHT_NET_SHAPES = {"W1": lambda H: (H, 1), "b1": lambda H: (H,), "W2": lambda H: (1, H), "b2": lambda H: (1,)}
_PROGRESS_REPORTS = 50


@dataclasses.dataclass(frozen=True)
class MWNConfig:
    """The knobs of one Meta-Weight-Net run (docs/theory.md section 2.1), full batch.

    loss : ``"mse"`` or ``"ce"``.
    eta : model step size; ``None``: :func:`dynamics.simulator.default_eta` of the (analytic) kernel.
    beta : meta step size: ``theta <- theta - (beta / (eta n)) dL_meta/dtheta``, so that V's parameters move by
        ``(beta/m) mean_i score_i grad_theta V(l_i)`` (free weights move by ``(beta/m) score_i``).
    gamma : weight of the clean-subset loss in the model's training loss.
    hidden : hidden units ``H`` of V (100 in Shu et al.).
    steps : number of steps.  record_every : record every k-th step (and the final state).
    """

    loss: str = "mse"
    eta: float | None = None
    beta: float = 1.0
    gamma: float = 1.0
    hidden: int = 100
    steps: int = 2000
    record_every: int = 1

    def __post_init__(self):
        check_run_knobs(self)
        integer("hidden", self.hidden, 1)


def init_weight_net(rng: np.random.Generator, hidden: int = 100) -> dict[str, np.ndarray]:
    """``theta_0`` of V, float64, drawn as torch's ``nn.Linear`` default (Shu et al.'s initialisation).

    Every weight and bias of a layer with ``fan_in`` inputs is uniform on
    ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``: ``W1, b1`` on ``[-1, 1]``, ``W2, b2`` on
    ``[-1/sqrt(H), 1/sqrt(H)]``. V then starts near ``1/2`` at every loss (the free
    weights' default ``w0``).

    Returns
    -------
    ``{"W1": (H, 1), "b1": (H,), "W2": (1, H), "b2": (1,)}``.
    """
    H = integer("hidden", hidden, 1)
    bound = 1.0 / np.sqrt(H)
    return {"W1": rng.uniform(-1.0, 1.0, (H, 1)), "b1": rng.uniform(-1.0, 1.0, H),
            "W2": rng.uniform(-bound, bound, (1, H)), "b2": rng.uniform(-bound, bound, 1)}


def _check_theta(theta: dict, hidden: int) -> dict[str, np.ndarray]:
    theta = {name: np.asarray(theta[name], dtype=np.float64) for name in WEIGHT_NET_SHAPES}
    for name, shape in WEIGHT_NET_SHAPES.items():
        if theta[name].shape != shape(hidden):
            raise ValueError(f"theta[{name!r}] must have shape {shape(hidden)} (hidden={hidden}), "
                             f"got {theta[name].shape}")
    return theta


def weight_net(theta, losses):
    """``V_theta(l) : (k,)`` of ``losses : (k,)``, in JAX (``theta`` as :func:`init_weight_net` returns)."""
    hidden = jax.nn.relu(losses[:, None] * theta["W1"][:, 0] + theta["b1"])
    return jax.nn.sigmoid(hidden @ theta["W2"][0] + theta["b2"][0])


def weight_net_torch(theta: dict[str, torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
    """``V_theta(l) : (k,)`` of ``losses : (k,)``, in torch (the same network as :func:`weight_net`)."""
    hidden = torch.relu(losses[:, None] * theta["W1"][:, 0] + theta["b1"])
    return torch.sigmoid(hidden @ theta["W2"][0] + theta["b2"][0])


@dataclasses.dataclass(frozen=True, eq=False)
class MWNRun:
    """A Meta-Weight-Net run: its trajectory and what free weights do not have.

    trajectory : the recorded run (``score`` is the free-weight meta score at ``w = V(l)``;
        ``config["variant"] == "mwn"``).
    theta_velocity : (T,) ``||theta_{t+1} - theta_t||_2`` of the step entering each record.
    weight_velocity : (T,) ``max_i |V_{theta_{t+1}}(l_i) - V_{theta_t}(l_i)|``, the weights' motion from V's
        update at the losses of that state (the analogue of free weights' velocity; the weights also move because
        the losses do).
    meta_gradient_norm : (T,) ``||dL_meta/dtheta||_2``.
    theta : the final parameters of V, numpy float64.
    """

    trajectory: Trajectory
    theta_velocity: np.ndarray
    weight_velocity: np.ndarray
    meta_gradient_norm: np.ndarray
    theta: dict


def _records_of(steps: int, every: int) -> list[int]:
    return sorted(set(range(0, (steps // every) * every, every)) | {steps})


def _group_mean(values, mask):
    return values[:, mask].mean(axis=1) if mask.any() else np.full(values.shape[0], np.nan)


def _trajectory(problem: Problem, series: dict, outputs: np.ndarray, label_similarity, k_meta_norm, config: dict
                ) -> Trajectory:
    n, m, _ = problem.sizes
    noisy = problem.noisy
    train_losses = series["train_losses"]
    return Trajectory(
        step=np.asarray(series["step"], dtype=np.int64), w=series["w"], score=series["score"],
        residual_norm=series["residual_norm"], clean_loss=series["clean_loss"],
        coupling_norm=series["coupling_norm"], train_loss_clean=_group_mean(train_losses, ~noisy),
        train_loss_noisy=_group_mean(train_losses, noisy), test_loss=series["test_loss"],
        test_accuracy=series["test_accuracy"], flip_rate=np.full(len(series["step"]), np.nan), noisy=noisy,
        label_similarity=label_similarity, k_meta_norm=k_meta_norm, outputs=outputs[:n],
        meta_outputs=outputs[n:n + m], test_outputs=outputs[n + m:], config=config)


def _resolved(config: MWNConfig, eta: float, lambda_joint: float, problem: Problem, theta0: dict, **extra) -> dict:
    n, m, p = problem.sizes
    return dataclasses.asdict(config) | {
        "eta": float(eta), "variant": "mwn", "weight_net": f"1 -> {config.hidden} -> 1, relu, sigmoid",
        "w0": "V_theta0(l_0)", "theta0_norm": float(np.sqrt(sum(float((v ** 2).sum()) for v in theta0.values()))),
        "n": n, "m": m, "p": p, "num_classes": problem.num_classes, "problem": problem.name,
        "lambda_joint": float(lambda_joint), "eta_stable_below": 2.0 / float(lambda_joint), "init": "zero",
        "perturb_draws": 0, "flip_rate": "not measured (NaN) for Meta-Weight-Net runs",
        "batch": "full",
    } | extra


# ----------------------------------------------------------------------------- linearized (JAX, function space)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["F", "theta", "G_sum", "R_meta_sum", "F_test0", "t"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class MWNState:
    """The linearized MWN state entering step ``t``, a JAX pytree of float64 arrays.

    F : (n + m, C) training and clean outputs.  theta : V's parameters (:func:`init_weight_net`).
    G_sum : (n, C) sum of the weighted training residuals of the steps taken.  R_meta_sum : (m, C) sum of the
    clean residuals.  F_test0 : (p, C) initial test outputs (test outputs are ``F_test0 - eta (K_TX G_sum +
    gamma K_TV R_meta_sum)``, as in :class:`dynamics.simulator.SimState`).  t : () steps taken.
    """

    F: jax.Array
    theta: dict
    G_sum: jax.Array
    R_meta_sum: jax.Array
    F_test0: jax.Array
    t: jax.Array


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A jitted step's knobs: ``loss`` is static (compiled once per value); ``eta``, ``beta`` and ``gamma`` are
    traced float64 scalars, so that a new step size does not compile the loop anew."""

    loss: str
    eta: jax.Array
    beta: jax.Array
    gamma: jax.Array

    @classmethod
    def of(cls, config: MWNConfig, eta: float) -> _Rule:
        return cls(config.loss, *(jnp.asarray(float(value), dtype=jnp.float64)
                                  for value in (eta, config.beta, config.gamma)))


jax.tree_util.register_dataclass(_Rule, data_fields=["eta", "beta", "gamma"], meta_fields=["loss"])


def _residual_and_loss(loss: str, F, Y):
    """``(dloss/doutput (k, C), per-example loss (k,))`` of outputs ``F`` against one-hot ``Y`` (docs/theory.md
    section 0)."""
    if loss == "mse":
        R = F - Y
        return R, 0.5 * jnp.sum(R * R, axis=-1)
    log_p = jax.nn.log_softmax(F, axis=-1)
    return jnp.exp(log_p) - Y, -jnp.sum(Y * log_p, axis=-1)


def _lookahead_meta_loss(rule: _Rule, kernel, theta, losses, R, R_meta, F_meta, Y_meta):
    """``L_meta(F_meta_hat(theta))``: the mean clean loss after the function-space look-ahead with ``w = V(l)``."""
    w = weight_net(theta, losses)
    F_meta_hat = F_meta - rule.eta * kernel.apply_meta_rows(w[:, None] * R, R_meta, rule.gamma)
    return jnp.mean(_residual_and_loss(rule.loss, F_meta_hat, Y_meta)[1])


def _pieces(rule: _Rule, Y, state: MWNState):
    n = state.G_sum.shape[0]
    R, losses = _residual_and_loss(rule.loss, state.F[:n], Y[:n])
    F_meta, Y_meta = state.F[n:], Y[n:]
    R_meta, meta_losses = _residual_and_loss(rule.loss, F_meta, Y_meta)
    return R, losses, F_meta, Y_meta, R_meta, meta_losses


def _theta_step(rule: _Rule, kernel, theta, losses, R, R_meta, F_meta, Y_meta):
    """``(theta_{t+1}, dL_meta/dtheta)``: ``jax.grad`` through the look-ahead, then the step of ``beta / (eta n)``."""
    gradient = jax.grad(lambda th: _lookahead_meta_loss(rule, kernel, th, losses, R, R_meta, F_meta, Y_meta))(theta)
    rate = rule.beta / (rule.eta * losses.shape[0])
    return jax.tree.map(lambda value, g: value - rate * g, theta, gradient), gradient


def _step(rule: _Rule, operator: KernelOperator, Y, state: MWNState) -> MWNState:
    kernel = operator.select(None, None)
    R, losses, F_meta, Y_meta, R_meta, _ = _pieces(rule, Y, state)
    theta, _ = _theta_step(rule, kernel, state.theta, losses, R, R_meta, F_meta, Y_meta)
    G = weight_net(theta, losses)[:, None] * R
    F = state.F - rule.eta * kernel.apply(G, R_meta, rule.gamma)
    return dataclasses.replace(state, F=F, theta=theta, G_sum=state.G_sum + G, R_meta_sum=state.R_meta_sum + R_meta,
                               t=state.t + 1)


def _test_outputs(rule: _Rule, operator: KernelOperator, state: MWNState):
    return state.F_test0 - rule.eta * operator.apply_test(state.G_sum, state.R_meta_sum, rule.gamma)


def _record(rule: _Rule, operator: KernelOperator, data, state: MWNState):
    kernel = operator.select(None, None)
    Y = data["Y"]
    R, losses, F_meta, Y_meta, R_meta, meta_losses = _pieces(rule, Y, state)
    w = weight_net(state.theta, losses)
    F_meta_hat = F_meta - rule.eta * kernel.apply_meta_rows(w[:, None] * R, R_meta, rule.gamma)
    R_meta_hat = _residual_and_loss(rule.loss, F_meta_hat, Y_meta)[0]
    score = jnp.sum(R * kernel.transpose_meta_rows(R_meta_hat), axis=-1)
    theta_next, gradient = _theta_step(rule, kernel, state.theta, losses, R, R_meta, F_meta, Y_meta)
    F_test = _test_outputs(rule, operator, state)
    _, test_losses = _residual_and_loss(rule.loss, F_test, data["Y_test"])

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(tree)))

    return {
        "step": state.t, "w": w, "score": score, "residual_norm": jnp.linalg.norm(R, axis=-1),
        "clean_loss": meta_losses.mean(), "coupling_norm": jnp.linalg.norm(R_meta_hat), "train_losses": losses,
        "test_loss": test_losses.mean(), "test_accuracy": jnp.mean(jnp.argmax(F_test, axis=-1) == data["y_test"]),
        "theta_velocity": norm(jax.tree.map(jnp.subtract, theta_next, state.theta)),
        "weight_velocity": jnp.max(jnp.abs(weight_net(theta_next, losses) - w)),
        "meta_gradient_norm": norm(gradient),
    }


@jax.jit
def _segment(rule: _Rule, operator, data, state: MWNState, advances):
    """For each ``k`` of ``advances : (L,)``: record, then take ``k`` steps."""

    def record_and_advance(state, count):
        record = _record(rule, operator, data, state)
        return jax.lax.fori_loop(0, count, lambda _, s: _step(rule, operator, data["Y"], s), state), record

    return jax.lax.scan(record_and_advance, state, advances)


_step_jit = jax.jit(_step)


@jax.jit
def _meta_gradient_jit(rule: _Rule, operator, Y, state: MWNState):
    R, losses, F_meta, Y_meta, R_meta, _ = _pieces(rule, Y, state)
    return _theta_step(rule, operator.select(None, None), state.theta, losses, R, R_meta, F_meta, Y_meta)[1]


def _targets(problem: Problem) -> np.ndarray:
    return np.eye(problem.num_classes)[np.concatenate([problem.y_noisy, problem.y_meta])]


def _resolve_eta(config: MWNConfig, operator) -> tuple[float, float]:
    eta_default, lambda_joint = default_eta(operator, config.gamma)
    return (eta_default if config.eta is None else float(config.eta)), lambda_joint


@_float64
def init(problem: Problem, operator: KernelOperator, theta0: dict, config: MWNConfig = MWNConfig()) -> MWNState:
    """The linearized state before the first step: zero outputs (the centred network), V at ``theta0``."""
    if tuple(operator.sizes) != tuple(problem.sizes):
        raise ValueError(f"the kernel operator is for (n, m, p) = {tuple(operator.sizes)}, the problem has "
                         f"{tuple(problem.sizes)}")
    n, m, p = problem.sizes
    C = problem.num_classes
    theta = {name: jnp.asarray(value) for name, value in _check_theta(theta0, config.hidden).items()}
    return MWNState(F=jnp.zeros((n + m, C), dtype=jnp.float64), theta=theta,
                    G_sum=jnp.zeros((n, C), dtype=jnp.float64), R_meta_sum=jnp.zeros((m, C), dtype=jnp.float64),
                    F_test0=jnp.zeros((p, C), dtype=jnp.float64), t=jnp.zeros((), dtype=jnp.int64))


@_float64
def step(state: MWNState, problem: Problem, operator: KernelOperator, config: MWNConfig) -> MWNState:
    """One linearized MWN step (docs/theory.md section 2.1, steps 1-4), jitted; ``config.eta`` must be set."""
    if config.eta is None:
        raise ValueError("step needs config.eta; resolve it once: dynamics.simulator.default_eta(operator, gamma)")
    rule = _Rule.of(config, config.eta)
    return _step_jit(rule, operator, jnp.asarray(_targets(problem)), state)


@_float64
def meta_gradient(state: MWNState, problem: Problem, operator: KernelOperator, config: MWNConfig) -> dict:
    """``dL_meta/dtheta`` at ``state`` (``jax.grad`` through the function-space look-ahead), numpy float64."""
    if config.eta is None:
        raise ValueError("meta_gradient needs config.eta")
    gradient = _meta_gradient_jit(_Rule.of(config, config.eta), operator, jnp.asarray(_targets(problem)), state)
    return {name: np.asarray(value) for name, value in gradient.items()}


@_float64
def simulate_mwn(problem: Problem, operator: KernelOperator, theta0: dict, config: MWNConfig = MWNConfig(), *,
                 progress: Callable[[int], None] | None = None) -> MWNRun:
    """Meta-Weight-Net on the linearized model, exactly, in function space (docs/theory.md section 2.1).

    Parameters
    ----------
    problem : the noisy-label problem (sizes ``n, m, p``, ``C`` classes).
    operator : its kernel (:class:`dynamics.operators.KernelBlocks` or :class:`~dynamics.operators.FeatureKernel`).
    theta0 : V's initial parameters (:func:`init_weight_net`).
    config : the knobs; ``eta = None`` takes :func:`dynamics.simulator.default_eta`.
    progress : called with the number of steps taken, about fifty times.

    Returns
    -------
    MWNRun; rows are recorded as in :func:`dynamics.simulator.simulate` (row ``t`` is the state entering step
    ``step[t]``, the last row the final state).

    Raises
    ------
    DivergenceError : a recorded loss stopped being finite.
    """
    state = init(problem, operator, theta0, config)
    n, m, p = problem.sizes
    C = problem.num_classes
    eta, lambda_joint = _resolve_eta(config, operator)
    rule = _Rule.of(config, eta)
    data = jax.device_put({"Y": _targets(problem), "Y_test": np.eye(C)[problem.y_test], "y_test": problem.y_test})
    device_operator = jax.device_put(operator)
    steps, every = int(config.steps), int(config.record_every)
    # One compiled loop: "record, then take k steps" for each k of `advances`. Records 0 .. scanned - 1 are those at
    # steps 0, e, 2e, ...; then (when steps % e > 0) a discarded record and the remaining steps; then the final
    # record; the rest of the last segment records the final state again (advance 0) and is dropped.
    scanned, remainder = divmod(steps, every)
    final_index = scanned + (1 if remainder else 0)
    length = max(1, -(-(final_index + 1) // _PROGRESS_REPORTS))
    advances = np.zeros(-(-(final_index + 1) // length) * length, dtype=np.int64)
    advances[:scanned] = every
    advances[scanned] = remainder
    kept = np.r_[np.arange(scanned), final_index]
    segments = []
    for start in range(0, len(advances), length):
        state, records = _segment(rule, device_operator, data, state, jnp.asarray(advances[start:start + length]))
        rows = kept[(kept >= start) & (kept < start + length)] - start
        segments.append({name: np.asarray(value)[rows] for name, value in records.items()})
        if progress is not None:
            progress(min(steps, int(advances[:start + length].sum())))
    series = {name: np.concatenate([segment[name] for segment in segments]) for name in segments[0]}
    if not (np.isfinite(series["clean_loss"]).all() and np.isfinite(series["test_loss"]).all()):
        at = int(series["step"][np.argmax(~(np.isfinite(series["clean_loss"]) & np.isfinite(series["test_loss"])))])
        raise DivergenceError(f"the Meta-Weight-Net simulation diverged by step {at}: eta={eta:.4g} (stable below "
                              f"{2.0 / lambda_joint:.4g}) or beta={config.beta:g} is too large")
    if progress is not None:
        progress(steps)
    Y_meta = _targets(problem)[n:]
    F_test = np.asarray(state.F_test0) - eta * np.asarray(operator.apply_test(np.asarray(state.G_sum),
                                                                               np.asarray(state.R_meta_sum),
                                                                               float(config.gamma)))
    outputs = np.concatenate([np.asarray(state.F), F_test])
    trajectory = _trajectory(problem, series, outputs,
                             operator.transpose_meta(Y_meta)[np.arange(n), problem.y_noisy], operator.k_meta_norm(),
                             _resolved(config, eta, lambda_joint, problem, theta0, model="linearized"))
    return MWNRun(trajectory, series["theta_velocity"], series["weight_velocity"], series["meta_gradient_norm"],
                  {name: np.asarray(value) for name, value in state.theta.items()})


# ----------------------------------------------------------------------------- finite width (torch, autodiff)


def _torch_residual_and_loss(loss: str, F: torch.Tensor, Y: torch.Tensor):
    if loss == "mse":
        R = F - Y
        return R, 0.5 * (R * R).sum(dim=-1)
    log_p = torch.log_softmax(F, dim=-1)
    return log_p.exp() - Y, -(Y * log_p).sum(dim=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteMetaGradient:
    """What one finite-width look-ahead gives (all detached).

    gradient : ``dL_meta/dtheta`` (V's parameter names).  dL_meta_dw : (n,) the free-weight meta-gradient at
    ``w = V(l)``.  losses : (n + m,) per-example losses at ``theta_t`` (training, then clean).  meta_loss :
    ``L_meta`` after the look-ahead.  meta_residual_hat : (m, C) the clean residual after it.
    """

    gradient: dict
    dL_meta_dw: torch.Tensor
    losses: torch.Tensor
    meta_loss: torch.Tensor
    meta_residual_hat: torch.Tensor


def finite_meta_gradient(net, params: dict[str, torch.Tensor], theta: dict[str, torch.Tensor], *, loss: str,
                         eta: float, gamma: float, keep_graph: bool = False):
    """V's meta-gradient for a finite network, by automatic differentiation through the look-ahead.

    ``theta_hat(theta_V) = theta - eta grad_theta [sum_i V(l_i) l_i + gamma sum_j l_meta_j](theta)`` (``l``
    detached where it enters V, as in Shu et al.), ``L_meta = mean_j l_meta_j(theta_hat)``, differentiated with
    respect to V's parameters (leaves) through the inner gradient (``create_graph``), full batch.

    Parameters
    ----------
    net : a :class:`dynamics.finite.FiniteNetwork`.  params : its parameters ``theta_t``.
    theta : V's parameters, tensors of the network's dtype.
    keep_graph : keep the forward pass at ``theta_t`` and also return a function ``w (n,) -> {name: grad_theta
        [sum_i w_i l_i + gamma sum_j l_meta_j]}``, so that the model step reuses it.

    Returns
    -------
    FiniteMetaGradient (and, with ``keep_graph``, a function ``w (n,) -> {name: dL_train/dtheta}``).
    """
    n, m = net.n, net.m
    rows, meta_rows = slice(0, n + m), net.meta_rows
    targets = net.targets[rows]
    with torch.enable_grad():
        model = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        v = {name: value.detach().requires_grad_(True) for name, value in theta.items()}
        _, losses = _torch_residual_and_loss(loss, net.outputs(model, rows), targets)
        w = weight_net_torch(v, losses[:n].detach())
        clean_term = gamma * losses[n:].sum()
        names = list(model)
        inner = torch.autograd.grad((w * losses[:n]).sum() + clean_term, [model[k] for k in names], create_graph=True)
        model_hat = {k: model[k] - eta * g for k, g in zip(names, inner)}
        residual_hat, meta_losses = _torch_residual_and_loss(loss, net.outputs(model_hat, meta_rows),
                                                             net.targets[meta_rows])
        meta_loss = meta_losses.mean()
        v_names = list(v)
        *gradient, dL_meta_dw = torch.autograd.grad(meta_loss, [v[k] for k in v_names] + [w], retain_graph=keep_graph)
    result = FiniteMetaGradient({k: g.detach() for k, g in zip(v_names, gradient)}, dL_meta_dw.detach(),
                                losses.detach(), meta_loss.detach(), residual_hat.detach())
    if not keep_graph:
        return result

    def model_gradient(weights: torch.Tensor) -> dict:
        with torch.enable_grad():
            grads = torch.autograd.grad((weights * losses[:n]).sum() + clean_term, [model[k] for k in names])
        return dict(zip(names, grads))

    return result, model_gradient


def _finite_record(net, params, theta, config: MWNConfig, eta: float):
    """One record of docs/theory.md section 3 and the step's pieces: ``(record, theta_next, w_next, model_grad)``."""
    n, m = net.n, net.m
    meta, model_gradient = finite_meta_gradient(net, params, theta, loss=config.loss, eta=eta, gamma=config.gamma,
                                                keep_graph=True)
    rate = config.beta / (eta * n)
    theta_next = {name: value - rate * meta.gradient[name] for name, value in theta.items()}
    train_losses = meta.losses[:n]
    with torch.no_grad():
        w = weight_net_torch(theta, train_losses)
        w_next = weight_net_torch(theta_next, train_losses)
        F = net.outputs(params, slice(None))
        R, losses = _torch_residual_and_loss(config.loss, F, net.targets)
    test = slice(n + m, None)
    record = {
        "step": None, "w": w, "score": -(m / eta) * meta.dL_meta_dw, "residual_norm": torch.linalg.norm(R[:n], dim=-1),
        "clean_loss": losses[n:n + m].mean(), "coupling_norm": torch.linalg.norm(meta.meta_residual_hat),
        "train_losses": losses[:n], "test_loss": losses[test].mean(),
        "test_accuracy": (F[test].argmax(dim=-1) == net.targets[test].argmax(dim=-1)).to(F.dtype).mean(),
        "theta_velocity": torch.sqrt(sum(((theta_next[k] - theta[k]) ** 2).sum() for k in theta)),
        "weight_velocity": (w_next - w).abs().max(),
        "meta_gradient_norm": torch.sqrt(sum((g ** 2).sum() for g in meta.gradient.values())),
    }
    return {name: (value if value is None else value.detach().to(torch.float64).cpu().numpy())
            for name, value in record.items()}, theta_next, w_next, model_gradient


def train_finite_mwn(problem: Problem, theta0: dict, config: MWNConfig = MWNConfig(),
                     network: NetworkConfig = NetworkConfig(), *,
                     generator: torch.Generator, blocks=None, progress: Callable[[int], None] | None = None) -> MWNRun:
    """Meta-Weight-Net on a finite-width torch network, exact bi-level autodiff (docs/theory.md section 2.1).

    The network is :func:`dynamics.finite.init`'s (``network``: a :class:`dynamics.finite.NetworkConfig`, centred
    by default, so that its outputs start at zero like the linearized model's); V starts at ``theta0`` in the
    network's dtype. Every step: losses, ``w = V(l)``, the look-ahead and V's meta-gradient by
    :func:`finite_meta_gradient`, V's step, then the model step with ``V_theta'(l)``.

    Parameters
    ----------
    generator : draws ``theta_0`` of the network (CPU ``torch.Generator``).
    blocks : the analytic kernel blocks of ``problem`` for ``network.spec``, which set the default ``eta``
        (computed when not given) so that both models take the same step.
    """
    theta0 = _check_theta(theta0, config.hidden)
    if blocks is None:
        blocks = KernelBlocks.from_problem(problem, analytic_kernel(network.spec))
    eta, lambda_joint = _resolve_eta(config, blocks)
    seed = int(generator.initial_seed())
    net, state = init_network(problem, network, 0.5, generator)
    params = state.params
    dtype, device = net.inputs.dtype, net.inputs.device
    theta = {name: torch.as_tensor(value, dtype=dtype, device=device) for name, value in theta0.items()}
    records, steps = [], int(config.steps)
    wanted = set(_records_of(steps, int(config.record_every)))
    for t in range(steps + 1):
        record, theta_next, w_next, model_gradient = _finite_record(net, params, theta, config, eta)
        if t in wanted:
            if not (np.isfinite(record["clean_loss"]) and np.isfinite(record["test_loss"])):
                raise DivergenceError(f"the finite Meta-Weight-Net run diverged by step {t}: eta={eta:.4g} or "
                                      f"beta={config.beta:g} is too large")
            records.append(record | {"step": np.asarray(t)})
        if t == steps:
            break
        gradient = model_gradient(w_next)
        params = {k: value.detach() - eta * gradient[k] for k, value in params.items()}
        theta = theta_next
        if progress is not None:
            progress(t + 1)
    series = {name: np.stack([record[name] for record in records]) for name in records[0]}
    n, m, _ = problem.sizes
    with torch.no_grad():
        outputs = net.outputs(params, slice(None)).to(torch.float64).cpu().numpy()
    with torch.no_grad():
        k_meta_train = scalar_empirical_ntk(net.model, problem.X_meta, problem.X)
    Y_meta = np.eye(problem.num_classes)[problem.y_meta]
    config_record = _resolved(config, eta, lambda_joint, problem, theta0, model="finite",
                              network=network.architecture, width=int(network.width), depth=int(network.spec.depth),
                              activation=network.spec.activation, seed=seed,
                              dtype=str(network.dtype).removeprefix("torch."),
                              label_similarity_kernel="output-averaged empirical NTK at theta_0")
    trajectory = _trajectory(problem, series, outputs, (k_meta_train.T @ Y_meta)[np.arange(n), problem.y_noisy],
                             np.linalg.norm(k_meta_train, axis=0), config_record)
    return MWNRun(trajectory, series["theta_velocity"], series["weight_velocity"], series["meta_gradient_norm"],
                  {name: value.detach().to(torch.float64).cpu().numpy() for name, value in theta.items()})


__all__ = ["FiniteMetaGradient", "MWNConfig", "MWNRun", "MWNState", "WEIGHT_NET_SHAPES", "finite_meta_gradient",
           "init", "init_weight_net", "meta_gradient", "simulate_mwn", "step", "train_finite_mwn", "weight_net",
           "weight_net_torch"]
