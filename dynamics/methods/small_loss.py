"""Small-loss selection (the Co-teaching schedule on one network; docs/theory.md section 7)."""

from __future__ import annotations

import dataclasses

import torch

from dynamics.methods.base import Batch, Context, Method, MethodState, TrainBudget, TrainingData, set_batch_weights


@dataclasses.dataclass(frozen=True)
class SmallLossParams:
    """Settings of ``small-loss`` and ``coteaching``.

    Attributes
    ----------
    forget_rate : the fraction ``p`` of each batch dropped once the ramp is
        over; None for the training set's realised noise rate (assumed
        known, as Co-teaching does).
    """

    forget_rate: float | None = None

    def __post_init__(self):
        if self.forget_rate is not None and not 0 <= self.forget_rate < 1:
            raise ValueError(f"forget_rate must lie in [0, 1), got {self.forget_rate}")


def forget_rate_schedule(epoch: int, forget_rate: float, warmup_epochs: int) -> float:
    """Co-teaching's ``R(epoch) = p * min(epoch / T_k, 1)`` with ``T_k = warmup_epochs`` (``p`` from epoch 0 if 0)."""
    return forget_rate if warmup_epochs == 0 else forget_rate * min(epoch / warmup_epochs, 1.0)


def small_loss_mask(losses: torch.Tensor, forget_rate: float) -> torch.Tensor:
    """0/1 mask ``(b,)`` keeping the ``b - round(R b)`` examples (at least one) of smallest loss ``(b,)``."""
    keep = len(losses) - int(round(forget_rate * len(losses)))
    mask = torch.zeros_like(losses)
    mask[torch.argsort(losses.detach())[:max(keep, 1)]] = 1.0
    return mask


@dataclasses.dataclass(frozen=True, eq=False)
class SelectionState(MethodState):
    """:class:`MethodState` plus the forget rate ``R(epoch)`` of the current epoch."""

    forget_rate: float = 0.0


class SmallLoss(Method):
    """Keep the ``1 - R(epoch)`` fraction of each batch with the smallest loss; train on their mean loss."""

    name = "small-loss"
    Params = SmallLossParams

    def resolve(self, data: TrainingData, budget: TrainBudget) -> SmallLoss:
        return self.with_default("forget_rate", data.noise_rate)

    def init(self, context: Context) -> SelectionState:
        return SelectionState(super().init(context).weights)

    def on_epoch(self, state: SelectionState, epoch: int, context: Context) -> SelectionState:
        rate = forget_rate_schedule(epoch, self.params.forget_rate, context.budget.warmup_epochs)
        return dataclasses.replace(state, forget_rate=rate)

    def batch_weights(self, state: SelectionState, batch: Batch, losses: tuple[torch.Tensor, ...]
                      ) -> tuple[SelectionState, tuple[torch.Tensor, ...]]:
        mask = small_loss_mask(losses[0], state.forget_rate)
        return set_batch_weights(state, batch, mask), (mask,)
