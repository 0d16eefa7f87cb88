"""The surrogate reweighter on the network's own features, recomputed every epoch (docs/theory.md section 6)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from dynamics.methods.base import Context, Method, MethodState, TrainBudget, TrainingData, predict_features
from dynamics.surrogate import RULES, ReweightResult, alpha0_schedule, reweight


@dataclasses.dataclass(frozen=True)
class SurrogateParams:
    """Settings of ``surrogate``.

    Attributes
    ----------
    rule : weight rule of :func:`dynamics.surrogate.reweight` (``"reference"`` or ``"sign"``).
    alpha0_epochs : epochs with ``alpha0 = 1/(C-1)`` before it drops to 0;
        None for the budget's ``warmup_epochs``.
    """

    rule: str = "reference"
    alpha0_epochs: int | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.alpha0_epochs is not None and self.alpha0_epochs < 0:
            raise ValueError(f"alpha0_epochs must be >= 0, got {self.alpha0_epochs}")


def surrogate_weights(model: nn.Module, X: torch.Tensor, y: torch.Tensor, X_meta: torch.Tensor,
                      y_meta: torch.Tensor, num_classes: int, *, alpha0: float, rule: str = "reference",
                      batch_size: int = 1024, features: np.ndarray | None = None) -> ReweightResult:
    """One surrogate weighting pass on the network's penultimate features (docs/theory.md section 6).

    Features of the training and clean examples (evaluation mode, no gradient),
    then :func:`dynamics.surrogate.reweight` with the linear kernel: centred
    class means, ``O(n D C)``, no bi-level optimisation.

    Parameters
    ----------
    model : exposes ``features(x) -> (N, D)``.
    X : (n, ...), y : (n,) training inputs and observed labels.
    X_meta : (m, ...), y_meta : (m,) clean inputs and labels.
    num_classes : C.
    alpha0, rule : as in :func:`dynamics.surrogate.reweight`.
    batch_size : examples per forward pass.
    features : (n, D) training features already computed, to skip that forward pass.
    """
    if features is None and len(X) + len(X_meta) <= batch_size:
        # One forward pass for both (evaluation mode: BatchNorm does not mix the two sets).
        both = predict_features(model, torch.cat([X, X_meta]), batch_size)
        features, meta_features = both[:len(X)], both[len(X):]
    else:
        if features is None:
            features = predict_features(model, X, batch_size)
        meta_features = predict_features(model, X_meta, batch_size)
    return reweight(y.cpu().numpy(), features, y_meta.cpu().numpy(), meta_features, num_classes=num_classes,
                    alpha0=alpha0, rule=rule)


class Surrogate(Method):
    """Before every epoch, :func:`surrogate_weights` of the first network; ``alpha0 = 1/(C-1)`` early, then 0.

    The weights of one epoch are the reference rule's (or the sign rule's)
    on the surrogate scores ``d`` of the whole training set against the whole
    clean subset; ``d`` is the clean score.
    """

    name = "surrogate"
    Params = SurrogateParams

    def resolve(self, data: TrainingData, budget: TrainBudget) -> Surrogate:
        return self.with_default("alpha0_epochs", budget.warmup_epochs)

    def on_epoch(self, state: MethodState, epoch: int, context: Context) -> MethodState:
        data, batch_size = context.data, context.budget.eval_batch_size
        model = context.networks[0]
        result = surrogate_weights(model, data.X, data.y_noisy, data.X_meta, data.y_meta, data.num_classes,
                                   alpha0=alpha0_schedule(epoch, data.num_classes, self.params.alpha0_epochs),
                                   rule=self.params.rule, batch_size=batch_size,
                                   features=predict_features(model, data.X, batch_size))
        weights = torch.as_tensor(result.weights, device=data.X.device, dtype=data.X.dtype)
        return MethodState(weights, np.asarray(result.score, dtype=np.float64))
