"""Finite-width networks and their empirical NTK (docs/theory.md section 1).

``MLP`` is the torch twin of ``kernels.infinite.stax_network``: the same
layers in the same NTK parametrisation, so that its empirical NTK converges to
``kernel(spec, ...)`` as the width grows. Two routes compute the empirical
NTK: a closed form specific to ``MLP`` (fast, blocked) and a generic one
through ``torch.func`` for any module; each is the other's oracle.

The empirical NTK of a network with ``C`` outputs is reported as one scalar
kernel, the average over outputs of the per-output kernels,
``k(x, x') = (1/C) sum_c J_c(x) J_c(x')^T``, the finite-width counterpart of
the ``k`` in ``Theta = k * I_C``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

from kernels.infinite import KernelSpec


class MLP(torch.nn.Module):
    """``Dense -> (act -> Dense) * spec.depth`` in the NTK parametrisation.

    Every Dense layer computes ``W_std / sqrt(fan_in) * a @ W + b_std * b``
    with ``W : (fan_in, fan_out)`` and ``b : (fan_out,)`` standard normal, as
    neural-tangents' ``stax.Dense(parameterization='ntk')`` does (``b`` is
    always a parameter; with ``b_std = 0`` it has no effect, as in stax).

    Parameters
    ----------
    in_dim : input dimension ``d``.
    width : units per hidden layer.
    out_dim : outputs ``C``.
    spec : depth, activation, ``W_std`` and ``b_std`` (``spec.kind`` is unused).
    generator : the only source of randomness of the initialisation.
    dtype : parameter dtype.
    """

    def __init__(self, in_dim: int, width: int, out_dim: int, spec: KernelSpec,
                 generator: torch.Generator, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.spec = spec
        dims = [in_dim] + [width] * spec.depth + [out_dim]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            self.weights.append(torch.nn.Parameter(torch.randn(fan_in, fan_out, generator=generator, dtype=dtype)))
            self.biases.append(torch.nn.Parameter(torch.randn(fan_out, generator=generator, dtype=dtype)))
        self.weight_scales = [spec.W_std / math.sqrt(fan_in) for fan_in in dims[:-1]]

    def _activation(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z) if self.spec.activation == "relu" else torch.special.erf(z)

    def _activation_derivative(self, z: torch.Tensor) -> torch.Tensor:
        if self.spec.activation == "relu":
            # torch's relu backward is 0 at z == 0; match it so both NTK routes agree.
            return (z > 0).to(z.dtype)
        return (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)

    def forward_with_cache(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Layer inputs and pre-activations, which the closed-form NTK needs.

        Parameters
        ----------
        x : (N, d) inputs.

        Returns
        -------
        layer_inputs : list of ``depth + 1`` tensors ``(N, fan_in_l)``; the first is ``x``.
        preactivations : list of ``depth + 1`` tensors ``(N, fan_out_l)``; the last is the output ``(N, C)``.
        """
        layer_inputs, preactivations = [], []
        a = x
        for layer, (W, b) in enumerate(zip(self.weights, self.biases)):
            layer_inputs.append(a)
            z = self.weight_scales[layer] * (a @ W) + self.spec.b_std * b
            preactivations.append(z)
            a = self._activation(z)
        return layer_inputs, preactivations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, C)`` for inputs ``x : (N, d)``."""
        return self.forward_with_cache(x)[1][-1]


def _as_model_tensor(model: torch.nn.Module, x) -> torch.Tensor:
    param = next(model.parameters())
    return torch.as_tensor(np.asarray(x), dtype=param.dtype, device=param.device)


def _ntk_factors(model: MLP, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per layer, the input ``A_l : (N, fan_in_l)`` and the output sensitivities
    ``D_l : (N, fan_out_l * C)`` (``D_l[n, j, c] = d f_c(x_n) / d z_l[n, j]``),
    or ``None`` for the last layer, where ``D_L^c = e_c``."""
    layer_inputs, preactivations = model.forward_with_cache(x)
    num_layers = len(layer_inputs)
    factors = [(layer_inputs[-1], None)]
    sensitivity = None  # (N, fan_out_l, C)
    for layer in range(num_layers - 2, -1, -1):
        scale = model.weight_scales[layer + 1]
        W_next = model.weights[layer + 1]
        if sensitivity is None:
            back = W_next.expand(x.shape[0], *W_next.shape)
        else:
            back = torch.matmul(W_next, sensitivity)
        sensitivity = scale * model._activation_derivative(preactivations[layer])[:, :, None] * back
        factors.append((layer_inputs[layer], sensitivity.reshape(x.shape[0], -1)))
    return factors[::-1]


@torch.no_grad()
def empirical_ntk(model: MLP, x1, x2=None, *, block_rows: int = 256, block_cols: int = 4096) -> np.ndarray:
    """Output-averaged empirical NTK of an ``MLP`` by its closed form.

    With ``A_l`` the input of Dense layer ``l`` and ``D_l^c`` the derivative of
    output ``c`` with respect to that layer's pre-activation,

    ``k(x, x') = sum_l (W_std^2 / fan_in_l * A_l A_l'^T + b_std^2) * (1/C) sum_c D_l^c D_l'^c^T``,

    which equals ``(1/C) sum_c J_c(x) J_c(x')^T`` (``empirical_ntk_autodiff``).

    Parameters
    ----------
    model : an ``MLP``.
    x1 : (n1, d) inputs.
    x2 : (n2, d) inputs; ``x1`` when omitted.
    block_rows, block_cols : tile sizes; the sensitivities held at once number
        ``(block_rows + block_cols) * width * C`` per layer.

    Returns
    -------
    (n1, n2) float64 array.
    """
    x1 = _as_model_tensor(model, x1)
    x2 = x1 if x2 is None else _as_model_tensor(model, x2)
    num_outputs = model.weights[-1].shape[1]
    b_var = model.spec.b_std ** 2
    out = np.empty((x1.shape[0], x2.shape[0]))
    # Column tiles outside: with the default tile x2 is factored once and x1
    # once per tile; backpropagating sensitivities costs ~width times more
    # per example than the Gram products, so refactoring must stay rare.
    symmetric = x2 is x1
    for c0 in range(0, x2.shape[0], block_cols):
        col_factors = _ntk_factors(model, x2[c0:c0 + block_cols])
        c1 = c0 + len(col_factors[0][0])
        for r0 in range(0, x1.shape[0], block_rows):
            r1 = min(r0 + block_rows, x1.shape[0])
            if symmetric and c0 <= r0 and r1 <= c1:
                # Factors are per example: rows inside the column tile are a slice of it.
                row_factors = [(a[r0 - c0:r1 - c0], None if d is None else d[r0 - c0:r1 - c0]) for a, d in col_factors]
            else:
                row_factors = _ntk_factors(model, x1[r0:r1])
            block = 0.0
            for layer, ((a1, d1), (a2, d2)) in enumerate(zip(row_factors, col_factors)):
                term = model.weight_scales[layer] ** 2 * (a1 @ a2.T) + b_var
                block = block + (term if d1 is None else term * (d1 @ d2.T) / num_outputs)
            out[r0:r1, c0:c1] = block.to(torch.float64).cpu().numpy()
    return out


def empirical_ntk_autodiff(model: torch.nn.Module, x1, x2=None, *, block_rows: int = 64,
                           params: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """Output-averaged empirical NTK of any module by automatic differentiation.

    ``k(x, x') = (1/C) sum_c J_c(x) J_c(x')^T`` with per-example Jacobians
    from ``torch.func`` (``vmap(jacrev)``) over all parameters that require
    gradients. Generic but memory-hungry: it holds the Jacobians of all
    inputs, ``(n1 + n2) * C * #params`` numbers; meant as an oracle.

    Parameters
    ----------
    model : maps ``(N, d)`` to ``(N, C)``.
    x1 : (n1, d) inputs.
    x2 : (n2, d) inputs; ``x1`` when omitted.
    block_rows : examples per Jacobian evaluation.
    params : name -> tensor, as in :func:`per_example_jacobians` (default: the
        module's own parameters that require gradients).

    Returns
    -------
    (n1, n2) float64 array.
    """
    x1 = _as_model_tensor(model, x1)
    j1 = per_example_jacobians(model, x1, params, block_rows=block_rows)
    j2 = j1 if x2 is None else per_example_jacobians(model, _as_model_tensor(model, x2), params,
                                                     block_rows=block_rows)
    k = torch.einsum("acp,bcp->ab", j1, j2) / j1.shape[1]
    return k.detach().to(torch.float64).cpu().numpy()


def per_example_jacobians(model: torch.nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None, *,
                          block_rows: int = 64) -> torch.Tensor:
    """Jacobians ``J_c(x_a)`` of every output with respect to every parameter, ``(N, C, #params)``.

    By ``torch.func`` (``vmap(jacrev)``) at ``params`` (default: the module's
    own parameters that require gradients), ``block_rows`` examples at a time.

    Parameters
    ----------
    model : maps ``(N, d)`` to ``(N, C)``.
    x : (N, d) inputs, on the model's device and dtype.
    params : name -> tensor, the point at which to differentiate.
    """
    if params is None:
        params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def single_output(p, example):
        return functional_call(model, p, (example[None],))[0]

    per_example = vmap(jacrev(single_output), in_dims=(None, 0))
    blocks = []
    for start in range(0, x.shape[0], block_rows):
        jac = per_example(params, x[start:start + block_rows])
        blocks.append(torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2))
    return torch.cat(blocks)


__all__ = ["MLP", "empirical_ntk", "empirical_ntk_autodiff", "per_example_jacobians"]
