"""Co-teaching (Han et al. 2018; docs/theory.md section 7): two networks teach each other."""

from __future__ import annotations

import torch

from dynamics.methods.base import Batch, set_batch_weights
from dynamics.methods.small_loss import SelectionState, SmallLoss, small_loss_mask


class CoTeaching(SmallLoss):
    """Each network picks its small-loss examples of the batch and the *other* network trains on them.

    Same forget-rate ramp as ``small-loss``. The weights recorded are the
    mean of the two selections (1: both kept the example); test accuracy and
    features are the first network's.
    """

    name = "coteaching"
    num_networks = 2

    def batch_weights(self, state: SelectionState, batch: Batch, losses: tuple[torch.Tensor, ...]
                      ) -> tuple[SelectionState, tuple[torch.Tensor, ...]]:
        picked = tuple(small_loss_mask(network_losses, state.forget_rate) for network_losses in losses)
        return set_batch_weights(state, batch, 0.5 * (picked[0] + picked[1])), picked[::-1]
