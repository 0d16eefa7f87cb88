"""The oracle: trains on the true clean examples only (docs/theory.md section 7), an upper reference."""

from __future__ import annotations

import torch

from dynamics.methods.base import Context, Method, MethodState


class Oracle(Method):
    """``w = 1[y_noisy == y_true]``, the true clean mask, fixed for the whole run."""

    name = "oracle"

    def init(self, context: Context) -> MethodState:
        X = context.data.X
        return MethodState(torch.as_tensor(~context.data.noisy, device=X.device, dtype=X.dtype))
