"""Noisy-label methods as plug-ins of one training loop (docs/theory.md section 7).

:data:`REGISTRY` maps each name to its :class:`Method` class; adding a method
is one module plus one entry here. Every method trains the same network with
the same optimiser, schedule, batches, epochs and clean subset
(:func:`train`), and returns the same :class:`MethodResult`.

``erm``
    ``w = 1``.
``meta``
    Exact bi-level meta-reweighting of the network (section 2, mini-batch):
    persistent clipped weights moved by the exact meta-gradient.
``l2rw``
    Ren et al. (2018): the look-ahead at ``w = 0``, weights ``max(-dL_meta/dw,
    0)`` normalised over the batch, no state.
``small-loss``
    Keep the ``1 - R(epoch)`` fraction of each batch with the smallest loss,
    ``R`` ramping linearly to the forget rate ``p`` over the warm-up epochs.
``coteaching``
    Han et al. (2018): two networks; each trains on the other's small-loss picks.
``fine``
    Kim et al. (2021): after an ERM warm-up, the examples aligned with their
    class's principal feature direction.
``surrogate``
    :func:`dynamics.surrogate.reweight` on the network's penultimate features,
    every epoch (section 6).
``oracle``
    The true clean mask (an upper reference).
``cleanlab``
    Optional external reference: cleanlab's label issues get ``w = 0``;
    raises :class:`MethodUnavailable` when cleanlab is not installed.
"""

from dynamics.methods.base import (
    Batch,
    Context,
    Method,
    MethodResult,
    MethodState,
    MethodUnavailable,
    NoParams,
    TrainBudget,
    TrainingData,
    TrainingDiverged,
    detection_metrics,
    set_batch_weights,
)
from dynamics.methods.cleanlab import Cleanlab, CleanlabParams
from dynamics.methods.coteaching import CoTeaching
from dynamics.methods.erm import ERM
from dynamics.methods.fine import FINE, FineParams, fine_clean_probability
from dynamics.methods.l2rw import L2RW
from dynamics.methods.meta import MetaParams, MetaReweighting
from dynamics.methods.networks import FeatureMLP, NetworkFactory, ResNet34, cnn_factory, mlp_factory, resnet34_factory
from dynamics.methods.oracle import Oracle
from dynamics.methods.small_loss import SmallLoss, SmallLossParams
from dynamics.methods.surrogate import Surrogate, SurrogateParams, surrogate_weights

REGISTRY: dict[str, type[Method]] = {method.name: method for method in (
    ERM,
    MetaReweighting,
    L2RW,
    SmallLoss,
    CoTeaching,
    FINE,
    Surrogate,
    Oracle,
    Cleanlab,
)}
METHODS = tuple(REGISTRY)

# Last: the loop looks methods up in REGISTRY.
from dynamics.methods.loop import limit_threads, train  # noqa: E402

__all__ = [
    "Batch", "CleanlabParams", "Cleanlab", "CoTeaching", "Context", "ERM", "FINE", "FeatureMLP", "FineParams", "L2RW",
    "METHODS", "MetaParams", "MetaReweighting", "Method", "MethodResult", "MethodState", "MethodUnavailable",
    "NetworkFactory", "NoParams", "Oracle", "REGISTRY", "ResNet34", "SmallLoss", "SmallLossParams", "Surrogate",
    "SurrogateParams", "TrainBudget", "TrainingData", "TrainingDiverged", "cnn_factory", "detection_metrics",
    "fine_clean_probability", "limit_threads", "mlp_factory", "resnet34_factory", "set_batch_weights",
    "surrogate_weights", "train",
]
