"""A small convolutional network for 32 x 32 RGB images, and its input pipeline.

This is the finite-width network of the CIFAR experiments at laptop scale:
three convolution blocks (32, 64, 128 channels times ``width``), global
average pooling and a linear head. The ResNet-34 of the CIFAR-10N paper is
not provided; full-scale runs are out of this module's scope.

Randomness enters only through a ``torch.Generator`` argument (docs/architecture.md
convention 4): the weights are drawn from it explicitly, and building a
network or augmenting a batch leaves torch's global random state untouched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Channel statistics of the original CIFAR-10 training pixels, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_BASE_CHANNELS = (32, 64, 128)


def normalise(images, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale uint8 images to the network's input: channels first, per-channel standardised.

    Parameters
    ----------
    images : (N, H, W, 3) uint8, numpy array or tensor.
    dtype : floating dtype of the result.

    Returns
    -------
    (N, 3, H, W) tensor ``(images / 255 - CIFAR10_MEAN) / CIFAR10_STD``, on the
    device of ``images``.
    """
    if not isinstance(images, torch.Tensor):
        # A copy: torch cannot wrap the read-only arrays the CIFAR loaders return.
        images = torch.tensor(np.asarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be a (N, H, W, 3) uint8 array, got {images.dtype} of shape {tuple(images.shape)}"
        )
    mean = torch.tensor(CIFAR10_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).to(dtype) / 255 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding, then a horizontal flip with probability 1/2.

    Each image gets its own offsets ``(dy, dx)`` uniform on ``{0, ..., 2 padding}``
    and its own flip. Zero padding is zero in the units of ``images``: black
    for uint8 pixels, the mean colour after :func:`normalise`.

    Parameters
    ----------
    images : (N, C, H, W) tensor of any dtype.
    generator : source of the offsets and flips; its device may differ from
        that of ``images``.
    padding : pixels added on every side before cropping back to ``(H, W)``.

    Returns
    -------
    (N, C, H, W) tensor of the dtype and device of ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    n, channels, height, width = images.shape
    offset_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(images.device)
    offset_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(images.device)
    flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(images.device)
    padded = nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offset_y[:, None] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    # A flip reads the crop's columns right to left, so crop and flip are one gather.
    columns = offset_x[:, None] + torch.where(flip[:, None], width - 1 - columns, columns)
    return padded[
        torch.arange(n, device=images.device)[:, None, None, None],
        torch.arange(channels, device=images.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


class _MaxPool(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward without gradient on the CPU pools a batch in channels-last layout.

    The values are the same bit for bit (a maximum rounds nothing; the result
    returns to the contiguous layout, so the next convolution runs as before):
    torch's contiguous-layout CPU kernel records the arg-max indices even
    without gradient, which took half of ``SmallCNN(width=0.5)``'s evaluation
    forward of 128 images (39.3 -> 22.8 ms with this, one thread,
    ``bench/surrogate.py``). With gradient the layout stays: the channels-last
    gradient slowed the training step and the meta step by 12-13%.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class SmallCNN(nn.Module):
    """Three blocks conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, global average pool, linear head.

    For 32 x 32 inputs the blocks leave 16, 8 and 4 pixels a side. Convolution
    weights are He-normal (variance ``2 / fan_in``, which keeps ReLU activations
    at unit scale), the head LeCun-normal (``1 / fan_in``, logits of order one)
    with zero bias; BatchNorm starts as the identity. Convolutions have no bias
    since BatchNorm's shift replaces it.

    Parameters
    ----------
    num_classes : C, the number of logits.
    width : multiplier of the channel counts (32, 64, 128).
    generator : the only source of the initial weights; parameters live on its device.
    in_channels : channels of the input images.
    dtype : floating dtype of the parameters.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        generator: torch.Generator,
        in_channels: int = 3,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if width <= 0 or num_classes < 2:
            raise ValueError(f"width must be positive and num_classes at least 2, got {width} and {num_classes}")
        device = generator.device
        channels = [in_channels] + [max(1, round(base * width)) for base in _BASE_CHANNELS]
        blocks = []
        for fan_in_channels, out_channels in zip(channels[:-1], channels[1:]):
            # skip_init builds the layer without its default initialisation, which would draw from the global RNG.
            conv = nn.utils.skip_init(
                nn.Conv2d, fan_in_channels, out_channels, 3, padding=1, bias=False, device=device, dtype=dtype
            )
            fan_in = fan_in_channels * 9
            with torch.no_grad():
                draw = torch.randn(conv.weight.shape, generator=generator, device=device, dtype=dtype)
                conv.weight.copy_(draw * math.sqrt(2 / fan_in))
            blocks += [conv, nn.BatchNorm2d(out_channels, device=device, dtype=dtype), nn.ReLU(), _MaxPool(2)]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels[-1]
        self.head = nn.utils.skip_init(nn.Linear, self.feature_dim, num_classes, device=device, dtype=dtype)
        with torch.no_grad():
            draw = torch.randn(self.head.weight.shape, generator=generator, device=device, dtype=dtype)
            self.head.weight.copy_(draw / math.sqrt(self.feature_dim))
            self.head.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, feature_dim), the penultimate representation.

        In training mode BatchNorm uses the statistics of the batch, so one
        example's features depend on the others; call ``eval()`` first to
        featurise examples independently.
        """
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C) logits."""
        return self.head(self.body(x))
