"""One module per figure; ``python -m figures`` regenerates them.

Each module holds ``NAME``, ``NUMBER``, ``CAPTION``, a pure function
``figure(...) -> (matplotlib Figure, pandas DataFrame of the data behind it)``
and ``build(results)``, which fetches that function's inputs from a
:class:`figures.results.Results`.
"""

from figures import (finite_eta, finite_gap_time, finite_width, histograms, mechanism, methods, phase_diagram,
                     sensitivity, sign_pattern, spectral, weight_trajectories, weights)

#: The figures in gallery order.
FIGURES = (weights, mechanism, histograms, sensitivity, spectral, phase_diagram, finite_width, methods,
           finite_gap_time, finite_eta, weight_trajectories, sign_pattern)
BY_NAME = {module.NAME: module for module in FIGURES}

__all__ = ["BY_NAME", "FIGURES"]
