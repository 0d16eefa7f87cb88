"""Noisy-label baselines behind one interface, trained end to end (THEORY.md section 7).

Every method trains the same network (one factory, one seed) with the same
optimiser, learning-rate schedule, batches, epochs and clean subset, and
returns the same :class:`MethodResult`: final per-example weights in
``[0, 1]`` (the weights or selection it trained with last), test accuracy,
wall time per epoch, peak memory and a per-epoch history.

Methods (:data:`METHODS`):

``erm``
    ``w = 1``.
``meta``
    Exact bi-level meta-reweighting of the network (THEORY.md section 2, the
    mini-batch variant): a one-step look-ahead ``theta_hat(w)`` by
    ``torch.func.functional_call``, the meta-gradient ``dL_meta/dw`` by
    automatic differentiation through the look-ahead, persistent clipped
    weights ``w <- clip(w - alpha dL_meta/dw, 0, 1)`` (only ``w[B]`` moves),
    then the model step with the new weights.
``l2rw``
    Ren et al. (2018): the same look-ahead at ``w = 0``, weights
    ``max(-dL_meta/dw, 0)`` normalised to sum to 1 over the batch, no state.
``small-loss``
    Keep the ``1 - R(epoch)`` fraction of each batch with the smallest loss,
    ``R`` ramping linearly from 0 to the noise rate ``p`` over the warm-up
    epochs (the Co-teaching schedule, one network).
``coteaching``
    Han et al. (2018): two networks; each picks its small-loss examples and
    the *other* network trains on them. Test accuracy is the first network's.
``fine``
    Kim et al. (2021): after ERM warm-up, every epoch, per class ``k`` the top
    right singular vector ``u_k`` of the (row-normalised, uncentred, as in
    FINE) penultimate features of the examples labelled ``k``; score
    ``<u_k, phi_i / ||phi_i||>^2``; a 2-component Gaussian mixture per class
    splits clean (higher-mean component, posterior > 1/2) from noisy.
``surrogate``
    :func:`dynamics.surrogate.reweight` on the penultimate features of the
    training and clean examples, recomputed every epoch, ``alpha0 =
    1/(C-1)`` during the warm-up epochs then 0 (THEORY.md section 6).
``oracle``
    The true clean mask ``y_noisy == y_true`` (an upper reference).
``cleanlab``
    Optional external reference (cleanlab is AGPL-3.0 and not a dependency):
    after ERM warm-up, every epoch, out-of-sample class probabilities from a
    cross-validated logistic regression on the same penultimate features and
    ``cleanlab.filter.find_label_issues``; flagged examples get ``w = 0``.
    Raises :class:`MethodUnavailable` when cleanlab is not importable.

Loss of one step, with a training batch ``B`` (size ``b``) and a clean batch
``V`` (size ``b_m``) drawn from the clean subset every step::

    train term + gamma * (m / n) * mean_{j in V} l_j

The clean term is the unbiased mini-batch estimate of THEORY.md's
``gamma * sum_j l_meta_j`` in units of the training term (every method gets
it, so all see the same data; ``gamma = 0`` trains on the noisy set only).
The training term is ``(1/b) sum_B w_i l_i`` for ``meta`` (THEORY.md's
weighted sum), ``sum_B w_i l_i`` with ``sum_B w_i = 1`` for ``l2rw``, and
the weighted mean ``sum_B w_i l_i / sum_B w_i`` for all others (the mean
over the kept examples for the selection methods, the usual convention).

Randomness: all of it comes from ``seed`` through explicit generators
(initialisation, batch order, clean batches, augmentation), so two methods
with the same seed see the same initial network and the same batches.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from dynamics.trajectory import weight_stats

METHODS = ("erm", "meta", "l2rw", "small-loss", "coteaching", "fine", "surrogate", "oracle", "cleanlab")
OPTIONAL_METHODS = ("cleanlab",)

NetworkFactory = Callable[[torch.Generator], nn.Module]


class MethodUnavailable(RuntimeError):
    """A method whose optional dependency is missing; the message says what to install."""


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
    lr : initial SGD learning rate ``eta``, annealed to 0 by a per-step cosine.
    momentum, weight_decay : SGD's (they act on the model step only; the
        look-ahead of ``meta`` / ``l2rw`` is one plain gradient step, THEORY.md section 2).
    gamma : weight of the clean subset in every method's training loss.
    warmup_epochs : ERM warm-up of ``fine`` / ``cleanlab``, alpha0 warm-up of
        ``surrogate``, forget-rate ramp of ``small-loss`` / ``coteaching``.
    augment : random crop + flip of image batches (ignored for vector inputs).
    eval_every : test accuracy in the history every this many epochs (0: the
        final epoch only); it is never part of the timed training.
    eval_batch_size : examples per forward pass when evaluating or featurising.
    device : torch device of the networks and data.
    """

    epochs: int = 20
    batch_size: int = 64
    meta_batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 1.0
    warmup_epochs: int = 2
    augment: bool = True
    eval_every: int = 1
    eval_batch_size: int = 1024
    device: str = "cpu"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "meta_batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_epochs", "eval_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ValueError("lr must be positive")


@dataclasses.dataclass(frozen=True)
class MethodParams:
    """Method-specific settings (each used by the methods named).

    Attributes
    ----------
    noise_rate : forget rate ``p`` of ``small-loss`` / ``coteaching``; None for
        the training set's realised noise rate (assumed known, as Co-teaching does).
    beta : meta step size of ``meta``: the weights move by
        ``-beta * (b / eta) * dL_meta/dw``, i.e. ``beta`` times the mean over the
        clean batch of ``<grad l_i, grad l_j(theta_hat)>`` (to first order),
        THEORY.md section 2's ``(beta / m) * score``.
    w0 : initial weight of ``meta``.
    surrogate_rule : weight rule of ``surrogate`` (``"reference"`` or ``"sign"``).
    surrogate_alpha0_epochs : epochs of ``surrogate`` with ``alpha0 = 1/(C-1)``
        before it drops to 0; None for the budget's ``warmup_epochs``.
    fine_threshold : clean posterior above which ``fine`` keeps an example.
    cleanlab_folds : cross-validation folds of the ``cleanlab`` reference.
    """

    noise_rate: float | None = None
    beta: float = 1.0
    w0: float = 0.5
    surrogate_rule: str = "reference"
    surrogate_alpha0_epochs: int | None = None
    fine_threshold: float = 0.5
    cleanlab_folds: int = 5

    def __post_init__(self):
        if self.noise_rate is not None and not 0 <= self.noise_rate < 1:
            raise ValueError(f"noise_rate must lie in [0, 1), got {self.noise_rate}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not 0 <= self.w0 <= 1:
            raise ValueError(f"w0 must lie in [0, 1], got {self.w0}")
        if self.surrogate_rule not in ("reference", "sign"):
            raise ValueError(f"surrogate_rule must be 'reference' or 'sign', got {self.surrogate_rule!r}")
        if self.surrogate_alpha0_epochs is not None and self.surrogate_alpha0_epochs < 0:
            raise ValueError(f"surrogate_alpha0_epochs must be >= 0, got {self.surrogate_alpha0_epochs}")
        if not 0 < self.fine_threshold < 1:
            raise ValueError(f"fine_threshold must lie in (0, 1), got {self.fine_threshold}")
        if self.cleanlab_folds < 2:
            raise ValueError(f"cleanlab_folds must be at least 2, got {self.cleanlab_folds}")


# ----------------------------------------------------------------------------- data and networks


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A noisy-label problem as torch tensors, ready for training (THEORY.md section 0).

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

    @property
    def noisy(self) -> np.ndarray:
        """(n,) bool, the noise mask (for scoring only)."""
        return (self.y_noisy != self.y_true).cpu().numpy()

    @property
    def noise_rate(self) -> float:
        return float(self.noisy.mean())

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(n, m, p)``."""
        return len(self.X), len(self.X_meta), len(self.X_test)

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


class FeatureMLP(nn.Module):
    """Fully connected ReLU network with a linear head, for vector inputs.

    ``Linear -> ReLU`` per hidden layer, He-normal weights (variance
    ``2 / fan_in``) and zero biases, head LeCun-normal; every draw comes from
    ``generator``, so building one leaves torch's global random state alone.

    Parameters
    ----------
    in_dim : input dimension ``d``.
    num_classes : C.
    hidden : units of each hidden layer; the last is the feature dimension ``D``.
    generator : the only source of the initial weights; parameters live on its device.
    dtype : parameter dtype.
    """

    def __init__(self, in_dim: int, num_classes: int, *, hidden: Sequence[int] = (256, 256),
                 generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not hidden:
            raise ValueError("hidden needs at least one layer (the features)")
        device = generator.device
        dims = [in_dim, *hidden]
        layers = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            layers += [self._linear(fan_in, fan_out, 2.0, generator, device, dtype), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = dims[-1]
        self.head = self._linear(dims[-1], num_classes, 1.0, generator, device, dtype)

    @staticmethod
    def _linear(fan_in, fan_out, gain, generator, device, dtype):
        layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out, device=device, dtype=dtype)
        with torch.no_grad():
            draw = torch.randn(layer.weight.shape, generator=generator, device=device, dtype=dtype)
            layer.weight.copy_(draw * math.sqrt(gain / fan_in))
            layer.bias.zero_()
        return layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, D), the penultimate representation."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, C) logits."""
        return self.head(self.body(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride, generator, dtype):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, generator, dtype)
        self.bn1 = nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, generator, dtype)
        self.bn2 = nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_conv(in_channels, out_channels, 1, stride, generator, dtype),
                                          nn.BatchNorm2d(out_channels, device=generator.device, dtype=dtype))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _conv(in_channels, out_channels, kernel_size, stride, generator, dtype):
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False, device=generator.device, dtype=dtype)
    with torch.no_grad():
        draw = torch.randn(conv.weight.shape, generator=generator, device=generator.device, dtype=dtype)
        conv.weight.copy_(draw * math.sqrt(2 / (in_channels * kernel_size ** 2)))
    return conv


class ResNet34(nn.Module):
    """The CIFAR ResNet-34 of the CIFAR-10N paper: 3x3 stem, BasicBlocks (3, 4, 6, 3), 64-512 channels.

    He-normal convolutions and a LeCun-normal head drawn from ``generator``;
    ``features`` is the 512-dimensional average-pooled representation.
    """

    def __init__(self, num_classes: int = 10, *, generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        device = generator.device
        layers = [_conv(3, 64, 3, 1, generator, dtype), nn.BatchNorm2d(64, device=device, dtype=dtype), nn.ReLU()]
        channels = 64
        for out_channels, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(_BasicBlock(channels, out_channels, stride if index == 0 else 1, generator, dtype))
                channels = out_channels
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = channels
        self.head = FeatureMLP._linear(channels, num_classes, 1.0, generator, device, dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def mlp_factory(in_dim: int, num_classes: int, hidden: Sequence[int] = (256, 256),
                dtype: torch.dtype = torch.float32) -> NetworkFactory:
    """``generator -> FeatureMLP``: the network of the vector problems (gmm, digits)."""
    return lambda generator: FeatureMLP(in_dim, num_classes, hidden=tuple(hidden), generator=generator, dtype=dtype)


def cnn_factory(num_classes: int, width: float = 0.5) -> NetworkFactory:
    """``generator -> dynamics.cnn.SmallCNN``: the small CNN of the CPU CIFAR profile."""
    from dynamics.cnn import SmallCNN

    return lambda generator: SmallCNN(num_classes, width=width, generator=generator)


def resnet34_factory(num_classes: int) -> NetworkFactory:
    """``generator -> ResNet34``: the network of the full-scale (GPU) CIFAR profile."""
    return lambda generator: ResNet34(num_classes, generator=generator)


# ----------------------------------------------------------------------------- results and metrics


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """What one method's training run produced.

    Attributes
    ----------
    method : one of :data:`METHODS`.
    weights : (n,) float64 in ``[0, 1]``: the per-example weights (or 0/1
        selection) the method trained with in its last epoch. ``l2rw``'s
        batch-normalised weights are divided by their batch maximum.
    score : (n,) float64 continuous clean score where the method has one
        (higher = more likely clean), else None.
    test_accuracy : accuracy of the final network on the test set.
    wall_time_per_epoch : seconds of training per epoch (the method's own
        featurising and reweighting included, evaluation excluded).
    peak_memory_mb : peak memory of the run above its start, MiB (CUDA:
        allocated device memory; CPU: resident set size, sampled).
    history : per epoch, lists of ``train_loss``, ``test_accuracy`` (NaN
        where not evaluated), ``epoch_time`` and the :func:`detection_metrics`
        of the weights used in that epoch.
    config : method, seed, budget, params and network, JSON-serialisable.
    """

    method: str
    weights: np.ndarray
    score: np.ndarray | None
    test_accuracy: float
    wall_time_per_epoch: float
    peak_memory_mb: float
    history: dict
    config: dict


def detection_metrics(weights: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Scores of ``weights (n,)`` as a clean-example detector (THEORY.md sections 3 and 7).

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


# ----------------------------------------------------------------------------- the meta-gradient


def _lookahead(model, params, buffers, x, y, w, x_meta, y_meta, lr, clean_scale):
    """One look-ahead of THEORY.md section 2 on a batch, graphs kept for the model step.

    Returns ``(dL_meta/dw (b,), meta loss at theta_hat, per-example losses (b,),
    clean term at theta)``, the last two still attached to the graph at ``theta``.
    """
    w = w.detach().clone().requires_grad_(True)
    losses = F.cross_entropy(functional_call(model, (params, buffers), (x,)), y, reduction="none")
    clean_term = clean_scale * F.cross_entropy(functional_call(model, (params, buffers), (x_meta,)), y_meta)
    train_loss = (w * losses).sum() / len(y) + clean_term
    names = list(params)
    grads = torch.autograd.grad(train_loss, [params[k] for k in names], create_graph=True)
    params_hat = {k: params[k] - lr * g for k, g in zip(names, grads)}
    # The look-ahead's own BatchNorm updates go to throwaway copies: only the model step may move the running stats.
    scratch = {k: b.clone() for k, b in buffers.items()}
    meta_loss = F.cross_entropy(functional_call(model, (params_hat, scratch), (x_meta,)), y_meta)
    (grad_w,) = torch.autograd.grad(meta_loss, w, retain_graph=True)
    return grad_w, meta_loss.detach(), losses, clean_term


def meta_weight_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                         x_meta: torch.Tensor, y_meta: torch.Tensor, *, lr: float,
                         clean_weight: float = 0.0) -> tuple[torch.Tensor, float]:
    """The exact meta-gradient ``dL_meta/dw`` of one mini-batch step (THEORY.md section 2).

    With ``l_i`` the cross-entropy of training example ``i`` and ``l_j`` of
    clean example ``j``,

    - look-ahead: ``theta_hat(w) = theta - lr * grad_theta [(1/b) sum_i w_i l_i + clean_weight * mean_j l_j](theta)``;
    - meta objective: ``L_meta(w) = mean_j l_j(theta_hat(w))``;

    differentiated through the look-ahead by automatic differentiation (no
    linearisation). The network runs in its current mode; in training mode
    BatchNorm uses batch statistics in both forward passes, and the module's
    running statistics are left untouched.

    Parameters
    ----------
    model : maps ``(N, ...)`` inputs to ``(N, C)`` logits.
    x : (b, ...) training inputs; y : (b,) their (noisy) labels.
    w : (b,) weights at which to differentiate.
    x_meta : (b_m, ...) clean inputs; y_meta : (b_m,) their labels.
    lr : look-ahead step size ``eta``.
    clean_weight : weight of the clean loss in the look-ahead (``gamma``-term).

    Returns
    -------
    grad_w : (b,) tensor ``dL_meta/dw``.
    meta_loss : ``L_meta(w)``.
    """
    params = dict(model.named_parameters())
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    grad_w, meta_loss, _, _ = _lookahead(model, params, buffers, x, y, w, x_meta, y_meta, lr, clean_weight)
    return grad_w.detach(), float(meta_loss)


def meta_step(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              w: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor, *, lr: float, clean_weight: float,
              beta: float = 1.0, reset: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One full step of exact meta-reweighting on a mini-batch (THEORY.md section 2, steps 1-4).

    1. look-ahead and 2. meta-gradient ``dL_meta/dw`` at ``w`` (:func:`meta_weight_gradient`);
    3. weights: ``clip(w - beta (b / lr) dL_meta/dw, 0, 1)`` (THEORY.md's ``alpha
       = beta / eta`` with ``eta = lr / b``, the training term being a mean), or with
       ``reset`` (L2RW, Ren et al. 2018; ``w`` should be 0) ``max(-dL_meta/dw, 0)``
       normalised to sum to 1 over the batch;
    4. model: one ``optimiser`` step on ``(1/b) sum_i w_new_i l_i + clean_weight *
       mean_j l_j`` (``sum_i w_new_i l_i + ...`` with ``reset``), reusing the
       look-ahead's forward pass at ``theta``. BatchNorm running statistics move
       once, by that forward pass, as in a plain training step.

    Parameters
    ----------
    model : the network, in training mode; ``optimiser`` holds its parameters.
    x : (b, ...), y : (b,) training batch; w : (b,) its current weights.
    x_meta : (b_m, ...), y_meta : (b_m,) clean batch.
    lr : step size of the look-ahead (the optimiser's current learning rate).
    clean_weight : weight of the clean term (``gamma * m / n`` in :func:`train`).
    beta : meta step size (ignored with ``reset``).
    reset : L2RW's stateless weights instead of the persistent clipped ones.

    Returns
    -------
    new_w : (b,) the weights the model step used.
    loss : the training loss of that step (a detached scalar tensor).
    """
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    grad_w, _, losses, clean_term = _lookahead(model, params, buffers, x, y, w, x_meta, y_meta, lr, clean_weight)
    if reset:
        raw = (-grad_w).clamp_min(0.0)
        total = raw.sum()
        new_w = raw / total if total > 0 else raw
        train_term = (new_w * losses).sum()
    else:
        new_w = (w.detach() - beta * len(y) / lr * grad_w).clamp(0.0, 1.0)
        train_term = (new_w * losses).sum() / len(y)
    loss = train_term + clean_term
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return new_w, loss.detach()


def surrogate_weights(model: nn.Module, X: torch.Tensor, y: torch.Tensor, X_meta: torch.Tensor,
                      y_meta: torch.Tensor, num_classes: int, *, alpha0: float, rule: str = "reference",
                      batch_size: int = 1024, features: np.ndarray | None = None):
    """One surrogate weighting pass on the network's penultimate features (THEORY.md section 6).

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

    Returns
    -------
    :class:`dynamics.surrogate.ReweightResult`
    """
    from dynamics.surrogate import reweight

    if features is None and len(X) + len(X_meta) <= batch_size:
        # One forward pass for both (evaluation mode: BatchNorm does not mix the two sets).
        both = _predict(model, torch.cat([X, X_meta]), batch_size, "features").double().cpu().numpy()
        features, meta_features = both[:len(X)], both[len(X):]
    else:
        if features is None:
            features = _predict(model, X, batch_size, "features").double().cpu().numpy()
        meta_features = _predict(model, X_meta, batch_size, "features").double().cpu().numpy()
    return reweight(y.cpu().numpy(), features, y_meta.cpu().numpy(), meta_features, num_classes=num_classes,
                    alpha0=alpha0, rule=rule)


# ----------------------------------------------------------------------------- training


def _peak_memory_probe(device: torch.device):
    """Start measuring peak memory; returns ``stop() -> MiB above the start``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        return lambda: (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        statm = open("/proc/self/statm")
    except (OSError, ValueError, AttributeError):
        return lambda: math.nan

    def rss():
        statm.seek(0)
        return int(statm.read().split()[1]) * page

    start = rss()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join()
        peak[0] = max(peak[0], rss())
        statm.close()
        return (peak[0] - start) / 2 ** 20

    return stop


@torch.inference_mode()  # cheaper than no_grad (no version counters); outputs only leave as numpy
def _predict(model, X, batch_size, what="logits"):
    was_training = model.training
    model.eval()
    try:
        call = model.features if what == "features" else model
        if len(X) <= batch_size:
            return call(X)
        return torch.cat([call(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def _accuracy(model, X, y, batch_size) -> float:
    return float((_predict(model, X, batch_size).argmax(dim=1) == y).float().mean())


def fine_clean_probability(features: np.ndarray, labels: np.ndarray, num_classes: int,
                           rng: np.random.Generator) -> np.ndarray:
    """FINE's clean posterior of every example (Kim et al. 2021; THEORY.md section 7).

    Per class ``k``: rows ``phi_i / ||phi_i||`` of the examples labelled ``k``
    (uncentred, as in FINE), their top right singular vector ``u_k`` (the top
    eigenvector of the ``(D, D)`` Gram matrix), the alignment score
    ``<u_k, phi_i / ||phi_i||>^2``, and a 2-component Gaussian mixture on the
    class's scores; the clean posterior is that of the higher-mean component.
    A class with fewer than 4 examples or constant scores is kept whole (1).

    Parameters
    ----------
    features : (n, D) penultimate features.
    labels : (n,) int observed labels in ``[0, C)``.
    num_classes : C.
    rng : seeds the mixture fits.

    Returns
    -------
    (n,) float64 in ``[0, 1]``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    normed = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    probability = np.ones(len(labels))
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < 4:
            continue
        block = normed[members]
        # The top right singular vector of the block is the top eigenvector of its (D, D) Gram matrix.
        top = np.linalg.eigh(block.T @ block)[1][:, -1]
        scores = (block @ top) ** 2
        if np.ptp(scores) < 1e-12:
            continue
        mixture = GaussianMixture(2, covariance_type="full", tol=1e-6, max_iter=100,
                                  random_state=int(rng.integers(2 ** 31)))
        with warnings.catch_warnings():
            # FINE's tol=1e-6 often stops at max_iter on near-degenerate classes; the fit is still usable.
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(scores[:, None])
        clean_component = int(np.argmax(mixture.means_[:, 0]))
        probability[members] = mixture.predict_proba(scores[:, None])[:, clean_component]
    return probability


def _cleanlab_issues(features, labels, num_classes, folds, rng):
    cleanlab_filter = importlib.import_module("cleanlab.filter")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(np.bincount(labels, minlength=num_classes).min()))
    if folds < 2:
        return np.zeros(len(labels), dtype=bool)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2 ** 31)))
    pred_probs = cross_val_predict(classifier, features, labels, cv=splitter, method="predict_proba")
    return np.asarray(cleanlab_filter.find_label_issues(labels, pred_probs), dtype=bool)


def _check_cleanlab():
    try:
        importlib.import_module("cleanlab.filter")
    except ImportError:
        raise MethodUnavailable(
            "method 'cleanlab' needs the optional package cleanlab (AGPL-3.0, not a dependency of this "
            "project): pip install cleanlab"
        ) from None


def _forget_rate(epoch: int, noise_rate: float, warmup_epochs: int) -> float:
    """Co-teaching's schedule ``R(epoch) = p * min(epoch / T_k, 1)`` with ``T_k = warmup_epochs``."""
    return noise_rate if warmup_epochs == 0 else noise_rate * min(epoch / warmup_epochs, 1.0)


def _small_loss_mask(losses: torch.Tensor, forget_rate: float) -> torch.Tensor:
    keep = len(losses) - int(round(forget_rate * len(losses)))
    mask = torch.zeros_like(losses)
    mask[torch.argsort(losses.detach())[:max(keep, 1)]] = 1.0
    return mask


def _weighted_mean(w, losses):
    return (w * losses).sum() / w.sum().clamp_min(1e-12)


def _config(method, seed, budget, params, network, data) -> dict:
    n, m, p = data.sizes
    return {"method": method, "seed": int(seed), "budget": dataclasses.asdict(budget),
            "params": dataclasses.asdict(params), "network": network, "data": data.name,
            "n": n, "m": m, "p": p, "num_classes": data.num_classes, "realised_noise_rate": data.noise_rate}


def train(method: str, data: TrainingData, network_factory: NetworkFactory, budget: TrainBudget,
          seed: int, params: MethodParams = MethodParams(), *,
          progress: Callable[[int, dict], None] | None = None) -> MethodResult:
    """Train one method end to end and score its weights (THEORY.md section 7).

    Parameters
    ----------
    method : one of :data:`METHODS`.
    data : the problem as tensors (inputs ``X : (n, ...)``, clean subset ``(m, ...)``, test ``(p, ...)``).
    network_factory : ``generator -> nn.Module`` mapping inputs to ``(N, C)``
        logits and exposing ``features(x) -> (N, D)`` (penultimate layer);
        parameters on the generator's device. Called once per network
        (twice for ``coteaching``).
    budget : optimiser, schedule, batches and epochs shared by every method.
    seed : the source of every random draw (initialisation, batches, augmentation).
    params : method-specific settings.
    progress : called as ``progress(epoch, history_row)`` after each epoch.

    Returns
    -------
    MethodResult

    Raises
    ------
    ValueError
        An unknown method, or a ``data`` / ``budget`` mismatch.
    MethodUnavailable
        ``cleanlab`` without the cleanlab package.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "cleanlab":
        _check_cleanlab()
    device = torch.device(budget.device)
    n, m, _ = data.sizes
    C = data.num_classes
    noise_rate = data.noise_rate if params.noise_rate is None else params.noise_rate
    noisy = data.noisy
    y_noisy_np = data.y_noisy.cpu().numpy()

    seeds = np.random.SeedSequence(int(seed)).spawn(5)
    def torch_generator(sequence):
        return torch.Generator(device=device).manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))
    init_generator = torch_generator(seeds[0])
    batch_rng = np.random.default_rng(seeds[1])
    augment_generator = torch_generator(seeds[2])
    method_rng = np.random.default_rng(seeds[3])

    stop_probe = _peak_memory_probe(device)
    networks = [network_factory(init_generator)]
    if method == "coteaching":
        networks.append(network_factory(torch_generator(seeds[4])))
    for net in networks:
        net.to(device).train()
    optimisers = [torch.optim.SGD(net.parameters(), lr=budget.lr, momentum=budget.momentum,
                                  weight_decay=budget.weight_decay) for net in networks]
    model = networks[0]

    X, y = data.X.to(device), data.y_noisy.to(device)
    X_meta, y_meta = data.X_meta.to(device), data.y_meta.to(device)
    augment = data.augment if budget.augment and data.augment is not None else None
    b, b_m = min(budget.batch_size, n), min(budget.meta_batch_size, m)
    steps_per_epoch = math.ceil(n / b)
    total_steps = budget.epochs * steps_per_epoch
    clean_scale = budget.gamma * m / n
    alpha0_epochs = budget.warmup_epochs if params.surrogate_alpha0_epochs is None else params.surrogate_alpha0_epochs

    # Per-example state: the weights trained with (and reported), and a clean score where there is one.
    weights = torch.full((n,), params.w0 if method == "meta" else 1.0, device=device, dtype=X.dtype)
    if method == "oracle":
        weights = torch.as_tensor(~noisy, device=device, dtype=X.dtype)
    score = None
    meta_order, meta_position = batch_rng.permutation(m), 0

    history = {key: [] for key in ("train_loss", "test_accuracy", "epoch_time", "precision", "recall", "f1",
                                   "auc", "noisy_mass", "mean_w_clean", "mean_w_noisy")}
    step = 0
    for epoch in range(budget.epochs):
        started = time.perf_counter()
        # Per-epoch reweighting of the feature-based methods, timed as part of training.
        if method in ("fine", "cleanlab", "surrogate") and (method == "surrogate" or epoch >= budget.warmup_epochs):
            features = _predict(model, X, budget.eval_batch_size, "features").double().cpu().numpy()
            if method == "fine":
                score = fine_clean_probability(features, y_noisy_np, C, method_rng)
                new_weights = (score > params.fine_threshold).astype(np.float64)
            elif method == "cleanlab":
                new_weights = (~_cleanlab_issues(features, y_noisy_np, C, params.cleanlab_folds,
                                                 method_rng)).astype(np.float64)
            else:
                from dynamics.surrogate import alpha0_schedule

                result = surrogate_weights(model, X, y, X_meta, y_meta, C,
                                           alpha0=alpha0_schedule(epoch, C, alpha0_epochs), rule=params.surrogate_rule,
                                           batch_size=budget.eval_batch_size, features=features)
                new_weights, score = result.weights, result.score
            weights = torch.as_tensor(new_weights, device=device, dtype=X.dtype)
        forget_rate = _forget_rate(epoch, noise_rate, budget.warmup_epochs)

        order = torch.as_tensor(batch_rng.permutation(n), device=device)
        loss_sum = 0.0
        for start in range(0, n, b):
            index = order[start:start + b]
            if meta_position + b_m > m:
                meta_order, meta_position = batch_rng.permutation(m), 0
            meta_index = torch.as_tensor(meta_order[meta_position:meta_position + b_m], device=device)
            meta_position += b_m
            x_batch, y_batch = X[index], y[index]
            x_meta_batch, y_meta_batch = X_meta[meta_index], y_meta[meta_index]
            if augment is not None:
                x_batch = augment(x_batch, augment_generator)
                x_meta_batch = augment(x_meta_batch, augment_generator)
            lr = 0.5 * budget.lr * (1 + math.cos(math.pi * step / total_steps))
            for optimiser in optimisers:
                for group in optimiser.param_groups:
                    group["lr"] = lr

            if method in ("meta", "l2rw"):
                w_at = weights[index] if method == "meta" else torch.zeros(len(index), device=device, dtype=X.dtype)
                new_w, loss = meta_step(model, optimisers[0], x_batch, y_batch, w_at, x_meta_batch, y_meta_batch,
                                        lr=lr, clean_weight=clean_scale, beta=params.beta, reset=method == "l2rw")
                if method == "meta":
                    weights[index] = new_w
                else:
                    weights[index] = new_w / new_w.max() if new_w.max() > 0 else new_w
            else:
                all_losses = []
                for net in networks:
                    all_losses.append(F.cross_entropy(net(x_batch), y_batch, reduction="none"))
                clean_terms = [clean_scale * F.cross_entropy(net(x_meta_batch), y_meta_batch) if clean_scale > 0
                               else 0.0 for net in networks]
                if method == "small-loss":
                    masks = [_small_loss_mask(all_losses[0], forget_rate)]
                    weights[index] = masks[0]
                elif method == "coteaching":
                    picked = [_small_loss_mask(losses, forget_rate) for losses in all_losses]
                    masks = picked[::-1]  # each network trains on the other's small-loss picks
                    weights[index] = 0.5 * (picked[0] + picked[1])
                else:
                    masks = [weights[index]]
                loss = 0.0
                for losses, mask, clean_term in zip(all_losses, masks, clean_terms):
                    loss = loss + _weighted_mean(mask, losses) + clean_term
                for optimiser in optimisers:
                    optimiser.zero_grad(set_to_none=True)
                loss.backward()
                for optimiser in optimisers:
                    optimiser.step()
            loss_sum += float(loss.detach()) * len(index)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started

        final_epoch = epoch == budget.epochs - 1
        evaluate = final_epoch or (budget.eval_every > 0 and (epoch + 1) % budget.eval_every == 0)
        accuracy = _accuracy(model, data.X_test.to(device), data.y_test.to(device),
                             budget.eval_batch_size) if evaluate else math.nan
        row = {"train_loss": loss_sum / n / len(networks), "test_accuracy": accuracy, "epoch_time": elapsed,
               **detection_metrics(weights.cpu().numpy(), noisy)}
        for key in history:
            history[key].append(row[key])
        if progress is not None:
            progress(epoch, row)

    peak_memory = stop_probe()
    final_weights = weights.detach().double().cpu().numpy().clip(0.0, 1.0)
    if method == "meta":
        score = final_weights
    network_name = type(model).__name__
    config = _config(method, seed, budget, params, network_name, data) | {
        "forget_rate": noise_rate if method in ("small-loss", "coteaching") else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return MethodResult(method, final_weights, None if score is None else np.asarray(score, dtype=np.float64),
                        history["test_accuracy"][-1], float(np.mean(history["epoch_time"])), peak_memory,
                        history, config)


__all__ = [
    "METHODS", "OPTIONAL_METHODS", "FeatureMLP", "MethodParams", "MethodResult", "MethodUnavailable", "ResNet34",
    "TrainBudget", "TrainingData", "cnn_factory", "detection_metrics", "fine_clean_probability",
    "meta_step", "meta_weight_gradient", "mlp_factory", "resnet34_factory", "surrogate_weights", "train",
]
