"""ERM: every example with weight 1 (docs/theory.md section 7), the baseline every method must beat."""

from __future__ import annotations

from dynamics.methods.base import Method


class ERM(Method):
    """``w = 1``: the mean loss over every batch, plus the clean term every method gets."""

    name = "erm"
