"""Methods as plug-ins (docs/theory.md section 7): the contract every registered method passes, then each method.

The contract (after scikit-learn's ``parametrize_with_checks``) runs every
method of the registry on a tiny problem. The behaviour tests use oracles
that share no code with the methods: a plain SGD step on a copy of each
network for Co-teaching's cross update, hand tables for the forget-rate ramp,
order statistics for the small-loss mask, finite differences of the
look-ahead for L2RW, a constructed feature geometry for FINE.
"""

import ast
import copy
import dataclasses
import importlib
import math
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tolerance import assert_close
from torch.nn import functional as F

import dynamics.methods.loop
from dynamics.methods import (
    ERM,
    L2RW,
    SURROGATE_ABLATIONS,
    METHODS,
    REGISTRY,
    Batch,
    CoTeaching,
    Context,
    Method,
    MetaParams,
    MethodUnavailable,
    SmallLossParams,
    Surrogate,
    SurrogateParams,
    TrainBudget,
    TrainingData,
    TrainingDiverged,
    cnn_factory,
    detection_metrics,
    LinearHead,
    fine_clean_probability,
    mlp_factory,
    set_batch_weights,
    surrogate_weights,
    train,
)
from dynamics.methods.small_loss import forget_rate_schedule, small_loss_mask
from dynamics.problem import gaussian_mixture
from dynamics.surrogate import reweight

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two epochs with a one-epoch warm-up: every method's per-epoch reweighting and ramp takes effect in the second; one
# clean pass before each epoch (for the methods with clean training) must leave the training batches alone.
_BUDGET = TrainBudget(epochs=2, batch_size=20, meta_batch_size=8, warmup_epochs=1, clean_passes=1)


@pytest.fixture(scope="module")
def tiny():
    problem = gaussian_mixture(np.random.default_rng(0), n=60, m=12, p=40, num_classes=3, dim=6, noise_rate=0.4)
    return TrainingData.from_problem(problem), mlp_factory(6, 3, hidden=(16,))


class _Recording(Method):
    """Every hook delegated to ``inner``; records what the loop hands over (batches, initial network)."""

    def __init__(self, inner: Method):
        self.inner, self.params = inner, inner.params
        self.name, self.num_networks = inner.name, inner.num_networks
        self.clean_training, self.restore_best_clean_epoch = inner.clean_training, inner.restore_best_clean_epoch
        self.batches, self.initial_network = [], None

    def clean_passes(self, budget):
        return self.inner.clean_passes(budget)

    def resolve(self, data, budget):
        self.inner = self.inner.resolve(data, budget)
        self.params = self.inner.params
        return self

    def init(self, context):
        self.initial_network = copy.deepcopy(context.networks[0].state_dict())
        return self.inner.init(context)

    def on_epoch(self, state, epoch, context):
        return self.inner.on_epoch(state, epoch, context)

    def batch_step(self, state, batch, context):
        self.batches.append((batch.epoch, batch.index.clone(), batch.x_meta.clone(), batch.lr))
        return self.inner.batch_step(state, batch, context)

    def clean_score(self, state):
        return self.inner.clean_score(state)


def _available(name):
    try:
        return REGISTRY[name]()
    except MethodUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def erm_run(tiny):
    data, factory = tiny
    recording = _Recording(REGISTRY["erm"]())
    return recording, train(recording, data, factory, _BUDGET, seed=3)


def _global_rng_state():
    return torch.random.get_rng_state().clone(), np.random.get_state()


def check_contract(make_method, data, factory, reference: _Recording):
    """Weights in [0, 1] of shape (n,), recorded every epoch, reproducible from the seed, no global RNG.

    Also: the same initial network and batches as ``reference`` (another method's run with this seed).
    """
    n = data.sizes[0]
    recording = _Recording(make_method())
    torch_state, numpy_state = _global_rng_state()
    first = train(recording, data, factory, _BUDGET, seed=3)
    assert torch.equal(torch.random.get_rng_state(), torch_state), "the method drew from torch's global generator"
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:], \
        "the method drew from numpy's global generator"

    name = recording.name
    assert first.method == name and first.config["method"] == name and first.config["seed"] == 3
    assert first.weights.shape == (n,) and first.weights.dtype == np.float64
    assert np.all((first.weights >= 0) & (first.weights <= 1)), "weights outside [0, 1]"
    assert first.epoch_weights.shape == (_BUDGET.epochs, n)
    assert np.all((first.epoch_weights >= 0) & (first.epoch_weights <= 1)), "weights outside [0, 1]"
    assert np.array_equal(first.epoch_weights[-1], first.weights.astype(np.float32))
    assert all(len(values) == _BUDGET.epochs for values in first.history.values())
    assert 0 <= first.test_accuracy <= 1 and first.wall_time_per_epoch > 0
    for key, value in detection_metrics(first.weights, data.noisy).items():
        assert 0 <= value <= 1 or math.isnan(value), (key, value)
    if first.score is not None:
        assert first.score.shape == (n,) and np.all(np.isfinite(first.score))

    # Reproducible from the seed, bit for bit (and the recording wrapper changes nothing).
    second = train(make_method(), data, factory, _BUDGET, seed=3)
    assert np.array_equal(first.weights, second.weights)
    assert np.array_equal(first.epoch_weights, second.epoch_weights)
    assert (first.score is None and second.score is None) or np.array_equal(first.score, second.score)
    assert first.test_accuracy == second.test_accuracy
    for key in first.history:
        if key != "epoch_time":
            assert np.array_equal(first.history[key], second.history[key], equal_nan=True), key
    assert first.config == second.config

    assert all(torch.equal(value, reference.initial_network[key]) for key, value in recording.initial_network.items())
    assert len(recording.batches) == len(reference.batches)
    for (epoch, index, x_meta, lr), (epoch_r, index_r, x_meta_r, lr_r) in zip(recording.batches, reference.batches):
        assert epoch == epoch_r and torch.equal(index, index_r) and torch.equal(x_meta, x_meta_r) and lr == lr_r


@pytest.mark.parametrize("name", METHODS)
def test_contract(tiny, erm_run, name):
    data, factory = tiny
    _available(name)
    check_contract(REGISTRY[name], data, factory, erm_run[0])


class _GlobalDraw(ERM):
    name = "global-draw"

    def on_epoch(self, state, epoch, context):
        keep = torch.rand(len(state.weights)) > 0.1  # the anti-pattern: torch's global generator
        return dataclasses.replace(state, weights=keep.to(state.weights.dtype))


class _OutOfBox(ERM):
    name = "out-of-box"

    def batch_weights(self, state, batch, losses):
        state, weights = super().batch_weights(state, batch, losses)
        return set_batch_weights(state, batch, 2 * weights[0]), weights


@pytest.mark.parametrize("method, message", [(_GlobalDraw, "global generator"), (_OutOfBox, "outside")])
def test_the_contract_catches_a_planted_violation(tiny, erm_run, method, message):
    data, factory = tiny
    with pytest.raises(AssertionError, match=message):
        check_contract(method, data, factory, erm_run[0])


def test_the_loop_names_no_method():
    """The loop drives hooks only: no method name appears in its source."""
    source = open(dynamics.methods.loop.__file__).read()
    strings = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)}
    assert not strings & set(METHODS)


def test_oracle_detects_perfectly_and_erm_keeps_everything(tiny, erm_run):
    data, factory = tiny
    oracle = detection_metrics(train("oracle", data, factory, _BUDGET, 0).weights, data.noisy)
    assert oracle["precision"] == 1 and oracle["recall"] == 1 and oracle["noisy_mass"] == 0 and oracle["auc"] == 1
    _, erm = erm_run
    assert np.all(erm.epoch_weights == 1)
    metrics = detection_metrics(erm.weights, data.noisy)
    assert metrics["auc"] == 0.5 and metrics["recall"] == 1
    assert_close(metrics["noisy_mass"], data.noise_rate)


def test_bad_method_params_or_budget(tiny):
    data, factory = tiny
    with pytest.raises(ValueError, match="method must be one of"):
        train("mixup", data, factory, _BUDGET, 0)
    with pytest.raises(TypeError, match="MetaParams"):
        train("meta", data, factory, _BUDGET, 0, params=SmallLossParams())
    with pytest.raises(ValueError, match="epochs"):
        TrainBudget(epochs=0)
    with pytest.raises(ValueError, match="device"):
        TrainBudget(device="no-such-device")
    with pytest.raises(ValueError, match="w0"):
        MetaParams(w0=2.0)
    with pytest.raises(ValueError, match="forget_rate"):
        SmallLossParams(forget_rate=1.0)


def test_divergence_stops_the_run_naming_method_epoch_and_remedy(tiny):
    data, factory = tiny
    with pytest.raises(TrainingDiverged, match=r"method 'erm' diverged in epoch \d+ of 2 .*lower the learning rate"):
        train("erm", data, factory, TrainBudget(epochs=2, batch_size=20, meta_batch_size=8, lr=1e9), 0)


def test_cleanlab_is_skipped_with_a_clear_message_when_absent(tiny, monkeypatch):
    data, factory = tiny
    real_import = importlib.import_module

    def no_cleanlab(name, *args, **kwargs):
        if name.startswith("cleanlab"):
            raise ImportError("No module named 'cleanlab'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_cleanlab)
    with pytest.raises(MethodUnavailable, match="optional package cleanlab.*pip install cleanlab"):
        train("cleanlab", data, factory, _BUDGET, 0)


def test_cleanlab_zeroes_exactly_the_flagged_examples_after_the_warm_up(tiny, monkeypatch):
    """With a stand-in ``cleanlab.filter``: the reference's plumbing, whether or not cleanlab is installed."""
    data, factory = tiny
    flagged = []

    def find_label_issues(labels, pred_probs, n_jobs=None):
        assert n_jobs == 1  # cleanlab's default pool cannot start inside the comparison's daemonic workers
        assert pred_probs.shape == (len(labels), data.num_classes)
        assert_close(pred_probs.sum(axis=1), np.ones(len(labels)))
        flagged.append(pred_probs.argmax(axis=1) != labels)
        return flagged[-1]

    package = types.ModuleType("cleanlab")
    package.filter = types.SimpleNamespace(find_label_issues=find_label_issues)
    monkeypatch.setitem(sys.modules, "cleanlab", package)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", package.filter)
    result = train("cleanlab", data, factory, _BUDGET, 0)
    assert len(flagged) == _BUDGET.epochs - _BUDGET.warmup_epochs
    assert np.all(result.epoch_weights[0] == 1)  # the warm-up epoch is ERM
    assert np.array_equal(result.weights, (~flagged[-1]).astype(np.float64))
    assert 0 < flagged[-1].sum() < len(flagged[-1])


# ----------------------------------------------------------------------------- small-loss and Co-teaching


@pytest.mark.parametrize("warmup, expected", [
    (4, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]),  # linear from 0 to p over T_k epochs, then p
    (1, [0.0, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]),
    (0, [0.4] * 7),  # no ramp
])
def test_forget_rate_ramps_linearly_to_p_over_the_warm_up(warmup, expected):
    assert_close([forget_rate_schedule(epoch, 0.4, warmup) for epoch in range(7)], expected)


@given(losses=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40, unique=True),
       forget_rate=st.floats(0, 0.99))
def test_small_loss_mask_keeps_the_smallest_losses(losses, forget_rate):
    mask = small_loss_mask(torch.tensor(losses, dtype=torch.float64), forget_rate).numpy()
    losses = np.array(losses)
    kept = mask == 1
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # The nearest whole number of examples to the kept fraction (1 - R) b, at least one.
    assert kept.sum() >= 1 and (abs(kept.sum() - (1 - forget_rate) * len(losses)) <= 0.5 or kept.sum() == 1)
    if not kept.all():
        assert losses[kept].max() < losses[~kept].min()


def test_coteaching_trains_each_network_on_the_other_networks_small_loss_picks():
    generator = torch.Generator().manual_seed(1)
    b, forget_rate, lr, clean_weight = 12, 0.25, 0.1, 0.3
    x, x_meta = (torch.randn(size, 5, generator=generator, dtype=torch.float64) for size in (b, 6))
    y, y_meta = torch.randint(0, 3, (b,), generator=generator), torch.arange(6) % 3
    factory = mlp_factory(5, 3, hidden=(8,), dtype=torch.float64)
    networks = (factory(generator), factory(generator))
    before = copy.deepcopy(networks)
    budget = TrainBudget(warmup_epochs=0, momentum=0.9, weight_decay=5e-4)

    def sgd(network):
        return torch.optim.SGD(network.parameters(), lr=lr, momentum=budget.momentum, weight_decay=budget.weight_decay)

    data = TrainingData(x, y, y, x_meta, y_meta, x_meta, y_meta, 3)
    context = Context(data, budget, networks, tuple(sgd(net) for net in networks), np.random.default_rng(0),
                      clean_weight)
    method = CoTeaching(SmallLossParams(forget_rate=forget_rate))
    state = method.on_epoch(method.init(context), 0, context)
    state, _ = method.batch_step(state, Batch(0, torch.arange(b), x, y, x_meta, y_meta, lr), context)

    keep = b - round(forget_rate * b)
    picks = []
    for network in before:
        with torch.no_grad():
            losses = F.cross_entropy(network(x), y, reduction="none").numpy()
        picks.append(np.sort(np.argsort(losses)[:keep]))
    assert not np.array_equal(picks[0], picks[1]), "a case where the two networks pick differently"
    for network, trained, other_picks in zip(before, networks, picks[::-1]):
        reference = copy.deepcopy(network)
        optimiser = sgd(reference)
        loss = F.cross_entropy(reference(x[other_picks]), y[other_picks]) \
            + clean_weight * F.cross_entropy(reference(x_meta), y_meta)
        loss.backward()
        optimiser.step()
        for value, expected in zip(trained.parameters(), reference.parameters()):
            assert_close(value.detach().numpy(), expected.detach().numpy())
    reported = np.zeros(b)
    for chosen in picks:
        reported[chosen] += 0.5
    assert_close(state.weights.numpy(), reported)


# ----------------------------------------------------------------------------- L2RW


def test_l2rw_records_each_batchs_normalised_positive_meta_gradient_over_its_maximum():
    """The training weights sum to 1 over the batch (or are all 0); the recorded ones are scaled to a maximum of 1."""
    generator = torch.Generator().manual_seed(2)
    b, lr, clean_weight = 8, 0.2, 0.5
    x, x_meta = (torch.randn(size, 4, generator=generator, dtype=torch.float64) for size in (b, 5))
    y, y_meta = torch.randint(0, 3, (b,), generator=generator), torch.arange(5) % 3
    network = mlp_factory(4, 3, hidden=(6,), dtype=torch.float64)(generator)
    before = copy.deepcopy(network)
    data = TrainingData(x, y, y, x_meta, y_meta, x_meta, y_meta, 3)
    context = Context(data, TrainBudget(), (network,), (torch.optim.SGD(network.parameters(), lr=lr),),
                      np.random.default_rng(0), clean_weight)
    method = L2RW()
    state, _ = method.batch_step(method.init(context), Batch(0, torch.arange(b), x, y, x_meta, y_meta, lr), context)

    def meta_loss(w):  # one explicit SGD step on a copy, then the clean loss
        copy_ = copy.deepcopy(before)
        loss = (w * F.cross_entropy(copy_(x), y, reduction="none")).sum() / b \
            + clean_weight * F.cross_entropy(copy_(x_meta), y_meta)
        grads = torch.autograd.grad(loss, list(copy_.parameters()))
        with torch.no_grad():
            for p, g in zip(copy_.parameters(), grads):
                p -= lr * g
            return float(F.cross_entropy(copy_(x_meta), y_meta))

    h, zero = 1e-5, torch.zeros(b, dtype=torch.float64)
    gradient = np.array([(meta_loss(zero + h * torch.eye(b)[i]) - meta_loss(zero - h * torch.eye(b)[i])) / (2 * h)
                         for i in range(b)])
    positive = np.maximum(-gradient, 0)
    assert 0 < np.count_nonzero(positive) < b
    # Finite differences: ~1e-9 absolute (see test_bilevel).
    assert_close(state.weights.numpy(), positive / positive.max(), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- the feature-based methods


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
    assert np.array_equal(probability > 0.5, ~flipped)


@pytest.mark.parametrize("name", ["meta", "coteaching"])
def test_batchnorm_cnn_with_augmentation(name):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    problem = types.SimpleNamespace(  # the fields TrainingData.from_images reads from a dynamics.cifar.ImageProblem
        images=images[:24], y_noisy=(labels[:24] + (np.arange(24) < 6)) % 3, y_true=labels[:24],
        meta_images=images[24:32], y_meta=labels[24:32], test_images=images[32:], y_test=labels[32:],
        num_classes=3, name="tiny images")
    data = TrainingData.from_images(problem)
    budget = TrainBudget(epochs=1, batch_size=8, meta_batch_size=4)
    first = train(name, data, cnn_factory(3, width=0.125), budget, seed=0)
    assert first.weights.shape == (24,) and np.all((first.weights >= 0) & (first.weights <= 1))
    second = train(name, data, cnn_factory(3, width=0.125), budget, seed=0)
    assert np.array_equal(first.weights, second.weights) and first.history["train_loss"] == second.history["train_loss"]


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


# ----------------------------------------------------------------------------- the protocol and the references


class _StepCounting(_Recording):
    """Counts every optimiser step of the run (training and clean passes)."""

    def init(self, context):
        self.steps = 0
        for optimiser in context.optimisers:
            optimiser.register_step_post_hook(lambda *args: setattr(self, "steps", self.steps + 1))
        return super().init(context)


@pytest.mark.parametrize("name, passes", [("erm", 0), ("early-stop", 0), ("erm-clean", 3), ("surrogate", 3),
                                          ("surrogate-no-clean-passes", 0), ("meta", 3)])
def test_clean_passes_are_extra_optimiser_steps_of_the_methods_with_clean_training(tiny, name, passes):
    data, factory = tiny
    n, m, _ = data.sizes
    budget = dataclasses.replace(_BUDGET, clean_passes=3, batch_size=8)  # 12 clean examples: 2 steps per pass
    recording = _StepCounting(REGISTRY[name]())
    train(recording, data, factory, budget, seed=0)
    batches = math.ceil(n / budget.batch_size)
    assert recording.steps == budget.epochs * (batches + passes * math.ceil(m / budget.batch_size))


def test_erm_and_erm_clean_differ_only_by_the_clean_training(tiny):
    """Same initial network and batches; the clean term and passes change the trained network."""
    data, factory = tiny
    erm, clean = (_Recording(REGISTRY[name]()) for name in ("erm", "erm-clean"))
    results = [train(method, data, factory, _BUDGET, seed=4) for method in (erm, clean)]
    assert all(torch.equal(erm.initial_network[key], clean.initial_network[key]) for key in erm.initial_network)
    assert [(e, i.tolist()) for e, i, _, _ in erm.batches] == [(e, i.tolist()) for e, i, _, _ in clean.batches]
    assert results[0].history["clean_loss"] != results[1].history["clean_loss"]


def test_step_schedule_multiplies_the_learning_rate_by_a_tenth_at_each_milestone(tiny):
    data, factory = tiny
    recording = _Recording(REGISTRY["erm"]())
    train(recording, data, factory, TrainBudget(epochs=4, batch_size=20, lr=0.3, milestones=(1, 3)), seed=0)
    rates = {epoch: {lr for e, _, _, lr in recording.batches if e == epoch} for epoch in range(4)}
    assert_close([rates[epoch].pop() for epoch in range(4)], [0.3, 0.03, 0.03, 0.003])
    with pytest.raises(ValueError, match="milestones"):
        TrainBudget(milestones=(3, 1))


def test_early_stop_keeps_the_network_of_the_epoch_with_the_lowest_clean_loss():
    """ERM with the same seed is the same run; early-stop reports its test accuracy at the clean-loss minimum."""
    problem = gaussian_mixture(np.random.default_rng(2), n=80, m=16, p=200, num_classes=3, dim=6, noise_rate=0.45)
    data, factory = TrainingData.from_problem(problem), mlp_factory(6, 3, hidden=(32,))
    budget = TrainBudget(epochs=8, batch_size=10, meta_batch_size=8, lr=0.3)
    erm, stopped = (train(name, data, factory, budget, seed=1) for name in ("erm", "early-stop"))
    best = int(np.argmin(erm.history["clean_loss"]))
    assert best < budget.epochs - 1, "a run whose clean loss rises after its minimum"
    assert erm.history["test_accuracy"][best] != erm.test_accuracy
    assert stopped.best_epoch == erm.best_epoch == best
    assert stopped.test_accuracy == erm.history["test_accuracy"][best] == erm.best_epoch_accuracy
    assert stopped.history["clean_loss"] == erm.history["clean_loss"]


def test_trusted_classifiers_keep_exactly_the_examples_they_agree_with(tiny):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid

    data, factory = tiny
    X, y, X_meta, y_meta = (t.double().numpy() if t.is_floating_point() else t.numpy()
                            for t in (data.X, data.y_noisy, data.X_meta, data.y_meta))
    for name, classifier in (("trusted-lr", LogisticRegression(max_iter=1000)), ("trusted-mean", NearestCentroid())):
        expected = classifier.fit(X_meta, y_meta).predict(X) == y
        assert 0 < expected.sum() < len(y)
        result = train(name, data, factory, _BUDGET, seed=0)
        assert np.array_equal(result.weights, expected.astype(np.float64)), name
        assert np.all(result.epoch_weights == expected), name  # fixed before training


def _surrogate_context(X, y, X_meta, y_meta, epochs=10):
    data = TrainingData(*(torch.as_tensor(a) for a in (X, y, y, X_meta, y_meta, X_meta, y_meta)), num_classes=3)
    network = LinearHead(X.shape[1], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # features = x
    budget = TrainBudget(epochs=epochs, warmup_epochs=1, clean_passes=2)
    return Context(data, budget, (network,), (torch.optim.SGD(network.parameters(), lr=0.1),),
                   np.random.default_rng(0), 0.0)


def test_surrogate_ablations_change_the_weights_of_a_crafted_problem():
    """Three classes with a large common offset (centring matters), overlapping clusters (the row shift matters
    at alpha0 = 0); epoch 5 of 10 is past alpha0's 40/150 of training. Each ablation changes its one setting."""
    rng = np.random.default_rng(0)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]]) + 10.0
    y_meta = np.repeat(np.arange(3), 10)
    X_meta = centres[y_meta] + 0.5 * rng.standard_normal((30, 2))
    y = rng.integers(0, 3, 200)
    X = centres[rng.integers(0, 3, 200)] + 1.5 * rng.standard_normal((200, 2))
    context = _surrogate_context(X, y, X_meta, y_meta)

    def weights(method, epoch=5):
        return method.on_epoch(method.init(context), epoch, context).weights.numpy()

    full = weights(Surrogate())
    expected = reweight(y, X, y_meta, X_meta, num_classes=3, alpha0=0.0)
    assert_close(full, expected.weights)
    assert np.array_equal(weights(Surrogate(), epoch=2), reweight(y, X, y_meta, X_meta, alpha0=0.5).weights)
    assert np.all(weights(Surrogate(), epoch=0) == 1)  # the warm-up
    ablations = {method.name: method for method in SURROGATE_ABLATIONS}
    for name in ("surrogate-no-center", "surrogate-no-shift", "surrogate-alpha0-fixed"):
        assert not np.array_equal(weights(ablations[name]()), full), name
    assert np.array_equal(weights(ablations["surrogate-alpha0-fixed"]()), weights(Surrogate(), epoch=2))
    assert np.array_equal(weights(ablations["surrogate-alpha0-zero"](), epoch=2), full)
    assert np.array_equal(weights(ablations["surrogate-no-clean-passes"]()), full)
    assert ablations["surrogate-no-clean-passes"]().clean_passes(context.budget) == 0
    assert Surrogate().clean_passes(context.budget) == 2
    # An ablation keeps its change whatever the parameters given; the other settings are shared.
    shared = ablations["surrogate-no-shift"](SurrogateParams(shift=True, recompute="batch")).params
    assert not shared.shift and shared.recompute == "batch"


def test_per_batch_surrogate_applies_the_rule_within_each_batch():
    rng = np.random.default_rng(1)
    y_meta = np.repeat(np.arange(3), 6)
    X_meta = np.eye(3)[y_meta] * 2 + 0.3 * rng.standard_normal((18, 3))
    y = rng.integers(0, 3, 40)
    X = np.eye(3)[rng.integers(0, 3, 40)] * 2 + 0.8 * rng.standard_normal((40, 3))
    context = _surrogate_context(X, y, X_meta, y_meta)
    method = Surrogate(SurrogateParams(recompute="batch"))
    state = method.on_epoch(method.init(context), 5, context)
    assert np.all(state.weights.numpy() == 1)  # nothing until the batches
    index = torch.arange(10, 26)
    x = torch.as_tensor(X[10:26])
    state, _ = method.batch_step(state, Batch(5, index, x, torch.as_tensor(y[10:26]), context.data.X_meta,
                                              context.data.y_meta, 0.1), context)
    batch = reweight(y[10:26], X[10:26], y_meta, X_meta, alpha0=0.0)
    assert_close(state.weights.numpy()[10:26], batch.weights)
    assert_close(state.score[10:26], batch.score)
    assert np.all(state.weights.numpy()[:10] == 1)  # only the batch's weights moved
