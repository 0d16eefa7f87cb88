"""Exact bi-level meta-reweighting of a finite-width network (docs/theory.md section 2, claims C1 and C8).

The linearized simulator (:mod:`dynamics.simulator`) runs docs/theory.md section 2 in
function space with a fixed kernel. Here the same four steps run literally on
a finite-width torch ``MLP`` in the NTK parametrisation
(:class:`kernels.empirical.MLP`), or on the convolutional twin
:class:`kernels.conv.ConvNet`: the look-ahead ``theta_hat(w)`` is a real
gradient step on the parameters, and ``dL_meta/dw`` is obtained by automatic
differentiation through it with ``torch.func`` (a gradient of a gradient), with
no kernel anywhere in the dynamics. Losses follow the simulator: MSE ``0.5
||f - y||^2`` or softmax cross-entropy, summed over training examples with
their weights, plus ``gamma`` times the summed clean-subset loss.

By default the network is centred, ``f(x; theta) - f(x; theta_0)``, so its
initial outputs are zero like the simulator's default; with the same ``eta``
the two then differ only through the finite-width kernel and its drift, which
is what claim C8 measures (``python -m phases.finite``).

Parameters travel as a dict of tensors in a frozen :class:`FiniteState`; the
module is used only as the architecture (through ``functional_call``)
and keeps ``theta_0``. CPU runs are float64, GPU runs float32, unless
:class:`NetworkConfig` names the dtype.

``python -m phases.finite --out DIR`` (:func:`phases.experiments.run_finite_width`)
runs claim C8: finite widths next to the linearized model, the gaps, their
log-log slope against width, phase boundaries and a figure.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import torch
from torch.func import functional_call, grad

from dynamics import simulator
from dynamics.bilevel import lookahead_meta_gradient
from dynamics.bilevel import lookahead_weights as _lookahead_weights
from dynamics.bilevel import new_weights as _new_weights
from dynamics.problem import Problem
from dynamics.simulator import DivergenceError, KernelBlocks, MetaConfig, default_eta, meta_score
from dynamics.trajectory import Trajectory
from kernels.conv import ConvNet, ConvSpec, conv_kernel
from kernels.empirical import MLP, empirical_ntk, empirical_ntk_autodiff, per_example_jacobians
from kernels.infinite import KernelSpec, kernel

OUTPUT_KERNELS = ("full", "averaged")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The finite network in the NTK parametrisation: ``MLP(d, width, C, spec)``, or ``ConvNet(width, C, spec)``
    when ``spec`` is a :class:`kernels.conv.ConvSpec`.

    width : units per hidden layer (channels per convolution layer), ``N``.
    spec : depth, activation, ``W_std``, ``b_std`` (and the image shape of a
        ConvSpec); the same spec gives the linearized model its analytic NTK
        (:func:`analytic_kernel`; ``spec.kind`` is unused here).
    centred : train ``f(x; theta) - f(x; theta_0)`` (zero initial outputs, the
        simulator's default); ``False`` trains ``f`` itself.
    device : torch device.
    precision : ``"float64"`` or ``"float32"``; ``None``: float64 on the CPU,
        float32 on anything else (GPUs are many times slower in float64).
        float32 halves the cost of a wide run; the linearized model stays float64.
    """

    width: int = 512
    spec: KernelSpec | ConvSpec = KernelSpec()
    centred: bool = True
    device: str = "cpu"
    precision: str | None = None

    def __post_init__(self):
        if int(self.width) < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device must name a torch device, got {self.device!r}") from error
        if self.precision is not None and self.precision not in DTYPES:
            raise ValueError(f"precision must be one of {tuple(DTYPES)} or None, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype:
        if self.precision is not None:
            return DTYPES[self.precision]
        return torch.float64 if torch.device(self.device).type == "cpu" else torch.float32

    @property
    def architecture(self) -> str:
        """``"cnn"`` for a :class:`kernels.conv.ConvSpec`, ``"mlp"`` otherwise."""
        return "cnn" if isinstance(self.spec, ConvSpec) else "mlp"

    def build(self, in_dim: int, out_dim: int, generator: torch.Generator) -> torch.nn.Module:
        """``theta_0`` of the network on ``(N, in_dim)`` inputs with ``out_dim`` outputs, drawn from ``generator``."""
        if isinstance(self.spec, ConvSpec):
            if in_dim != self.spec.input_dim:
                raise ValueError(f"the CNN reads {self.spec.image_shape} images ({self.spec.input_dim} values), "
                                 f"but the inputs have {in_dim}")
            return ConvNet(int(self.width), out_dim, self.spec, generator, self.dtype)
        return MLP(in_dim, int(self.width), out_dim, self.spec, generator, self.dtype)


def analytic_kernel(spec: KernelSpec | ConvSpec) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(x1 (n1, d), x2 (n2, d)) -> (n1, n2)``, the analytic NTK of the architecture ``spec`` describes
    (:func:`kernels.infinite.kernel` or :func:`kernels.conv.conv_kernel`), float64."""
    spec = dataclasses.replace(spec, kind="ntk")
    if isinstance(spec, ConvSpec):
        return lambda a, b: conv_kernel(spec, a, b)
    return lambda a, b: kernel(spec, a, b)


def scalar_empirical_ntk(model: torch.nn.Module, x1, x2=None) -> np.ndarray:
    """The output-averaged empirical NTK ``(n1, n2)`` at the module's own parameters: the closed form of an
    ``MLP`` (:func:`kernels.empirical.empirical_ntk`), automatic differentiation for any other module."""
    if isinstance(model, MLP):
        return empirical_ntk(model, x1, x2)
    # Every parameter, whether or not the module lets gradients flow to it.
    return empirical_ntk_autodiff(model, x1, x2, params={name: value.detach()
                                                         for name, value in model.named_parameters()})


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteNetwork:
    """A network bound to one problem's inputs, evaluated functionally at any parameters.

    Attributes
    ----------
    model : the architecture; its own parameters are ``theta_0`` and never change.
    inputs : (n + m + p, d), training, clean and test inputs stacked.
    targets : (n + m + p, C), one-hot observed training labels, clean labels, test labels.
    offset : (n + m + p, C), ``f(x; theta_0)`` when centred, else zeros.
    n, m, p : the sizes of the three sets.
    centred : whether ``offset`` is subtracted.
    """

    model: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    offset: torch.Tensor
    n: int
    m: int
    p: int
    centred: bool

    def outputs(self, params: dict[str, torch.Tensor], rows) -> torch.Tensor:
        """Outputs ``(k, C)`` at parameters ``params`` of the stacked rows ``rows`` (a slice or ``(k,)`` indices)."""
        return functional_call(self.model, params, (self.inputs[rows],)) - self.offset[rows]

    @property
    def train_rows(self) -> slice:
        return slice(0, self.n)

    @property
    def meta_rows(self) -> slice:
        return slice(self.n, self.n + self.m)


@dataclasses.dataclass(frozen=True, eq=False)
class FiniteState:
    """``theta_t`` (name -> tensor, the ``MLP``'s parameter names) and ``w_t : (n,)``."""

    params: dict[str, torch.Tensor]
    w: torch.Tensor


def init(problem: Problem, network: NetworkConfig, w0: float, generator: torch.Generator
         ) -> tuple[FiniteNetwork, FiniteState]:
    """Draw ``theta_0`` from ``generator`` and bind the network to ``problem``.

    Parameters
    ----------
    problem : sizes ``n, m, p``, inputs of dimension ``d``, ``C`` classes.
    network : width, architecture, centring, device.
    w0 : initial weight of every training example.
    generator : a CPU ``torch.Generator``, the only source of randomness
        (the draws do not depend on the device).

    Returns
    -------
    ``(FiniteNetwork, FiniteState)`` with ``w = w0`` everywhere.
    """
    dtype, device = network.dtype, torch.device(network.device)
    model = network.build(problem.X.shape[1], problem.num_classes, generator)
    # The dynamics differentiate with respect to the state's tensors, never the module's.
    model = model.to(device).requires_grad_(False)
    C = problem.num_classes
    inputs = torch.as_tensor(np.concatenate([problem.X, problem.X_meta, problem.X_test]), dtype=dtype, device=device)
    labels = np.concatenate([problem.y_noisy, problem.y_meta, problem.y_test])
    targets = torch.as_tensor(np.eye(C)[labels], dtype=dtype, device=device)
    with torch.no_grad():
        offset = model(inputs) if network.centred else torch.zeros_like(targets)
    n, m, p = problem.sizes
    net = FiniteNetwork(model, inputs, targets, offset, n, m, p, bool(network.centred))
    params = {name: value.detach().clone() for name, value in model.named_parameters()}
    return net, FiniteState(params, torch.full((n,), float(w0), dtype=dtype, device=device))


def _residual_and_loss(loss: str, F: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dloss/doutput (k, C), per-example loss (k,))`` of outputs ``F`` against one-hot ``Y``."""
    if loss == "mse":
        R = F - Y
        return R, 0.5 * (R * R).sum(dim=-1)
    log_p = torch.log_softmax(F, dim=-1)
    return log_p.exp() - Y, -(Y * log_p).sum(dim=-1)


def _rows(net: FiniteNetwork, batch: torch.Tensor | None, meta_batch: torch.Tensor | None):
    """Stacked rows of a training batch then a clean batch, and the training batch's size.

    Full batches are slices: indexing with all row numbers would copy the inputs every step.
    """
    if batch is None and meta_batch is None:
        return slice(0, net.n + net.m), net.n
    device = net.inputs.device
    train = torch.arange(net.n, device=device) if batch is None else batch
    meta = torch.arange(net.m, device=device) if meta_batch is None else meta_batch
    return torch.cat([train, net.n + meta]), train.shape[0]


def _train_objective(net: FiniteNetwork, loss: str, gamma: float, rows, b: int):
    """``(theta, w (b,)) -> sum_i w_i l_i + gamma sum_j l_meta_j`` over the stacked rows."""
    targets = net.targets[rows]

    def objective(params, w):
        _, losses = _residual_and_loss(loss, net.outputs(params, rows), targets)
        return (w * losses[:b]).sum() + gamma * losses[b:].sum()

    return objective


def meta_gradient(net: FiniteNetwork, params: dict[str, torch.Tensor], w: torch.Tensor, *, loss: str, eta: float,
                  gamma: float, batch: torch.Tensor | None = None, meta_batch: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``dL_meta/dw`` by automatic differentiation through the look-ahead (docs/theory.md section 2, steps 1-2).

    ``theta_hat(w) = theta - eta * grad_theta [sum_{i in B} w_i l_i + gamma
    sum_{j in B_meta} l_meta_j](theta)`` and ``L_meta(w) = mean_{j in B_meta}
    l_meta_j(theta_hat(w))``, differentiated with respect to ``w`` through the
    inner gradient by :func:`dynamics.bilevel.lookahead_meta_gradient`.

    Parameters
    ----------
    params : ``theta_t``.
    w : (b,) weights of the batch at which the meta-gradient is taken.
    batch : (b,) training indices; ``None``: all ``n``.
    meta_batch : (b_meta,) clean indices; ``None``: all ``m``.

    Returns
    -------
    dL_meta_dw : (b,); the meta score is ``-(b_meta / eta) * dL_meta_dw``.
    meta_residual_hat : (b_meta, C), the clean residual at ``theta_hat(w)``.
    """
    rows, b = _rows(net, batch, meta_batch)
    meta_rows = rows[b:] if isinstance(rows, torch.Tensor) else net.meta_rows
    meta_targets = net.targets[meta_rows]
    train_objective = _train_objective(net, loss, gamma, rows, b)
    # The state's tensors are plain values; the look-ahead differentiates with respect to fresh leaves.
    theta = {name: value.detach().requires_grad_(True) for name, value in params.items()}

    def meta_objective(params_hat):
        residual_hat, losses_hat = _residual_and_loss(loss, net.outputs(params_hat, meta_rows), meta_targets)
        return losses_hat.mean(), residual_hat.detach()

    return lookahead_meta_gradient(lambda weights: train_objective(theta, weights), theta, meta_objective, w, eta)


def _resolved_eta(config: MetaConfig) -> float:
    if config.eta is None:
        raise ValueError("config.eta must be set here (train_finite resolves eta = None)")
    return float(config.eta)


def step(net: FiniteNetwork, state: FiniteState, config: MetaConfig, *, batch: torch.Tensor | None = None,
         meta_batch: torch.Tensor | None = None, dL_meta_dw: torch.Tensor | None = None) -> FiniteState:
    """One exact bi-level meta-reweighting step (docs/theory.md section 2, steps 1-4) on one batch.

    Parameters
    ----------
    state : ``theta_t, w_t``.
    config : the knobs; ``config.eta`` must be set.
    batch : (b,) training indices, ``None`` for all; only ``w[batch]`` moves.
    meta_batch : (b_meta,) clean indices, ``None`` for all.
    dL_meta_dw : (b,) the meta-gradient at this state and batch when already
        computed (:func:`meta_gradient`), so it is not computed twice.

    Returns
    -------
    ``FiniteState`` with ``w_{t+1}`` and ``theta_{t+1} = theta_t - eta * grad_theta
    [sum_{i in B} w_{t+1,i} l_i + gamma sum_{j in B_meta} l_meta_j](theta_t)``.
    """
    eta = _resolved_eta(config)
    w_batch = state.w if batch is None else state.w[batch]
    if config.variant != "fixed":
        if dL_meta_dw is None:
            dL_meta_dw, _ = meta_gradient(net, state.params, _lookahead_weights(config.variant, w_batch),
                                          loss=config.loss, eta=eta, gamma=config.gamma, batch=batch,
                                          meta_batch=meta_batch)
        w_batch = _new_weights(config.variant, w_batch, dL_meta_dw, config.beta / eta)
    w = w_batch if batch is None else state.w.index_put((batch,), w_batch)
    rows, b = _rows(net, batch, meta_batch)
    gradient = grad(_train_objective(net, config.loss, config.gamma, rows, b))(state.params, w_batch)
    params = {name: value - eta * gradient[name] for name, value in state.params.items()}
    return FiniteState(params, w)


def sgd_step(net: FiniteNetwork, state: FiniteState, config: MetaConfig) -> FiniteState:
    """Plain weighted gradient descent, full batch: step 4 alone with the weights held fixed.

    The reference cost against which ``bench/finite.py`` times :func:`step`.
    """
    eta = _resolved_eta(config)
    rows, b = _rows(net, None, None)
    gradient = grad(_train_objective(net, config.loss, config.gamma, rows, b))(state.params, state.w)
    return FiniteState({name: value - eta * gradient[name] for name, value in state.params.items()}, state.w)


def bilevel_score(net: FiniteNetwork, state: FiniteState, *, loss: str, eta: float, gamma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch meta score from autodiff, ``score_i = -(m / eta) dL_meta/dw_i`` at ``state``.

    Returns
    -------
    score : (n,) float64.
    meta_residual_hat : (m, C) float64, the clean residual at ``theta_hat(w)``.
    """
    dL_meta_dw, residual_hat = meta_gradient(net, state.params, state.w, loss=loss, eta=eta, gamma=gamma)
    return _numpy(-(net.m / eta) * dL_meta_dw), _numpy(residual_hat)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


def _model_at(net: FiniteNetwork, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of the architecture holding ``params``, for :func:`scalar_empirical_ntk`."""
    model = copy.deepcopy(net.model)
    with torch.no_grad():
        for name, value in model.named_parameters():
            value.copy_(params[name])
    return model


def _output_ntk(net: FiniteNetwork, params: dict[str, torch.Tensor], rows1, rows2) -> torch.Tensor:
    """The matrix-valued empirical NTK ``Theta[a, c, b, c'] = J_c(x_a) . J_c'(x_b) : (k1, C, k2, C)``.

    Per-example Jacobians by ``vmap(jacrev)``: memory ``(k1 + k2) C #params``,
    meant for the small networks of the C1 check.
    """
    J1 = per_example_jacobians(net.model, net.inputs[rows1], params)
    J2 = per_example_jacobians(net.model, net.inputs[rows2], params)
    return torch.einsum("acp,bdp->acbd", J1, J2)


def _matrix_meta_score(loss: str, eta: float, gamma: float, w, R, R_meta, F_meta, Y_meta, Theta_VX, Theta_VV):
    """docs/theory.md section 2's closed form with a matrix-valued kernel ``Theta``.

    ``Theta_VX : (m, C, n, C)``, ``Theta_VV : (m, C, m, C)``; with ``Theta =
    k (x) I_C`` it is :func:`dynamics.simulator.meta_score`. Returns ``score (n,)``
    and ``R_meta_hat (m, C)``.
    """
    F_meta_hat = F_meta - eta * (torch.einsum("jcid,id->jc", Theta_VX, w[:, None] * R)
                                 + gamma * torch.einsum("jckd,kd->jc", Theta_VV, R_meta))
    R_meta_hat, _ = _residual_and_loss(loss, F_meta_hat, Y_meta)
    coupling = torch.einsum("jcid,jc->id", Theta_VX, R_meta_hat)
    return (R * coupling).sum(dim=-1), R_meta_hat


def closed_form_score(net: FiniteNetwork, state: FiniteState, *, loss: str, eta: float, gamma: float,
                      output_kernel: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """The closed-form meta score with the empirical NTK at ``theta_t`` (claim C1 for finite networks).

    docs/theory.md section 2's function-space formula, evaluated with the kernel
    of the network at ``theta_t`` instead of the infinite-width one. It differs
    from :func:`bilevel_score` only because the network's Jacobian at
    ``theta_hat`` is not the one at ``theta_t`` (and the look-ahead outputs are
    linearized), an ``O(eta)`` difference in the score.

    Parameters
    ----------
    output_kernel : ``"full"``: the matrix-valued NTK ``J_c(x) J_c'(x')^T``
        (exact as ``eta -> 0``); ``"averaged"``: the output-averaged scalar
        kernel of :func:`scalar_empirical_ntk` through
        :func:`dynamics.simulator.meta_score`. At finite width the NTK is
        ``k (x) I_C`` only up to ``O(N^(-1/2))`` (cross-output blocks, unequal
        per-output kernels), so the averaged kernel adds an ``eta``-independent
        error of that size.

    Returns
    -------
    score : (n,) float64.
    meta_residual_hat : (m, C) float64, the linearized look-ahead clean residual.
    """
    if output_kernel not in OUTPUT_KERNELS:
        raise ValueError(f"output_kernel must be one of {OUTPUT_KERNELS}, got {output_kernel!r}")
    train, meta = net.train_rows, net.meta_rows
    with torch.no_grad():
        F = net.outputs(state.params, slice(0, net.n + net.m))
    Y, Y_meta = net.targets[train], net.targets[meta]
    R, _ = _residual_and_loss(loss, F[train], Y)
    F_meta = F[meta]
    R_meta, _ = _residual_and_loss(loss, F_meta, Y_meta)
    if output_kernel == "averaged":
        model = _model_at(net, state.params)
        V, X = net.inputs[meta], net.inputs[train]
        score, residual_hat = meta_score(loss, eta, gamma, _numpy(state.w), _numpy(R), _numpy(R_meta),
                                         _numpy(F_meta), _numpy(Y_meta), scalar_empirical_ntk(model, V, X),
                                         scalar_empirical_ntk(model, V))
        return np.asarray(score), np.asarray(residual_hat)
    with torch.no_grad():
        Theta_VX = _output_ntk(net, state.params, meta, train)
        Theta_VV = _output_ntk(net, state.params, meta, meta)
        score, residual_hat = _matrix_meta_score(loss, eta, gamma, state.w, R, R_meta, F_meta, Y_meta,
                                                 Theta_VX, Theta_VV)
    return _numpy(score), _numpy(residual_hat)


def closed_form_weight_step(net: FiniteNetwork, state: FiniteState, config: MetaConfig, *,
                            output_kernel: str = "full") -> np.ndarray:
    """``w_{t+1} : (n,)`` from the closed form at ``theta_t`` (full batch), to set against :func:`step`.

    ``clip(w + (beta / m) * score, 0, 1)`` with :func:`closed_form_score`
    (``variant="meta"``; ``"l2rw"`` normalises the positive part of the score
    taken at ``w = 0``; ``"fixed"`` returns ``w``).
    """
    eta = _resolved_eta(config)
    if config.variant == "fixed":
        return _numpy(state.w)
    lookahead = FiniteState(state.params, _lookahead_weights(config.variant, state.w))
    score, _ = closed_form_score(net, lookahead, loss=config.loss, eta=eta, gamma=config.gamma,
                                 output_kernel=output_kernel)
    dL_meta_dw = torch.as_tensor(-(eta / net.m) * score, dtype=state.w.dtype, device=state.w.device)
    return _numpy(_new_weights(config.variant, state.w, dL_meta_dw, config.beta / eta))


def _record(net: FiniteNetwork, state: FiniteState, config: MetaConfig, t: int) -> tuple[dict, torch.Tensor]:
    """The full-batch quantities of docs/theory.md section 3 at one state, and the meta-gradient they used.

    The score is the autodiff one, ``-(m / eta) dL_meta/dw`` at the
    look-ahead weights; the coupling norm is ``||R_meta_hat||_F`` of the real
    (not linearized) look-ahead. ``flip_rate`` is NaN: C7 perturbs the
    outputs, which are not the state of a finite network.
    """
    eta = _resolved_eta(config)
    n, m = net.n, net.m
    dL_meta_dw, residual_hat = meta_gradient(net, state.params, _lookahead_weights(config.variant, state.w),
                                             loss=config.loss, eta=eta, gamma=config.gamma)
    with torch.no_grad():
        F = net.outputs(state.params, slice(None))
    R, losses = _residual_and_loss(config.loss, F, net.targets)
    train_losses, meta_losses, test_losses = losses[:n], losses[n:n + m], losses[n + m:]
    test_labels = net.targets[n + m:].argmax(dim=-1)
    record = {
        "step": np.asarray(t),
        "w": _numpy(state.w),
        "score": _numpy(-(m / eta) * dL_meta_dw),
        "residual_norm": _numpy(torch.linalg.norm(R[:n], dim=-1)),
        "clean_loss": _numpy(meta_losses.mean()),
        "coupling_norm": _numpy(torch.linalg.norm(residual_hat)),
        "train_losses": _numpy(train_losses),
        "test_loss": _numpy(test_losses.mean()),
        "test_accuracy": _numpy((F[n + m:].argmax(dim=-1) == test_labels).to(F.dtype).mean()),
        "flip_rate": np.asarray(np.nan),
        "test_outputs": _numpy(F[n + m:]),
    }
    return record, dL_meta_dw


def _group_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T,) mean over the examples in ``mask`` of ``values : (T, n)``; NaN when the group is empty."""
    return values[:, mask].mean(axis=1) if mask.any() else np.full(values.shape[0], np.nan)


def train_finite(problem: Problem, config: MetaConfig = MetaConfig(), network: NetworkConfig = NetworkConfig(), *,
                 generator: torch.Generator, progress: Callable[[int], None] | None = None,
                 blocks: KernelBlocks | None = None) -> Trajectory:
    """Exact bi-level meta-reweighting of a finite-width network (docs/theory.md sections 2-3).

    The trajectory of :func:`train_finite_with_outputs`, whose parameters and
    exceptions it shares.
    """
    return train_finite_with_outputs(problem, config, network, generator=generator, progress=progress,
                                     blocks=blocks)[0]


def train_finite_with_outputs(problem: Problem, config: MetaConfig = MetaConfig(),
                              network: NetworkConfig = NetworkConfig(), *, generator: torch.Generator,
                              progress: Callable[[int], None] | None = None, blocks: KernelBlocks | None = None
                              ) -> tuple[Trajectory, np.ndarray]:
    """Exact bi-level meta-reweighting of a finite-width network, and its test outputs at every record.

    Every step is :func:`step`: look-ahead, autodiff meta-gradient, clipped
    persistent weights (or the ``l2rw`` / ``fixed`` variants of ``config``),
    model update; full batch, or a batch of ``batch_size`` training and
    ``meta_batch_size`` clean examples drawn without replacement each step,
    of which only ``w[batch]`` moves.

    Parameters
    ----------
    problem : the noisy-label problem (sizes ``n, m, p``, ``C`` classes).
    config : the shared knobs of :class:`dynamics.simulator.MetaConfig`.
        ``eta = None`` resolves as in the simulator, from the analytic NTK
        blocks of ``network.spec`` (:func:`dynamics.simulator.default_eta`),
        so that both models take the same step; ``config["lambda_joint"]``
        is that kernel's stability scale. ``perturb_eps`` and
        ``perturb_draws`` are not used: ``flip_rate`` is NaN (C7 perturbs
        outputs, which do not determine a finite network's state).
    network : width, architecture, centring and device.
    generator : CPU ``torch.Generator`` drawing ``theta_0`` and then the
        mini-batches; ``config["seed"]`` records its ``initial_seed()``, which
        repeats the run when the generator is passed freshly seeded.
    progress : called after every step with the number of steps done (for a progress bar).
    blocks : the analytic kernel blocks of ``problem`` for ``network.spec``
        (:func:`analytic_kernel`), when the caller has them: computed here
        otherwise (a CNN's take minutes).

    Returns
    -------
    trajectory : rows as in :func:`dynamics.simulator.simulate` (row ``t`` is the
        state entering step ``step[t]``, the last row the final state).
        ``label_similarity`` and ``k_meta_norm`` come from the output-averaged
        empirical NTK at ``theta_0``. ``config`` holds every resolved parameter,
        and the network (the caller adds package versions).
    test_outputs : (T, p, C) float64, the test outputs at every recorded step
        (the last row is ``trajectory.test_outputs``).

    Raises
    ------
    DivergenceError
        when a recorded loss stops being finite.
    """
    n, m, p = problem.sizes
    C = problem.num_classes
    for name, size, limit in (("batch_size", config.batch_size, n), ("meta_batch_size", config.meta_batch_size, m)):
        if size is not None and size > limit:
            raise ValueError(f"{name} must be at most {limit}, got {size}")
    # The analytic kernel sets the default step and the stability scale, exactly as the simulator's would.
    if blocks is None:
        blocks = KernelBlocks.from_problem(problem, analytic_kernel(network.spec))
    eta_default, lambda_joint = default_eta(blocks, config.gamma)
    eta_source = "default_eta of the analytic NTK blocks" if config.eta is None else "given"
    eta = eta_default if config.eta is None else float(config.eta)
    beta = 0.0 if config.variant == "fixed" else float(config.beta)
    config = dataclasses.replace(config, eta=eta, beta=beta)
    seed = int(generator.initial_seed())
    net, state = init(problem, network, config.w0, generator)
    with torch.no_grad():
        # kernels.empirical returns (m, n) float64 at the module's own parameters, theta_0.
        k_meta_train = scalar_empirical_ntk(net.model, problem.X_meta, problem.X)

    steps, every = int(config.steps), int(config.record_every)
    record_steps = set(range(0, (steps // every) * every, every)) | {steps}
    device = net.inputs.device
    records = []
    for t in range(steps + 1):
        dL_meta_dw = None
        if t in record_steps:
            record, dL_meta_dw = _record(net, state, config, t)
            if not (np.isfinite(record["clean_loss"]) and np.isfinite(record["test_loss"])):
                raise DivergenceError(
                    f"the finite network diverged by step {t} (losses no longer finite): eta={eta:.4g} is too "
                    f"large; leave eta unset for the stable default of the analytic kernel")
            records.append(record)
        if t == steps:
            break
        batch = None if config.batch_size is None else \
            torch.randperm(n, generator=generator)[:config.batch_size].to(device)
        meta_batch = None if config.meta_batch_size is None else \
            torch.randperm(m, generator=generator)[:config.meta_batch_size].to(device)
        # A recorded full-batch meta-gradient is the one this step needs.
        reuse = dL_meta_dw if batch is None and meta_batch is None else None
        state = step(net, state, config, batch=batch, meta_batch=meta_batch, dL_meta_dw=reuse)
        if progress is not None:
            progress(t + 1)

    series = {name: np.stack([record[name] for record in records]) for name in records[0]}
    train_losses = series.pop("train_losses")
    test_outputs = series.pop("test_outputs")
    noisy = problem.noisy
    with torch.no_grad():
        F = _numpy(net.outputs(state.params, slice(None)))
    Y_meta = np.eye(C)[problem.y_meta]
    resolved = dataclasses.asdict(config) | {
        "seed": seed, "n": n, "m": m, "p": p, "num_classes": C, "problem": problem.name,
        "model": "finite", "network": network.architecture, "width": int(network.width),
        "depth": int(network.spec.depth),
        "activation": network.spec.activation, "W_std": float(network.spec.W_std),
        "b_std": float(network.spec.b_std), "centred": bool(network.centred), "device": str(network.device),
        "dtype": str(network.dtype).removeprefix("torch."),
        "eta_source": eta_source,
        "lambda_joint": lambda_joint, "eta_stable_below": 2.0 / lambda_joint,
        "lambda_joint_kernel": "analytic NTK of the same architecture",
        "init": "zero" if network.centred else "network",
        "perturb_draws": 0, "flip_rate": "not measured (NaN) for finite networks",
        "label_similarity_kernel": "output-averaged empirical NTK at theta_0",
    } | ({"image_shape": list(network.spec.image_shape), "filter_size": int(network.spec.filter_size)}
         if network.architecture == "cnn" else {})
    trajectory = Trajectory(
        step=series["step"].astype(np.int64),
        w=series["w"],
        score=series["score"],
        residual_norm=series["residual_norm"],
        clean_loss=series["clean_loss"],
        coupling_norm=series["coupling_norm"],
        train_loss_clean=_group_mean(train_losses, ~noisy),
        train_loss_noisy=_group_mean(train_losses, noisy),
        test_loss=series["test_loss"],
        test_accuracy=series["test_accuracy"],
        flip_rate=series["flip_rate"],
        noisy=noisy,
        label_similarity=(k_meta_train.T @ Y_meta)[np.arange(n), problem.y_noisy],
        k_meta_norm=np.linalg.norm(k_meta_train, axis=0),
        outputs=F[:n], meta_outputs=F[n:n + m], test_outputs=F[n + m:],
        config=resolved,
    )
    return trajectory, test_outputs


def linearized_test_outputs(problem: Problem, operator: KernelBlocks, config: MetaConfig, steps, *,
                            seed: int = 0) -> np.ndarray:
    """Test outputs ``(T, p, C)`` of the linearized model at the recorded ``steps`` (docs/theory.md section 2).

    Steps :func:`dynamics.simulator.step` from :func:`dynamics.simulator.init`
    and reads :func:`dynamics.simulator.predict_test` at every step in ``steps``,
    so that row ``t`` belongs to the run ``simulate(problem, operator, config,
    seed=seed)`` records at ``steps[t]``; the finite twin's are the second
    value of :func:`train_finite_with_outputs`.

    Parameters
    ----------
    operator : the kernel blocks of ``problem``.
    config : the knobs, with ``eta`` set.
    steps : (T,) recorded step indices, increasing.
    """
    steps = [int(t) for t in steps]
    operator = jax.device_put(operator)
    state = simulator.init(problem, operator, config, seed=seed)
    outputs, t = [], 0
    for target in steps:
        for _ in range(target - t):
            state = simulator.step(state, problem, operator, config)
        t = target
        outputs.append(np.asarray(simulator.predict_test(state, operator, config)))
    return np.stack(outputs)
