"""Meta-Weight-Net (docs/theory.md section 2.1) against independent oracles: its meta-gradient equals the free-weight
meta-gradient (claim C1, already tested against autodiff) sent through V's Jacobian written out by hand, and finite
differences of the look-ahead; the finite and the linearized paths agree exactly for a network linear in its
parameters and converge like N^(-1/2) otherwise (claim C8); the plug-in gives V the chain-rule gradient."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from bilevel_oracle import FD_TOLERANCE, finite_differences
from tolerance import assert_close
from torch.nn import functional as F

from dynamics import finite, mwn, simulator
from dynamics.methods import Batch, Context, MetaWeightNet, MWNParams, TrainBudget, TrainingData, mlp_factory
from dynamics.operators import KernelBlocks
from dynamics.problem import gaussian_mixture
from kernels.infinite import KernelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the oracle: V by hand


def _weight_net(theta, losses):
    """``(V(l) (k,), pre-activations (k, H))`` in numpy."""
    hidden = losses[:, None] * theta["W1"][:, 0] + theta["b1"]
    z = np.maximum(hidden, 0.0) @ theta["W2"][0] + theta["b2"][0]
    return 1.0 / (1.0 + np.exp(-z)), hidden


def _through_weight_net(theta, losses, dL_dw):
    """``sum_i dL/dw_i dV(l_i)/dtheta`` with V's Jacobian written out: ``V = s(W2 relu(W1 l + b1) + b2)``."""
    V, hidden = _weight_net(theta, losses)
    g = dL_dw * V * (1.0 - V)  # (k,) dL/dz
    active = (hidden > 0).astype(np.float64)
    back = g[:, None] * theta["W2"][0] * active  # (k, H) dL/d hidden pre-activation
    return {"W2": (g @ np.maximum(hidden, 0.0))[None, :], "b2": np.array([g.sum()]),
            "W1": (back * losses[:, None]).sum(axis=0)[:, None], "b1": back.sum(axis=0)}


def _losses(loss, F_, Y):
    if loss == "mse":
        return F_ - Y, 0.5 * ((F_ - Y) ** 2).sum(axis=-1)
    log_p = F_ - F_.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    return np.exp(log_p) - Y, -(Y * log_p).sum(axis=-1)


def _torch_losses(loss, outputs, targets):
    if loss == "mse":
        return 0.5 * ((outputs - targets) ** 2).sum(dim=-1)
    return -(targets * torch.log_softmax(outputs, dim=-1)).sum(dim=-1)


def _rbf(a, b):
    """A kernel in numpy (no compilation): the step is exact for any kernel."""
    return np.exp(-0.5 * ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1) / a.shape[1])


def _theta(seed=1, hidden=100):
    return mwn.init_weight_net(np.random.default_rng(seed), hidden)


# ----------------------------------------------------------------------------- finite width: autodiff


@pytest.mark.parametrize("loss, gamma", [("mse", 1.0), ("ce", 0.0)])
def test_finite_meta_gradient_is_the_chain_rule_through_the_lookahead(loss, gamma):
    """V's meta-gradient by autodiff with V's parameters as leaves equals (1) the free-weight autodiff meta-gradient
    of dynamics.finite at w = V(l) sent through V's hand-written Jacobian, to 1e-10, and (2) central differences of
    L_meta(theta_V) with the look-ahead taken as a plain gradient step."""
    problem = gaussian_mixture(np.random.default_rng(3), n=12, m=5, p=4, num_classes=3, dim=4)
    network = finite.NetworkConfig(width=24, spec=KernelSpec(depth=1, activation="erf"))
    net, state = finite.init(problem, network, 0.5, torch.Generator().manual_seed(0))
    eta, n = 0.05, problem.sizes[0]
    rows, targets = slice(0, net.n + net.m), net.targets[:net.n + net.m]
    params = state.params
    for _ in range(2):  # two plain steps at w = 1/2: generic outputs, not the zeros of step 0
        leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        losses = _torch_losses(loss, net.outputs(leaves, rows), targets)
        grads = torch.autograd.grad(0.5 * losses[:n].sum() + gamma * losses[n:].sum(), list(leaves.values()))
        params = {name: value.detach() - eta * g for (name, value), g in zip(leaves.items(), grads)}
    state = dataclasses.replace(state, params=params)
    theta = _theta()
    theta_t = {name: torch.as_tensor(value) for name, value in theta.items()}
    result = mwn.finite_meta_gradient(net, state.params, theta_t, loss=loss, eta=eta, gamma=gamma)

    with torch.no_grad():
        outputs = net.outputs(state.params, net.train_rows).numpy()
    _, losses = _losses(loss, outputs, np.eye(3)[problem.y_noisy])
    assert_close(result.losses[:n].numpy(), losses)
    w, _ = _weight_net(theta, losses)
    dL_dw, _ = finite.meta_gradient(net, state.params, torch.as_tensor(w), loss=loss, eta=eta, gamma=gamma)
    assert_close(result.dL_meta_dw.numpy(), dL_dw.numpy())
    expected = _through_weight_net(theta, losses, dL_dw.numpy())
    for name in mwn.WEIGHT_NET_SHAPES:
        assert_close(result.gradient[name].numpy(), expected[name], err_msg=name)

    def meta_loss(values):
        v = {name: torch.as_tensor(value) for name, value in values.items()}
        params = {name: value.detach().requires_grad_(True) for name, value in state.params.items()}
        all_losses = _torch_losses(loss, net.outputs(params, rows), targets)
        weights = mwn.weight_net_torch(v, all_losses[:n].detach())
        grads = torch.autograd.grad((weights * all_losses[:n]).sum() + gamma * all_losses[n:].sum(),
                                    list(params.values()))
        with torch.no_grad():
            hat = {name: params[name] - eta * g for name, g in zip(params, grads)}
            return float(_torch_losses(loss, net.outputs(hat, net.meta_rows), net.targets[net.meta_rows]).mean())

    direction = {name: np.random.default_rng(7).standard_normal(value.shape) for name, value in theta.items()}
    h = 1e-5
    central = (meta_loss({k: theta[k] + h * direction[k] for k in theta})
               - meta_loss({k: theta[k] - h * direction[k] for k in theta})) / (2 * h)
    along = sum(float((result.gradient[k].numpy() * direction[k]).sum()) for k in theta)
    assert_close(central, along, **FD_TOLERANCE)


# ----------------------------------------------------------------------------- linearized: function space


def test_linearized_step_is_the_free_weight_score_through_V():
    """The linearized MWN step: jax.grad through the function-space look-ahead equals the free-weight meta score of
    dynamics.simulator.meta_score (claim C1) sent through V by hand (1e-10); V moves by -(beta / (eta n)) of it;
    the model step is docs/theory.md section 2's, written with the joint kernel, at w = V_theta'(l).

    Cross-entropy with gamma > 0 here; MSE is covered by the chain finite path = oracle (the first test) and
    linearized path = finite path (the next one). Each loss compiles the loop anew (a few seconds)."""
    loss, gamma = "ce", 0.5
    problem = gaussian_mixture(np.random.default_rng(4), n=15, m=6, p=5, num_classes=3, dim=4)
    blocks = KernelBlocks.from_problem(problem, _rbf)
    n, m, _ = problem.sizes
    eta = simulator.default_eta(blocks, gamma)[0]
    config = mwn.MWNConfig(loss=loss, eta=eta, beta=2.0, gamma=gamma)
    state = mwn.init(problem, blocks, _theta(2), config)
    for _ in range(3):
        state = mwn.step(state, problem, blocks, config)
    Y = np.eye(3)[np.concatenate([problem.y_noisy, problem.y_meta])]
    F_ = np.asarray(state.F)
    R, losses = _losses(loss, F_[:n], Y[:n])
    R_meta, _ = _losses(loss, F_[n:], Y[n:])
    theta = {name: np.asarray(value) for name, value in state.theta.items()}
    w, _ = _weight_net(theta, losses)
    score, _ = simulator.meta_score(loss, eta, gamma, w, R, R_meta, F_[n:], Y[n:], blocks.K_VX, blocks.K_VV)
    expected = _through_weight_net(theta, losses, -(eta / m) * np.asarray(score))
    gradient = mwn.meta_gradient(state, problem, blocks, config)
    for name in mwn.WEIGHT_NET_SHAPES:
        assert_close(gradient[name], expected[name], err_msg=name)

    after = mwn.step(state, problem, blocks, config)
    theta_next = {name: theta[name] - 2.0 / (eta * n) * expected[name] for name in theta}
    for name in theta:
        assert_close(np.asarray(after.theta[name]), theta_next[name], err_msg=name)
    G = _weight_net(theta_next, losses)[0][:, None] * R
    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]])
    assert_close(np.asarray(after.F), F_ - eta * K @ np.concatenate([G, gamma * R_meta]))
    assert_close(np.asarray(after.G_sum), np.asarray(state.G_sum) + G)


# ----------------------------------------------------------------------------- the two paths, and the width limit


def _small():
    """The problem of the whole-run tests (one shape, so the linearized loop compiles once per loss)."""
    return gaussian_mixture(np.random.default_rng(1), n=40, m=8, p=10, num_classes=3, dim=8)


def test_a_network_linear_in_its_parameters_runs_the_linearized_mwn_exactly():
    """With no hidden layer the centred network is linear in its parameters and its NTK is the analytic depth-0
    kernel, so the finite autodiff path and the function-space path are the same dynamics (to 1e-10). MSE (the
    cross-entropy step is checked above against the simulator's meta score)."""
    loss = "mse"
    problem = _small()
    spec = KernelSpec(depth=0)
    blocks = KernelBlocks.from_problem(problem, finite.analytic_kernel(spec))
    config = mwn.MWNConfig(loss=loss, beta=0.5, steps=8, record_every=3)
    theta0 = _theta(3)
    linear = mwn.simulate_mwn(problem, blocks, theta0, config)
    run = mwn.train_finite_mwn(problem, theta0, config, finite.NetworkConfig(width=1, spec=spec),
                               generator=torch.Generator().manual_seed(0), blocks=blocks)
    a, b = linear.trajectory, run.trajectory
    assert a.step.tolist() == b.step.tolist() == [0, 3, 8]
    assert np.abs(a.w - a.w[0]).max() > 0.02  # the weights did move
    for name in ("w", "score", "clean_loss", "coupling_norm", "test_loss", "test_outputs", "outputs"):
        assert_close(getattr(b, name), getattr(a, name), atol=1e-11, err_msg=name)
    for series in ("theta_velocity", "weight_velocity", "meta_gradient_norm"):
        assert_close(getattr(run, series), getattr(linear, series), atol=1e-12, err_msg=series)
    for name in mwn.WEIGHT_NET_SHAPES:
        assert_close(run.theta[name], linear.theta[name], err_msg=name)
    assert a.config["variant"] == b.config["variant"] == "mwn" and a.config["eta"] == b.config["eta"]
    assert np.all((a.w > 0) & (a.w < 1))


def test_finite_mwn_tends_to_the_linearized_one_as_width_grows():
    """C8 for MWN: the weight gap max_t ||w_t^N - w_t^lin||_inf falls like N^(-1/2).

    erf, one hidden layer, 10 steps, widths 128-8192, four seeds each. A single seed's gap is a signed sum that
    can land near zero, so the fit uses each width's root-mean-square gap over the seeds (and, beside it, every
    point). Measured on five problem draws: rms slope -0.46 to -0.58, all points -0.47 to -0.52.
    """
    problem = _small()
    spec = KernelSpec(depth=1, activation="erf")
    blocks = KernelBlocks.from_problem(problem, finite.analytic_kernel(spec))
    theta0 = _theta(1)
    config = mwn.MWNConfig(steps=10)
    linear = mwn.simulate_mwn(problem, blocks, theta0, config)
    assert np.abs(linear.trajectory.w - linear.trajectory.w[0]).max() > 0.1
    widths, rms, everything = [128, 512, 2048, 8192], [], []
    for width in widths:
        gaps = [np.abs(mwn.train_finite_mwn(problem, theta0, config, finite.NetworkConfig(width=width, spec=spec),
                                            generator=torch.Generator().manual_seed(seed), blocks=blocks).trajectory.w
                       - linear.trajectory.w).max() for seed in range(4)]
        rms.append(np.sqrt(np.mean(np.square(gaps))))
        everything += [(width, gap) for gap in gaps]
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]
    x, y = np.log(np.array(everything)).T
    assert -0.7 <= slope <= -0.3, (slope, rms)
    assert -0.7 <= np.polyfit(x, y, 1)[0] <= -0.3


# ----------------------------------------------------------------------------- the plug-in


def test_plugin_step_gives_V_the_chain_rule_gradient_and_trains_with_its_new_weights():
    """One ``mwn`` batch step: V's gradient is dL_meta/dw by central differences of an explicit SGD step on a copy
    (tests/bilevel_oracle.py, no torch.func) sent through V by hand; the model then takes a plain SGD step on
    mean_B V'(l_i) l_i + clean term, V' being V after its Adam step, and those are the recorded weights."""
    generator = torch.Generator().manual_seed(2)
    b, lr, clean_weight = 6, 0.1, 0.3
    x, x_meta = (torch.randn(size, 5, generator=generator, dtype=torch.float64) for size in (b, 4))
    y, y_meta = torch.randint(0, 3, (b,), generator=generator), torch.tensor([0, 1, 2, 0])
    network = mlp_factory(5, 3, hidden=(8,), dtype=torch.float64)(generator)
    before = copy.deepcopy(network)
    budget = TrainBudget(momentum=0.0, weight_decay=0.0)
    data = TrainingData(x, y, y, x_meta, y_meta, x_meta, y_meta, 3)
    optimiser = torch.optim.SGD(network.parameters(), lr=lr)
    context = Context(data, budget, (network,), (optimiser,), np.random.default_rng(0), clean_weight)
    method = MetaWeightNet(MWNParams(hidden=16))
    state = method.init(context)
    theta0 = {name: value.detach().numpy().copy() for name, value in state.theta.items()}
    state, _ = method.batch_step(state, Batch(0, torch.arange(b), x, y, x_meta, y_meta, lr), context)

    def ce(outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    with torch.no_grad():
        losses = ce(before(x), y)
    w0, _ = _weight_net(theta0, losses.numpy())
    dL_dw = finite_differences(before, x, y, torch.as_tensor(w0), x_meta, y_meta, lr, clean_weight, ce)
    expected = _through_weight_net(theta0, losses.numpy(), dL_dw)
    for name in mwn.WEIGHT_NET_SHAPES:
        # Central differences: O(h^2) truncation and O(eps/h) rounding, about 1e-9 per weight (see bilevel_oracle).
        assert_close(state.theta[name].grad.numpy(), expected[name], rtol=1e-6, atol=1e-8, err_msg=name)
    theta1 = {name: value.detach().numpy() for name, value in state.theta.items()}
    assert any(np.abs(theta1[name] - theta0[name]).max() > 0 for name in theta0)
    w1, _ = _weight_net(theta1, losses.numpy())
    assert_close(state.weights.numpy(), w1)
    reference = copy.deepcopy(before)
    objective = (torch.as_tensor(w1) * ce(reference(x), y)).mean() + clean_weight * ce(reference(x_meta), y_meta).mean()
    grads = torch.autograd.grad(objective, list(reference.parameters()))
    for trained, start, g in zip(network.parameters(), before.parameters(), grads):
        assert_close(trained.detach().numpy(), (start - lr * g).detach().numpy())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="loss"):
        mwn.MWNConfig(loss="hinge")
    with pytest.raises(ValueError, match="beta"):
        mwn.MWNConfig(beta=-1.0)
    problem = gaussian_mixture(np.random.default_rng(0), n=6, m=3, p=2, num_classes=3, dim=2)
    blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)
    with pytest.raises(ValueError, match="shape"):
        mwn.init(problem, blocks, _theta(0, hidden=4), mwn.MWNConfig(hidden=5))
    state = mwn.init(problem, blocks, _theta(0, hidden=4), mwn.MWNConfig(hidden=4))
    with pytest.raises(ValueError, match="eta"):
        mwn.step(state, problem, blocks, mwn.MWNConfig(hidden=4))
    with pytest.raises(ValueError, match="hidden"):
        MWNParams(hidden=0)
