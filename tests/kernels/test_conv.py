"""The convolutional twin (kernels/conv.py) against neural-tangents (docs/theory.md section 1)."""

import jax
import numpy as np
import pytest
import torch
from tolerance import assert_close

from kernels.conv import ConvNet, ConvSpec, conv_kernel, conv_network
from kernels.empirical import empirical_ntk_autodiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stax_params(net: ConvNet, stax_params):
    """``net``'s parameters in stax's layout: Conv ``(q, q, in, out)`` and ``(1, 1, 1, out)``, Dense ``(in, out)``
    and ``(1, out)``; the activations and the pooling have no parameters."""
    layers, convs = [], iter(zip(net.filters, net.biases))
    for layer in stax_params:
        if layer == ():
            layers.append(())
        elif layer[0].ndim == 4:
            filters, bias = next(convs)
            layers.append((filters.detach().numpy().transpose(2, 3, 1, 0), bias.detach().numpy()[None, None, None]))
        else:
            layers.append((net.head.detach().numpy(), net.head_bias.detach().numpy()[None]))
    return layers


@pytest.mark.parametrize("depth, image_shape, filter_size, b_std", [(1, (8, 8, 1), 3, 0.0), (2, (5, 4, 2), 3, 0.3),
                                                                     (1, (4, 4, 1), 2, 0.1)])
def test_torch_twin_computes_what_stax_applies(depth, image_shape, filter_size, b_std):
    """Same parameters, same outputs: padding, NTK scaling, pooling and head agree with stax's apply_fn."""
    spec = ConvSpec(depth=depth, image_shape=image_shape, filter_size=filter_size, b_std=b_std)
    net = ConvNet(5, 3, spec, torch.Generator().manual_seed(0))
    x = np.random.default_rng(0).standard_normal((4, spec.input_dim))
    init_fn, apply_fn, _ = conv_network(spec, width=5, out_dim=3)
    _, template = init_fn(jax.random.PRNGKey(0), (1, *image_shape))
    expected = apply_fn(_stax_params(net, template), x.reshape(-1, *image_shape))
    assert_close(net(torch.as_tensor(x)).detach().numpy(), np.asarray(expected))


@pytest.mark.parametrize("depth, image_shape", [(1, (8, 8, 1)), (2, (4, 4, 2))])
def test_monte_carlo_mean_of_empirical_ntks_is_the_analytic_kernel(depth, image_shape):
    """The mean of the torch twin's empirical NTK over random draws converges to stax's analytic NTK.

    Tolerance: the Monte-Carlo mean of ``S`` draws at width ``N`` errs by its
    own standard error (variance ``O(1 / (N S))``), which is estimated from
    the draws; the distance must stay within 4 standard errors (Frobenius
    norms), and within 5% of the kernel. A wrong scale, padding or pooling
    shifts the mean by more than that (at these sizes the standard error is
    about 1-2% of the kernel).
    """
    spec = ConvSpec(depth=depth, image_shape=image_shape)
    x = np.random.default_rng(1).standard_normal((5, spec.input_dim))
    analytic = conv_kernel(spec, x)
    draws = np.stack([empirical_ntk_autodiff(ConvNet(256, 1, spec, torch.Generator().manual_seed(seed)), x)
                      for seed in range(16)])
    error = np.linalg.norm(draws.mean(axis=0) - analytic)
    standard_error = np.linalg.norm(draws.std(axis=0, ddof=1)) / np.sqrt(len(draws))
    assert error < 4 * standard_error
    assert error < 0.05 * np.linalg.norm(analytic)


def test_nngp_and_blocks():
    """The NNGP is the output covariance over draws; row blocks do not change the kernel."""
    spec = ConvSpec(kind="nngp", image_shape=(4, 4, 1))
    x = np.random.default_rng(2).standard_normal((3, spec.input_dim))
    with torch.no_grad():
        outputs = np.stack([ConvNet(512, 1, spec, torch.Generator().manual_seed(seed))(torch.as_tensor(x))[:, 0]
                            .numpy() for seed in range(400)])
    nngp = conv_kernel(spec, x)
    # 400 draws: the sample covariance errs by about sqrt(2 / 400) = 7% of the diagonal.
    assert_close(outputs.T @ outputs / len(outputs), nngp, atol=0.25 * np.abs(nngp).max())
    assert_close(conv_kernel(spec, x, block_rows=1), nngp)


@pytest.mark.parametrize("bad", [{"depth": 0}, {"activation": "tanh"}, {"kind": "gp"}, {"W_std": 0.0},
                                 {"image_shape": (8, 8)}, {"filter_size": 0}])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        ConvSpec(**bad)
    with pytest.raises(ValueError, match="rows of"):
        conv_kernel(ConvSpec(), np.zeros((2, 10)))
