"""Reading trajectories: phase boundaries, the claims of docs/theory.md, reports and command lines."""

from phases.claims import Claim, Thresholds, check_claims
from phases.detect import Phase, PhaseParams, Phases, detect, detect_phases
from phases.report import claims_table, phase_statistics, phase_table, summary

__all__ = ["Claim", "Phase", "PhaseParams", "Phases", "Thresholds", "check_claims", "claims_table", "detect",
           "detect_phases", "phase_statistics", "phase_table", "summary"]
