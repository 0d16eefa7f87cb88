"""Finite-width MLP and its empirical NTK (docs/theory.md section 1)."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels._nt import nt
from kernels.empirical import MLP, empirical_ntk, empirical_ntk_autodiff
from kernels.infinite import KernelSpec, kernel, stax_network
from tolerance import assert_close

specs = st.builds(
    KernelSpec,
    depth=st.integers(0, 3),
    activation=st.sampled_from(["relu", "erf"]),
    W_std=st.sampled_from([1.0, math.sqrt(2.0), 1.7]),
    b_std=st.sampled_from([0.0, 0.3]),
)
# Wide-network checks compile one analytic kernel per spec, so draw from few.
wide_specs = st.builds(
    KernelSpec,
    depth=st.integers(1, 2),
    activation=st.sampled_from(["relu", "erf"]),
    b_std=st.sampled_from([0.0, 0.5]),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(seed, n, d=3):
    return np.random.default_rng(seed).normal(size=(n, d))


def _stax_params(model):
    """The MLP's parameters laid out for ``stax.serial`` (activations hold ``()``)."""
    params = []
    for W, b in zip(model.weights, model.biases):
        params += [(jnp.asarray(W.detach().numpy()), jnp.asarray(b.detach().numpy())), ()]
    return params[:-1]


@settings(max_examples=20)
@given(spec=specs, width=st.integers(1, 12), out_dim=st.integers(1, 4), n1=st.integers(1, 7),
       n2=st.integers(1, 7), block_rows=st.integers(1, 7), block_cols=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_closed_form_equals_autodiff(spec, width, out_dim, n1, n2, block_rows, block_cols, seed):
    model = MLP(3, width, out_dim, spec, torch.Generator().manual_seed(seed))
    x1, x2 = _inputs(seed, n1), _inputs(seed + 1, n2)
    closed = empirical_ntk(model, x1, x2, block_rows=block_rows, block_cols=block_cols)
    assert closed.dtype == np.float64 and closed.shape == (n1, n2)
    assert_close(closed, empirical_ntk_autodiff(model, x1, x2, block_rows=block_rows))
    symmetric = empirical_ntk(model, x1, block_rows=block_rows, block_cols=block_cols)
    assert_close(symmetric, empirical_ntk_autodiff(model, x1))


@settings(max_examples=4)  # each draw jit-compiles a neural-tangents Jacobian
@given(spec=specs, width=st.integers(1, 12), out_dim=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_matches_neural_tangents_network(spec, width, out_dim, seed):
    """Same parameters in stax give the same outputs and the same traced NTK
    (neural-tangents' ``trace_axes`` averages over outputs, as we do)."""
    model = MLP(3, width, out_dim, spec, torch.Generator().manual_seed(seed))
    apply_fn = stax_network(spec, width=width, out_dim=out_dim)[1]
    params = _stax_params(model)
    x1, x2 = _inputs(seed, 5), _inputs(seed + 1, 4)
    assert_close(model(torch.from_numpy(x1)).detach().numpy(), np.asarray(apply_fn(params, jnp.asarray(x1))))
    ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0)
    expected = np.asarray(ntk_fn(jnp.asarray(x1), jnp.asarray(x2), params))
    assert_close(empirical_ntk(model, x1, x2), expected)


def test_generic_route_on_another_module():
    """The torch.func route against a per-example ``autograd.grad`` loop."""
    torch.manual_seed(0)  # test-only: nn.Linear initialises from the global generator
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    x1, x2 = torch.from_numpy(_inputs(0, 4)), torch.from_numpy(_inputs(1, 3))

    def jacobian(x):  # (N, C, #params)
        rows = [[torch.cat([g.flatten() for g in torch.autograd.grad(model(xi[None])[0, c], model.parameters())])
                 for c in range(2)] for xi in x]
        return torch.stack([torch.stack(r) for r in rows])

    expected = torch.einsum("acp,bcp->ab", jacobian(x1), jacobian(x2)).numpy() / 2
    assert_close(empirical_ntk_autodiff(model, x1.numpy(), x2.numpy()), expected)


def test_randomness_only_from_generator():
    spec = KernelSpec()
    state = torch.get_rng_state()
    first = MLP(3, 8, 2, spec, torch.Generator().manual_seed(5))
    second = MLP(3, 8, 2, spec, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    assert first(torch.zeros(4, 3, dtype=torch.float64)).shape == (4, 2)


# Monte-Carlo: 30 networks of width 1024 with 4 outputs at 5 inputs. The NNGP
# estimate is each network's expectation over its last layer's parameters,
# W_std^2/fan_in * A_L A_L'^T + b_std^2 (A_L: last layer input), which has a
# far smaller variance than products of outputs. Measured standard errors of
# the mean (max over entries, relative to the largest entry, over 24 draws of
# spec and seed): NTK <= 1.3%, NNGP <= 1.9%; the 1/width bias is ~0.1%.
# Capped at 1.5% and 2.5%, the tolerances are 4 of them: 6% and 10% of the
# largest entry (the largest error seen was 2.4 standard errors). The test
# re-measures the standard error, so a cap that no longer holds fails loudly
# instead of letting the tolerance flake.
MC_NETWORKS, MC_WIDTH, MC_OUTPUTS = 30, 1024, 4
STANDARD_ERROR_CAP = {"ntk": 0.015, "nngp": 0.025}


@settings(max_examples=4)
@given(spec=wide_specs, seed=st.integers(0, 2**16))
def test_monte_carlo_mean_matches_analytic(spec, seed):
    x = _inputs(seed, 5, d=4)
    samples = {"ntk": [], "nngp": []}
    for network in range(MC_NETWORKS):
        model = MLP(4, MC_WIDTH, MC_OUTPUTS, spec, torch.Generator().manual_seed(seed * MC_NETWORKS + network))
        samples["ntk"].append(empirical_ntk(model, x))
        with torch.no_grad():
            last_input = model.forward_with_cache(torch.from_numpy(x))[0][-1].numpy()
        samples["nngp"].append(model.weight_scales[-1] ** 2 * last_input @ last_input.T + spec.b_std ** 2)
    for kind, cap in STANDARD_ERROR_CAP.items():
        analytic = kernel(dataclasses.replace(spec, kind=kind), x)
        scale = np.abs(analytic).max()
        draws = np.stack(samples[kind])
        standard_error = draws.std(axis=0, ddof=1).max() / math.sqrt(MC_NETWORKS)
        assert standard_error <= cap * scale, (kind, standard_error / scale)
        assert_close(draws.mean(axis=0), analytic, rtol=0, atol=4 * cap * scale, err_msg=kind)


@settings(max_examples=3)
@given(spec=wide_specs, seed=st.integers(0, 2**16))
def test_error_shrinks_like_inverse_sqrt_width(spec, seed):
    x = _inputs(seed, 6, d=4)
    analytic = kernel(spec, x)
    widths = [64, 128, 256, 512, 1024, 2048]
    errors = []
    for width in widths:
        errors.append(np.mean([
            np.linalg.norm(empirical_ntk(MLP(4, width, 1, spec, torch.Generator().manual_seed(seed + r)), x) - analytic)
            / np.linalg.norm(analytic)
            for r in range(8)
        ]))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    # Theory says -0.5. With eight networks per width the fitted slope ranged
    # over [-0.57, -0.42] (sd 0.035) in 40 draws of spec and seed; with four it
    # reached -0.32, hence eight, and the band [-0.7, -0.3] is > 5 sd wide.
    assert_close(slope, -0.5, rtol=0, atol=0.2, err_msg=f"errors {errors}")
