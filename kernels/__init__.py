"""How similar two inputs look to a network: analytic and empirical NTKs, spectral tools."""

from kernels.empirical import MLP, empirical_ntk, empirical_ntk_autodiff
from kernels.infinite import KernelSpec, kernel, stax_network
from kernels.spectral import class_mean_kernel, eigh_kernel, energy_profile, top_energy_share

__all__ = [
    "MLP", "KernelSpec", "class_mean_kernel", "eigh_kernel", "empirical_ntk", "empirical_ntk_autodiff",
    "energy_profile", "kernel", "stax_network", "top_energy_share",
]
