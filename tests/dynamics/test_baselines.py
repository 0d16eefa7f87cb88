"""Baselines behind one interface (THEORY.md section 7), at tiny sizes.

Oracles: finite differences of an explicitly re-implemented look-ahead for
the meta-gradient; a constructed feature geometry with a known clean set for
FINE; hand-computed detection scores.
"""

import copy
import importlib
import math

import numpy as np
import pytest
import torch
from tolerance import assert_close
from torch import nn
from torch.nn import functional as F

from dynamics.baselines import (
    METHODS,
    MethodParams,
    MethodUnavailable,
    TrainBudget,
    TrainingData,
    cnn_factory,
    detection_metrics,
    fine_clean_probability,
    meta_step,
    meta_weight_gradient,
    mlp_factory,
    surrogate_weights,
    train,
)
from dynamics.surrogate import reweight
from dynamics.problem import gaussian_mixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_BUDGET = TrainBudget(epochs=2, batch_size=32, meta_batch_size=16, warmup_epochs=1)


@pytest.fixture(scope="module")
def tiny():
    problem = gaussian_mixture(np.random.default_rng(0), n=120, m=20, p=100, num_classes=3, dim=8, noise_rate=0.4)
    return TrainingData.from_problem(problem), mlp_factory(8, 3, hidden=(32,))


def _cleanlab_installed():
    try:
        importlib.import_module("cleanlab.filter")
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_returns_weights_in_the_box(tiny, method):
    data, factory = tiny
    if method == "cleanlab" and not _cleanlab_installed():
        with pytest.raises(MethodUnavailable, match="pip install cleanlab"):
            train(method, data, factory, _BUDGET, seed=0)
        return
    result = train(method, data, factory, _BUDGET, seed=0)
    n = data.sizes[0]
    assert result.weights.shape == (n,)
    assert np.all((result.weights >= 0) & (result.weights <= 1))
    assert 0 <= result.test_accuracy <= 1
    assert result.wall_time_per_epoch > 0
    assert all(len(values) == _BUDGET.epochs for values in result.history.values())
    metrics = detection_metrics(result.weights, data.noisy)
    for key in ("precision", "recall", "f1", "auc", "noisy_mass"):
        assert 0 <= metrics[key] <= 1 or math.isnan(metrics[key]), (key, metrics[key])
    if result.score is not None:
        assert result.score.shape == (n,) and np.all(np.isfinite(result.score))
    assert result.config["seed"] == 0 and result.config["method"] == method


def test_oracle_detects_perfectly_and_erm_keeps_everything(tiny):
    data, factory = tiny
    oracle = detection_metrics(train("oracle", data, factory, _BUDGET, 0).weights, data.noisy)
    assert oracle["precision"] == 1 and oracle["recall"] == 1 and oracle["noisy_mass"] == 0 and oracle["auc"] == 1
    erm = train("erm", data, factory, _BUDGET, 0)
    assert np.all(erm.weights == 1)
    metrics = detection_metrics(erm.weights, data.noisy)
    assert metrics["auc"] == 0.5 and metrics["recall"] == 1
    assert_close(metrics["noisy_mass"], data.noise_rate)


def test_same_seed_same_run_and_no_global_rng(tiny):
    data, factory = tiny
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = train("small-loss", data, factory, _BUDGET, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # library code never touches the global generator
    second = train("small-loss", data, factory, _BUDGET, seed=5)
    assert np.array_equal(first.weights, second.weights)
    assert first.test_accuracy == second.test_accuracy
    assert first.history["train_loss"] == second.history["train_loss"]


def test_unknown_method_and_bad_budget_are_value_errors(tiny):
    data, factory = tiny
    with pytest.raises(ValueError, match="method must be one of"):
        train("mixup", data, factory, _BUDGET, 0)
    with pytest.raises(ValueError, match="epochs"):
        TrainBudget(epochs=0)
    with pytest.raises(ValueError, match="w0"):
        MethodParams(w0=2.0)


def test_cleanlab_is_skipped_with_a_clear_message_when_absent(tiny, monkeypatch):
    data, factory = tiny
    real_import = importlib.import_module

    def no_cleanlab(name, *args, **kwargs):
        if name.startswith("cleanlab"):
            raise ImportError("No module named 'cleanlab'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_cleanlab)
    with pytest.raises(MethodUnavailable, match="optional package cleanlab"):
        train("cleanlab", data, factory, _BUDGET, 0)


# ----------------------------------------------------------------------------- the exact meta-gradient


class _TinyConvBN(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear: exercises the buffers path of the look-ahead."""

    def __init__(self, generator):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
        self.bn = nn.BatchNorm2d(3, dtype=torch.float64)
        self.head = nn.Linear(3, 3, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.head(h.mean(dim=(2, 3)))


def _meta_loss_by_explicit_step(model, x, y, w, x_meta, y_meta, lr, clean_weight):
    """L_meta(w) by an ordinary SGD step on a copy of the network: independent of torch.func."""
    copy_ = copy.deepcopy(model)
    losses = F.cross_entropy(copy_(x), y, reduction="none")
    loss = (w * losses).sum() / len(y) + clean_weight * F.cross_entropy(copy_(x_meta), y_meta)
    grads = torch.autograd.grad(loss, list(copy_.parameters()))
    with torch.no_grad():
        for p, g in zip(copy_.parameters(), grads):
            p -= lr * g
        return float(F.cross_entropy(copy_(x_meta), y_meta))


@pytest.mark.parametrize("architecture", ["mlp", "conv-batchnorm"])
@pytest.mark.parametrize("clean_weight", [0.0, 0.7])
def test_meta_gradient_equals_finite_differences_of_the_meta_objective(architecture, clean_weight):
    generator = torch.Generator().manual_seed(3)
    b, m = 6, 5
    if architecture == "mlp":
        model = mlp_factory(4, 3, hidden=(7, 5), dtype=torch.float64)(generator)
        x = torch.randn(b, 4, generator=generator, dtype=torch.float64)
        x_meta = torch.randn(m, 4, generator=generator, dtype=torch.float64)
    else:
        model = _TinyConvBN(generator)
        x = torch.randn(b, 2, 5, 5, generator=generator, dtype=torch.float64)
        x_meta = torch.randn(m, 2, 5, 5, generator=generator, dtype=torch.float64)
    model.train()
    y = torch.randint(0, 3, (b,), generator=generator)
    y_meta = torch.randint(0, 3, (m,), generator=generator)
    w = torch.rand(b, generator=generator, dtype=torch.float64)
    lr = 0.3
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}

    grad_w, meta_loss = meta_weight_gradient(model, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight)

    for k, v in model.named_buffers():
        assert torch.equal(v, buffers_before[k]), f"meta_weight_gradient moved buffer {k}"
    assert_close(meta_loss, _meta_loss_by_explicit_step(model, x, y, w, x_meta, y_meta, lr, clean_weight))
    h = 1e-5
    finite_differences = []
    for i in range(b):
        step = torch.zeros(b, dtype=torch.float64)
        step[i] = h
        plus = _meta_loss_by_explicit_step(model, x, y, w + step, x_meta, y_meta, lr, clean_weight)
        minus = _meta_loss_by_explicit_step(model, x, y, w - step, x_meta, y_meta, lr, clean_weight)
        finite_differences.append((plus - minus) / (2 * h))
    # Central differences carry an O(h^2) truncation error and O(eps / h) rounding: ~1e-9 absolute here.
    assert_close(grad_w.numpy(), np.array(finite_differences), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reset", [False, True])
def test_meta_step_moves_weights_by_the_meta_gradient_then_the_model(reset):
    generator = torch.Generator().manual_seed(4)
    model = _TinyConvBN(generator).train()
    x = torch.randn(8, 2, 5, 5, generator=generator, dtype=torch.float64)
    x_meta = torch.randn(4, 2, 5, 5, generator=generator, dtype=torch.float64)
    y, y_meta = torch.randint(0, 3, (8,), generator=generator), torch.arange(4) % 3
    w = torch.zeros(8, dtype=torch.float64) if reset else torch.rand(8, generator=generator, dtype=torch.float64)
    lr, beta = 0.2, 0.3
    grad_w, _ = meta_weight_gradient(model, x, y, w, x_meta, y_meta, lr=lr, clean_weight=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    new_w, _ = meta_step(model, optimiser, x, y, w, x_meta, y_meta, lr=lr, clean_weight=0.5, beta=beta, reset=reset)
    if reset:
        expected = (-grad_w).clamp_min(0)
        expected = expected / expected.sum()
    else:
        expected = (w - beta * 8 / lr * grad_w).clamp(0, 1)
    assert_close(new_w.numpy(), expected.numpy())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert model.bn.num_batches_tracked.item() == 2  # the training and clean forward passes at theta, once each


def test_surrogate_weights_are_reweight_on_the_penultimate_features(tiny):
    data, factory = tiny
    model = factory(torch.Generator().manual_seed(0))
    result = surrogate_weights(model, data.X, data.y_noisy, data.X_meta, data.y_meta, 3, alpha0=0.5)
    with torch.no_grad():
        features = model.features(data.X).double().numpy()
        meta_features = model.features(data.X_meta).double().numpy()
    expected = reweight(data.y_noisy.numpy(), features, data.y_meta.numpy(), meta_features, num_classes=3, alpha0=0.5)
    # float32 features: the two routes batch the forward pass differently.
    assert_close(result.weights, expected.weights, rtol=1e-5, atol=1e-6)


def test_meta_training_runs_on_a_batchnorm_cnn():
    generator = np.random.default_rng(1)
    images = generator.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 3

    class Images:  # the fields TrainingData.from_images reads from a dynamics.cifar.ImageProblem
        pass

    problem = Images()
    problem.images, problem.y_noisy, problem.y_true = images[:24], labels[:24], labels[:24].copy()
    problem.y_noisy[:6] = (problem.y_noisy[:6] + 1) % 3
    problem.meta_images, problem.y_meta = images[24:32], labels[24:32]
    problem.test_images, problem.y_test = images[32:], labels[32:]
    problem.num_classes, problem.name = 3, "tiny images"
    data = TrainingData.from_images(problem)
    budget = TrainBudget(epochs=1, batch_size=8, meta_batch_size=4)
    result = train("meta", data, cnn_factory(3, width=0.125), budget, seed=0)
    assert np.all((result.weights >= 0) & (result.weights <= 1))
    assert result.weights.shape == (24,)


# ----------------------------------------------------------------------------- FINE and metrics


def test_fine_separates_examples_aligned_with_their_class_direction():
    rng = np.random.default_rng(0)
    C, per_class, D = 3, 60, 6
    labels = np.repeat(np.arange(C), per_class)
    true = labels.copy()
    flipped = rng.random(len(labels)) < 0.3
    true[flipped] = (labels[flipped] + 1) % C
    # Each example lies along the direction of its TRUE class: those whose label disagrees are misaligned.
    features = np.eye(D)[true] * 3 + 0.3 * rng.standard_normal((len(labels), D))
    probability = fine_clean_probability(features, labels, C, np.random.default_rng(1))
    assert probability.shape == labels.shape
    assert np.all((probability >= 0) & (probability <= 1))
    keep = probability > 0.5
    assert np.array_equal(keep, ~flipped)


def test_detection_metrics_by_hand():
    weights = np.array([1.0, 0.5, 0.0, 0.25, 0.0])
    noisy = np.array([False, False, False, True, True])
    metrics = detection_metrics(weights, noisy)
    # {w > 0} = {0, 1, 3}: 2 of 3 kept are clean, 2 of 3 clean kept.
    assert_close(metrics["precision"], 2 / 3)
    assert_close(metrics["recall"], 2 / 3)
    assert_close(metrics["f1"], 2 / 3)
    assert_close(metrics["noisy_mass"], 0.25 / 1.75)
    # Pairs (clean, noisy): (1, .25) (1, 0) (.5, .25) (.5, 0) (0, .25) (0, 0)=tie -> (5 + 0.5 - 1) / 6.
    assert_close(metrics["auc"], 4.5 / 6)
