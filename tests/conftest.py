import os
import sys

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "default",
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
