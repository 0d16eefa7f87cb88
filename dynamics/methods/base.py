"""What every method and the training loop share: the ``Method`` protocol, data, budget, results, metrics.

A method is a class with per-method frozen parameters (``Params``) and a few
hooks that the one training loop (:func:`dynamics.methods.train`) calls; the
loop never asks which method it runs. Per epoch::

    state = method.on_epoch(state, epoch, context)         # e.g. reweight from features
    for batch in the epoch's batches:
        state, loss = method.batch_step(state, batch, context)

starting from ``state = method.init(context)``. The default ``batch_step``
trains network ``k`` on ``weighted_mean(w_k, losses_k) + clean term`` with
the weights ``w_k`` that ``batch_weights`` returns, which by default are the
state's weights of the batch; a method overrides only what differs.

Every method trains with the same loss of one step, with a training batch
``B`` (size ``b``) and a clean batch ``V`` (size ``b_m``) drawn from the
clean subset every step::

    train term + gamma * (m / n) * mean_{j in V} l_j

The clean term is the unbiased mini-batch estimate of docs/theory.md
section 2's ``gamma * sum_j l_meta_j`` in units of the training term. The
training term is the weighted mean ``sum_B w_i l_i / sum_B w_i`` unless a
method says otherwise. Before every epoch the loop may also make
``clean_passes`` passes over the clean subset (plain cross-entropy, the same
optimiser), as the reference code of the surrogate does (section 6).

The fair protocol of section 7: the clean term and the clean passes are the
protocol's clean-data training, and every method gets the same, except the
two that by definition train on the noisy set only (``clean_training =
False``): plain ``erm``, reported beside ``erm-clean`` (ERM with the same
clean training) so that the gain of reweighting is not confused with the
gain of training on clean data, and ``early-stop``, which uses the clean
subset to choose its epoch instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dynamics.problem import Splits
from dynamics.trajectory import weight_stats


class MethodUnavailable(RuntimeError):
    """A method whose optional dependency is missing; the message says what to install."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite; the message names the method, the epoch and the remedy."""


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TrainBudget:
    """What every method gets: the same optimiser, schedule, batches and epochs.

    Attributes
    ----------
    epochs : passes over the training set.
    batch_size : training examples per step ``b``.
    meta_batch_size : clean examples per step ``b_m`` (the clean term of the
        loss and the meta objective of ``meta`` / ``l2rw``).
    lr : initial SGD learning rate ``eta``.
    milestones : empty: the learning rate follows a per-step cosine from
        ``lr`` to 0; else it is multiplied by 0.1 at the start of each of
        these (0-based) epochs, the reference's step schedule (docs/theory.md section 6).
    momentum, weight_decay : SGD's (they act on the model step only; the
        look-ahead of ``meta`` / ``l2rw`` is one plain gradient step, docs/theory.md section 2).
    gamma : weight of the clean term in the training loss of every method with clean training.
    clean_passes : passes over the clean subset before every epoch (plain
        cross-entropy, batches of ``batch_size``, the epoch's first learning
        rate), for every method with clean training; the reference code makes 30.
    warmup_epochs : ERM warm-up of ``fine`` / ``cleanlab`` / ``surrogate``
        (weights 1), forget-rate ramp of ``small-loss`` / ``coteaching``.
    augment : random crop + flip of image batches (ignored for vector inputs).
    eval_every : test accuracy in the history every this many epochs (0: the
        final epoch only); it is never part of the timed training.
    eval_batch_size : examples per forward pass when evaluating or featurising.
    device : torch device of the networks and data; CUDA must be available for ``cuda``.
    """

    epochs: int = 20
    batch_size: int = 64
    meta_batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 1.0
    milestones: tuple[int, ...] = ()
    clean_passes: int = 0
    warmup_epochs: int = 2
    augment: bool = True
    eval_every: int = 1
    eval_batch_size: int = 1024
    device: str = "cpu"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "meta_batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        object.__setattr__(self, "milestones", tuple(int(epoch) for epoch in self.milestones))
        if list(self.milestones) != sorted(set(self.milestones)) or any(e < 1 for e in self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones}")
        for name in ("warmup_epochs", "eval_every", "clean_passes"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ValueError("lr must be positive")
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device {self.device!r}: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: torch sees no CUDA device on this machine")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a method that has none."""


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class TrainingData(Splits):
    """A noisy-label problem as torch tensors, ready for training (docs/theory.md section 0).

    Attributes
    ----------
    X : (n, ...) float training inputs (vectors, or normalised images ``(n, 3, H, W)``).
    y_noisy, y_true : (n,) int64 observed and true labels (``y_true`` scores only).
    X_meta, y_meta : (m, ...) and (m,) the clean subset.
    X_test, y_test : (p, ...) and (p,) the test set.
    num_classes : C.
    name : description used in reports.
    augment : None, or ``augment(batch, generator) -> batch`` applied to
        training and clean batches when the budget asks for augmentation.
    """

    X: torch.Tensor
    y_noisy: torch.Tensor
    y_true: torch.Tensor
    X_meta: torch.Tensor
    y_meta: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str = "problem"
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __post_init__(self):
        for inputs, labels in (("X", "y_noisy"), ("X", "y_true"), ("X_meta", "y_meta"), ("X_test", "y_test")):
            if len(getattr(self, inputs)) != len(getattr(self, labels)) or len(getattr(self, inputs)) == 0:
                raise ValueError(f"{inputs} and {labels} must be non-empty and of equal length")
        missing = set(range(self.num_classes)) - set(self.y_meta.tolist())
        if missing:
            raise ValueError(f"the clean subset has no example of classes {sorted(missing)}")

    def to(self, device) -> TrainingData:
        """The same problem with every tensor on ``device``."""
        tensors = ("X", "y_noisy", "y_true", "X_meta", "y_meta", "X_test", "y_test")
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in tensors})

    @classmethod
    def from_problem(cls, problem, *, dtype: torch.dtype = torch.float32, device="cpu") -> TrainingData:
        """From a :class:`dynamics.problem.Problem` (vector inputs, no augmentation)."""
        def tensor(a, kind):
            return torch.as_tensor(np.asarray(a), dtype=kind, device=device)
        return cls(tensor(problem.X, dtype), tensor(problem.y_noisy, torch.int64), tensor(problem.y_true, torch.int64),
                   tensor(problem.X_meta, dtype), tensor(problem.y_meta, torch.int64),
                   tensor(problem.X_test, dtype), tensor(problem.y_test, torch.int64),
                   problem.num_classes, problem.name)

    @classmethod
    def from_images(cls, image_problem, *, dtype: torch.dtype = torch.float32, device="cpu") -> TrainingData:
        """From a :class:`dynamics.cifar.ImageProblem`: normalised images, random crop + flip augmentation."""
        from dynamics.cnn import augment, normalise

        def labels(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.int64, device=device)
        def images(a):
            return normalise(a, dtype=dtype).to(device)
        return cls(images(image_problem.images), labels(image_problem.y_noisy), labels(image_problem.y_true),
                   images(image_problem.meta_images), labels(image_problem.y_meta),
                   images(image_problem.test_images), labels(image_problem.y_test),
                   image_problem.num_classes, image_problem.name, augment=augment)


# ----------------------------------------------------------------------------- what the hooks see


@dataclasses.dataclass(frozen=True, eq=False)
class MethodState:
    """A method's per-example state between hooks.

    Attributes
    ----------
    weights : (n,) in ``[0, 1]``, the weights (or 0/1 selection) the method
        trains with, on the training device; recorded after every epoch.
    score : (n,) float64 continuous clean score (higher = more likely clean)
        where the method has one, else None.
    """

    weights: torch.Tensor
    score: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One step's data, drawn by the loop: the same for every method with the same seed.

    Attributes
    ----------
    epoch : 0-based epoch of the step.
    index : (b,) positions of the training examples in ``X``.
    x : (b, ...), y : (b,) training inputs (augmented) and observed labels.
    x_meta : (b_m, ...), y_meta : (b_m,) clean inputs (augmented) and labels.
    lr : the optimisers' learning rate for this step.
    """

    epoch: int
    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    x_meta: torch.Tensor
    y_meta: torch.Tensor
    lr: float


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What stays fixed during a run, as the hooks see it.

    Attributes
    ----------
    data : the problem, tensors on the training device.
    budget : the shared budget.
    networks : the method's ``num_networks`` networks, in training mode; the
        first one is evaluated and featurised.
    optimisers : one SGD optimiser per network.
    rng : the method's own random draws (mixture fits, cross-validation folds).
    clean_weight : ``gamma * m / n``, the weight of the clean term (0 for a
        method without clean training).
    """

    data: TrainingData
    budget: TrainBudget
    networks: tuple[nn.Module, ...]
    optimisers: tuple[torch.optim.Optimizer, ...]
    rng: np.random.Generator
    clean_weight: float


def weighted_mean(w: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i l_i / sum_i w_i`` of ``w, losses : (b,)`` (the mean over the kept examples of a 0/1 selection)."""
    return (w * losses).sum() / w.sum().clamp_min(1e-12)


class Method:
    """A noisy-label method: the hooks of the one training loop (docs/theory.md section 7).

    Subclasses set the class attributes and override the hooks they need:

    ``name``
        the registry name, used in results and errors.
    ``Params``
        a frozen dataclass of the method's settings (:class:`NoParams` if none).
    ``num_networks``
        networks the loop builds and hands over (Co-teaching trains two).
    ``clean_training``
        whether the method gets the protocol's clean-data training (the clean
        term and the clean passes; module docstring).
    ``restore_best_clean_epoch``
        whether the final network is the one of the epoch with the lowest
        clean-subset loss (early stopping) instead of the last one.

    The hooks, in the order the loop calls them: :meth:`resolve` (fill in
    settings that default to the problem), :meth:`init` (the state before
    training), :meth:`on_epoch` (before each epoch's batches),
    :meth:`batch_step` (one optimisation step; by default through
    :meth:`batch_weights`), :meth:`clean_score` (after training). A hook gets
    everything it may use as arguments: it draws randomness only from
    ``context.rng``, never from global state, and returns a new
    :class:`MethodState` instead of changing one.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    num_networks: ClassVar[int] = 1
    clean_training: ClassVar[bool] = True
    restore_best_clean_epoch: ClassVar[bool] = False

    def __init__(self, params=None):
        params = self.Params() if params is None else params
        if not isinstance(params, self.Params):
            raise TypeError(f"method {self.name!r} takes {self.Params.__name__}, got {type(params).__name__}")
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def clean_passes(self, budget: TrainBudget) -> int:
        """Passes over the clean subset before every epoch: the budget's, for a method with clean training."""
        return budget.clean_passes if self.clean_training else 0

    def resolve(self, data: TrainingData, budget: TrainBudget) -> Method:
        """This method with the settings that default to the problem or budget filled in (what gets recorded)."""
        return self

    def with_default(self, name: str, value) -> Method:
        """This method with its parameter ``name`` set to ``value`` when the user left it ``None``."""
        if getattr(self.params, name) is not None:
            return self
        return type(self)(dataclasses.replace(self.params, **{name: value}))

    def init(self, context: Context) -> MethodState:
        """The state before the first epoch: every weight 1."""
        X = context.data.X
        return MethodState(torch.ones(len(X), device=X.device, dtype=X.dtype))

    def on_epoch(self, state: MethodState, epoch: int, context: Context) -> MethodState:
        """Before the batches of ``epoch`` (0-based), timed as training: nothing by default."""
        return state

    def batch_weights(self, state: MethodState, batch: Batch, losses: tuple[torch.Tensor, ...]
                      ) -> tuple[MethodState, tuple[torch.Tensor, ...]]:
        """The weights ``(b,)`` of each network's batch losses ``(b,)``: by default the state's weights of the batch."""
        return state, (state.weights[batch.index],) * len(losses)

    def batch_step(self, state: MethodState, batch: Batch, context: Context) -> tuple[MethodState, torch.Tensor]:
        """One optimisation step of every network; returns the new state and the (detached) loss of the step.

        By default network ``k`` minimises ``weighted_mean(w_k, l_k) + clean term``
        with ``w_k`` from :meth:`batch_weights`, all networks in one backward pass.
        """
        networks, clean_weight = context.networks, context.clean_weight
        losses = tuple(F.cross_entropy(net(batch.x), batch.y, reduction="none") for net in networks)
        clean_terms = tuple(clean_weight * F.cross_entropy(net(batch.x_meta), batch.y_meta) if clean_weight > 0
                            else 0.0 for net in networks)
        state, weights = self.batch_weights(state, batch, losses)
        loss = 0.0
        for w, network_losses, clean_term in zip(weights, losses, clean_terms):
            loss = loss + weighted_mean(w, network_losses) + clean_term
        for optimiser in context.optimisers:
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for optimiser in context.optimisers:
            optimiser.step()
        return state, loss.detach()

    def clean_score(self, state: MethodState) -> np.ndarray | None:
        """(n,) float64 continuous clean score at the end of training, or None."""
        return state.score


def set_batch_weights(state: MethodState, batch: Batch, w: torch.Tensor) -> MethodState:
    """``state`` with the weights of ``batch`` replaced by ``w : (b,)`` (a new tensor; ``state`` is unchanged)."""
    return dataclasses.replace(state, weights=state.weights.index_put((batch.index,), w))


# ----------------------------------------------------------------------------- predictions


@torch.inference_mode()  # cheaper than no_grad (no version counters); outputs only leave as numpy or metrics
def predict(model: nn.Module, X: torch.Tensor, batch_size: int, *, features: bool = False) -> torch.Tensor:
    """Logits ``(N, C)``, or penultimate features ``(N, D)``, of ``X : (N, ...)`` in evaluation mode.

    ``batch_size`` examples per forward pass; the model's mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        call = model.features if features else model
        if len(X) <= batch_size:
            return call(X)
        return torch.cat([call(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def predict_features(model: nn.Module, X: torch.Tensor, batch_size: int) -> np.ndarray:
    """Penultimate features ``(N, D)`` of ``X``, float64 numpy (what FINE, cleanlab and the surrogate read)."""
    return predict(model, X, batch_size, features=True).double().cpu().numpy()


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``X : (N, ...)`` whose arg-max logit is ``y : (N,)``."""
    return float((predict(model, X, batch_size).argmax(dim=1) == y).float().mean())


# ----------------------------------------------------------------------------- results and metrics


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """What one method's training run produced.

    Attributes
    ----------
    method : the method's name.
    weights : (n,) float64 in ``[0, 1]``: the per-example weights (or 0/1
        selection) the method trained with in its last epoch. ``l2rw``'s
        batch-normalised weights are divided by their batch maximum.
    score : (n,) float64 continuous clean score where the method has one
        (higher = more likely clean), else None.
    epoch_weights : (epochs, n) float32, the weights after every epoch (the
        last row is ``weights``); float32 keeps a long run's record small.
    test_accuracy : accuracy of the final network on the test set (``early-stop``: of its best epoch's network).
    best_epoch : 0-based epoch whose network had the lowest loss on the clean
        subset (chosen without the test set, docs/theory.md section 7).
    best_epoch_accuracy : test accuracy of that epoch's network (NaN when
        that epoch was not evaluated).
    wall_time_per_epoch : seconds of training per epoch (the method's own
        featurising and reweighting included, evaluation excluded).
    peak_memory_mb : peak memory of the run above its start, MiB (CUDA:
        allocated device memory; CPU: resident set size, sampled).
    history : per epoch, lists of ``train_loss``, ``clean_loss`` (mean
        cross-entropy on the clean subset after the epoch), ``test_accuracy``
        (NaN where not evaluated), ``epoch_time`` and the
        :func:`detection_metrics` of the weights after that epoch.
    config : method, seed, budget, resolved params and network, JSON-serialisable.
    """

    method: str
    weights: np.ndarray
    score: np.ndarray | None
    epoch_weights: np.ndarray
    test_accuracy: float
    best_epoch: int
    best_epoch_accuracy: float
    wall_time_per_epoch: float
    peak_memory_mb: float
    history: dict
    config: dict


def detection_metrics(weights: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Scores of ``weights (n,)`` as a clean-example detector (docs/theory.md sections 3 and 7).

    ``precision`` / ``recall`` / ``f1`` of ``{w > 0}`` as the clean set, ``auc``
    of ``w`` as a clean score (ties count 1/2), ``noisy_mass = sum_{noisy} w /
    sum w`` and the mean weights of clean and noisy examples; conventions of
    :func:`dynamics.trajectory.weight_stats`.

    Parameters
    ----------
    weights : (n,) in ``[0, 1]``.
    noisy : (n,) bool noise mask.
    """
    weights = np.asarray(weights, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=bool)
    stats = {key: float(value[0]) for key, value in weight_stats(weights[None], noisy).items()}
    precision, recall = stats["precision"], stats["recall"]
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        f1 = 0.0 if precision == 0 or recall == 0 else math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall)
    total = weights.sum()
    return {
        "precision": precision, "recall": recall, "f1": f1, "auc": stats["auc"],
        "noisy_mass": float(weights[noisy].sum() / total) if total > 0 else math.nan,
        "mean_w_clean": stats["mean_w_clean"], "mean_w_noisy": stats["mean_w_noisy"],
    }


__all__ = ["Batch", "Context", "Method", "MethodResult", "MethodState", "MethodUnavailable", "NoParams",
           "TrainBudget", "TrainingData", "TrainingDiverged", "accuracy", "detection_metrics", "predict",
           "predict_features", "set_batch_weights", "weighted_mean"]
