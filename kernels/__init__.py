"""How similar two inputs look to a network: analytic and empirical NTKs, spectral tools.

Public names are re-exported here and imported on first use: neural-tangents
(3 s) and torch (3 s) load only when a name that needs them is touched.
"""

import importlib

_EXPORTS = {
    "kernels.infinite": ("KernelSpec", "kernel", "stax_network"),
    "kernels.empirical": ("MLP", "empirical_ntk", "empirical_ntk_autodiff", "per_example_jacobians"),
    "kernels.spectral": ("class_mean_kernel", "eigh_kernel", "energy_profile", "top_energy_share"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__():
    return __all__
