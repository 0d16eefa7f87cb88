"""Exact bi-level meta-reweighting of the network (docs/theory.md section 2, the mini-batch variant)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from dynamics.bilevel import meta_step
from dynamics.methods.base import Batch, Context, Method, MethodState, set_batch_weights


@dataclasses.dataclass(frozen=True)
class MetaParams:
    """Settings of ``meta``.

    Attributes
    ----------
    beta : meta step size: the weights move by ``-beta * (b / eta) *
        dL_meta/dw``, i.e. ``beta`` times the mean over the clean batch of
        ``<grad l_i, grad l_j(theta_hat)>`` (to first order), docs/theory.md
        section 2's ``(beta / m) * score``.
    w0 : initial weight of every example, in ``[0, 1]``.
    """

    beta: float = 1.0
    w0: float = 0.5

    def __post_init__(self):
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not 0 <= self.w0 <= 1:
            raise ValueError(f"w0 must lie in [0, 1], got {self.w0}")


class MetaReweighting(Method):
    """Persistent clipped weights moved by the exact meta-gradient, then the model step with them.

    Every step is :func:`dynamics.bilevel.meta_step`: a one-step look-ahead
    ``theta_hat(w)``, ``dL_meta/dw`` by automatic differentiation through it,
    ``w[B] <- clip(w[B] - alpha dL_meta/dw, 0, 1)`` with ``alpha = beta b / lr``
    (only the batch's weights move), then the model step on ``(1/b) sum_B w_i
    l_i`` (the theory's weighted sum, divided by the batch size) plus the
    clean term. The weights are the clean score.
    """

    name = "meta"
    Params = MetaParams

    def init(self, context: Context) -> MethodState:
        X = context.data.X
        return MethodState(torch.full((len(X),), self.params.w0, device=X.device, dtype=X.dtype))

    def batch_step(self, state: MethodState, batch: Batch, context: Context) -> tuple[MethodState, torch.Tensor]:
        w, loss = meta_step(context.networks[0], context.optimisers[0], batch.x, batch.y, state.weights[batch.index],
                            batch.x_meta, batch.y_meta, lr=batch.lr, clean_weight=context.clean_weight,
                            beta=self.params.beta)
        return set_batch_weights(state, batch, w), loss

    def clean_score(self, state: MethodState) -> np.ndarray:
        return state.weights.detach().double().cpu().numpy()
