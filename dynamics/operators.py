"""Kernel operators: the kernel products of one meta-reweighting step, dense or through explicit features.

One step of docs/theory.md section 2 touches the kernel only through three
products on a batch ``B`` of training examples (``b`` of them) and a batch
``M`` of clean examples (``m_b`` of them)::

    update      K_{[X;V],B} G + gamma K_{[X;V],M} R_meta    (n + m, C)   every train and clean output moves
    look-ahead  K_{M,B} G + gamma K_{M,M} R_meta            (m_b, C)     the clean outputs after the look-ahead
    coupling    K_{M,B}^T R_meta_hat                        (b, C)       c_i = sum_j k(x_i, x^v_j) r^v_j

and, at recorded steps only, the test outputs' displacement ``K_TX G_sum +
gamma K_TV R_meta_sum : (p, C)``. A kernel operator supplies these (see
:class:`KernelOperator`), so the simulator (:mod:`dynamics.simulator`) steps
over any implementation through the same code. Two implementations:

* :class:`KernelBlocks`: the dense blocks ``K_XX, K_VX, K_VV, K_TX, K_TV``;
  a full-batch step costs ``O((n + m)^2 C)`` and the blocks ``O((n + m + p)
  (n + m))`` memory (docs/theory.md section 2);
* :class:`FeatureKernel`: ``k(x, x') = phi(x) . phi(x')`` with explicit
  features ``Phi = phi(X) : (n, D)``, ``Psi = phi(X_meta) : (m, D)``,
  ``Phi_test : (p, D)``; every product goes through a ``(D, C)`` matrix, so a
  step costs ``O((n + m + p) D C)`` and memory is ``O((n + m + p) D)``: no
  ``(n, n)`` or ``(n, m)`` matrix is ever formed (docs/theory.md section 8).

Both are immutable JAX pytrees of float64 arrays (:class:`KernelBlocks` may
hold float32 blocks for large n: its products then round their right-hand
side to float32 and return float64, the state stays float64; docs/theory.md
section 2): pass them to jitted code,
``jax.device_put`` them once. Their spectral and per-example methods
(``lambda_max``, ``k_meta_norm``, ...) run on the host in numpy, once per
run, and are never called inside a step (docs/architecture.md, convention 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.problem import Problem

_BLOCKS = ("K_XX", "K_VX", "K_VV", "K_TX", "K_TV")


class BatchKernel(Protocol):
    """The kernel restricted to the columns of one step's batches (returned by :meth:`KernelOperator.select`).

    ``G : (b, C)`` are weighted training residuals of the batch ``B``,
    ``R_meta : (m_b, C)`` clean residuals of the meta batch ``M``.
    """

    def apply(self, G, R_meta, gamma: float) -> jax.Array:
        """``(n + m, C)``: ``K_{[X;V],B} G + gamma K_{[X;V],M} R_meta``, the change of all train and clean outputs
        per unit step size."""

    def apply_meta_rows(self, G, R_meta, gamma: float) -> jax.Array:
        """``(m_b, C)``: ``K_{M,B} G + gamma K_{M,M} R_meta``, the same restricted to the meta batch (look-ahead)."""

    def transpose_meta_rows(self, R_meta) -> jax.Array:
        """``(b, C)``: ``K_{M,B}^T R_meta``, the coupling of each batch example to the clean residuals."""


class KernelOperator(Protocol):
    """What the simulator needs of a kernel (docs/theory.md sections 2 and 8). A JAX pytree.

    In a step (jitted, JAX arrays): :meth:`select` and :meth:`apply_test`.
    Once per run (host, numpy): :attr:`sizes`, :meth:`lambda_max`,
    :meth:`lambda_max_train`, :meth:`transpose_meta`, :meth:`k_meta_norm`.
    """

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(n, m, p)``."""

    def select(self, batch, meta_batch) -> BatchKernel:
        """The kernel on the columns of ``batch : (b,)`` training and ``meta_batch : (m_b,)`` clean indices
        (``None``: the whole set, with no gather)."""

    def apply_test(self, G, R_meta, gamma: float) -> jax.Array:
        """``(p, C)``: ``K_TX G + gamma K_TV R_meta`` for ``G : (n, C)``, ``R_meta : (m, C)``."""

    def lambda_max(self, gamma: float) -> float:
        """Largest eigenvalue of the joint train and clean kernel weighted by ``diag(1, gamma)``."""

    def lambda_max_train(self) -> float:
        """Largest eigenvalue of ``K_XX``."""

    def transpose_meta(self, R_meta: np.ndarray) -> np.ndarray:
        """``(n, C)``: ``K_VX^T R_meta`` for ``R_meta : (m, C)``."""

    def k_meta_norm(self) -> np.ndarray:
        """``(n,)``: ``||k(x_i, X_meta)||_2``, the column norms of ``K_VX`` (the C4 bound's kernel factor)."""


def _top_eigenvalue(K, tol: float = 1e-12) -> float:
    """Largest eigenvalue of the symmetric ``K`` (an array or a :func:`_lanczos_operator`) by Lanczos."""
    import scipy.sparse.linalg  # here, not at the top: 0.2-0.4 s to import, for one solve per run

    if K.shape[0] <= 2:
        return float(np.linalg.eigvalsh(K @ np.eye(K.shape[0]))[-1])
    v0 = np.ones(K.shape[0])  # fixed start vector: the same eigenvalue, bit for bit, every call
    return float(scipy.sparse.linalg.eigsh(K, k=1, which="LA", v0=v0, tol=tol)[0][0])


def _host(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _product(K, X):
    """``K @ X`` in the precision of ``K``, returned in that of ``X``: a float32 kernel multiplies a float32 copy
    of the (thin) right-hand side instead of being converted (a float64 copy of the kernel per product)."""
    if K.dtype == X.dtype:
        return K @ X
    return (K @ X.astype(K.dtype)).astype(X.dtype)


def _lanczos_operator(size: int, matvec: Callable[[np.ndarray], np.ndarray]):
    """The float64 operator ``v -> matvec(v)`` on vectors of ``size`` that :func:`_top_eigenvalue` iterates."""
    import scipy.sparse.linalg

    return scipy.sparse.linalg.LinearOperator((size, size), matvec=lambda v: matvec(np.ravel(v)), dtype=np.float64)


def _top_eigenvalue_of_symmetric(K) -> float:
    """:func:`_top_eigenvalue` of a stored matrix, in float64 whatever ``K``'s precision: a float32 matrix is
    applied in float32 to each Lanczos vector, to the float32 tolerance."""
    if K.dtype == np.float64:
        return _top_eigenvalue(K)
    return _top_eigenvalue(_lanczos_operator(K.shape[0], lambda v: _product(K, v)), tol=1e-6)


def _new(cls, **fields):
    """An instance of a frozen operator class from its stored fields, without ``__init__`` (pytree unflattening:
    the leaves may be tracers or placeholders)."""
    instance = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(instance, name, value)
    return instance


# ---------------------------------------------------------------------------------------------------------------
# Dense kernel blocks


def _describe(operator, **extra) -> str:
    """``Name(n=..., m=..., p=..., extra...)``: an operator's sizes, never its arrays."""
    sizes = dict(zip("nmp", operator.sizes)) | extra
    return f"{type(operator).__name__}({', '.join(f'{key}={value}' for key, value in sizes.items())})"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, init=False, repr=False, eq=False)
class KernelBlocks:
    """The dense kernel blocks of docs/theory.md section 2, float64 (or all float32, for large n).

    ``KernelBlocks(K_XX, K_VX, K_VV, K_TX, K_TV)`` with

    K_XX : (n, n) train-train.  K_VX : (m, n) meta-train.  K_VV : (m, m).
    K_TX : (p, n) test-train.  K_TV : (p, m) test-meta.

    Stored as the columns a step multiplies, ``K_X = [K_XX; K_VX] : (n + m,
    n)`` and ``K_V = [K_VX^T; K_VV] : (n + m, m)``, plus ``K_TX, K_TV``, so
    the update of all train and clean outputs is one product per batch and no
    copy of the kernel is made per run; ``K_XX``, ``K_VX`` and ``K_VV`` are
    read-only views into that storage.

    Blocks given in float32 (all of them) are kept in float32: half the memory
    and, the step being bound by reading the kernel, about twice the speed; the
    state and every result stay float64 (see :func:`_product`). Any other type
    is converted to float64.
    """

    K_X: np.ndarray
    K_V: np.ndarray
    K_TX: np.ndarray
    K_TV: np.ndarray

    def __init__(self, K_XX, K_VX, K_VV, K_TX, K_TV):
        blocks = [np.asarray(a) for a in (K_XX, K_VX, K_VV, K_TX, K_TV)]
        dtype = np.float32 if all(a.dtype == np.float32 for a in blocks) else np.float64
        K_XX, K_VX, K_VV, K_TX, K_TV = (a.astype(dtype, copy=False) for a in blocks)
        n, m, p = K_XX.shape[0], K_VV.shape[0], K_TX.shape[0]
        expected = {"K_XX": (n, n), "K_VX": (m, n), "K_VV": (m, m), "K_TX": (p, n), "K_TV": (p, m)}
        for name, array in zip(_BLOCKS, (K_XX, K_VX, K_VV, K_TX, K_TV)):
            if array.shape != expected[name]:
                raise ValueError(f"kernel block {name} has shape {array.shape}, expected {expected[name]} "
                                 f"(n, m, p = {n}, {m}, {p} from K_XX, K_VV, K_TX)")
        K_X, K_V = np.concatenate([K_XX, K_VX]), np.concatenate([K_VX.T, K_VV])
        # Read-only: K_V holds a copy of K_VX^T, which a write through the view K_VX would leave stale.
        K_X.flags.writeable = K_V.flags.writeable = False
        object.__setattr__(self, "K_X", K_X)
        object.__setattr__(self, "K_V", K_V)
        object.__setattr__(self, "K_TX", K_TX)
        object.__setattr__(self, "K_TV", K_TV)

    def tree_flatten(self):
        return (self.K_X, self.K_V, self.K_TX, self.K_TV), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        return _new(cls, **dict(zip(("K_X", "K_V", "K_TX", "K_TV"), leaves)))

    def __repr__(self):
        return _describe(self)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.K_X.shape[1], self.K_V.shape[1], self.K_TX.shape[0]

    @property
    def K_XX(self):
        return self.K_X[:self.K_X.shape[1]]

    @property
    def K_VX(self):
        return self.K_X[self.K_X.shape[1]:]

    @property
    def K_VV(self):
        return self.K_V[self.K_X.shape[1]:]

    @classmethod
    def from_problem(cls, problem: Problem, kernel_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> KernelBlocks:
        """Evaluate ``kernel_fn(x1 (a, d), x2 (b, d)) -> (a, b)`` on the problem's inputs, in one call: every input
        against the training and clean inputs (one compilation instead of five; ``K_XV``, the 5% it computes
        twice, is dropped)."""
        n, m, _ = problem.sizes
        train_and_clean = np.concatenate([problem.X, problem.X_meta])
        K = kernel_fn(np.concatenate([train_and_clean, problem.X_test]), train_and_clean)
        return cls(K[:n, :n], K[n:n + m, :n], K[n:n + m, n:], K[n + m:, :n], K[n + m:, n:])

    @property
    def dtype(self) -> np.dtype:
        """The blocks' storage precision (float64, or float32 for large n)."""
        return self.K_X.dtype

    def arrays(self) -> dict[str, np.ndarray]:
        """The five blocks by name (views into the stored arrays)."""
        return {name: getattr(self, name) for name in _BLOCKS}

    @classmethod
    def load(cls, path) -> KernelBlocks:
        """Read the blocks an ``np.savez(path, **blocks.arrays())`` wrote."""
        with np.load(path) as data:
            return cls(**{name: data[name] for name in _BLOCKS})

    # -- in a step (JAX) ------------------------------------------------------------------------------------------

    def select(self, batch, meta_batch) -> _DenseBatch:
        n = self.K_X.shape[1]
        # Whole sets use static slices: a gather of all rows would copy the kernel every step.
        K_XB = self.K_X if batch is None else self.K_X[:, batch]
        K_VB = self.K_V if meta_batch is None else self.K_V[:, meta_batch]
        meta_rows = slice(n, None) if meta_batch is None else n + meta_batch
        return _DenseBatch(K_XB, K_VB, K_XB[meta_rows], K_VB[meta_rows])

    def apply_test(self, G, R_meta, gamma: float):
        return _product(self.K_TX, G) + gamma * _product(self.K_TV, R_meta)

    # -- once per run (numpy) -------------------------------------------------------------------------------------

    def lambda_max(self, gamma: float) -> float:
        """Largest eigenvalue of the joint kernel on train and clean subset weighted by ``diag(1, gamma)``.

        ``K diag(w, gamma)`` has the spectrum of ``D^1/2 K D^1/2``, which grows
        with every weight, so ``w = 1`` is the worst case over ``w`` in ``[0, 1]``.
        Lanczos on the blocks: the joint matrix is never formed.
        """
        n, m, _ = self.sizes
        host = self._on_host()
        K_XX, K_VX, K_VV = host.K_XX, host.K_VX, host.K_VV
        root = np.sqrt(gamma)

        def matvec(v):
            top, bottom = v[:n], root * v[n:]
            return np.concatenate([_product(K_XX, top) + _product(K_VX.T, bottom),
                                   root * (_product(K_VX, top) + _product(K_VV, bottom))])

        return _top_eigenvalue(_lanczos_operator(n + m, matvec), tol=1e-12 if self.dtype == np.float64 else 1e-6)

    def lambda_max_train(self) -> float:
        return _top_eigenvalue_of_symmetric(self._on_host().K_XX)

    def transpose_meta(self, R_meta: np.ndarray) -> np.ndarray:
        return _host(self._on_host().K_VX).T @ R_meta

    def k_meta_norm(self) -> np.ndarray:
        return np.linalg.norm(_host(self._on_host().K_VX), axis=0)

    def _on_host(self) -> KernelBlocks:
        """These blocks with numpy arrays (views of device-put ones on a CPU): slicing them copies nothing."""
        return jax.tree.map(np.asarray, self)


@dataclasses.dataclass(frozen=True)
class _DenseBatch:
    """Dense kernel columns of one step's batches: ``K_XB = K_{[X;V],B} : (n + m, b)``, ``K_VB = K_{[X;V],M} :
    (n + m, m_b)``, and their meta-batch rows ``K_MB = K_{M,B} : (m_b, b)``, ``K_MM = K_{M,M} : (m_b, m_b)``."""

    K_XB: jax.Array | None
    K_VB: jax.Array | None
    K_MB: jax.Array
    K_MM: jax.Array

    def apply(self, G, R_meta, gamma):
        return _product(self.K_XB, G) + gamma * _product(self.K_VB, R_meta)

    def apply_meta_rows(self, G, R_meta, gamma):
        return _product(self.K_MB, G) + gamma * _product(self.K_MM, R_meta)

    def transpose_meta_rows(self, R_meta):
        return _product(self.K_MB.T, R_meta)


def dense_meta_kernel(K_VX, K_VV) -> BatchKernel:
    """The look-ahead and coupling products of given blocks ``K_VX : (m, n)``, ``K_VV : (m, m)`` (no ``apply``)."""
    return _DenseBatch(None, None, K_VX, K_VV)


# ---------------------------------------------------------------------------------------------------------------
# Dense blocks multiplied by the host's BLAS (runs advanced together)

_HOST_BLOCKS: dict[int, KernelBlocks] = {}
_HOST_INTERRUPTS: dict[int, BaseException] = {}
_HOST_TOKENS = itertools.count()


@contextlib.contextmanager
def host_products(blocks: KernelBlocks) -> Iterator[HostBlocks]:
    """``blocks`` as an operator whose full-batch products are computed by numpy's BLAS, called back from the
    jitted step; valid inside the ``with`` block.

    For ``S`` runs advanced together (:func:`dynamics.simulator.simulate_many`) every product of a step is one
    GEMM with ``S C`` columns, bound by arithmetic; XLA's CPU float64 GEMM reaches about half of numpy's BLAS
    on the same machine (``bench/batched.py`` measures both). The blocks stay where they are: the jitted code
    carries only a token that names them in a registry while the block lasts, so no kernel is copied per call
    and the compiled loop serves every kernel of the same sizes. A single run's thin products gain nothing
    (the kernel's read binds them), so :func:`dynamics.simulator.simulate` does not use this.
    """
    token = next(_HOST_TOKENS)
    _HOST_BLOCKS[token] = blocks._on_host()
    try:
        yield HostBlocks(np.int64(token), blocks.sizes)
    finally:
        del _HOST_BLOCKS[token]
        _HOST_INTERRUPTS.pop(token, None)


def raise_host_interrupt(operator: HostBlocks) -> None:
    """Raise the interrupt (SIGINT, or a signal handler's exception) that arrived during one of ``operator``'s
    callbacks; call it once the jitted call has returned.

    XLA may run a callback on the calling (main) thread, where Python runs signal handlers, so a handler's
    exception can be raised inside the callback, where XLA would turn it into a runtime error. The callback
    keeps it instead, returns zeros for the rest of the jitted call, and this raises it where the caller can
    unwind.
    """
    interrupt = _HOST_INTERRUPTS.pop(int(operator.token), None)
    if interrupt is not None:
        raise interrupt


def _host_block(blocks: KernelBlocks, name: str) -> np.ndarray:
    """A block by name; ``"K_VX.T"`` is the transpose of ``K_VX`` (a view, multiplied without a copy)."""
    return getattr(blocks, name.removesuffix(".T")).T if name.endswith(".T") else getattr(blocks, name)


def _host_multiply(names: tuple[str, ...], token, *right):
    """``tuple(X_t @ block(name).T for name, X_t in zip(names, right))`` on the host, for the transposed operands
    ``X_t = X.T : (c, rows)``; from vmapped callers (runs, C7 draws) ``(*batch, c, rows)`` with size-1 axes where
    a vmap left an operand unbatched: the ``S`` operands of the broadcast batch are then the ``S c`` rows of one
    GEMM, with no copy on either side (XLA writes and reads the transposes inside its own fused loops)."""
    token = int(np.ravel(token)[0])
    try:
        return _host_products_of(_HOST_BLOCKS[token], names, right)
    except Exception:
        raise
    except BaseException as interrupt:  # kept for raise_host_interrupt, after the jitted call
        _HOST_INTERRUPTS[token] = interrupt
        batch = np.broadcast_shapes(*(np.shape(X)[:-2] for X in right))
        return tuple(np.zeros(batch + (np.shape(X)[-2], _host_block(_HOST_BLOCKS[token], name).shape[0]))
                     for name, X in zip(names, right))


def _host_products_of(blocks: KernelBlocks, names: tuple[str, ...], right) -> tuple[np.ndarray, ...]:
    batch = np.broadcast_shapes(*(np.shape(X)[:-2] for X in right))
    products = []
    for name, X in zip(names, right):
        K, (c, rows) = _host_block(blocks, name), np.shape(X)[-2:]
        X = np.broadcast_to(np.asarray(X), batch + (c, rows)).reshape(-1, rows)
        with np.errstate(all="ignore"):  # IEEE arithmetic, silent as in XLA: a diverging run is reported as such
            product = X @ K.T if K.dtype == X.dtype else (X.astype(K.dtype) @ K.T).astype(X.dtype)
        products.append(product.reshape(batch + (c, K.shape[0])))
    return tuple(products)


def _called_back(names: tuple[str, ...], rows: tuple[int, ...], token, *right):
    """``tuple(block(name) @ X ...)`` by :func:`_host_multiply` from jitted code (``rows``: each product's row
    count), which multiplies the transposes."""
    shapes = tuple(jax.ShapeDtypeStruct((X.shape[-1], count), X.dtype) for count, X in zip(rows, right))
    products = jax.pure_callback(functools.partial(_host_multiply, names), shapes, token, *(X.T for X in right),
                                 vmap_method="expand_dims")
    return tuple(product.T for product in products)


def x64_in_every_thread() -> bool:
    """Whether JAX's x64 mode is on process-wide, not only inside a caller's ``enable_x64`` scope (which is
    thread-local). XLA runs callbacks on its own threads, and JAX converts a callback's float64 arrays to
    float32 on a thread outside x64 mode, so :func:`host_products` needs it process-wide."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(bool(jax.config.jax_enable_x64)))
    thread.start()
    thread.join()
    return seen[0]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class HostBlocks:
    """:class:`KernelBlocks` whose products run on the host (made by :func:`host_products`); full batches only.

    token : () the registry entry of the blocks (a pytree leaf: one compilation for every kernel of these sizes).
    sizes : ``(n, m, p)``.
    """

    token: np.ndarray
    sizes: tuple[int, int, int]

    def tree_flatten(self):
        return (self.token,), self.sizes

    @classmethod
    def tree_unflatten(cls, sizes, leaves):
        return _new(cls, token=leaves[0], sizes=sizes)

    def select(self, batch, meta_batch) -> _HostBatch:
        if batch is not None or meta_batch is not None:
            raise ValueError("host products serve full-batch steps only (batch_size and meta_batch_size None)")
        return _HostBatch(self.token, self.sizes)

    def apply_test(self, G, R_meta, gamma: float):
        p = self.sizes[2]
        train, meta = _called_back(("K_TX", "K_TV"), (p, p), self.token, G, R_meta)
        return train + gamma * meta


@dataclasses.dataclass(frozen=True)
class _HostBatch:
    """The full-batch products of :class:`_DenseBatch`, computed on the host."""

    token: jax.Array
    sizes: tuple[int, int, int]

    def apply(self, G, R_meta, gamma):
        n, m, _ = self.sizes
        train, meta = _called_back(("K_X", "K_V"), (n + m, n + m), self.token, G, R_meta)
        return train + gamma * meta

    def apply_meta_rows(self, G, R_meta, gamma):
        m = self.sizes[1]
        train, meta = _called_back(("K_VX", "K_VV"), (m, m), self.token, G, R_meta)
        return train + gamma * meta

    def transpose_meta_rows(self, R_meta):
        return _called_back(("K_VX.T",), (self.sizes[0],), self.token, R_meta)[0]


# ---------------------------------------------------------------------------------------------------------------
# Explicit features


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class FeatureKernel:
    """The kernel ``k(x, x') = phi(x) . phi(x')`` of explicit features (docs/theory.md section 8), float64.

    Phi : (n, D) features of the training inputs.  Psi : (m, D) of the clean
    subset.  Phi_test : (p, D) of the test set.

    The linearized model is ``F = Phi Theta`` with ``Theta : (D, C)`` (an
    output bias is one more constant feature); every product of a step goes
    through a ``(D, C)`` parameter-space matrix, ``O((n + m + p) D C)`` per
    step, and the spectra come from ``(D, D)`` Gram matrices
    (``Phi^T Phi``, ``Psi^T Psi``, computed once and cached), never from ``K``.
    """

    Phi: np.ndarray
    Psi: np.ndarray
    Phi_test: np.ndarray

    def __post_init__(self):
        arrays = {name: _host(getattr(self, name)) for name in ("Phi", "Psi", "Phi_test")}
        for name, array in arrays.items():
            if array.ndim != 2 or array.shape[1] < 1:
                raise ValueError(f"{name} must be a 2-d array (rows, D) with D >= 1, got shape {array.shape}")
            object.__setattr__(self, name, array)
        widths = {name: array.shape[1] for name, array in arrays.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"Phi, Psi and Phi_test must have the same number of features D, got {widths}")

    def tree_flatten(self):
        return (self.Phi, self.Psi, self.Phi_test), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        return _new(cls, **dict(zip(("Phi", "Psi", "Phi_test"), leaves)))

    def __repr__(self):
        return _describe(self, D=self.D)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.Phi.shape[0], self.Psi.shape[0], self.Phi_test.shape[0]

    @property
    def D(self) -> int:
        return self.Phi.shape[1]

    @classmethod
    def from_problem(cls, problem: Problem, feature_map: Callable[[np.ndarray], np.ndarray]) -> FeatureKernel:
        """Evaluate ``feature_map(x (a, d)) -> (a, D)`` on the problem's inputs."""
        return cls(feature_map(problem.X), feature_map(problem.X_meta), feature_map(problem.X_test))

    # -- in a step (JAX) ------------------------------------------------------------------------------------------

    def select(self, batch, meta_batch) -> _FeatureBatch:
        Phi_B = self.Phi if batch is None else self.Phi[batch]
        Psi_M = self.Psi if meta_batch is None else self.Psi[meta_batch]
        return _FeatureBatch(self.Phi, self.Psi, Phi_B, Psi_M)

    def apply_test(self, G, R_meta, gamma: float):
        return self.Phi_test @ (self.Phi.T @ G + gamma * (self.Psi.T @ R_meta))

    # -- once per run (numpy) -------------------------------------------------------------------------------------

    @functools.cached_property
    def _gram_train(self) -> np.ndarray:
        Phi = _host(self.Phi)
        return Phi.T @ Phi

    @functools.cached_property
    def _gram_meta(self) -> np.ndarray:
        Psi = _host(self.Psi)
        return Psi.T @ Psi

    def lambda_max(self, gamma: float) -> float:
        """Largest eigenvalue of the joint kernel on train and clean subset weighted by ``diag(1, gamma)``.

        ``D^1/2 K_joint D^1/2 = A A^T`` with ``A = [Phi; sqrt(gamma) Psi]`` has
        the nonzero spectrum of ``A^T A = Phi^T Phi + gamma Psi^T Psi : (D, D)``.
        """
        return _top_eigenvalue(self._gram_train + gamma * self._gram_meta)

    def lambda_max_train(self) -> float:
        """Largest eigenvalue of ``K_XX = Phi Phi^T``, that of ``Phi^T Phi : (D, D)``."""
        return _top_eigenvalue(self._gram_train)

    def transpose_meta(self, R_meta: np.ndarray) -> np.ndarray:
        return _host(self.Phi) @ (_host(self.Psi).T @ R_meta)

    def k_meta_norm(self, rows_per_block: int = 8192) -> np.ndarray:
        """``(n,)``: ``||Psi phi_i|| = sqrt(phi_i^T (Psi^T Psi) phi_i)``, in blocks of rows (``O(n D^2)``)."""
        Phi, gram = _host(self.Phi), self._gram_meta
        squares = np.concatenate([np.einsum("id,id->i", Phi[start:start + rows_per_block] @ gram,
                                            Phi[start:start + rows_per_block])
                                  for start in range(0, Phi.shape[0], rows_per_block)])
        return np.sqrt(np.maximum(squares, 0.0))


@dataclasses.dataclass(frozen=True)
class _FeatureBatch:
    """Features of one step's batches: all rows ``Phi : (n, D)``, ``Psi : (m, D)`` (every output moves) and the
    batches' rows ``Phi_B : (b, D)``, ``Psi_M : (m_b, D)``."""

    Phi: jax.Array
    Psi: jax.Array
    Phi_B: jax.Array
    Psi_M: jax.Array

    def _parameter_step(self, G, R_meta, gamma):
        # (D, C): the gradient of the weighted training loss in parameter space, Phi_B^T G + gamma Psi_M^T R_meta.
        return self.Phi_B.T @ G + gamma * (self.Psi_M.T @ R_meta)

    def apply(self, G, R_meta, gamma):
        step = self._parameter_step(G, R_meta, gamma)
        return jnp.concatenate([self.Phi @ step, self.Psi @ step])

    def apply_meta_rows(self, G, R_meta, gamma):
        return self.Psi_M @ self._parameter_step(G, R_meta, gamma)

    def transpose_meta_rows(self, R_meta):
        return self.Phi_B @ (self.Psi_M.T @ R_meta)
