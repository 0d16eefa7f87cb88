"""Lazy re-exports for a package's ``__init__``: public names load their module on first use (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``exports`` map module -> public names.

    Importing the package then costs nothing; ``package.name`` imports the module holding ``name`` (and
    whatever heavy library it needs: JAX, torch, neural-tangents) only when first touched.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    names = sorted(module_of)

    def __getattr__(name):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_of[name]), name)

    def __dir__():
        return names

    return __getattr__, __dir__, names
