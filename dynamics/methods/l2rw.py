"""L2RW, learning to reweight (Ren et al. 2018; docs/theory.md sections 2 and 7): stateless meta-weights."""

from __future__ import annotations

import torch

from dynamics.bilevel import meta_step
from dynamics.methods.base import Batch, Context, Method, MethodState, set_batch_weights


class L2RW(Method):
    """Each step: the look-ahead at ``w = 0``, weights ``max(-dL_meta/dw, 0)`` normalised to sum to 1 over the batch.

    The model step is on ``sum_B w_i l_i`` (the weights already sum to 1)
    plus the clean term; no weight survives the step. The weights recorded
    are each batch's divided by their maximum, so that they lie in ``[0, 1]``
    like every other method's (all 0 when no example of the batch helps).
    """

    name = "l2rw"

    def batch_step(self, state: MethodState, batch: Batch, context: Context) -> tuple[MethodState, torch.Tensor]:
        w, loss = meta_step(context.networks[0], context.optimisers[0], batch.x, batch.y, state.weights[batch.index],
                            batch.x_meta, batch.y_meta, lr=batch.lr, clean_weight=context.clean_weight, reset=True)
        top = w.max()
        return set_batch_weights(state, batch, w / top if top > 0 else w), loss
