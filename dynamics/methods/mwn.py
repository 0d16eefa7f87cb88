"""Meta-Weight-Net (Shu et al. 2019; docs/theory.md sections 2.1 and 7): weights from a network of the loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.nn import functional as F

from dynamics.bilevel import meta_weight_gradient
from dynamics.methods.base import Batch, Context, Method, MethodState, set_batch_weights
from dynamics.mwn import init_weight_net, weight_net_torch


@dataclasses.dataclass(frozen=True)
class MWNParams:
    """Settings of ``mwn`` (Shu et al.'s published ``MW-Net.py``: 100 hidden units, Adam 1e-3, weight decay 1e-4).

    Attributes
    ----------
    hidden : hidden units of the weighting network ``V`` (1 -> hidden -> 1, ReLU, sigmoid).
    meta_lr : Adam's learning rate for V's parameters.
    meta_weight_decay : Adam's weight decay for V's parameters.
    """

    hidden: int = 100
    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4

    def __post_init__(self):
        if int(self.hidden) < 1 or int(self.hidden) != self.hidden:
            raise ValueError(f"hidden must be a positive integer, got {self.hidden}")
        for name in ("meta_lr", "meta_weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclasses.dataclass(frozen=True, eq=False)
class MWNState(MethodState):
    """The weights (each example's latest ``V(l_i)``), V's parameters and their optimiser (the method's state)."""

    theta: dict | None = None
    optimiser: torch.optim.Optimizer | None = None


class MetaWeightNet(Method):
    """Each step: ``w = V(l)`` on the batch's losses, V's parameters step along the exact meta-gradient of the
    one-step look-ahead, then the model steps with the new ``V(l)``.

    The look-ahead is :func:`dynamics.bilevel.meta_weight_gradient`'s (the
    model's objective ``(1/b) sum_B w_i l_i + clean term``, one plain gradient
    step of the current learning rate, the mean clean-batch loss after it);
    ``dL_meta/dtheta_V = sum_i (dL_meta/dw_i) dV(l_i)/dtheta_V`` by the chain
    rule through V (the losses enter V detached, as in Shu et al.), and V's
    Adam takes that gradient. The model step is on ``(1/b) sum_B V'(l_i) l_i``
    (Shu et al.'s mean, not normalised by the weights' sum) plus the clean
    term. The weights recorded are each example's latest ``V(l_i)``, in
    ``(0, 1)``; they are the clean score.
    """

    name = "mwn"
    Params = MWNParams

    def init(self, context: Context) -> MethodState:
        X = context.data.X
        theta = {name: torch.as_tensor(value, dtype=X.dtype, device=X.device).requires_grad_(True)
                 for name, value in init_weight_net(context.rng, int(self.params.hidden)).items()}
        optimiser = torch.optim.Adam(list(theta.values()), lr=self.params.meta_lr,
                                     weight_decay=self.params.meta_weight_decay)
        # Every epoch visits every example, so these weights (V at the loss of uniform outputs, log C) are replaced
        # before any is recorded; they save a forward pass over the training set.
        with torch.no_grad():
            uniform = torch.full((len(X),), math.log(context.data.num_classes), dtype=X.dtype, device=X.device)
            w = weight_net_torch(theta, uniform)
        return MWNState(w, theta=theta, optimiser=optimiser)

    def batch_step(self, state: MethodState, batch: Batch, context: Context) -> tuple[MethodState, torch.Tensor]:
        model, optimiser = context.networks[0], context.optimisers[0]
        theta = state.theta
        losses = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        values = losses.detach()
        with torch.enable_grad():
            w = weight_net_torch(theta, values)
        dL_meta_dw, _ = meta_weight_gradient(model, batch.x, batch.y, w.detach(), batch.x_meta, batch.y_meta,
                                             lr=batch.lr, clean_weight=context.clean_weight)
        state.optimiser.zero_grad(set_to_none=True)
        gradients = torch.autograd.grad(w, list(theta.values()), grad_outputs=dL_meta_dw)
        for value, gradient in zip(theta.values(), gradients):
            value.grad = gradient
        state.optimiser.step()
        with torch.no_grad():
            w_new = weight_net_torch(theta, values)
        clean_term = context.clean_weight * F.cross_entropy(model(batch.x_meta), batch.y_meta) \
            if context.clean_weight > 0 else 0.0
        objective = (w_new * losses).sum() / len(losses) + clean_term
        optimiser.zero_grad(set_to_none=True)
        objective.backward()
        optimiser.step()
        return set_batch_weights(state, batch, w_new), objective.detach()

    def clean_score(self, state: MethodState) -> np.ndarray:
        return state.weights.detach().double().cpu().numpy()
