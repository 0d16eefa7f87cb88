"""The surrogate reweighter on the network's own features, and its ablations (docs/theory.md section 6).

``surrogate`` follows the reference code's schedule: weights 1 during the
budget's warm-up, then, from the network's penultimate features, the
surrogate's weights recomputed before every epoch (on the whole training set)
or for every batch (on that batch, against clean features computed once per
epoch), with ``alpha0 = 1/(C-1)`` for the first ``alpha0_fraction`` of the
epochs and 0 after. The ablations are the same method with one setting
changed, each under its own registry name (:data:`ABLATIONS`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from dynamics.methods.base import Batch, Context, Method, MethodState, predict_features, set_batch_weights
from dynamics.surrogate import RULES, ReweightResult, modulated_scores, reweight, weights_from_scores

RECOMPUTE = ("epoch", "batch")


@dataclasses.dataclass(frozen=True)
class SurrogateParams:
    """Settings of ``surrogate`` and its ablations.

    Attributes
    ----------
    rule : weight rule of :func:`dynamics.surrogate.weights_from_scores` (``"reference"`` or ``"sign"``).
    recompute : ``"epoch"``: weights of the whole training set before every
        epoch; ``"batch"``: weights of every batch from its own features (the
        reference code), the rule's step chosen within the batch.
    alpha0_fraction : fraction of the epochs (counted from the first) with
        ``alpha0 = 1/(C-1)``; 0 after (the reference: 40 of 150 epochs). 1
        keeps ``1/(C-1)`` throughout, 0 uses 0 throughout.
    center : centre the features on the class-balanced clean mean (step 1 of section 6).
    shift : subtract each row's second-largest similarity (step 3).
    clean_passes : make the protocol's clean passes (the budget's ``clean_passes``).
    """

    rule: str = "reference"
    recompute: str = "epoch"
    alpha0_fraction: float = 40 / 150
    center: bool = True
    shift: bool = True
    clean_passes: bool = True

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {RECOMPUTE}, got {self.recompute!r}")
        if not (math.isfinite(self.alpha0_fraction) and 0 <= self.alpha0_fraction <= 1):
            raise ValueError(f"alpha0_fraction must lie in [0, 1], got {self.alpha0_fraction}")


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


@dataclasses.dataclass(frozen=True)
class ClassDirections:
    """The clean side of the linear-kernel similarities: ``S = Phi @ directions + offset`` (section 6, steps 1-2).

    Centred: ``directions = (M - mu).T`` and ``offset = -mu @ directions`` with the clean class means ``M (C, D)``
    and their mean ``mu``; uncentred: ``directions = M.T``, ``offset = 0``.
    """

    directions: np.ndarray
    offset: np.ndarray

    @classmethod
    def of(cls, meta_features: np.ndarray, y_meta: np.ndarray, num_classes: int, center: bool) -> ClassDirections:
        means = np.stack([meta_features[y_meta == k].mean(axis=0) for k in range(num_classes)])
        if not center:
            return cls(means.T, np.zeros(num_classes))
        directions = (means - means.mean(axis=0)).T
        return cls(directions, -means.mean(axis=0) @ directions)

    def scores(self, features: np.ndarray, y: np.ndarray, alpha0: float, shift: bool) -> np.ndarray:
        """``d (n,)`` of ``features (n, D)`` with observed labels ``y (n,)`` (steps 3-4; step 3 only with ``shift``)."""
        S = features @ self.directions + self.offset
        if shift:
            return modulated_scores(S, y, alpha0)
        own = S[np.arange(len(y)), y]
        return own - alpha0 * (S.sum(axis=1) - own)


@dataclasses.dataclass(frozen=True, eq=False)
class SurrogateState(MethodState):
    """:class:`MethodState` plus the epoch's clean-side directions and ``alpha0`` (None: the warm-up)."""

    directions: ClassDirections | None = None
    alpha0: float = 0.0


class Surrogate(Method):
    """The surrogate's weights from the first network's penultimate features (module docstring).

    The scores ``d`` are the clean score (per batch: each example's latest).
    """

    name = "surrogate"
    Params = SurrogateParams
    #: the settings an ablation fixes, whatever the parameters given
    overrides: ClassVar[dict] = {}

    def __init__(self, params: SurrogateParams | None = None):
        super().__init__(params)
        self.params = dataclasses.replace(self.params, **self.overrides)

    def clean_passes(self, budget) -> int:
        return budget.clean_passes if self.params.clean_passes else 0

    def init(self, context: Context) -> SurrogateState:
        return SurrogateState(super().init(context).weights)

    def on_epoch(self, state: SurrogateState, epoch: int, context: Context) -> SurrogateState:
        if epoch < context.budget.warmup_epochs:
            return state
        data, batch_size, params = context.data, context.budget.eval_batch_size, self.params
        model = context.networks[0]
        alpha0 = 1.0 / (data.num_classes - 1) if epoch < params.alpha0_fraction * context.budget.epochs else 0.0
        directions = ClassDirections.of(predict_features(model, data.X_meta, batch_size), data.y_meta.cpu().numpy(),
                                        data.num_classes, params.center)
        state = dataclasses.replace(state, directions=directions, alpha0=alpha0)
        if params.recompute == "batch":
            return state
        d = directions.scores(predict_features(model, data.X, batch_size), data.y_noisy.cpu().numpy(), alpha0,
                              params.shift)
        weights = torch.as_tensor(weights_from_scores(d, params.rule), device=data.X.device, dtype=data.X.dtype)
        return dataclasses.replace(state, weights=weights, score=d)

    def batch_step(self, state: SurrogateState, batch: Batch, context: Context) -> tuple[MethodState, torch.Tensor]:
        if self.params.recompute == "batch" and state.directions is not None:
            d = state.directions.scores(predict_features(context.networks[0], batch.x, len(batch.x)),
                                        batch.y.cpu().numpy(), state.alpha0, self.params.shift)
            w = torch.as_tensor(weights_from_scores(d, self.params.rule), device=batch.x.device, dtype=batch.x.dtype)
            score = np.zeros(len(state.weights)) if state.score is None else state.score.copy()
            score[batch.index.cpu().numpy()] = d
            state = dataclasses.replace(set_batch_weights(state, batch, w), score=score)
        return super().batch_step(state, batch, context)


class SurrogateNoCenter(Surrogate):
    """Ablation: similarities of the uncentred features (no step 1)."""

    name, overrides = "surrogate-no-center", {"center": False}


class SurrogateNoShift(Surrogate):
    """Ablation: no row shift (no step 3); it changes nothing while ``alpha0 = 1/(C-1)`` (C11)."""

    name, overrides = "surrogate-no-shift", {"shift": False}


class SurrogateAlpha0Fixed(Surrogate):
    """Ablation: ``alpha0 = 1/(C-1)`` throughout."""

    name, overrides = "surrogate-alpha0-fixed", {"alpha0_fraction": 1.0}


class SurrogateAlpha0Zero(Surrogate):
    """Ablation: ``alpha0 = 0`` throughout."""

    name, overrides = "surrogate-alpha0-zero", {"alpha0_fraction": 0.0}


class SurrogateNoCleanPasses(Surrogate):
    """Ablation: without the protocol's clean passes (the clean term, if any, stays)."""

    name, overrides = "surrogate-no-clean-passes", {"clean_passes": False}


#: The ablations of docs/theory.md section 6: each is ``surrogate`` with the settings ``overrides`` changed.
SURROGATE_ABLATIONS = (SurrogateNoCenter, SurrogateNoShift, SurrogateAlpha0Fixed, SurrogateAlpha0Zero,
                       SurrogateNoCleanPasses)
