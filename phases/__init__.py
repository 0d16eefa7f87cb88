"""Reading trajectories: phase boundaries, the claims of THEORY.md, reports and command lines."""
