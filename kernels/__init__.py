"""How similar two inputs look to a network: analytic and empirical NTKs, spectral tools."""

from kernels.infinite import KernelSpec, kernel, stax_network

__all__ = ["KernelSpec", "kernel", "stax_network"]
