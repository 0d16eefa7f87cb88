"""The one training loop: any registered method, end to end, on the same budget (docs/theory.md section 7).

Every method trains the same network (one factory, one seed) with the same
optimiser, learning-rate schedule, batches, epochs and clean subset, and
returns the same :class:`~dynamics.methods.base.MethodResult`. The loop
knows no method by name: it drives the hooks of
:class:`~dynamics.methods.base.Method`.

Before every epoch, a method with clean training (``Method.clean_training``)
makes the budget's ``clean_passes`` passes over the clean subset; after
every epoch the loop records the clean-subset loss, and the epoch where it is
lowest gives the best-epoch test accuracy (docs/theory.md section 7: chosen
without the test set).

Randomness: all of it comes from ``seed`` through explicit generators,
spawned from ``numpy.random.SeedSequence(seed)`` in a fixed order (initial
network, batch order and clean batches, augmentation, the method's own
draws, the clean passes, further networks), so two methods with the same
seed see the same initial network and the same batches whether or not they
make clean passes, and global random state is never used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from dynamics.methods import REGISTRY
from dynamics.methods.base import (
    Batch,
    Context,
    Method,
    MethodResult,
    TrainBudget,
    TrainingData,
    TrainingDiverged,
    accuracy,
    detection_metrics,
    predict,
)
from dynamics.methods.networks import NetworkFactory

_HISTORY = ("train_loss", "clean_loss", "test_accuracy", "epoch_time", "precision", "recall", "f1", "auc", "noisy_mass",
            "mean_w_clean", "mean_w_noisy")


def train(method: str | Method, data: TrainingData, network_factory: NetworkFactory, budget: TrainBudget,
          seed: int, params=None, *, progress: Callable[[int, dict], None] | None = None) -> MethodResult:
    """Train one method end to end and score its weights (docs/theory.md section 7).

    Parameters
    ----------
    method : a name of :data:`dynamics.methods.METHODS`, or a :class:`Method` instance.
    data : the problem as tensors (inputs ``X : (n, ...)``, clean subset ``(m, ...)``, test ``(p, ...)``).
    network_factory : ``generator -> nn.Module`` mapping inputs to ``(N, C)``
        logits and exposing ``features(x) -> (N, D)`` (penultimate layer);
        parameters on the generator's device. Called once per network of the method.
    budget : optimiser, schedule, batches and epochs shared by every method.
    seed : the source of every random draw (initialisation, batches, augmentation, the method's own).
    params : the named method's ``Params`` (default: its defaults); None when ``method`` is an instance.
    progress : called as ``progress(epoch, history_row)`` after each epoch.

    Returns
    -------
    MethodResult

    Raises
    ------
    ValueError
        An unknown method name.
    TypeError
        ``params`` of another method's type, or given beside a method instance.
    MethodUnavailable
        A method whose optional package is missing (``cleanlab``).
    TrainingDiverged
        The training loss stopped being finite.
    """
    method = _method(method, params).resolve(data, budget)
    device = torch.device(budget.device)
    data = data.to(device)
    n, m, p = data.sizes
    noisy = data.noisy
    init_seed, batch_seed, augment_seed, method_seed, clean_seed, *more_network_seeds = \
        np.random.SeedSequence(int(seed)).spawn(4 + method.num_networks)
    batches = _Batches(data, budget, np.random.default_rng(batch_seed), _torch_generator(augment_seed, device))
    clean_passes = _CleanPasses(data, budget, method.clean_passes(budget), clean_seed)

    with _PeakMemory(device) as peak_memory:
        networks = tuple(network_factory(_torch_generator(sequence, device))
                         for sequence in (init_seed, *more_network_seeds))
        for net in networks:
            net.to(device).train()
        optimisers = tuple(torch.optim.SGD(net.parameters(), lr=budget.lr, momentum=budget.momentum,
                                           weight_decay=budget.weight_decay) for net in networks)
        context = Context(data, budget, networks, optimisers, np.random.default_rng(method_seed),
                          budget.gamma * m / n if method.clean_training else 0.0)
        state = method.init(context)
        history = {key: [] for key in _HISTORY}
        epoch_weights = []
        best_clean_loss, best_network = math.inf, None
        for epoch in range(budget.epochs):
            started = time.perf_counter()
            clean_passes.run(networks, optimisers, batches.lr_at(batches.step))
            state = method.on_epoch(state, epoch, context)
            loss_sum = 0.0
            for batch in batches.epoch(epoch):
                _set_lr(optimisers, batch.lr)
                state, loss = method.batch_step(state, batch, context)
                loss = float(loss)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"method {method.name!r} diverged in epoch {epoch + 1} of {budget.epochs} (training loss "
                        f"{loss}): lower the learning rate (lr={budget.lr:g})")
                loss_sum += loss * len(batch.index)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started

            weights = state.weights.detach().cpu().numpy()
            epoch_weights.append(weights.astype(np.float32))
            evaluate = epoch == budget.epochs - 1 or (budget.eval_every > 0 and (epoch + 1) % budget.eval_every == 0)
            clean_loss = _mean_loss(networks[0], data.X_meta, data.y_meta, budget.eval_batch_size)
            if clean_loss < best_clean_loss:
                best_clean_loss = clean_loss
                if method.restore_best_clean_epoch:
                    best_network = copy.deepcopy(networks[0].state_dict())
            row = {"train_loss": loss_sum / n / len(networks), "clean_loss": clean_loss,
                   "test_accuracy": (accuracy(networks[0], data.X_test, data.y_test, budget.eval_batch_size)
                                     if evaluate else math.nan),
                   "epoch_time": elapsed, **detection_metrics(weights, noisy)}
            for key in history:
                history[key].append(row[key])
            if progress is not None:
                progress(epoch, row)

    best_epoch = int(np.argmin(history["clean_loss"]))
    test_accuracy = history["test_accuracy"][-1]
    if best_network is not None:
        networks[0].load_state_dict(best_network)
        test_accuracy = accuracy(networks[0], data.X_test, data.y_test, budget.eval_batch_size)
    score = method.clean_score(state)
    config = {
        "method": method.name, "seed": int(seed), "budget": dataclasses.asdict(budget),
        "params": dataclasses.asdict(method.params), "network": type(networks[0]).__name__, "data": data.name,
        "n": n, "m": m, "p": p, "num_classes": data.num_classes, "realised_noise_rate": data.noise_rate,
        "parameters": sum(parameter.numel() for parameter in networks[0].parameters()),
    }
    return MethodResult(
        method=method.name, weights=state.weights.detach().double().cpu().numpy(),
        score=None if score is None else np.asarray(score, dtype=np.float64), epoch_weights=np.stack(epoch_weights),
        test_accuracy=test_accuracy, best_epoch=best_epoch, best_epoch_accuracy=history["test_accuracy"][best_epoch],
        wall_time_per_epoch=float(np.mean(history["epoch_time"])),
        peak_memory_mb=peak_memory.mib, history=history, config=config)


class _Batches:
    """Every epoch's batches, drawn from the run's own generators, whatever the method.

    Training batches of ``b`` examples in a fresh random order each epoch (the
    last one shorter); clean batches of ``b_m`` taken in turn from a random
    order of the clean subset, redrawn when too few remain; both augmented
    when the budget and the data allow; the learning rate of each step
    follows a cosine from ``lr`` to 0 over all steps, or the budget's step
    schedule (x0.1 at each milestone epoch).
    """

    def __init__(self, data: TrainingData, budget: TrainBudget, rng: np.random.Generator,
                 augment_generator: torch.Generator):
        n, m, _ = data.sizes
        self.data, self.rng, self.augment_generator = data, rng, augment_generator
        self.augment = data.augment if budget.augment else None
        self.lr, self.milestones = budget.lr, budget.milestones
        self.b, self.b_m = min(budget.batch_size, n), min(budget.meta_batch_size, m)
        self.steps_per_epoch = math.ceil(n / self.b)
        self.total_steps = budget.epochs * self.steps_per_epoch
        self.step = 0
        self.meta_order, self.meta_position = rng.permutation(m), 0

    def epoch(self, epoch: int) -> Iterator[Batch]:
        data, device = self.data, self.data.X.device
        n, m, _ = data.sizes
        order = torch.as_tensor(self.rng.permutation(n), device=device)
        for start in range(0, n, self.b):
            index = order[start:start + self.b]
            if self.meta_position + self.b_m > m:
                self.meta_order, self.meta_position = self.rng.permutation(m), 0
            meta_index = torch.as_tensor(self.meta_order[self.meta_position:self.meta_position + self.b_m],
                                         device=device)
            self.meta_position += self.b_m
            x, x_meta = data.X[index], data.X_meta[meta_index]
            if self.augment is not None:
                x, x_meta = self.augment(x, self.augment_generator), self.augment(x_meta, self.augment_generator)
            lr = self.lr_at(self.step)
            self.step += 1
            yield Batch(epoch, index, x, data.y_noisy[index], x_meta, data.y_meta[meta_index], lr)


    def lr_at(self, step: int) -> float:
        """The learning rate of training step ``step`` (0-based, over all epochs)."""
        if self.milestones:
            epoch = step // self.steps_per_epoch
            return self.lr * 0.1 ** sum(epoch >= milestone for milestone in self.milestones)
        return 0.5 * self.lr * (1 + math.cos(math.pi * step / self.total_steps))


class _CleanPasses:
    """``passes`` passes over the clean subset, each in a fresh random order in batches of the budget's
    ``batch_size`` (augmented when the budget and the data allow): one plain cross-entropy step of every
    network per batch. Its own generators, so that the training batches do not depend on it."""

    def __init__(self, data: TrainingData, budget: TrainBudget, passes: int, sequence: np.random.SeedSequence):
        order_seed, augment_seed = sequence.spawn(2)
        self.data, self.passes = data, passes
        self.b = min(budget.batch_size, data.sizes[1])
        self.rng = np.random.default_rng(order_seed)
        self.augment = data.augment if budget.augment else None
        self.augment_generator = _torch_generator(augment_seed, data.X.device)

    def run(self, networks, optimisers, lr: float) -> None:
        if self.passes == 0:
            return
        _set_lr(optimisers, lr)
        m = self.data.sizes[1]
        for _ in range(self.passes):
            order = torch.as_tensor(self.rng.permutation(m), device=self.data.X.device)
            for start in range(0, m, self.b):
                index = order[start:start + self.b]
                x, y = self.data.X_meta[index], self.data.y_meta[index]
                if self.augment is not None:
                    x = self.augment(x, self.augment_generator)
                for optimiser in optimisers:
                    optimiser.zero_grad(set_to_none=True)
                sum(F.cross_entropy(net(x), y) for net in networks).backward()
                for optimiser in optimisers:
                    optimiser.step()


def _set_lr(optimisers, lr: float) -> None:
    for optimiser in optimisers:
        for group in optimiser.param_groups:
            group["lr"] = lr


def _mean_loss(model, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean cross-entropy of ``model`` on ``(X, y)``, in evaluation mode."""
    return float(F.cross_entropy(predict(model, X, batch_size), y))


def _torch_generator(sequence: np.random.SeedSequence, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))


def _method(method: str | Method, params) -> Method:
    if isinstance(method, Method):
        if params is not None:
            raise TypeError("params go into the method instance; pass params=None with one")
        return method
    if method not in REGISTRY:
        raise ValueError(f"method must be one of {tuple(REGISTRY)}, got {method!r}")
    return REGISTRY[method](params)


def limit_threads(threads: int) -> None:
    """Use ``threads`` torch intra-op threads, and as many BLAS threads in numpy / scikit-learn, in this process.

    On a shared machine spare threads spin instead of working: one per run is
    often fastest.
    """
    torch.set_num_threads(int(threads))
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))


class _PeakMemory:
    """``with _PeakMemory(device) as peak:``; afterwards ``peak.mib`` is the peak memory above the start, MiB.

    CUDA: allocated device memory. CPU: the resident set size, sampled every
    20 ms by a thread (NaN where ``/proc`` is missing).
    """

    def __init__(self, device: torch.device):
        self.device, self.mib = device, math.nan

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            self.page, self.statm = os.sysconf("SC_PAGE_SIZE"), open("/proc/self/statm")
        except (OSError, ValueError, AttributeError):
            self.statm = None
            return self
        self.start = self.peak = self._rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        self.statm.seek(0)
        return int(self.statm.read().split()[1]) * self.page

    def _sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2 ** 20
        elif self.statm is not None:
            self.done.set()
            self.thread.join()
            self.mib = (max(self.peak, self._rss()) - self.start) / 2 ** 20
            self.statm.close()


__all__ = ["limit_threads", "train"]
