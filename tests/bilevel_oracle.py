"""The bi-level meta-objective by plain means, for the torch tests: an ordinary SGD step on a copy of the network
(no torch.func), and central differences of it. Shared by tests/dynamics/test_bilevel.py and test_recipes.py."""

import copy

import numpy as np
import torch

# Central differences carry an O(h^2) truncation error and O(eps / h) rounding: ~1e-9 absolute here.
FD_TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


def meta_loss_by_explicit_step(model, x, y, w, x_meta, y_meta, lr, clean_weight, per_example_loss):
    """``L_meta(w)``: one SGD step of lr on ``mean_i w_i l_i + clean_weight * mean_j l_j`` on a copy, then the
    clean loss; ``per_example_loss(outputs, targets) -> (N,)``."""
    copy_ = copy.deepcopy(model)
    loss = (w * per_example_loss(copy_(x), y)).sum() / len(y) \
        + clean_weight * per_example_loss(copy_(x_meta), y_meta).mean()
    grads = torch.autograd.grad(loss, list(copy_.parameters()))
    with torch.no_grad():
        for p, g in zip(copy_.parameters(), grads):
            p -= lr * g
        return float(per_example_loss(copy_(x_meta), y_meta).mean())


def finite_differences(model, x, y, w, x_meta, y_meta, lr, clean_weight, per_example_loss, h=1e-5):
    """(b,) central differences of :func:`meta_loss_by_explicit_step` at ``w``."""
    result = []
    for i in range(len(w)):
        step = torch.zeros_like(w)
        step[i] = h
        values = [meta_loss_by_explicit_step(model, x, y, w + sign * step, x_meta, y_meta, lr, clean_weight,
                                             per_example_loss) for sign in (1, -1)]
        result.append((values[0] - values[1]) / (2 * h))
    return np.array(result)
