"""Problems, the exact linearized simulator, finite-width training, the surrogate and baselines."""

from dynamics.problem import Problem, corrupt_labels, digits, gaussian_mixture, transition_matrix
from dynamics.trajectory import Trajectory, weight_stats

__all__ = ["Problem", "Trajectory", "corrupt_labels", "digits", "gaussian_mixture", "transition_matrix", "weight_stats"]
