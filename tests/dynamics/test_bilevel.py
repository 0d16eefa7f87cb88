"""The torch look-ahead meta-gradient and the weight rules (docs/theory.md section 2), in float64.

Oracles: central finite differences of ``L_meta(w)`` computed by an ordinary
SGD step on a copy of the network (no ``torch.func``, no shared code), and a
plain optimiser step on a copy for the model update; hand-computed weights
for the rules.
"""

import copy

import numpy as np
import pytest
import torch
from bilevel_oracle import FD_TOLERANCE, finite_differences, meta_loss_by_explicit_step
from tolerance import assert_close
from torch import nn
from torch.nn import functional as F

from dynamics.bilevel import clipped_weights, l2rw_weights, lookahead_weights, meta_step, meta_weight_gradient
from dynamics.methods import mlp_factory

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _case(architecture, seed, b=6, m=5):
    generator = torch.Generator().manual_seed(seed)
    if architecture == "mlp":
        model = mlp_factory(4, 3, hidden=(7, 5), dtype=torch.float64)(generator)
        shape = (4,)
    else:
        model = _TinyConvBN(generator)
        shape = (2, 5, 5)
    x = torch.randn(b, *shape, generator=generator, dtype=torch.float64)
    x_meta = torch.randn(m, *shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (b,), generator=generator)
    y_meta = torch.randint(0, 3, (m,), generator=generator)
    w = torch.rand(b, generator=generator, dtype=torch.float64)
    return model.train(), x, y, w, x_meta, y_meta


def _ce(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")




@pytest.mark.parametrize("architecture", ["mlp", "conv-batchnorm"])
@pytest.mark.parametrize("clean_weight", [0.0, 0.7])
def test_meta_gradient_equals_finite_differences_of_the_meta_objective(architecture, clean_weight):
    model, x, y, w, x_meta, y_meta = _case(architecture, 3)
    lr = 0.3
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}

    dL_meta_dw, meta_loss = meta_weight_gradient(model, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight)

    for k, v in model.named_buffers():
        assert torch.equal(v, buffers_before[k]), f"meta_weight_gradient moved buffer {k}"
    assert_close(meta_loss, meta_loss_by_explicit_step(model, x, y, w, x_meta, y_meta, lr, clean_weight, _ce))
    expected = finite_differences(model, x, y, w, x_meta, y_meta, lr, clean_weight, _ce)
    assert_close(dL_meta_dw.numpy(), expected, **FD_TOLERANCE)


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("seed", [4, 5])
def test_meta_step_applies_its_rule_to_the_finite_difference_gradient_then_takes_a_plain_model_step(reset, seed):
    """Steps 2-4 of docs/theory.md section 2 against oracles that share no code with dynamics.bilevel."""
    model, x, y, w, x_meta, y_meta = _case("conv-batchnorm", seed, b=8, m=4)
    b, lr, beta, clean_weight = len(y), 0.2, 0.3, 0.5
    before = copy.deepcopy(model)
    # L2RW looks ahead at w = 0 (Ren et al.'s eps = 0), whatever the batch's current weights.
    w_ahead = torch.zeros_like(w) if reset else w
    gradient = finite_differences(before, x, y, w_ahead, x_meta, y_meta, lr, clean_weight, _ce)
    if reset:
        positive = np.maximum(-gradient, 0.0)
        expected = positive / positive.sum()
    else:
        expected = np.clip(w.numpy() - beta * b / lr * gradient, 0.0, 1.0)

    new_w, loss = meta_step(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3),
                            x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight, beta=beta, reset=reset)

    assert 0 < np.count_nonzero(expected) < b or not reset  # a batch where L2RW keeps some examples and drops some
    assert_close(new_w.numpy(), expected, **FD_TOLERANCE)
    if reset:
        assert_close(float(new_w.sum()), 1.0)
    # The model step: one plain optimiser step on the weighted loss with the new weights, on a copy.
    reference = copy.deepcopy(before)
    optimiser = torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    losses = F.cross_entropy(reference(x), y, reduction="none")
    train_term = (new_w * losses).sum() if reset else (new_w * losses).sum() / b
    reference_loss = train_term + clean_weight * F.cross_entropy(reference(x_meta), y_meta)
    optimiser.zero_grad()
    reference_loss.backward()
    optimiser.step()
    assert_close(float(loss), float(reference_loss.detach()))
    for (name, value), expected_value in zip(model.state_dict().items(), reference.state_dict().values()):
        assert_close(value.numpy(), expected_value.numpy(), err_msg=name)
    assert model.bn.num_batches_tracked.item() == 2  # the training and clean forward passes at theta, once each


def test_weight_rules_by_hand():
    dL_meta_dw = torch.tensor([-1.0, -3.0, 2.0, 0.0], dtype=torch.float64)
    assert_close(l2rw_weights(dL_meta_dw).numpy(), [0.25, 0.75, 0.0, 0.0])
    # No example lowers the clean loss: L2RW keeps none (instead of dividing by zero).
    assert torch.equal(l2rw_weights(torch.tensor([0.5, 0.0, 2.0])), torch.zeros(3))
    w = torch.tensor([0.2, 0.9, 0.5, 0.0], dtype=torch.float64)
    # w - 0.5 * dL: 0.7, 2.4 -> 1, -0.5 -> 0, 0.0
    assert_close(clipped_weights(w, dL_meta_dw, 0.5).numpy(), [0.7, 1.0, 0.0, 0.0])
    assert torch.equal(lookahead_weights("l2rw", w), torch.zeros(4, dtype=torch.float64))
    assert lookahead_weights("meta", w) is w


@pytest.mark.parametrize("reset", [False, True])
def test_a_loss_given_as_a_callable_reaches_every_term_of_the_step(reset):
    """``loss=callable`` is used for the training losses, the clean term and the meta objective alike: with the
    cross-entropy written out, the step equals the default (cross-entropy) one."""
    model, x, y, w, x_meta, y_meta = _case("conv-batchnorm", 6, b=8, m=4)
    twin = copy.deepcopy(model)

    def written_out(outputs, targets):
        return -torch.log_softmax(outputs, dim=1)[torch.arange(len(targets)), targets]

    settings = dict(lr=0.2, clean_weight=0.5, beta=0.3, reset=reset)
    expected_w, expected_loss = meta_step(model, torch.optim.SGD(model.parameters(), lr=0.2), x, y, w, x_meta,
                                          y_meta, **settings)
    new_w, loss = meta_step(twin, torch.optim.SGD(twin.parameters(), lr=0.2), x, y, w, x_meta, y_meta,
                            loss=written_out, **settings)
    assert_close(new_w.numpy(), expected_w.numpy())
    assert_close(float(loss), float(expected_loss))
    for (name, value), expected in zip(twin.state_dict().items(), model.state_dict().values()):
        assert_close(value.numpy(), expected.numpy(), err_msg=name)
