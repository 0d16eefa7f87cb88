"""Infinite-width NTK and NNGP of fully connected networks (docs/theory.md section 1).

The kernels come from neural-tangents' ``stax`` layer recursion in the NTK
parametrisation, in float64, evaluated in row blocks so that the memory of
intermediates is bounded by the block size, not by the kernel's size.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from kernels._nt import stax

ACTIVATIONS = ("relu", "erf")
KINDS = ("ntk", "nngp")
MAX_DEPTH = 100  # the layer recursion is sequential: a larger depth is a typo, not a network


def check_network(spec, min_depth: int) -> None:
    """The checks every network spec shares (``depth``, ``activation``, ``kind``, ``W_std``, ``b_std``): a
    ``ValueError`` naming the first bad field."""
    depth = spec.depth
    if isinstance(depth, bool) or not float(depth).is_integer() or not min_depth <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be an integer in [{min_depth}, {MAX_DEPTH}], got {depth}")
    if spec.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {spec.activation!r}")
    if spec.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {spec.kind!r}")
    if not (math.isfinite(spec.W_std) and math.isfinite(spec.b_std)) or spec.W_std <= 0 or spec.b_std < 0:
        raise ValueError(f"W_std must be > 0 and b_std >= 0, got {spec.W_std} and {spec.b_std}")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A fully connected network ``Dense -> (act -> Dense) * depth``.

    ``depth`` is the number of hidden layers (the default two hidden ReLU
    layers is docs/theory.md section 5's network), ``W_std`` and ``b_std`` the
    standard deviations of weights (times ``1/sqrt(fan_in)``) and biases in
    the NTK parametrisation; ``kind`` selects the NTK or the NNGP.
    """

    depth: int = 2
    activation: str = "relu"
    W_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    kind: str = "ntk"

    def __post_init__(self):
        check_network(self, min_depth=0)


def stax_network(spec: KernelSpec, width: int = 512, out_dim: int = 1):
    """``(init_fn, apply_fn, kernel_fn)`` of the network ``spec`` describes."""
    act = {"relu": stax.Relu, "erf": stax.Erf}[spec.activation]
    layers = []
    for _ in range(spec.depth):
        layers += [stax.Dense(width, W_std=spec.W_std, b_std=spec.b_std, parameterization="ntk"), act()]
    layers.append(stax.Dense(out_dim, W_std=spec.W_std, b_std=spec.b_std, parameterization="ntk"))
    return stax.serial(*layers)


@functools.lru_cache(maxsize=None)
def _jitted_kernel_fn(spec: KernelSpec):
    kernel_fn = stax_network(spec)[2]
    return jax.jit(kernel_fn, static_argnames="get")


def kernel(spec: KernelSpec, x1: np.ndarray, x2: np.ndarray | None = None, *, block_rows: int = 1024,
           dtype=np.float64) -> np.ndarray:
    """The scalar kernel ``k(x1_a, x2_b)`` of ``spec`` (NTK or NNGP), computed in float64.

    Parameters
    ----------
    x1 : (n1, d) inputs.
    x2 : (n2, d) inputs; ``x1`` when omitted.
    block_rows : rows of ``x1`` per evaluation; intermediates hold
        ``O(block_rows * n2)`` numbers, so a 20000 x 2000 kernel never needs
        more than a bounded chunk of memory beyond its own output.
    dtype : of the output; ``np.float32`` rounds each block as it is stored, so the float64 kernel is never
        held whole (half the memory, for large n).

    Returns
    -------
    (n1, n2) array of ``dtype``.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"inputs must be 2-D with equal feature counts, got {x1.shape} and {x2.shape}")
    kernel_fn = _jitted_kernel_fn(spec)
    out = np.empty((x1.shape[0], x2.shape[0]), dtype=dtype)
    rows = max(1, min(block_rows, x1.shape[0]))  # no block is larger than x1 (none at all for an empty x1)
    for start in range(0, x1.shape[0], rows):
        block = x1[start:start + rows]
        count = len(block)
        if count < rows:  # every block one shape, so one compilation: the last is padded with copies of a row
            block = np.concatenate([block, np.repeat(block[-1:], rows - count, axis=0)])
        out[start:start + count] = np.asarray(kernel_fn(block, x2, get=spec.kind))[:count]
    return out
