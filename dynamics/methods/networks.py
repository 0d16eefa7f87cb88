"""The networks every method trains, built from an explicit ``torch.Generator`` (docs/theory.md section 7).

A network maps inputs to ``(N, C)`` logits and exposes ``features(x) -> (N,
D)``, its penultimate representation (what FINE, cleanlab and the surrogate
read). A :data:`NetworkFactory` builds one from a generator, the only source
of its initial weights, so that building it leaves torch's global random
state alone and every method with the same seed starts from the same network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

NetworkFactory = Callable[[torch.Generator], nn.Module]


class FeatureMLP(nn.Module):
    """Fully connected ReLU network with a linear head, for vector inputs.

    ``Linear -> ReLU`` per hidden layer, He-normal weights (variance
    ``2 / fan_in``) and zero biases, head LeCun-normal; every draw comes from
    ``generator``, so building one leaves torch's global random state alone.

    Parameters
    ----------
    in_dim : input dimension ``d``.
    num_classes : C.
    hidden : units of each hidden layer; the last is the feature dimension ``D``.
    generator : the only source of the initial weights; parameters live on its device.
    dtype : parameter dtype.
    """

    def __init__(self, in_dim: int, num_classes: int, *, hidden: Sequence[int] = (256, 256),
                 generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not hidden:
            raise ValueError("hidden needs at least one layer (the features)")
        device = generator.device
        dims = [in_dim, *hidden]
        layers = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            layers += [self._linear(fan_in, fan_out, 2.0, generator, device, dtype), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = dims[-1]
        self.head = self._linear(dims[-1], num_classes, 1.0, generator, device, dtype)

    @staticmethod
    def _linear(fan_in, fan_out, gain, generator, device, dtype):
        layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out, device=device, dtype=dtype)
        with torch.no_grad():
            draw = torch.randn(layer.weight.shape, generator=generator, device=device, dtype=dtype)
            layer.weight.copy_(draw * math.sqrt(gain / fan_in))
            layer.bias.zero_()
        return layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, D), the penultimate representation."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, C) logits."""
        return self.head(self.body(x))


class LinearHead(nn.Module):
    """A linear classifier ``x -> W x + b`` on fixed features (the frozen-embedding profile); ``features`` is the input.

    ``W`` LeCun-normal from ``generator``, ``b = 0``.
    """

    def __init__(self, in_dim: int, num_classes: int, *, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.feature_dim = in_dim
        self.head = FeatureMLP._linear(in_dim, num_classes, 1.0, generator, generator.device, dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride, generator, dtype):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, generator, dtype)
        self.bn1 = nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, generator, dtype)
        self.bn2 = nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_conv(in_channels, out_channels, 1, stride, generator, dtype),
                                          nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _conv(in_channels, out_channels, kernel_size, stride, generator, dtype):
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False, device=generator.device, dtype=dtype)
    with torch.no_grad():
        draw = torch.randn(conv.weight.shape, generator=generator, device=generator.device, dtype=dtype)
        conv.weight.copy_(draw * math.sqrt(2 / (in_channels * kernel_size ** 2)))
    return conv


class ResNet34(nn.Module):
    """The CIFAR ResNet-34 of the CIFAR-10N paper: 3x3 stem, BasicBlocks (3, 4, 6, 3), 64-512 channels.

    He-normal convolutions and a LeCun-normal head drawn from ``generator``;
    ``features`` is the 512-dimensional average-pooled representation.
    """

    def __init__(self, num_classes: int = 10, *, generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        device = generator.device
        layers = [_conv(3, 64, 3, 1, generator, dtype), nn.BatchNorm2d(64, device=device, dtype=dtype), nn.ReLU()]
        channels = 64
        for out_channels, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(_BasicBlock(channels, out_channels, stride if index == 0 else 1, generator, dtype))
                channels = out_channels
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels
        self.head = FeatureMLP._linear(channels, num_classes, 1.0, generator, device, dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def mlp_factory(in_dim: int, num_classes: int, hidden: Sequence[int] = (256, 256),
                dtype: torch.dtype = torch.float32) -> NetworkFactory:
    """``generator -> FeatureMLP``: the network of the vector problems (gmm, digits)."""
    return lambda generator: FeatureMLP(in_dim, num_classes, hidden=tuple(hidden), generator=generator, dtype=dtype)


def linear_factory(in_dim: int, num_classes: int) -> NetworkFactory:
    """``generator -> LinearHead``: a linear head on frozen embeddings."""
    return lambda generator: LinearHead(in_dim, num_classes, generator=generator)


def cnn_factory(num_classes: int, width: float = 0.5) -> NetworkFactory:
    """``generator -> dynamics.cnn.SmallCNN``: the small CNN of the CPU CIFAR profile."""
    from dynamics.cnn import SmallCNN

    return lambda generator: SmallCNN(num_classes, width=width, generator=generator)


def resnet34_factory(num_classes: int) -> NetworkFactory:
    """``generator -> ResNet34``: the network of the full-scale (GPU) CIFAR profile."""
    return lambda generator: ResNet34(num_classes, generator=generator)


__all__ = ["FeatureMLP", "LinearHead", "NetworkFactory", "ResNet34", "cnn_factory", "linear_factory", "mlp_factory",
           "resnet34_factory"]
