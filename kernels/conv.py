"""A convolutional network and its infinite-width NTK (docs/theory.md section 1).

The network is ``(Conv -> act) * depth -> GlobalAvgPool -> Dense`` on images
stored as flat rows: an input ``x : (d,)`` with ``d = H * W * channels`` is
the image ``x.reshape(H, W, channels)`` (channels last, as neural-tangents
reads it). Every layer is in the NTK parametrisation, with no batch norm: a
convolution computes ``W_std / sqrt(channels_in * q * q) * conv(a, W) +
b_std * b`` with ``q x q`` filters, stride 1, zero ``SAME`` padding and
standard normal ``W : (channels_out, channels_in, q, q)`` and ``b``; the head
is the Dense layer of :class:`kernels.empirical.MLP`.

:func:`conv_network` builds it in neural-tangents' ``stax`` (``Conv(...,
parameterization='ntk')``, ``GlobalAvgPool``), whose ``kernel_fn`` is the
analytic NTK; :class:`ConvNet` is its torch twin, whose empirical NTK
(:func:`kernels.empirical.empirical_ntk_autodiff`) converges to it as the
number of channels grows. Cost: the pooled kernel carries the covariance of
every pair of pixel positions, ``(H W)^2`` numbers per pair of images and
layer, where the MLP's carries one.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
import torch

from kernels._nt import stax
from kernels.infinite import check_network


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """``(Conv q x q -> act) * depth -> GlobalAvgPool -> Dense`` on ``image_shape = (H, W, channels)`` images.

    ``depth`` convolution layers (at least one), ``filter_size`` q,
    ``W_std`` and ``b_std`` of every layer (times ``1/sqrt(fan_in)`` for the
    weights), ``kind`` the NTK or the NNGP. The default image is the 8x8
    grey digit of :func:`dynamics.problem.digits`.
    """

    depth: int = 1
    activation: str = "relu"
    W_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    kind: str = "ntk"
    image_shape: tuple[int, int, int] = (8, 8, 1)
    filter_size: int = 3

    def __post_init__(self):
        check_network(self, min_depth=1)
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, channels) of positive sizes, got {self.image_shape}")
        if int(self.filter_size) < 1:
            raise ValueError(f"filter_size must be >= 1, got {self.filter_size}")

    @property
    def input_dim(self) -> int:
        """``d = H * W * channels``, the length of a flat input row."""
        return math.prod(self.image_shape)


def conv_network(spec: ConvSpec, width: int = 512, out_dim: int = 1):
    """``(init_fn, apply_fn, kernel_fn)`` of the network ``spec`` describes, on ``(N, H, W, channels)`` inputs."""
    act = {"relu": stax.Relu, "erf": stax.Erf}[spec.activation]
    q = int(spec.filter_size)
    layers = []
    for _ in range(spec.depth):
        layers += [stax.Conv(width, (q, q), padding="SAME", W_std=spec.W_std, b_std=spec.b_std,
                             parameterization="ntk"), act()]
    layers += [stax.GlobalAvgPool(),
               stax.Dense(out_dim, W_std=spec.W_std, b_std=spec.b_std, parameterization="ntk")]
    return stax.serial(*layers)


@functools.lru_cache(maxsize=None)
def _jitted_kernel_fn(spec: ConvSpec):
    return jax.jit(conv_network(spec)[2], static_argnames="get")


def conv_kernel(spec: ConvSpec, x1: np.ndarray, x2: np.ndarray | None = None, *, block_rows: int = 64) -> np.ndarray:
    """The scalar kernel ``k(x1_a, x2_b)`` of ``spec`` (NTK or NNGP) on flat images, float64.

    Parameters
    ----------
    x1 : (n1, d) images as rows, ``d = H * W * channels`` (channels last).
    x2 : (n2, d); ``x1`` when omitted.
    block_rows : rows of ``x1`` per evaluation; intermediates hold
        ``O(block_rows * n2 * (H W)^2)`` numbers.

    Returns
    -------
    (n1, n2) float64 array.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    d = spec.input_dim
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != d or x2.shape[1] != d:
        raise ValueError(f"inputs must be (N, {d}) rows of {spec.image_shape} images, got {x1.shape} and {x2.shape}")
    kernel_fn = _jitted_kernel_fn(spec)
    images2 = x2.reshape(-1, *spec.image_shape)
    out = np.empty((x1.shape[0], x2.shape[0]))
    for start in range(0, x1.shape[0], block_rows):
        block = x1[start:start + block_rows].reshape(-1, *spec.image_shape)
        out[start:start + len(block)] = np.asarray(kernel_fn(block, images2, get=spec.kind))
    return out


class ConvNet(torch.nn.Module):
    """The torch twin of :func:`conv_network`: same layers, same NTK parametrisation, no batch norm.

    Parameters
    ----------
    width : channels of every convolution layer, ``N``.
    out_dim : outputs ``C``.
    spec : depth, activation, ``W_std``, ``b_std``, image shape, filter size (``spec.kind`` is unused).
    generator : the only source of randomness of the initialisation.
    dtype : parameter dtype.

    The module maps flat rows ``(N, d)`` to outputs ``(N, C)``, so that it
    stands wherever an ``MLP`` does.
    """

    def __init__(self, width: int, out_dim: int, spec: ConvSpec, generator: torch.Generator,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.spec = spec
        q = int(spec.filter_size)
        channels = [spec.image_shape[2]] + [int(width)] * spec.depth
        self.filters = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(channels[:-1], channels[1:]):
            self.filters.append(torch.nn.Parameter(torch.randn(fan_out, fan_in, q, q, generator=generator,
                                                               dtype=dtype)))
            self.biases.append(torch.nn.Parameter(torch.randn(fan_out, generator=generator, dtype=dtype)))
        self.filter_scales = [spec.W_std / math.sqrt(fan_in * q * q) for fan_in in channels[:-1]]
        self.head = torch.nn.Parameter(torch.randn(int(width), out_dim, generator=generator, dtype=dtype))
        self.head_bias = torch.nn.Parameter(torch.randn(out_dim, generator=generator, dtype=dtype))
        self.head_scale = spec.W_std / math.sqrt(int(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, C)`` for flat images ``x : (N, d)``."""
        H, W, channels = self.spec.image_shape
        a = x.reshape(-1, H, W, channels).permute(0, 3, 1, 2)
        # Odd q: symmetric padding q // 2 is stax's SAME; even q pads one more pixel at the end.
        q = int(self.spec.filter_size)
        padding = ((q - 1) // 2, q // 2, (q - 1) // 2, q // 2)
        for scale, filters, bias in zip(self.filter_scales, self.filters, self.biases):
            z = scale * torch.nn.functional.conv2d(torch.nn.functional.pad(a, padding), filters) \
                + self.spec.b_std * bias[:, None, None]
            a = torch.relu(z) if self.spec.activation == "relu" else torch.special.erf(z)
        pooled = a.mean(dim=(2, 3))
        return self.head_scale * (pooled @ self.head) + self.spec.b_std * self.head_bias


__all__ = ["ConvNet", "ConvSpec", "conv_kernel", "conv_network"]
