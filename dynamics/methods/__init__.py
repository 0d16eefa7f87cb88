"""Noisy-label methods as plug-ins of one training loop (docs/theory.md section 7).

:data:`REGISTRY` maps each name to its :class:`Method` class; adding a method
is one module plus one entry here. Every method trains the same network with
the same optimiser, schedule, batches, epochs and clean subset
(:func:`train`), and returns the same :class:`MethodResult`.

``erm``
    ``w = 1`` on the noisy set only (no clean training).
``erm-clean``
    ``w = 1`` with the protocol's clean training (clean term, clean passes),
    as every reweighting method gets; always reported beside ``erm``.
``early-stop``
    ``erm`` whose final network is that of the epoch with the lowest clean-subset loss.
``meta``
    Exact bi-level meta-reweighting of the network (section 2, mini-batch):
    persistent clipped weights moved by the exact meta-gradient.
``l2rw``
    Ren et al. (2018): the look-ahead at ``w = 0``, weights ``max(-dL_meta/dw,
    0)`` normalised over the batch, no state.
``mwn``
    Meta-Weight-Net (Shu et al. 2019): ``w = V(loss)``, a 1 -> 100 -> 1
    network whose parameters take the meta-gradient of the same look-ahead.
``small-loss``
    Keep the ``1 - R(epoch)`` fraction of each batch with the smallest loss,
    ``R`` ramping linearly to the forget rate ``p`` over the warm-up epochs.
``coteaching``
    Han et al. (2018): two networks; each trains on the other's small-loss picks.
``fine``
    Kim et al. (2021): after an ERM warm-up, the examples aligned with their
    class's principal feature direction.
``surrogate``
    The surrogate's weights from the network's penultimate features, per
    epoch or per batch, after a warm-up (section 6).
``surrogate-no-center``, ``surrogate-no-shift``, ``surrogate-alpha0-fixed``, ``surrogate-alpha0-zero``,
``surrogate-no-clean-passes``
    ``surrogate`` with one setting changed (its ablations).
``trusted-lr``, ``trusted-mean``
    Keep the examples whose label a logistic regression / the nearest class
    mean fitted on the clean subset alone predicts, then train (section 7).
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
from dynamics.methods.erm import ERM, EarlyStop, ERMClean
from dynamics.methods.fine import FINE, FineParams, fine_clean_probability
from dynamics.methods.l2rw import L2RW
from dynamics.methods.meta import MetaParams, MetaReweighting
from dynamics.methods.mwn import MetaWeightNet, MWNParams
from dynamics.methods.networks import (
    FeatureMLP,
    LinearHead,
    NetworkFactory,
    ResNet34,
    cnn_factory,
    linear_factory,
    mlp_factory,
    resnet34_factory,
)
from dynamics.methods.oracle import Oracle
from dynamics.methods.small_loss import SmallLoss, SmallLossParams
from dynamics.methods.surrogate import SURROGATE_ABLATIONS, Surrogate, SurrogateParams, surrogate_weights
from dynamics.methods.trusted import TrustedLR, TrustedMean

REGISTRY: dict[str, type[Method]] = {method.name: method for method in (
    ERM,
    ERMClean,
    EarlyStop,
    MetaReweighting,
    L2RW,
    MetaWeightNet,
    SmallLoss,
    CoTeaching,
    FINE,
    Surrogate,
    *SURROGATE_ABLATIONS,
    TrustedLR,
    TrustedMean,
    Oracle,
    Cleanlab,
)}
METHODS = tuple(REGISTRY)

# Last: the loop looks methods up in REGISTRY.
from dynamics.methods.loop import limit_threads, train  # noqa: E402

__all__ = [
    "Batch", "CleanlabParams", "Cleanlab", "CoTeaching", "Context", "ERM", "ERMClean", "EarlyStop", "FINE",
    "FeatureMLP", "FineParams", "L2RW", "LinearHead", "TrustedLR", "TrustedMean", "linear_factory",
    "METHODS", "MetaParams", "MetaReweighting", "MetaWeightNet", "MWNParams", "Method", "MethodResult",
    "MethodState", "MethodUnavailable",
    "NetworkFactory", "NoParams", "Oracle", "REGISTRY", "ResNet34", "SmallLoss", "SmallLossParams", "Surrogate",
    "SurrogateParams", "TrainBudget", "TrainingData", "TrainingDiverged", "cnn_factory", "detection_metrics",
    "fine_clean_probability", "limit_threads", "mlp_factory", "resnet34_factory", "set_batch_weights",
    "surrogate_weights", "train",
]
