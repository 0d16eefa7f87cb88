"""How similar two inputs look to a network: analytic and empirical NTKs, spectral tools.

Public names are re-exported here and imported on first use: neural-tangents
(3 s) and torch (3 s) load only when a name that needs them is touched.
"""

from kernels.lazy import lazy_exports

_EXPORTS = {
    "kernels.infinite": ("KernelSpec", "kernel", "stax_network"),
    "kernels.empirical": ("MLP", "empirical_ntk", "empirical_ntk_autodiff", "per_example_jacobians"),
    "kernels.conv": ("ConvNet", "ConvSpec", "conv_kernel", "conv_network"),
    "kernels.spectral": ("class_mean_kernel", "eigh_kernel", "energy_profile", "top_energy_share"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
