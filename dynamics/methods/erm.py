"""ERM and its two references of docs/theory.md section 7: with the protocol's clean training, and early stopping."""

from __future__ import annotations

from dynamics.methods.base import Method


class ERM(Method):
    """``w = 1`` on the noisy set only: no clean term, no clean passes (the baseline every method must beat)."""

    name = "erm"
    clean_training = False


class ERMClean(Method):
    """``w = 1`` plus the protocol's clean training (clean term and clean passes), as every reweighting method gets.

    Reported beside ``erm``: the difference is the gain of the clean data
    alone, which a reweighting method must exceed (docs/theory.md section 7).
    """

    name = "erm-clean"


class EarlyStop(Method):
    """``w = 1`` on the noisy set only; the final network is that of the epoch with the lowest clean-subset loss.

    The clean subset chooses the epoch instead of being trained on (docs/theory.md section 7).
    """

    name = "early-stop"
    clean_training = False
    restore_best_clean_epoch = True
