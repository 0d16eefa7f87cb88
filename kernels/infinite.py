"""Infinite-width NTK and NNGP of fully connected networks (docs/theory.md section 1).

The kernels are the layer recursion of neural-tangents' ``stax`` layers in the
NTK parametrisation (:func:`stax_network` builds those layers; the tests hold
the two to 1e-12), written out in numpy: float64, evaluated in row blocks so
that the memory of intermediates is bounded by the block size, not by the
kernel's size. In numpy it needs no tracing or compilation: the default run's
kernel takes about 0.1 s instead of 0.4-0.8 s through ``stax``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

# The toolkit's kernels and the applications that use them are float64 (as importing neural-tangents through
# kernels._nt makes them): JAX's x64 mode on, process-wide.
jax.config.update("jax_enable_x64", True)

ACTIVATIONS = ("relu", "erf")
_BLOCK_NUMBERS = 2 ** 20  # kernel entries evaluated at once by default (see kernel)
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
    """``(init_fn, apply_fn, kernel_fn)`` of the network ``spec`` describes, as neural-tangents ``stax`` layers
    (its ``kernel_fn`` is :func:`kernel`'s oracle in the tests)."""
    from kernels._nt import stax

    act = {"relu": stax.Relu, "erf": stax.Erf}[spec.activation]
    layers = []
    for _ in range(spec.depth):
        layers += [stax.Dense(width, W_std=spec.W_std, b_std=spec.b_std, parameterization="ntk"), act()]
    layers.append(stax.Dense(out_dim, W_std=spec.W_std, b_std=spec.b_std, parameterization="ntk"))
    return stax.serial(*layers)


def kernel(spec: KernelSpec, x1: np.ndarray, x2: np.ndarray | None = None, *, block_rows: int | None = None,
           dtype=np.float64) -> np.ndarray:
    """The scalar kernel ``k(x1_a, x2_b)`` of ``spec`` (NTK or NNGP), computed in float64.

    Parameters
    ----------
    x1 : (n1, d) inputs.
    x2 : (n2, d) inputs; ``x1`` when omitted.
    block_rows : rows of ``x1`` per evaluation; intermediates hold a few
        arrays of ``block_rows * n2`` numbers, so a 20000 x 2000 kernel never
        needs more than a bounded chunk of memory beyond its own output. By
        default about 2^20 numbers a block (8 MB an array): blocks that size
        reuse their memory instead of mapping fresh pages, and stay in cache
        (2048 x 20000, ReLU: 1.8-2.0 s and 25 MB beyond the output, against
        4.8-4.9 s and 1.15 GB at 1024 rows, and 1.7-1.9 s and 230 MB through
        ``stax``, which this module used before).
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
    out = np.empty((x1.shape[0], x2.shape[0]), dtype=dtype)
    rows = max(1, min(block_rows or _BLOCK_NUMBERS // max(x2.shape[0], 1), x1.shape[0]))
    q2 = _input_variance(spec, x2)
    for start in range(0, x1.shape[0], rows):
        block = x1[start:start + rows]
        out[start:start + len(block)] = _recursion(spec, block, x2, q2)
    return out


def _input_variance(spec: KernelSpec, x: np.ndarray) -> np.ndarray:
    """``(k,)``: the first layer's pre-activation variance ``W^2 |x|^2 / d + b^2`` of each input."""
    return spec.W_std ** 2 * np.einsum("ij,ij->i", x, x) / x.shape[1] + spec.b_std ** 2


def _recursion(spec: KernelSpec, x1: np.ndarray, x2: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """``(n1, n2)``: the kernel of ``spec`` between ``x1`` and ``x2`` (``q2``: :func:`_input_variance` of ``x2``).

    Per hidden layer, with ``s`` the pre-activation covariance of two inputs and ``q1, q2`` their variances,
    the activation's Gaussian expectations (the forms neural-tangents uses: ``arctan2`` of a clipped square
    root, stable where ``s^2 -> q1 q2``):

    * ReLU: ``E[phi(u) phi(v)] = (sqrt(q1 q2 - s^2) + (pi - theta) s) / (2 pi)`` and ``E[phi'(u) phi'(v)] =
      (pi - theta) / (2 pi)``, ``theta = arctan2(sqrt(q1 q2 - s^2), s)``; the variances halve;
    * erf: ``E[phi(u) phi(v)] = (2 / pi) arctan2(2 s, r)`` and ``E[phi'(u) phi'(v)] = (4 / pi) / r``, ``r =
      sqrt((1 + 2 q1)(1 + 2 q2) - 4 s^2)``; a variance ``q`` becomes ``(2 / pi) arctan2(q, sqrt(q + 1/4))``;

    then the next dense layer: ``s <- W^2 E[phi phi] + b^2``, ``ntk <- s + W^2 E[phi' phi'] ntk``.
    """
    W2, b2 = spec.W_std ** 2, spec.b_std ** 2
    q1 = _input_variance(spec, x1)[:, None]
    q2 = q2[None, :]
    s = W2 * (x1 @ x2.T) / x1.shape[1] + b2
    ntk = s.copy() if spec.kind == "ntk" else None
    for _ in range(spec.depth):
        # In place where it can be: a block's few arrays are reused (the kernel's time goes to memory).
        if spec.activation == "relu":
            root = q1 * q2
            root -= s * s
            np.sqrt(np.maximum(root, 0.0, out=root), out=root)
            derivative = np.arctan2(root, s)
            derivative[(root == 0) & (s == 0)] = np.pi / 2  # the angle of a zero input
            derivative *= -1 / (2 * np.pi)
            derivative += 0.5
            s *= derivative
            root *= 1 / (2 * np.pi)
            s += root  # E[phi(u) phi(v)]
            q1, q2 = q1 / 2, q2 / 2
        else:
            root = (1 + 2 * q1) * (1 + 2 * q2)
            root -= 4 * s * s
            np.sqrt(np.maximum(root, 0.0, out=root), out=root)
            s = np.arctan2(2 * s, root, out=s)
            s *= 2 / np.pi  # E[phi(u) phi(v)]
            with np.errstate(divide="ignore"):
                derivative = np.divide(4 / np.pi, root, out=root)
            q1, q2 = (2 / np.pi * np.arctan2(q, np.sqrt(q + 0.25)) for q in (q1, q2))
        s *= W2
        s += b2
        q1, q2 = W2 * q1 + b2, W2 * q2 + b2
        if ntk is not None:
            ntk *= derivative
            ntk *= W2
            ntk += s
    return s if ntk is None else ntk
