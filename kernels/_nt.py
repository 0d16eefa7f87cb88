"""The one place that imports neural-tangents.

neural-tangents 0.6.5 declares TensorFlow as a dependency, but only its
``experimental`` module uses it, and its package ``__init__`` imports that
module unconditionally. We install it with ``--no-deps`` and, when TensorFlow
is absent, register an empty ``neural_tangents.experimental`` before the first
import so that the analytic kernels, ``empirical_ntk_fn`` and ``predict`` load
without pulling in 2 GB of TensorFlow.
"""

import importlib.util
import sys
import types

import jax

jax.config.update("jax_enable_x64", True)

if importlib.util.find_spec("tensorflow") is None:
    sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

__all__ = ["nt", "stax"]
