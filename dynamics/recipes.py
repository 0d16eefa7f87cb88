"""Reweighting inside your own torch training loop (docs/theory.md sections 2 and 6).

Two routes from a noisy training set and a small trusted (clean) subset to
per-example weights, each a few lines in an ordinary ``DataLoader`` loop:

- **The surrogate, as the paper's public code uses it** (docs/theory.md
  section 6, "How the reference code trains with it"): once per epoch,
  :func:`clean_subset_features` computes the clean subset's penultimate
  features (and, optionally, :func:`dynamics.surrogate.clean_reference` their
  class directions, so that no batch recomputes them); for every mini-batch,
  :func:`surrogate_batch_weights` computes the batch's features (evaluation
  mode, no gradient) and applies :func:`dynamics.surrogate.reweight` to that
  batch alone (every weight reset to 1/2, no memory across batches). The loss
  is then ``mean_batch(w_i * l_i)``. ``alpha0`` follows
  :func:`dynamics.surrogate.alpha0_schedule`; the reference code also trains
  with every weight at 1/2 for a warm-up.
- **Exact meta-reweighting** (docs/theory.md section 2): :class:`MetaReweighter`
  keeps one persistent weight per training example and moves the batch's
  weights by the exact meta-gradient through a one-step look-ahead
  (:func:`dynamics.bilevel.meta_step`), for cross-entropy, MSE or a loss of
  your own; the loader yields each example's index
  (:class:`IndexedDataset`, or ``TensorDataset(X, y, torch.arange(n))``).

The surrogate pass costs one extra forward pass of the batch (evaluation
mode, no gradient), and nothing but its scoring for a network without
BatchNorm or dropout (:func:`mode_free`), whose training step's own forward
already gives those features (``batch_features``); the exact step costs a
gradient of a gradient (3-4 plain steps, see ``bench/finite.py``;
``bench/surrogate.py`` compares the two).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dynamics.bilevel import LOSSES, Loss, meta_step
from dynamics.surrogate import CleanReference, clean_reference, reweight

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def _feature_map(model: nn.Module, features: FeatureMap | None) -> FeatureMap:
    if features is not None:
        return features
    if callable(getattr(model, "features", None)):
        return model.features
    if isinstance(model, nn.Sequential) and len(model) > 1:
        return model[:-1]  # everything but the last layer
    raise ValueError("features: the model has no features(x) method and is not an nn.Sequential; pass "
                     "features=..., a callable x -> (N, D) penultimate features, e.g. lambda x: model.body(x)")


def _mode_setter(model: nn.Module) -> Callable[[bool], object]:
    """``model.train``, or, when every module is a plain one, the same effect more cheaply: the ``training`` flag
    of every module set directly, without ``train``'s recursion through ``nn.Module.__setattr__`` (switching a
    7-module MLP to evaluation mode and back: 35 us that way, 11 us this way, against 270 us for the whole surrogate
    pass of a 128-example batch; bench/surrogate.py). Plain: ``train`` and ``__setattr__`` not overridden and the
    flag an instance attribute; a TorchScript module, whose flag lives in C++, is not."""
    modules = list(model.modules())
    if not all(type(module).train is nn.Module.train and type(module).__setattr__ is nn.Module.__setattr__
               and "training" in vars(module) for module in modules):
        return model.train

    def set_training(mode: bool) -> None:
        for module in modules:
            module.__dict__["training"] = mode
    return set_training


def penultimate_features(model: nn.Module, x: torch.Tensor, *, features: FeatureMap | None = None,
                         batch_size: int = 1024) -> np.ndarray:
    """Penultimate features ``(N, D)`` of ``x : (N, ...)``, float64 numpy, in evaluation mode without gradient.

    Parameters
    ----------
    model : the network; its training mode is restored afterwards.
    x : (N, ...) inputs, on the model's device.
    features : ``x -> (N, D)``; default ``model.features``, or all layers but
        the last of an ``nn.Sequential``. Feature maps of more than two
        dimensions are flattened to ``(N, D)``.
    batch_size : examples per forward pass.
    """
    extract = _feature_map(model, features)
    was_training = model.training
    set_training = _mode_setter(model)
    set_training(False)
    try:
        with torch.no_grad():
            if len(x) <= batch_size:  # a mini-batch: one forward, no slicing or concatenation
                joined = extract(x)
            else:
                joined = torch.cat([extract(x[start:start + batch_size]) for start in range(0, len(x), batch_size)])
    finally:
        set_training(was_training)
    # A copy even when the features already are float64 on the CPU, since they may be a view of x (torch.cat's
    # output is never one).
    return _host_float64(joined, len(x), copy=len(x) <= batch_size)


def _host_float64(features: torch.Tensor, rows: int, copy: bool) -> np.ndarray:
    """``features`` as ``(rows, D)`` float64 numpy on the CPU, in one conversion (higher dimensions flattened)."""
    return features.detach().reshape(rows, -1).to(device="cpu", dtype=torch.float64, copy=copy).numpy()


def _mode_dependent(module: nn.Module) -> bool:
    if isinstance(module, torch.jit.ScriptModule) or type(module).train is not nn.Module.train:
        return True  # a mode switch that cannot be inspected, or one of its own
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm, InstanceNorm: running statistics in eval
        return module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    # RNNs, nn.MultiheadAttention: a rate held as an attribute, applied in training only. Read from __dict__, so
    # that a module without one does not go through nn.Module.__getattr__ and its error (MLP check: 28 -> 10.5 us).
    dropout = vars(module).get("dropout", 0.0)
    return isinstance(dropout, float) and dropout > 0


def mode_free(model: nn.Module) -> bool:
    """Whether ``model`` computes the same function in training and evaluation mode, as far as torch's layers tell.

    False when any module normalises with running statistics (BatchNorm, InstanceNorm with
    ``track_running_stats``), drops out (a dropout layer, or an RNN or attention module with a dropout rate),
    overrides ``train``, or is TorchScript. A module of your own whose ``forward`` reads ``self.training``
    cannot be seen: do not pass its training-mode features as evaluation-mode ones.
    """
    return not any(_mode_dependent(module) for module in model.modules())


def clean_subset_features(model: nn.Module, x_meta: torch.Tensor, *, features: FeatureMap | None = None,
                          batch_size: int = 1024) -> np.ndarray:
    """The clean subset's penultimate features ``(m, D)``: compute them once per epoch (docs/theory.md section 6).

    The reference code recomputes them before every epoch and compares every
    mini-batch of that epoch with them. Same arguments as :func:`penultimate_features`.
    """
    return penultimate_features(model, x_meta, features=features, batch_size=batch_size)


def _numpy_labels(labels) -> np.ndarray:
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def surrogate_batch_weights(model: nn.Module, x: torch.Tensor, y, meta_features: np.ndarray | CleanReference,
                            meta_labels=None, *, alpha0: float, rule: str = "reference",
                            features: FeatureMap | None = None,
                            batch_features: torch.Tensor | None = None) -> torch.Tensor:
    """Surrogate weights ``(b,)`` of one mini-batch, the reference protocol (docs/theory.md section 6).

    The batch's penultimate features are computed in evaluation mode without
    gradient (:func:`penultimate_features`) and weighted by
    :func:`dynamics.surrogate.reweight` against the clean-subset features of
    this epoch (:func:`clean_subset_features`), from scratch: no memory across
    batches. Train with ``(w * per_example_loss).mean()`` (divided by the
    batch size, as the reference code does, not by the sum of the weights).

    Parameters
    ----------
    model : the network being trained.
    x : (b, ...) batch inputs; y : (b,) their observed (noisy) labels, a
        tensor or any labels :func:`~dynamics.surrogate.reweight` accepts.
    meta_features : (m, D) clean-subset features of this epoch, or, so that
        no batch recomputes the clean class means, their
        :class:`~dynamics.surrogate.CleanReference`,
        ``clean_reference(meta_labels, meta_features)`` built once per epoch
        (same weights, bit for bit).
    meta_labels : (m,) clean labels; their distinct values are the classes.
        Omitted (None) with a :class:`~dynamics.surrogate.CleanReference`.
    alpha0 : modulation, e.g. ``alpha0_schedule(epoch, C, warmup_epochs)``:
        ``1/(C-1)`` early in training, then 0.
    rule : ``"reference"`` or ``"sign"``, see :func:`dynamics.surrogate.weights_from_scores`.
    features : as in :func:`penultimate_features`.
    batch_features : (b, D) the batch's penultimate features that the
        training step's own forward has already computed (``h =
        model.features(x)``, the loss then on ``model.head(h)``), used instead
        of a second forward. Only for a network that computes the same
        function in both modes (:func:`mode_free`; refused otherwise): its
        training-mode features are then its evaluation-mode ones, and the
        weights those of the second forward (bit for bit for the toolkit's
        MLPs, tested), for the cost of the scoring alone
        (``bench/surrogate.py``).

    Returns
    -------
    w : (b,) tensor in ``[0, 1]`` on ``x``'s device, with ``x``'s floating dtype
        (the default dtype for integer inputs); no gradient flows through it.
    """
    by_reference = isinstance(meta_features, CleanReference)
    if by_reference and meta_labels is not None:
        raise ValueError("meta_labels: a CleanReference already holds the clean classes; omit meta_labels")
    if not by_reference and meta_labels is None:
        raise ValueError("meta_labels are required with (m, D) meta_features (or pass "
                         "clean_reference(meta_labels, meta_features) instead of both)")
    if batch_features is None:
        batch_features = penultimate_features(model, x, features=features, batch_size=max(len(x), 1))
    elif not mode_free(model):
        raise ValueError("batch_features: the model's training-mode features differ from its evaluation-mode "
                         "ones (BatchNorm, dropout, or a train() of its own); omit batch_features and let "
                         "the batch take its own evaluation-mode forward")
    elif len(batch_features) != len(x):
        raise ValueError(f"batch_features must hold one row per example of x ({len(x)}), got "
                         f"{tuple(batch_features.shape)}")
    else:
        batch_features = _host_float64(batch_features, len(x), copy=False)
    if by_reference:
        result = meta_features.reweight(_numpy_labels(y), batch_features, alpha0=alpha0, rule=rule)
    else:
        result = reweight(_numpy_labels(y), batch_features, _numpy_labels(meta_labels), meta_features,
                          alpha0=alpha0, rule=rule)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.as_tensor(result.weights, dtype=dtype, device=x.device)


class IndexedDataset(torch.utils.data.Dataset):
    """``dataset[i] + (i,)``: a dataset whose items also carry their index, for :class:`MetaReweighter`.

    ``dataset[i]`` must be a tuple such as ``(x, y)``; a ``DataLoader`` over
    this dataset yields ``(x, y, index)`` batches.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], index)


class MetaReweighter:
    """Exact meta-reweighting (docs/theory.md section 2) in your own mini-batch loop.

    Holds one persistent weight per training example, ``weights : (n,)``,
    starting at ``w0``. Each :meth:`step` on a mini-batch is
    :func:`dynamics.bilevel.meta_step`: the look-ahead ``theta_hat(w) = theta -
    lr * grad [(1/b) sum_i w_i l_i + clean_weight * mean_j l_j]``, the
    meta-gradient ``dL_meta/dw`` of the clean loss at ``theta_hat`` by
    automatic differentiation, the batch's weights moved to ``clip(w - beta (b
    / lr) dL_meta/dw, 0, 1)``, then one optimiser step on the weighted loss
    with the new weights. Only the batch's weights change.

    Parameters
    ----------
    num_examples : n, the size of the training set.
    loss : ``"ce"`` (cross-entropy on class indices), ``"mse"`` (``0.5 ||f -
        y||^2`` against one-hot rows of class indices, or real-valued targets)
        or a callable ``(outputs, targets) -> (N,)`` per-example losses.
    w0 : initial weight of every example, in ``[0, 1]``.
    beta : meta step size (docs/theory.md section 2, ``(beta / m) * score``).
    clean_weight : weight of the clean-subset term in the training objective
        (the theory's ``gamma``; 0 trains on the weighted noisy loss alone).
    reset : L2RW (Ren et al. 2018) instead: weights recomputed at every step
        from the meta-gradient at ``w = 0``, normalised over the batch.
    device, dtype : of :attr:`weights`.
    """

    def __init__(self, num_examples: int, *, loss: Loss = "ce", w0: float = 0.5, beta: float = 1.0,
                 clean_weight: float = 0.0, reset: bool = False, device=None, dtype: torch.dtype = torch.float32):
        if not (isinstance(loss, str) and loss in LOSSES) and not callable(loss):
            raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
        if not 0 <= w0 <= 1:
            raise ValueError(f"w0 must lie in [0, 1], got {w0}")
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.loss, self.beta, self.clean_weight, self.reset = loss, float(beta), float(clean_weight), bool(reset)
        self.weights = torch.full((int(num_examples),), float(w0), dtype=dtype, device=device)

    def step(self, model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             index: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor, *,
             lr: float | None = None) -> torch.Tensor:
        """One meta-reweighting step on the batch ``x (b, ...), y (b,)`` of examples ``index (b,)``.

        ``x_meta (b_m, ...), y_meta (b_m,)`` is a clean batch (the whole clean
        subset if it is small). ``lr`` is the look-ahead step, by default the
        optimiser's current learning rate (of its first parameter group).
        Returns the training loss of the model step (a detached scalar).
        """
        index = torch.as_tensor(index, device=self.weights.device)
        if index.shape != (len(y),):
            raise ValueError(f"index must hold one example index per batch row, shape ({len(y)},), got "
                             f"{tuple(index.shape)}")
        lr = float(optimiser.param_groups[0]["lr"]) if lr is None else float(lr)
        dtype = next(model.parameters()).dtype
        new_w, loss = meta_step(model, optimiser, x, y, self.weights[index].to(device=x.device, dtype=dtype),
                                x_meta, y_meta, lr=lr, clean_weight=self.clean_weight, beta=self.beta,
                                reset=self.reset, loss=self.loss)
        self.weights[index] = new_w.to(device=self.weights.device, dtype=self.weights.dtype)
        return loss


__all__ = ["CleanReference", "IndexedDataset", "MetaReweighter", "clean_reference", "clean_subset_features",
           "mode_free", "penultimate_features", "surrogate_batch_weights"]
