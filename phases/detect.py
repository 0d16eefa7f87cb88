"""The three phases of meta-reweighting, found on a trajectory (docs/theory.md section 5).

- ``T_align``: the first step at which the mean weight of the clean examples
  reaches ``align_fraction`` (99%) of its maximum over the run.
- the plateau: the first step at or after ``T_align`` at which the clean-subset
  loss fell by less than ``tau`` (1%) of its initial value over a trailing
  window of ``W`` steps (``window_fraction`` = 5% of the run, at least
  ``min_window`` = 10 steps).
- ``T_filter``: the plateau step when there are noisy examples to filter;
  ``None`` otherwise.
- alignment is ``[0, T_align)``, filtering ``[T_align, T_filter)``,
  post-filtering every step from the plateau on.
- ``T_freeze``, reported beside ``T_filter``: the first step at or after
  ``T_align`` after which the share of noisy examples at ``w = 0`` never
  again grows by ``tau_w`` (1% of the noisy examples) or more: a boundary
  read off the weights rather than the loss, which with ``gamma > 0`` keeps
  falling geometrically after ``T_filter``.

Only persistent weights have phases: for the ``fixed`` variant (no weight
update) and ``l2rw`` (weights recomputed from scratch every step) every phase
is reported empty with that reason.

An empty phase is reported as such, with the reason, never as an invented
boundary.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PHASE_NAMES = ("alignment", "filtering", "post-filtering")


@dataclasses.dataclass(frozen=True)
class PhaseParams:
    """The documented, configurable parameters of the boundaries (docs/theory.md section 5)."""

    align_fraction: float = 0.99
    window_fraction: float = 0.05
    min_window: int = 10
    tau: float = 0.01
    tau_w: float = 0.01

    def __post_init__(self):
        if not 0 < self.align_fraction <= 1:
            raise ValueError(f"align_fraction must lie in (0, 1], got {self.align_fraction}")
        if not 0 < self.window_fraction < 1:
            raise ValueError(f"window_fraction must lie in (0, 1), got {self.window_fraction}")
        if int(self.min_window) < 1:
            raise ValueError(f"min_window must be >= 1, got {self.min_window}")
        for name in ("tau", "tau_w"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase: steps ``[start, end)`` (``end`` is the last recorded step + 1 for the last phase).

    ``start is None`` means the phase is empty, and ``reason`` says why.
    """

    name: str
    start: int | None
    end: int | None
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.start is None or self.end is None or self.end <= self.start


@dataclasses.dataclass(frozen=True)
class Phases:
    """Boundaries of one run; ``None`` where a boundary does not exist (all of them for runs without phases)."""

    T_align: int | None
    T_filter: int | None
    plateau: int | None
    window: int
    phases: tuple[Phase, Phase, Phase]
    params: PhaseParams
    T_freeze: int | None = None

    def __getitem__(self, name: str) -> Phase:
        return {phase.name: phase for phase in self.phases}[name]

    def masks(self, step: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean masks over recorded steps ``step : (T,)``, one per phase."""
        return {p.name: (np.zeros(len(step), bool) if p.empty else (step >= p.start) & (step < p.end))
                for p in self.phases}


def detect(step: np.ndarray, mean_w_clean: np.ndarray, clean_loss: np.ndarray, has_noise: bool,
           params: PhaseParams = PhaseParams(), frac_noisy_zero: np.ndarray | None = None) -> Phases:
    """Find the phase boundaries from recorded series.

    Parameters
    ----------
    step : (T,) increasing recorded step indices, starting at 0.
    mean_w_clean : (T,) mean weight of the clean examples.
    clean_loss : (T,) clean-subset loss ``L_meta``.
    has_noise : whether any training label is noisy (otherwise there is nothing to filter).
    params : the thresholds.
    frac_noisy_zero : (T,) share of noisy examples at ``w = 0``, for ``T_freeze`` (``None``: not reported).
    """
    step = np.asarray(step)
    mean_w_clean = np.asarray(mean_w_clean, dtype=np.float64)
    clean_loss = np.asarray(clean_loss, dtype=np.float64)
    if not (step.ndim == 1 and len(step) == len(mean_w_clean) == len(clean_loss) and len(step) >= 1):
        raise ValueError("step, mean_w_clean and clean_loss must be 1-D arrays of one length")
    if step[0] != 0 or np.any(np.diff(step) <= 0):
        raise ValueError("step must start at 0 and increase")
    last = int(step[-1])
    T_align = int(step[np.argmax(mean_w_clean >= params.align_fraction * mean_w_clean.max())])
    window = max(int(params.min_window), math.ceil(params.window_fraction * last))

    # The loss one window earlier, read at the latest recorded step no later than t - W.
    earlier = np.searchsorted(step, step - window, side="right") - 1
    has_window = step - window >= 0
    fell = clean_loss[np.maximum(earlier, 0)] - clean_loss
    plateaued = has_window & (step >= T_align) & (fell < params.tau * clean_loss[0])
    plateau = int(step[np.argmax(plateaued)]) if plateaued.any() else None
    T_freeze = None
    if has_noise and frac_noisy_zero is not None:
        frac_noisy_zero = np.asarray(frac_noisy_zero, dtype=np.float64)
        # How much the share still grows after each step: the largest later value minus the current one.
        grows_later = np.maximum.accumulate(frac_noisy_zero[::-1])[::-1] - frac_noisy_zero
        frozen = (step >= T_align) & (grows_later < params.tau_w)
        T_freeze = int(step[np.argmax(frozen)]) if frozen.any() else None
    end = last + 1

    alignment = Phase("alignment", 0, T_align) if T_align > 0 else \
        Phase("alignment", None, None, "the clean examples' mean weight was already at its maximum at step 0")
    if plateau is None:
        reason = (f"run too short: the clean-subset loss never plateaued (it kept falling by at least "
                  f"tau={params.tau:g} of its initial value per {window}-step window)")
        T_filter = None
        filtering = Phase("filtering", T_align, end, reason="") if has_noise else \
            Phase("filtering", None, None, "no noisy examples: nothing to filter")
        post = Phase("post-filtering", None, None, reason)
    else:
        T_filter = plateau if has_noise else None
        filtering = Phase("filtering", T_align, plateau) if has_noise else \
            Phase("filtering", None, None, "no noisy examples: nothing to filter")
        if has_noise and plateau == T_align:
            filtering = Phase("filtering", None, None, "the clean-subset loss had plateaued by the end of alignment")
        post = Phase("post-filtering", plateau, end)
    return Phases(T_align, T_filter, plateau, window, (alignment, filtering, post), params, T_freeze)


#: Why runs of these variants have no phases (docs/theory.md section 4.1).
NO_PHASES = {
    "fixed": "fixed weights (beta = 0): nothing is reweighted, so there is no alignment or filtering",
    "l2rw": "L2RW recomputes its normalised weights from scratch every step: no persistent weight state to align "
            "or filter",
}


def detect_phases(trajectory, params: PhaseParams = PhaseParams()) -> Phases:
    """:func:`detect` on a :class:`dynamics.Trajectory`; every phase empty for the variants of :data:`NO_PHASES`."""
    variant = trajectory.config.get("variant", "meta")
    if variant in NO_PHASES:
        last = int(trajectory.step[-1])
        window = max(int(params.min_window), math.ceil(params.window_fraction * last))
        empty = tuple(Phase(name, None, None, NO_PHASES[variant]) for name in PHASE_NAMES)
        return Phases(None, None, None, window, empty, params)
    stats = trajectory.weight_stats()
    return detect(trajectory.step, stats["mean_w_clean"], trajectory.clean_loss, bool(trajectory.noisy.any()), params,
                  stats["frac_noisy_zero"])


def readmitted_share(trajectory, T_filter: int | None) -> float | None:
    """Late re-admission: of the noisy examples at ``w = 0`` at ``T_filter``, the share whose weight is above 0 at
    a later recorded step (docs/theory.md section 9: does a large step prevent it?).

    ``None`` without ``T_filter`` (:func:`detect_phases`) or when no noisy example is at 0 there.
    """
    if T_filter is None:
        return None
    at = int(np.searchsorted(trajectory.step, T_filter))
    filtered = np.asarray(trajectory.noisy) & (trajectory.w[at] == 0)
    if not filtered.any():
        return None
    return float((trajectory.w[at + 1:, filtered] > 0).any(axis=0).mean())
