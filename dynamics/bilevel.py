"""The exact look-ahead meta-gradient and the weight rules, in torch (docs/theory.md section 2).

One implementation, shared by the finite-width simulation
(:mod:`dynamics.finite`) and the training methods (:mod:`dynamics.methods`),
so that both compute the same thing:

1. look-ahead ``theta_hat(w) = theta - eta * grad_theta L_train(theta, w)``;
2. meta objective ``L_meta(w)`` at ``theta_hat(w)``, and ``dL_meta/dw`` by
   automatic differentiation through the look-ahead (a gradient of a
   gradient, no linearisation): :func:`lookahead_meta_gradient`;
3. weights from the meta-gradient: persistent clipped weights
   ``clip_[0,1](w - alpha dL_meta/dw)`` (:func:`clipped_weights`), or Ren et
   al.'s (2018) L2RW, which takes the meta-gradient at ``w = 0`` and keeps its
   normalised positive part (:func:`l2rw_weights`).

On a network module (:func:`meta_weight_gradient`, :func:`meta_step`) the
training objective of a mini-batch is ``(1/b) sum_i w_i l_i + clean_weight *
mean_j l_meta_j``, with per-example losses ``l`` chosen by ``loss``
(:func:`per_example_loss`): cross-entropy (the default), MSE ``0.5 ||f -
y||^2`` against one-hot or real-valued targets (docs/theory.md section 0), or
a callable. The simulator's JAX version of the weight rules lives in
:mod:`dynamics.simulator`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

#: Variants with a meta-gradient: persistent clipped weights, and L2RW's reset (``"fixed"`` has none).
VARIANTS = ("meta", "l2rw")
#: Named per-example losses of :func:`per_example_loss`; a callable ``(outputs, targets) -> (N,)`` also works.
LOSSES = ("ce", "mse")

Loss = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_example_loss(loss: Loss, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example losses ``(N,)`` of ``outputs (N, C)`` (docs/theory.md section 0).

    ``"ce"``: softmax cross-entropy against class indices ``targets (N,)``.
    ``"mse"``: ``0.5 * ||f - y||^2`` summed over the ``C`` outputs, where ``y``
    is the one-hot row of an integer ``targets (N,)``, or ``targets`` itself
    when it is floating, ``(N, C)`` (``(N,)`` when ``C = 1``).
    A callable: ``loss(outputs, targets)``, which must return ``(N,)``.
    """
    if callable(loss):
        losses = loss(outputs, targets)
        if losses.shape != outputs.shape[:1]:
            raise ValueError(f"loss(outputs, targets) must return one loss per example, shape {tuple(outputs.shape[:1])}, "
                             f"got {tuple(losses.shape)}")
        return losses
    if loss == "ce":
        return F.cross_entropy(outputs, targets, reduction="none")
    if loss == "mse":
        return 0.5 * ((outputs - _mse_targets(outputs, targets)) ** 2).sum(dim=-1)
    raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")


def _mse_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not targets.is_floating_point():
        return F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    if targets.dim() == 1 and outputs.shape[-1] == 1:
        targets = targets[:, None]
    if targets.shape != outputs.shape:
        raise ValueError(f"MSE targets must be class indices (N,) or values of the outputs' shape "
                         f"{tuple(outputs.shape)}, got {tuple(targets.shape)}")
    return targets.to(outputs.dtype)


def _mean_loss(loss: Loss, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Cross-entropy keeps its own mean reduction, so that the default is bit for bit what it always was.
    if isinstance(loss, str) and loss == "ce":
        return F.cross_entropy(outputs, targets)
    return per_example_loss(loss, outputs, targets).mean()


def lookahead_meta_gradient(train_objective: Callable[[torch.Tensor], torch.Tensor], params: dict[str, torch.Tensor],
                            meta_objective: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, Any]],
                            w: torch.Tensor, eta: float) -> tuple[torch.Tensor, Any]:
    """``dL_meta/dw`` through one look-ahead step (docs/theory.md section 2, steps 1-2).

    ``theta_hat(w) = theta - eta * grad_theta train_objective(w)`` and
    ``L_meta(w) = meta_objective(theta_hat(w))``, differentiated with respect
    to ``w`` by automatic differentiation through the inner gradient.

    Parameters
    ----------
    train_objective : ``w (b,) -> scalar``, the training objective at
        ``theta``; its graph must reach every tensor of ``params``.
    params : ``theta``, name -> tensor, each requiring gradients.
    meta_objective : ``theta_hat -> (L_meta scalar, aux)``.
    w : (b,) weights at which to differentiate.
    eta : look-ahead step size.

    Returns
    -------
    dL_meta_dw : (b,) detached.
    aux : the meta objective's second output.

    The graph of ``train_objective`` is kept, so that the caller may take its
    model step from the same forward pass at ``theta``.
    """
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        names = list(params)
        gradient = torch.autograd.grad(train_objective(w), [params[name] for name in names], create_graph=True)
        params_hat = {name: params[name] - eta * g for name, g in zip(names, gradient)}
        meta_loss, aux = meta_objective(params_hat)
        (dL_meta_dw,) = torch.autograd.grad(meta_loss, w, retain_graph=True)
    return dL_meta_dw, aux


# ----------------------------------------------------------------------------- weight rules


def clipped_weights(w: torch.Tensor, dL_meta_dw: torch.Tensor, alpha: float) -> torch.Tensor:
    """Persistent clipped weights, docs/theory.md section 2 step 3: ``clip_[0,1](w - alpha dL_meta/dw)``, (b,)."""
    return torch.clamp(w - alpha * dL_meta_dw, 0.0, 1.0)


def l2rw_weights(dL_meta_dw: torch.Tensor) -> torch.Tensor:
    """Ren et al. (2018): ``max(-dL_meta/dw, 0)`` normalised to sum to 1 over the batch; all 0 when none is positive.

    ``dL_meta_dw : (b,)`` is the meta-gradient at ``w = 0`` (:func:`lookahead_weights`); no state is kept.
    """
    positive = torch.clamp(-dL_meta_dw, min=0.0)
    total = positive.sum()
    return positive / total if total > 0 else torch.zeros_like(positive)


def lookahead_weights(variant: str, w: torch.Tensor) -> torch.Tensor:
    """The weights at which ``variant`` takes its meta-gradient: ``w`` itself, or 0 for L2RW (Ren et al.'s eps = 0)."""
    return torch.zeros_like(w) if variant == "l2rw" else w


def new_weights(variant: str, w: torch.Tensor, dL_meta_dw: torch.Tensor, alpha: float) -> torch.Tensor:
    """Step 3 of ``variant`` (one of :data:`VARIANTS`): :func:`clipped_weights` or :func:`l2rw_weights`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return clipped_weights(w, dL_meta_dw, alpha) if variant == "meta" else l2rw_weights(dL_meta_dw)


# ----------------------------------------------------------------------------- on a network module


def _batch_losses(model: nn.Module, buffers: dict[str, torch.Tensor], x, y, x_meta, y_meta, clean_weight: float,
                  loss: Loss = "ce"):
    """``(params, per-example losses (b,), clean term)`` at ``theta``, attached to the graph.

    BatchNorm running statistics of these two forward passes go to ``buffers``.
    """
    params = dict(model.named_parameters())
    losses = per_example_loss(loss, functional_call(model, (params, buffers), (x,)), y)
    clean_term = clean_weight * _mean_loss(loss, functional_call(model, (params, buffers), (x_meta,)), y_meta)
    return params, losses, clean_term


def _module_meta_gradient(model, buffers, params, losses, clean_term, w, x_meta, y_meta, lr, loss: Loss = "ce"):
    """``(dL_meta/dw (b,), L_meta(w))`` of the mean-reduced mini-batch objective."""
    b = len(losses)

    def meta_objective(params_hat):
        # The look-ahead's own BatchNorm updates go to throwaway copies: only a model step may move running stats.
        scratch = {name: buffer.clone() for name, buffer in buffers.items()}
        meta_loss = _mean_loss(loss, functional_call(model, (params_hat, scratch), (x_meta,)), y_meta)
        return meta_loss, meta_loss.detach()

    return lookahead_meta_gradient(lambda w: (w * losses).sum() / b + clean_term, params, meta_objective, w, lr)


def meta_weight_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                         x_meta: torch.Tensor, y_meta: torch.Tensor, *, lr: float,
                         clean_weight: float = 0.0, loss: Loss = "ce") -> tuple[torch.Tensor, float]:
    """The exact meta-gradient ``dL_meta/dw`` of one mini-batch step (docs/theory.md section 2).

    With ``l_i`` the loss (``loss``: cross-entropy by default) of training
    example ``i`` and ``l_j`` of clean example ``j``,

    - look-ahead: ``theta_hat(w) = theta - lr * grad_theta [(1/b) sum_i w_i l_i + clean_weight * mean_j l_j](theta)``;
    - meta objective: ``L_meta(w) = mean_j l_j(theta_hat(w))``;

    differentiated through the look-ahead (:func:`lookahead_meta_gradient`).
    The network runs in its current mode; in training mode BatchNorm uses
    batch statistics in every forward pass, and the module's running
    statistics are left untouched.

    Parameters
    ----------
    model : maps ``(N, ...)`` inputs to ``(N, C)`` logits.
    x : (b, ...) training inputs; y : (b,) their (noisy) labels.
    w : (b,) weights at which to differentiate.
    x_meta : (b_m, ...) clean inputs; y_meta : (b_m,) their labels.
    lr : look-ahead step size ``eta``.
    clean_weight : weight of the clean term in the look-ahead (the ``gamma`` term).
    loss : ``"ce"``, ``"mse"`` or a callable, see :func:`per_example_loss`;
        ``y`` and ``y_meta`` are its targets.

    Returns
    -------
    dL_meta_dw : (b,) tensor.
    meta_loss : ``L_meta(w)``.
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    params, losses, clean_term = _batch_losses(model, buffers, x, y, x_meta, y_meta, clean_weight, loss)
    dL_meta_dw, meta_loss = _module_meta_gradient(model, buffers, params, losses, clean_term, w, x_meta, y_meta, lr,
                                                  loss)
    return dL_meta_dw, float(meta_loss)


def meta_step(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              w: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor, *, lr: float, clean_weight: float,
              beta: float = 1.0, reset: bool = False, loss: Loss = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """One full step of exact meta-reweighting on a mini-batch (docs/theory.md section 2, steps 1-4).

    1. look-ahead and 2. meta-gradient ``dL_meta/dw`` at ``w`` (:func:`meta_weight_gradient`),
       or at ``w = 0`` with ``reset``;
    3. weights: ``clip(w - beta (b / lr) dL_meta/dw, 0, 1)`` (the theory's ``alpha
       = beta / eta`` with ``eta = lr / b``, the training term being a mean), or with
       ``reset`` (L2RW, Ren et al. 2018) ``max(-dL_meta/dw, 0)`` normalised to sum
       to 1 over the batch (all 0 when no example helps);
    4. model: one ``optimiser`` step on ``(1/b) sum_i w_new_i l_i + clean_weight *
       mean_j l_j`` (``sum_i w_new_i l_i + ...`` with ``reset``), reusing the
       look-ahead's forward pass at ``theta``. BatchNorm running statistics move
       once per forward pass at ``theta`` (training batch, then clean batch), as in a
       plain training step.

    Parameters
    ----------
    model : the network, in training mode; ``optimiser`` holds its parameters.
    x : (b, ...), y : (b,) training batch.
    w : (b,) the batch's current weights (unused with ``reset``).
    x_meta : (b_m, ...), y_meta : (b_m,) clean batch.
    lr : step size of the look-ahead (the optimiser's current learning rate).
    clean_weight : weight of the clean term (``gamma * m / n`` in :func:`dynamics.methods.train`).
    beta : meta step size (unused with ``reset``).
    reset : L2RW's stateless weights instead of the persistent clipped ones.
    loss : the per-example loss ``l``: ``"ce"`` (default), ``"mse"`` or a
        callable, see :func:`per_example_loss`; ``y`` and ``y_meta`` are its targets.

    Returns
    -------
    new_w : (b,) the weights the model step used.
    loss : the training loss of that step (a detached scalar tensor).
    """
    variant = "l2rw" if reset else "meta"
    b = len(y)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    params, losses, clean_term = _batch_losses(model, buffers, x, y, x_meta, y_meta, clean_weight, loss)
    dL_meta_dw, _ = _module_meta_gradient(model, buffers, params, losses, clean_term,
                                          lookahead_weights(variant, w), x_meta, y_meta, lr, loss)
    new_w = new_weights(variant, w.detach(), dL_meta_dw, beta * b / lr)
    # L2RW's weights already sum to 1 over the batch; the persistent ones enter a mean.
    train_term = (new_w * losses).sum() if reset else (new_w * losses).sum() / b
    objective = train_term + clean_term
    optimiser.zero_grad(set_to_none=True)
    objective.backward()
    optimiser.step()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return new_w, objective.detach()


__all__ = ["LOSSES", "VARIANTS", "clipped_weights", "l2rw_weights", "lookahead_meta_gradient", "lookahead_weights",
           "meta_step", "meta_weight_gradient", "new_weights", "per_example_loss"]
